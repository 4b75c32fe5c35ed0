//! `hvagent.v1.ImageService` and `hvagent.v1.VmService` over the guest lifecycle.

use std::sync::Arc;
use std::time::Duration;

use hvagent_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::placement::{claim_to_proto, status as refusal_status};
use crate::domain::EventKind;
use crate::guest::GuestInfo;
use crate::guest::{
    ConsoleEnd, ConsoleEvent, CreateRequest, Guest, GuestError, Guests, NicRequest, SnapshotError,
    SnapshotRequest, now_unix,
};
use crate::health::Health;
use crate::placement::PlacementState;
use std::sync::atomic::Ordering;

use crate::daemon::config::StorageConfig;
use crate::storage::images::{Begun, Bounds, ImportProgress, LimitKind};
use crate::storage::{ImageRecord, StoreError, fetch};
use tokio::sync::OwnedSemaphorePermit;

pub(super) fn status(e: GuestError) -> Status {
    match e {
        GuestError::Invalid(m) => Status::invalid_argument(m),
        GuestError::NotFound(m) => Status::not_found(m),
        GuestError::AlreadyExists(m) => Status::already_exists(m),
        GuestError::Precondition(m) => Status::failed_precondition(m),
        GuestError::Refused(r) => refusal_status(r),
        GuestError::Unavailable(m) => Status::unavailable(m),
        GuestError::Internal(m) => Status::internal(m),
        e @ (GuestError::Libvirt(_)
        | GuestError::Disk(_)
        | GuestError::Files(_)
        | GuestError::Xml(_)
        | GuestError::ConsoleLog { .. }
        | GuestError::Task(_)) => Status::internal(e.to_string()),
    }
}

fn image_to_proto(r: ImageRecord, used_by: Vec<String>) -> pb::Image {
    pb::Image {
        name: r.name,
        format: r.format,
        virtual_size_bytes: r.virtual_size_bytes,
        file_bytes: r.file_bytes,
        sha256: r.sha256,
        properties: r.properties,
        created_unix: r.created_unix,
        used_by,
        state: "ready".into(),
        ..Default::default()
    }
}

/// What a guest's agent reported, as the API shows it (sizes not reported: 0).
fn guest_info_to_proto(info: GuestInfo) -> pb::GuestInfo {
    let r = info.report;
    pb::GuestInfo {
        os: Some(pb::GuestOs {
            id: r.os.id,
            name: r.os.name,
            version: r.os.version,
            kernel_release: r.os.kernel_release,
        }),
        hostname: r.hostname,
        interfaces: r
            .interfaces
            .into_iter()
            .map(|i| pb::GuestInterface {
                name: i.name,
                mac: i.mac,
                addresses: i.addresses,
            })
            .collect(),
        filesystems: r
            .filesystems
            .into_iter()
            .map(|f| pb::GuestFilesystem {
                mountpoint: f.mountpoint,
                r#type: f.fstype,
                total_bytes: f.total_bytes.unwrap_or(0),
                used_bytes: f.used_bytes.unwrap_or(0),
            })
            .collect(),
        sampled_unix_ms: info.sampled_unix_ms,
    }
}

fn importing_to_proto(name: String, p: &ImportProgress) -> pb::Image {
    pb::Image {
        name,
        state: "importing".into(),
        source: p.source.clone(),
        bytes_received: p.received.load(Ordering::Relaxed),
        bytes_total: p.total.load(Ordering::Relaxed),
        created_unix: p.started_unix,
        ..Default::default()
    }
}

/// The gRPC status of a store error: the `[storage]` limits have their own codes.
fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Limit { kind, .. } => {
            let message = e.to_string();
            match kind {
                LimitKind::TooLarge => Status::failed_precondition(message),
                LimitKind::Deadline => Status::deadline_exceeded(message),
                LimitKind::NoSpace => Status::resource_exhausted(message),
            }
        }
        e => status(e.into()),
    }
}

