//! NIC hot-plug end to end: the real agent adds a NIC in a managed network to a running TCG
//! guest of the test image, whose console reports each interface that comes and goes
//! (`hvagent.nic.NAME=MAC`, `hvagent.nic-gone.NAME=MAC`); the tap is checked in the network's
//! bridge with `ip`, libvirt's live and persistent XML with virsh. The NIC stays across stop
//! and start and goes with DetachInterface (through hvctl); refusals change nothing. An agent
//! killed (SIGKILL) at points of an attach or detach leaves, once started again, the NIC whole
//! or gone: intent, XML and tap agree. The networks carry this file's prefix and the process
//! id, the guests UUIDs of their own, so runs cannot collide.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, import_testguest, ready, runtime, stderr, tool};
use hvagent::net::nic::tap_name;
use hvagent_proto::v1 as pb;
use tonic::Code;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-00000000ac{n:02x}")
}

/// Removes the guest and the network's bridge even when the test fails halfway.
struct Cleanup {
    guests: Vec<String>,
    bridges: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for u in &self.guests {
            for args in [&["destroy", u.as_str()][..], &["undefine", u, "--nvram"]] {
                let _ = Command::new("virsh")
                    .args(["-c", "qemu:///system"])
                    .args(args)
                    .output();
            }
        }
        // The agent's taps outlive it (persistent): the guests' go with them.
        let taps = self
            .guests
            .iter()
            .flat_map(|u| (0..hvagent::net::nic::MAX_NICS).map(move |i| tap_name(u, i)));
        for link in self.bridges.iter().cloned().chain(taps) {
            if exists(&link) {
                let _ = Command::new("ip").args(["link", "del", &link]).output();
            }
        }
    }
}

