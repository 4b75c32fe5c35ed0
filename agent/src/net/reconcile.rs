//! What to change so that the host matches the desired networks: a pure plan from the specs
//! and the links as observed, applied by `net::Networks`. Each step is one repair, logged and
//! counted by kind.

use super::link::Link;
use super::nic::{TapOwners, is_tap_name};
use super::spec::{Kind, NetworkSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateBridge {
        name: String,
        mtu: u32,
    },
    CreateVxlan {
        network: String,
        name: String,
        underlay: String,
        mtu: u32,
    },
    CreateVlan {
        network: String,
        name: String,
        uplink: String,
        mtu: u32,
    },
    /// A member device whose identity (VNI, VLAN id, lower device) drifted: made again.
    Recreate {
        network: String,
        name: String,
    },
    /// MTU, bridge membership or up state to set on an existing link.
    Fix {
        name: String,
        mtu: Option<u32>,
        controller: Option<String>,
        why: String,
    },
    AddAddress {
        bridge: String,
        network: String,
    },
    AddPeers {
        network: String,
        name: String,
    },
    /// A tap shaped like the agent's, in one of its networks' bridges, that no guest owns.
    RemoveStrayTap {
        name: String,
    },
}

impl Step {
    /// The repair kind, as counted in metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::CreateBridge { .. } => "bridge_created",
            Step::CreateVxlan { .. } | Step::CreateVlan { .. } => "member_created",
            Step::Recreate { .. } => "member_recreated",
            Step::Fix { .. } => "link_fixed",
            Step::AddAddress { .. } => "address_added",
            Step::AddPeers { .. } => "peers_added",
            Step::RemoveStrayTap { .. } => "stray_tap_removed",
        }
    }
}

/// Plans the repairs for `specs` given `links`; `owners` are the guests that own taps, listed
/// after `links` were read (`None`: not known, so no tap counts as stray).
/// Problems no step can fix (a missing underlay or uplink, a device of another kind under a
/// name the agent needs) come back as messages.
pub fn plan(
    specs: &[NetworkSpec],
    links: &[Link],
    owners: Option<&TapOwners>,
) -> (Vec<Step>, Vec<String>) {
    let by_name = |n: &str| links.iter().find(|l| l.name == n);
    let mut steps = Vec::new();
    let mut problems = Vec::new();
    for spec in specs {
        let bridge = spec.bridge();
        let lower_name = match &spec.kind {
            Kind::Bridge { uplink } => uplink.clone(),
            Kind::Vxlan { underlay, .. } => Some(underlay.clone()),
            Kind::Vlan { uplink, .. } => Some(uplink.clone()),
        };
        let lower = lower_name.as_deref().map(|n| (n, by_name(n)));
        if let Some((n, None)) = lower {
            problems.push(format!("{}: interface {n} does not exist", spec.name));
            continue;
        }
        let mtu = spec.effective_mtu(lower.and_then(|(_, l)| l).map(|l| l.mtu));
        match by_name(&bridge) {
            None => steps.push(Step::CreateBridge {
                name: bridge.clone(),
                mtu,
            }),
            Some(l) if l.kind != "bridge" => {
                problems.push(format!(
                    "{}: {bridge} exists but is a {} device, not a bridge",
                    spec.name,
                    if l.kind.is_empty() { "plain" } else { &l.kind }
                ));
                continue;
            }
            Some(l) => {
                if l.mtu != mtu || !l.up {
                    steps.push(Step::Fix {
                        name: bridge.clone(),
                        mtu: (l.mtu != mtu).then_some(mtu),
                        controller: None,
                        why: drift(l, mtu, None),
                    });
                }
                if let Some(a) = spec.address
                    && !l.addresses.contains(&a)
                {
                    steps.push(Step::AddAddress {
                        bridge: bridge.clone(),
                        network: spec.name.clone(),
                    });
                }
            }
        }
        if by_name(&bridge).is_none() && spec.address.is_some() {
            steps.push(Step::AddAddress {
                bridge: bridge.clone(),
                network: spec.name.clone(),
            });
        }
        // The uplink of a provider bridge joins it; the agent does not touch its MTU.
        if let (Kind::Bridge { uplink: Some(u) }, Some((_, Some(l)))) = (&spec.kind, lower) {
            let joined = by_name(&bridge).is_some_and(|b| l.controller == Some(b.index));
            if !joined {
                steps.push(Step::Fix {
                    name: u.clone(),
                    mtu: None,
                    controller: Some(bridge.clone()),
                    why: format!("uplink {u} not in {bridge}"),
                });
            }
        }
        let Some(member) = spec.member() else {
            continue;
        };
        let lower_index = lower.and_then(|(_, l)| l).map(|l| l.index);
        let create = match &spec.kind {
            Kind::Vxlan { underlay, .. } => Step::CreateVxlan {
                network: spec.name.clone(),
                name: member.clone(),
                underlay: underlay.clone(),
                mtu,
            },
            Kind::Vlan { uplink, .. } => Step::CreateVlan {
                network: spec.name.clone(),
                name: member.clone(),
                uplink: uplink.clone(),
                mtu,
            },
            Kind::Bridge { .. } => continue,
        };
        let Some(l) = by_name(&member) else {
            steps.push(create);
            steps.push(join(&member, &bridge, "new member"));
            push_peers(&mut steps, spec, &member);
            continue;
        };
        // Only a device of the member's kind is ever recreated: another kind under that name
        // is not the agent's to delete.
        if l.kind != spec.kind.word() {
            problems.push(format!(
                "{}: {member} exists but is a {} device, not a {}",
                spec.name,
                if l.kind.is_empty() { "plain" } else { &l.kind },
                spec.kind.word()
            ));
            continue;
        }
        let same_identity = match &spec.kind {
            Kind::Vxlan {
                vni,
                local,
                port,
                group,
                ..
            } => l.vxlan.as_ref().is_some_and(|x| {
                x.vni == *vni
                    && x.local == Some(*local)
                    && x.port == *port
                    && x.group == *group
                    && l.lower == lower_index
            }),
            Kind::Vlan { id, .. } => l.vlan_id == Some(*id) && l.lower == lower_index,
            Kind::Bridge { .. } => true,
        };
        if !same_identity {
            steps.push(Step::Recreate {
                network: spec.name.clone(),
                name: member.clone(),
            });
            steps.push(create);
            steps.push(join(&member, &bridge, "recreated member"));
            push_peers(&mut steps, spec, &member);
            continue;
        }
        let in_bridge = by_name(&bridge).is_some_and(|b| l.controller == Some(b.index));
        if l.mtu != mtu || !l.up || !in_bridge {
            steps.push(Step::Fix {
                name: member.clone(),
                mtu: (l.mtu != mtu).then_some(mtu),
                controller: (!in_bridge).then(|| bridge.clone()),
                why: drift(l, mtu, (!in_bridge).then_some(bridge.as_str())),
            });
        }
        push_peers(&mut steps, spec, &member);
    }
    if let Some(owners) = owners {
        steps.extend(stray_taps(specs, links, owners).map(|name| Step::RemoveStrayTap { name }));
    }
    (steps, problems)
}

