//! A resize round trip against the same by hand with virsh, side by side in one run, on two
//! running TCG guests of the test image:
//!
//! 1. `VmService/Resize` + `ConfirmResize` (claim, marker, ACPI stop, copy and `qemu-img
//!    resize` of the root disk, define, start; then the old claim released) of an agent guest.
//! 2. By hand, on a plain domain of the same size, disk and image (no pins, NUMA cells or
//!    topology, which `virsh setvcpus`/`setmem` cannot change): `virsh shutdown` (waited for;
//!    `virsh destroy` after 30 s), `virsh setvcpus --config --maximum` and `setvcpus --config`,
//!    `virsh setmaxmem --config` and `setmem --config`, `qemu-img resize`, `virsh start`.
//!
//! Each round alternates 1 vCPU/0.5 GiB and 2 vCPUs/1 GiB and grows the root disk by 1 GiB
//! (a root disk never shrinks); both guests boot to the test image's ready line between rounds
//! (unmeasured: the next ACPI shutdown needs the guest up), and rounds alternate which side
//! goes first. Timed: the calls, up to the start (not the guest's boot).
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench resize`.
//! Needs what `make test` prepares (libvirtd, images/out/testguest.qcow2). Knob: `ROUNDS`
//! (default 4).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{env_or, header, row, run, start_agent, stats, testguest, virsh};
use hvagent::storage::GuestFiles;
use hvagent_proto::v1 as pb;
use hvctl::client;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;
type Images = pb::image_service_client::ImageServiceClient<tonic::transport::Channel>;

const UUID: &str = "00000000-0000-4000-8000-0000be5e0001";
const BY_HAND: &str = "bench-resize-by-hand";
const GIB: u64 = 1 << 30;
const FIRST_DISK_GB: u64 = 5;

/// Round `round`'s flavor: vCPUs, MiB and root disk GB.
fn size(round: usize) -> (u32, u64, u64) {
    let (vcpus, mib) = if round.is_multiple_of(2) {
        (2, 1024)
    } else {
        (1, 512)
    };
    (vcpus, mib, FIRST_DISK_GB + 1 + round as u64)
}

fn flavor((vcpus, mib, gb): (u32, u64, u64)) -> String {
    let ram = if mib == 512 {
        "0.5".into()
    } else {
        (mib / 1024).to_string()
    };
    format!("SCS-{vcpus}Vi-{ram}u-{gb}")
}

/// Waits until `log` holds the test image's ready line after byte `from`.
fn ready(log: &Path, from: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        let tail = text.get(from as usize..).unwrap_or_default();
        if String::from_utf8_lossy(tail).contains("HVAGENT-GUEST-READY") {
            return;
        }
        assert!(Instant::now() < deadline, "{} not ready", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn log_size(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// The by-hand guest: a plain TCG domain on an overlay of the test image.
fn define_by_hand(dir: &Path, image: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("by-hand.qcow2");
    let log = dir.join("by-hand.log");
    common::overlay(&root, image, FIRST_DISK_GB * GIB);
    let xml = common::plain_domain(BY_HAND, 512, &root, &log);
    let file = dir.join("by-hand.xml");
    std::fs::write(&file, xml).expect("write xml");
    virsh(&["define", file.to_str().expect("path")]);
    virsh(&["start", BY_HAND]);
    (root, log)
}

/// The by-hand resize: shutdown (destroy after 30 s), vCPUs, memory, disk, start.
fn resize_by_hand(root: &Path, (vcpus, mib, gb): (u32, u64, u64)) -> Duration {
    let started = Instant::now();
    virsh(&["shutdown", BY_HAND]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while virsh(&["domstate", BY_HAND]).trim() != "shut off" {
        if Instant::now() >= deadline {
            virsh(&["destroy", BY_HAND]);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (n, kib) = (vcpus.to_string(), (mib * 1024).to_string());
    virsh(&["setvcpus", BY_HAND, &n, "--config", "--maximum"]);
    virsh(&["setvcpus", BY_HAND, &n, "--config"]);
    virsh(&["setmaxmem", BY_HAND, &kib, "--config"]);
    virsh(&["setmem", BY_HAND, &kib, "--config"]);
    let bytes = (gb * GIB).to_string();
    run(
        "qemu-img",
        &[
            "resize",
            "-q",
            "-f",
            "qcow2",
            root.to_str().expect("path"),
            &bytes,
        ],
    );
    virsh(&["start", BY_HAND]);
    started.elapsed()
}

/// The agent's resize and confirm of the guest to `flavor`.
async fn resize_by_agent(vms: &mut Vms, flavor: &str) -> (Duration, Duration) {
    let started = Instant::now();
    vms.resize(pb::ResizeVmRequest {
        uuid: UUID.into(),
        flavor: flavor.into(),
    })
    .await
    .expect("resize");
    let resized = started.elapsed();
    vms.confirm_resize(pb::ConfirmResizeVmRequest { uuid: UUID.into() })
        .await
        .expect("confirm");
    (resized, started.elapsed())
}

fn main() {
    let rounds = env_or("ROUNDS", 4);
    // The by-hand disk lies in it too (guest_dir: QEMU must reach it).
    let dir = common::guest_dir();
    let store = dir.path().join("store");
    // TCG on both sides, whether or not KVM works here: the by-hand domain is a TCG one.
    let (mut agent, socket) = start_agent(
        dir.path(),
        "[host]\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n",
    );
    let (hand_root, hand_log) = define_by_hand(dir.path(), &testguest());
    let runtime = common::runtime();
    runtime.block_on(async {
        let channel = client::connect(&socket).await.expect("connect");
        let mut vms = Vms::new(channel.clone());
        let mut images = Images::new(channel);
        images
            .import(pb::ImportImageRequest {
                name: "testguest".into(),
                source_path: testguest().display().to_string(),
                ..Default::default()
            })
            .await
            .expect("import");
        vms.create(pb::CreateVmRequest {
            uuid: UUID.into(),
            name: "bench-resize".into(),
            flavor: format!("SCS-1Vi-0.5u-{FIRST_DISK_GB}"),
            image: "testguest".into(),
            ..Default::default()
        })
        .await
        .expect("create");
        let agent_log = GuestFiles::new(&store, UUID).console_log();
        ready(&agent_log, 0);
        ready(&hand_log, 0);
        let (mut resizes, mut trips, mut hands) = (vec![], vec![], vec![]);
        for round in 0..rounds {
            let to = size(round);
            let (agent_from, hand_from) = (log_size(&agent_log), log_size(&hand_log));
            let ((resized, trip), hand) = if round.is_multiple_of(2) {
                let a = resize_by_agent(&mut vms, &flavor(to)).await;
                (a, resize_by_hand(&hand_root, to))
            } else {
                let h = resize_by_hand(&hand_root, to);
                (resize_by_agent(&mut vms, &flavor(to)).await, h)
            };
            resizes.push(resized);
            trips.push(trip);
            hands.push(hand);
            ready(&agent_log, agent_from);
            ready(&hand_log, hand_from);
        }
        println!("\nresize of a running TCG guest (test image), 1↔2 vCPUs, 0.5↔1 GiB, root disk +1 GiB:\n");
        header();
        row("hvagent `Resize` (up to the start)", &stats(resizes));
        row("hvagent `Resize` + `ConfirmResize` (round trip)", &stats(trips));
        row(
            "virsh shutdown + setvcpus/setmaxmem/setmem --config + qemu-img resize + virsh start",
            &stats(hands),
        );
        vms.delete(pb::DeleteVmRequest { uuid: UUID.into() })
            .await
            .expect("delete");
    });
    let _ = Command::new("virsh")
        .args(["-c", "qemu:///system", "destroy", BY_HAND])
        .output();
    let _ = Command::new("virsh")
        .args(["-c", "qemu:///system", "undefine", BY_HAND])
        .output();
    let _ = agent.kill();
    let _ = agent.wait();
}
