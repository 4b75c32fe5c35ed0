//! GetInventory round trip over the Unix socket, side by side with `virsh capabilities` on the
//! same machine in the same run, and the idle daemon's resident memory.
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench inventory`.
//! Needs a running libvirtd (as `make test` prepares). Environment knobs: `ROUNDS` (gRPC round
//! trips, default 300), `COMMAND_ROUNDS` (runs of each command, default 10), `IDLE_SECS`
//! (wait before reading RSS, default 10).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stats, bin, env_or, header, ms, row, start_agent, stats};
use hvagent_proto::v1 as pb;
use hvctl::client;

fn time_command(program: &Path, args: &[&str], rounds: usize) -> Stats {
    let samples = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run command");
            assert!(status.success(), "{} {args:?} failed", program.display());
            started.elapsed()
        })
        .collect();
    stats(samples)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rounds = env_or("ROUNDS", 300);
    let command_rounds = env_or("COMMAND_ROUNDS", 10);
    let idle = Duration::from_secs(env_or("IDLE_SECS", 10) as u64);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut agent, socket) = start_agent(dir.path(), "");
    let runtime = common::runtime();

    let grpc = runtime.block_on(async {
        let channel = client::connect(&socket).await.expect("connect");
        let mut node = pb::node_service_client::NodeServiceClient::new(channel);
        // Warm-up: the first call waits for the KVM trial and libvirt's facts.
        let first = Instant::now();
        node.get_inventory(pb::GetInventoryRequest {})
            .await
            .expect("inventory");
        println!(
            "first GetInventory after start (waits for KVM trial and libvirt): {}",
            ms(first.elapsed())
        );
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let inv = node
                .get_inventory(pb::GetInventoryRequest {})
                .await
                .expect("inventory");
            samples.push(started.elapsed());
            assert!(inv.into_inner().cpu.is_some());
        }
        stats(samples)
    });
    let hvctl = time_command(
        &bin("hvctl"),
        &["--socket", socket.to_str().unwrap(), "node", "inventory"],
        command_rounds,
    );
    let virsh = time_command(
        Path::new("virsh"),
        &["-c", "qemu:///system", "capabilities"],
        command_rounds,
    );
    let virsh_nodeinfo = time_command(
        Path::new("virsh"),
        &["-c", "qemu:///system", "nodeinfo"],
        command_rounds,
    );

    println!();
    header();
    row(
        "GetInventory round trip (gRPC, Unix socket, one connection)",
        &grpc,
    );
    row("`hvctl node inventory` (whole process)", &hvctl);
    row("`virsh capabilities` (whole process)", &virsh);
    row("`virsh nodeinfo` (whole process)", &virsh_nodeinfo);
    println!();
    println!(
        "ratio of medians: virsh capabilities / GetInventory = {:.1}x, virsh capabilities / hvctl = {:.1}x",
        virsh.median.as_secs_f64() / grpc.median.as_secs_f64(),
        virsh.median.as_secs_f64() / hvctl.median.as_secs_f64()
    );

    std::thread::sleep(idle);
    let rss = rss_kib(agent.id());
    println!(
        "idle hvagent RSS after {} round trips and {} s idle: {rss} KiB ({:.1} MiB; target <= 15 MiB)",
        rounds + command_rounds,
        idle.as_secs(),
        rss as f64 / 1024.0
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
