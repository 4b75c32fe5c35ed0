//! `hvagent.v1.MigrationService` (the target half of a live migration) and its client, the
//! source agent's view of a target ([`TargetAgent`], a `guest::MigrationPeer`).

use std::sync::Arc;
use std::time::Duration;

use hvagent_core::tls::dial::{DialError, Dialer};
use hvagent_core::tls::{self, Files};
use hvagent_proto::v1 as pb;
use hyper_util::rt::TokioIo;
use pb::migration_service_client::MigrationServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

use super::guest::status;
use crate::domain::hypervisor::MigrationTarget;
use crate::domain::volume_disk::DiskSource;
use crate::guest::{GuestError, Guests, IncomingGuest, MigrationPeer};
use crate::storage::volumes::{self, VolumeSource};
use crate::storage::{VolumeError, VolumeRecord};

/// How long connecting to a target agent and each of its calls may take. Prepare makes the
/// guest's disks (a few `qemu-img` runs): seconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct MigrationApi {
    guests: Arc<Guests>,
    mutations: super::Mutations,
}

impl MigrationApi {
    pub fn new(guests: Arc<Guests>, mutations: super::Mutations) -> Self {
        Self { guests, mutations }
    }

    pub fn into_service(self) -> pb::migration_service_server::MigrationServiceServer<Self> {
        pb::migration_service_server::MigrationServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::migration_service_server::MigrationService for MigrationApi {
    async fn prepare(
        &self,
        request: Request<pb::PrepareMigrationRequest>,
    ) -> Result<Response<pb::PrepareMigrationResponse>, Status> {
        let r = request.into_inner();
        let guests = self.guests.clone();
        let volumes = r
            .volumes
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                arriving_volume(v)
                    .map_err(|e| Status::invalid_argument(format!("volumes[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let incoming = IncomingGuest {
            uuid: r.uuid,
            domain_xml: r.domain_xml,
            image_sha256: r.image_sha256,
            root_disk_bytes: r.root_disk_bytes,
            seed: r.seed,
            volumes,
        };
        let target = self
            .mutations
            .run(
                async move { guests.prepare_incoming(incoming).await },
                status,
            )
            .await?;
        Ok(Response::new(pb::PrepareMigrationResponse {
            dest_xml: target.dest_xml,
            libvirt_uri: target.libvirt_uri,
            migrate_uri: target.migrate_uri,
            disks: target.disks,
        }))
    }

    async fn finish(
        &self,
        request: Request<pb::FinishMigrationRequest>,
    ) -> Result<Response<pb::FinishMigrationResponse>, Status> {
        let (guests, uuid) = (self.guests.clone(), request.into_inner().uuid);
        let downtime = self
            .mutations
            .run(async move { guests.finish_incoming(&uuid).await }, status)
            .await?;
        Ok(Response::new(pb::FinishMigrationResponse {
            downtime_ms: downtime.map(|d| d.as_millis() as u64),
        }))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortMigrationRequest>,
    ) -> Result<Response<pb::AbortMigrationResponse>, Status> {
        let (guests, uuid) = (self.guests.clone(), request.into_inner().uuid);
        self.mutations
            .run(async move { guests.abort_incoming(&uuid).await }, status)
            .await?;
        Ok(Response::new(pb::AbortMigrationResponse {}))
    }
}

/// A volume moving with its guest, as the target takes it in, or why it is malformed.
fn arriving_volume(v: pb::MigratingVolume) -> Result<VolumeRecord, VolumeError> {
    if !matches!(v.format.as_str(), "qcow2" | "raw") {
        return Err(VolumeError::Invalid {
            field: "format",
            rule: format!("must be qcow2 or raw, got {:?}", v.format),
        });
    }
    if v.size_bytes == 0 || v.size_bytes > volumes::MAX_SIZE_GB << 30 {
        return Err(VolumeError::Invalid {
            field: "size_bytes",
            rule: format!("must be between 1 and {} GiB", volumes::MAX_SIZE_GB),
        });
    }
    Ok(VolumeRecord {
        source: if v.nbd.is_empty() {
            VolumeSource::Store
        } else {
            volumes::parse_nbd(&v.nbd)?
        },
        name: v.name,
        format: v.format,
        size_bytes: v.size_bytes,
        shareable: false,
        image: v.image,
        created_unix: v.created_unix,
        made_for: String::new(),
        arriving_for: String::new(),
    })
}

/// A volume moving with its guest, as the source sends it (store or NBD: the source refuses
/// the others).
fn departing_volume(r: VolumeRecord) -> pb::MigratingVolume {
    let nbd = match r.source {
        VolumeSource::Nbd { host, port, export } => DiskSource::Nbd { host, port, export }.key(),
        VolumeSource::Store | VolumeSource::Block { .. } => String::new(),
    };
    pb::MigratingVolume {
        name: r.name,
        format: r.format,
        size_bytes: r.size_bytes,
        nbd,
        image: r.image,
        created_unix: r.created_unix,
    }
}

/// A target agent, reached over its TCP API with this node's `[migration]` identity.
pub struct TargetAgent {
    endpoint: String,
    client: MigrationServiceClient<Channel>,
}

impl TargetAgent {
    /// This node's identity towards other agents (`[migration]`), its files readable and
    /// valid now, or why there is none.
    pub fn identity(files: Option<Files>) -> Result<Files, GuestError> {
        let files = files.ok_or_else(|| {
            GuestError::Precondition(
                "this node cannot reach other agents: set [migration] tls_cert, tls_key and server_ca".into(),
            )
        })?;
        tls::client_config(&files, tls::now())
            .map_err(|e| GuestError::Precondition(format!("[migration] TLS files: {e}")))?;
        Ok(files)
    }

    /// Connects to the target agent at `endpoint` (`HOST:PORT`) with mutual TLS, after a trial
    /// connection that tells a refused certificate as such.
    pub async fn connect(endpoint: &str, files: &Files) -> Result<TargetAgent, GuestError> {
        let dialer = Dialer::new(endpoint, files, tls::now()).map_err(dial_failed)?;
        dialer.trial().await.map_err(dial_failed)?;
        let channel = Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| GuestError::Invalid(format!("target: {endpoint:?}: {e}")))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let dialer = dialer.clone();
                async move { dialer.open().await.map(TokioIo::new) }
            }))
            .await
            .map_err(|e| {
                GuestError::Unavailable(format!(
                    "target: cannot reach the agent at {endpoint}: {e}"
                ))
            })?;
        Ok(TargetAgent {
            endpoint: endpoint.to_string(),
            client: MigrationServiceClient::new(channel),
        })
    }

