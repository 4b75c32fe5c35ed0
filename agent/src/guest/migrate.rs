//! Live migration of a running guest to another node, with its store and NBD data volumes
//! (not guests with a boot volume, block-device or shareable volumes, devices or UEFI/TPM). Two halves, one on each agent:
//!
//! - the **target** ([`Guests::prepare_incoming`], [`Guests::finish_incoming`],
//!   [`Guests::abort_incoming`]) takes a claim for the guest's flavor, makes its disks as
//!   overlays on its own copy of the image and its NICs' taps in its networks of the same
//!   names, and builds the domain the guest is to run as from that claim
//!   (`domain::xml::migrated_xml`): no pin of the source survives the move;
//! - the **source** ([`Guests::migrate`]) asks the target to prepare, has libvirt move the
//!   guest peer to peer with its writable disks, then tells the target it arrived and gives
//!   back its own claim and files. When anything fails before libvirt has moved the guest,
//!   the target aborts and the guest runs on here as it was.
//!
//! A prepared arrival neither finished nor aborted within [`PREPARED_FOR`] is aborted. One
//! that an agent restart interrupts leaves no claim (claims are rebuilt from domains) and
//! files without a domain, which the orphan sweep removes.
//!
//! Both halves announce their [`Phase`]s as `migration` events (WatchEvents), the source its
//! copy's progress every [`PROGRESS_EVERY`] while libvirt copies.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hvagent_core::sync::lock;

use super::busy::BusyGuard;
use super::error::refused;
use super::plan::{HostTap, PlannedNic, extra_disks, guest_taps, host_taps};
use super::request::checked_uuid;
use super::{GuestError, Guests, TCG_CACHE_MIB, qcow2_virtual_size};
use crate::domain::events::{DomainEvent, EventKind, Progress};
use crate::domain::hypervisor::{DomainState, MigrationTarget};
use crate::domain::volume_disk::{self, DiskSource};
use crate::domain::xml::{DiskBus, GuestSpec, Intent, NicAttach, migrated_xml, read_intent};
use crate::net::GuestTap;
use crate::placement::ClaimRequest;
use crate::storage::disks;
use crate::storage::volumes::VolumeSource;
use crate::storage::{GuestFiles, VolumeError, VolumeRecord, VolumeStore};

/// How long a prepared arrival waits for its Finish or Abort before it is aborted.
pub const PREPARED_FOR: Duration = Duration::from_secs(600);

/// The largest NoCloud seed a Prepare carries (the agent's seeds are a few KiB).
pub const MAX_SEED_BYTES: usize = 4 << 20;

/// How often the source reads and announces the copy's progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// A migration's phases, the detail of its `migration` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Source: the target is asked to take a claim and make the guest's files.
    Preparing,
    /// Source: libvirt copies memory and writable disks (repeated with the progress).
    Copying,
    /// Source: the guest runs on the target; the target takes it over, this node lets go.
    Finishing,
    /// Source: the guest is the target's now.
    Migrated,
    /// Source: the migration failed; the guest runs on here as it was.
    Failed,
    /// Target: prepared (claim taken, files made); the guest may arrive.
    Arriving,
    /// Target: the guest arrived and is this node's.
    Arrived,
    /// Target: the arrival was given up; nothing of it is left here.
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Copying => "copying",
            Phase::Finishing => "finishing",
            Phase::Migrated => "migrated",
            Phase::Failed => "failed",
            Phase::Arriving => "arriving",
            Phase::Arrived => "arrived",
            Phase::Aborted => "aborted",
        }
    }
}

/// How this node takes guests from others (`[migration]`, `[libvirt] partition`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSettings {
    /// How other nodes' libvirtd reach this node's (`qemu+tcp://10.0.0.2/system`); `None`:
    /// this node takes no guests.
    pub libvirt_uri: Option<String>,
    /// Where this node's QEMU listens for an arriving guest's memory and disks (a host
    /// address; IPv6 in brackets).
    pub address: Option<String>,
    /// The cgroup partition of the agent's guests; `None`: libvirt's `/machine`.
    pub partition: Option<String>,
}

/// A guest arriving from another node: what its source sends with Prepare.
#[derive(Debug, Clone)]
pub struct IncomingGuest {
    pub uuid: String,
    /// The running domain as libvirt carries it (`MIGRATABLE`), with the source's intent.
    pub domain_xml: String,
    /// The sha256 of the guest's image on the source: this node's image of that name must
    /// have the same content, as the root disk's overlay is copied onto it.
    pub image_sha256: String,
    /// The root disk's virtual size on the source.
    pub root_disk_bytes: u64,
    /// The guest's NoCloud seed as the source made it: libvirt does not copy read-only disks.
    pub seed: Vec<u8>,
    /// The guest's data volumes as the source's records have them (store or NBD, never
    /// shareable): they move with the guest under their names.
    pub volumes: Vec<VolumeRecord>,
}

