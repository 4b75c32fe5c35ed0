//! Network figures, side by side in one run, inside a network namespace of the bench's own:
//!
//! 1. ensuring a network (a bridge; a VXLAN segment: bridge + VXLAN device + peer) through
//!    the agent's code (`net::Networks`, netlink), against the same made with `ip` commands;
//! 2. plugging one guest NIC (a persistent tap with the bridge's MTU in the bridge, up) through
//!    `Networks::plug`, against `ip tuntap add` + `ip link set ... master ... mtu ... up`.
//!
//! 3. throughput with iperf3 (TCP, `IPERF_SECONDS`, default 5) between two endpoint
//!    namespaces standing in for guests (veth pairs; TCG guests would measure the emulator):
//!    through a bridge the agent made, through a VXLAN segment the agent made between two
//!    "host" namespaces, and over a bare veth pair as the baseline.
//!
//! Each round is made and removed again. Run as root:
//! `cargo bench -p hvagent-benches --bench network`. Knobs: `ROUNDS` (default 100),
//! `IPERF_SECONDS`. Without iperf3 the throughput part is skipped with a message.

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
    let rounds = env_or("ROUNDS", 100);
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
    // The bench itself moves into the namespace (before any other thread exists, so that
    // every later thread is there too): the agent's networks then live where its taps do, as
    // on a node, and nothing touches the host's interfaces.
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let store = tempfile::tempdir().expect("tempdir");
    let runtime = common::runtime();
    runtime.block_on(async {
        let netlink = Netlink::open(Namespace::default()).expect("netlink");
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
            networks.plug(std::slice::from_ref(&guest_tap)).await.expect("plug");
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
        throughput(&ns, &networks, store.path()).await;
    });
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace standing in for a guest: `eth0` with `address`, its peer `outside` left in
/// namespace `host` (or the peer's own namespace for the baseline).
fn endpoint(name: &str, address: &str, outside: &str, host: &str) {
    sh(&["ip", "netns", "add", name]);
    sh(&[
        "ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", outside, "netns",
        host,
    ]);
    sh(&["ip", "-n", name, "addr", "add", address, "dev", "eth0"]);
    sh(&["ip", "-n", name, "link", "set", "eth0", "up"]);
    sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
}

/// iperf3 from `client` to `server_ip` served in `server`; Gbit/s received.
fn iperf(client: &str, server: &str, server_ip: &str, seconds: usize) -> f64 {
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", server, "iperf3", "-s", "-1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(500));
    let json = sh(&[
        "ip",
        "netns",
        "exec",
        client,
        "iperf3",
        "-c",
        server_ip,
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    let _ = daemon.wait();
    let v: serde_json::Value = serde_json::from_str(&json).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

async fn throughput(ns: &str, networks: &Networks, store: &std::path::Path) {
    if Command::new("iperf3").arg("--version").output().is_err() {
        println!("\nthroughput skipped: iperf3 is not installed (apt-get install iperf3)");
        return;
    }
    let seconds = env_or("IPERF_SECONDS", 5);
    let tag = std::process::id() % 100_000;
    let names: Vec<String> = ["g1", "g2", "g3", "g4", "g5", "h2"]
        .iter()
        .map(|g| format!("hvtp{g}-{tag}"))
        .collect();
    let (g1, g2, g3, g4, g5, h2) = (
        &names[0], &names[1], &names[2], &names[3], &names[4], &names[5],
    );
    let lan = NetworkSpec {
        name: "tput".into(),
        kind: Kind::Bridge { uplink: None },
        mtu: None,
        address: None,
    };
    networks.ensure(lan.clone()).await.expect("ensure bridge");
    endpoint(g1, "10.55.0.1/24", "hvtpa", ns);
    endpoint(g2, "10.55.0.2/24", "hvtpb", ns);
    for port in ["hvtpa", "hvtpb"] {
        sh(&[
            "ip", "-n", ns, "link", "set", port, "master", "br-tput", "up",
        ]);
    }
    let bridged = iperf(g1, g2, "10.55.0.2", seconds);

    // Two hosts: this namespace and h2, joined by the bench's underlay veth (ul1 moves to h2),
    // each with a VXLAN segment VNI 100 made by an agent, a guest endpoint on each.
    sh(&["ip", "netns", "add", h2]);
    sh(&["ip", "-n", ns, "link", "set", "ul1", "netns", h2]);
    sh(&["ip", "-n", h2, "addr", "add", "10.99.0.2/24", "dev", "ul1"]);
    sh(&["ip", "-n", h2, "link", "set", "ul1", "up"]);
    let store2 = store.join("h2");
    let networks2 = Networks::new(
        Netlink::open(Namespace {
            path: Some(format!("/run/netns/{h2}").into()),
        })
        .expect("netlink"),
        &store2,
        Default::default(),
    );
    let segment = |local: &str, remote: &str, underlay: &str| NetworkSpec {
        name: "tvx".into(),
        kind: Kind::Vxlan {
            vni: 100,
            underlay: underlay.into(),
            local: local.parse().expect("ip"),
            remotes: vec![remote.parse().expect("ip")],
            group: None,
            port: 4789,
        },
        mtu: None,
        address: None,
    };
    networks
        .ensure(segment("10.99.0.1", "10.99.0.2", "ul0"))
        .await
        .expect("vxlan 1");
    networks2
        .ensure(segment("10.99.0.2", "10.99.0.1", "ul1"))
        .await
        .expect("vxlan 2");
    endpoint(g3, "10.56.0.1/24", "hvtpc", ns);
    endpoint(g4, "10.56.0.2/24", "hvtpd", h2);
    sh(&[
        "ip", "-n", ns, "link", "set", "hvtpc", "master", "br-tvx", "mtu", "1450", "up",
    ]);
    sh(&[
        "ip", "-n", h2, "link", "set", "hvtpd", "master", "br-tvx", "mtu", "1450", "up",
    ]);
    for g in [g3, g4] {
        sh(&["ip", "-n", g, "link", "set", "eth0", "mtu", "1450"]);
    }
    let vxlan = iperf(g3, g4, "10.56.0.2", seconds);

    // Baseline: a bare veth pair between two endpoint namespaces.
    let g5b = format!("{g5}b");
    sh(&["ip", "netns", "add", g5]);
    sh(&["ip", "netns", "add", &g5b]);
    sh(&[
        "ip", "-n", g5, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
        &g5b,
    ]);
    for (n, address) in [
        (g5.as_str(), "10.57.0.1/24"),
        (g5b.as_str(), "10.57.0.2/24"),
    ] {
        sh(&["ip", "-n", n, "addr", "add", address, "dev", "eth0"]);
        sh(&["ip", "-n", n, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    let bare = iperf(g5, &g5b, "10.57.0.2", seconds);

    println!("\nTCP throughput, iperf3 {seconds} s each, endpoints in namespaces (one run)\n");
    println!("| path | Gbit/s | vs bare veth |");
    println!("|---|---|---|");
    println!("| bare veth pair (baseline) | {bare:.2} | 1.00 |");
    println!(
        "| through the agent's bridge (veth → br → veth) | {bridged:.2} | {:.2} |",
        bridged / bare
    );
    println!(
        "| through the agent's VXLAN segment, two namespaces (MTU 1450) | {vxlan:.2} | {:.2} |",
        vxlan / bare
    );
    for n in names.iter().chain(std::iter::once(&g5b)) {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
}
