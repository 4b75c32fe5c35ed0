//! gRPC services: translate between proto messages and the core types, nothing else.

pub mod node;

pub use node::NodeApi;