fn snapshot_status(e: SnapshotError) -> Status {
    match e {
        SnapshotError::Guest(e) => status(e),
        SnapshotError::Store(e) => store_status(e),
    }
}

pub struct ImageApi {
    guests: Arc<Guests>,
    /// One permit per import running (`[storage] max_imports`).
    imports: Arc<tokio::sync::Semaphore>,
    max_imports: usize,
}

impl ImageApi {
    pub fn new(guests: Arc<Guests>, storage: &StorageConfig) -> Self {
        guests.images.set_limits(storage.imports);
        Self {
            guests,
            imports: Arc::new(tokio::sync::Semaphore::new(storage.max_imports)),
            max_imports: storage.max_imports,
        }
    }

    /// Streams `source_url` into the store: the name is taken before the request goes out,
    /// so Get and List show the import (with its progress) until it ends.
    async fn import_url(
        &self,
        r: pb::ImportImageRequest,
        sha256: Option<String>,
        permit: OwnedSemaphorePermit,
    ) -> Result<ImageRecord, StoreError> {
        // The deadline runs from the request: connecting and waiting for headers count.
        let bounds = Bounds::starting_now(self.guests.images.limits());
        let url = fetch::parse_url(&r.source_url)?;
        let shown = fetch::redacted(&url);
        let ticket = match self.guests.images.begin(
            &r.name,
            sha256.as_deref(),
            r.properties,
            "source_url",
            shown.clone(),
            now_unix(),
        )? {
            Begun::Existing(record) => return Ok(record),
            Begun::Started(ticket) => ticket,
        };
        tracing::info!(image = %r.name, url = %shown, "importing");
        let download = fetch::open(&url, &bounds).await?;
        ticket
            .progress
            .total
            .store(download.total.unwrap_or(0), Ordering::Relaxed);
        let guests = self.guests.clone();
        on_own_thread(permit, move || {
            let cut = |e: std::io::Error| StoreError::Fetch {
                url: shown,
                reason: format!("download cut short: {e}"),
                retryable: true,
            };
            guests
                .images
                .import(&ticket, download, cut, &bounds, now_unix())
        })
        .await
    }

    pub fn into_service(self) -> pb::image_service_server::ImageServiceServer<Self> {
        pb::image_service_server::ImageServiceServer::new(self)
    }
}

/// Runs an import on a thread of its own, not on the blocking pool that every libvirt call
/// shares: however slow imports are, they hold at most `max_imports` threads (the permit,
/// released when the thread ends), and List, Get and Create keep answering. A caller that
/// hangs up does not end the import early; its deadline does.
async fn on_own_thread(
    permit: OwnedSemaphorePermit,
    import: impl FnOnce() -> Result<ImageRecord, StoreError> + Send + 'static,
) -> Result<ImageRecord, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_error = |e: std::io::Error| StoreError::Io {
        path: std::path::PathBuf::from("import thread"),
        action: "run",
        source: e,
    };
    std::thread::Builder::new()
        .name("hvagent-import".into())
        .spawn(move || {
            let _permit = permit;
            let _ = tx.send(import());
        })
        .map_err(thread_error)?;
    rx.await
        .map_err(|_| thread_error(std::io::Error::other("ended without an answer")))?
}

