//! Guests on managed networks: the agent makes a tap per NIC in the network's bridge and hands
//! it to libvirt; the test guest takes its address from the NoCloud network-config and pings
//! the address its user-data names. Guests on one segment reach each other; a guest on
//! another segment does not. The networks live in the host's namespace (where libvirtd opens
//! the taps), under names unique to this test run, and are removed at the end.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, console, import_testguest, runtime};
use hvagent_proto::v1 as pb;
use tonic::Code;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-00000000e7{n:02x}")
}

/// Removes guests and networks even when the test fails halfway.
struct Cleanup {
    guests: Vec<String>,
    bridges: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for u in &self.guests {
            let _ = Command::new("virsh").args(["destroy", u]).output();
            let _ = Command::new("virsh")
                .args(["undefine", u, "--nvram"])
                .output();
        }
        for b in &self.bridges {
            let _ = Command::new("ip").args(["link", "del", b]).output();
        }
    }
}

fn tc(args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new("tc").args(args).output().unwrap().stdout).into_owned()
}

/// Whether this kernel can police ingress traffic (tried on a throwaway tap).
fn police_supported() -> bool {
    let tap = format!("hvpol{}", std::process::id() % 100_000);
    let run = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    run(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]);
    let ok = run(&[
        "tc", "qdisc", "add", "dev", &tap, "handle", "ffff:", "ingress",
    ]) && run(&[
        "tc", "filter", "add", "dev", &tap, "parent", "ffff:", "protocol", "all", "u32", "match",
        "u32", "0", "0", "police", "rate", "1mbit", "burst", "16k", "drop",
    ]);
    run(&["ip", "link", "del", &tap]);
    ok
}

fn link_master(name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", name])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0)?.get("master")?.as_str().map(str::to_string)
}

