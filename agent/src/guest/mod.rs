//! The guest lifecycle: create (claim → disks → seed → domain → start, every step undone when
//! a later one fails), start, stop, reboot, delete, get, list, console log, and the start-up
//! rebuild of placement from the domains' metadata. libvirt holds the truth about which guests
//! exist; the agent keeps no database of its own (crash-only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::Libvirt;
use crate::domain::guests::{DomainError, GuestDomain};
use crate::domain::xml::{
    DiskBus, DiskSpec, Emulation, GuestSpec, Intent, NicAttach, NicIntent, NicSpec, domain_xml,
};
use crate::flavor::{self, FlavorSpec};
use crate::net::spec::{HostAddress, NetworkSpec};
use crate::net::{GuestTap, Networks, NetworksError, nic};
use crate::placement::allocator::{check_request_id, is_uuid};
use crate::placement::{Allocator, Claim, ClaimRequest, PlacementState, Refusal, RefusalKind};
use crate::storage::disks::{self, MetaData};
use crate::storage::images::check_name;
use crate::storage::{GuestFiles, ImageRecord, ImageStore, StoreError};

pub const MAX_USER_DATA: usize = 64 * 1024;

/// How long listing the domains (the first step of every lifecycle call) may take.
pub const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
pub const MAX_SSH_KEYS: usize = 32;
pub const MAX_METADATA: usize = 64;
/// 100 Gbit/s: the highest per-NIC rate limit accepted.
pub const MAX_RATE_KBPS: u32 = 100_000_000;
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_CONSOLE_BYTES: u64 = 64 * 1024;
pub const MAX_CONSOLE_BYTES: u64 = 1024 * 1024;
/// TCG's translation cache per guest; part of the memory overhead model.
pub const TCG_CACHE_MIB: u64 = 64;
const GIB: u64 = 1 << 30;

/// What `[libvirt] emulation` allows when KVM does not work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulationPolicy {
    Allow,
    Forbid,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<DomainError> for GuestError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound(uuid) => GuestError::NotFound(format!("no guest {uuid}")),
            DomainError::Unreachable(m) => GuestError::Unavailable(format!("libvirt: {m}")),
            DomainError::Libvirt(m) => GuestError::Internal(format!("libvirt: {m}")),
        }
    }
}

impl From<NetworksError> for GuestError {
    fn from(e: NetworksError) -> Self {
        match e {
            NetworksError::Invalid(e) => GuestError::Invalid(e.to_string()),
            NetworksError::NotFound(m) => GuestError::NotFound(m),
            NetworksError::AlreadyExists(m) => GuestError::AlreadyExists(m),
            NetworksError::Precondition(m) => GuestError::Precondition(m),
            NetworksError::Failed(m) => GuestError::Internal(format!("network: {m}")),
        }
    }
}

impl From<StoreError> for GuestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid { .. } => GuestError::Invalid(e.to_string()),
            StoreError::NotFound(_) => GuestError::NotFound(format!("image: {e}")),
            StoreError::Exists { .. } => GuestError::AlreadyExists(e.to_string()),
            StoreError::InUse { .. } => GuestError::Precondition(e.to_string()),
            StoreError::Importing { .. } => GuestError::Precondition(e.to_string()),
            StoreError::Fetch {
                retryable: true, ..
            } => GuestError::Unavailable(e.to_string()),
            StoreError::Fetch { .. } => GuestError::Precondition(e.to_string()),
            StoreError::Io { .. } => GuestError::Internal(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub uuid: String,
    pub name: String,
    pub flavor: String,
    pub image: String,
    pub networks: Vec<String>,
    /// Per network (optional, in order): the guest's ADDRESS/PREFIX for the NoCloud
    /// network-config, and a MAC (else derived from the UUID and index).
    pub addresses: Vec<String>,
    pub macs: Vec<String>,
    /// Per network (optional, in order): rate limits in kbit/s into and out of the guest.
    pub ingress_kbps: Vec<u32>,
    pub egress_kbps: Vec<u32>,
    pub user_data: Vec<u8>,
    pub ssh_keys: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub reservation: String,
}

/// A guest as the API shows it.
#[derive(Debug, Clone)]
pub struct Guest {
    pub uuid: String,
    pub state: &'static str,
    pub intent: Intent,
    pub root_disk_gb: u64,
}

pub struct Guests {
    libvirt: Arc<Libvirt>,
    placement: Arc<PlacementState>,
    pub images: ImageStore,
    storage_root: PathBuf,
    /// `Err`: why this node cannot run guests (no KVM and emulation forbidden).
    emulation: Result<Emulation, String>,
    host_flags: Vec<String>,
    networks: Arc<Networks>,
    /// Held while a create or delete checks names and UUIDs and marks its guest busy (not
    /// through libvirt's define and start, so creates run side by side). Holds whether
    /// placement has been rebuilt from the guests' stored claims yet.
    lock: tokio::sync::Mutex<bool>,
    busy: Arc<std::sync::Mutex<BTreeMap<String, InFlight>>>,
    /// Re-pins of floating guests run one at a time, each computed from placement as it is
    /// then, so that the last one applied is never older than another.
    repin: tokio::sync::Mutex<()>,
}

/// A guest with a create or delete in flight: its name, and a channel that closes when the
/// call ends.
struct InFlight {
    name: String,
    done: tokio::sync::watch::Receiver<()>,
}

/// Marks a guest busy while it lives; dropping it wakes the calls waiting for that guest.
struct BusyGuard {
    busy: Arc<std::sync::Mutex<BTreeMap<String, InFlight>>>,
    uuid: String,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        // The entry goes first, then the sender (a field, dropped after this body) wakes
        // the waiters, who then find the guest no longer busy.
        lock_busy(&self.busy).remove(&self.uuid);
    }
}