#[tonic::async_trait]
impl pb::image_service_server::ImageService for ImageApi {
    async fn import(
        &self,
        request: Request<pb::ImportImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        // A local path names a file on this node: only local callers may, so that a remote
        // controller cannot copy host files (keys, configs) into an image it then reads.
        let remote = matches!(
            request.extensions().get::<crate::access::Peer>(),
            Some(crate::access::Peer::Tls { .. })
        );
        let r = request.into_inner();
        if remote && !r.source_path.is_empty() {
            return Err(Status::permission_denied(
                "source_path: local files are imported for callers on the Unix socket only; remote callers give source_url",
            ));
        }
        if r.source_path.is_empty() == r.source_url.is_empty() {
            return Err(Status::invalid_argument(
                "source_path, source_url: give exactly one",
            ));
        }
        let permit = self.imports.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "max_imports ({}) imports already running: try again when one has ended ([storage] max_imports)",
                self.max_imports
            ))
        })?;
        let started = std::time::Instant::now();
        let sha256 = (!r.sha256.is_empty()).then_some(r.sha256.clone());
        let record = if r.source_url.is_empty() {
            let guests = self.guests.clone();
            on_own_thread(permit, move || {
                guests.images.import_local(
                    &r.name,
                    std::path::Path::new(&r.source_path),
                    sha256.as_deref(),
                    r.properties,
                    now_unix(),
                )
            })
            .await
        } else {
            self.import_url(r, sha256, permit).await
        }
        .map_err(store_status)?;
        tracing::info!(
            image = %record.name, sha256 = %record.sha256, bytes = record.file_bytes,
            seconds = started.elapsed().as_secs_f64(), "image imported"
        );
        Ok(Response::new(image_to_proto(record, Vec::new())))
    }

    async fn list(
        &self,
        _request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let (guests, _) = self.guests.list().await.map_err(status)?;
        let images = self
            .guests
            .images
            .list()
            .into_iter()
            .map(|r| {
                let users = guests
                    .iter()
                    .filter(|g| g.intent.image == r.name)
                    .map(|g| g.uuid.clone())
                    .collect();
                image_to_proto(r, users)
            })
            .collect::<Vec<_>>();
        let importing: Vec<pb::Image> = self
            .guests
            .images
            .importing()
            .into_iter()
            .filter(|(name, _)| !images.iter().any(|i| &i.name == name))
            .map(|(name, p)| importing_to_proto(name, &p))
            .collect();
        let mut images = [images, importing].concat();
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    async fn get(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let name = request.into_inner().name;
        let record = match self.guests.images.get(&name) {
            Err(StoreError::NotFound(missing)) => {
                let importing = self.guests.images.importing();
                match importing.into_iter().find(|(n, _)| *n == name) {
                    Some((_, p)) => return Ok(Response::new(importing_to_proto(name, &p))),
                    None => Err(StoreError::NotFound(missing)),
                }
            }
            other => other,
        }
        .map_err(store_status)?;
        let users = self.guests.users_of(&name).await.map_err(status)?;
        Ok(Response::new(image_to_proto(record, users)))
    }

    /// Deleting excludes creates that would use the image (they hold it while in flight):
    /// either a create in flight makes this Delete FAILED_PRECONDITION, or the create is
    /// refused; a guest defined on the image is found by `users_of`.
    async fn delete(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        let name = request.into_inner().name;
        let deletion = self
            .guests
            .images
            .begin_delete(&name)
            .map_err(store_status)?;
        let users = self.guests.users_of(&name).await.map_err(status)?;
        deletion.remove(&users).map_err(store_status)?;
        tracing::info!(image = %name, "image deleted");
        Ok(Response::new(pb::DeleteImageResponse {}))
    }
}

pub struct VmApi {
    guests: Arc<Guests>,
    placement: Arc<PlacementState>,
    health: Arc<Health>,
    mutations: super::Mutations,
    /// The identity this node shows target agents (`[migration]`); `None`: Migrate refused.
    migration_tls: Option<hvagent_core::tls::Files>,
}

impl VmApi {
    pub fn new(
        guests: Arc<Guests>,
        placement: Arc<PlacementState>,
        health: Arc<Health>,
        mutations: super::Mutations,
    ) -> Self {
        Self {
            guests,
            placement,
            health,
            mutations,
            migration_tls: None,
        }
    }

    /// Guests may move to other nodes, reached with this identity.
    pub fn with_migration_tls(mut self, files: Option<hvagent_core::tls::Files>) -> Self {
        self.migration_tls = files;
        self
    }

