//! Health figures against the usual exporters, side by side in one run on the same machine:
//!
//! 1. Scrape latency (TCP connect, `GET /metrics`, whole body read) and response size of the
//!    agent's endpoint, `prometheus-node-exporter` (host figures) and
//!    `prometheus-libvirt-exporter` (guest figures), with 0 and then N running guests. Rounds
//!    go round-robin over the three so that noise hits them alike.
//! 2. The agent's RSS with N guests.
//! 3. The agent's CPU use while idle (no API calls, no scrapes) at the default 10 s sampling
//!    interval with N guests, from its `/proc/PID/stat` over `IDLE_SECONDS`.
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench health`. Needs
//! what `make test` prepares plus `apt-get install prometheus-node-exporter
//! prometheus-libvirt-exporter`. Knobs: `ROUNDS` (scrapes per endpoint and phase, default
//! 200), `GUESTS` (default 10), `IDLE_SECONDS` (default 60), `FLAVOR` (default SCS-1Vi-0.5u).

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{env_or, ms, start_agent_with_metrics, stats};
use hvagent_proto::v1 as pb;
use hvctl::client;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// The body of `GET /metrics` on 127.0.0.1:`port`.
fn get(port: u16) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("answer");
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "scrape of port {port} failed"
    );
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| at + 4);
    out.split_off(at)
}

/// One scrape: its time and the body's size.
fn scrape(port: u16) -> (Duration, usize) {
    let started = Instant::now();
    let body = get(port);
    (started.elapsed(), body.len())
}

fn text(port: u16) -> String {
    String::from_utf8_lossy(&get(port)).into_owned()
}

/// An exporter started for the bench and stopped when dropped.
struct Exporter {
    child: Child,
}

