//! gRPC services: translate between proto messages and the core types, nothing else.

pub mod flavor;
pub mod guest;
pub mod network;
pub mod node;
pub mod placement;

pub use flavor::FlavorApi;
pub use guest::{ImageApi, VmApi};
pub use network::NetworkApi;
pub use node::NodeApi;
pub use placement::PlacementApi;