fn lock_busy(
    busy: &std::sync::Mutex<BTreeMap<String, InFlight>>,
) -> std::sync::MutexGuard<'_, BTreeMap<String, InFlight>> {
    // The map stays consistent even if a holder panicked: every change is one insert/remove.
    busy.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which emulation this node uses, or why it cannot run guests.
pub fn choose_emulation(kvm_usable: bool, policy: EmulationPolicy) -> Option<Emulation> {
    match (kvm_usable, policy) {
        (true, _) => Some(Emulation::Kvm),
        (false, EmulationPolicy::Allow) => Some(Emulation::Tcg),
        (false, EmulationPolicy::Forbid) => None,
    }
}

/// Seconds since the Unix epoch, as records and intents store creation times.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Root disk size: the flavor's, else the image's `min_disk`, else its virtual size (whole
/// GiB). Refuses a flavor disk smaller than the image needs.
pub fn root_disk_bytes(spec: &FlavorSpec, image: &ImageRecord) -> Result<u64, GuestError> {
    let image_bytes = image
        .virtual_size_bytes
        .max(image.min_disk_gb() * GIB)
        .div_ceil(GIB)
        * GIB;
    match spec.disk.and_then(|d| d.size_gb) {
        Some(gb) => {
            let bytes = u64::from(gb) * GIB;
            if bytes < image_bytes {
                return Err(GuestError::Precondition(format!(
                    "flavor {} has a {gb} GB root disk; image {:?} needs at least {} GB (min_disk {}, virtual size {} bytes)",
                    spec.name(),
                    image.name,
                    image_bytes / GIB,
                    image.min_disk_gb(),
                    image.virtual_size_bytes
                )));
            }
            Ok(bytes)
        }
        None => Ok(image_bytes),
    }
}

fn check_ram(spec: &FlavorSpec, image: &ImageRecord) -> Result<(), GuestError> {
    let ram_mib = u64::from(spec.ram_half_gib) * 512;
    if ram_mib < image.min_ram_mib() {
        return Err(GuestError::Precondition(format!(
            "flavor {} has {ram_mib} MiB of RAM; image {:?} needs at least {} MiB (min_ram)",
            spec.name(),
            image.name,
            image.min_ram_mib()
        )));
    }
    Ok(())
}

/// A network name: a managed network's or a host bridge's (an interface name).
fn check_network(index: usize, name: &str) -> Result<(), GuestError> {
    let valid = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !valid {
        return Err(GuestError::Invalid(format!(
            "networks[{index}]: must be an interface name of 1-15 characters of A-Z a-z 0-9 _ . -"
        )));
    }
    Ok(())
}

/// How NIC `index` of guest `uuid` reaches network `name`: a tap in a managed network's
/// bridge, or else a host bridge of that name.
fn attach(
    networks: &Networks,
    uuid: &str,
    index: usize,
    name: &str,
) -> Result<(NicAttach, Option<NetworkSpec>), GuestError> {
    if let Some(spec) = networks.managed(name) {
        return Ok((NicAttach::Tap(nic::tap_name(uuid, index)), Some(spec)));
    }
    if Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .is_dir()
    {
        return Ok((NicAttach::Bridge(name.to_string()), None));
    }
    Err(GuestError::NotFound(format!(
        "networks[{index}]: no network or bridge named {name:?} on this node"
    )))
}

fn validate(req: &CreateRequest) -> Result<FlavorSpec, GuestError> {
    let invalid = |m: &str| Err(GuestError::Invalid(m.to_string()));
    if !is_uuid(&req.uuid) {
        return invalid("uuid: must be a UUID (8-4-4-4-12 hex digits)");
    }
    check_name("name", &req.name)?;
    if req.flavor.is_empty() {
        return invalid("flavor: must not be empty");
    }
    let spec = flavor::parse(&req.flavor)
        .map_err(|e| GuestError::Invalid(format!("flavor: {e}")))?
        .spec;
    check_name("image", &req.image)?;
    for (i, n) in req.networks.iter().enumerate() {
        check_network(i, n)?;
    }
    if req.networks.len() > nic::MAX_NICS {
        return invalid("networks: at most 16");
    }
    let n = req.networks.len();
    if req.addresses.len() > n
        || req.macs.len() > n
        || req.ingress_kbps.len() > n
        || req.egress_kbps.len() > n
    {
        return invalid(
            "addresses, macs, ingress_kbps, egress_kbps: at most one per network, in the networks' order",
        );
    }
    for (field, rates) in [
        ("ingress_kbps", &req.ingress_kbps),
        ("egress_kbps", &req.egress_kbps),
    ] {
        if let Some(i) = rates.iter().position(|r| *r > MAX_RATE_KBPS) {
            return Err(GuestError::Invalid(format!(
                "{field}[{i}]: at most {MAX_RATE_KBPS} (100 Gbit/s)"
            )));
        }
    }
    for (i, a) in req.addresses.iter().enumerate() {
        if !a.is_empty() {
            a.parse::<HostAddress>()
                .map_err(|e| GuestError::Invalid(format!("addresses[{i}]: {e}")))?;
        }
    }
    for (i, m) in req.macs.iter().enumerate() {
        if !m.is_empty() {
            nic::parse_mac(m).map_err(|e| GuestError::Invalid(format!("macs[{i}]: {e}")))?;
        }
    }
    if req.user_data.len() > MAX_USER_DATA {
        return invalid("user_data: at most 65536 bytes");
    }
    if req.ssh_keys.len() > MAX_SSH_KEYS
        || req
            .ssh_keys
            .iter()
            .any(|k| k.is_empty() || k.len() > 8192 || k.contains(['\n', '\r']))
    {
        return invalid("ssh_keys: at most 32 keys, each one line of 1-8192 characters");
    }
    if req.metadata.len() > MAX_METADATA
        || req
            .metadata
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 255 || v.len() > 1024)
    {
        return invalid("metadata: at most 64 entries, keys 1-255 and values 0-1024 characters");
    }
    if !req.reservation.is_empty() {
        check_request_id("reservation", &req.reservation)
            .map_err(|r| GuestError::Invalid(r.message))?;
    }
    Ok(spec)
}

