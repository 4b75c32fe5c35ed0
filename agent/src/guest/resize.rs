//! Resize: a guest moved to another flavor in two steps, as Nova does. `resize` takes the new
//! claim before anything changes (the old one stays, under a holder UUID of its own), stops
//! the guest, grows its disks, defines it with the new vCPUs, memory, pins and NUMA (its
//! devices as they were) and starts it again; `confirm` then frees the old claim, `revert`
//! puts back the old definition, disks and claim exactly.
//!
//! Crash-only: before the guest is touched a marker (`resize.json`: the old definition as
//! libvirt held it, the old intent, whether it ran) is written beside its disks, and every
//! disk the resize grows is first copied (`resize-<disk>`). An agent killed in the middle
//! finds the marker at its next start and, by what the domain's intent then says, rolls the
//! resize back (the new definition was never made) or finishes it (it was): the guest is
//! before or after, never half (see [`recovery`]).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::error::{GuestError, refused};
use super::plan::{Placed, cpu_features, extra_disks};
use super::request::{check_ram, checked_uuid, root_disk_bytes};
use super::{DEFAULT_STOP_TIMEOUT, GIB, Guest, Guests, TCG_CACHE_MIB, qcow2_virtual_size};
use crate::domain::DomainState;
use crate::domain::volume_disk::DiskSource;
use crate::domain::xml::{DiskBus, DiskSpec, GuestSpec, Intent, ResizeIntent, resized_xml};
use crate::flavor::{self, FlavorSpec};
use crate::placement::{ClaimRequest, PlacementState};
use crate::storage::disks::{self, DiskError};
use crate::storage::{GuestFiles, ImageRecord};

/// The marker a resize leaves in the guest's directory until it is confirmed or reverted.
const MARKER: &str = "resize.json";
/// The prefix of the copies of the disks a resize grew, kept for a revert.
const BACKUP: &str = "resize-";

/// What a resize changes on the guest's disks, decided before anything is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DiskChanges {
    /// The root disk's new size in bytes, when it grows.
    pub root_bytes: Option<u64>,
    /// Extra disks (by index) that grow, and their new size in bytes.
    pub grow: Vec<(u32, u64)>,
    /// Extra disks (by index) made blank, and their size in bytes.
    pub add: Vec<(u32, u64)>,
}

/// Extra disks of a flavor: their count and size in bytes (as `plan::extra_disks` makes them).
fn extras(spec: &FlavorSpec) -> (u32, u64) {
    spec.disk.map_or((0, 0), |d| {
        (
            d.count.saturating_sub(1),
            u64::from(d.size_gb.unwrap_or(1)) * GIB,
        )
    })
}

