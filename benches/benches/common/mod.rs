//! What the side-by-side bench drivers share: the built binaries, a private agent, and
//! summary statistics printed as Markdown rows.
#![allow(dead_code)] // each bench uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `target/release/<name>`, next to `deps/` holding this bench binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --release --bins` first",
        path.display()
    );
    path
}

pub struct Stats {
    pub median: Duration,
    pub p99: Duration,
    pub min: Duration,
    pub max: Duration,
    pub n: usize,
}

pub fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    let at = |q: f64| samples[((n as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
        min: samples[0],
        max: samples[n - 1],
        n,
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

pub fn header() {
    println!("| what | n | median | p99 | min | max |");
    println!("|---|---|---|---|---|---|");
}

pub fn row(name: &str, s: &Stats) {
    println!(
        "| {name} | {} | {} | {} | {} | {} |",
        s.n,
        ms(s.median),
        ms(s.p99),
        ms(s.min),
        ms(s.max)
    );
}

/// Starts the release `hvagent` on a socket and store inside `dir`, with `extra` TOML lines
/// appended to its config, and waits until it serves.
pub fn start_agent(dir: &Path, extra: &str) -> (Child, PathBuf) {
    start_agent_with_metrics(dir, extra, 0)
}

/// As [`start_agent`], with the metrics endpoint on 127.0.0.1:`port` (0: any free port).
pub fn start_agent_with_metrics(dir: &Path, extra: &str, port: u16) -> (Child, PathBuf) {
    start_agent_as(Command::new(bin("hvagent")), dir, "", extra, port)
}

/// As [`start_agent_with_metrics`], run as `command` (the agent, or a wrapper that execs
/// it), with `api` TOML lines in its `[api]` section.
pub fn start_agent_as(
    mut command: Command,
    dir: &Path,
    api: &str,
    extra: &str,
    port: u16,
) -> (Child, PathBuf) {
    let socket = dir.join("hvagent.sock");
    let config = dir.join("hvagent.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\n{api}unix_socket = \"{}\"\n[storage]\nroot = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n{extra}",
            socket.display(),
            dir.join("store").display()
        ),
    )
    .expect("config");
    let child = command
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .expect("start hvagent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, socket)
}

/// Runs `program`; its standard output, or the bench fails with its standard error.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `virsh -c qemu:///system ARGS`'s standard output.
pub fn virsh(args: &[&str]) -> String {
    let mut all = vec!["-c", "qemu:///system"];
    all.extend_from_slice(args);
    run("virsh", &all)
}

/// A qcow2 overlay at `path` on the qcow2 image `base`, of `bytes` virtual size.
pub fn overlay(path: &Path, base: &Path, bytes: u64) {
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().expect("path"),
            path.to_str().expect("path"),
            &bytes.to_string(),
        ],
    );
}

/// A plain TCG domain (1 vCPU, `mib` of memory, no pins) booting from the qcow2 disk `root`,
/// its serial console logged to `log`: the by-hand peer of an agent guest.
pub fn plain_domain(name: &str, mib: u64, root: &Path, log: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>{mib}</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
         <features><acpi/><apic/></features><cpu mode='custom' match='exact'>\
         <model fallback='forbid'>qemu64</model></cpu><on_poweroff>destroy</on_poweroff>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <serial type='pty'><target port='0'/><log file='{}' append='on'/></serial>\
         <console type='pty'><target type='serial' port='0'/></console></devices></domain>",
        root.display(),
        log.display()
    )
}

type Vms = hvagent_proto::v1::vm_service_client::VmServiceClient<tonic::transport::Channel>;

/// `images/out/testguest.qcow2` (built by `images/build.sh`, as `make test` does).
pub fn testguest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/out/testguest.qcow2")
}

/// Imports the test image as image `testguest` over `channel`.
pub async fn import_testguest(channel: tonic::transport::Channel) {
    hvagent_proto::v1::image_service_client::ImageServiceClient::new(channel)
        .import(hvagent_proto::v1::ImportImageRequest {
            name: "testguest".into(),
            source_path: testguest().display().to_string(),
            ..Default::default()
        })
        .await
        .expect("import (images/build.sh builds the image)");
}

/// Waits until guest `uuid`'s console says it is ready (180 s at most).
pub async fn wait_ready(vms: &mut Vms, uuid: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let log = vms
            .get_console_log(hvagent_proto::v1::GetConsoleLogRequest {
                uuid: uuid.into(),
                max_bytes: 0,
            })
            .await
            .expect("console log")
            .into_inner();
        if String::from_utf8_lossy(&log.data).contains("HVAGENT-GUEST-READY") {
            return;
        }
        assert!(Instant::now() < deadline, "guest {uuid} not ready in 180 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A current-thread runtime for a bench's gRPC calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A temporary directory for an agent's store (and disks made by hand) that QEMU, an
/// unprivileged user, can reach.
pub fn guest_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
