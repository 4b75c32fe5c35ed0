//! NIC hot attach and detach on a running guest, through the agent and by hand with virsh,
//! side by side in one run on the same guest (rounds alternate which goes first):
//!
//! - `VmService/AttachInterface` to a host bridge (checks, the intent written, one
//!   `virDomainAttachDeviceFlags(LIVE|CONFIG)`, the guest read back) against `virsh
//!   attach-interface --type bridge --source BR --model virtio --live --config` on the same
//!   bridge; and to a managed network (the agent also makes the tap in its bridge);
//! - `VmService/DetachInterface` (one `virDomainDetachDeviceFlags(LIVE|CONFIG)`, polling the live
//!   XML until the guest released the NIC, the tap and the intent entry removed) against `virsh
//!   detach-interface --type bridge --mac M --live --config`, timed both until virsh returns and
//!   until the NIC is gone from the live XML (polled with `virsh domiflist`), which is what the
//!   agent's call waits for.
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench nic_hotplug`.
//! Needs what `make test` prepares (libvirtd, images/out/testguest.qcow2) and root (the bench
//! makes a bridge). Knob: `ROUNDS` (default 10).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{env_or, header, import_testguest, row, start_agent, stats, virsh, wait_ready};
use hvagent_proto::v1 as pb;
use hvctl::client;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

const UUID: &str = "00000000-0000-4000-8000-0000be7a1c01";
/// The MAC virsh's NIC gets (the agent's are derived).
const HAND_MAC: &str = "02:00:00:be:7a:1c";

/// Waits (polling every 10 ms) until the running guest has no NIC with `mac`.
fn until_gone(mac: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while virsh(&["domiflist", UUID]).contains(mac) {
        assert!(Instant::now() < deadline, "{mac} not released in 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The agent's attach to `network` and detach: (attach, detach) times.
async fn by_agent(vms: &mut Vms, network: &str) -> (Duration, Duration) {
    let started = Instant::now();
    let vm = vms
        .attach_interface(pb::AttachInterfaceRequest {
            uuid: UUID.into(),
            network: network.into(),
            ..Default::default()
        })
        .await
        .expect("attach")
        .into_inner();
    let attach = started.elapsed();
    let mac = vm.macs.last().cloned().expect("the new NIC");
    let started = Instant::now();
    vms.detach_interface(pb::DetachInterfaceRequest {
        uuid: UUID.into(),
        mac,
    })
    .await
    .expect("detach");
    (attach, started.elapsed())
}

/// virsh's attach to `bridge` and detach: (attach, detach returned, detach released).
fn by_hand(bridge: &str) -> (Duration, Duration, Duration) {
    let started = Instant::now();
    virsh(&[
        "attach-interface",
        UUID,
        "--type",
        "bridge",
        "--source",
        bridge,
        "--model",
        "virtio",
        "--mac",
        HAND_MAC,
        "--live",
        "--config",
    ]);
    let attach = started.elapsed();
    let started = Instant::now();
    virsh(&[
        "detach-interface",
        UUID,
        "--type",
        "bridge",
        "--mac",
        HAND_MAC,
        "--live",
        "--config",
    ]);
    let returned = started.elapsed();
    until_gone(HAND_MAC);
    (attach, returned, started.elapsed())
}

/// Deletes the bridge when dropped, also when the bench fails halfway.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn main() {
    let rounds = env_or("ROUNDS", 10);
    let tag = std::process::id() % 100_000;
    let bridge = Bridge(format!("bnicbr{tag}"));
    let out = Command::new("ip")
        .args(["link", "add", &bridge.0, "type", "bridge"])
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip link add (root?): {out:?}");
    let _ = Command::new("ip")
        .args(["link", "set", &bridge.0, "up"])
        .output();
    let managed = format!("bnic{tag}");
    let _managed_bridge = Bridge(format!("br-{managed}"));
    let dir = common::guest_dir();
    let (mut agent, socket) = start_agent(
        dir.path(),
        "[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n",
    );
    let runtime = common::runtime();
    runtime.block_on(async {
        let channel = client::connect(&socket).await.expect("connect");
        let mut vms = Vms::new(channel.clone());
        import_testguest(channel.clone()).await;
        pb::network_service_client::NetworkServiceClient::new(channel)
            .ensure(pb::EnsureNetworkRequest {
                network: Some(pb::Network {
                    name: managed.clone(),
                    kind: "bridge".into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("ensure the managed network");
        vms.create(pb::CreateVmRequest {
            uuid: UUID.into(),
            name: "bench-nic-hotplug".into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            ..Default::default()
        })
        .await
        .expect("create");
        // Hot-plug needs the guest's kernel up (ACPI PCI hotplug).
        wait_ready(&mut vms, UUID).await;
        let (mut bridge_attach, mut bridge_detach) = (vec![], vec![]);
        let (mut managed_attach, mut managed_detach) = (vec![], vec![]);
        let (mut hand_attach, mut hand_returned, mut hand_detach) = (vec![], vec![], vec![]);
        for round in 0..=rounds {
            let (b, m, h) = if round % 2 == 0 {
                let b = by_agent(&mut vms, &bridge.0).await;
                let m = by_agent(&mut vms, &managed).await;
                (b, m, by_hand(&bridge.0))
            } else {
                let h = by_hand(&bridge.0);
                let m = by_agent(&mut vms, &managed).await;
                (by_agent(&mut vms, &bridge.0).await, m, h)
            };
            // Round 0 warms up (the guest's first hot-plug loads its PCI paths).
            if round > 0 {
                bridge_attach.push(b.0);
                bridge_detach.push(b.1);
                managed_attach.push(m.0);
                managed_detach.push(m.1);
                hand_attach.push(h.0);
                hand_returned.push(h.1);
                hand_detach.push(h.2);
            }
        }
        println!("\nvirtio NIC on a running guest (SCS-1Vi-0.5u, TCG):\n");
        header();
        row(
            "hvagent `AttachInterface`, host bridge",
            &stats(bridge_attach),
        );
        row(
            "hvagent `AttachInterface`, managed network (tap made too)",
            &stats(managed_attach),
        );
        row(
            "`virsh attach-interface --type bridge --live --config`",
            &stats(hand_attach),
        );
        row(
            "hvagent `DetachInterface`, host bridge (until the guest released it)",
            &stats(bridge_detach),
        );
        row(
            "hvagent `DetachInterface`, managed network (until released, tap removed)",
            &stats(managed_detach),
        );
        row(
            "`virsh detach-interface --live --config`, until it returns",
            &stats(hand_returned),
        );
        row(
            "`virsh detach-interface --live --config`, until gone from the live XML",
            &stats(hand_detach),
        );
        vms.delete(pb::DeleteVmRequest { uuid: UUID.into() })
            .await
            .expect("delete");
    });
    let _ = agent.kill();
    let _ = agent.wait();
}