/// The taps that are certainly the agent's and no guest's: a tap device (not a bridge, veth
/// or anything else) named like the agent's taps, in the bridge of one of `specs`, whose
/// guest is not among `owners`. A tap outside the agent's bridges may be another agent's on
/// its way to its namespace, or the operator's: it is never the reconciler's to remove.
fn stray_taps<'a>(
    specs: &'a [NetworkSpec],
    links: &'a [Link],
    owners: &'a TapOwners,
) -> impl Iterator<Item = String> + 'a {
    let bridges: Vec<u32> = specs
        .iter()
        .filter_map(|s| {
            let bridge = s.bridge();
            links
                .iter()
                .find(|l| l.name == bridge && l.kind == "bridge")
                .map(|l| l.index)
        })
        .collect();
    links
        .iter()
        .filter(move |l| {
            l.kind == "tun"
                && is_tap_name(&l.name)
                && l.controller.is_some_and(|c| bridges.contains(&c))
                && !owners.owns(&l.name)
        })
        .map(|l| l.name.clone())
}

fn join(member: &str, bridge: &str, why: &str) -> Step {
    Step::Fix {
        name: member.to_string(),
        mtu: None,
        controller: Some(bridge.to_string()),
        why: why.to_string(),
    }
}

/// VXLAN peers are (re-)added every time: adding one that is there is a no-op.
fn push_peers(steps: &mut Vec<Step>, spec: &NetworkSpec, member: &str) {
    if let Kind::Vxlan { remotes, .. } = &spec.kind
        && !remotes.is_empty()
    {
        steps.push(Step::AddPeers {
            network: spec.name.clone(),
            name: member.to_string(),
        });
    }
}

