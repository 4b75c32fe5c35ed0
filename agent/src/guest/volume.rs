//! Volumes and guests: attach (hot-plug into a running guest, and into its definition, in one
//! libvirt call), detach, and who uses a volume. The truth about attachments is libvirt's: a
//! volume is used by every guest of this agent whose live or persistent XML has a disk with
//! its source, so nothing can disagree after a crash and no second record is kept.
//!
//! Attaches, and Deletes of volumes, run one at a time under `VolumeStore::attach`, held from
//! the in-use check to the libvirt call: two attaches of one volume cannot both win, nor can a
//! volume be deleted while it is attached. Each call also holds its guest exclusive (no create,
//! delete or snapshot of it meanwhile).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::error::GuestError;
use super::request::checked_uuid;
use super::{Guest, Guests, now_unix};
use crate::domain::DomainState;
use crate::domain::volume_disk::{self, FoundDisk, VolumeDisk};
use crate::storage::volumes::VolumeSpec;
use crate::storage::{StoreError, VolumeError, VolumeRecord, VolumeStore};

/// How long a live detach waits for the guest to release the disk (ACPI eject).
pub const DETACH_WAIT: Duration = Duration::from_secs(30);
const DETACH_POLL: Duration = Duration::from_millis(200);

/// Why a volume call failed: the guest's or the store's side (one code each), or a guest that
/// did not release a disk in time.
#[derive(Debug, thiserror::Error)]
pub enum VolumeCallError {
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The persistent definition is without the disk, the running guest still has it.
    #[error("{0}")]
    NotReleased(String),
}

impl From<VolumeError> for GuestError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::Invalid { .. } => GuestError::Invalid(e.to_string()),
            VolumeError::NotFound(_) => GuestError::NotFound(e.to_string()),
            VolumeError::Exists { .. } => GuestError::AlreadyExists(e.to_string()),
            VolumeError::InUse(_) | VolumeError::Unreadable { .. } => {
                GuestError::Precondition(e.to_string())
            }
            VolumeError::Disk(d) => GuestError::Disk(d),
            VolumeError::Io { .. } => GuestError::Internal(e.to_string()),
        }
    }
}

impl From<VolumeError> for VolumeCallError {
    fn from(e: VolumeError) -> Self {
        VolumeCallError::Guest(e.into())
    }
}

/// A guest's disks: as it runs, and as it is defined.
struct Disks {
    live: Vec<FoundDisk>,
    persistent: Vec<FoundDisk>,
}

impl Disks {
    fn has(&self, key: &str) -> (bool, bool) {
        let has = |ds: &[FoundDisk]| ds.iter().any(|d| d.key.as_deref() == Some(key));
        (has(&self.live), has(&self.persistent))
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.live
            .iter()
            .chain(&self.persistent)
            .filter_map(|d| d.key.as_deref())
    }
}

/// A Create request for a volume, as the API gives it.
#[derive(Debug, Clone, Default)]
pub struct VolumeRequest {
    pub name: String,
    pub size_gb: u64,
    pub format: String,
    pub shareable: bool,
    pub image: String,
    pub source: String,
}

impl Guests {
    /// Reads both XMLs of `uuid` (blocking).
    fn read_disks(&self, uuid: &str) -> Result<Disks, GuestError> {
        let parse = |xml: String| {
            volume_disk::disks(&xml)
                .map_err(|e| GuestError::Internal(format!("domain {uuid}: XML: {e}")))
        };
        Ok(Disks {
            live: parse(self.hypervisor.live_xml(uuid)?)?,
            persistent: parse(self.hypervisor.inactive_xml(uuid)?)?,
        })
    }