    pub fn into_service(self) -> pb::vm_service_server::VmServiceServer<Self> {
        pb::vm_service_server::VmServiceServer::new(self)
    }

    /// The guest with the volumes attached to it.
    fn with_volumes(&self, g: Guest, volumes: Vec<String>) -> pb::Vm {
        pb::Vm {
            volumes,
            ..self.to_proto(g)
        }
    }

    fn to_proto(&self, g: Guest) -> pb::Vm {
        let now = self.placement.now_ms();
        let alloc = self.placement.lock();
        pb::Vm {
            uuid: g.uuid,
            name: g.intent.name,
            flavor: g.intent.flavor,
            image: g.intent.image,
            state: g.state.to_string(),
            emulation: g.intent.emulation.as_str().into(),
            claim: Some(claim_to_proto(&alloc, &g.intent.claim, now)),
            networks: g.intent.networks,
            macs: g.intent.nics.iter().map(|n| n.mac.clone()).collect(),
            addresses: g.intent.nics.iter().map(|n| n.address.clone()).collect(),
            ingress_kbps: g.intent.nics.iter().map(|n| n.ingress_kbps).collect(),
            egress_kbps: g.intent.nics.iter().map(|n| n.egress_kbps).collect(),
            created_unix: g.intent.created_unix,
            root_disk_gb: g.root_disk_gb,
            resize_pending: g.intent.resize.is_some(),
            old_flavor: g.intent.resize.map(|r| r.old_flavor).unwrap_or_default(),
            // Filled where the domains' XML is read (Get, List, Attach/DetachVolume).
            volumes: Vec::new(),
            boot_volume_made: g.intent.boot_volume.as_ref().is_some_and(|b| b.made),
            boot_volume: g.intent.boot_volume.map(|b| b.name).unwrap_or_default(),
        }
    }
}

#[tonic::async_trait]
impl pb::vm_service_server::VmService for VmApi {
    type WatchEventsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::VmEvent, Status>>;
    type ConsoleStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::ConsoleOutput, Status>> + Send>,
    >;

