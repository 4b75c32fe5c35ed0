//! Host networking, declaratively: the networks the agent is told to have (persisted under
//! `[storage] root`/networks), made real over netlink and kept real by reconciling them at
//! start-up, periodically and on every change. `spec` and `reconcile` are pure; `link` is the
//! netlink edge.

pub mod link;
pub mod nic;
pub mod reconcile;
pub mod spec;
pub mod store;
pub mod tc;

use hvagent_core::counts::KindCounts;
use hvagent_core::sync::lock;
use std::collections::BTreeMap;
use std::path::Path;

use link::{Counters, Link, NetError, Netlink, NewVxlan};
use nic::TapOwners;
use reconcile::{Step, plan};
use spec::{Kind, NetworkSpec, SpecError};
use store::{SpecStore, Stored};

#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    #[error("{0}")]
    Invalid(#[from] SpecError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Failed(String),
}

impl From<NetError> for NetworksError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Unsupported(m) => NetworksError::Precondition(m),
            other => NetworksError::Failed(other.to_string()),
        }
    }
}

/// A guest NIC's tap in a managed network, with its rate limits (kbit/s; 0: none).
#[derive(Debug, Clone)]
pub struct GuestTap {
    pub name: String,
    pub network: NetworkSpec,
    pub ingress_kbps: u32,
    pub egress_kbps: u32,
}

/// A network as List shows it.
#[derive(Debug, Clone)]
pub struct NetworkView {
    pub spec: NetworkSpec,
    pub bridge: String,
    pub mtu: u32,
    /// What is wrong now (empty: as desired).
    pub problems: Vec<String>,
    /// Guest taps in the bridge.
    pub nics: Vec<String>,
    pub counters: Counters,
}

pub struct Networks {
    netlink: Netlink,
    /// When networks live in another namespace than the agent (and libvirtd): a connection
    /// in the agent's own, and both namespaces' files, to move guest taps between them.
    elsewhere: Option<Elsewhere>,
    store: SpecStore,
    /// What the store holds: read at start, then changed with it (so that no call reads
    /// files on an async worker).
    stored: std::sync::Mutex<Stored>,
    /// One change, reconcile or tap plug at a time: a reconcile's stray taps are decided
    /// and removed without a guest's tap being made meanwhile.
    lock: tokio::sync::Mutex<()>,
    repairs: KindCounts,
}