fn refused(r: Refusal) -> GuestError {
    match r.kind {
        RefusalKind::Invalid => GuestError::Invalid(r.message),
        RefusalKind::NotFound => GuestError::NotFound(r.message),
        RefusalKind::AlreadyExists => GuestError::AlreadyExists(r.message),
        _ => GuestError::Refused(r),
    }
}

/// A validated create request and what was decided for it before anything is taken.
#[derive(Clone, Copy)]
struct CreatePlan<'a> {
    req: &'a CreateRequest,
    uuid: &'a str,
    spec: &'a FlavorSpec,
    image: &'a ImageRecord,
    root_bytes: u64,
    emulation: Emulation,
    /// Per network: how the NIC attaches, the managed network's spec, MAC and address.
    nics: &'a [PlannedNic],
}

struct PlannedNic {
    attach: NicAttach,
    network: Option<NetworkSpec>,
    intent: NicIntent,
}

/// What a create has done so far, undone in reverse when a later step fails.
struct Undo {
    libvirt: Arc<Libvirt>,
    placement: Arc<PlacementState>,
    uuid: String,
    claimed: bool,
    files: Option<GuestFiles>,
    defined: bool,
}

impl Undo {
    fn run(self) {
        if self.defined
            && let Err(e) = self.libvirt.remove(&self.uuid)
        {
            tracing::error!(vm = %self.uuid, error = %e, "undo: cannot remove the domain");
        }
        if let Some(files) = self.files
            && let Err(e) = files.remove()
        {
            tracing::error!(vm = %self.uuid, error = %e, "undo: cannot remove the guest's files");
        }
        if self.claimed {
            let _ = self.placement.lock().release(&self.uuid);
        }
    }
}

impl Guests {
    pub fn new(
        libvirt: Arc<Libvirt>,
        placement: Arc<PlacementState>,
        storage_root: &Path,
        emulation: Result<Emulation, String>,
        host_flags: Vec<String>,
        networks: Arc<Networks>,
    ) -> Guests {
        Guests {
            libvirt,
            placement,
            images: ImageStore::new(storage_root),
            storage_root: storage_root.to_path_buf(),
            emulation,
            host_flags,
            networks,
            lock: tokio::sync::Mutex::new(false),
            busy: Arc::default(),
            repin: tokio::sync::Mutex::new(()),
        }
    }

    /// Rebuilds placement from the guests' stored claims, once: at start-up, or on the first
    /// mutating call if libvirt could not be asked then. Reservations made meanwhile stay.
    pub async fn rebuild_placement(&self) -> Result<(), GuestError> {
        let mut rebuilt = self.lock.lock().await;
        self.ensure_rebuilt(&mut rebuilt).await
    }