/// The target agent as the source reaches it (`api::migration` implements it over the
/// mutual-TLS API; unit tests with a second `Guests`).
pub trait MigrationPeer: Send + Sync {
    fn prepare(
        &self,
        guest: IncomingGuest,
    ) -> impl Future<Output = Result<MigrationTarget, GuestError>> + Send;
    /// The guest's downtime as the target's libvirt measured it, where it says.
    fn finish(
        &self,
        uuid: &str,
    ) -> impl Future<Output = Result<Option<Duration>, GuestError>> + Send;
    fn abort(&self, uuid: &str) -> impl Future<Output = Result<(), GuestError>> + Send;
}

/// A prepared arrival: the guest is busy (no create or delete of its UUID or name) until it
/// is finished or aborted.
struct Arrival {
    _busy: BusyGuard,
    name: String,
    /// The NICs' taps in managed networks (made at Prepare) and in host bridges (libvirt's),
    /// joined and rate-limited once the guest runs here.
    taps: Vec<GuestTap>,
    host_taps: Vec<HostTap>,
    vcpu_cpus: Vec<Vec<u32>>,
    /// The volumes this arrival took in (removed if it is aborted).
    volumes: Vec<String>,
    /// Tells an arrival apart from a later one of the same UUID (for the deadline).
    since: Instant,
}

/// The prepared arrivals, by UUID.
#[derive(Default)]
pub(super) struct Arrivals(Mutex<BTreeMap<String, Arrival>>);

/// What a finished migration took.
#[derive(Debug, Clone, Copy)]
pub struct Migrated {
    pub elapsed: Duration,
    /// How long the guest was paused for the switch (the target's libvirt), where known.
    pub downtime: Option<Duration>,
}

/// Why a guest cannot move, if it cannot.
fn unmovable(intent: &Intent) -> Option<&'static str> {
    if intent.resize.is_some() {
        Some("a resize awaits confirm or revert")
    } else if intent.boot_volume.is_some() {
        Some("it boots from a volume (not supported yet)")
    } else if !intent.claim.gpus.is_empty() || !intent.claim.infiniband.is_empty() {
        Some("it has passed-through devices")
    } else if !intent.firmware.is_default() {
        Some("it has UEFI or a TPM (their state is not carried yet)")
    } else if intent.image.is_empty() {
        Some("it has no image")
    } else {
        None
    }
}

impl Guests {
    /// How this node takes guests from others.
    pub fn with_migration(mut self, settings: MigrationSettings) -> Guests {
        self.migration = settings;
        self
    }

