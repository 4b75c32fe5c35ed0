//! Snapshot of a 1 GiB root disk against the same operation by hand, side by side in one run:
//!
//! 1. A shut-off guest whose 1 GiB root disk is fully written: `VmService/Snapshot` (measure,
//!    flatten, fsync, sha256, place in the store) against a plain `qemu-img convert -O qcow2`
//!    of the same overlay; rounds alternate which goes first.
//! 2. The same guest running: `Snapshot` (whole call, and how long the guest was paused, from
//!    its `suspended` and `resumed` events) against `virsh suspend`, `qemu-img convert -U`,
//!    `virsh resume` (whole, which is also the pause).
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench snapshot`.
//! Needs what `make test` prepares (libvirtd, images/out/testguest.qcow2). Knob: `ROUNDS`
//! (default 5).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{env_or, header, import_testguest, row, run, start_agent, stats, virsh};
use hvagent::storage::GuestFiles;
use hvagent_proto::v1 as pb;
use hvctl::client;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;
type Images = pb::image_service_client::ImageServiceClient<tonic::transport::Channel>;

const UUID: &str = "00000000-0000-4000-8000-0000be5a0001";
const GIB: u64 = 1 << 30;

/// A Snapshot call's time, and how long the guest was paused (0 when it was not running).
async fn snapshot(vms: &mut Vms, images: &mut Images, name: &str) -> (Duration, Duration) {
    let mut events = vms
        .watch_events(pb::WatchEventsRequest { uuid: UUID.into() })
        .await
        .expect("watch")
        .into_inner();
    let started = Instant::now();
    vms.snapshot(pb::SnapshotVmRequest {
        uuid: UUID.into(),
        image: name.into(),
        properties: Default::default(),
    })
    .await
    .expect("snapshot");
    let took = started.elapsed();
    let running = vms
        .get(pb::GetVmRequest { uuid: UUID.into() })
        .await
        .expect("get")
        .into_inner()
        .state
        == "running";
    let mut paused = Duration::ZERO;
    if running {
        let mut suspended = None;
        while let Ok(Ok(Some(e))) =
            tokio::time::timeout(Duration::from_secs(5), events.message()).await
        {
            match (e.kind.as_str(), suspended) {
                ("suspended", _) => suspended = Some(e.unix_ms),
                ("resumed", Some(at)) => {
                    paused = Duration::from_millis(e.unix_ms - at);
                    break;
                }
                _ => {}
            }
        }
        assert!(!paused.is_zero(), "no suspended/resumed events");
    }
    images
        .delete(pb::DeleteImageRequest { name: name.into() })
        .await
        .expect("delete image");
    (took, paused)
}

/// `qemu-img convert` of `root` (with `-U` and between `virsh suspend` and `resume` when
/// `running`), timed as whole processes.
fn by_hand(root: &Path, out: &Path, running: bool) -> Duration {
    let (r, o) = (root.to_str().expect("path"), out.to_str().expect("path"));
    let started = Instant::now();
    if running {
        virsh(&["suspend", UUID]);
        run(
            "qemu-img",
            &["convert", "-U", "-f", "qcow2", "-O", "qcow2", r, o],
        );
        virsh(&["resume", UUID]);
    } else {
        run("qemu-img", &["convert", "-f", "qcow2", "-O", "qcow2", r, o]);
    }
    let took = started.elapsed();
    std::fs::remove_file(out).expect("remove the copy");
    took
}

fn main() {
    let rounds = env_or("ROUNDS", 5);
    let dir = common::guest_dir();
    let store = dir.path().join("store");
    let (mut agent, socket) = start_agent(
        dir.path(),
        "[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n",
    );
    let runtime = common::runtime();
    runtime.block_on(async {
        let channel = client::connect(&socket).await.expect("connect");
        let mut vms = Vms::new(channel.clone());
        let mut images = Images::new(channel.clone());
        import_testguest(channel).await;
        vms.create(pb::CreateVmRequest {
            uuid: UUID.into(),
            name: "bench-snapshot".into(),
            // With a disk: a local 1 GiB root disk (a flavor without one boots from a volume).
            flavor: "SCS-1Vi-0.5u-1".into(),
            image: "testguest".into(),
            ..Default::default()
        })
        .await
        .expect("create");
        vms.stop(pb::StopVmRequest {
            uuid: UUID.into(),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .expect("stop");
        // Every byte of the 1 GiB disk written, past the image's first 32 MiB (its boot
        // files, so that the guest still runs for part 2).
        let root = GuestFiles::new(&store, UUID).root_disk();
        let r = root.to_str().expect("path");
        let write = format!("write -P 0x5a {} {}", 32 << 20, GIB - (32 << 20));
        run("qemu-io", &["-f", "qcow2", "-c", &write, r]);
        let out = dir.path().join("by-hand.qcow2");

        for running in [false, true] {
            if running {
                vms.start(pb::StartVmRequest { uuid: UUID.into() })
                    .await
                    .expect("start");
            }
            let (mut agent_times, mut pauses, mut hand_times) = (vec![], vec![], vec![]);
            for round in 0..=rounds {
                let name = format!("snap-{running}-{round}");
                let (took, paused, hand) = if round % 2 == 0 {
                    let (took, paused) = snapshot(&mut vms, &mut images, &name).await;
                    (took, paused, by_hand(&root, &out, running))
                } else {
                    let hand = by_hand(&root, &out, running);
                    let (took, paused) = snapshot(&mut vms, &mut images, &name).await;
                    (took, paused, hand)
                };
                // Round 0 warms the page cache.
                if round > 0 {
                    agent_times.push(took);
                    pauses.push(paused);
                    hand_times.push(hand);
                }
            }
            let state = if running { "running" } else { "shut off" };
            println!("\n{state} guest, 1 GiB root disk fully written:\n");
            header();
            row(
                "hvagent `Snapshot` (measure, convert, fsync, sha256, place)",
                &stats(agent_times),
            );
            if running {
                row("of which the guest was paused", &stats(pauses));
                row(
                    "`virsh suspend` + `qemu-img convert -U` + `virsh resume`",
                    &stats(hand_times),
                );
            } else {
                row(
                    "`qemu-img convert -O qcow2` of the same overlay",
                    &stats(hand_times),
                );
            }
        }
        let overlay = std::fs::metadata(&root).expect("root").len();
        println!("\nroot overlay file: {} MiB", overlay >> 20);
        vms.delete(pb::DeleteVmRequest { uuid: UUID.into() })
            .await
            .expect("delete");
    });
    let _ = agent.kill();
    let _ = agent.wait();
}