/// Whether a guest of flavor `old` (root disk now `root_bytes_now` bytes) made from `image`
/// may become one of `new`, and what that changes on its disks. Refuses a resize to the same
/// flavor, from or to a flavor with a GPU or InfiniBand part, between a local root disk and
/// none, to less RAM than the image needs, or that would shrink or remove a disk; each
/// refusal names the sizes.
pub(super) fn check(
    old: &FlavorSpec,
    new: &FlavorSpec,
    image: Option<&ImageRecord>,
    root_bytes_now: u64,
) -> Result<DiskChanges, GuestError> {
    let (old_name, new_name) = (old.name(), new.name());
    let refuse = |m: String| Err(GuestError::Precondition(format!("flavor: {m}")));
    if old_name == new_name {
        return refuse(format!("the guest already has flavor {old_name}"));
    }
    // The new definition keeps the old one's <devices>, so a <hostdev> would stay attached
    // while the new claim takes (or frees) the device in the ledger: the ledger and the guest
    // would disagree. Carrying the devices over would need the new claim to be the same
    // devices, which the allocator does not promise, so such a resize is refused outright.
    for (spec, name) in [(old, &old_name), (new, &new_name)] {
        if spec.gpu.is_some() || spec.ib {
            return refuse(format!(
                "{name} has a GPU or InfiniBand part: resize of guests with passed-through devices is not supported (delete and create)"
            ));
        }
    }
    if old.disk.is_some() != new.disk.is_some() {
        let (with, without) = if old.disk.is_some() {
            (&old_name, &new_name)
        } else {
            (&new_name, &old_name)
        };
        return refuse(format!(
            "{with} has a local root disk and {without} none: a guest cannot move between the two (boot-from-volume guests have no local root disk)"
        ));
    }
    // A guest booted from a volume given at Create has no image to ask.
    if let Some(image) = image {
        check_ram(new, image)?;
    }
    let mut root_bytes = None;
    if let Some(image) = image.filter(|_| new.disk.is_some()) {
        let want = root_disk_bytes(new, image)?;
        if want < root_bytes_now {
            return refuse(format!(
                "{new_name} has a {} GB root disk, smaller than the guest's {} GB ({root_bytes_now} bytes): a root disk never shrinks",
                want / GIB,
                root_bytes_now.div_ceil(GIB)
            ));
        }
        root_bytes = (want > root_bytes_now).then_some(want);
    }
    let ((old_count, old_size), (new_count, new_size)) = (extras(old), extras(new));
    if new_count < old_count {
        return refuse(format!(
            "{new_name} has {new_count} extra disks, the guest {old_count}: disks are never removed"
        ));
    }
    if old_count > 0 && new_size < old_size {
        return refuse(format!(
            "{new_name} has extra disks of {} GB, smaller than the guest's {} GB: disks never shrink",
            new_size / GIB,
            old_size / GIB
        ));
    }
    let grow = if new_size > old_size {
        (1..=old_count).map(|i| (i, new_size)).collect()
    } else {
        Vec::new()
    };
    Ok(DiskChanges {
        root_bytes,
        grow,
        add: (old_count + 1..=new_count).map(|i| (i, new_size)).collect(),
    })
}

/// What the marker holds: the guest as it was before the resize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Marker {
    /// The domain's persistent definition as libvirt held it.
    pub old_xml: String,
    pub old_intent: Intent,
    pub was_running: bool,
}

/// What an agent starting up does with a resize marker it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recovery {
    /// The domain still has (or again has) its old definition: the resize never got its new
    /// one defined, or a revert got that far. The old disks go back, the guest is started if
    /// it ran, the marker goes.
    RollBack,
    /// The new definition is in place, the resize pending: the guest is started if it ran
    /// (and is off); the marker stays for a revert.
    Finish,
    /// The definition is neither the old one nor a pending resize: a confirm got as far as
    /// the metadata. The marker goes.
    Forget,
}

/// The decision for a marker holding `old` when the domain's intent is `now`.
pub(super) fn recovery(old: &Intent, now: &Intent) -> Recovery {
    if now == old {
        Recovery::RollBack
    } else if now.resize.is_some() {
        Recovery::Finish
    } else {
        Recovery::Forget
    }
}

fn marker_path(files: &GuestFiles) -> PathBuf {
    files.dir.join(MARKER)
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> GuestError {
    let path = path.to_path_buf();
    move |source| {
        GuestError::Disk(DiskError::Io {
            path,
            action,
            source,
        })
    }
}

/// Writes the marker durably: a temporary file, flushed, renamed into place, the directory
/// flushed, so that no crash leaves half a marker.
fn write_marker(files: &GuestFiles, marker: &Marker) -> Result<(), GuestError> {
    use std::io::Write;
    let path = marker_path(files);
    let tmp = files.dir.join(format!("{MARKER}.tmp"));
    let text = serde_json::to_vec(marker)
        .map_err(|e| GuestError::Internal(format!("resize marker: {e}")))?;
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp, "create"))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp, "write"))?;
    std::fs::rename(&tmp, &path).map_err(io(&path, "rename into place"))?;
    std::fs::File::open(&files.dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&files.dir, "flush"))
}

