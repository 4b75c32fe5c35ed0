//! gRPC services: translate between proto messages and the core types, nothing else.

pub mod flavor;
pub mod guest;
pub mod health;
pub mod migration;
pub mod network;
pub mod node;
pub mod placement;
pub mod services;
pub mod volume;

/// Mutating calls (guest lifecycle, network changes) each run in a task of their own: a client
/// that hangs up or times out must not abandon a create, delete or ensure halfway (the task
/// finishes or undoes it either way). At most `[api] max_concurrent_mutations` run at once; one
/// more is answered `RESOURCE_EXHAUSTED` at once instead of waiting in a queue without end.
#[derive(Clone)]
pub struct Mutations {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl Mutations {
    pub fn new(limit: usize) -> Mutations {
        Mutations {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }

    pub(crate) async fn run<T: Send + 'static, E: Send + 'static>(
        &self,
        call: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
        status: fn(E) -> tonic::Status,
    ) -> Result<T, tonic::Status> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "{} mutating calls are in flight, the most [api] max_concurrent_mutations allows; retry later",
                self.limit
            ))
        })?;
        tokio::spawn(async move {
            let result = call.await;
            drop(permit);
            result
        })
        .await
        .map_err(|e| tonic::Status::internal(format!("task failed: {e}")))?
        .map_err(status)
    }
}

pub use flavor::FlavorApi;
pub use guest::{ImageApi, VmApi};
pub use migration::MigrationApi;
pub use network::NetworkApi;
pub use node::NodeApi;
pub use placement::PlacementApi;
pub use volume::VolumeApi;