    async fn console(
        &self,
        request: Request<tonic::Streaming<pb::ConsoleInput>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument(
                "uuid: the console stream ended before its first message, which names the guest",
            )
        })?;
        let session = self
            .guests
            .console(&first.uuid, first.force)
            .await
            .map_err(status)?;
        let input = session.input;
        // Keystrokes go on from a task of their own; when the client ends its side (or goes
        // away) the sender drops and the session ends.
        tokio::spawn(async move {
            if !first.data.is_empty() && input.send(first.data).await.is_err() {
                return;
            }
            while let Ok(Some(m)) = inbound.message().await {
                if input.send(m.data).await.is_err() {
                    return;
                }
            }
        });
        let output = futures_util::stream::unfold(session.output, |mut output| async move {
            let item = match output.recv().await? {
                ConsoleEvent::Data(data) => Ok(pb::ConsoleOutput { data }),
                ConsoleEvent::End(ConsoleEnd::Closed) => return None,
                ConsoleEvent::End(ConsoleEnd::TakenOver) => Err(Status::aborted(
                    "console: taken over by another session (force)",
                )),
                ConsoleEvent::End(ConsoleEnd::Failed(m)) => {
                    Err(Status::unavailable(format!("console: {m}")))
                }
            };
            Some((item, output))
        });
        Ok(Response::new(Box::pin(output)))
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let only = request.into_inner().uuid.to_ascii_lowercase();
        if !only.is_empty() && !crate::placement::allocator::is_uuid(&only) {
            return Err(Status::invalid_argument(
                "uuid: must be a UUID (8-4-4-4-12 hex digits) or empty",
            ));
        }
        // Subscribed before answering: every event after the call returns is seen.
        let mut events = self.guests.subscribe();
        let guests = self.guests.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut own: std::collections::BTreeSet<String> = guests
                .list()
                .await
                .map(|(gs, _)| gs.into_iter().map(|g| g.uuid).collect())
                .unwrap_or_default();
            loop {
                let event = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let lost = pb::VmEvent {
                            kind: EventKind::Lost.as_str().into(),
                            detail: format!("{n} events"),
                            ..Default::default()
                        };
                        if tx.send(Ok(lost)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let wanted = if event.kind == EventKind::Tuned {
                    // Pin and tuning changes are the health sampler's business, not a
                    // lifecycle event.
                    false
                } else if event.kind == EventKind::Lost {
                    // Every watcher: some of its guests' events may be missing.
                    true
                } else if event.kind == EventKind::Migration {
                    // The agent's own, about a guest it moves or takes in (one arriving is
                    // not its guest yet).
                    only.is_empty() || event.uuid == only
                } else if only.is_empty() {
                    own.contains(&event.uuid) || {
                        let mine = guests.is_own(&event.uuid).await;
                        if mine {
                            own.insert(event.uuid.clone());
                        }
                        mine
                    }
                } else {
                    event.uuid == only
                };
                if !wanted {
                    continue;
                }
                let out = pb::VmEvent {
                    uuid: event.uuid,
                    name: event.name,
                    kind: event.kind.as_str().into(),
                    detail: event.detail.into(),
                    unix_ms: event.unix_ms,
                    progress: event.progress.map(|p| pb::MigrationProgress {
                        processed_bytes: p.processed_bytes,
                        remaining_bytes: p.remaining_bytes,
                        total_bytes: p.total_bytes,
                    }),
                };
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn create(
        &self,
        request: Request<pb::CreateVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let guests = self.guests.clone();
        let req = CreateRequest {
            uuid: r.uuid,
            name: r.name,
            flavor: r.flavor,
            image: r.image,
            networks: r.networks,
            addresses: r.addresses,
            macs: r.macs,
            ingress_kbps: r.ingress_kbps,
            egress_kbps: r.egress_kbps,
            user_data: r.user_data,
            ssh_keys: r.ssh_keys,
            metadata: r.metadata,
            reservation: r.reservation,
            boot_volume: r.boot_volume,
        };
        let guest = self
            .mutations
            .run(async move { guests.create(req).await }, status)
            .await?;
        Ok(Response::new(self.to_proto(guest)))
    }

    async fn get(&self, request: Request<pb::GetVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let g = self
            .guests
            .get(&request.into_inner().uuid)
            .await
            .map_err(status)?;
        let volumes = self.guests.volumes_of(&g).await.map_err(status)?;
        Ok(Response::new(self.with_volumes(g, volumes)))
    }

    async fn list(
        &self,
        _request: Request<pb::ListVmsRequest>,
    ) -> Result<Response<pb::ListVmsResponse>, Status> {
        let (guests, unreadable) = self.guests.list().await.map_err(status)?;
        let mut attached = self.guests.attached_volumes().await.map_err(status)?;
        Ok(Response::new(pb::ListVmsResponse {
            vms: guests
                .into_iter()
                .map(|g| {
                    let volumes = attached.remove(&g.uuid).unwrap_or_default();
                    self.with_volumes(g, volumes)
                })
                .collect(),
            unreadable,
        }))
    }

    async fn start(
        &self,
        request: Request<pb::StartVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let (guests, uuid) = (self.guests.clone(), request.into_inner().uuid);
        let g = self
            .mutations
            .run(async move { guests.start(&uuid).await }, status)
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn stop(&self, request: Request<pb::StopVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let timeout = if r.timeout_seconds == 0 {
            crate::guest::DEFAULT_STOP_TIMEOUT
        } else {
            Duration::from_secs(u64::from(r.timeout_seconds))
        };
        let guests = self.guests.clone();
        let g = self
            .mutations
            .run(
                async move { guests.stop(&r.uuid, r.force, timeout).await },
                status,
            )
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn reboot(
        &self,
        request: Request<pb::RebootVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let guests = self.guests.clone();
        let g = self
            .mutations
            .run(async move { guests.reboot(&r.uuid, r.hard).await }, status)
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn pause(
        &self,
        request: Request<pb::PauseVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let (guests, uuid) = (self.guests.clone(), request.into_inner().uuid);
        let g = self
            .mutations
            .run(async move { guests.pause(&uuid).await }, status)
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let (guests, uuid) = (self.guests.clone(), request.into_inner().uuid);
        let g = self
            .mutations
            .run(async move { guests.resume_paused(&uuid).await }, status)
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteVmRequest>,
    ) -> Result<Response<pb::DeleteVmResponse>, Status> {
        let (guests, uuid) = (self.guests.clone(), request.into_inner().uuid);
        let deleted = self
            .mutations
            .run(async move { guests.delete(&uuid).await }, status)
            .await?;
        Ok(Response::new(pb::DeleteVmResponse { deleted }))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotVmRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let r = request.into_inner();
        let guests = self.guests.clone();
        let req = SnapshotRequest {
            uuid: r.uuid,
            image: r.image,
            properties: r.properties,
        };
        let record = self
            .mutations
            .run(async move { guests.snapshot(req).await }, snapshot_status)
            .await?;
        Ok(Response::new(image_to_proto(record, Vec::new())))
    }

    async fn resize(
        &self,
        request: Request<pb::ResizeVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let guests = self.guests.clone();
        let g = self
            .mutations
            .run(
                async move { guests.resize(&r.uuid, &r.flavor).await },
                status,
            )
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn migrate(
        &self,
        request: Request<pb::MigrateVmRequest>,
    ) -> Result<Response<pb::MigrateVmResponse>, Status> {
        let r = request.into_inner();
        let (guests, files) = (self.guests.clone(), self.migration_tls.clone());
        let migrated = self
            .mutations
            .run(
                async move {
                    // A malformed UUID is refused before the target is dialed.
                    crate::guest::checked_uuid(&r.uuid)?;
                    let files = super::migration::TargetAgent::identity(files)?;
                    let target = super::migration::TargetAgent::connect(&r.target, &files).await?;
                    guests.migrate(&r.uuid, &target).await
                },
                status,
            )
            .await?;
        Ok(Response::new(pb::MigrateVmResponse {
            elapsed_ms: migrated.elapsed.as_millis() as u64,
            downtime_ms: migrated.downtime.map(|d| d.as_millis() as u64),
        }))
    }

    async fn confirm_resize(
        &self,
        request: Request<pb::ConfirmResizeVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let (guests, uuid) = (self.guests.clone(), request.into_inner().uuid);
        let g = self
            .mutations
            .run(async move { guests.confirm_resize(&uuid).await }, status)
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn revert_resize(
        &self,
        request: Request<pb::RevertResizeVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let (guests, uuid) = (self.guests.clone(), request.into_inner().uuid);
        let g = self
            .mutations
            .run(async move { guests.revert_resize(&uuid).await }, status)
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn attach_volume(
        &self,
        request: Request<pb::AttachVolumeRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let guests = self.guests.clone();
        let (g, volumes) = self
            .mutations
            .run(
                async move { guests.attach_volume(&r.uuid, &r.volume).await },
                super::volume::call_status,
            )
            .await?;
        Ok(Response::new(self.with_volumes(g, volumes)))
    }

    async fn detach_volume(
        &self,
        request: Request<pb::DetachVolumeRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let guests = self.guests.clone();
        let (g, volumes) = self
            .mutations
            .run(
                async move { guests.detach_volume(&r.uuid, &r.volume).await },
                super::volume::call_status,
            )
            .await?;
        Ok(Response::new(self.with_volumes(g, volumes)))
    }

    async fn attach_interface(
        &self,
        request: Request<pb::AttachInterfaceRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let guests = self.guests.clone();
        let req = NicRequest {
            uuid: r.uuid,
            network: r.network,
            address: r.address,
            mac: r.mac,
            ingress_kbps: r.ingress_kbps,
            egress_kbps: r.egress_kbps,
        };
        let g = self
            .mutations
            .run(async move { guests.attach_interface(req).await }, status)
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn detach_interface(
        &self,
        request: Request<pb::DetachInterfaceRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        let guests = self.guests.clone();
        let g = self
            .mutations
            .run(
                async move { guests.detach_interface(&r.uuid, &r.mac).await },
                super::volume::call_status,
            )
            .await?;
        Ok(Response::new(self.to_proto(g)))
    }

    async fn get_console_log(
        &self,
        request: Request<pb::GetConsoleLogRequest>,
    ) -> Result<Response<pb::ConsoleLog>, Status> {
        let r = request.into_inner();
        let (data, total_bytes) = self
            .guests
            .console_log(&r.uuid, u64::from(r.max_bytes))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ConsoleLog { data, total_bytes }))
    }

    async fn get_guest_info(
        &self,
        request: Request<pb::GetGuestInfoRequest>,
    ) -> Result<Response<pb::GuestInfo>, Status> {
        let info = self
            .guests
            .guest_info(&request.into_inner().uuid)
            .await
            .map_err(status)?;
        Ok(Response::new(guest_info_to_proto(info)))
    }

    async fn get_guarantee_report(
        &self,
        request: Request<pb::GetGuaranteeReportRequest>,
    ) -> Result<Response<pb::GuaranteeReport>, Status> {
        let uuid = request.into_inner().uuid;
        let report = self.health.report(&uuid).await.map_err(status)?;
        Ok(Response::new(super::health::report_to_proto(&report)))
    }
}

#[cfg(test)]
mod guest_info_tests {
    use super::*;
    use crate::domain::guest_agent::{GuestFilesystem, GuestInterface, GuestOs, GuestReport};

    #[test]
    fn a_guest_agents_report_maps_onto_the_proto() {
        let info = GuestInfo {
            report: GuestReport {
                os: GuestOs {
                    id: "debian".into(),
                    name: "Debian GNU/Linux".into(),
                    version: "12".into(),
                    kernel_release: "6.1.0-57-cloud-amd64".into(),
                },
                hostname: "vm-a".into(),
                interfaces: vec![GuestInterface {
                    name: "eth0".into(),
                    mac: "52:54:00:00:00:01".into(),
                    addresses: vec!["10.9.0.5/24".into()],
                }],
                filesystems: vec![
                    GuestFilesystem {
                        mountpoint: "/".into(),
                        fstype: "ext4".into(),
                        total_bytes: Some(100),
                        used_bytes: Some(40),
                    },
                    GuestFilesystem {
                        mountpoint: "/boot".into(),
                        fstype: "vfat".into(),
                        total_bytes: None,
                        used_bytes: None,
                    },
                ],
            },
            sampled_unix_ms: 1_700_000_000_123,
        };
        let p = guest_info_to_proto(info);
        let os = p.os.unwrap();
        assert_eq!(
            (os.id.as_str(), os.name.as_str(), os.version.as_str()),
            ("debian", "Debian GNU/Linux", "12")
        );
        assert_eq!(os.kernel_release, "6.1.0-57-cloud-amd64");
        assert_eq!(p.hostname, "vm-a");
        assert_eq!(p.interfaces[0].mac, "52:54:00:00:00:01");
        assert_eq!(p.interfaces[0].addresses, ["10.9.0.5/24"]);
        assert_eq!(p.filesystems[0].r#type, "ext4");
        assert_eq!(
            (p.filesystems[0].total_bytes, p.filesystems[0].used_bytes),
            (100, 40)
        );
        assert_eq!(
            (p.filesystems[1].total_bytes, p.filesystems[1].used_bytes),
            (0, 0),
            "not reported"
        );
        assert_eq!(p.sampled_unix_ms, 1_700_000_000_123);
    }
}
