//! The guest lifecycle: create (claim → disks → seed → domain → start, every step undone when
//! a later one fails), start, stop, reboot, delete, get, list, console log, and the start-up
//! rebuild of placement from the domains' metadata. libvirt holds the truth about which guests
//! exist; the agent keeps no database of its own (crash-only).
//!
//! One file per concern: `request` (the checks), `plan` (what a new guest looks like),
//! `create` (taking and making it, with its undo), `lifecycle` (the calls on an existing
//! guest), `pins` (re-pins), `recovery` (placement rebuild, orphans), `resume` (guests wanted
//! running started again after a host reboot), `busy` (guests with a create or delete in
//! flight) and `error`.

mod busy;
mod console;
mod create;
mod drain;
mod error;
mod guest_info;
mod lifecycle;
mod migrate;
mod nic;
mod pause;
mod pins;
mod plan;
mod recovery;
mod request;
mod resize;
mod resume;
mod snapshot;
mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::domain::firmware::FirmwareFacts;
use crate::domain::hypervisor::{DomainState, GuestDomain, Hypervisor};
use crate::domain::xml::{Emulation, Intent};
use crate::net::Networks;
use crate::placement::PlacementState;
use crate::storage::{GuestFiles, ImageStore, VolumeStore};

pub use console::{ConsoleEnd, ConsoleEvent, ConsoleSession};
pub use drain::{DrainReport, Moved, Stayed};
pub use error::GuestError;
pub use guest_info::{CONSISTENCY_PROPERTY, Consistency, GuestInfo};
pub use lifecycle::{
    DEFAULT_CONSOLE_BYTES, DEFAULT_STOP_TIMEOUT, MAX_CONSOLE_BYTES, MAX_STOP_TIMEOUT,
};
pub use migrate::{IncomingGuest, Migrated, MigrationPeer, MigrationSettings};
pub use nic::NicRequest;
pub use recovery::rebuild;
pub(crate) use request::checked_uuid;
pub use request::{
    CreateRequest, MAX_METADATA, MAX_RATE_KBPS, MAX_SSH_KEYS, MAX_USER_DATA, root_disk_bytes,
};
pub use resume::ResumeSettings;
pub use snapshot::{SnapshotError, SnapshotRequest};
pub use volume::{DETACH_WAIT, VolumeCallError, VolumeRequest};

/// How long listing the domains (the first step of every lifecycle call) may take.
pub const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Threads the lifecycle's blocking work (libvirt calls, disk files) may hold at once, out
/// of tokio's 16: a libvirtd that hangs holds at most these, and the rest stay for the
/// health sampler, inventory and networking.
pub const BLOCKING_CALLS: usize = 8;
/// TCG's translation cache per guest; part of the memory overhead model.
pub const TCG_CACHE_MIB: u64 = 64;
const GIB: u64 = 1 << 30;

/// What `[libvirt] emulation` allows when KVM does not work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulationPolicy {
    Allow,
    Forbid,
}

/// A guest as the API shows it.
#[derive(Debug, Clone)]
pub struct Guest {
    pub uuid: String,
    pub state: DomainState,
    pub intent: Intent,
    pub root_disk_gb: u64,
}