    async fn ensure_rebuilt(&self, rebuilt: &mut bool) -> Result<(), GuestError> {
        if *rebuilt {
            return Ok(());
        }
        let stored = self.stored_claims().await?;
        let mut alloc = self.placement.lock();
        let mut claims: Vec<Claim> = alloc
            .claims()
            .filter(|c| !stored.iter().any(|s| s.vm_uuid == c.vm_uuid))
            .cloned()
            .collect();
        let guests = stored.len();
        claims.extend(stored);
        *alloc = rebuild(&alloc, claims);
        *rebuilt = true;
        tracing::info!(
            guests,
            claims = alloc.claims().count(),
            "placement rebuilt from the guests' stored claims"
        );
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, GuestError> + Send + 'static,
    ) -> Result<T, GuestError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| GuestError::Internal(format!("task failed: {e}")))?
    }

    /// This agent's domains: those whose metadata names its store, and those whose metadata
    /// cannot be read (reported, never touched).
    async fn domains(&self) -> Result<Vec<GuestDomain>, GuestError> {
        let libvirt = self.libvirt.clone();
        let store = self.storage_root.clone();
        // Every lifecycle call starts here: a libvirtd that does not answer (hung, stopped)
        // is UNAVAILABLE after LIST_TIMEOUT rather than a call that waits for ever. The
        // listing has no effect, so giving up on it (its thread waits on) changes nothing.
        let all = tokio::time::timeout(
            LIST_TIMEOUT,
            self.blocking(move || libvirt.guests().map_err(GuestError::from)),
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
        self.libvirt.subscribe()
    }

    /// The taps this agent's guests own (by their networks), as `net::nic::tap_name` names
    /// them.
    pub async fn tap_names(&self) -> Result<std::collections::BTreeSet<String>, GuestError> {
        Ok(self
            .list()
            .await?
            .0
            .iter()
            .flat_map(|g| {
                (0..g.intent.networks.len()).map(|i| crate::net::nic::tap_name(&g.uuid, i))
            })
            .collect())
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

    pub async fn create(&self, req: CreateRequest) -> Result<Guest, GuestError> {
        let spec = validate(&req)?;
        let uuid = req.uuid.to_ascii_lowercase();
        let emulation = self.emulation.clone().map_err(GuestError::Precondition)?;
        let (image, root_bytes, nics, _busy) = loop {
            let mut rebuilt = self.lock.lock().await;
            self.ensure_rebuilt(&mut rebuilt).await?;
            if let Some(mut done) = self.in_flight(&uuid) {
                // Another create or delete of this UUID: answer after it, as it left things.
                drop(rebuilt);
                let _ = done.changed().await;
                continue;
            }
            if let Some(other) = lock_busy(&self.busy)
                .iter()
                .find(|(_, f)| f.name == req.name)
                .map(|(u, _)| u.clone())
            {
                return Err(GuestError::AlreadyExists(format!(
                    "name: {:?} is taken by guest {other} (being created or deleted)",
                    req.name
                )));
            }
            if let Some(existing) = self.existing(&uuid, &req, &spec).await? {
                return existing;
            }
            let image = self.images.get(&req.image)?;
            check_ram(&spec, &image)?;
            let root_bytes = root_disk_bytes(&spec, &image)?;
            let mut nics = Vec::new();
            for (i, name) in req.networks.iter().enumerate() {
                let (attach, network) = attach(&self.networks, &uuid, i, name)?;
                let given = |v: &[String]| v.get(i).filter(|s| !s.is_empty()).cloned();
                nics.push(PlannedNic {
                    attach,
                    network,
                    intent: NicIntent {
                        mac: given(&req.macs)
                            .map(|m| m.to_ascii_lowercase())
                            .unwrap_or_else(|| nic::format_mac(&nic::derived_mac(&uuid, i))),
                        address: given(&req.addresses).unwrap_or_default(),
                        ingress_kbps: req.ingress_kbps.get(i).copied().unwrap_or(0),
                        egress_kbps: req.egress_kbps.get(i).copied().unwrap_or(0),
                    },
                });
            }
            break (image, root_bytes, nics, self.mark_busy(&uuid, &req.name));
        };
        // From here the guest is busy: no other call creates or deletes it, or takes its
        // name, while its disks, domain and start are made without holding the lock.
        let mut undo = Undo {
            libvirt: self.libvirt.clone(),
            placement: self.placement.clone(),
            uuid: uuid.clone(),
            claimed: false,
            files: None,
            defined: false,
        };
        let plan = CreatePlan {
            req: &req,
            uuid: &uuid,
            spec: &spec,
            image: &image,
            root_bytes,
            emulation,
            nics: &nics,
        };
        let result = self.create_steps(&plan, &mut undo).await;
        match result {
            Ok(guest) => Ok(guest),
            Err(e) => {
                tracing::warn!(vm = %uuid, error = %e, "create failed; undoing");
                if let Err(e) = self.networks.unplug_guest(&uuid).await {
                    tracing::error!(vm = %uuid, error = %e, "undo: cannot remove the guest's taps");
                }
                // Finished while the guest is still busy: no other call sees half a guest.
                self.blocking(move || {
                    undo.run();
                    Ok(())
                })
                .await?;
                Err(e)
            }
        }
    }

    /// What to answer for a create whose UUID or name is already in libvirt: the same guest
    /// again (idempotent), or `ALREADY_EXISTS`; `None` when both are free.
    async fn existing(
        &self,
        uuid: &str,
        req: &CreateRequest,
        spec: &FlavorSpec,
    ) -> Result<Option<Result<Guest, GuestError>>, GuestError> {
        for d in self.domains().await? {
            if d.uuid == uuid {
                let same = d.intent.as_ref().is_ok_and(|i| {
                    i.name == req.name
                        && i.flavor == spec.name()
                        && i.image == req.image
                        && i.networks == req.networks
                });
                return Ok(Some(if same {
                    self.view(d)
                        .ok_or_else(|| GuestError::Internal("guest vanished".into()))
                } else {
                    Err(GuestError::AlreadyExists(format!(
                        "uuid: guest {uuid} already exists with another name, flavor, image or networks"
                    )))
                }));
            }
            if d.name == req.name {
                return Err(GuestError::AlreadyExists(format!(
                    "name: {:?} is taken by guest {}",
                    req.name, d.uuid
                )));
            }
        }
        Ok(None)
    }

    /// The call in flight for `uuid`, if any: a receiver that completes when it ends.
    fn in_flight(&self, uuid: &str) -> Option<tokio::sync::watch::Receiver<()>> {
        lock_busy(&self.busy).get(uuid).map(|f| f.done.clone())
    }

    fn mark_busy(&self, uuid: &str, name: &str) -> BusyGuard {
        let (tx, rx) = tokio::sync::watch::channel(());
        lock_busy(&self.busy).insert(
            uuid.to_string(),
            InFlight {
                name: name.to_string(),
                done: rx,
            },
        );
        BusyGuard {
            busy: self.busy.clone(),
            uuid: uuid.to_string(),
            _done: tx,
        }
    }

    async fn create_steps(
        &self,
        plan: &CreatePlan<'_>,
        undo: &mut Undo,
    ) -> Result<Guest, GuestError> {
        let CreatePlan {
            req,
            uuid,
            spec,
            image,
            root_bytes,
            emulation,
            nics,
        } = *plan;
        // 1. Claim (or consume the caller's reservation).
        let (claim, vcpu_cpus, emulator_cpus) = {
            let now = self.placement.now_ms();
            let mut alloc = self.placement.lock();
            let claim = if req.reservation.is_empty() {
                alloc
                    .claim(
                        &ClaimRequest {
                            vm_uuid: uuid.to_string(),
                            request_id: format!("create-{uuid}"),
                            flavor: spec.clone(),
                        },
                        now,
                    )
                    .map_err(refused)?
            } else {
                bind_reservation(&mut alloc, &req.reservation, uuid, spec, now)?
            };
            undo.claimed = true;
            let cpus = alloc.vcpu_cpus(&claim);
            let emulator = alloc.emulator_cpus(&claim);
            (claim, cpus, emulator)
        };
        // 2. Disks and seed.
        let files = GuestFiles::new(&self.storage_root, uuid);
        let extra: Vec<(PathBuf, u64)> = spec
            .disk
            .map(|d| {
                (1..d.count)
                    .map(|i| (files.extra_disk(i), u64::from(d.size_gb.unwrap_or(1)) * GIB))
                    .collect()
            })
            .unwrap_or_default();
        let extra_paths: Vec<PathBuf> = extra.iter().map(|(p, _)| p.clone()).collect();
        let meta = MetaData {
            instance_id: uuid.to_string(),
            local_hostname: req.name.clone(),
            public_keys: req.ssh_keys.clone(),
        };
        let base = self.images.file(&image.name);
        let base_format = image.format.clone();
        let user_data = req.user_data.clone();
        let network_config =
            disks::network_config(&nics.iter().map(|n| n.intent.clone()).collect::<Vec<_>>());
        let f = files.clone();
        undo.files = Some(files.clone());
        self.blocking(move || {
            let disk_err = |e: disks::DiskError| GuestError::Internal(format!("disk: {e}"));
            f.create().map_err(disk_err)?;
            disks::overlay(&f.root_disk(), &base, &base_format, root_bytes).map_err(disk_err)?;
            for (path, size) in &extra {
                disks::blank(path, *size).map_err(disk_err)?;
            }
            disks::seed(&f.seed(), &meta, &user_data, &network_config).map_err(disk_err)
        })
        .await?;
        // 2b. Taps into managed networks' bridges.
        let taps = guest_taps(
            uuid,
            nics.iter().map(|n| (n.network.clone(), n.intent.clone())),
        );
        for tap in &taps {
            self.networks.plug(tap).await?;
        }
        // 3. Domain.
        let mut cpu_features: Vec<String> = ["rdrand", "rdseed"]
            .iter()
            .filter(|f| self.host_flags.iter().any(|h| h == *f))
            .map(|f| f.to_string())
            .collect();
        if spec.hwv {
            cpu_features.extend(
                ["vmx", "svm"]
                    .iter()
                    .filter(|f| self.host_flags.iter().any(|h| h == *f))
                    .map(|f| f.to_string()),
            );
        }
        let mut disks_xml = vec![DiskSpec {
            path: files.root_disk(),
            format: "qcow2",
            readonly: false,
        }];
        disks_xml.extend(extra_paths.into_iter().map(|path| DiskSpec {
            path,
            format: "qcow2",
            readonly: false,
        }));
        disks_xml.push(DiskSpec {
            path: files.seed(),
            format: "raw",
            readonly: true,
        });
        let intent = Intent {
            store: self.storage_root.clone(),
            name: req.name.clone(),
            flavor: spec.name(),
            request_id: claim.request_id.clone(),
            image: image.name.clone(),
            networks: req.networks.clone(),
            nics: nics.iter().map(|n| n.intent.clone()).collect(),
            metadata: req.metadata.clone(),
            claim,
            emulation,
            created_unix: now_unix(),
        };
        let guest_spec = GuestSpec {
            uuid: uuid.to_string(),
            intent: intent.clone(),
            vcpu_cpus,
            emulator_cpus,
            cpu_features,
            disks: disks_xml,
            disk_bus: image
                .properties
                .get("hw_disk_bus")
                .and_then(|b| DiskBus::parse(b))
                .unwrap_or(DiskBus::Virtio),
            nics: nics
                .iter()
                .map(|n| NicSpec {
                    attach: n.attach.clone(),
                    mac: n.intent.mac.clone(),
                })
                .collect(),
            console_log: files.console_log(),
            rng: image
                .properties
                .get("hw_rng_model")
                .is_some_and(|m| m == "virtio"),
            tcg_cache_mib: TCG_CACHE_MIB,
        };
        let xml = domain_xml(&guest_spec).map_err(|e| GuestError::Internal(e.to_string()))?;
        let libvirt = self.libvirt.clone();
        undo.defined = true;
        tracing::info!(vm = %uuid, "defining the domain");
        self.blocking(move || {
            libvirt.define_and_start(&xml).map_err(|e| match e {
                DomainError::Libvirt(m) => {
                    GuestError::Precondition(format!("libvirt refused the guest: {m}"))
                }
                other => other.into(),
            })
        })
        .await?;
        self.networks.join(&taps).await?;
        tracing::info!(vm = %uuid, name = %req.name, flavor = %intent.flavor, "created");
        if intent.claim.dedicated_cpus().next().is_some() {
            // The shared pool just lost CPUs: floating guests must leave them.
            self.repin_floating().await;
        } else {
            self.follow_pool(uuid, &intent.claim, &guest_spec.vcpu_cpus)
                .await;
        }
        Ok(Guest {
            uuid: uuid.to_string(),
            state: "running",
            intent,
            root_disk_gb: root_bytes / GIB,
        })
    }

    pub async fn start(&self, uuid: &str) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let guest = self.get(&uuid).await?;
        // Taps in managed networks: where libvirtd opens them for the start, then back.
        let taps = guest_taps(
            &uuid,
            guest.intent.networks.iter().enumerate().map(|(i, name)| {
                let nic = guest.intent.nics.get(i).cloned().unwrap_or_default();
                (self.networks.managed(name), nic)
            }),
        );
        if guest.state != "running" {
            self.networks.recall(&taps).await?;
        }
        let libvirt = self.libvirt.clone();
        let u = uuid.clone();
        self.blocking(move || libvirt.start(&u).map_err(GuestError::from))
            .await?;
        self.networks.join(&taps).await?;
        self.get(&uuid).await
    }

    /// ACPI shutdown, then destroy after `timeout`; `force` destroys at once.
    pub async fn stop(
        &self,
        uuid: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        if timeout > MAX_STOP_TIMEOUT {
            return Err(GuestError::Invalid("timeout_seconds: at most 600".into()));
        }
        let guest = self.get(&uuid).await?;
        if guest.state == "shut off" {
            return Ok(guest);
        }
        let libvirt = self.libvirt.clone();
        let u = uuid.clone();
        self.blocking(move || {
            if !force {
                libvirt.shutdown(&u)?;
                let deadline = Instant::now() + timeout;
                while Instant::now() < deadline {
                    if libvirt.state(&u)? == "shut off" {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                tracing::info!(vm = %u, "no ACPI shutdown within the timeout; destroying");
            }
            libvirt.destroy(&u).map_err(GuestError::from)
        })
        .await?;
        self.get(&uuid).await
    }

    pub async fn reboot(&self, uuid: &str, hard: bool) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let guest = self.get(&uuid).await?;
        if guest.state != "running" {
            return Err(GuestError::Precondition(format!(
                "guest {uuid} is {}, not running",
                guest.state
            )));
        }
        let libvirt = self.libvirt.clone();
        let u = uuid.clone();
        self.blocking(move || libvirt.reboot(&u, hard).map_err(GuestError::from))
            .await?;
        self.get(&uuid).await
    }

    /// Removes the domain, the files and the claim; `Ok(false)` when there was nothing.
    pub async fn delete(&self, uuid: &str) -> Result<bool, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let _busy = loop {
            let mut rebuilt = self.lock.lock().await;
            self.ensure_rebuilt(&mut rebuilt).await?;
            match self.in_flight(&uuid) {
                Some(mut done) => {
                    // A create of this guest in flight: delete what it leaves.
                    drop(rebuilt);
                    let _ = done.changed().await;
                }
                None => break self.mark_busy(&uuid, ""),
            }
        };
        let libvirt = self.libvirt.clone();
        let files = GuestFiles::new(&self.storage_root, &uuid);
        let u = uuid.clone();
        let (had_domain, had_files) = self
            .blocking(move || {
                let had_domain = libvirt.remove(&u)?;
                let had_files = files.dir.exists();
                files
                    .remove()
                    .map_err(|e| GuestError::Internal(e.to_string()))?;
                Ok((had_domain, had_files))
            })
            .await?;
        if let Err(e) = self.networks.unplug_guest(&uuid).await {
            tracing::warn!(vm = %uuid, error = %e, "cannot remove the guest's taps; the reconciler will");
        }
        let released = self.placement.lock().release(&uuid).ok();
        let had_claim = released.is_some();
        if released.is_some_and(|c| c.dedicated_cpus().next().is_some()) {
            // The shared pool got CPUs back: floating guests may use them again.
            self.repin_floating().await;
        }
        if had_domain || had_files || had_claim {
            tracing::info!(vm = %uuid, "deleted");
        }
        Ok(had_domain || had_files || had_claim)
    }

    /// The last `max_bytes` of the serial console log, and its whole size.
    pub async fn console_log(
        &self,
        uuid: &str,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, u64), GuestError> {
        let uuid = checked_uuid(uuid)?;
        if max_bytes > MAX_CONSOLE_BYTES {
            return Err(GuestError::Invalid("max_bytes: at most 1048576".into()));
        }
        self.get(&uuid).await?;
        let path = GuestFiles::new(&self.storage_root, &uuid).console_log();
        let want = if max_bytes == 0 {
            DEFAULT_CONSOLE_BYTES
        } else {
            max_bytes
        };
        self.blocking(move || tail(&path, want)).await
    }

    /// Pins every floating (`V`/`L`) guest to the shared pool as it is now, live and in its
    /// definition. Failures are logged: the guest keeps running on its old pins.
    async fn repin_floating(&self) {
        let _one_at_a_time = self.repin.lock().await;
        let Ok(domains) = self.domains().await else {
            return;
        };
        let pins: Vec<Pins> = {
            let alloc = self.placement.lock();
            domains
                .into_iter()
                .filter_map(|d| d.intent.ok().map(|i| (d.uuid, i.claim)))
                .filter(|(_, c)| c.dedicated_cpus().next().is_none())
                .map(|(uuid, c)| pool_pins(&alloc, uuid, &c))
                .collect()
        };
        self.apply_pins(pins).await;
    }

    /// A floating guest just started with the pool as it was at its claim: if a dedicated
    /// create or delete changed the pool meanwhile, pins it to the pool as it is now. (A change
    /// after this check re-pins it from that call, which then sees its domain.)
    async fn follow_pool(&self, uuid: &str, claim: &Claim, pinned: &[Vec<u32>]) {
        let _one_at_a_time = self.repin.lock().await;
        let pins = pool_pins(&self.placement.lock(), uuid.to_string(), claim);
        if pins.1 != pinned {
            self.apply_pins(vec![pins]).await;
        }
    }

    /// Failures are logged: the guest keeps running on its old pins.
    async fn apply_pins(&self, pins: Vec<Pins>) {
        let libvirt = self.libvirt.clone();
        let _ = self
            .blocking(move || {
                for (uuid, vcpus, emulator) in pins {
                    match libvirt.repin(&uuid, &vcpus, emulator.as_deref()) {
                        Ok(()) => tracing::info!(vm = %uuid, "re-pinned to the shared pool"),
                        Err(e) => tracing::warn!(vm = %uuid, error = %e, "cannot re-pin to the shared pool"),
                    }
                }
                Ok(())
            })
            .await;
    }

    /// Whether no create or delete is in flight and no re-pin is running: then every running
    /// guest's pins should match placement, and a difference is drift, not a move under way.
    pub fn settled(&self) -> bool {
        lock_busy(&self.busy).is_empty() && self.repin.try_lock().is_ok()
    }

    /// Which emulation guests run under, or why they cannot run.
    pub fn emulation(&self) -> Result<Emulation, String> {
        self.emulation.clone()
    }

    /// Applies placement's pins again to the guests `uuids` (vCPUs and emulator, live and in
    /// their definitions): the repair for pins changed behind the agent's back.
    pub async fn restore_pins(&self, uuids: Vec<String>) -> Result<(), GuestError> {
        let _one_at_a_time = self.repin.lock().await;
        let pins: Vec<Pins> = {
            let alloc = self.placement.lock();
            uuids
                .into_iter()
                .filter_map(|uuid| {
                    let claim = alloc.get(&uuid)?;
                    Some((
                        uuid.clone(),
                        alloc.vcpu_cpus(claim),
                        Some(alloc.emulator_cpus(claim)),
                    ))
                })
                .collect()
        };
        let libvirt = self.libvirt.clone();
        self.blocking(move || {
            for (uuid, vcpus, emulator) in pins {
                libvirt.repin(&uuid, &vcpus, emulator.as_deref())?;
            }
            Ok(())
        })
        .await
    }

    /// Placement as the guests' stored claims say, at start-up. Conflicting claims are left
    /// out (logged with the guests involved); unreadable metadata is reported, never touched.
    pub async fn stored_claims(&self) -> Result<Vec<Claim>, GuestError> {
        let mut claims = Vec::new();
        for d in self.domains().await? {
            match d.intent {
                Ok(intent) => claims.push(intent.claim),
                Err(e) => tracing::error!(
                    vm = %d.uuid, name = %d.name, error = %e,
                    "domain with unreadable hvagent metadata: left alone, not counted"
                ),
            }
        }
        Ok(claims)
    }

    /// Removes guest directories that have no domain and are older than `grace` (left by a
    /// create the agent did not live to finish or undo).
    pub async fn remove_orphans(&self, grace: Duration) -> Result<Vec<String>, GuestError> {
        let known: Vec<String> = self.domains().await?.into_iter().map(|d| d.uuid).collect();
        let vms = self.storage_root.join("vms");
        self.blocking(move || {
            let mut removed = Vec::new();
            let Ok(entries) = std::fs::read_dir(&vms) else {
                return Ok(removed);
            };
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= grace);
                if is_uuid(&name) && !known.contains(&name) && old {
                    if let Err(err) = std::fs::remove_dir_all(e.path()) {
                        tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove orphan");
                    } else {
                        removed.push(name);
                    }
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// The taps of guest `uuid` in managed networks, from its NICs in order (each with its
/// managed network, if it is in one).
fn guest_taps(
    uuid: &str,
    nics: impl Iterator<Item = (Option<NetworkSpec>, NicIntent)>,
) -> Vec<GuestTap> {
    nics.enumerate()
        .filter_map(|(i, (network, nic))| {
            network.map(|network| GuestTap {
                name: nic::tap_name(uuid, i),
                network,
                ingress_kbps: nic.ingress_kbps,
                egress_kbps: nic.egress_kbps,
            })
        })
        .collect()
}

/// A guest, the CPUs of each of its vCPUs, and its emulator CPUs when they follow the pool.
type Pins = (String, Vec<Vec<u32>>, Option<Vec<u32>>);

/// Where a floating guest's threads belong with the shared pool as `alloc` has it now.
fn pool_pins(alloc: &Allocator, uuid: String, claim: &Claim) -> Pins {
    let emulator = (claim.emulator == crate::placement::claim::Emulator::Pool)
        .then(|| alloc.emulator_cpus(claim));
    (uuid, alloc.vcpu_cpus(claim), emulator)
}

/// Rebuilds the allocator from stored claims, leaving out (and logging) the ones that
/// conflict with those accepted before them.
pub fn rebuild(template: &Allocator, claims: Vec<Claim>) -> Allocator {
    let topo = template.topology().clone();
    let policy = template.policy().clone();
    if let Ok(a) = Allocator::rebuild(topo.clone(), policy.clone(), claims.clone()) {
        return a;
    }
    let mut accepted: Vec<Claim> = Vec::new();
    for claim in claims {
        let mut trial = accepted.clone();
        trial.push(claim.clone());
        match Allocator::rebuild(topo.clone(), policy.clone(), trial) {
            Ok(_) => accepted.push(claim),
            Err(e) => tracing::error!(
                vm = %claim.vm_uuid, conflicts = %e,
                "stored claim conflicts with other guests: not counted; the guest is left alone"
            ),
        }
    }
    Allocator::rebuild(topo, policy, accepted).unwrap_or_else(|_| template.clone())
}

fn bind_reservation(
    alloc: &mut Allocator,
    reservation: &str,
    uuid: &str,
    spec: &FlavorSpec,
    now: u64,
) -> Result<Claim, GuestError> {
    match alloc.vm_of_request(reservation) {
        Some(vm) if vm == uuid => {}
        Some(vm) => {
            return Err(GuestError::Precondition(format!(
                "reservation: {reservation:?} holds resources for VM {vm}, not {uuid}"
            )));
        }
        None => {
            return Err(GuestError::NotFound(format!(
                "reservation: no reservation {reservation:?} (expired or never made)"
            )));
        }
    }
    let claim = alloc.bind(reservation, now).map_err(refused)?;
    if claim.flavor != spec.name() {
        return Err(GuestError::Precondition(format!(
            "reservation: {reservation:?} is for flavor {}, not {}",
            claim.flavor,
            spec.name()
        )));
    }
    Ok(claim)
}

fn checked_uuid(uuid: &str) -> Result<String, GuestError> {
    if is_uuid(uuid) {
        Ok(uuid.to_ascii_lowercase())
    } else {
        Err(GuestError::Invalid(
            "uuid: must be a UUID (8-4-4-4-12 hex digits)".into(),
        ))
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

fn tail(path: &Path, max: u64) -> Result<(Vec<u8>, u64), GuestError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(GuestError::Internal(format!("{}: {e}", path.display()))),
    };
    let total = file
        .metadata()
        .map_err(|e| GuestError::Internal(e.to_string()))?
        .len();
    let start = total.saturating_sub(max);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| GuestError::Internal(e.to_string()))?;
    let mut data = Vec::with_capacity((total - start) as usize);
    file.take(max)
        .read_to_end(&mut data)
        .map_err(|e| GuestError::Internal(e.to_string()))?;
    Ok((data, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(virtual_gib: u64, min_disk: &str, min_ram: &str) -> ImageRecord {
        ImageRecord {
            name: "img".into(),
            format: "qcow2".into(),
            virtual_size_bytes: virtual_gib * GIB + 1,
            file_bytes: 1,
            sha256: String::new(),
            properties: [
                ("min_disk".to_string(), min_disk.to_string()),
                ("min_ram".to_string(), min_ram.to_string()),
            ]
            .into(),
            created_unix: 0,
        }
    }

    fn spec(name: &str) -> FlavorSpec {
        flavor::parse(name).unwrap().spec
    }

    #[test]
    fn root_disk_comes_from_the_flavor_or_the_image() {
        // 2 GiB + 1 byte of virtual size rounds up to 3 GiB.
        assert_eq!(
            root_disk_bytes(&spec("SCS-1V-1-10"), &image(2, "0", "0")).unwrap(),
            10 * GIB
        );
        assert_eq!(
            root_disk_bytes(&spec("SCS-1V-1"), &image(2, "0", "0")).unwrap(),
            3 * GIB
        );
        assert_eq!(
            root_disk_bytes(&spec("SCS-1V-1"), &image(0, "5", "0")).unwrap(),
            5 * GIB
        );
        let e = root_disk_bytes(&spec("SCS-1V-1-2"), &image(0, "5", "0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flavor SCS-1V-1-2 has a 2 GB root disk; image \"img\" needs at least 5 GB (min_disk 5, virtual size 1 bytes)"
        );
        assert!(matches!(
            root_disk_bytes(&spec("SCS-1V-1-2"), &image(2, "0", "0")),
            Err(GuestError::Precondition(_))
        ));
    }

    #[test]
    fn ram_must_cover_min_ram() {
        assert!(check_ram(&spec("SCS-1V-1"), &image(1, "0", "1024")).is_ok());
        let e = check_ram(&spec("SCS-1V-0.5"), &image(1, "0", "1024")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flavor SCS-1V-0.5 has 512 MiB of RAM; image \"img\" needs at least 1024 MiB (min_ram)"
        );
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        let ok = CreateRequest {
            uuid: "00000000-0000-4000-8000-000000000001".into(),
            name: "web".into(),
            flavor: "SCS-1V-1".into(),
            image: "img".into(),
            ..Default::default()
        };
        assert!(validate(&ok).is_ok());
        let err = |r: CreateRequest| validate(&r).unwrap_err().to_string();
        assert_eq!(
            err(CreateRequest {
                ssh_keys: vec!["a\nb".into()],
                ..ok.clone()
            }),
            "ssh_keys: at most 32 keys, each one line of 1-8192 characters"
        );
        assert_eq!(
            err(CreateRequest {
                networks: vec!["x; rm".into()],
                ..ok.clone()
            }),
            "networks[0]: must be an interface name of 1-15 characters of A-Z a-z 0-9 _ . -"
        );
        assert_eq!(
            err(CreateRequest {
                reservation: "a b".into(),
                ..ok.clone()
            }),
            "reservation: must be 1-128 characters of A-Z a-z 0-9 . _ : -"
        );
        assert_eq!(
            err(CreateRequest {
                image: "../etc".into(),
                ..ok.clone()
            }),
            "image: must be 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit"
        );
        assert_eq!(
            err(CreateRequest {
                metadata: [("".to_string(), "v".to_string())].into(),
                ..ok.clone()
            }),
            "metadata: at most 64 entries, keys 1-255 and values 0-1024 characters"
        );
        let net = |f: &dyn Fn(&mut CreateRequest)| {
            let mut r = CreateRequest {
                networks: vec!["seg".into()],
                ..ok.clone()
            };
            f(&mut r);
            validate(&r).map(drop).map_err(|e| e.to_string())
        };
        assert!(
            net(&|r| {
                r.addresses = vec!["10.0.0.2/24".into()];
                r.macs = vec!["02:00:00:00:00:09".into()];
                r.ingress_kbps = vec![1000];
            })
            .is_ok()
        );
        for (case, message) in [
            (
                &(|r: &mut CreateRequest| r.addresses = vec!["10.0.0.2".into()])
                    as &dyn Fn(&mut CreateRequest),
                "addresses[0]: \"10.0.0.2\" must be ADDRESS/PREFIX",
            ),
            (
                &|r: &mut CreateRequest| r.addresses = vec!["".into(), "10.0.0.3/24".into()],
                "addresses, macs, ingress_kbps, egress_kbps: at most one per network",
            ),
            (
                &|r: &mut CreateRequest| r.macs = vec!["01:00:5e:00:00:01".into()],
                "macs[0]: 01:00:5e:00:00:01 is a multicast address",
            ),
            (
                &|r: &mut CreateRequest| r.egress_kbps = vec![MAX_RATE_KBPS + 1],
                "egress_kbps[0]: at most 100000000 (100 Gbit/s)",
            ),
            (
                &|r: &mut CreateRequest| r.networks = vec!["n".into(); 17],
                "networks: at most 16",
            ),
        ] {
            let got = net(case).unwrap_err();
            assert!(got.starts_with(message), "{got}");
        }
    }

    #[test]
    fn emulation_follows_kvm_and_policy() {
        assert_eq!(
            choose_emulation(true, EmulationPolicy::Forbid),
            Some(Emulation::Kvm)
        );
        assert_eq!(
            choose_emulation(false, EmulationPolicy::Allow),
            Some(Emulation::Tcg)
        );
        assert_eq!(choose_emulation(false, EmulationPolicy::Forbid), None);
    }

    #[test]
    fn console_tail_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        assert_eq!(tail(&path, 10).unwrap(), (vec![], 0));
        std::fs::write(&path, b"0123456789abcdef").unwrap();
        assert_eq!(tail(&path, 4).unwrap(), (b"cdef".to_vec(), 16));
        assert_eq!(
            tail(&path, 100).unwrap(),
            (b"0123456789abcdef".to_vec(), 16)
        );
    }
}