    /// Every disk source key in use, with the guests using it (sorted).
    async fn disk_users(
        self: &std::sync::Arc<Self>,
    ) -> Result<BTreeMap<String, Vec<String>>, GuestError> {
        let uuids: Vec<String> = self.domains().await?.into_iter().map(|d| d.uuid).collect();
        let this = self.clone();
        self.blocking(move || {
            let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for uuid in uuids {
                let disks = match this.read_disks(&uuid) {
                    Ok(d) => d,
                    // Undefined since the listing: it uses nothing.
                    Err(GuestError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                for key in disks.keys() {
                    let list = users.entry(key.to_string()).or_default();
                    if !list.contains(&uuid) {
                        list.push(uuid.clone());
                    }
                }
            }
            Ok(users)
        })
        .await
    }

    /// The guests using `record`.
    pub(super) async fn users(
        self: &std::sync::Arc<Self>,
        record: &VolumeRecord,
    ) -> Result<Vec<String>, GuestError> {
        let key = self.volumes.disk_source(record).key();
        Ok(self.disk_users().await?.remove(&key).unwrap_or_default())
    }

    /// Every volume with the guests using it, and the volumes whose records cannot be read.
    pub async fn volumes(
        self: &std::sync::Arc<Self>,
    ) -> Result<(Vec<(VolumeRecord, Vec<String>)>, Vec<String>), GuestError> {
        let users = self.disk_users().await?;
        let (records, unreadable) = self.volumes.list();
        let with_users = records
            .into_iter()
            .map(|r| {
                let key = self.volumes.disk_source(&r).key();
                let u = users.get(&key).cloned().unwrap_or_default();
                (r, u)
            })
            .collect();
        Ok((with_users, unreadable))
    }

    /// One volume with the guests using it.
    pub async fn volume(
        self: &std::sync::Arc<Self>,
        name: &str,
    ) -> Result<(VolumeRecord, Vec<String>), GuestError> {
        let record = self.volumes.get(name)?;
        let users = self.users(&record).await?;
        Ok((record, users))
    }

    /// The names of the volumes attached to each guest, by UUID.
    pub async fn attached_volumes(
        self: &std::sync::Arc<Self>,
    ) -> Result<BTreeMap<String, Vec<String>>, GuestError> {
        let boot: BTreeMap<String, String> = self
            .list()
            .await?
            .0
            .into_iter()
            .filter_map(|g| g.intent.boot_volume.map(|b| (g.uuid, b.name)))
            .collect();
        let mut by_guest: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (record, users) in self.volumes().await?.0 {
            for uuid in users {
                if boot.get(&uuid) != Some(&record.name) {
                    by_guest.entry(uuid).or_default().push(record.name.clone());
                }
            }
        }
        Ok(by_guest)
    }

    /// Makes a volume (see `storage::volumes`); an image to copy is held meanwhile, so that
    /// it cannot be deleted under the copy.
    pub async fn create_volume(
        self: &std::sync::Arc<Self>,
        req: VolumeRequest,
    ) -> Result<VolumeRecord, GuestError> {
        let mut spec = VolumeSpec {
            name: req.name.clone(),
            size_gb: req.size_gb,
            format: req.format,
            shareable: req.shareable,
            image: None,
            source: req.source,
        };
        let hold = if req.image.is_empty() {
            None
        } else {
            if !spec.source.is_empty() {
                return Err(GuestError::Invalid(
                    "image: an external volume (source) cannot be a copy of an image".into(),
                ));
            }
            let image = self.images.get(&req.image).map_err(|e| match e {
                StoreError::Invalid { rule, .. } => GuestError::Invalid(format!("image: {rule}")),
                other => other.into(),
            })?;
            let hold = self
                .images
                .hold(&image.name, &format!("volume {}", req.name))?;
            spec.image = Some((
                image.name.clone(),
                self.images.file(&image.name),
                image.format,
            ));
            Some(hold)
        };
        let this = self.clone();
        let record = self
            .blocking(move || {
                let made = this.volumes.create(&spec, now_unix());
                drop(hold);
                Ok(made?)
            })
            .await?;
        tracing::info!(volume = %record.name, kind = record.source.kind(), bytes = record.size_bytes, "volume created");
        Ok(record)
    }

    /// Deletes a volume no guest uses (a store volume's data with it; an external one is only
    /// forgotten).
    pub async fn delete_volume(self: &std::sync::Arc<Self>, name: &str) -> Result<(), GuestError> {
        let record = self.volumes.get(name)?;
        VolumeStore::refuse_arriving(&record)?;
        let _one_at_a_time = self.volumes.attach.lock().await;
        let users = self.users(&record).await?;
        if !users.is_empty() {
            return Err(VolumeError::InUse(format!(
                "volume {name:?} is attached to {}: detach it first",
                users.join(", ")
            ))
            .into());
        }
        let this = self.clone();
        let n = name.to_string();
        self.blocking(move || Ok(this.volumes.delete(&n)?)).await?;
        tracing::info!(volume = %name, kind = record.source.kind(), "volume deleted");
        Ok(())
    }

    /// Attaches `volume` to guest `uuid` as the first free `vdX`; attached already is the
    /// guest as it is. Returns the guest and its volumes.
    pub async fn attach_volume(
        self: &std::sync::Arc<Self>,
        uuid: &str,
        volume: &str,
    ) -> Result<(Guest, Vec<String>), VolumeCallError> {
        let uuid = checked_uuid(uuid)?;
        let record = self.volumes.get(volume)?;
        VolumeStore::refuse_arriving(&record)?;
        // The attach lock before the guest's busy mark, as Create takes them: a Create retry
        // of this guest holds the attach lock while it waits for the guest not to be busy.
        let _one_at_a_time = self.volumes.attach.lock().await;
        let _busy = self.exclusive(&uuid).await?;
        let guest = self.get(&uuid).await?;
        let key = self.volumes.disk_source(&record).key();
        let others: Vec<String> = self
            .disk_users()
            .await?
            .remove(&key)
            .unwrap_or_default()
            .into_iter()
            .filter(|u| *u != uuid)
            .collect();
        if !others.is_empty() && !record.shareable {
            return Err(GuestError::Precondition(format!(
                "volume: {volume:?} is attached to guest {} and is not shareable",
                others.join(", ")
            ))
            .into());
        }
        let disk = VolumeDisk {
            source: self.volumes.disk_source(&record),
            format: record.format.clone(),
            target: String::new(),
            serial: volume_disk::serial(&record.name),
            shareable: record.shareable,
        };
        let this = self.clone();
        let u = uuid.clone();
        let started = Instant::now();
        let target = self
            .blocking(move || {
                let disks = this.read_disks(&u)?;
                match disks.has(&disk.source.key()) {
                    (_, true) => return Ok(None),
                    (true, false) => {
                        return Err(GuestError::Precondition(format!(
                            "volume: a detach of {:?} from {u} waits for the guest to release it; detach again, then attach",
                            disk.serial
                        )));
                    }
                    (false, false) => {}
                }
                let disk = VolumeDisk {
                    target: volume_disk::free_target(&[&disks.live, &disks.persistent]),
                    ..disk
                };
                let xml = volume_disk::disk_xml(&disk)
                    .map_err(|e| GuestError::Internal(format!("disk XML: {e}")))?;
                this.hypervisor.attach_device(&u, &xml)?;
                Ok(Some(disk.target))
            })
            .await?;
        if let Some(target) = target {
            tracing::info!(vm = %uuid, volume = %volume, %target, ms = started.elapsed().as_millis() as u64, "volume attached");
        }
        let volumes = self.volumes_of(&guest).await?;
        Ok((guest, volumes))
    }

    /// Detaches `volume` from guest `uuid`: from its definition at once, from the running
    /// guest when it releases the disk (waited for up to [`DETACH_WAIT`]). A volume that is not
    /// attached is the guest as it is.
    pub async fn detach_volume(
        self: &std::sync::Arc<Self>,
        uuid: &str,
        volume: &str,
    ) -> Result<(Guest, Vec<String>), VolumeCallError> {
        self.detach_within(uuid, volume, DETACH_WAIT).await
    }

    /// [`Guests::detach_volume`], waiting `wait` for the guest to release the disk.
    async fn detach_within(
        self: &std::sync::Arc<Self>,
        uuid: &str,
        volume: &str,
        wait: Duration,
    ) -> Result<(Guest, Vec<String>), VolumeCallError> {
        let uuid = checked_uuid(uuid)?;
        let record = self.volumes.get(volume)?;
        let _busy = self.exclusive(&uuid).await?;
        let guest = self.get(&uuid).await?;
        if guest
            .intent
            .boot_volume
            .as_ref()
            .is_some_and(|b| b.name == volume)
        {
            return Err(GuestError::Precondition(format!(
                "volume: {volume:?} is the boot disk of guest {uuid}; it goes with the guest (VmService.Delete)"
            ))
            .into());
        }
        let key = self.volumes.disk_source(&record).key();
        let this = self.clone();
        let (u, k) = (uuid.clone(), key.clone());
        let started = Instant::now();
        let running = guest.state != DomainState::ShutOff;
        let live = self
            .blocking(move || {
                let disks = this.read_disks(&u)?;
                let (live, persistent) = disks.has(&k);
                if persistent || (live && running) {
                    let target = disks
                        .persistent
                        .iter()
                        .chain(&disks.live)
                        .find(|d| d.key.as_deref() == Some(&k))
                        .map(|d| d.target.clone())
                        .unwrap_or_default();
                    let xml = volume_disk::disk_xml(&VolumeDisk {
                        source: this.volumes.disk_source(&record),
                        format: record.format.clone(),
                        target,
                        serial: String::new(),
                        shareable: record.shareable,
                    })
                    .map_err(|e| GuestError::Internal(format!("disk XML: {e}")))?;
                    if persistent {
                        this.hypervisor.detach_device(&u, &xml)?;
                    } else {
                        // A retry after the guest kept the disk: ask it again (it may have
                        // missed the first request while booting), or the wait below could
                        // only time out again.
                        this.hypervisor.detach_live(&u, &xml)?;
                    }
                }
                Ok(live)
            })
            .await?;
        if live && running {
            self.wait_released(&uuid, &key, volume, wait).await?;
        }
        tracing::info!(vm = %uuid, volume = %volume, ms = started.elapsed().as_millis() as u64, "volume detached");
        let volumes = self.volumes_of(&guest).await?;
        Ok((guest, volumes))
    }

    /// Waits (at most `wait`) until the running guest `uuid` has no disk with `key`.
    async fn wait_released(
        self: &std::sync::Arc<Self>,
        uuid: &str,
        key: &str,
        volume: &str,
        wait: Duration,
    ) -> Result<(), VolumeCallError> {
        let deadline = Instant::now() + wait;
        loop {
            let this = self.clone();
            let u = uuid.to_string();
            let still = self
                .blocking(move || {
                    let xml = this.hypervisor.live_xml(&u)?;
                    volume_disk::disks(&xml)
                        .map_err(|e| GuestError::Internal(format!("domain {u}: XML: {e}")))
                })
                .await?
                .iter()
                .any(|d| d.key.as_deref() == Some(key));
            if !still {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VolumeCallError::NotReleased(format!(
                    "volume: guest {uuid} has not released {volume:?} within {} s (no ACPI eject); its definition is without it, and a later DetachVolume finishes the detach",
                    wait.as_secs()
                )));
            }
            tokio::time::sleep(DETACH_POLL).await;
        }
    }

    /// The names of the volumes attached to `guest` (its XMLs only are read), but for the
    /// volume it boots from (`Vm.boot_volume` names that one).
    pub async fn volumes_of(
        self: &std::sync::Arc<Self>,
        guest: &Guest,
    ) -> Result<Vec<String>, GuestError> {
        let this = self.clone();
        let u = guest.uuid.clone();
        let boot = guest.intent.boot_volume.as_ref().map(|b| b.name.as_str());
        let disks = self.blocking(move || this.read_disks(&u)).await?;
        let keys: Vec<&str> = disks.keys().collect();
        Ok(self
            .volumes
            .list()
            .0
            .into_iter()
            .filter(|r| keys.contains(&self.volumes.disk_source(r).key().as_str()))
            .filter(|r| Some(r.name.as_str()) != boot)
            .map(|r| r.name)
            .collect())
    }
}

#[cfg(test)]
mod tests;