/// Waits for `hvagent.KEY=` on the guest's console and returns its value.
async fn console_value(vms: &mut Vms, uuid: &str, key: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let wanted = format!("hvagent.{key}=");
    loop {
        let text = console(vms, uuid).await;
        // Anywhere in a line: background reports can follow the console shell's prompt.
        if let Some(v) = text
            .lines()
            .find_map(|l| l.find(wanted.as_str()).map(|at| &l[at + wanted.len()..]))
        {
            return v.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{uuid}: no {wanted} within {within:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What guest `n` reported pinging `target` (`ok` or `fail`), waiting up to `within` seconds.
async fn ping(vms: &Vms, n: u32, target: &str, within: u64) -> String {
    let key = format!("ping.{target}");
    console_value(
        &mut vms.clone(),
        &uuid(n),
        &key,
        Duration::from_secs(within),
    )
    .await
}

#[test]
fn guests_on_one_segment_reach_each_other_and_no_one_else() {
    let agent = Agent::configure(
        "[host]\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n",
    );
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = agent.spawn();
    let tag = std::process::id() % 100_000;
    let (seg_a, seg_b) = (format!("a{tag}"), format!("b{tag}"));
    let _cleanup = Cleanup {
        guests: (1..=4).map(uuid).collect(),
        bridges: vec![format!("br-{seg_a}"), format!("br-{seg_b}")],
    };
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = Vms::new(channel.clone());
        import_testguest(channel.clone()).await;
        let mut networks = pb::network_service_client::NetworkServiceClient::new(channel);
        for seg in [&seg_a, &seg_b] {
            networks
                .ensure(pb::EnsureNetworkRequest {
                    network: Some(pb::Network {
                        name: seg.clone(),
                        kind: "bridge".into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
        }
        // g1 and g2 on segment A ping each other; g3, on B with an address of the same
        // subnet, pings g1 and must not reach it.
        let guests = [
            (1, &seg_a, "10.77.0.1/24", "10.77.0.2 90"),
            (2, &seg_a, "10.77.0.2/24", "10.77.0.1 90"),
            (3, &seg_b, "10.77.0.3/24", "10.77.0.1 15"),
        ];
        let mut macs = Vec::new();
        for (n, seg, address, ping) in guests {
            let vm = vms
                .create(pb::CreateVmRequest {
                    uuid: uuid(n),
                    name: format!("net-{n}"),
                    flavor: "SCS-1Vi-0.5u".into(),
                    image: "testguest".into(),
                    networks: vec![seg.clone()],
                    addresses: vec![address.into()],
                    // g1's NIC is rate-limited: 8 Mbit/s into the guest.
                    ingress_kbps: if n == 1 { vec![8000] } else { vec![] },
                    user_data: format!("hvagent-ping: {ping}\n").into_bytes(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(vm.addresses, [address]);
            macs.push(vm.macs[0].clone());
            // The tap is the agent's, in the segment's bridge.
            let tap = hvagent::net::nic::tap_name(&uuid(n), 0);
            assert_eq!(
                link_master(&tap).as_deref(),
                Some(format!("br-{seg}").as_str())
            );
            if n == 1 {
                assert_eq!(vm.ingress_kbps, [8000]);
                let qdisc = tc(&["qdisc", "show", "dev", &tap]);
                assert!(
                    qdisc.contains("tbf") && qdisc.contains("rate 8Mbit"),
                    "{qdisc}"
                );
            }
        }
        // A limit on what a guest sends needs tc's police action; where the kernel lacks it
        // the create is refused and leaves nothing.
        let police = police_supported();
        let limited = vms
            .create(pb::CreateVmRequest {
                uuid: uuid(4),
                name: "net-4".into(),
                flavor: "SCS-1Vi-0.5u".into(),
                image: "testguest".into(),
                networks: vec![seg_a.clone()],
                egress_kbps: vec![4000],
                ..Default::default()
            })
            .await;
        let tap4 = hvagent::net::nic::tap_name(&uuid(4), 0);
        if police {
            limited.unwrap();
            let filters = tc(&["filter", "show", "dev", &tap4, "parent", "ffff:"]);
            assert!(
                filters.contains("police") && filters.contains("rate 4Mbit"),
                "{filters}"
            );
            vms.delete(pb::DeleteVmRequest { uuid: uuid(4) })
                .await
                .unwrap();
        } else {
            println!(
                "this kernel has no tc police action: checking that egress limits are refused"
            );
            let status = limited.unwrap_err();
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with("egress_kbps: this kernel cannot police"),
                "{status:?}"
            );
            assert!(
                !std::path::Path::new("/sys/class/net").join(&tap4).exists(),
                "tap left"
            );
            let domains = String::from_utf8_lossy(
                &Command::new("virsh")
                    .args(["list", "--all", "--uuid"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .into_owned();
            assert!(!domains.contains(&uuid(4)), "domain left");
        }
        for (i, (n, _, address, _)) in guests.iter().enumerate() {
            let net =
                console_value(&mut vms, &uuid(*n), "net.eth0", Duration::from_secs(180)).await;
            assert_eq!(
                net,
                format!("{} {address}", macs[i]),
                "guest {n} configured its NIC"
            );
        }
        assert_eq!(ping(&vms, 1, "10.77.0.2", 150).await, "ok", "g1 reaches g2");
        assert_eq!(ping(&vms, 2, "10.77.0.1", 150).await, "ok", "g2 reaches g1");
        assert_eq!(
            ping(&vms, 3, "10.77.0.1", 150).await,
            "fail",
            "g3 on B does not reach g1 on A"
        );

        let listed = networks
            .list(pb::ListNetworksRequest {})
            .await
            .unwrap()
            .into_inner();
        let a = listed
            .networks
            .iter()
            .find(|s| s.bridge == format!("br-{seg_a}"))
            .unwrap();
        assert_eq!(a.nics.len(), 2, "{a:?}");
        let busy = networks
            .delete(pb::DeleteNetworkRequest {
                name: seg_a.clone(),
                force: false,
            })
            .await
            .unwrap_err();
        assert_eq!(busy.code(), Code::FailedPrecondition);

        // Deleting the guests removes their taps; then the networks go.
        for n in 1..=3 {
            vms.delete(pb::DeleteVmRequest { uuid: uuid(n) })
                .await
                .unwrap();
            let tap = hvagent::net::nic::tap_name(&uuid(n), 0);
            assert!(
                !std::path::Path::new("/sys/class/net").join(&tap).exists(),
                "{tap} left behind"
            );
        }
        for seg in [&seg_a, &seg_b] {
            let gone = networks
                .delete(pb::DeleteNetworkRequest {
                    name: seg.clone(),
                    force: false,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(gone.deleted);
        }
    });
}

/// A network namespace standing in for a host; removed on drop.
struct Host(String);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two "hosts" on one machine: two agents, each with its networks in its own namespace, the
/// namespaces joined by a veth underlay. Guests on VXLAN VNI 100 reach each other across the
/// hosts; a guest on VNI 200 does not reach them. Guest taps are opened by libvirtd in its
/// namespace and then moved into the agent's.
#[test]
fn vxlan_joins_guests_across_two_hosts() {
    let tag = std::process::id() % 100_000;
    let hosts = [Host(format!("hvh1-{tag}")), Host(format!("hvh2-{tag}"))];
    for h in &hosts {
        ip(&["netns", "add", &h.0]);
    }
    ip(&[
        "link",
        "add",
        "hvul1",
        "netns",
        &hosts[0].0,
        "type",
        "veth",
        "peer",
        "name",
        "hvul2",
        "netns",
        &hosts[1].0,
    ]);
    for (h, (dev, addr)) in hosts
        .iter()
        .zip([("hvul1", "10.98.0.1/24"), ("hvul2", "10.98.0.2/24")])
    {
        ip(&["-n", &h.0, "addr", "add", addr, "dev", dev]);
        ip(&["-n", &h.0, "link", "set", dev, "up"]);
    }
    let agents: Vec<Agent> = hosts
        .iter()
        .map(|h| {
            let a = Agent::configure(&format!(
                "[host]\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n[network]\nnamespace = \"/run/netns/{}\"\n",
                h.0
            ));
            std::fs::set_permissions(a.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            a.spawn()
        })
        .collect();
    let ids: Vec<String> = (0x11..=0x13).map(uuid).collect();
    let _cleanup = Cleanup {
        guests: ids.clone(),
        bridges: Vec::new(),
    };
    runtime().block_on(async {
        let mut clients = Vec::new();
        for a in &agents {
            let channel = hvctl::client::connect(&a.socket).await.unwrap();
            import_testguest(channel.clone()).await;
            clients.push((
                Vms::new(channel.clone()),
                pb::network_service_client::NetworkServiceClient::new(channel),
            ));
        }
        let segment = |name: &str, vni: u32, dev: &str, local: &str, remote: &str| pb::Network {
            name: name.into(),
            kind: "vxlan".into(),
            vni,
            underlay: dev.into(),
            local: local.into(),
            remotes: vec![remote.into()],
            ..Default::default()
        };
        let plan = [
            (0, segment("v100", 100, "hvul1", "10.98.0.1", "10.98.0.2")),
            (1, segment("v100", 100, "hvul2", "10.98.0.2", "10.98.0.1")),
            (1, segment("v200", 200, "hvul2", "10.98.0.2", "10.98.0.1")),
        ];
        for (host, network) in plan {
            clients[host]
                .1
                .ensure(pb::EnsureNetworkRequest {
                    network: Some(network),
                })
                .await
                .unwrap();
        }
        let guests = [
            (0, 0x11, "v100", "10.66.0.1/24", "10.66.0.2 90"),
            (1, 0x12, "v100", "10.66.0.2/24", "10.66.0.1 90"),
            (1, 0x13, "v200", "10.66.0.3/24", "10.66.0.1 15"),
        ];
        for (host, n, net, address, ping) in guests {
            clients[host]
                .0
                .create(pb::CreateVmRequest {
                    uuid: uuid(n),
                    name: format!("x-{n}"),
                    flavor: "SCS-1Vi-0.5u".into(),
                    image: "testguest".into(),
                    networks: vec![net.into()],
                    addresses: vec![address.into()],
                    user_data: format!("hvagent-ping: {ping}\n").into_bytes(),
                    ..Default::default()
                })
                .await
                .unwrap();
            // The tap left the host namespace for the agent's, and sits in the bridge there.
            let tap = hvagent::net::nic::tap_name(&uuid(n), 0);
            assert!(
                !std::path::Path::new("/sys/class/net").join(&tap).exists(),
                "{tap} still in the host namespace"
            );
            let out = Command::new("ip")
                .args(["-n", &hosts[host].0, "-j", "link", "show", &tap])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v[0]["master"], format!("br-{net}"), "{v}");
        }
        assert_eq!(
            ping(&clients[0].0, 0x11, "10.66.0.2", 180).await,
            "ok",
            "VNI 100 on host 1 reaches host 2"
        );
        assert_eq!(
            ping(&clients[1].0, 0x12, "10.66.0.1", 180).await,
            "ok",
            "VNI 100 on host 2 reaches host 1"
        );
        assert_eq!(
            ping(&clients[1].0, 0x13, "10.66.0.1", 180).await,
            "fail",
            "VNI 200 does not reach VNI 100"
        );
        // Stop and start: the tap goes back to libvirtd for the start, then into the bridge.
        let vms = &mut clients[0].0;
        vms.stop(pb::StopVmRequest {
            uuid: uuid(0x11),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
        let started = vms
            .start(pb::StartVmRequest { uuid: uuid(0x11) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(started.state, "running");
        let tap = hvagent::net::nic::tap_name(&uuid(0x11), 0);
        let out = Command::new("ip")
            .args(["-n", &hosts[0].0, "-j", "link", "show", &tap])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["master"], "br-v100", "{v}");
        for (host, n, ..) in guests {
            clients[host]
                .0
                .delete(pb::DeleteVmRequest { uuid: uuid(n) })
                .await
                .unwrap();
            let tap = hvagent::net::nic::tap_name(&uuid(n), 0);
            let left = Command::new("ip")
                .args(["-n", &hosts[host].0, "link", "show", &tap])
                .output()
                .unwrap();
            assert!(!left.status.success(), "{tap} left in {}", hosts[host].0);
        }
    });
}

/// The agent's tap of NIC `index` of guest `n`, as `ip -n NS -j link show` reports it.
fn tap_in(ns: &str, n: u32, index: usize) -> Option<serde_json::Value> {
    let tap = hvagent::net::nic::tap_name(&uuid(n), index);
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", &tap])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0).cloned()
}

/// `tc qdisc show dev DEV` inside namespace `ns`.
fn qdiscs_in(ns: &str, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc", "qdisc", "show", "dev", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// After a host reboot a guest's taps are gone; Start makes them again (in the network's
/// bridge, with its MTU and the NIC's rate limit) before libvirt opens them, whether the
/// agent ran all along or was restarted meanwhile. The guest's second NIC is in a plain
/// host bridge: its rate limit is applied to the tap libvirt makes, at create and at every
/// start.
#[test]
fn start_makes_missing_taps_again() {
    let tag = std::process::id() % 100_000;
    let host = Host(format!("hvre-{tag}"));
    ip(&["netns", "add", &host.0]);
    let host_bridge = format!("hvhb{tag}");
    ip(&["link", "add", &host_bridge, "type", "bridge"]);
    let agent = Agent::configure(&format!(
        "[host]\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n[network]\nnamespace = \"/run/netns/{}\"\n",
        host.0
    ));
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut agent = agent.spawn();
    let n = 0x21;
    let _cleanup = Cleanup {
        guests: vec![uuid(n), uuid(n + 1)],
        bridges: vec![host_bridge.clone()],
    };
    let tap = hvagent::net::nic::tap_name(&uuid(n), 0);
    let host_tap = hvagent::net::nic::tap_name(&uuid(n), 1);
    let host_limit = |when: &str| {
        let qdisc = tc(&["qdisc", "show", "dev", &host_tap]);
        assert!(
            qdisc.contains("tbf") && qdisc.contains("rate 4Mbit"),
            "{when}: {qdisc}"
        );
        assert_eq!(
            link_master(&host_tap).as_deref(),
            Some(host_bridge.as_str())
        );
    };
    let rt = runtime();
    let connect = |socket: std::path::PathBuf| async move {
        Vms::new(hvctl::client::connect(&socket).await.unwrap())
    };
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        import_testguest(channel.clone()).await;
        pb::network_service_client::NetworkServiceClient::new(channel)
            .ensure(pb::EnsureNetworkRequest {
                network: Some(pb::Network {
                    name: "seg".into(),
                    kind: "bridge".into(),
                    mtu: 1400,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let mut vms = connect(agent.socket.clone()).await;
        vms.create(pb::CreateVmRequest {
            uuid: uuid(n),
            name: "reboot-1".into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            networks: vec!["seg".into(), host_bridge.clone()],
            ingress_kbps: vec![8000, 4000],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(tap_in(&host.0, n, 0).unwrap()["master"], "br-seg");
        host_limit("created");
        // A limit on what the guest sends through a host bridge needs the police action too.
        let limited = vms
            .create(pb::CreateVmRequest {
                uuid: uuid(n + 1),
                name: "reboot-2".into(),
                flavor: "SCS-1Vi-0.5u".into(),
                image: "testguest".into(),
                networks: vec![host_bridge.clone()],
                egress_kbps: vec![4000],
                ..Default::default()
            })
            .await;
        let tap2 = hvagent::net::nic::tap_name(&uuid(n + 1), 0);
        if police_supported() {
            limited.unwrap();
            let filters = tc(&["filter", "show", "dev", &tap2, "parent", "ffff:"]);
            assert!(filters.contains("rate 4Mbit"), "{filters}");
            vms.delete(pb::DeleteVmRequest { uuid: uuid(n + 1) })
                .await
                .unwrap();
        } else {
            let status = limited.unwrap_err();
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with("egress_kbps: this kernel cannot police"),
                "{status:?}"
            );
            let domains = common::tool("virsh", &["list", "--all", "--uuid"]);
            assert!(!domains.contains(&uuid(n + 1)), "domain left");
        }
        assert!(
            !std::path::Path::new("/sys/class/net").join(&tap2).exists(),
            "tap left"
        );
    });
    // Stop, lose the tap (as a reboot does), start: once with the agent running, once with
    // the tap gone while the agent was down.
    for restart in [false, true] {
        rt.block_on(async {
            let mut vms = connect(agent.socket.clone()).await;
            vms.stop(pb::StopVmRequest {
                uuid: uuid(n),
                force: true,
                timeout_seconds: 0,
            })
            .await
            .unwrap();
        });
        if restart {
            agent.stop_with(nix::sys::signal::Signal::SIGTERM);
        }
        ip(&["-n", &host.0, "link", "del", &tap]);
        assert!(tap_in(&host.0, n, 0).is_none());
        if restart {
            agent = agent.spawn();
        }
        rt.block_on(async {
            let mut vms = connect(agent.socket.clone()).await;
            let started = vms
                .start(pb::StartVmRequest { uuid: uuid(n) })
                .await
                .unwrap_or_else(|e| panic!("start (restarted agent: {restart}): {e:?}"))
                .into_inner();
            assert_eq!(started.state, "running");
            let link = tap_in(&host.0, n, 0).expect("the tap is back");
            assert_eq!(link["master"], "br-seg", "{link}");
            // The network's MTU, though the bridge fell back to 1500 when it lost the tap.
            assert_eq!(link["mtu"], 1400, "{link}");
            let qdisc = qdiscs_in(&host.0, &tap);
            assert!(
                qdisc.contains("tbf") && qdisc.contains("rate 8Mbit"),
                "{qdisc}"
            );
            host_limit("started");
            // libvirt opened that tap for the guest's NIC, with the guest's MAC.
            let nics = common::tool("virsh", &["domiflist", &uuid(n)]);
            assert!(
                nics.contains(&tap) && nics.contains(&started.macs[0]),
                "{nics}"
            );
        });
    }
    rt.block_on(async {
        let mut vms = connect(agent.socket.clone()).await;
        vms.delete(pb::DeleteVmRequest { uuid: uuid(n) })
            .await
            .unwrap();
    });
}