pub struct Guests {
    hypervisor: Arc<dyn Hypervisor>,
    placement: Arc<PlacementState>,
    pub images: ImageStore,
    pub volumes: VolumeStore,
    storage_root: PathBuf,
    /// `Err`: why this node cannot run guests (no KVM and emulation forbidden).
    emulation: Result<Emulation, String>,
    host_flags: Vec<String>,
    /// The UEFI, Secure Boot and vTPM this node can give guests (read at start; none until
    /// [`Guests::with_firmware`] says).
    firmware: FirmwareFacts,
    networks: Arc<Networks>,
    /// Held while a create or delete checks names and UUIDs and marks its guest busy (not
    /// through libvirt's define and start, so creates run side by side), and while placement
    /// is rebuilt from the guests' stored claims.
    lock: tokio::sync::Mutex<()>,
    busy: busy::Busy,
    /// Re-pins of floating guests run one at a time, each computed from placement as it is
    /// then, so that the last one applied is never older than another.
    repin: tokio::sync::Mutex<()>,
    /// Permits for [`BLOCKING_CALLS`]; a call that cannot get one within [`LIST_TIMEOUT`]
    /// answers UNAVAILABLE instead of queueing without end.
    calls: Arc<tokio::sync::Semaphore>,
    /// Guests whose ACPI shutdown request libvirt has not answered yet.
    asking: lifecycle::AskingSet,
    /// Open console sessions.
    consoles: console::Sessions,
    /// How this node takes guests from others.
    migration: MigrationSettings,
    /// Guests prepared to arrive from another node.
    arrivals: migrate::Arrivals,
    /// Held by the drain under way: one at a time, and no Undrain meanwhile.
    drain_running: tokio::sync::Mutex<()>,
}

/// Which emulation this node uses, or why it cannot run guests.
pub fn choose_emulation(kvm_usable: bool, policy: EmulationPolicy) -> Option<Emulation> {
    match (kvm_usable, policy) {
        (true, _) => Some(Emulation::Kvm),
        (false, EmulationPolicy::Allow) => Some(Emulation::Tcg),
        (false, EmulationPolicy::Forbid) => None,
    }
}

pub use hvagent_core::now_unix;

impl Guests {
    pub fn new(
        hypervisor: Arc<dyn Hypervisor>,
        placement: Arc<PlacementState>,
        storage_root: &Path,
        emulation: Result<Emulation, String>,
        host_flags: Vec<String>,
        networks: Arc<Networks>,
    ) -> Guests {
        Guests {
            hypervisor,
            placement,
            images: ImageStore::new(storage_root),
            volumes: VolumeStore::new(storage_root),
            storage_root: storage_root.to_path_buf(),
            emulation,
            host_flags,
            firmware: FirmwareFacts::default(),
            networks,
            lock: tokio::sync::Mutex::new(()),
            busy: busy::Busy::default(),
            repin: tokio::sync::Mutex::new(()),
            calls: Arc::new(tokio::sync::Semaphore::new(BLOCKING_CALLS)),
            asking: lifecycle::AskingSet::default(),
            consoles: console::Sessions::default(),
            migration: MigrationSettings::default(),
            arrivals: migrate::Arrivals::default(),
            drain_running: tokio::sync::Mutex::new(()),
        }
    }

