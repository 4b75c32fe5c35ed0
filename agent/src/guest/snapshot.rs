//! Snapshot: a guest's root disk (its qcow2 overlay on the base image) flattened into a new,
//! standalone qcow2 image in the store, which Create can use like an imported one. The guest is
//! busy meanwhile (no create, delete or other snapshot of it) and its base image held.
//!
//! How the disk is read depends on the guest's state:
//! - shut off: under QEMU's image lock, so a start meanwhile is refused by QEMU rather than
//!   writing a disk being copied;
//! - running: its file systems frozen through the guest agent when it answers (`guest_info`),
//!   paused (libvirt suspend: QEMU drains and flushes its disk writes first), copied, resumed,
//!   thawed; so the copy holds clean file systems, or without an agent is crash-consistent
//!   (what a power cut at that moment leaves). The image's property
//!   `hvagent_snapshot_consistency` says which (`filesystem`, `crash`; `stopped` for a
//!   shut-off guest);
//! - paused by its owner: copied as it is, and left paused.
//!
//! The copy goes through the image store as an import does (`ImageStore::produce`): the same
//! name rules, size cap and kept free space, staging file and checks; a failure leaves no
//! image and the guest resumed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::error::GuestError;
use super::guest_info::{CONSISTENCY_PROPERTY, Consistency, Freeze};
use super::request::checked_uuid;
use super::{Guests, now_unix};
use crate::domain::guests::DomainError;
use crate::domain::xml::Intent;
use crate::domain::{DomainState, Hypervisor};
use crate::storage::disks::{self, DiskError};
use crate::storage::images::{Begun, Bounds, ImportTicket, check_name};
use crate::storage::volumes::VolumeSource;
use crate::storage::{GuestFiles, ImageRecord, StoreError};

/// A Snapshot call: the guest, the new image's name and properties added to (or replacing)
/// those copied from the guest's image.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub uuid: String,
    pub image: String,
    pub properties: BTreeMap<String, String>,
}

/// Why a snapshot failed: the guest's side, or the store's (whose limits have their own
/// codes).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DiskError> for SnapshotError {
    fn from(e: DiskError) -> Self {
        SnapshotError::Guest(GuestError::Disk(e))
    }
}

impl From<DomainError> for SnapshotError {
    fn from(e: DomainError) -> Self {
        SnapshotError::Guest(e.into())
    }
}

/// How the root disk of a guest is read, by its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// Shut off: read under QEMU's lock.
    Locked,
    /// Running: paused for the copy, resumed after it.
    Pause,
    /// Paused by its owner: read as it is, left paused.
    AsPaused,
}

impl Capture {
    fn of(uuid: &str, state: DomainState) -> Result<Capture, GuestError> {
        match state {
            DomainState::ShutOff | DomainState::Crashed => Ok(Capture::Locked),
            DomainState::Running | DomainState::Blocked => Ok(Capture::Pause),
            DomainState::Paused => Ok(Capture::AsPaused),
            // Between states (shutting down), asleep (its QEMU holds the disk but cannot be
            // paused as a running one) or not known: no consistent copy can be promised.
            other => Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} is {other}; a snapshot needs it running, paused or shut off"
            ))),
        }
    }

    /// Whether the disk is read while a QEMU holds it open (its lock shared).
    fn shared(self) -> bool {
        self != Capture::Locked
    }
}

/// The file a snapshot keeps in the guest's directory while it holds the guest paused: an
/// agent killed meanwhile finds it at its next start and resumes the guest.
const PAUSED_MARKER: &str = "snapshot-paused";

fn marker(files: &GuestFiles) -> PathBuf {
    files.dir.join(PAUSED_MARKER)
}

/// A guest this snapshot paused: resumed by `end`, or when dropped on a failure's way out.
struct Pause {
    hypervisor: Arc<dyn Hypervisor>,
    uuid: String,
    marker: PathBuf,
    resumed: bool,
    /// The guest's file systems frozen before the pause: thawed after the resume (a paused
    /// guest's agent cannot answer), by `end` or, as a field, after `drop` resumed.
    frozen: Option<Freeze>,
}

