//! `hvagent.v1.VolumeService` over the volume store, and the mapping of volume errors that
//! `VmService.AttachVolume` / `DetachVolume` share.

use std::sync::Arc;

use hvagent_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::guest::status;
use crate::guest::{Guests, VolumeCallError, VolumeRequest};
use crate::storage::VolumeRecord;

/// The gRPC status of an attach or detach.
pub(super) fn call_status(e: VolumeCallError) -> Status {
    match e {
        VolumeCallError::Guest(e) => status(e),
        VolumeCallError::NotReleased(m) => Status::deadline_exceeded(m),
    }
}

pub struct VolumeApi {
    guests: Arc<Guests>,
    mutations: super::Mutations,
}

impl VolumeApi {
    pub fn new(guests: Arc<Guests>, mutations: super::Mutations) -> Self {
        Self { guests, mutations }
    }

    pub fn into_service(self) -> pb::volume_service_server::VolumeServiceServer<Self> {
        pb::volume_service_server::VolumeServiceServer::new(self)
    }

    fn to_proto(&self, r: VolumeRecord, attached_to: Vec<String>) -> pb::Volume {
        let source = self.guests.volumes.disk_source(&r).key();
        pb::Volume {
            kind: r.source.kind().into(),
            name: r.name,
            format: r.format,
            size_bytes: r.size_bytes,
            shareable: r.shareable,
            source,
            attached_to,
            created_unix: r.created_unix,
            image: r.image,
            made_for: r.made_for,
        }
    }
}

#[tonic::async_trait]
impl pb::volume_service_server::VolumeService for VolumeApi {
    async fn create(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        // A device path names hardware of this node: only local callers may hand one to a
        // guest, so that a remote controller cannot attach the host's own disks.
        let remote = matches!(
            request.extensions().get::<crate::access::Peer>(),
            Some(crate::access::Peer::Tls { .. })
        );
        let r = request.into_inner();
        if remote && !r.source.is_empty() && !r.source.starts_with("nbd://") {
            return Err(Status::permission_denied(
                "source: host block devices are given by callers on the Unix socket only; remote callers give nbd:// sources",
            ));
        }
        let req = VolumeRequest {
            name: r.name,
            size_gb: r.size_gb,
            format: r.format,
            shareable: r.shareable,
            image: r.image,
            source: r.source,
        };
        let guests = self.guests.clone();
        let record = self
            .mutations
            .run(async move { guests.create_volume(req).await }, status)
            .await?;
        let (record, users) = self.guests.volume(&record.name).await.map_err(status)?;
        Ok(Response::new(self.to_proto(record, users)))
    }

    async fn get(
        &self,
        request: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let (record, users) = self
            .guests
            .volume(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(self.to_proto(record, users)))
    }

    async fn list(
        &self,
        _request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let (volumes, unreadable) = self.guests.volumes().await.map_err(status)?;
        Ok(Response::new(pb::ListVolumesResponse {
            volumes: volumes
                .into_iter()
                .map(|(r, users)| self.to_proto(r, users))
                .collect(),
            unreadable,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let name = request.into_inner().name;
        let guests = self.guests.clone();
        self.mutations
            .run(async move { guests.delete_volume(&name).await }, status)
            .await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::volumes::VolumeSource;

    #[test]
    fn a_guest_that_keeps_a_disk_is_deadline_exceeded() {
        let s = call_status(VolumeCallError::NotReleased("volume: not released".into()));
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(s.message(), "volume: not released");
        let s = call_status(VolumeCallError::Guest(
            crate::guest::GuestError::Precondition("volume: in use".into()),
        ));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(VolumeSource::Store.kind(), "store");
    }
}
