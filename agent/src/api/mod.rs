//! gRPC services: translate between proto messages and the core types, nothing else.

pub mod flavor;
pub mod guest;
pub mod health;
pub mod network;
pub mod node;
pub mod placement;

/// Runs a mutating call in a task of its own: a client that hangs up or times out must not
/// abandon a create, delete or ensure halfway (the task finishes or undoes it either way).
pub(crate) async fn detached<T: Send + 'static, E: Send + 'static>(
    call: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
    status: fn(E) -> tonic::Status,
) -> Result<T, tonic::Status> {
    tokio::spawn(call)
        .await
        .map_err(|e| tonic::Status::internal(format!("task failed: {e}")))?
        .map_err(status)
}

pub use flavor::FlavorApi;
pub use guest::{ImageApi, VmApi};
pub use network::NetworkApi;
pub use node::NodeApi;
pub use placement::PlacementApi;