impl Pause {
    /// Leaves the marker, then pauses the guest.
    fn start(
        hypervisor: Arc<dyn Hypervisor>,
        uuid: &str,
        files: &GuestFiles,
        frozen: Option<Freeze>,
    ) -> Result<Pause, SnapshotError> {
        let marker = marker(files);
        std::fs::write(&marker, b"").map_err(|source| {
            GuestError::Disk(DiskError::Io {
                path: marker.clone(),
                action: "create",
                source,
            })
        })?;
        if let Err(e) = hypervisor.suspend(uuid) {
            let _ = std::fs::remove_file(&marker);
            return Err(e.into());
        }
        Ok(Pause {
            hypervisor,
            uuid: uuid.to_string(),
            marker,
            resumed: false,
            frozen,
        })
    }

    /// Resumes the guest. One stopped meanwhile (its owner's Stop) is left stopped: only a
    /// guest still paused is this snapshot's to resume.
    fn end(mut self) -> Result<(), DomainError> {
        self.resumed = true;
        let resumed = match self.hypervisor.resume(&self.uuid) {
            Err(e) if self.hypervisor.state(&self.uuid).ok() != Some(DomainState::Paused) => {
                tracing::warn!(vm = %self.uuid, error = %e, "snapshot: the guest stopped while paused; left stopped");
                Ok(())
            }
            other => other,
        };
        if resumed.is_ok() {
            let _ = std::fs::remove_file(&self.marker);
        }
        if let Some(frozen) = self.frozen.take() {
            frozen.end();
        }
        resumed
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        if self.resumed {
            return;
        }
        match self.hypervisor.resume(&self.uuid) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.marker);
            }
            // The marker stays: the agent's next start tries again.
            Err(e) => {
                tracing::error!(vm = %self.uuid, error = %e, "snapshot failed and the guest cannot be resumed: it stays paused")
            }
        }
    }
}

