//! Live migration of a 1 GiB guest between two "nodes" of this machine (node2: a second
//! libvirtd in its own mount and network namespaces, tests/scripts/node2.sh, reached over TCP
//! on a veth), side by side in one run with `virsh migrate` of a plain domain of the same
//! size and image:
//!
//! 1. `VmService/Migrate` of an agent guest (`SCS-1Vi-1u-5`: 1 vCPU, 1 GiB) from the source
//!    agent to the target agent on node2: mutual-TLS connect, Prepare (claim, root overlay on
//!    the target's image, seed), libvirt's peer-to-peer live migration with the written disk
//!    blocks copied, Finish, the source's claim and files released. Timed: the call, as
//!    `hvctl vm migrate` makes it; downtime: the answer's `downtime_ms` (the target libvirt's
//!    completed job).
//! 2. By hand, a plain domain (1 vCPU, 1 GiB, an overlay on the same image, no pins): the
//!    destination overlay made with `qemu-img create`, then `virsh migrate --live --p2p
//!    --persistent --undefinesource --copy-storage-inc --migrate-disks vda --xml DEST
//!    --migrateuri tcp://10.78.0.2` (the same flags and streams as the agent's; the
//!    destination XML only moves the disk, the serial log and the cgroup partition). Timed:
//!    both; downtime: node2's `virsh domjobinfo --completed`.
//!
//! Each round makes both guests anew and boots them to the image's ready line (unmeasured),
//! then migrates them one after the other, alternating which goes first, and removes them
//! from node2. Both guests are idle: TCG sends the untouched part of the 1 GiB as zero
//! pages, so the figures are those of a light guest.
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench migration`.
//! Needs root and what `make test` prepares (libvirtd, images/out/testguest.qcow2). Knob:
//! `ROUNDS` (default 5).

mod common;
#[path = "../../tests/tests/common/node2.rs"]
mod node2;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{env_or, header, row, start_agent, start_agent_as, stats, testguest, virsh};
use hvagent_proto::v1 as pb;
use hvctl::client;
use node2::{Ca, NET, NETNS, NODE2_URI, Node2, Pair};

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

const FLAVOR: &str = "SCS-1Vi-1u-5";
const BY_HAND: &str = "bench-migrate-by-hand";
const GIB: u64 = 1 << 30;
/// TCG on both nodes (the plain domain is a TCG one), no CPU kept back.
const TCG: &str = "[host]\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n";

fn uuid(round: usize) -> String {
    format!("00000000-0000-4000-8000-0000be5e{round:04x}")
}

/// Waits until `log` holds the test image's ready line.
fn ready(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default())
        .contains("HVAGENT-GUEST-READY")
    {
        assert!(Instant::now() < deadline, "{} not ready", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The plain domain on the main libvirtd, booted: an overlay of the test image.
fn start_by_hand(dir: &Path) -> PathBuf {
    let (root, log) = (dir.join("by-hand.qcow2"), dir.join("by-hand.log"));
    let _ = std::fs::remove_file(&log);
    overlay(&root);
    let xml = common::plain_domain(BY_HAND, 1024, &root, &log);
    let file = dir.join("by-hand.xml");
    std::fs::write(&file, xml).expect("write xml");
    virsh(&["define", file.to_str().expect("path")]);
    virsh(&["start", BY_HAND]);
    ready(&log);
    log
}

/// A 5 GiB qcow2 overlay on the test image at `path`, made anew.
fn overlay(path: &Path) {
    let _ = std::fs::remove_file(path);
    common::overlay(path, &testguest(), 5 * GIB);
}

/// `virsh migrate` of the plain domain to node2 (with its destination overlay made first):
/// the time taken and node2's downtime.
fn migrate_by_hand(dir: &Path, node: &Node2) -> (Duration, Duration) {
    let xml = virsh(&["dumpxml", "--migratable", BY_HAND]);
    let (root, dest_root) = (dir.join("by-hand.qcow2"), dir.join("by-hand-node2.qcow2"));
    let dest_xml = xml
        .replace(
            &root.display().to_string(),
            &dest_root.display().to_string(),
        )
        .replace("by-hand.log", "by-hand-node2.log")
        .replace(
            "<partition>/machine</partition>",
            "<partition>/hvnode2</partition>",
        );
    let dest = dir.join("by-hand-node2.xml");
    std::fs::write(&dest, dest_xml).expect("write xml");
    let started = Instant::now();
    overlay(&dest_root);
    let out = Command::new("virsh")
        .args([
            "-c",
            "qemu:///system",
            "migrate",
            "--live",
            "--p2p",
            "--persistent",
            "--undefinesource",
            "--copy-storage-inc",
            "--migrate-disks",
            "vda",
            "--xml",
            dest.to_str().expect("path"),
            "--migrateuri",
            &format!("tcp://{NET}.2"),
            BY_HAND,
            NODE2_URI,
        ])
        .output()
        .expect("virsh migrate");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "virsh migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, job) = node.virsh(&["domjobinfo", BY_HAND, "--completed"]);
    let downtime = downtime_of(&job);
    node.virsh(&["destroy", BY_HAND]);
    node.virsh(&["undefine", BY_HAND]);
    (took, downtime)
}

/// `Total downtime:     59           ms` from `virsh domjobinfo`.
fn downtime_of(job: &str) -> Duration {
    let ms = job
        .lines()
        .find_map(|l| l.strip_prefix("Total downtime:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no downtime in domjobinfo:\n{job}"));
    Duration::from_millis(ms)
}

/// The agent guest of `round`, booted on the source agent.
async fn start_by_agent(vms: &mut Vms, round: usize) -> String {
    let uuid = uuid(round);
    vms.create(pb::CreateVmRequest {
        uuid: uuid.clone(),
        name: format!("bench-migrate-{round}"),
        flavor: FLAVOR.into(),
        image: "testguest".into(),
        ..Default::default()
    })
    .await
    .expect("create");
    common::wait_ready(vms, &uuid).await;
    uuid
}

/// The agent's migration of `uuid` to `endpoint`: the time taken and the answered downtime;
/// then the guest is deleted on the target.
async fn migrate_by_agent(
    vms: &mut Vms,
    target: &mut Vms,
    uuid: &str,
    endpoint: &str,
) -> (Duration, Duration) {
    let started = Instant::now();
    let answer = vms
        .migrate(pb::MigrateVmRequest {
            uuid: uuid.into(),
            target: endpoint.into(),
        })
        .await
        .expect("migrate")
        .into_inner();
    let took = started.elapsed();
    target
        .delete(pb::DeleteVmRequest { uuid: uuid.into() })
        .await
        .expect("delete on the target");
    let downtime = answer
        .downtime_ms
        .expect("the target's libvirt says the downtime");
    (took, Duration::from_millis(downtime))
}

fn main() {
    let rounds = env_or("ROUNDS", 5);
    let node = match Node2::start() {
        Ok(n) => n,
        Err(why) => {
            println!("SKIP migration bench: {why}");
            return;
        }
    };
    let (source_dir, target_dir, pki) = (
        common::guest_dir(),
        common::guest_dir(),
        tempfile::tempdir().expect("tempdir"),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let pair = Pair::new(&Ca::new(pki.path()), port, &node);
    let (mut source, source_socket) =
        start_agent(source_dir.path(), &format!("{TCG}{}", pair.source));
    let (mut target, target_socket) = start_agent_as(
        node2::command_in(Some(NETNS), common::bin("hvagent")),
        target_dir.path(),
        &pair.target_api,
        &format!("{TCG}{}", pair.target),
        0,
    );
    let by_hand = tempfile::tempdir_in(source_dir.path()).expect("tempdir");
    let (mut agent_took, mut agent_down, mut hand_took, mut hand_down) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    common::runtime().block_on(async {
        let (src, dst) = (
            client::connect(&source_socket).await.expect("source"),
            client::connect(&target_socket).await.expect("target"),
        );
        common::import_testguest(src.clone()).await;
        common::import_testguest(dst.clone()).await;
        let (mut vms, mut vms2) = (Vms::new(src), Vms::new(dst));
        for round in 0..rounds {
            let uuid = start_by_agent(&mut vms, round).await;
            start_by_hand(by_hand.path());
            let by_agent_first = round % 2 == 0;
            if !by_agent_first {
                let (t, d) = migrate_by_hand(by_hand.path(), &node);
                hand_took.push(t);
                hand_down.push(d);
            }
            let (t, d) = migrate_by_agent(&mut vms, &mut vms2, &uuid, &pair.endpoint).await;
            agent_took.push(t);
            agent_down.push(d);
            if by_agent_first {
                let (t, d) = migrate_by_hand(by_hand.path(), &node);
                hand_took.push(t);
                hand_down.push(d);
            }
            eprintln!(
                "round {round}: agent {:?} (downtime {:?}), virsh {:?} (downtime {:?})",
                agent_took[round], agent_down[round], hand_took[round], hand_down[round]
            );
        }
    });
    header();
    let (a, h) = (stats(agent_took), stats(hand_took));
    row("hvagent Migrate, 1 GiB guest (call)", &a);
    row("qemu-img create + virsh migrate, 1 GiB domain", &h);
    let (ad, hd) = (stats(agent_down), stats(hand_down));
    row("hvagent Migrate: downtime (target libvirt)", &ad);
    row("virsh migrate: downtime (target libvirt)", &hd);
    println!(
        "\nratio of medians (hvagent / virsh): total {:.2}, downtime {:.2}",
        a.median.as_secs_f64() / h.median.as_secs_f64(),
        ad.median.as_secs_f64() / hd.median.as_secs_f64().max(1e-9)
    );
    let _ = source.kill();
    let _ = target.kill();
    let _ = (source.wait(), target.wait());
    drop(node);
}
