//! Reporting to OpenStack Placement (`[placement_api]`): the agent keeps its resource provider,
//! the provider's inventories and traits, and the allocations against it equal to what the
//! allocator holds, so that a Placement-based scheduler (Nova's) only offers this node what it
//! will admit. The derivation of what Placement should hold is hvagent-core's
//! (`placement::provider`); this module talks to Placement and keeps it so.
//!
//! - [`settings`]: the `[placement_api]` keys.
//! - [`client`]: the HTTP calls (microversion, token, typed errors).
//! - [`keystone`]: the Keystone v3 application-credential token.
//! - [`sync`]: pure: what Placement holds against what it should → the writes to make.
//! - [`status`]: what the last rounds found, for the `PlacementSync` condition and the metrics.
//! - [`task`]: the loop: a round when the claims change, a full check every interval, back-off
//!   while Placement is away.

pub mod client;
pub mod keystone;
pub mod settings;
pub mod status;
pub mod sync;
pub mod task;

pub use settings::{Auth, Settings};
pub use status::Status;
