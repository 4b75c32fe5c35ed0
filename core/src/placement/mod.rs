//! Placement: turns a flavor into concrete host CPUs, NUMA memory and hugepages so that every
//! promise of its SCS name holds (scs-flavors.md §5), counts what is left, and refuses what it
//! cannot keep. Pure and deterministic: inputs are the topology, the node policy, the current
//! claims and the caller's clock; nothing here touches the host. See `docs/placement.md`.

mod admission;
pub mod allocator;
pub mod capacity;
pub mod claim;
mod ledger;
pub mod plan;
pub mod policy;
pub mod provider;
pub mod state;
pub mod topology;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use allocator::{Allocator, RebuildError};
pub use capacity::Capacity;
pub use claim::{Claim, ClaimRequest, Refusal, RefusalKind};
pub use policy::{Policy, PolicyError};
pub use state::PlacementState;
pub use topology::Topology;
