//! What a network is (the caller's declarative spec), the rules it must follow, the host
//! device names it maps to, and how two specs differ. Pure: no netlink here.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Network names fit in device names: `br-`, `vx-` or `vl-` + name ≤ 15 characters.
pub const MAX_NAME: usize = 12;
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds to each frame over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet
/// 14); over IPv6 the outer header is 40, so 70.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
pub const VXLAN_OVERHEAD_V6: u32 = 70;
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;
pub const MAX_VNI: u32 = (1 << 24) - 1;
pub const MAX_REMOTES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kind {
    /// A provider network: a bridge, optionally with a host uplink enslaved.
    Bridge { uplink: Option<String> },
    /// A tenant segment: a bridge with a VXLAN device enslaved.
    Vxlan {
        vni: u32,
        /// The underlay device the VXLAN packets leave through.
        underlay: String,
        local: IpAddr,
        /// Unicast peers (head-end replication through the forwarding database).
        remotes: Vec<IpAddr>,
        /// A multicast group for flooding, instead of or besides remotes.
        group: Option<IpAddr>,
        port: u16,
    },
    /// A bridge with an 802.1Q sub-interface of the uplink enslaved.
    Vlan { id: u16, uplink: String },
}

impl Kind {
    pub fn word(&self) -> &'static str {
        match self {
            Kind::Bridge { .. } => "bridge",
            Kind::Vxlan { .. } => "vxlan",
            Kind::Vlan { .. } => "vlan",
        }
    }
}

/// An address the host takes on the network's bridge, with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAddress {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for HostAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

impl std::str::FromStr for HostAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} must be ADDRESS/PREFIX"))?;
        let ip: IpAddr = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        // Digits only: Rust's integer parser takes a leading '+' ("+24").
        let prefix: u8 = Some(prefix)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix {prefix:?} must be 0-{max}"))?;
        Ok(HostAddress { ip, prefix })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// None: the bridge's default (1500), or for VXLAN the underlay's MTU minus the overhead.
    pub mtu: Option<u32>,
    pub address: Option<HostAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct SpecError {
    pub field: &'static str,
    pub rule: String,
}

fn bad(field: &'static str, rule: impl Into<String>) -> SpecError {
    SpecError {
        field,
        rule: rule.into(),
    }
}

/// Network names: 1-12 of `a-z 0-9 -`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            "name",
            format!(
                "must be 1-{MAX_NAME} characters of a-z 0-9 -, starting with a letter or digit"
            ),
        ))
    }
}

/// A host interface name as Linux accepts it: 1-15 bytes, no `/`, `:` or whitespace, not
/// `.` or `..`.
pub fn check_interface(field: &'static str, name: &str) -> Result<(), SpecError> {
    let ok = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("{name:?} is not an interface name (1-15 characters, no / : or spaces)"),
        ))
    }
}