impl Networks {
    pub fn new(netlink: Netlink, storage_root: &Path, repairs: KindCounts) -> Networks {
        let elsewhere = netlink.namespace.path.as_ref().and_then(|path| {
            let opened = (|| -> Result<Elsewhere, String> {
                Ok(Elsewhere {
                    host: Netlink::open(link::Namespace::default()).map_err(|e| e.to_string())?,
                    host_ns: std::fs::File::open("/proc/thread-self/ns/net")
                        .map_err(|e| e.to_string())?,
                    network_ns: std::fs::File::open(path).map_err(|e| e.to_string())?,
                })
            })();
            opened
                .map_err(|e| tracing::error!(error = %e, "guest taps cannot reach the network namespace"))
                .ok()
        });
        let store = SpecStore::new(storage_root.join("networks"));
        let stored = store.load().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the stored networks: none is managed until restart");
            Stored::default()
        });
        Networks {
            netlink,
            elsewhere,
            store,
            stored: std::sync::Mutex::new(stored),
            lock: tokio::sync::Mutex::new(()),
            repairs,
        }
    }

    /// The desired networks, by name. Networks whose spec file cannot be read are not among
    /// them: nothing repairs or removes their devices.
    pub fn desired(&self) -> Vec<NetworkSpec> {
        lock(&self.stored).specs.values().cloned().collect()
    }

    /// `FAILED_PRECONDITION` when `name`'s stored spec cannot be read: the agent does not
    /// know that network, so it neither changes nor replaces it.
    fn readable(&self, name: &str) -> Result<(), NetworksError> {
        match lock(&self.stored).unreadable.get(name) {
            Some(why) => Err(NetworksError::Precondition(format!(
                "network {name:?}: its stored spec {} cannot be read ({why}); its devices are left alone: repair or remove the file and restart the agent",
                self.store.file(name).display()
            ))),
            None => Ok(()),
        }
    }

    /// Stores `spec` (durably, off the async workers), or with `None` removes the stored
    /// spec of `name`.
    async fn save(&self, name: &str, spec: Option<NetworkSpec>) -> Result<(), NetworksError> {
        let store = self.store.clone();
        let (n, s) = (name.to_string(), spec.clone());
        tokio::task::spawn_blocking(move || match &s {
            Some(spec) => store.put(spec),
            None => store.remove(&n),
        })
        .await
        .map_err(|e| NetworksError::Failed(e.to_string()))?
        .map_err(|e| NetworksError::Failed(format!("{}: {e}", self.store.file(name).display())))?;
        let mut stored = lock(&self.stored);
        match spec {
            Some(spec) => stored.specs.insert(name.to_string(), spec),
            None => stored.specs.remove(name),
        };
        Ok(())
    }

    /// Makes the host have `spec`: a no-op for the same spec (`Ok(false)`), the network made
    /// for a new one (`Ok(true)`), `ALREADY_EXISTS` naming each difference for another spec
    /// under the name. A new network that cannot be made leaves nothing behind.
    pub async fn ensure(&self, spec: NetworkSpec) -> Result<bool, NetworksError> {
        spec.validate()?;
        let _one = self.lock.lock().await;
        self.readable(&spec.name)?;
        if let Some(existing) = self.desired().into_iter().find(|s| s.name == spec.name) {
            let differences = existing.differences(&spec);
            if !differences.is_empty() {
                return Err(NetworksError::AlreadyExists(format!(
                    "network {:?} exists with another spec: {}",
                    spec.name,
                    differences.join("; ")
                )));
            }
            self.reconcile_locked(std::slice::from_ref(&spec), None)
                .await?;
            return Ok(false);
        }
        let links = self.netlink.links().await?;
        let exists = |n: &str| links.iter().any(|l| l.name == n);
        let lower = match &spec.kind {
            Kind::Bridge { uplink } => uplink.as_deref().map(|u| ("uplink", u)),
            Kind::Vxlan { underlay, .. } => Some(("underlay", underlay.as_str())),
            Kind::Vlan { uplink, .. } => Some(("uplink", uplink.as_str())),
        };
        if let Some((field, name)) = lower
            && !exists(name)
        {
            return Err(NetworksError::NotFound(format!(
                "{field}: no interface {name:?} on this node"
            )));
        }
        for device in std::iter::once(spec.bridge()).chain(spec.member()) {
            if exists(&device) {
                return Err(NetworksError::AlreadyExists(format!(
                    "name: interface {device} already exists and is not managed by this agent"
                )));
            }
        }
        self.save(&spec.name, Some(spec.clone())).await?;
        if let Err(e) = self
            .reconcile_locked(std::slice::from_ref(&spec), None)
            .await
        {
            // Undo: the devices this ensure made (none was there before), then the spec.
            self.remove_devices(&spec).await;
            if let Err(e) = self.save(&spec.name, None).await {
                tracing::error!(network = %spec.name, error = %e, "undo: cannot remove the stored spec");
            }
            return Err(e);
        }
        tracing::info!(network = %spec.name, kind = spec.kind.word(), "network created");
        Ok(true)
    }

    /// Removes a network: refused while guest NICs are in it unless `force`. `Ok(false)` when
    /// there was no such network.
    pub async fn delete(&self, name: &str, force: bool) -> Result<bool, NetworksError> {
        spec::check_name(name)?;
        let _one = self.lock.lock().await;
        self.readable(name)?;
        let Some(spec) = self.desired().into_iter().find(|s| s.name == name) else {
            return Ok(false);
        };
        let links = self.netlink.links().await?;
        let nics = nics_in(&links, &spec.bridge());
        if !nics.is_empty() && !force {
            return Err(NetworksError::Precondition(format!(
                "network {name:?} has guest NICs attached ({}): detach them or delete with force",
                nics.join(", ")
            )));
        }
        self.remove_devices(&spec).await;
        self.save(name, None).await?;
        tracing::info!(network = %name, forced = force && !nics.is_empty(), "network deleted");
        Ok(true)
    }

    /// Removes the network's member and bridge: only a device of the kind the network makes
    /// under that name (another kind is not the agent's, and stays).
    async fn remove_devices(&self, spec: &NetworkSpec) {
        let Ok(links) = self.netlink.links().await else {
            return;
        };
        let devices = spec
            .member()
            .map(|m| (m, spec.kind.word()))
            .into_iter()
            .chain(std::iter::once((spec.bridge(), "bridge")));
        for (device, kind) in devices {
            let Some(l) = links.iter().find(|l| l.name == device) else {
                continue;
            };
            if l.kind != kind {
                tracing::warn!(device, kind = %l.kind, "not the network's device: left alone");
                continue;
            }
            if let Err(e) = self.netlink.delete(l.index).await {
                tracing::warn!(device, error = %e, "cannot remove a network device");
            }
        }
    }

    /// Every desired network with what is wrong with it now.
    pub async fn list(&self) -> Result<Vec<NetworkView>, NetworksError> {
        let specs = self.desired();
        let links = self.netlink.links().await?;
        let (steps, problems) = plan(&specs, &links, None);
        Ok(specs
            .into_iter()
            .map(|spec| {
                let bridge = spec.bridge();
                let link = links.iter().find(|l| l.name == bridge);
                let mut wrong: Vec<String> = problems
                    .iter()
                    .filter(|p| p.starts_with(&format!("{}: ", spec.name)))
                    .cloned()
                    .collect();
                wrong.extend(steps.iter().filter(|s| concerns(s, &spec)).map(describe));
                NetworkView {
                    mtu: link.map_or(0, |l| l.mtu),
                    counters: link.map(|l| l.counters).unwrap_or_default(),
                    nics: nics_in(&links, &bridge),
                    problems: wrong,
                    bridge,
                    spec,
                }
            })
            .collect())
    }

    /// Repairs every desired network and removes the taps in its bridges that no guest owns;
    /// returns the repairs. `owners` lists the guests that own taps (`None`: they could not
    /// be listed, and no tap is removed). It is called after the links were read, with no
    /// tap plugged meanwhile: a tap made before the read belongs to a guest that is then
    /// either listed or still being created (and so among the owners).
    pub async fn reconcile<F, Fut>(&self, owners: F) -> Result<Vec<String>, NetworksError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<TapOwners>>,
    {
        let _one = self.lock.lock().await;
        let links = self.netlink.links().await?;
        let owners = owners().await;
        self.apply_plan(&self.desired(), &links, owners.as_ref())
            .await
    }

    async fn reconcile_locked(
        &self,
        specs: &[NetworkSpec],
        owners: Option<&TapOwners>,
    ) -> Result<Vec<String>, NetworksError> {
        let links = self.netlink.links().await?;
        self.apply_plan(specs, &links, owners).await
    }

    async fn apply_plan(
        &self,
        specs: &[NetworkSpec],
        links: &[Link],
        owners: Option<&TapOwners>,
    ) -> Result<Vec<String>, NetworksError> {
        let (steps, problems) = plan(specs, links, owners);
        if let Some(p) = problems.first() {
            return Err(NetworksError::NotFound(p.clone()));
        }
        let mut done = Vec::new();
        for step in steps {
            self.apply(&step, specs).await?;
            if !matches!(step, Step::AddPeers { .. }) {
                let what = describe(&step);
                tracing::info!(repair = step.kind(), "{what}");
                self.repairs.inc(step.kind());
                done.push(what);
            }
        }
        Ok(done)
    }

    async fn apply(&self, step: &Step, specs: &[NetworkSpec]) -> Result<(), NetworksError> {
        // Indexes change as links come and go: look them up right before each step.
        let links = self.netlink.links_only().await?;
        let index = |name: &str| {
            links
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.index)
                .ok_or_else(|| NetworksError::NotFound(format!("interface {name} vanished")))
        };
        let spec = |network: &str| {
            specs
                .iter()
                .find(|s| s.name == network)
                .ok_or_else(|| NetworksError::Failed(format!("no spec for {network}")))
        };
        match step {
            Step::CreateBridge { name, mtu } => self.netlink.add_bridge(name, *mtu).await?,
            Step::CreateVxlan {
                network,
                name,
                underlay,
                mtu,
            } => {
                if let Kind::Vxlan {
                    vni,
                    local,
                    group,
                    port,
                    ..
                } = &spec(network)?.kind
                {
                    self.netlink
                        .add_vxlan(&NewVxlan {
                            name,
                            vni: *vni,
                            underlay: index(underlay)?,
                            local: *local,
                            group: *group,
                            port: *port,
                            mtu: *mtu,
                        })
                        .await?;
                }
            }
            Step::CreateVlan {
                network,
                name,
                uplink,
                mtu,
            } => {
                if let Kind::Vlan { id, .. } = &spec(network)?.kind {
                    self.netlink
                        .add_vlan(name, index(uplink)?, *id, *mtu)
                        .await?;
                }
            }
            Step::Recreate { name, .. } | Step::RemoveStrayTap { name } => {
                self.netlink.delete(index(name)?).await?;
            }
            Step::Fix {
                name,
                mtu,
                controller,
                ..
            } => {
                let controller = match controller {
                    Some(c) => Some(index(c)?),
                    None => None,
                };
                self.netlink.set(index(name)?, *mtu, controller).await?;
            }
            Step::AddAddress { bridge, network } => {
                if let Some(a) = spec(network)?.address {
                    self.netlink.add_address(index(bridge)?, a).await?;
                }
            }
            Step::AddPeers { network, name } => {
                if let Kind::Vxlan { remotes, .. } = &spec(network)?.kind {
                    let member = index(name)?;
                    for r in remotes {
                        self.netlink.add_flood_peer(member, *r).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The managed network named `name`, if there is one.
    pub fn managed(&self, name: &str) -> Option<NetworkSpec> {
        self.desired().into_iter().find(|s| s.name == name)
    }

    /// Whether a link named `name` exists on this node, in the agent's namespace or the
    /// networks' (a tap an arriving guest is to get must not: it would be another's).
    pub async fn has_link(&self, name: &str) -> Result<bool, NetworksError> {
        if self.netlink.link(name).await?.is_some() {
            return Ok(true);
        }
        match &self.elsewhere {
            Some(e) => Ok(e.host.link(name).await?.is_some()),
            None => Ok(false),
        }
    }

    /// Makes each guest NIC's tap (persistent, so libvirt finds it) and puts it into its
    /// network's bridge with the bridge's MTU, up. Idempotent: an existing tap is reused.
    /// With networks in another namespace, a tap is made where libvirtd opens it and joins
    /// its bridge in `join` once the guest runs.
    pub async fn plug(&self, taps: &[GuestTap]) -> Result<(), NetworksError> {
        // Not while a reconcile decides which taps are stray.
        let _one = self.lock.lock().await;
        for tap in taps {
            match &self.elsewhere {
                Some(e) => {
                    if e.host.link(&tap.name).await?.is_none() {
                        e.host.add_tap(&tap.name).await?;
                    }
                }
                None => self.enslave(tap).await?,
            }
        }
        Ok(())
    }

    /// Once the guest runs: moves its taps into the network namespace and their bridges
    /// when networks live elsewhere (libvirt has opened them; the open file follows the
    /// device), and applies the rate limits (libvirt resets a tap's qdiscs when it opens it).
    pub async fn join(&self, taps: &[GuestTap]) -> Result<(), NetworksError> {
        use std::os::fd::AsRawFd;
        for tap in taps {
            if let Some(e) = &self.elsewhere {
                if let Some(l) = e.host.link(&tap.name).await? {
                    e.host.move_to(l.index, e.network_ns.as_raw_fd()).await?;
                }
                self.enslave(tap).await?;
            }
            let namespace = self.netlink.namespace.path.as_deref();
            tc::limit(namespace, &tap.name, tap.ingress_kbps, tap.egress_kbps).await?;
        }
        Ok(())
    }

    /// Applies a NIC's rate limits to the tap libvirt made for it in a host bridge (in the
    /// agent's own namespace, where the host's bridges are), once the guest runs. `Ok(false)`
    /// when there is no such tap.
    pub async fn limit_host_tap(
        &self,
        name: &str,
        ingress_kbps: u32,
        egress_kbps: u32,
    ) -> Result<bool, NetworksError> {
        let host = self.elsewhere.as_ref().map_or(&self.netlink, |e| &e.host);
        if host.link(name).await?.is_none() {
            return Ok(false);
        }
        tc::limit(None, name, ingress_kbps, egress_kbps).await?;
        Ok(true)
    }

    /// Brings a stopped guest's taps back to where libvirtd opens them, before a start.
    pub async fn recall(&self, taps: &[GuestTap]) -> Result<(), NetworksError> {
        let Some(e) = &self.elsewhere else {
            return Ok(());
        };
        use std::os::fd::AsRawFd;
        for tap in taps {
            if let Some(l) = self.netlink.link(&tap.name).await? {
                self.netlink.move_to(l.index, e.host_ns.as_raw_fd()).await?;
            }
        }
        Ok(())
    }

    async fn enslave(&self, guest_tap: &GuestTap) -> Result<(), NetworksError> {
        let (tap, network) = (guest_tap.name.as_str(), &guest_tap.network);
        let bridge = network.bridge();
        let Some(b) = self.netlink.link(&bridge).await? else {
            return Err(NetworksError::Precondition(format!(
                "network {:?} has no bridge {bridge} now (being repaired)",
                network.name
            )));
        };
        // The network's MTU, not the bridge's now: a bridge that lost its last port (the taps
        // gone in a reboot) has fallen back to 1500 until the next reconcile.
        let lower_mtu = match &network.kind {
            Kind::Vxlan { underlay, .. } => self.netlink.link(underlay).await?.map(|l| l.mtu),
            _ => None,
        };
        let mtu = network.effective_mtu(lower_mtu);
        let index = match self.netlink.link(tap).await? {
            Some(l) => l.index,
            None => {
                self.netlink.add_tap(tap).await?;
                self.netlink
                    .link(tap)
                    .await?
                    .map(|l| l.index)
                    .ok_or_else(|| NetworksError::Failed(format!("tap {tap} vanished")))?
            }
        };
        self.netlink.set(index, Some(mtu), Some(b.index)).await?;
        Ok(())
    }

    /// Removes every tap of the guest `uuid`, in either namespace (absent ones are fine).
    pub async fn unplug_guest(&self, uuid: &str) -> Result<(), NetworksError> {
        let prefix = nic::tap_name(uuid, 0);
        let prefix = &prefix[..prefix.len() - 1];
        let sides = std::iter::once(&self.netlink).chain(self.elsewhere.as_ref().map(|e| &e.host));
        for side in sides {
            for l in side.links_only().await? {
                if nic::is_tap_name(&l.name) && l.name.starts_with(prefix) {
                    side.delete(l.index).await?;
                }
            }
        }
        Ok(())
    }

    /// Removes the tap `name` (one NIC's, after a hot detach), in either namespace; an
    /// absent one is fine.
    pub async fn unplug(&self, name: &str) -> Result<(), NetworksError> {
        let sides = std::iter::once(&self.netlink).chain(self.elsewhere.as_ref().map(|e| &e.host));
        for side in sides {
            if let Some(l) = side.link(name).await? {
                side.delete(l.index).await?;
            }
        }
        Ok(())
    }

    /// Repairs counted so far, by kind.
    pub fn repair_counts(&self) -> BTreeMap<String, u64> {
        let counted = self.repairs.get();
        [
            "bridge_created",
            "member_created",
            "member_recreated",
            "link_fixed",
            "address_added",
            "stray_tap_removed",
        ]
        .iter()
        .map(|k| ((*k).to_string(), counted.get(*k).copied().unwrap_or(0)))
        .collect()
    }
}

struct Elsewhere {
    host: Netlink,
    host_ns: std::fs::File,
    network_ns: std::fs::File,
}

/// Agent taps enslaved to `bridge`.
fn nics_in(links: &[Link], bridge: &str) -> Vec<String> {
    let Some(b) = links.iter().find(|l| l.name == bridge) else {
        return Vec::new();
    };
    links
        .iter()
        .filter(|l| l.controller == Some(b.index) && nic::is_tap_name(&l.name))
        .map(|l| l.name.clone())
        .collect()
}

/// Whether a planned step is about `spec`'s devices.
fn concerns(step: &Step, spec: &NetworkSpec) -> bool {
    let devices: Vec<String> = std::iter::once(spec.bridge())
        .chain(spec.member())
        .chain(match &spec.kind {
            Kind::Bridge { uplink } => uplink.clone(),
            _ => None,
        })
        .collect();
    match step {
        Step::CreateBridge { name, .. } | Step::Fix { name, .. } => devices.contains(name),
        Step::CreateVxlan { network, .. }
        | Step::CreateVlan { network, .. }
        | Step::Recreate { network, .. }
        | Step::AddAddress { network, .. } => *network == spec.name,
        Step::AddPeers { .. } | Step::RemoveStrayTap { .. } => false,
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::CreateBridge { name, mtu } => format!("bridge {name} missing: created (MTU {mtu})"),
        Step::CreateVxlan { name, .. } | Step::CreateVlan { name, .. } => {
            format!("{name} missing: created")
        }
        Step::Recreate { name, .. } => format!("{name} drifted from its spec: made again"),
        Step::Fix { why, .. } => format!("{why}: fixed"),
        Step::AddAddress { bridge, .. } => format!("{bridge} lacked its address: added"),
        Step::AddPeers { name, .. } => format!("{name}: peers added"),
        Step::RemoveStrayTap { name } => format!("tap {name} belongs to no guest: removed"),
    }
}
