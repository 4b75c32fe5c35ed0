//! The effectful edge: links seen and changed through rtnetlink, and taps made with the tun
//! ioctl (netlink cannot make them), all inside one network namespace. A namespace is
//! entered by a short-lived thread (setns affects only the calling thread): the netlink
//! socket opened there stays bound to the namespace, and the daemon never forks.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVlan, LinkVxlan};

use super::spec::HostAddress;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {path}: {reason}")]
    Namespace { path: PathBuf, reason: String },
    /// The kernel lacks a feature (`errno` EOPNOTSUPP and kin).
    #[error("{0}")]
    Unsupported(String),
    #[error("{action}: {reason}")]
    Netlink { action: String, reason: String },
}

/// How long the kernel has to answer one netlink request. It answers in microseconds; a
/// request without an answer (a lost reply, a netlink connection gone) must not hold a
/// network call, and its mutation permit, forever.
pub const NETLINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `.answered()`: the request's answer, or `RequestFailed` after [`NETLINK_TIMEOUT`].
trait Answered<T>: std::future::Future<Output = Result<T, rtnetlink::Error>> + Sized {
    async fn answered(self) -> Result<T, rtnetlink::Error> {
        match tokio::time::timeout(NETLINK_TIMEOUT, self).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!(
                    timeout_s = NETLINK_TIMEOUT.as_secs(),
                    "no answer to a netlink request in time"
                );
                Err(rtnetlink::Error::RequestFailed)
            }
        }
    }
}

impl<T, F: std::future::Future<Output = Result<T, rtnetlink::Error>>> Answered<T> for F {}

/// The errno inside a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn failed(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let action = action.into();
    move |e| {
        if errno(&e) == Some(libc::EOPNOTSUPP) {
            NetError::Unsupported(format!("{action}: not supported by this kernel"))
        } else if matches!(e, rtnetlink::Error::RequestFailed) {
            NetError::Netlink {
                action,
                reason: format!(
                    "no answer from the kernel within {} s (or the netlink connection closed)",
                    NETLINK_TIMEOUT.as_secs()
                ),
            }
        } else {
            NetError::Netlink {
                action,
                reason: e.to_string(),
            }
        }
    }
}

/// Where the agent's network devices live: its own namespace, or the one at `path`
/// (a file like `/run/netns/NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    pub path: Option<PathBuf>,
}

impl Namespace {
    /// Runs `f` on a thread inside the namespace (on this one when it is the agent's own).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        let Some(path) = &self.path else {
            return Ok(f());
        };
        let enter = |path: &Path| -> Result<(), String> {
            let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))
        };
        std::thread::scope(|s| {
            s.spawn(|| enter(path).map(|()| f()))
                .join()
                .map_err(|_| "the namespace thread panicked".to_string())?
        })
        .map_err(|reason| NetError::Namespace {
            path: path.clone(),
            reason,
        })
    }
}

/// A link as the reconciler needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `vxlan`, `vlan`, `tun`, `veth`, ...; empty for plain devices.
    pub kind: String,
    pub mtu: u32,
    pub controller: Option<u32>,
    pub up: bool,
    pub vxlan: Option<VxlanInfo>,
    pub vlan_id: Option<u16>,
    /// The lower device (VXLAN underlay, VLAN uplink).
    pub lower: Option<u32>,
    pub addresses: Vec<HostAddress>,
    pub counters: Counters,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<IpAddr>,
    pub group: Option<IpAddr>,
    pub port: u16,
}

/// An interface's traffic counters (netlink's 64-bit statistics, sysfs `statistics/`, or
/// libvirt's per-NIC figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

impl Counters {
    /// The counters' names, as sysfs `statistics/` files name them, in field order.
    pub const NAMES: [&'static str; 8] = [
        "rx_bytes",
        "tx_bytes",
        "rx_packets",
        "tx_packets",
        "rx_errors",
        "tx_errors",
        "rx_dropped",
        "tx_dropped",
    ];