impl Guests {
    /// The file of guest `uuid`'s boot disk and its format: its local root disk, or the data
    /// file of its boot volume (a volume on a host device or an NBD export has none here).
    fn boot_disk_file(&self, uuid: &str, intent: &Intent) -> Result<(PathBuf, String), GuestError> {
        let Some(boot) = &intent.boot_volume else {
            let root = GuestFiles::new(&self.storage_root, uuid).root_disk();
            return Ok((root, "qcow2".into()));
        };
        let record = self.volumes.get(&boot.name)?;
        if record.source != VolumeSource::Store {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} boots from volume {:?}, a {} volume outside the agent's store: copy it where it lives",
                record.name,
                record.source.kind()
            )));
        }
        Ok((
            self.volumes.file(&record.name, &record.format),
            record.format,
        ))
    }

    /// Captures guest `uuid`'s root disk as the new image `image` (see the module's comment).
    pub async fn snapshot(
        self: &Arc<Self>,
        req: SnapshotRequest,
    ) -> Result<ImageRecord, SnapshotError> {
        let uuid = checked_uuid(&req.uuid)?;
        check_name("image", &req.image)?;
        let _busy = self.exclusive(&uuid).await?;
        let guest = self.get(&uuid).await?;
        let capture = Capture::of(&uuid, guest.state)?;
        let source = self.image_of(&guest.intent)?;
        let _hold = source
            .as_ref()
            .map(|s| self.images.hold(&s.name, &uuid))
            .transpose()?;
        let (root, format) = self.boot_disk_file(&uuid, &guest.intent)?;
        let mut properties = source.map(|s| s.properties).unwrap_or_default();
        properties.extend(req.properties);
        let (this, u) = (self.clone(), uuid.clone());
        // On one blocking thread: the freeze (libvirt, the guest agent) and the ticket, so that
        // a ticket refused after the freeze thaws there.
        let (ticket, frozen) = self
            .blocking(move || Ok(this.begin_snapshot(&u, &req.image, properties, capture)))
            .await??;
        let bounds = Bounds::starting_now(self.images.limits());
        let this = self.clone();
        let started = Instant::now();
        let u = uuid.clone();
        let record = self
            .blocking(move || {
                Ok(this.capture(&ticket, &u, (&root, &format), (capture, frozen), &bounds))
            })
            .await??;
        tracing::info!(
            vm = %uuid, image = %record.name, sha256 = %record.sha256, bytes = record.file_bytes,
            seconds = started.elapsed().as_secs_f64(), "snapshot taken"
        );
        Ok(record)
    }

    /// On a blocking thread: freezes a running guest's file systems when its agent answers,
    /// records how consistent the copy will be in `properties` (over any the caller gave),
    /// and takes the ticket for the new image.
    fn begin_snapshot(
        &self,
        uuid: &str,
        image: &str,
        mut properties: BTreeMap<String, String>,
        capture: Capture,
    ) -> Result<(ImportTicket, Option<Freeze>), SnapshotError> {
        let frozen = match capture {
            Capture::Pause => Freeze::start(
                self.hypervisor.clone(),
                uuid,
                &GuestFiles::new(&self.storage_root, uuid),
            ),
            Capture::Locked | Capture::AsPaused => None,
        };
        let consistency = match capture {
            Capture::Locked => Consistency::Stopped,
            _ if frozen.is_some() => Consistency::Filesystem,
            Capture::Pause | Capture::AsPaused => Consistency::Crash,
        };
        properties.insert(
            CONSISTENCY_PROPERTY.to_string(),
            consistency.as_str().to_string(),
        );
        let ticket = match self.images.begin(
            image,
            None,
            properties,
            "image",
            format!("snapshot of guest {uuid}"),
            now_unix(),
        )? {
            Begun::Started(ticket) => ticket,
            Begun::Existing(r) => return Err(exists(r).into()),
        };
        // Taken while the ticket holds the name: no import can place it meanwhile.
        match self.images.get(image) {
            Ok(r) => return Err(exists(r).into()),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok((ticket, frozen))
    }

    /// The copy itself, on a blocking thread: pause (when running), measure, flatten into the
    /// store's staging file, resume, thaw (when frozen), then hash and place.
    fn capture(
        &self,
        ticket: &ImportTicket,
        uuid: &str,
        (root, format): (&Path, &str),
        (capture, frozen): (Capture, Option<Freeze>),
        bounds: &Bounds,
    ) -> Result<ImageRecord, SnapshotError> {
        let paused_at = Instant::now();
        let pause = match capture {
            Capture::Pause => Some(Pause::start(
                self.hypervisor.clone(),
                uuid,
                &GuestFiles::new(&self.storage_root, uuid),
                frozen,
            )?),
            Capture::Locked | Capture::AsPaused => None,
        };
        let shared = capture.shared();
        // Measured as paused: the free-space check holds what the copy will write.
        let estimate = disks::measure_flat(root, format, shared)?;
        self.images.produce(
            ticket,
            estimate,
            bounds,
            |tmp| {
                let flat = disks::flatten(root, format, tmp, shared);
                // The copy is whole: the guest runs again while it is hashed and placed.
                if let Some(pause) = pause {
                    pause.end()?;
                    tracing::info!(vm = %uuid, ms = paused_at.elapsed().as_millis() as u64, "snapshot: guest resumed");
                }
                Ok::<(), SnapshotError>(flat?)
            },
            now_unix(),
        )
    }
}

impl Guests {
    /// Resumes the guests that a snapshot paused and did not live to resume (the agent was
    /// killed meanwhile), as the marker it left says: the snapshot's copy is gone with it (its
    /// staging file is swept), so the guest goes back to how it was before. Runs once, when
    /// placement is rebuilt at start-up; a guest paused by its owner has no marker and stays.
    pub(super) async fn resume_paused_by_snapshots(&self) {
        let Ok(domains) = self.domains().await else {
            return;
        };
        for d in domains {
            let marker = marker(&GuestFiles::new(&self.storage_root, &d.uuid));
            if !marker.exists() {
                continue;
            }
            let hypervisor = self.hypervisor.clone();
            let uuid = d.uuid.clone();
            let paused = d.state == DomainState::Paused;
            let resumed = self
                .blocking(move || {
                    if paused {
                        hypervisor.resume(&uuid)?;
                    }
                    let _ = std::fs::remove_file(&marker);
                    Ok(())
                })
                .await;
            match resumed {
                Ok(()) if paused => {
                    tracing::warn!(vm = %d.uuid, "resumed: a snapshot paused it and the agent stopped before resuming it")
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(vm = %d.uuid, error = %e, "a snapshot paused this guest and it cannot be resumed")
                }
            }
        }
        // Resumed first: a paused guest's agent cannot answer a thaw.
        self.thaw_frozen_by_snapshots().await;
    }
}

fn exists(r: ImageRecord) -> StoreError {
    StoreError::Exists {
        name: r.name,
        sha256: r.sha256,
    }
}

#[cfg(test)]
mod tests;