    /// The target's answer as this node's error: its code kept, the target named.
    fn failed(&self, call: &str, s: Status) -> GuestError {
        let m = format!("target {} refused {call}: {}", self.endpoint, s.message());
        match s.code() {
            tonic::Code::InvalidArgument => GuestError::Invalid(m),
            tonic::Code::NotFound => GuestError::NotFound(m),
            tonic::Code::AlreadyExists => GuestError::AlreadyExists(m),
            tonic::Code::FailedPrecondition
            | tonic::Code::ResourceExhausted
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated => GuestError::Precondition(m),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => GuestError::Unavailable(m),
            _ => GuestError::Internal(m),
        }
    }
}

/// A failed dial as this node's error: a malformed endpoint is the caller's to mend, unusable
/// own files or a refused certificate (either side's) the operator's, an unreachable or silent
/// target may pass.
fn dial_failed(e: DialError) -> GuestError {
    match e {
        DialError::Endpoint(_) => GuestError::Invalid(format!("target: {e}")),
        DialError::Files(e) => GuestError::Precondition(format!("[migration] TLS files: {e}")),
        DialError::Refused { .. } => GuestError::Precondition(format!("target: {e}")),
        DialError::Tcp { .. } | DialError::Silent { .. } => {
            GuestError::Unavailable(format!("target: {e}"))
        }
    }
}

impl MigrationPeer for TargetAgent {
    async fn prepare(&self, guest: IncomingGuest) -> Result<MigrationTarget, GuestError> {
        let r = self
            .client
            .clone()
            .prepare(pb::PrepareMigrationRequest {
                uuid: guest.uuid,
                domain_xml: guest.domain_xml,
                image_sha256: guest.image_sha256,
                root_disk_bytes: guest.root_disk_bytes,
                seed: guest.seed,
                volumes: guest.volumes.into_iter().map(departing_volume).collect(),
            })
            .await
            .map_err(|s| self.failed("Prepare", s))?
            .into_inner();
        Ok(MigrationTarget {
            libvirt_uri: r.libvirt_uri,
            migrate_uri: r.migrate_uri,
            dest_xml: r.dest_xml,
            disks: r.disks,
        })
    }

    async fn finish(&self, uuid: &str) -> Result<Option<Duration>, GuestError> {
        self.client
            .clone()
            .finish(pb::FinishMigrationRequest { uuid: uuid.into() })
            .await
            .map_err(|s| self.failed("Finish", s))
            .map(|r| r.into_inner().downtime_ms.map(Duration::from_millis))
    }

    async fn abort(&self, uuid: &str) -> Result<(), GuestError> {
        self.client
            .clone()
            .abort(pb::AbortMigrationRequest { uuid: uuid.into() })
            .await
            .map_err(|s| self.failed("Abort", s))
            .map(drop)
    }
}
