//! Network figures, side by side in one run, inside a network namespace of the bench's own:
//!
//! 1. ensuring a network (a bridge; a VXLAN segment: bridge + VXLAN device + peer) through
//!    the agent's code (`net::Networks`, netlink), against the same made with `ip` commands;
//! 2. plugging one guest NIC (a persistent tap with the bridge's MTU in the bridge, up) through
//!    `Networks::plug`, against `ip tuntap add` + `ip link set ... master ... mtu ... up`.
//!
//! Each round is made and removed again. Run as root:
//! `cargo bench -p hvagent-benches --bench network`. Knob: `ROUNDS` (default 200).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{env_or, header, row, stats};
use hvagent::net::link::{Namespace, Netlink};
use hvagent::net::spec::{Kind, NetworkSpec};
use hvagent::net::{GuestTap, Networks, nic};

fn ip(ns: &str, args: &[&str]) {
    let status = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .status()
        .expect("ip");
    assert!(status.success(), "ip {args:?}");
}

fn main() {
    let rounds = env_or("ROUNDS", 200);
    let ns = format!("hvbench-{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip")
            .success()
    );
    ip(
        &ns,
        &["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"],
    );
    ip(&ns, &["addr", "add", "10.99.0.1/24", "dev", "ul0"]);
    ip(&ns, &["link", "set", "ul0", "up"]);
    let store = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let netlink = Netlink::open(Namespace {
            path: Some(format!("/run/netns/{ns}").into()),
        })
        .expect("netlink");
        let networks = Networks::new(netlink, store.path(), Default::default());
        let bridge = NetworkSpec {
            name: "bench".into(),
            kind: Kind::Bridge { uplink: None },
            mtu: None,
            address: None,
        };
        let vxlan = NetworkSpec {
            name: "benchvx".into(),
            kind: Kind::Vxlan {
                vni: 100,
                underlay: "ul0".into(),
                local: "10.99.0.1".parse().expect("ip"),
                remotes: vec!["10.99.0.2".parse().expect("ip")],
                group: None,
                port: 4789,
            },
            mtu: None,
            address: None,
        };
        let (mut ensure_bridge, mut ensure_vxlan, mut ip_bridge, mut ip_vxlan) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut plug, mut ip_plug) = (Vec::new(), Vec::new());
        for round in 0..=rounds {
            let keep = round > 0; // round 0 warms up
            let timed = |v: &mut Vec<Duration>, d: Duration| {
                if keep {
                    v.push(d)
                }
            };
            let t = Instant::now();
            networks.ensure(bridge.clone()).await.expect("ensure bridge");
            timed(&mut ensure_bridge, t.elapsed());
            let t = Instant::now();
            networks.ensure(vxlan.clone()).await.expect("ensure vxlan");
            timed(&mut ensure_vxlan, t.elapsed());

            let tap = nic::tap_name(&format!("bench-{round}"), 0);
            let guest_tap = GuestTap {
                name: tap.clone(),
                network: bridge.clone(),
                ingress_kbps: 0,
                egress_kbps: 0,
            };
            let t = Instant::now();
            networks.plug(&guest_tap).await.expect("plug");
            timed(&mut plug, t.elapsed());
            ip(&ns, &["link", "del", &tap]);
            networks.delete("bench", true).await.expect("delete");
            networks.delete("benchvx", true).await.expect("delete");

            // The same with iproute2, one command per step as shell-driven agents do.
            let t = Instant::now();
            ip(&ns, &["link", "add", "br-peer", "type", "bridge"]);
            ip(&ns, &["link", "set", "br-peer", "mtu", "1500", "up"]);
            timed(&mut ip_bridge, t.elapsed());
            let t = Instant::now();
            ip(&ns, &["link", "add", "br-peervx", "type", "bridge"]);
            ip(&ns, &["link", "set", "br-peervx", "mtu", "1450", "up"]);
            ip(&ns, &["link", "add", "vx-peervx", "type", "vxlan", "id", "100", "dev", "ul0", "local", "10.99.0.1", "dstport", "4789"]);
            ip(&ns, &["link", "set", "vx-peervx", "master", "br-peervx", "mtu", "1450", "up"]);
            Command::new("bridge")
                .args(["-n", &ns, "fdb", "append", "00:00:00:00:00:00", "dev", "vx-peervx", "dst", "10.99.0.2"])
                .status()
                .expect("bridge");
            timed(&mut ip_vxlan, t.elapsed());
            let t = Instant::now();
            ip(&ns, &["tuntap", "add", "dev", "tappeer0", "mode", "tap"]);
            ip(&ns, &["link", "set", "tappeer0", "master", "br-peer", "mtu", "1500", "up"]);
            timed(&mut ip_plug, t.elapsed());
            for l in ["tappeer0", "vx-peervx", "br-peervx", "br-peer"] {
                ip(&ns, &["link", "del", l]);
            }
        }
        let rows = [
            ("hvagent: ensure a bridge network (netlink)", stats(ensure_bridge)),
            ("iproute2: the same bridge (2 `ip` runs)", stats(ip_bridge)),
            ("hvagent: ensure a VXLAN segment (bridge, VXLAN device, peer)", stats(ensure_vxlan)),
            ("iproute2: the same segment (4 `ip` + 1 `bridge` runs)", stats(ip_vxlan)),
            ("hvagent: plug one guest NIC (tap, MTU, bridge, up)", stats(plug)),
            ("iproute2: the same NIC (2 `ip` runs)", stats(ip_plug)),
        ];
        println!("\n{rounds} rounds in network namespace {ns}\n");
        header();
        for (name, s) in &rows {
            row(name, s);
        }
        let ratio = |a: usize, b: usize| {
            rows[b].1.median.as_secs_f64() / rows[a].1.median.as_secs_f64()
        };
        println!(
            "\nratios of medians (iproute2 / hvagent): bridge {:.1}x, VXLAN segment {:.1}x, NIC plug {:.1}x",
            ratio(0, 1),
            ratio(2, 3),
            ratio(4, 5)
        );
    });
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
}