    /// Counters from a lookup by name (one of [`Counters::NAMES`]).
    pub fn from_fn(mut value: impl FnMut(&'static str) -> u64) -> Counters {
        let [a, b, c, d, e, f, g, h] = Counters::NAMES.map(&mut value);
        Counters {
            rx_bytes: a,
            tx_bytes: b,
            rx_packets: c,
            tx_packets: d,
            rx_errors: e,
            tx_errors: f,
            rx_dropped: g,
            tx_dropped: h,
        }
    }

    /// (name, value) in [`Counters::NAMES`] order.
    pub fn values(&self) -> [(&'static str, u64); 8] {
        let v = [
            self.rx_bytes,
            self.tx_bytes,
            self.rx_packets,
            self.tx_packets,
            self.rx_errors,
            self.tx_errors,
            self.rx_dropped,
            self.tx_dropped,
        ];
        std::array::from_fn(|i| (Counters::NAMES[i], v[i]))
    }
}

fn to_link(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Link::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(v) => link.mtu = *v,
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::Link(l) => link.lower = Some(*l),
            LinkAttribute::Stats64(s) => {
                link.counters = Counters {
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                    rx_errors: s.rx_errors,
                    tx_errors: s.tx_errors,
                    rx_dropped: s.rx_dropped,
                    tx_dropped: s.tx_dropped,
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = k.to_string(),
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            let mut x = VxlanInfo::default();
                            for i in v {
                                match i {
                                    InfoVxlan::Id(id) => x.vni = *id,
                                    InfoVxlan::Local(a) => x.local = Some(IpAddr::V4(*a)),
                                    InfoVxlan::Local6(a) => x.local = Some(IpAddr::V6(*a)),
                                    InfoVxlan::Group(a) => x.group = Some(IpAddr::V4(*a)),
                                    InfoVxlan::Group6(a) => x.group = Some(IpAddr::V6(*a)),
                                    InfoVxlan::Port(p) => x.port = *p,
                                    InfoVxlan::Link(l) => link.lower = Some(*l),
                                    _ => {}
                                }
                            }
                            link.vxlan = Some(x);
                        }
                        LinkInfo::Data(InfoData::Vlan(v)) => {
                            for i in v {
                                if let rtnetlink::packet_route::link::InfoVlan::Id(id) = i {
                                    link.vlan_id = Some(*id);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// A VXLAN device to create; `underlay` is the index of the device it sends through.
pub struct NewVxlan<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub underlay: u32,
    pub local: IpAddr,
    pub group: Option<IpAddr>,
    pub port: u16,
    pub mtu: u32,
}

/// One netlink connection into a namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    pub namespace: Namespace,
    /// One dump at a time on the socket: the kernel answers a second dump started while one
    /// is running on the same socket with EBUSY (seen as "list addresses: Device or resource
    /// busy" when a List met the start-up reconcile).
    dumps: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens the connection (its socket made inside the namespace) and drives it on the
    /// current tokio runtime.
    pub fn open(namespace: Namespace) -> Result<Netlink, NetError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle) = namespace
            .run(|| {
                let _entered = runtime.enter();
                rtnetlink::new_connection().map(|(c, h, _)| (c, h))
            })?
            .map_err(|e| NetError::Netlink {
                action: "open a netlink socket".into(),
                reason: e.to_string(),
            })?;
        runtime.spawn(connection);
        Ok(Netlink {
            handle,
            namespace,
            dumps: Default::default(),
        })
    }

    /// One link by name, without its addresses; `None` when there is none.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetError> {
        let _one = self.dumps.lock().await;
        let found: Result<Vec<Link>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .map_ok(|m| to_link(&m))
            .try_collect()
            .answered()
            .await;
        match found {
            Ok(mut links) => Ok(links.pop()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(failed(format!("look up {name}"))(e)),
        }
    }

    /// Every link, without addresses.
    pub async fn links_only(&self) -> Result<Vec<Link>, NetError> {
        let _one = self.dumps.lock().await;
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|m| to_link(&m))
            .try_collect()
            .answered()
            .await
            .map_err(failed("list links"))
    }

    /// Every link, with its addresses.
    pub async fn links(&self) -> Result<Vec<Link>, NetError> {
        let mut links = self.links_only().await?;
        let _one = self.dumps.lock().await;
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .answered()
            .await
            .map_err(failed("list addresses"))?;
        for a in addresses {
            let Some(link) = links.iter_mut().find(|l| l.index == a.header.index) else {
                continue;
            };
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    link.addresses.push(HostAddress {
                        ip: *ip,
                        prefix: a.header.prefix_len,
                    });
                }
            }
        }
        Ok(links)
    }

    pub async fn add_bridge(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .add(LinkBridge::new(name).mtu(mtu).up().build())
            .execute()
            .answered()
            .await
            .map_err(failed(format!("create bridge {name}")))
    }

    pub async fn add_vxlan(&self, v: &NewVxlan<'_>) -> Result<(), NetError> {
        let name = v.name;
        let mut b = LinkVxlan::new(name, v.vni)
            .dev(v.underlay)
            .port(v.port)
            .mtu(v.mtu);
        b = match v.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        b = match v.group {
            Some(IpAddr::V4(g)) => b.group(g),
            Some(IpAddr::V6(g)) => b.group6(g),
            None => b,
        };
        self.handle
            .link()
            .add(b.learning(true).build())
            .execute()
            .answered()
            .await
            .map_err(failed(format!("create vxlan {name}")))
    }

    pub async fn add_vlan(
        &self,
        name: &str,
        uplink: u32,
        id: u16,
        mtu: u32,
    ) -> Result<(), NetError> {
        self.handle
            .link()
            .add(vlan_message(name, uplink, id, mtu))
            .execute()
            .answered()
            .await
            .map_err(|e| {
                if matches!(errno(&e), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) {
                    NetError::Unsupported(format!(
                        "vlan: this kernel has no 802.1Q support (module 8021q): {e}"
                    ))
                } else {
                    failed(format!("create vlan {name}"))(e)
                }
            })
    }