/// The guest's marker; `None` when there is none.
fn read_marker(files: &GuestFiles) -> Result<Option<Marker>, GuestError> {
    let path = marker_path(files);
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| GuestError::Internal(format!("{}: unreadable: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path, "read")(e)),
    }
}

/// Removes the marker and the copies of the old disks.
fn forget(files: &GuestFiles) -> Result<(), GuestError> {
    for path in backups(files)?.into_iter().map(|(copy, _)| copy) {
        std::fs::remove_file(&path).map_err(io(&path, "remove"))?;
    }
    let path = marker_path(files);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, "remove")(e)),
        _ => Ok(()),
    }
}

/// The copies of old disks in the guest's directory, each with the disk it was copied from
/// (half-made copies, `.tmp`, included: they are only removed).
fn backups(files: &GuestFiles) -> Result<Vec<(PathBuf, Option<PathBuf>)>, GuestError> {
    let entries = match std::fs::read_dir(&files.dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&files.dir, "list")(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(&files.dir, "list"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(disk) = name.strip_prefix(BACKUP) {
            let original = (!disk.ends_with(".tmp")).then(|| files.dir.join(disk));
            out.push((entry.path(), original));
        }
    }
    Ok(out)
}

/// Puts the guest's old disks back: each copy over the disk it came from, and the extra disks
/// beyond the old flavor's removed.
fn restore_disks(files: &GuestFiles, old: &FlavorSpec) -> Result<(), GuestError> {
    for (copy, original) in backups(files)? {
        match original {
            Some(to) => std::fs::rename(&copy, &to).map_err(io(&to, "restore"))?,
            None => std::fs::remove_file(&copy).map_err(io(&copy, "remove"))?,
        }
    }
    let mut index = extras(old).0 + 1;
    loop {
        let path = files.extra_disk(index);
        match std::fs::remove_file(&path) {
            Ok(()) => index += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&path, "remove")(e)),
        }
    }
}

/// Grows and adds the guest's disks as `changes` says, each grown disk copied first.
fn change_disks(files: &GuestFiles, changes: &DiskChanges) -> Result<(), GuestError> {
    let grown = changes
        .root_bytes
        .map(|b| (files.root_disk(), b))
        .into_iter()
        .chain(changes.grow.iter().map(|(i, b)| (files.extra_disk(*i), *b)));
    for (disk, bytes) in grown {
        let name = disk
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        disks::copy_whole(&disk, &files.dir.join(format!("{BACKUP}{name}")))
            .map_err(GuestError::Disk)?;
        disks::grow(&disk, bytes).map_err(GuestError::Disk)?;
    }
    for (i, bytes) in &changes.add {
        disks::blank(&files.extra_disk(*i), *bytes).map_err(GuestError::Disk)?;
    }
    Ok(())
}