    /// Target side: takes a claim for the arriving guest, makes its files and answers where
    /// and as what libvirt is to move it. Nothing is kept when it fails.
    pub async fn prepare_incoming(
        self: &Arc<Self>,
        guest: IncomingGuest,
    ) -> Result<MigrationTarget, GuestError> {
        let uuid = checked_uuid(&guest.uuid)?;
        let (Some(libvirt_uri), Some(address)) =
            (&self.migration.libvirt_uri, &self.migration.address)
        else {
            return Err(GuestError::Precondition(
                "this node takes no migrations: set [migration] libvirt_uri and address".into(),
            ));
        };
        if guest.seed.len() > MAX_SEED_BYTES {
            return Err(GuestError::Invalid(format!(
                "seed: at most {MAX_SEED_BYTES} bytes"
            )));
        }
        let source = read_intent(&guest.domain_xml)
            .map_err(|e| GuestError::Invalid(format!("domain_xml: {e}")))?;
        if let Some(why) = unmovable(&source) {
            return Err(GuestError::Precondition(format!("uuid: {why}")));
        }
        let emulation = self.emulation.clone().map_err(GuestError::Precondition)?;
        if source.emulation != emulation {
            // TCG guests have a fixed CPU model, KVM guests the host's: neither runs on.
            return Err(GuestError::Precondition(format!(
                "uuid: the guest runs under {}, this node under {}",
                source.emulation.as_str(),
                emulation.as_str()
            )));
        }
        let spec = crate::flavor::parse(&source.flavor)
            .map_err(|e| GuestError::Invalid(format!("domain_xml: flavor {}: {e}", source.flavor)))?
            .spec;
        let image = self.images.get(&source.image).map_err(|_| {
            GuestError::Precondition(format!("image: this node has no image {:?}", source.image))
        })?;
        if image.sha256 != guest.image_sha256 {
            return Err(GuestError::Precondition(format!(
                "image: this node's image {:?} has other content (sha256 {}, the source's {})",
                image.name, image.sha256, guest.image_sha256
            )));
        }
        let nics = self.arriving_nics(&uuid, &source, &guest.domain_xml)?;
        for (i, v) in guest.volumes.iter().enumerate() {
            match self.volumes.get(&v.name) {
                Ok(_) => {
                    return Err(GuestError::Precondition(format!(
                        "volumes[{i}]: this node has a volume named {:?} already",
                        v.name
                    )));
                }
                Err(VolumeError::NotFound(_)) => {}
                Err(e @ VolumeError::Invalid { .. }) => {
                    return Err(GuestError::Invalid(format!("volumes[{i}]: {e}")));
                }
                Err(e) => return Err(GuestError::Precondition(format!("volumes[{i}]: {e}"))),
            }
        }
        // Taps are named by UUID and slot: one of these names here is the guest's own (two
        // "nodes" in one network namespace) or a stale one, and the undo would remove it.
        for n in &nics {
            let tap = match &n.attach {
                NicAttach::Tap(tap) | NicAttach::Bridge { tap, .. } => tap,
            };
            if self.networks.has_link(tap).await? {
                return Err(GuestError::Precondition(format!(
                    "networks: a link named {tap} (the guest's NIC) exists on this node already: source and target must not share a network namespace"
                )));
            }
        }
        let busy = {
            let held = self.lock.lock().await;
            self.ensure_rebuilt(&held).await?;
            if self.busy.in_flight(&uuid).is_some() {
                return Err(GuestError::AlreadyExists(format!(
                    "uuid: guest {uuid} is being created, deleted or migrated here"
                )));
            }
            // A Create of the same name still in flight has no domain yet.
            if let Some(other) = self.busy.named(&source.name) {
                return Err(GuestError::AlreadyExists(format!(
                    "name: {:?} is taken by guest {other} (being created or deleted here)",
                    source.name
                )));
            }
            if let Some(d) = self
                .domains()
                .await?
                .into_iter()
                .find(|d| d.uuid == uuid || d.name == source.name)
            {
                return Err(GuestError::AlreadyExists(format!(
                    "uuid: this node has a domain {} ({}) already",
                    d.uuid, d.name
                )));
            }
            self.refuse_foreign(&uuid).await?;
            self.busy.mark(&uuid, &source.name)
        };
        let (claim, vcpu_cpus, emulator_cpus) = {
            let now = self.placement.now_ms();
            let mut alloc = self.placement.lock();
            let claim = alloc
                .claim(
                    &ClaimRequest {
                        vm_uuid: uuid.clone(),
                        request_id: format!("migrate-{uuid}"),
                        flavor: spec.clone(),
                    },
                    now,
                )
                .map_err(refused)?;
            let pins = (alloc.vcpu_cpus(&claim), alloc.emulator_cpus(&claim));
            (claim, pins.0, pins.1)
        };
        let files = GuestFiles::new(&self.storage_root, &uuid);
        let target = GuestSpec {
            uuid: uuid.clone(),
            intent: Intent {
                store: self.storage_root.clone(),
                request_id: claim.request_id.clone(),
                claim,
                ..source.clone()
            },
            vcpu_cpus: vcpu_cpus.clone(),
            emulator_cpus,
            // Only the claimed parts of this spec are used (`migrated_xml`): the devices,
            // CPU model and features are the running guest's.
            cpu_features: Vec::new(),
            disks: Vec::new(),
            disk_bus: DiskBus::Virtio,
            nics: Vec::new(),
            console_log: files.console_log(),
            nvram: files.nvram(),
            rng: false,
            tcg_cache_mib: TCG_CACHE_MIB,
        };
        let taps = guest_taps(
            &uuid,
            nics.iter().map(|n| (n.network.clone(), n.intent.clone())),
        );
        // A failed make_arrival leaves none of its volumes; one that succeeded, all of them.
        let made = match self
            .make_arrival(&guest, &source, &target, &files, &image, &spec)
            .await
        {
            Ok(made) => match self.networks.plug(&taps).await {
                Ok(()) => Ok(made),
                Err(e) => {
                    self.drop_volumes(&uuid, &made.volumes, true);
                    Err(GuestError::from(e))
                }
            },
            Err(e) => Err(e),
        };
        match made {
            Ok(made) => {
                lock(&self.arrivals.0).insert(
                    uuid.clone(),
                    Arrival {
                        _busy: busy,
                        name: source.name.clone(),
                        host_taps: host_taps(
                            &uuid,
                            nics.iter().map(|n| (n.network.is_some(), &n.intent)),
                        ),
                        taps,
                        vcpu_cpus,
                        volumes: made.volumes,
                        since: Instant::now(),
                    },
                );
                self.abort_when_late(&uuid);
                self.announce(&uuid, &source.name, Phase::Arriving, None);
                tracing::info!(vm = %uuid, "migration prepared: claim taken, disks, volumes and taps made");
                Ok(MigrationTarget {
                    libvirt_uri: libvirt_uri.clone(),
                    migrate_uri: format!("tcp://{address}"),
                    dest_xml: made.xml,
                    disks: made.disks,
                })
            }
            Err(e) => {
                self.undo_arrival(&uuid, false).await;
                Err(e)
            }
        }
    }