    /// Floods unknown and broadcast frames of a VXLAN device to `remote` too (an all-zero
    /// forwarding entry, as `bridge fdb append 00:00:00:00:00:00 dst REMOTE` makes).
    pub async fn add_flood_peer(&self, vxlan: u32, remote: IpAddr) -> Result<(), NetError> {
        use rtnetlink::packet_route::neighbour::NeighbourFlags;
        let mut request = self
            .handle
            .neighbours()
            .add_bridge(vxlan, &[0; 6])
            .destination(remote)
            .flags(NeighbourFlags::Own);
        // Append, not replace: several peers share the all-zero entry.
        request.message_mut().header.flags = NeighbourFlags::Own;
        match request.execute().answered().await {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(failed(format!("add VXLAN peer {remote}"))),
        }
    }

    /// Sets MTU, controller (bridge) and up on an existing link; `None` leaves a field alone.
    pub async fn set(
        &self,
        index: u32,
        mtu: Option<u32>,
        controller: Option<u32>,
    ) -> Result<(), NetError> {
        let mut b = LinkUnspec::new_with_index(index).up();
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if let Some(c) = controller {
            b = b.controller(c);
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .answered()
            .await
            .map_err(failed(format!("change link {index}")))
    }

    /// Moves a link into the network namespace `fd` refers to.
    pub async fn move_to(&self, index: u32, fd: std::os::fd::RawFd) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).setns_by_fd(fd).build())
            .execute()
            .answered()
            .await
            .map_err(failed(format!("move link {index} to another namespace")))
    }

    pub async fn delete(&self, index: u32) -> Result<(), NetError> {
        match self.handle.link().del(index).execute().answered().await {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            other => other.map_err(failed(format!("delete link {index}"))),
        }
    }

    pub async fn add_address(&self, index: u32, a: HostAddress) -> Result<(), NetError> {
        match self
            .handle
            .address()
            .add(index, a.ip, a.prefix)
            .execute()
            .answered()
            .await
        {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(failed(format!("add address {a}"))),
        }
    }

    /// Makes a persistent tap named `name` (owned by root, one queue, no packet info), the
    /// way libvirt expects to find a `managed='no'` target. On a blocking thread: entering
    /// the namespace starts and joins a thread of its own.
    pub async fn add_tap(&self, name: &str) -> Result<(), NetError> {
        let (name, namespace) = (name.to_string(), self.namespace.clone());
        tokio::task::spawn_blocking(move || namespace.run(move || make_tap(&name))?)
            .await
            .map_err(|e| NetError::Netlink {
                action: "create a tap".into(),
                reason: e.to_string(),
            })?
    }
}

/// The RTM_NEWLINK message for an 802.1Q sub-interface `name` of link `uplink`.
fn vlan_message(name: &str, uplink: u32, id: u16, mtu: u32) -> LinkMessage {
    LinkVlan::new(name, uplink, id).mtu(mtu).build()
}

nix::ioctl_write_int!(tun_set_iff, b'T', 202);
nix::ioctl_write_int!(tun_set_persist, b'T', 203);

fn make_tap(name: &str) -> Result<(), NetError> {
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    let fail = |reason: String| NetError::Netlink {
        action: format!("create tap {name}"),
        reason,
    };
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| fail(format!("/dev/net/tun: {e}")))?;
    // struct ifreq: the name (16 bytes, NUL-terminated) then the flags.
    let mut ifreq = [0u8; 40];
    let bytes = name.as_bytes();
    if bytes.len() > 15 {
        return Err(fail("name longer than 15 characters".into()));
    }
    ifreq[..bytes.len()].copy_from_slice(bytes);
    ifreq[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq` covers (40 bytes).
    unsafe { tun_set_iff(tun.as_raw_fd(), ifreq.as_mut_ptr() as u64) }
        .map_err(|e| fail(format!("TUNSETIFF: {e}")))?;
    // SAFETY: TUNSETPERSIST takes an integer flag.
    unsafe { tun_set_persist(tun.as_raw_fd(), 1) }
        .map_err(|e| fail(format!("TUNSETPERSIST: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::InfoVlan;

    /// This kernel has no 802.1Q, so the e2e tests only see the refusal: the message the
    /// agent would send is checked here.
    #[test]
    fn vlan_messages_carry_id_parent_name_and_mtu() {
        let m = vlan_message("vl-prov", 7, 100, 1500);
        let a = &m.attributes;
        assert!(a.contains(&LinkAttribute::IfName("vl-prov".into())));
        assert!(a.contains(&LinkAttribute::Link(7)));
        assert!(a.contains(&LinkAttribute::Mtu(1500)));
        let info = a
            .iter()
            .find_map(|x| match x {
                LinkAttribute::LinkInfo(i) => Some(i),
                _ => None,
            })
            .expect("link info");
        assert!(info.contains(&LinkInfo::Kind(
            rtnetlink::packet_route::link::InfoKind::Vlan
        )));
        assert!(info.contains(&LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(100)]))));
        // And what the agent reads back from such a link.
        let seen = to_link(&m);
        assert_eq!(
            (seen.kind.as_str(), seen.vlan_id, seen.lower, seen.mtu),
            ("vlan", Some(100), Some(7), 1500)
        );
    }
}