    /// These guests may have the firmware `node` offers (`host::firmware::read` at start).
    pub fn with_firmware(mut self, node: FirmwareFacts) -> Guests {
        self.firmware = node;
        self
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, GuestError> + Send + 'static,
    ) -> Result<T, GuestError> {
        let permit = tokio::time::timeout(LIST_TIMEOUT, self.calls.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                GuestError::Unavailable(format!(
                    "libvirt: {BLOCKING_CALLS} calls have been waiting on libvirt or the disk for {} s",
                    LIST_TIMEOUT.as_secs()
                ))
            })?;
        // The permit goes with the thread: it is free again when the work ends, not when a
        // caller stops waiting for it.
        tokio::task::spawn_blocking(move || {
            let result = f();
            drop(permit);
            result
        })
        .await
        .map_err(GuestError::Task)?
    }

    /// This agent's domains: those whose metadata names its store, and those whose metadata
    /// cannot be read (reported, never touched).
    async fn domains(&self) -> Result<Vec<GuestDomain>, GuestError> {
        let hypervisor = self.hypervisor.clone();
        let store = self.storage_root.clone();
        // Every lifecycle call starts here: a libvirtd that does not answer (hung, stopped)
        // is UNAVAILABLE after LIST_TIMEOUT rather than a call that waits for ever. The
        // listing has no effect, so giving up on it (its thread waits on) changes nothing.
        let all = tokio::time::timeout(
            LIST_TIMEOUT,
            self.blocking(move || hypervisor.guests().map_err(GuestError::from)),
        )
        .await
        .map_err(|_| {
            GuestError::Unavailable(format!(
                "libvirt: no answer to listing the domains within {} s",
                LIST_TIMEOUT.as_secs()
            ))
        })??;
        Ok(all
            .into_iter()
            .filter(|d| d.intent.as_ref().map_or(true, |i| i.store == store))
            .collect())
    }

    fn view(&self, d: GuestDomain) -> Option<Guest> {
        let intent = d.intent.ok()?;
        let root = GuestFiles::new(&self.storage_root, &d.uuid).root_disk();
        let root_disk_gb = qcow2_virtual_size(&root).map_or(0, |b| b / GIB);
        Some(Guest {
            uuid: d.uuid,
            state: d.state,
            intent,
            root_disk_gb,
        })
    }

    pub async fn get(&self, uuid: &str) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        self.domains()
            .await?
            .into_iter()
            .find(|d| d.uuid == uuid)
            .and_then(|d| self.view(d))
            .ok_or_else(|| GuestError::NotFound(format!("no guest {uuid}")))
    }

    /// Every guest, and the domains whose hvagent metadata cannot be read.
    pub async fn list(&self) -> Result<(Vec<Guest>, Vec<String>), GuestError> {
        let mut guests = Vec::new();
        let mut unreadable = Vec::new();
        for d in self.domains().await? {
            match &d.intent {
                Ok(_) => guests.extend(self.view(d)),
                Err(e) => unreadable.push(format!("{} ({}): {e}", d.uuid, d.name)),
            }
        }
        Ok((guests, unreadable))
    }

    /// The image a guest was made from; `None` for one booted from a volume given at Create.
    fn image_of(&self, intent: &Intent) -> Result<Option<crate::storage::ImageRecord>, GuestError> {
        if intent.image.is_empty() {
            return Ok(None);
        }
        self.images.get(&intent.image).map(Some).map_err(|e| {
            GuestError::Precondition(format!(
                "uuid: the guest's image {:?} cannot be read: {e}",
                intent.image
            ))
        })
    }

    /// Whether `uuid` is one of this agent's guests now.
    pub async fn is_own(&self, uuid: &str) -> bool {
        self.domains()
            .await
            .is_ok_and(|ds| ds.iter().any(|d| d.uuid == uuid && d.intent.is_ok()))
    }

    /// Domain events as libvirt reports them, from now on.
    pub fn subscribe(
        &self,
    ) -> tokio::sync::broadcast::Receiver<crate::domain::events::DomainEvent> {
        self.hypervisor.subscribe()
    }

    /// The guests that own taps: those with a create or delete in flight (read first: one
    /// that ends meanwhile has its domain listed, or its taps removed), then every domain of
    /// this agent, those whose metadata cannot be read included.
    pub async fn tap_owners(&self) -> Result<crate::net::nic::TapOwners, GuestError> {
        let busy = self.busy.uuids();
        let domains = self.domains().await?;
        Ok(crate::net::nic::TapOwners::new(
            busy.iter()
                .map(String::as_str)
                .chain(domains.iter().map(|d| d.uuid.as_str())),
        ))
    }

    /// Guests using `image`.
    pub async fn users_of(&self, image: &str) -> Result<Vec<String>, GuestError> {
        Ok(self
            .list()
            .await?
            .0
            .into_iter()
            .filter(|g| g.intent.image == image)
            .map(|g| g.uuid)
            .collect())
    }

    /// Whether no create or delete is in flight and no re-pin is running: then every running
    /// guest's pins should match placement, and a difference is drift, not a move under way.
    pub fn settled(&self) -> bool {
        self.busy.is_empty() && self.repin.try_lock().is_ok()
    }

    /// Which emulation guests run under, or why they cannot run.
    pub fn emulation(&self) -> Result<Emulation, String> {
        self.emulation.clone()
    }
}

/// The virtual size in a qcow2 header (bytes 24-31, big-endian).
fn qcow2_virtual_size(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; 32];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    match crate::storage::images::detect(&head) {
        crate::storage::images::Format::Qcow2 { virtual_size, .. } => Some(virtual_size),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