fn drift(l: &Link, mtu: u32, bridge: Option<&str>) -> String {
    let mut what = Vec::new();
    if l.mtu != mtu {
        what.push(format!("MTU {} instead of {mtu}", l.mtu));
    }
    if !l.up {
        what.push("down".to_string());
    }
    if let Some(b) = bridge {
        what.push(format!("not in {b}"));
    }
    format!("{}: {}", l.name, what.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::link::VxlanInfo;
    use crate::net::nic::tap_name;

    fn link(index: u32, name: &str, kind: &str, mtu: u32) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.into(),
            mtu,
            up: true,
            ..Link::default()
        }
    }

    fn vxlan_spec() -> NetworkSpec {
        NetworkSpec {
            name: "t".into(),
            kind: Kind::Vxlan {
                vni: 100,
                underlay: "eth0".into(),
                local: "10.0.0.1".parse().unwrap(),
                remotes: vec!["10.0.0.2".parse().unwrap()],
                group: None,
                port: 4789,
            },
            mtu: None,
            address: None,
        }
    }

    /// The links a healthy `vxlan_spec` network has.
    fn healthy() -> Vec<Link> {
        let mut vx = link(3, "vx-t", "vxlan", 1450);
        vx.controller = Some(2);
        vx.lower = Some(1);
        vx.vxlan = Some(VxlanInfo {
            vni: 100,
            local: Some("10.0.0.1".parse().unwrap()),
            group: None,
            port: 4789,
        });
        vec![
            link(1, "eth0", "", 1500),
            link(2, "br-t", "bridge", 1450),
            vx,
        ]
    }

    fn kinds(steps: &[Step]) -> Vec<&'static str> {
        steps.iter().map(Step::kind).collect()
    }

    #[test]
    fn a_healthy_network_needs_only_its_peers() {
        let (steps, problems) = plan(&[vxlan_spec()], &healthy(), Some(&TapOwners::default()));
        assert!(problems.is_empty());
        assert_eq!(kinds(&steps), ["peers_added"]);
    }

    #[test]
    fn a_missing_network_is_made_whole() {
        let (steps, _) = plan(
            &[vxlan_spec()],
            &healthy()[..1],
            Some(&TapOwners::default()),
        );
        assert_eq!(
            steps,
            [
                Step::CreateBridge {
                    name: "br-t".into(),
                    mtu: 1450
                },
                Step::CreateVxlan {
                    network: "t".into(),
                    name: "vx-t".into(),
                    underlay: "eth0".into(),
                    mtu: 1450
                },
                join("vx-t", "br-t", "new member"),
                Step::AddPeers {
                    network: "t".into(),
                    name: "vx-t".into()
                },
            ]
        );
    }

    #[test]
    fn each_drift_gets_its_repair() {
        // Bridge MTU changed and down.
        let mut links = healthy();
        links[1].mtu = 1300;
        links[1].up = false;
        let (steps, _) = plan(&[vxlan_spec()], &links, Some(&TapOwners::default()));
        assert_eq!(
            steps[0],
            Step::Fix {
                name: "br-t".into(),
                mtu: Some(1450),
                controller: None,
                why: "br-t: MTU 1300 instead of 1450, down".into()
            }
        );
        // Member out of the bridge.
        let mut links = healthy();
        links[2].controller = None;
        let (steps, _) = plan(&[vxlan_spec()], &links, Some(&TapOwners::default()));
        assert_eq!(kinds(&steps), ["link_fixed", "peers_added"]);
        // Member with another VNI: made again.
        let mut links = healthy();
        links[2].vxlan.as_mut().unwrap().vni = 7;
        let (steps, _) = plan(&[vxlan_spec()], &links, Some(&TapOwners::default()));
        assert_eq!(
            kinds(&steps),
            [
                "member_recreated",
                "member_created",
                "link_fixed",
                "peers_added"
            ]
        );
        // The underlay's MTU grew: the derived MTU follows.
        let mut links = healthy();
        links[0].mtu = 9000;
        let (steps, _) = plan(&[vxlan_spec()], &links, Some(&TapOwners::default()));
        assert_eq!(kinds(&steps), ["link_fixed", "link_fixed", "peers_added"]);
    }

    /// A guest's tap (UUID 1) and a stray one (UUID 2) in the network's bridge.
    fn with_taps() -> Vec<Link> {
        let mut links = healthy();
        for (index, uuid) in [(9, 1), (10, 2)] {
            let mut tap = link(index, &tap_name(&uuid_n(uuid), 0), "tun", 1450);
            tap.controller = Some(2);
            links.push(tap);
        }
        links
    }

    fn uuid_n(n: u32) -> String {
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    #[test]
    fn stray_taps_go_and_guest_taps_stay() {
        let links = with_taps();
        let owners = TapOwners::new([uuid_n(1).as_str()]);
        let (steps, _) = plan(&[vxlan_spec()], &links, Some(&owners));
        assert_eq!(kinds(&steps), ["peers_added", "stray_tap_removed"]);
        assert_eq!(
            steps.last(),
            Some(&Step::RemoveStrayTap {
                name: tap_name(&uuid_n(2), 0)
            })
        );
        // Guests not known (libvirt down): no tap is stray.
        let (untouched, _) = plan(&[vxlan_spec()], &links, None);
        assert_eq!(kinds(&untouched), ["peers_added"]);
        // Every tap of an owner stays, at any index (a guest being created, or one whose
        // metadata cannot be read, has as many NICs as it has).
        let mut more = with_taps();
        let mut tap = link(11, &tap_name(&uuid_n(1), 15), "tun", 1450);
        tap.controller = Some(2);
        more.push(tap);
        let owners = TapOwners::new([uuid_n(1).as_str(), uuid_n(2).as_str()]);
        let (steps, _) = plan(&[vxlan_spec()], &more, Some(&owners));
        assert_eq!(kinds(&steps), ["peers_added"]);
    }

    /// Only the agent's own taps in its own bridges are ever removed: the operator's bridge,
    /// a libvirt tap, look-alike names, an agent-shaped name on another kind of device, and
    /// agent-shaped taps outside the agent's bridges (another agent's, on their way to its
    /// namespace) all stay.
    #[test]
    fn foreign_devices_are_never_removed() {
        let mut links = healthy();
        let foreign = [
            (20, "br-ops", "bridge", None),
            (21, "vnet7", "tun", Some(2)),
            (22, "hvtap0", "tun", Some(2)),
            (23, "hvabcdefabcdef0", "tun", Some(2)),
            (24, "hv0123456789ab", "veth", Some(2)),
            (25, "hv0123456789ac", "tun", None),
            (26, "hv0123456789ad", "tun", Some(20)),
            (27, "br-x", "bridge", None),
            (28, "hv0123456789ae", "tun", Some(27)),
        ];
        for (index, name, kind, controller) in foreign {
            let mut l = link(index, name, kind, 1500);
            l.controller = controller;
            links.push(l);
        }
        let (steps, problems) = plan(&[vxlan_spec()], &links, Some(&TapOwners::default()));
        assert!(problems.is_empty());
        assert_eq!(kinds(&steps), ["peers_added"]);
        // Without any spec, no bridge is the agent's: nothing is removed at all.
        let (steps, _) = plan(&[], &with_taps(), Some(&TapOwners::default()));
        assert!(steps.is_empty(), "{steps:?}");
        // A device of another kind under the member's name is reported, not recreated.
        let mut links = healthy();
        links[2].kind = "veth".into();
        let (steps, problems) = plan(&[vxlan_spec()], &links, Some(&TapOwners::default()));
        assert!(steps.is_empty(), "{steps:?}");
        assert_eq!(
            problems,
            ["t: vx-t exists but is a veth device, not a vxlan"]
        );
        // A device of another kind under the bridge's name is reported, not replaced.
        let mut links = with_taps();
        links[1].kind = "dummy".into();
        let (steps, problems) = plan(&[vxlan_spec()], &links, Some(&TapOwners::default()));
        assert!(steps.is_empty(), "{steps:?}");
        assert_eq!(
            problems,
            ["t: br-t exists but is a dummy device, not a bridge"]
        );
    }

    #[test]
    fn what_cannot_be_repaired_is_reported() {
        let (steps, problems) = plan(&[vxlan_spec()], &[], Some(&TapOwners::default()));
        assert!(steps.is_empty());
        assert_eq!(problems, ["t: interface eth0 does not exist"]);
        let mut links = healthy();
        links[1].kind = "veth".into();
        let (_, problems) = plan(&[vxlan_spec()], &links, Some(&TapOwners::default()));
        assert_eq!(
            problems,
            ["t: br-t exists but is a veth device, not a bridge"]
        );
    }

    #[test]
    fn provider_uplinks_join_their_bridge() {
        let spec = NetworkSpec {
            name: "p".into(),
            kind: Kind::Bridge {
                uplink: Some("eth1".into()),
            },
            mtu: None,
            address: Some("192.0.2.1/24".parse().unwrap()),
        };
        let links = vec![link(1, "eth1", "", 1500)];
        let (steps, _) = plan(&[spec], &links, Some(&TapOwners::default()));
        assert_eq!(
            kinds(&steps),
            ["bridge_created", "address_added", "link_fixed"]
        );
    }
}