/// A fresh random (version 4) UUID for the holder of a guest's old claim.
fn holder_uuid() -> Result<String, GuestError> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io(Path::new("/dev/urandom"), "read"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// The guest's claims back as before a resize: the new one released, the old one moved from
/// `holder` back to the guest. Logged, not failed: placement is rebuilt from the domains'
/// intents at the next start whatever happens here.
fn give_back_claims(placement: &PlacementState, uuid: &str, holder: &str) {
    let mut alloc = placement.lock();
    if alloc.get(holder).is_none() {
        return;
    }
    let _ = alloc.release(uuid);
    if let Err(e) = alloc.rekey(holder, uuid) {
        tracing::error!(vm = %uuid, holder, error = %e, "resize: cannot give the guest its old claim back");
    }
}

impl Guests {
    /// Moves guest `uuid` to `flavor` (see the module's comment); the guest answers with the
    /// resize pending.
    pub async fn resize(&self, uuid: &str, flavor: &str) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        if flavor.is_empty() {
            return Err(GuestError::Invalid("flavor: must not be empty".into()));
        }
        let spec = flavor::parse(flavor)
            .map_err(|e| GuestError::Invalid(format!("flavor: {e}")))?
            .spec;
        let _busy = self.exclusive(&uuid).await?;
        let guest = self.get(&uuid).await?;
        if let Some(r) = &guest.intent.resize {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} has a resize from {} to {} pending: confirm or revert it first",
                r.old_flavor, guest.intent.flavor
            )));
        }
        let was_running = match guest.state {
            DomainState::Running | DomainState::Blocked => true,
            DomainState::ShutOff | DomainState::Crashed => false,
            other => {
                return Err(GuestError::Precondition(format!(
                    "uuid: guest {uuid} is {other}; a resize needs it running or shut off"
                )));
            }
        };
        let old_spec = flavor::parse(&guest.intent.flavor)
            .map_err(|e| {
                GuestError::Internal(format!("the guest's flavor {}: {e}", guest.intent.flavor))
            })?
            .spec;
        let image = self.image_of(&guest.intent)?;
        let files = GuestFiles::new(&self.storage_root, &uuid);
        let root_now = qcow2_virtual_size(&files.root_disk()).unwrap_or(0);
        let changes = check(&old_spec, &spec, image.as_ref(), root_now)?;
        let hypervisor = self.hypervisor.clone();
        let u = uuid.clone();
        let old_xml = self
            .blocking(move || hypervisor.inactive_xml(&u).map_err(GuestError::from))
            .await?;
        let holder = holder_uuid()?;
        let (placed, old_claim) = self.swap_claims(&uuid, &holder, &spec)?;
        let marker = Marker {
            old_xml,
            old_intent: guest.intent.clone(),
            was_running,
        };
        let intent = Intent {
            flavor: spec.name(),
            request_id: placed.claim.request_id.clone(),
            resize: Some(ResizeIntent {
                holder: holder.clone(),
                old_flavor: guest.intent.flavor.clone(),
                old_claim,
                was_running,
            }),
            claim: placed.claim.clone(),
            ..guest.intent.clone()
        };
        let new_spec = GuestSpec {
            uuid: uuid.clone(),
            intent,
            vcpu_cpus: placed.vcpu_cpus,
            emulator_cpus: placed.emulator_cpus,
            cpu_features: cpu_features(&spec, &self.host_flags),
            // The devices are the old definition's (`resized_xml`).
            disks: Vec::new(),
            disk_bus: image
                .as_ref()
                .and_then(|i| i.properties.get("hw_disk_bus"))
                .and_then(|b| DiskBus::parse(b))
                .unwrap_or(DiskBus::Virtio),
            nics: Vec::new(),
            console_log: files.console_log(),
            // The firmware is the intent's (kept from Create), its NVRAM where it was.
            nvram: files.nvram(),
            rng: false,
            tcg_cache_mib: TCG_CACHE_MIB,
        };
        let added: Vec<DiskSpec> = extra_disks(&spec, &files)
            .into_iter()
            .skip(extras(&old_spec).0 as usize)
            .map(|(path, _)| DiskSpec {
                source: DiskSource::File(path),
                format: "qcow2",
                readonly: false,
            })
            .collect();
        let xml = resized_xml(&new_spec, &marker.old_xml, &added).map_err(GuestError::Xml);
        let result = match xml {
            Ok(xml) => self.resize_steps(&uuid, &marker, &changes, xml).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(vm = %uuid, error = %e, "resize failed; rolling back");
            if let Err(undo) = self.roll_back(&uuid, &marker, Some(&holder)).await {
                tracing::error!(vm = %uuid, error = %undo, "resize: the roll back failed; the agent's next start finishes it");
            }
            return Err(e);
        }
        tracing::info!(vm = %uuid, from = %guest.intent.flavor, to = %spec.name(), "resized; confirm or revert");
        self.after_claims_moved(&new_spec.intent.claim).await;
        self.get(&uuid).await
    }

    /// The old claim moved to `holder`, the new one taken under the guest's UUID; refused
    /// (the old claim back where it was) when the new one does not fit.
    fn swap_claims(
        &self,
        uuid: &str,
        holder: &str,
        spec: &FlavorSpec,
    ) -> Result<(Placed, crate::placement::Claim), GuestError> {
        let now = self.placement.now_ms();
        let mut alloc = self.placement.lock();
        let old = alloc.rekey(uuid, holder).map_err(refused)?;
        let request = ClaimRequest {
            vm_uuid: uuid.to_string(),
            request_id: format!("resize-{holder}"),
            flavor: spec.clone(),
        };
        match alloc.claim(&request, now) {
            Ok(claim) => Ok((
                Placed {
                    vcpu_cpus: alloc.vcpu_cpus(&claim),
                    emulator_cpus: alloc.emulator_cpus(&claim),
                    claim,
                },
                old,
            )),
            Err(refusal) => {
                if let Err(e) = alloc.rekey(holder, uuid) {
                    tracing::error!(vm = %uuid, error = %e, "resize: cannot give the guest its old claim back");
                }
                Err(refused(refusal))
            }
        }
    }

    /// Marker, stop, disks, the new definition, start.
    async fn resize_steps(
        &self,
        uuid: &str,
        marker: &Marker,
        changes: &DiskChanges,
        xml: String,
    ) -> Result<(), GuestError> {
        let files = GuestFiles::new(&self.storage_root, uuid);
        let (f, m) = (files.clone(), marker.clone());
        self.blocking(move || write_marker(&f, &m)).await?;
        if marker.was_running {
            self.power_off(uuid, false, DEFAULT_STOP_TIMEOUT).await?;
        }
        let changes = changes.clone();
        let hypervisor = self.hypervisor.clone();
        self.blocking(move || {
            change_disks(&files, &changes)?;
            hypervisor.define(&xml).map_err(GuestError::from)
        })
        .await?;
        if marker.was_running {
            self.start(uuid).await?;
        }
        Ok(())
    }

    /// Puts guest `uuid` back as `marker` says it was: a running new definition destroyed,
    /// the old definition defined, the old disks back, the claims back (with `holder`: the
    /// holder of its old claim; without, placement is being rebuilt from the domains), the
    /// guest started if it ran, the marker removed.
    async fn roll_back(
        &self,
        uuid: &str,
        marker: &Marker,
        holder: Option<&str>,
    ) -> Result<(), GuestError> {
        let old_spec = flavor::parse(&marker.old_intent.flavor)
            .map_err(|e| GuestError::Internal(format!("the guest's old flavor: {e}")))?
            .spec;
        let files = GuestFiles::new(&self.storage_root, uuid);
        let hypervisor = self.hypervisor.clone();
        let (u, m, f) = (uuid.to_string(), marker.clone(), files.clone());
        self.blocking(move || {
            let now = hypervisor.guests()?.into_iter().find(|d| d.uuid == u);
            let runs_new = now.is_some_and(|d| {
                d.state != DomainState::ShutOff && d.intent.ok().as_ref() != Some(&m.old_intent)
            });
            if runs_new {
                hypervisor.destroy(&u)?;
            }
            hypervisor.define(&m.old_xml)?;
            restore_disks(&f, &old_spec)
        })
        .await?;
        if let Some(holder) = holder {
            give_back_claims(&self.placement, uuid, holder);
        }
        if marker.was_running {
            self.start(uuid).await?;
        }
        self.blocking(move || forget(&files)).await
    }

    /// Floating guests follow the shared pool after `changed` (a claim taken or given back)
    /// moved dedicated CPUs out of it or back into it.
    async fn after_claims_moved(&self, changed: &crate::placement::Claim) {
        if changed.dedicated_cpus().next().is_some() {
            self.repin_floating().await;
        }
    }

    /// Ends a pending resize of guest `uuid`: its old claim is released and the copies of its
    /// old disks removed.
    pub async fn confirm_resize(&self, uuid: &str) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let _busy = self.exclusive(&uuid).await?;
        let guest = self.get(&uuid).await?;
        let Some(resize) = guest.intent.resize.clone() else {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} has no resize pending"
            )));
        };
        let files = GuestFiles::new(&self.storage_root, &uuid);
        // The marker first: from here a restarted agent never rolls this resize back.
        self.blocking(move || forget(&files)).await?;
        let intent = Intent {
            resize: None,
            ..guest.intent.clone()
        };
        let hypervisor = self.hypervisor.clone();
        let u = uuid.clone();
        self.blocking(move || hypervisor.set_intent(&u, &intent).map_err(GuestError::from))
            .await?;
        // Released once the intent no longer holds it: a failure before leaves both claims
        // counted, as the stored intent (and so a restarted agent) says.
        let released = self.placement.lock().release(&resize.holder).ok();
        tracing::info!(vm = %uuid, from = %resize.old_flavor, to = %guest.intent.flavor, "resize confirmed");
        if let Some(released) = released {
            self.after_claims_moved(&released).await;
        }
        self.get(&uuid).await
    }

    /// Undoes a pending resize of guest `uuid`: stopped, its old definition, disks and claim
    /// back exactly, started again if it ran before the resize.
    pub async fn revert_resize(&self, uuid: &str) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let _busy = self.exclusive(&uuid).await?;
        let guest = self.get(&uuid).await?;
        let Some(resize) = guest.intent.resize.clone() else {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} has no resize pending"
            )));
        };
        let files = GuestFiles::new(&self.storage_root, &uuid);
        let f = files.clone();
        let marker = self.blocking(move || read_marker(&f)).await?.ok_or_else(|| {
            GuestError::Precondition(format!(
                "uuid: {} (the guest's definition before the resize) is gone: the resize can only be confirmed",
                marker_path(&files).display()
            ))
        })?;
        if guest.state != DomainState::ShutOff {
            self.power_off(&uuid, false, DEFAULT_STOP_TIMEOUT).await?;
        }
        self.roll_back(&uuid, &marker, Some(&resize.holder)).await?;
        tracing::info!(vm = %uuid, to = %resize.old_flavor, "resize reverted");
        self.after_claims_moved(&guest.intent.claim).await;
        self.get(&uuid).await
    }

    /// Finishes what resizes left when the agent stopped in their middle, as each marker and
    /// the domain's intent say ([`recovery`]). Runs once at start-up, before placement is
    /// rebuilt from the domains (a roll back changes their intent).
    pub(super) async fn recover_resizes(&self) {
        let Ok(domains) = self.domains().await else {
            return;
        };
        for d in domains {
            let Ok(now) = d.intent else { continue };
            let files = GuestFiles::new(&self.storage_root, &d.uuid);
            let f = files.clone();
            let marker = match self.blocking(move || read_marker(&f)).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    // A marker never completed: its resize had not touched the guest yet.
                    let tmp = files.dir.join(format!("{MARKER}.tmp"));
                    let _ = self.blocking(move || Ok(std::fs::remove_file(tmp))).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(vm = %d.uuid, error = %e, "resize marker cannot be read: left alone");
                    continue;
                }
            };
            let decision = recovery(&marker.old_intent, &now);
            let done = match decision {
                Recovery::RollBack => self.roll_back(&d.uuid, &marker, None).await,
                Recovery::Finish if marker.was_running && d.state == DomainState::ShutOff => {
                    self.start(&d.uuid).await.map(drop)
                }
                Recovery::Finish => Ok(()),
                Recovery::Forget => self.blocking(move || forget(&files)).await,
            };
            match done {
                Ok(()) => {
                    tracing::warn!(vm = %d.uuid, ?decision, "a resize was under way when the agent stopped: finished")
                }
                Err(e) => {
                    tracing::error!(vm = %d.uuid, ?decision, error = %e, "a resize was under way when the agent stopped and cannot be finished")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