    /// The arriving guest's NICs here: each in this node's network of the name it has on the
    /// source, reached the same way (a managed network's tap, or a host bridge), since the
    /// guest's devices move as they are (tap names derive from the UUID and slot). Checked
    /// before anything is taken.
    fn arriving_nics(
        &self,
        uuid: &str,
        source: &Intent,
        domain_xml: &str,
    ) -> Result<Vec<PlannedNic>, GuestError> {
        let kinds = super::nic::interface_list(domain_xml)
            .map_err(|e| GuestError::Invalid(format!("domain_xml: {e}")))?;
        source
            .networks
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let label = format!("networks[{i}]");
                // As a start reads it: an intent older than the NIC entries has defaults.
                let nic = source.nics.get(i).cloned().unwrap_or_default();
                let (attach, network) =
                    super::create::attach(&self.networks, uuid, nic.slot_at(i), name, &label)
                        .map_err(|e| match e {
                            // The source's network: this node lacks it, the guest cannot come.
                            GuestError::NotFound(m) => GuestError::Precondition(m),
                            other => other,
                        })?;
                // By MAC; without one recorded, the interface at the NIC's position.
                let mac = nic.mac.to_ascii_lowercase();
                let on_source = if mac.is_empty() {
                    kinds.get(i)
                } else {
                    kinds.iter().find(|(_, m)| *m == mac)
                }
                .map(|(k, _)| k.as_str());
                let (here, word) = match attach {
                    NicAttach::Tap(_) => ("ethernet", "a managed network"),
                    NicAttach::Bridge { .. } => ("bridge", "a host bridge"),
                };
                if on_source != Some(here) {
                    return Err(GuestError::Precondition(format!(
                        "{label}: {name:?} is {word} on this node, but the guest's NIC there is not attached that way on the source"
                    )));
                }
                Ok(PlannedNic {
                    attach,
                    network,
                    intent: nic,
                })
            })
            .collect()
    }

    /// The arriving guest's files (root overlay on this node's image, the flavor's extra
    /// disks, the source's seed), its volumes, and its domain XML; the writable disks libvirt
    /// copies (the guest's and its store volumes', not the seed, not an NBD export).
    async fn make_arrival(
        self: &Arc<Self>,
        guest: &IncomingGuest,
        source: &Intent,
        target: &GuestSpec,
        files: &GuestFiles,
        image: &crate::storage::ImageRecord,
        spec: &crate::flavor::FlavorSpec,
    ) -> Result<MadeArrival, GuestError> {
        let from = GuestFiles::new(&source.store, &target.uuid);
        let volumes_from = VolumeStore::new(&source.store).dir().to_path_buf();
        let xml = migrated_xml(
            &guest.domain_xml,
            target,
            &[(&from.dir, &files.dir), (&volumes_from, self.volumes.dir())],
            self.migration.partition.as_deref(),
        )
        .map_err(GuestError::Xml)?;
        let seed_key = DiskSource::File(files.seed()).key();
        // Only the guest's own files and the store volumes it brings are written here: a disk
        // elsewhere (another volume, a device) would have libvirt copy over it.
        let own = format!("{}/", files.dir.display());
        let brought: Vec<String> = guest
            .volumes
            .iter()
            .filter(|v| v.source == VolumeSource::Store)
            .map(|v| self.volumes.file(&v.name, &v.format).display().to_string())
            .collect();
        let mut writable = Vec::new();
        for d in
            volume_disk::disks(&xml).map_err(|e| GuestError::Invalid(format!("domain_xml: {e}")))?
        {
            let Some(key) = d.key.filter(|k| k.starts_with('/') && *k != seed_key) else {
                continue;
            };
            if !key.starts_with(&own) && !brought.contains(&key) {
                return Err(GuestError::Invalid(format!(
                    "domain_xml: disk {} ({key}) is neither the guest's nor a volume it brings",
                    d.target
                )));
            }
            writable.push(d.target);
        }
        let extra = extra_disks(spec, files);
        let (f, base, format) = (
            files.clone(),
            self.images.file(&image.name),
            image.format.clone(),
        );
        let (root_bytes, seed) = (guest.root_disk_bytes, guest.seed.clone());
        self.blocking(move || {
            f.create().map_err(GuestError::Disk)?;
            disks::overlay(&f.root_disk(), &base, &format, root_bytes).map_err(GuestError::Disk)?;
            for (path, size) in &extra {
                disks::blank(path, *size).map_err(GuestError::Disk)?;
            }
            std::fs::write(f.seed(), seed).map_err(|e| {
                GuestError::Internal(format!("{}: cannot write: {e}", f.seed().display()))
            })
        })
        .await?;
        let (this, u, volumes) = (self.clone(), target.uuid.clone(), guest.volumes.clone());
        // qemu-img, or an NBD server's answer (15 s at most): off the async workers.
        let received = self
            .blocking(move || {
                let mut received = Vec::new();
                for (i, v) in volumes.iter().enumerate() {
                    let arriving = VolumeRecord {
                        arriving_for: u.clone(),
                        ..v.clone()
                    };
                    if let Err(e) = this.volumes.receive(&arriving) {
                        this.drop_volumes(&u, &received, true);
                        return Err(match e {
                            VolumeError::Invalid { .. } | VolumeError::Exists { .. } => {
                                GuestError::Precondition(format!("volumes[{i}]: {e}"))
                            }
                            other => GuestError::Internal(format!("volumes[{i}]: {other}")),
                        });
                    }
                    received.push(v.name.clone());
                }
                Ok(received)
            })
            .await?;
        Ok(MadeArrival {
            xml,
            disks: writable,
            volumes: received,
        })
    }

    /// Deletes the volumes `names` of guest `uuid` (no domain here uses them): an aborted
    /// arrival's (`arriving`: only those still marked as arriving with it, never a volume of
    /// that name that is someone else's) or a departed guest's; logs any that cannot go.
    fn drop_volumes(&self, uuid: &str, names: &[String], arriving: bool) {
        for name in names {
            if arriving && !self.volumes.get(name).is_ok_and(|r| r.arriving_for == uuid) {
                tracing::warn!(vm = %uuid, volume = %name, "the arrival's volume is not its own any more; left as it is");
                continue;
            }
            if let Err(e) = self.volumes.delete(name) {
                tracing::error!(vm = %uuid, volume = %name, error = %e, "cannot remove the volume of a guest that is not here");
            }
        }
    }

    /// Aborts the arrival of `uuid` if it is still the one prepared now after [`PREPARED_FOR`].
    fn abort_when_late(self: &Arc<Self>, uuid: &str) {
        let Some(since) = lock(&self.arrivals.0).get(uuid).map(|a| a.since) else {
            return;
        };
        let (this, uuid) = (self.clone(), uuid.to_string());
        // From the prepare, not from whenever the task first runs.
        let deadline = tokio::time::Instant::now() + PREPARED_FOR;
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let late = lock(&this.arrivals.0)
                .get(&uuid)
                .is_some_and(|a| a.since == since);
            if !late {
                return;
            }
            // A guest that arrived and runs here is never removed: its source gave it up
            // when libvirt moved it, and only its Finish was lost.
            if this.finish_incoming(&uuid).await.is_ok() {
                tracing::warn!(vm = %uuid, "a migrated guest arrived but its source never said Finish; it is this node's guest now");
                return;
            }
            tracing::warn!(vm = %uuid, "a prepared migration was neither finished nor aborted in time; aborting it");
            if let Err(e) = this.abort_incoming(&uuid).await {
                tracing::error!(vm = %uuid, error = %e, "cannot abort the late migration");
            }
        });
    }

    /// Target side: the guest has arrived (runs here, as this agent's): it is this node's
    /// guest from now on, its claim bound as at a create. Answers the guest's downtime as
    /// libvirt measured it, where it says.
    pub async fn finish_incoming(&self, uuid: &str) -> Result<Option<Duration>, GuestError> {
        let uuid = checked_uuid(uuid)?;
        if !lock(&self.arrivals.0).contains_key(&uuid) {
            return Err(GuestError::NotFound(format!(
                "uuid: no migration of {uuid} is prepared here"
            )));
        }
        let arrived = self.domains().await?.into_iter().find(|d| {
            d.uuid == uuid
                && d.intent
                    .as_ref()
                    .is_ok_and(|i| i.store == self.storage_root)
        });
        let Some(d) = arrived else {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} has not arrived"
            )));
        };
        if d.state != DomainState::Running {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} arrived but is {}",
                d.state
            )));
        }
        let Some(arrival) = lock(&self.arrivals.0).remove(&uuid) else {
            return Err(GuestError::NotFound(format!(
                "uuid: the migration of {uuid} was aborted meanwhile"
            )));
        };
        // The guest runs here, whatever fails now: each tap is tried, a failure logged (a tap
        // that cannot join its bridge leaves that NIC cut off until the guest's next start).
        for tap in &arrival.taps {
            if let Err(e) = self.networks.join(std::slice::from_ref(tap)).await {
                tracing::error!(vm = %uuid, tap = %tap.name, error = %e, "the arrived guest's tap cannot join its network or take its limits");
            }
        }
        for name in &arrival.volumes {
            if let Err(e) = self.volumes.settle(name) {
                tracing::error!(vm = %uuid, volume = %name, error = %e, "the arrived guest's volume cannot be marked as this node's");
            }
        }
        if let Err(e) = self.limit_host_taps(&uuid, &arrival.host_taps).await {
            tracing::error!(vm = %uuid, error = %e, "the arrived guest's rate limits cannot be applied");
        }
        if let Ok(intent) = d.intent {
            if intent.claim.dedicated_cpus().next().is_some() {
                // The shared pool lost CPUs to the guest: floating guests must leave them.
                self.repin_floating().await;
            } else {
                self.follow_pool(&uuid, &intent.claim, &arrival.vcpu_cpus)
                    .await;
            }
        }
        let (hypervisor, u) = (self.hypervisor.clone(), uuid.clone());
        let downtime = self
            .blocking(move || hypervisor.migration_downtime(&u).map_err(GuestError::from))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(vm = %uuid, error = %e, "cannot read the migration's downtime");
                None
            });
        self.announce(&uuid, &arrival.name, Phase::Arrived, None);
        tracing::info!(vm = %uuid, downtime_ms = downtime.map(|d| d.as_millis() as u64), "migration finished: the guest runs here");
        Ok(downtime)
    }

    /// Target side: gives up the arrival of `uuid`: a half-arrived domain, the files and the
    /// claim go. Idempotent; a guest that has finished arriving is not touched.
    pub async fn abort_incoming(&self, uuid: &str) -> Result<(), GuestError> {
        let uuid = checked_uuid(uuid)?;
        let Some(volumes) = lock(&self.arrivals.0).get(&uuid).map(|a| a.volumes.clone()) else {
            return Ok(());
        };
        self.undo_arrival(&uuid, true).await;
        // After the domain, and only once it is gone: a domain the undo could not remove
        // keeps its disks, as it keeps its files and claim.
        let stays = self
            .domains()
            .await
            .map_or(true, |ds| ds.iter().any(|d| d.uuid == uuid));
        if stays {
            tracing::error!(vm = %uuid, "the half-arrived domain stays; so do the volumes it took in");
        } else {
            self.drop_volumes(&uuid, &volumes, true);
        }
        if let Some(arrival) = lock(&self.arrivals.0).remove(&uuid) {
            self.announce(&uuid, &arrival.name, Phase::Aborted, None);
        }
        tracing::info!(vm = %uuid, "migration aborted: nothing of the guest is left here");
        Ok(())
    }

    /// Removes what an arrival made: the domain libvirt may have defined (`domain`), the
    /// files, the claim, the taps — as a failed create does (a domain that cannot be removed
    /// keeps its files and claim).
    async fn undo_arrival(&self, uuid: &str, domain: bool) {
        let undo = super::create::Undo {
            hypervisor: self.hypervisor.clone(),
            placement: self.placement.clone(),
            uuid: uuid.to_string(),
            store: self.storage_root.clone(),
            claimed: true,
            files: Some(GuestFiles::new(&self.storage_root, uuid)),
            volume: None,
            defined: domain,
        };
        let undone = self
            .blocking(move || {
                undo.run();
                Ok(())
            })
            .await;
        if let Err(e) = undone {
            tracing::error!(vm = %uuid, error = %e, "cannot remove what the migration made here");
        }
        if let Err(e) = self.networks.unplug_guest(uuid).await {
            tracing::error!(vm = %uuid, error = %e, "cannot remove the arrival's taps; the network reconcile will");
        }
    }

    /// Source side: moves running guest `uuid` live to the node `peer` reaches. On any
    /// failure before libvirt has moved it, the target aborts and the guest runs on here
    /// unchanged (claim, domain, files).
    pub async fn migrate<P: MigrationPeer>(
        self: &Arc<Self>,
        uuid: &str,
        peer: &P,
    ) -> Result<Migrated, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let started = Instant::now();
        let _busy = self.exclusive(&uuid).await?;
        let d = self
            .domains()
            .await?
            .into_iter()
            .find(|d| d.uuid == uuid)
            .ok_or_else(|| GuestError::NotFound(format!("uuid: no guest {uuid}")))?;
        let intent = d.intent.map_err(|e| {
            GuestError::Precondition(format!("uuid: the guest's metadata cannot be read: {e}"))
        })?;
        if d.state != DomainState::Running {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} is {}; only a running guest migrates",
                d.state
            )));
        }
        if let Some(why) = unmovable(&intent) {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} cannot migrate: {why}"
            )));
        }
        let files = GuestFiles::new(&self.storage_root, &uuid);
        let hypervisor = self.hypervisor.clone();
        let (u, f) = (uuid.clone(), files.clone());
        let (domain_xml, seed, root_disk_bytes) = self
            .blocking(move || {
                let xml = hypervisor.migratable_xml(&u)?;
                let seed = std::fs::read(f.seed()).map_err(|e| {
                    GuestError::Internal(format!("{}: cannot read: {e}", f.seed().display()))
                })?;
                let root = qcow2_virtual_size(&f.root_disk()).ok_or_else(|| {
                    GuestError::Internal(format!(
                        "{}: not a readable qcow2 disk",
                        f.root_disk().display()
                    ))
                })?;
                Ok((xml, seed, root))
            })
            .await?;
        let volumes = self.moving_volumes(&uuid, &files, &domain_xml)?;
        let image_sha256 = self
            .image_of(&intent)?
            .map(|i| i.sha256)
            .unwrap_or_default();
        let name = intent.name.as_str();
        self.announce(&uuid, name, Phase::Preparing, None);
        let prepared = peer
            .prepare(IncomingGuest {
                uuid: uuid.clone(),
                domain_xml,
                image_sha256,
                root_disk_bytes,
                seed,
                volumes: volumes.clone(),
            })
            .await;
        let target = match prepared {
            Ok(target) => target,
            Err(e) => {
                if matches!(e, GuestError::Unavailable(_)) {
                    // The answer was lost, not necessarily the Prepare: the target may hold
                    // the arrival (until its 10 min bound), so it is asked to let it go.
                    if let Err(abort) = peer.abort(&uuid).await {
                        tracing::warn!(vm = %uuid, error = %abort, "the target did not answer the Abort after a lost Prepare; its bound will");
                    }
                }
                self.announce(&uuid, name, Phase::Failed, None);
                return Err(e);
            }
        };
        tracing::info!(vm = %uuid, to = %target.libvirt_uri, "migrating");
        self.announce(&uuid, name, Phase::Copying, None);
        let progress = self.report_progress(&uuid, name);
        let hypervisor = self.hypervisor.clone();
        let u = uuid.clone();
        // Not on the libvirt call permits (`blocking`): a live migration lasts as long as the
        // guest's memory takes to copy, and a few at once would starve every other call.
        let moved = tokio::task::spawn_blocking(move || {
            hypervisor.migrate(&u, &target).map_err(GuestError::from)
        })
        .await
        .map_err(GuestError::Task)
        .and_then(|r| r);
        progress.stop();
        if let Err(e) = moved {
            tracing::warn!(vm = %uuid, error = %e, "migration failed; the guest runs on here");
            if let Err(abort) = peer.abort(&uuid).await {
                tracing::error!(vm = %uuid, error = %abort, "the target did not abort the migration; its sweep will");
            }
            self.announce(&uuid, name, Phase::Failed, None);
            return Err(e);
        }
        // The guest runs on the target now, whatever else fails: what it held here goes.
        self.announce(&uuid, name, Phase::Finishing, None);
        let finished = peer.finish(&uuid).await;
        self.release_departed(&uuid, files).await;
        let names: Vec<String> = volumes.into_iter().map(|v| v.name).collect();
        self.drop_volumes(&uuid, &names, false);
        self.announce(&uuid, name, Phase::Migrated, None);
        let downtime = match finished {
            Ok(downtime) => downtime,
            Err(e) => {
                tracing::error!(vm = %uuid, error = %e, "the guest moved, but the target did not take it over");
                // Not a failed migration: the guest runs on the target, which takes it over by
                // itself when the prepared migration's bound passes.
                return Err(GuestError::Internal(format!(
                    "uuid: guest {uuid} runs on the target now, but its Finish failed ({e}); the target takes it over within {} s",
                    PREPARED_FOR.as_secs()
                )));
            }
        };
        tracing::info!(vm = %uuid, elapsed_ms = started.elapsed().as_millis() as u64, "migrated");
        Ok(Migrated {
            elapsed: started.elapsed(),
            downtime,
        })
    }

    /// The data volumes of guest `uuid` (the disks of `domain_xml` outside its own directory),
    /// each one that can move: a store volume (copied) or an NBD export (reached from the
    /// target); or why one cannot.
    fn moving_volumes(
        &self,
        uuid: &str,
        files: &GuestFiles,
        domain_xml: &str,
    ) -> Result<Vec<VolumeRecord>, GuestError> {
        let own = format!("{}/", files.dir.display());
        let records = self.volumes.list().0;
        let cannot = |why: String| {
            GuestError::Precondition(format!("uuid: guest {uuid} cannot migrate: {why}"))
        };
        volume_disk::disks(domain_xml)
            .map_err(GuestError::Internal)?
            .into_iter()
            .filter_map(|d| d.key)
            .filter(|key| !key.starts_with(&own))
            .map(|key| {
                let r = records
                    .iter()
                    .find(|r| self.volumes.disk_source(r).key() == key)
                    .ok_or_else(|| cannot(format!("its disk {key} is no volume of this node")))?;
                match &r.source {
                    VolumeSource::Block { path } => Err(cannot(format!(
                        "volume {:?} is the block device {} of this host",
                        r.name,
                        path.display()
                    ))),
                    _ if r.shareable => Err(cannot(format!(
                        "volume {:?} is shareable (its other guests stay here)",
                        r.name
                    ))),
                    _ => Ok(r.clone()),
                }
            })
            .collect()
    }

    /// A `migration` event of guest `uuid` to every watcher.
    fn announce(&self, uuid: &str, name: &str, phase: Phase, progress: Option<Progress>) {
        self.hypervisor.publish(DomainEvent {
            uuid: uuid.to_string(),
            name: name.to_string(),
            kind: EventKind::Migration,
            detail: phase.as_str(),
            unix_ms: hvagent_core::now_unix_ms(),
            progress,
        });
    }

    /// Announces the copy's progress every [`PROGRESS_EVERY`] until stopped.
    fn report_progress(self: &Arc<Self>, uuid: &str, name: &str) -> ProgressReport {
        let stopped = Arc::new(Mutex::new(false));
        let (this, uuid, name, done) = (
            self.clone(),
            uuid.to_string(),
            name.to_string(),
            stopped.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let (hypervisor, u) = (this.hypervisor.clone(), uuid.clone());
                // Not on the libvirt call permits: a progress read must never wait behind
                // other calls, and it is one short call on a connection of its own.
                let read =
                    tokio::task::spawn_blocking(move || hypervisor.migration_progress(&u)).await;
                match read {
                    Ok(Ok(Some(p))) => {
                        // Under the lock that `stop` takes: nothing after it.
                        let done = lock(&done);
                        if *done {
                            return;
                        }
                        this.announce(&uuid, &name, Phase::Copying, Some(p));
                    }
                    // Not started yet, or done: nothing to say.
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(vm = %uuid, error = %e, "cannot read the migration's progress")
                    }
                    Err(e) => {
                        tracing::debug!(vm = %uuid, error = %e, "the progress read failed")
                    }
                }
            }
        });
        ProgressReport {
            stopped,
            _task: crate::task::AbortOnDrop(task),
        }
    }

    /// What a guest that moved away held here: its claim, files and taps.
    async fn release_departed(&self, uuid: &str, files: GuestFiles) {
        if let Err(e) = self.networks.unplug_guest(uuid).await {
            tracing::error!(vm = %uuid, error = %e, "cannot remove the departed guest's taps; the network reconcile will");
        }
        if let Err(e) = self
            .blocking(move || files.remove().map_err(GuestError::Files))
            .await
        {
            tracing::error!(vm = %uuid, error = %e, "cannot remove the departed guest's files; the orphan sweep will");
        }
        let released = self.placement.lock().release(uuid).ok();
        if released.is_some_and(|c| c.dedicated_cpus().next().is_some()) {
            // The shared pool got CPUs back: floating guests may use them again.
            self.repin_floating().await;
        }
    }
}

/// What a prepared arrival made: its domain XML, the disks libvirt copies, the volumes it
/// took in.
struct MadeArrival {
    xml: String,
    disks: Vec<String>,
    volumes: Vec<String>,
}

/// The progress announcer of one migration ([`Guests::report_progress`]).
struct ProgressReport {
    /// Set under the lock by `stop`; the poller announces only while it is unset, holding it.
    stopped: Arc<Mutex<bool>>,
    /// The poller, aborted when the report goes (a read in flight is not waited for).
    _task: crate::task::AbortOnDrop,
}

impl ProgressReport {
    /// Stops it: no progress is announced after this returns.
    fn stop(self) {
        *lock(&self.stopped) = true;
    }
}

#[cfg(test)]
mod tests;