/// The bridge the interface `name` is in; `None` when it is in none or does not exist.
fn master(name: &str) -> Option<String> {
    std::fs::read_link(format!("/sys/class/net/{name}/master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The domain's XML as libvirt has it: running (`live`) or defined.
fn xml(uuid: &str, live: bool) -> String {
    let mut args = vec!["-c", "qemu:///system", "dumpxml", uuid];
    if !live {
        args.push("--inactive");
    }
    let out = Command::new("virsh").args(&args).output().expect("virsh");
    assert!(out.status.success(), "virsh dumpxml: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the domain has a NIC with `mac`: (in the live XML, in the persistent XML).
fn has_mac(uuid: &str, mac: &str) -> (bool, bool) {
    let needle = format!("<mac address='{mac}'/>");
    (
        xml(uuid, true).contains(&needle),
        xml(uuid, false).contains(&needle),
    )
}

/// The whole console log (up to 1 MiB: every boot of the guest).
async fn console(vms: &mut Vms, uuid: &str) -> String {
    let log = vms
        .get_console_log(pb::GetConsoleLogRequest {
            uuid: uuid.into(),
            max_bytes: 1 << 20,
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&log.data).into_owned()
}

/// Waits (180 s at most) until the guest's console holds `line` `n` times.
async fn console_lines(vms: &mut Vms, uuid: &str, line: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = console(vms, uuid).await;
        if text.matches(line).count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{uuid}: {line:?} not {n} times on the console within 180 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn get(vms: &mut Vms, uuid: &str) -> pb::Vm {
    vms.get(pb::GetVmRequest { uuid: uuid.into() })
        .await
        .unwrap()
        .into_inner()
}

#[test]
fn a_hot_attached_nic_is_in_guest_and_bridge_across_restarts_until_detached() {
    let agent = Agent::configure_tcg("", "").spawn();
    let tag = std::process::id() % 100_000;
    let net = format!("nh{tag}");
    let bridge = format!("br-{net}");
    let u = uuid(1);
    let _cleanup = Cleanup {
        guests: vec![u.clone()],
        bridges: vec![bridge.clone()],
    };
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = Vms::new(channel.clone());
        import_testguest(channel.clone()).await;
        pb::network_service_client::NetworkServiceClient::new(channel)
            .ensure(pb::EnsureNetworkRequest {
                network: Some(pb::Network {
                    name: net.clone(),
                    kind: "bridge".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let created = vms
            .create(pb::CreateVmRequest {
                uuid: u.clone(),
                name: "nic-hotplug".into(),
                flavor: "SCS-1Vi-0.5u".into(),
                image: "testguest".into(),
                networks: vec![net.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let eth0 = created.macs[0].clone();
        ready(&mut vms, &u).await;
        console_lines(&mut vms, &u, &format!("hvagent.nic.eth0={eth0}"), 1).await;

        // Refusals first: a missing network, a MAC the guest has not. Nothing changes.
        let before = (get(&mut vms, &u).await, xml(&u, false));
        let e = vms
            .attach_interface(pb::AttachInterfaceRequest {
                uuid: u.clone(),
                network: format!("nx{tag}"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert_eq!(
            e.message(),
            format!("network: no network or bridge named \"nx{tag}\" on this node")
        );
        assert!(!exists(&tap_name(&u, 1)), "no tap left by the refusal");
        let gone = "02:00:00:00:ac:99";
        let e = vms
            .detach_interface(pb::DetachInterfaceRequest {
                uuid: u.clone(),
                mac: gone.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().contains(gone), "{}", e.message());
        assert_eq!((get(&mut vms, &u).await, xml(&u, false)), before);

        // Attach: the guest sees eth1 with the derived MAC, the tap is in the bridge, the
        // definition has it, Get shows it.
        let started = Instant::now();
        let vm = vms
            .attach_interface(pb::AttachInterfaceRequest {
                uuid: u.clone(),
                network: net.clone(),
                address: "10.78.0.5/24".into(),
                ingress_kbps: 8000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        eprintln!("AttachInterface took {:?}", started.elapsed());
        let mac = hvagent::net::nic::format_mac(&hvagent::net::nic::derived_mac(&u, 1));
        assert_eq!(vm.networks, [net.clone(), net.clone()]);
        assert_eq!(vm.macs, [eth0.clone(), mac.clone()]);
        assert_eq!(vm.addresses[1], "10.78.0.5/24");
        assert_eq!(vm.ingress_kbps[1], 8000);
        let tap = tap_name(&u, 1);
        assert_eq!(master(&tap).as_deref(), Some(bridge.as_str()));
        assert_eq!(has_mac(&u, &mac), (true, true));
        // Its rate limit is on its tap, as Create puts one (a tbf at the rate).
        let limited = |when: &str| {
            let qdisc = tool("tc", &["qdisc", "show", "dev", &tap]);
            assert!(
                qdisc.contains("tbf") && qdisc.contains("rate 8Mbit"),
                "{when}: {qdisc}"
            );
        };
        limited("after the attach");
        let eth1 = format!("hvagent.nic.eth1={mac}");
        console_lines(&mut vms, &u, &eth1, 1).await;
        assert_eq!(get(&mut vms, &u).await.macs, [eth0.clone(), mac.clone()]);

        // Stop and start: still there, in the guest (reported again at boot) and the bridge.
        vms.stop(pb::StopVmRequest {
            uuid: u.clone(),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
        assert!(has_mac(&u, &mac).1, "in the definition");
        vms.start(pb::StartVmRequest { uuid: u.clone() })
            .await
            .unwrap();
        console_lines(&mut vms, &u, &eth1, 2).await;
        assert_eq!(master(&tap).as_deref(), Some(bridge.as_str()));
        assert_eq!(has_mac(&u, &mac), (true, true));
        limited("after a stop and start");

        // Detach through hvctl: gone from the guest, the bridge, both XMLs and the intent.
        let out = agent.hvctl(&["vm", "detach-network", &u, &mac.to_uppercase()]);
        assert!(out.status.success(), "hvctl: {}", stderr(&out));
        console_lines(&mut vms, &u, &format!("hvagent.nic-gone.eth1={mac}"), 1).await;
        assert!(!exists(&tap), "tap {tap} removed");
        assert_eq!(has_mac(&u, &mac), (false, false));
        let vm = get(&mut vms, &u).await;
        assert_eq!(vm.macs, std::slice::from_ref(&eth0));
        assert_eq!(vm.networks, std::slice::from_ref(&net));
        // eth0 untouched.
        assert_eq!(master(&tap_name(&u, 0)).as_deref(), Some(bridge.as_str()));
        assert_eq!(has_mac(&u, &eth0), (true, true));

        // Attached again through hvctl (NET=ADDRESS/PREFIX): slot 1 is free again.
        let out = agent.hvctl(&["vm", "attach-network", &u, &format!("{net}=10.78.0.6/24")]);
        assert!(out.status.success(), "hvctl: {}", stderr(&out));
        let vm = get(&mut vms, &u).await;
        assert_eq!(vm.macs, [eth0, mac.clone()]);
        assert_eq!(vm.addresses[1], "10.78.0.6/24");
        console_lines(&mut vms, &u, &eth1, 3).await;
    });
}

/// The MACs of the domain's `<interface>` elements: (live, persistent).
fn xml_macs(uuid: &str) -> (Vec<String>, Vec<String>) {
    let macs = |x: String| -> Vec<String> {
        x.split("<mac address='")
            .skip(1)
            .filter_map(|rest| rest.split('\'').next())
            .map(str::to_string)
            .collect()
    };
    (macs(xml(uuid, true)), macs(xml(uuid, false)))
}

/// After an agent killed mid-call and started again: every NIC of the intent is in libvirt's
/// XML and every NIC there is in the intent, and the guest has one tap per NIC. Returns the
/// intent's MACs.
async fn whole(vms: &mut Vms, uuid: &str, what: &str) -> Vec<String> {
    let intent = get(vms, uuid).await.macs;
    let (live, persistent) = xml_macs(uuid);
    let mut in_xml: Vec<String> = live.iter().chain(&persistent).cloned().collect();
    in_xml.sort();
    in_xml.dedup();
    let mut sorted = intent.clone();
    sorted.sort();
    assert_eq!(
        sorted, in_xml,
        "{what}: intent against live {live:?} and persistent {persistent:?}"
    );
    let taps = (0..hvagent::net::nic::MAX_NICS)
        .filter(|i| exists(&tap_name(uuid, *i)))
        .count();
    assert_eq!(taps, intent.len(), "{what}: one tap per NIC");
    intent
}

#[test]
fn an_agent_killed_mid_attach_or_detach_leaves_no_half_nic() {
    let mut agent = Agent::configure_tcg("", "").spawn();
    let tag = std::process::id() % 100_000;
    let net = format!("nk{tag}");
    let u = uuid(2);
    let _cleanup = Cleanup {
        guests: vec![u.clone()],
        bridges: vec![format!("br-{net}")],
    };
    let rt = runtime();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = Vms::new(channel.clone());
        import_testguest(channel.clone()).await;
        pb::network_service_client::NetworkServiceClient::new(channel)
            .ensure(pb::EnsureNetworkRequest {
                network: Some(pb::Network {
                    name: net.clone(),
                    kind: "bridge".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        vms.create(pb::CreateVmRequest {
            uuid: u.clone(),
            name: "nic-hotplug-kill".into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        ready(&mut vms, &u).await;
    });
    let mut outcomes = Vec::new();
    for delay in [0u64, 10, 20, 30, 80, 150, 300] {
        for detach in [false, true] {
            let macs = rt.block_on(async {
                let channel = hvctl::client::connect(&agent.socket).await.unwrap();
                get(&mut Vms::new(channel), &u).await.macs
            });
            let args: Vec<String> = match (detach, macs.first()) {
                (true, Some(mac)) => vec!["detach-network".into(), u.clone(), mac.clone()],
                (true, None) => continue,
                (false, _) => vec!["attach-network".into(), u.clone(), net.clone()],
            };
            let mut call = Command::new(common::bin("hvctl"))
                .arg("--socket")
                .arg(&agent.socket)
                .arg("vm")
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start hvctl");
            std::thread::sleep(Duration::from_millis(delay));
            agent.stop_with(nix::sys::signal::Signal::SIGKILL);
            let _ = call.wait();
            // libvirt finishes a call it began (and a guest the release it began).
            std::thread::sleep(Duration::from_secs(2));
            agent = agent.spawn();
            let what = format!("{} killed at {delay} ms", args[0]);
            let after = rt.block_on(async {
                let channel = hvctl::client::connect(&agent.socket).await.unwrap();
                whole(&mut Vms::new(channel), &u, &what).await
            });
            outcomes.push((what, macs.len(), after.len()));
        }
    }
    eprintln!("(call, NICs before, NICs after): {outcomes:?}");
}