impl NetworkSpec {
    /// Checks every field; the first broken rule is named.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name(&self.name)?;
        if let Some(mtu) = self.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return Err(bad(
                "mtu",
                format!("must be {MIN_MTU}-{MAX_MTU}, got {mtu}"),
            ));
        }
        match &self.kind {
            Kind::Bridge { uplink } => {
                if let Some(u) = uplink {
                    check_interface("uplink", u)?;
                }
            }
            Kind::Vlan { id, uplink } => {
                if !(1..=4094).contains(id) {
                    return Err(bad("vlan_id", format!("must be 1-4094, got {id}")));
                }
                check_interface("uplink", uplink)?;
            }
            Kind::Vxlan {
                vni,
                underlay,
                local,
                remotes,
                group,
                port,
            } => {
                if !(1..=MAX_VNI).contains(vni) {
                    return Err(bad("vni", format!("must be 1-{MAX_VNI}, got {vni}")));
                }
                check_interface("underlay", underlay)?;
                if *port == 0 {
                    return Err(bad("port", "must be 1-65535"));
                }
                if local.is_unspecified() || local.is_multicast() {
                    return Err(bad("local", format!("{local} must be a unicast address")));
                }
                if remotes.is_empty() && group.is_none() {
                    return Err(bad(
                        "remotes",
                        "give remote peers, a multicast group, or both",
                    ));
                }
                if remotes.len() > MAX_REMOTES {
                    return Err(bad("remotes", format!("at most {MAX_REMOTES}")));
                }
                for r in remotes {
                    if r.is_unspecified() || r.is_multicast() || r == local {
                        return Err(bad(
                            "remotes",
                            format!("{r} must be a unicast address other than local"),
                        ));
                    }
                    if r.is_ipv4() != local.is_ipv4() {
                        return Err(bad(
                            "remotes",
                            format!("{r} is not of local's family ({local})"),
                        ));
                    }
                }
                if let Some(g) = group {
                    if !g.is_multicast() {
                        return Err(bad("group", format!("{g} is not a multicast address")));
                    }
                    if g.is_ipv4() != local.is_ipv4() {
                        return Err(bad(
                            "group",
                            format!("{g} is not of local's family ({local})"),
                        ));
                    }
                }
                if let Some(mtu) = self.mtu {
                    let most = MAX_MTU - overhead(local);
                    if mtu > most {
                        return Err(bad(
                            "mtu",
                            format!("a VXLAN segment carries at most {most} bytes, got {mtu}"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The bridge guests attach to.
    pub fn bridge(&self) -> String {
        format!("br-{}", self.name)
    }

    /// The device enslaved to the bridge that the agent creates (VXLAN or VLAN), if any.
    pub fn member(&self) -> Option<String> {
        match self.kind {
            Kind::Bridge { .. } => None,
            Kind::Vxlan { .. } => Some(format!("vx-{}", self.name)),
            Kind::Vlan { .. } => Some(format!("vl-{}", self.name)),
        }
    }

    /// The MTU the network has: given, or derived from the underlay's for VXLAN.
    pub fn effective_mtu(&self, underlay_mtu: Option<u32>) -> u32 {
        match (&self.kind, self.mtu) {
            (_, Some(mtu)) => mtu,
            (Kind::Vxlan { local, .. }, None) => underlay_mtu
                .unwrap_or(1500)
                .saturating_sub(overhead(local))
                .max(MIN_MTU),
            (_, None) => 1500,
        }
    }

    /// What differs between this (existing) spec and `wanted`, one phrase per field.
    pub fn differences(&self, wanted: &NetworkSpec) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name} is {a}, not {b}"));
            }
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
        field("kind", self.kind.word().into(), wanted.kind.word().into());
        field(
            "mtu",
            opt(self.mtu.map(|m| m.to_string())),
            opt(wanted.mtu.map(|m| m.to_string())),
        );
        field(
            "address",
            opt(self.address.map(|a| a.to_string())),
            opt(wanted.address.map(|a| a.to_string())),
        );
        match (&self.kind, &wanted.kind) {
            (Kind::Bridge { uplink: a }, Kind::Bridge { uplink: b }) => {
                field("uplink", opt(a.clone()), opt(b.clone()));
            }
            (Kind::Vlan { id: a, uplink: ua }, Kind::Vlan { id: b, uplink: ub }) => {
                field("vlan_id", a.to_string(), b.to_string());
                field("uplink", ua.clone(), ub.clone());
            }
            (
                Kind::Vxlan {
                    vni: a,
                    underlay: ua,
                    local: la,
                    remotes: ra,
                    group: ga,
                    port: pa,
                },
                Kind::Vxlan {
                    vni: b,
                    underlay: ub,
                    local: lb,
                    remotes: rb,
                    group: gb,
                    port: pb,
                },
            ) => {
                let list = |r: &[IpAddr]| {
                    let mut v: Vec<String> = r.iter().map(IpAddr::to_string).collect();
                    v.sort();
                    format!("[{}]", v.join(", "))
                };
                field("vni", a.to_string(), b.to_string());
                field("underlay", ua.clone(), ub.clone());
                field("local", la.to_string(), lb.to_string());
                field("remotes", list(ra), list(rb));
                field(
                    "group",
                    opt(ga.map(|g| g.to_string())),
                    opt(gb.map(|g| g.to_string())),
                );
                field("port", pa.to_string(), pb.to_string());
            }
            _ => {}
        }
        out
    }
}

fn overhead(local: &IpAddr) -> u32 {
    if local.is_ipv4() {
        VXLAN_OVERHEAD_V4
    } else {
        VXLAN_OVERHEAD_V6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan(vni: u32) -> NetworkSpec {
        NetworkSpec {
            name: "tenant-a".into(),
            kind: Kind::Vxlan {
                vni,
                underlay: "eth0".into(),
                local: "10.0.0.1".parse().unwrap(),
                remotes: vec!["10.0.0.2".parse().unwrap()],
                group: None,
                port: DEFAULT_VXLAN_PORT,
            },
            mtu: None,
            address: None,
        }
    }

    fn bridge(name: &str) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            kind: Kind::Bridge { uplink: None },
            mtu: None,
            address: None,
        }
    }

    fn error(spec: &NetworkSpec) -> String {
        spec.validate().unwrap_err().to_string()
    }

    #[test]
    fn names_fit_device_names() {
        for good in ["a", "prov-1", "abcdefghijkl"] {
            let spec = bridge(good);
            assert!(spec.validate().is_ok(), "{good}");
            assert!(spec.bridge().len() <= 15);
        }
        for bad_name in ["", "-a", "A", "a_b", "a b", "abcdefghijklm", "../x"] {
            assert!(
                error(&bridge(bad_name)).starts_with("name: must be 1-12 characters"),
                "{bad_name:?}"
            );
        }
        assert_eq!(vxlan(1).member().as_deref(), Some("vx-tenant-a"));
        assert_eq!(bridge("p").member(), None);
    }

    #[test]
    fn every_range_is_enforced() {
        assert_eq!(error(&vxlan(0)), "vni: must be 1-16777215, got 0");
        assert_eq!(
            error(&vxlan(1 << 24)),
            "vni: must be 1-16777215, got 16777216"
        );
        assert!(vxlan(MAX_VNI).validate().is_ok());
        let mut s = bridge("b");
        s.mtu = Some(67);
        assert_eq!(error(&s), "mtu: must be 68-65535, got 67");
        let mut s = vxlan(5);
        s.mtu = Some(65500);
        assert_eq!(
            error(&s),
            "mtu: a VXLAN segment carries at most 65485 bytes, got 65500"
        );
        for (id, ok) in [(0u16, false), (1, true), (4094, true), (4095, false)] {
            let s = NetworkSpec {
                kind: Kind::Vlan {
                    id,
                    uplink: "eth0".into(),
                },
                ..bridge("v")
            };
            assert_eq!(s.validate().is_ok(), ok, "vlan {id}");
        }
        let s = NetworkSpec {
            kind: Kind::Bridge {
                uplink: Some("eth0/../x".into()),
            },
            ..bridge("b")
        };
        assert!(error(&s).starts_with("uplink: \"eth0/../x\" is not an interface name"));
    }

    #[test]
    fn vxlan_addresses_make_sense() {
        let with = |remotes: &[&str], group: Option<&str>| {
            let mut s = vxlan(7);
            if let Kind::Vxlan {
                remotes: r,
                group: g,
                ..
            } = &mut s.kind
            {
                *r = remotes.iter().map(|a| a.parse().unwrap()).collect();
                *g = group.map(|a| a.parse().unwrap());
            }
            s.validate().map_err(|e| e.to_string())
        };
        assert_eq!(
            with(&[], None).unwrap_err(),
            "remotes: give remote peers, a multicast group, or both"
        );
        assert!(with(&[], Some("239.1.1.1")).is_ok());
        assert_eq!(
            with(&[], Some("10.9.9.9")).unwrap_err(),
            "group: 10.9.9.9 is not a multicast address"
        );
        assert_eq!(
            with(&["fd00::2"], None).unwrap_err(),
            "remotes: fd00::2 is not of local's family (10.0.0.1)"
        );
        assert_eq!(
            with(&["10.0.0.1"], None).unwrap_err(),
            "remotes: 10.0.0.1 must be a unicast address other than local"
        );
    }

    #[test]
    fn mtu_is_derived_from_the_underlay_for_vxlan() {
        assert_eq!(vxlan(1).effective_mtu(Some(1500)), 1450);
        assert_eq!(vxlan(1).effective_mtu(Some(9000)), 8950);
        let mut v6 = vxlan(1);
        if let Kind::Vxlan { local, remotes, .. } = &mut v6.kind {
            *local = "fd00::1".parse().unwrap();
            *remotes = vec!["fd00::2".parse().unwrap()];
        }
        assert_eq!(v6.effective_mtu(Some(1500)), 1430);
        let mut given = vxlan(1);
        given.mtu = Some(1400);
        assert_eq!(given.effective_mtu(Some(9000)), 1400);
        assert_eq!(bridge("b").effective_mtu(None), 1500);
    }

    #[test]
    fn differences_name_each_field() {
        assert!(vxlan(1).differences(&vxlan(1)).is_empty());
        let mut other = vxlan(2);
        other.mtu = Some(1400);
        assert_eq!(
            vxlan(1).differences(&other),
            ["mtu is unset, not 1400", "vni is 1, not 2"]
        );
        assert_eq!(
            bridge("x").differences(&NetworkSpec {
                name: "x".into(),
                ..vxlan(3)
            }),
            ["kind is bridge, not vxlan"]
        );
    }

    #[test]
    fn host_addresses_parse() {
        let a: HostAddress = "10.1.0.1/24".parse().unwrap();
        assert_eq!(a.to_string(), "10.1.0.1/24");
        assert!("10.1.0.1".parse::<HostAddress>().is_err());
        assert!("10.1.0.1/33".parse::<HostAddress>().is_err());
        for signed in ["10.1.0.1/+24", "10.1.0.1/", "10.1.0.1/ 24", "10.1.0.1/-0"] {
            assert_eq!(
                signed.parse::<HostAddress>().unwrap_err(),
                format!("prefix {:?} must be 0-32", &signed[9..]),
                "{signed}"
            );
        }
        assert!("fd00::1/64".parse::<HostAddress>().is_ok());
    }

    #[test]
    fn specs_round_trip_through_json() {
        let spec = vxlan(100);
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"kind\":\"vxlan\""), "{json}");
        assert_eq!(serde_json::from_str::<NetworkSpec>(&json).unwrap(), spec);
    }
}