impl Exporter {
    fn start(program: &str, args: &[String], port: u16) -> Exporter {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program}: {e} (apt-get install prometheus-node-exporter prometheus-libvirt-exporter)")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{program} did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Exporter { child }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn measure(endpoints: &[(&str, u16)], rounds: usize, guests: usize) {
    let mut samples: Vec<Vec<(Duration, usize)>> = vec![Vec::new(); endpoints.len()];
    for _ in 0..3 {
        for (_, port) in endpoints {
            scrape(*port); // warm-up: first scrapes open libvirt connections, fill caches
        }
    }
    for _ in 0..rounds {
        for (i, (_, port)) in endpoints.iter().enumerate() {
            samples[i].push(scrape(*port));
        }
    }
    let mut medians = Vec::new();
    for (i, (name, _)) in endpoints.iter().enumerate() {
        let bytes = samples[i].last().map_or(0, |s| s.1);
        let s = stats(samples[i].iter().map(|s| s.0).collect());
        medians.push(s.median);
        println!(
            "| {name} | {guests} | {} | {} | {} | {} | {bytes} |",
            s.n,
            ms(s.median),
            ms(s.p99),
            ms(s.min)
        );
    }
    println!(
        "| node_exporter + libvirt_exporter (sum of medians) | {guests} | | {} | | | |",
        ms(medians[1] + medians[2])
    );
    println!(
        "| ratio hvagent / node_exporter (medians) | {guests} | | {:.2} | | | |",
        medians[0].as_secs_f64() / medians[1].as_secs_f64()
    );
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

fn main() {
    // cargo bench passes --bench; nothing to parse.
    let rounds = env_or("ROUNDS", 200);
    let guests = env_or("GUESTS", 10);
    let idle_seconds = env_or("IDLE_SECONDS", 60) as u64;
    let flavor = std::env::var("FLAVOR").unwrap_or_else(|_| "SCS-1Vi-0.5u".into());
    let dir = common::guest_dir();
    let metrics = free_port();
    // Every CPU in the shared pool, as in the guests bench: N `V` guests fit on small machines.
    let (agent, socket) = start_agent_with_metrics(
        dir.path(),
        "[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n",
        metrics,
    );
    let agent = Stop(agent);
    let node_port = free_port();
    let _node = Exporter::start(
        "prometheus-node-exporter",
        &[format!("--web.listen-address=127.0.0.1:{node_port}")],
        node_port,
    );
    let libvirt_port = free_port();
    let _libvirt = Exporter::start(
        "prometheus-libvirt-exporter",
        &[
            format!("--web.listen-address=127.0.0.1:{libvirt_port}"),
            "--libvirt.uri=qemu:///system".into(),
        ],
        libvirt_port,
    );
    let endpoints = [
        ("hvagent (host + guests + conditions)", metrics),
        ("prometheus-node-exporter 1.5 (host)", node_port),
        ("prometheus-libvirt-exporter 0.2 (guests)", libvirt_port),
    ];
    println!("| endpoint | guests | n | median | p99 | min | body bytes |");
    println!("|---|---|---|---|---|---|---|");
    measure(&endpoints, rounds, 0);

    let rt = common::runtime();
    let uuids: Vec<String> = (0..guests)
        .map(|n| format!("00000000-0000-4000-8000-0000bea1{n:04x}"))
        .collect();
    let _cleanup = Remove(uuids.clone());
    rt.block_on(async {
        let channel = client::connect(&socket).await.expect("connect");
        let image = common::bin("hvagent")
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
            .expect("repository")
            .join("images/out/testguest.qcow2");
        pb::image_service_client::ImageServiceClient::new(channel.clone())
            .import(pb::ImportImageRequest {
                name: "testguest".into(),
                source_path: image.display().to_string(),
                ..Default::default()
            })
            .await
            .expect("import images/out/testguest.qcow2 (make test builds it)");
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel);
        for (n, uuid) in uuids.iter().enumerate() {
            vms.create(pb::CreateVmRequest {
                uuid: uuid.clone(),
                name: format!("bench-health-{n}"),
                flavor: flavor.clone(),
                image: "testguest".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create guest {n}: {e:?}"));
        }
    });
    // Let the guests boot and the agent sample them all at least once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sampled = text(metrics)
            .lines()
            .filter(|l| l.starts_with("hvagent_guest_memory_rss_bytes{"))
            .count();
        if sampled == guests {
            break;
        }
        assert!(Instant::now() < deadline, "only {sampled} guests sampled");
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(15));
    measure(&endpoints, rounds, guests);

    let pid = agent.0.id();
    println!();
    // What the scrape does not pay: the sampler's own round (host, one bulk stats call, every
    // guest's pins), read from its gauge over ten rounds.
    let mut rounds_ms = Vec::new();
    for _ in 0..10 {
        if let Some(v) = text(metrics)
            .lines()
            .find_map(|l| l.strip_prefix("hvagent_health_sample_duration_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
        {
            rounds_ms.push(Duration::from_secs_f64(v));
        }
        std::thread::sleep(Duration::from_secs(10));
    }
    let r = stats(rounds_ms);
    println!(
        "sampler round with {guests} guests (host, bulk stats, pins): median {}, max {} over {} rounds",
        ms(r.median),
        ms(r.max),
        r.n
    );
    println!(
        "agent RSS with {guests} guests: {:.1} MiB (VmHWM {:.1} MiB)",
        status_kib(pid, "VmRSS:") as f64 / 1024.0,
        status_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    // Idle: no calls and no scrapes; the sampler runs every 10 s (the default).
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let before = cpu_ticks(pid);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_seconds));
    let used = (cpu_ticks(pid) - before) as f64 / ticks;
    println!(
        "agent CPU at idle with {guests} guests, 10 s interval: {:.3} % of one core ({used:.2} s over {:.0} s)",
        100.0 * used / started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    rt.block_on(async {
        let channel = client::connect(&socket).await.expect("connect");
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel);
        for uuid in &uuids {
            vms.delete(pb::DeleteVmRequest { uuid: uuid.clone() })
                .await
                .expect("delete");
        }
    });
}

/// Stops the agent when dropped, also when the bench fails halfway.
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the bench's guests from libvirt when dropped (after a failure; a clean run has
/// deleted them through the agent already).
struct Remove(Vec<String>);

impl Drop for Remove {
    fn drop(&mut self) {
        for uuid in &self.0 {
            for args in [
                &["destroy", uuid.as_str()][..],
                &["undefine", uuid, "--nvram"],
            ] {
                let _ = Command::new("virsh")
                    .args(["-c", "qemu:///system"])
                    .args(args)
                    .output();
            }
        }
    }
}
