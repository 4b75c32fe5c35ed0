//! Attach and detach of a 1 GiB qcow2 volume on a running guest, through the agent and by hand
//! with virsh, side by side in one run on the same guest (rounds alternate which goes first):
//!
//! - `VmService/AttachVolume` (store lookup, in-use check over every guest's live and persistent
//!   XML, one `virDomainAttachDeviceFlags(LIVE|CONFIG)`) against `virsh attach-disk --live
//!   --config` of a qcow2 file of the same size;
//! - `VmService/DetachVolume` (one `virDomainDetachDeviceFlags(LIVE|CONFIG)`, then polling the
//!   live XML until the guest has released the disk) against `virsh detach-disk --live
//!   --config`, timed both until virsh returns and until the disk is gone from the live XML
//!   (polled with `virsh domblklist`), which is what the agent's call waits for.
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench volumes`.
//! Needs what `make test` prepares (libvirtd, images/out/testguest.qcow2). Knob: `ROUNDS`
//! (default 10).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{env_or, header, import_testguest, row, start_agent, stats, virsh, wait_ready};
use hvagent_proto::v1 as pb;
use hvctl::client;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;
type Volumes = pb::volume_service_client::VolumeServiceClient<tonic::transport::Channel>;

const UUID: &str = "00000000-0000-4000-8000-0000be701e01";

/// Waits (polling every 10 ms) until the running guest has no disk `target`.
fn until_gone(target: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while virsh(&["domblklist", UUID])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(target))
    {
        assert!(Instant::now() < deadline, "{target} not released in 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The agent's attach and detach of `data`: (attach, detach) times.
async fn by_agent(vms: &mut Vms) -> (Duration, Duration) {
    let req = || pb::AttachVolumeRequest {
        uuid: UUID.into(),
        volume: "data".into(),
    };
    let started = Instant::now();
    let vm = vms.attach_volume(req()).await.expect("attach").into_inner();
    let attach = started.elapsed();
    assert_eq!(vm.volumes, ["data"]);
    let started = Instant::now();
    let r = req();
    vms.detach_volume(pb::DetachVolumeRequest {
        uuid: r.uuid,
        volume: r.volume,
    })
    .await
    .expect("detach");
    (attach, started.elapsed())
}

/// virsh's attach and detach of `file` as vdd: (attach, detach returned, detach released).
fn by_hand(file: &Path) -> (Duration, Duration, Duration) {
    let f = file.to_str().expect("path");
    let started = Instant::now();
    virsh(&[
        "attach-disk",
        UUID,
        f,
        "vdd",
        "--driver",
        "qemu",
        "--subdriver",
        "qcow2",
        "--targetbus",
        "virtio",
        "--live",
        "--config",
    ]);
    let attach = started.elapsed();
    let started = Instant::now();
    virsh(&["detach-disk", UUID, "vdd", "--live", "--config"]);
    let returned = started.elapsed();
    until_gone("vdd");
    (attach, returned, started.elapsed())
}

fn main() {
    let rounds = env_or("ROUNDS", 10);
    // The hand-made disk lies in it too (guest_dir: QEMU must reach it).
    let dir = common::guest_dir();
    let (mut agent, socket) = start_agent(
        dir.path(),
        "[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n",
    );
    let file = dir.path().join("by-hand.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&file)
        .arg("1G")
        .output()
        .expect("qemu-img");
    assert!(out.status.success());
    let runtime = common::runtime();
    runtime.block_on(async {
        let channel = client::connect(&socket).await.expect("connect");
        let mut vms = Vms::new(channel.clone());
        let mut volumes = Volumes::new(channel.clone());
        import_testguest(channel).await;
        vms.create(pb::CreateVmRequest {
            uuid: UUID.into(),
            name: "bench-volumes".into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            ..Default::default()
        })
        .await
        .expect("create");
        volumes
            .create(pb::CreateVolumeRequest {
                name: "data".into(),
                size_gb: 1,
                ..Default::default()
            })
            .await
            .expect("create volume");
        // Hot-plug needs the guest's kernel up (ACPI PCI hotplug).
        wait_ready(&mut vms, UUID).await;
        let (mut agent_attach, mut agent_detach) = (vec![], vec![]);
        let (mut hand_attach, mut hand_returned, mut hand_detach) = (vec![], vec![], vec![]);
        for round in 0..=rounds {
            let ((aa, ad), (ha, hr, hd)) = if round % 2 == 0 {
                let a = by_agent(&mut vms).await;
                (a, by_hand(&file))
            } else {
                let h = by_hand(&file);
                (by_agent(&mut vms).await, h)
            };
            // Round 0 warms up (the guest's first hot-plug loads its PCI paths).
            if round > 0 {
                agent_attach.push(aa);
                agent_detach.push(ad);
                hand_attach.push(ha);
                hand_returned.push(hr);
                hand_detach.push(hd);
            }
        }
        println!("\n1 GiB qcow2 volume on a running guest (SCS-1Vi-0.5u):\n");
        header();
        row("hvagent `AttachVolume`", &stats(agent_attach));
        row("`virsh attach-disk --live --config`", &stats(hand_attach));
        row(
            "hvagent `DetachVolume` (until the guest released it)",
            &stats(agent_detach),
        );
        row(
            "`virsh detach-disk --live --config`, until it returns",
            &stats(hand_returned),
        );
        row(
            "`virsh detach-disk --live --config`, until gone from the live XML",
            &stats(hand_detach),
        );
        vms.delete(pb::DeleteVmRequest { uuid: UUID.into() })
            .await
            .expect("delete");
    });
    let _ = agent.kill();
    let _ = agent.wait();
}
