//! Shared helpers: locate the built binaries, start a real `hvagent` on a private socket and
//! run the real `hvctl` against it.
#![allow(dead_code)] // each test file uses a different subset

pub mod node2;
pub mod placement;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/<name>`, next to the `deps/` directory holding this test binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as `make test` does)",
        path.display()
    );
    path
}

/// A single-threaded runtime for a test's gRPC calls (concurrent calls still interleave).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Imports `images/out/testguest.qcow2` (built by `images/build.sh`) as image "testguest".
pub async fn import_testguest(channel: tonic::transport::Channel) {
    import_built(channel, "testguest", "testguest.qcow2", &[]).await;
}

/// An import of the local file `path` as image `name` with `properties`.
pub fn import_request(
    name: &str,
    path: &std::path::Path,
    properties: &[(&str, &str)],
) -> hvagent_proto::v1::ImportImageRequest {
    hvagent_proto::v1::ImportImageRequest {
        name: name.into(),
        source_path: path.display().to_string(),
        properties: properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Imports `images/out/<file>` (built by `images/build.sh`) as image `name` with `properties`.
pub async fn import_built(
    channel: tonic::transport::Channel,
    name: &str,
    file: &str,
    properties: &[(&str, &str)],
) {
    let image = repo_root().join("images/out").join(file);
    hvagent_proto::v1::image_service_client::ImageServiceClient::new(channel)
        .import(import_request(name, &image, properties))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "import {} (images/build.sh builds it): {e:?}",
                image.display()
            )
        });
}

/// The guest's serial console log as the agent serves it (the last 64 KiB).
pub async fn console(
    vms: &mut hvagent_proto::v1::vm_service_client::VmServiceClient<tonic::transport::Channel>,
    uuid: &str,
) -> String {
    let log = vms
        .get_console_log(hvagent_proto::v1::GetConsoleLogRequest {
            uuid: uuid.into(),
            max_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&log.data).into_owned()
}

/// Waits until the guest's console says it booted and is ready (180 s at most); returns the
/// console with its report.
pub async fn ready(
    vms: &mut hvagent_proto::v1::vm_service_client::VmServiceClient<tonic::transport::Channel>,
    uuid: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = console(vms, uuid).await;
        if text.contains("HVAGENT-GUEST-READY") {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "guest {uuid} not ready within 180 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The guest's state as the agent answers it (`running`, `shut off`, `paused`, ...).
pub async fn state(
    vms: &mut hvagent_proto::v1::vm_service_client::VmServiceClient<tonic::transport::Channel>,
    uuid: &str,
) -> String {
    vms.get(hvagent_proto::v1::GetVmRequest { uuid: uuid.into() })
        .await
        .unwrap()
        .into_inner()
        .state
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Config lines for guests under TCG on any host: no KVM, every CPU for guests, 256 MiB kept
/// for the host.
pub const TCG_GUESTS: &str = "[host]\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n";

/// A running agent with its own socket, storage root and config file in a temporary directory.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    /// Where the agent's stderr (its log) goes in `dir/agent.log` when this run started:
    /// a file, not a pipe nobody reads, which a long test's log would fill and so block the
    /// agent's next log line.
    pub log_from: u64,
    /// The network namespace (`ip netns` name) the agent runs in; `None`: this process's.
    pub netns: Option<String>,
}

/// The free space the tests' agents keep on their store's file system for imports and
/// snapshots: 256 MiB instead of the 2 GiB default, which fails every import on a CI machine
/// whose fresh build leaves it less. The guard itself is tested in hostile_images.rs.
const TEST_MIN_FREE: &str = "import_min_free_bytes = 268435456\n";

impl Agent {
    /// Writes a config (socket and storage inside a new temp dir, plus `extra` TOML lines,
    /// which may add keys to a `[host]` section) and starts the agent, waiting until it serves.
    pub fn start(extra: &str) -> Agent {
        let agent = Agent::configure(extra);
        agent.spawn()
    }

    pub fn configure(extra: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/hvagent.sock");
        let config = dir.path().join("hvagent.toml");
        std::fs::write(
            &config,
            format!(
                "[api]\nunix_socket = \"{}\"\n[storage]\nroot = \"{}\"\n{TEST_MIN_FREE}[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
                socket.display(),
                dir.path().join("store").display()
            ),
        )
        .expect("write config");
        Agent {
            dir,
            socket,
            config,
            child: None,
            log_from: 0,
            netns: None,
        }
    }

    /// An agent for guests under TCG on any host ([`TCG_GUESTS`] and `extra`), with `storage`
    /// lines added to its `[storage]` section, and its directory traversable by QEMU's user,
    /// who reaches the guests' disks there. Not started yet.
    pub fn configure_tcg(storage: &str, extra: &str) -> Agent {
        use std::os::unix::fs::PermissionsExt;
        let agent = Agent::configure(&format!("{TCG_GUESTS}{extra}"));
        agent.add_storage_keys(storage);
        std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the agent's directory");
        agent
    }

    /// Adds `keys` (TOML lines) to the config's `[storage]` section; one that sets
    /// `import_min_free_bytes` replaces the tests' [`TEST_MIN_FREE`].
    pub fn add_storage_keys(&self, keys: &str) {
        let mut text = std::fs::read_to_string(&self.config).expect("read config");
        if keys.contains("import_min_free_bytes") {
            text = text.replacen(TEST_MIN_FREE, "", 1);
        }
        let text = text.replacen("[storage]\n", &format!("[storage]\n{keys}\n"), 1);
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn command(&self) -> Command {
        let mut cmd = node2::command_in(self.netns.as_deref(), bin("hvagent"));
        cmd.arg("--config").arg(&self.config);
        cmd
    }

    /// Runs the agent in network namespace `ns` (as on another host: its taps, bridges and
    /// listeners are there), not yet started.
    pub fn in_netns(mut self, ns: &str) -> Agent {
        self.netns = Some(ns.to_string());
        self
    }

    /// The agent's log file (stderr of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// What the agent logged since this run started.
    pub fn log(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.seek(SeekFrom::Start(self.log_from));
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    pub fn spawn(mut self) -> Agent {
        self.respawn();
        self
    }

    /// Starts the agent (again, after `stop_with`) on the same directory, waiting until it
    /// serves.
    pub fn respawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the agent's log");
        self.log_from = log.metadata().expect("stat the agent's log").len();
        let child = self
            .command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn hvagent");
        self.child = Some(child);
        self.wait_serving();
    }

    fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("hvagent exited early with {status}: {}", self.log());
            }
            // The agent binds its Unix socket first and its TCP listener (`[api]
            // tcp_listen`) a moment later: serving means both accept.
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                && self
                    .tcp_listen()
                    .is_none_or(|addr| std::net::TcpStream::connect(addr).is_ok())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "hvagent did not serve {} within 30 s",
            self.socket.display()
        );
    }

    /// The `[api] tcp_listen` address of the agent's config, if it has one.
    fn tcp_listen(&self) -> Option<String> {
        let config = std::fs::read_to_string(&self.config).ok()?;
        config.lines().find_map(|l| {
            let value = l.trim().strip_prefix("tcp_listen")?.trim_start();
            Some(
                value
                    .strip_prefix('=')?
                    .trim()
                    .trim_matches('"')
                    .to_string(),
            )
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("agent running").id() as i32
    }

    /// Sends `signal` and waits for the agent to exit; returns its status and stderr.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("agent running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signal agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "hvagent did not stop within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.log())
    }

    pub fn hvctl(&self, args: &[&str]) -> Output {
        hvctl_at(&self.socket, args)
    }

    /// Starts the agent with its metrics endpoint on `port` instead of an ephemeral one.
    pub fn with_metrics_port(self, port: u16) -> Agent {
        let text = std::fs::read_to_string(&self.config)
            .expect("read config")
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        std::fs::write(&self.config, text).expect("write config");
        self
    }

    /// `hvctl --output json node inventory`, parsed.
    pub fn inventory_json(&self) -> serde_json::Value {
        let out = self.hvctl(&["--output", "json", "node", "inventory"]);
        assert!(
            out.status.success(),
            "hvctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("hvctl prints JSON")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real `hvctl` against `socket`.
pub fn hvctl_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("hvctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run hvctl")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code, treating death by signal as a failure to report.
pub fn code(status: &ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| panic!("killed by signal {:?}", status.signal()))
}

/// Runs a host tool and returns its stdout, failing the test with its stderr otherwise.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed by this test (make test installs it): {e}")
        });
    assert!(out.status.success(), "{program} {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// `virsh -c qemu:///system ARGS`'s standard output; fails the test when virsh fails.
pub fn virsh(args: &[&str]) -> String {
    let mut all = vec!["-c", "qemu:///system"];
    all.extend_from_slice(args);
    tool("virsh", &all)
}

/// A TCP port free on 127.0.0.1 just now.
/// A free TCP port below the kernel's ephemeral range (32768 and up), so that no socket bound
/// to port 0 meanwhile (the agents' metrics endpoints, any client) can be handed the same one;
/// distinct within a test binary.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 1000) as u16 * 12;
    loop {
        let port = 20_000 + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The raw HTTP/1.1 answer (status line, headers, body) to `GET path` on 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read answer");
    out
}

/// Destroys and undefines the named domains (names or UUIDs) when dropped: whatever a test
/// leaves in libvirt goes, also when it fails halfway.
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.0 {
            for args in [
                &["destroy", d.as_str()][..],
                &["undefine", d, "--nvram", "--tpm"],
            ] {
                let _ = Command::new("virsh")
                    .args(["-c", "qemu:///system"])
                    .args(args)
                    .output();
            }
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, failing after `limit` with `what`.
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The UUIDs of the agent's guests, in order.
pub async fn listed(
    vms: &mut hvagent_proto::v1::vm_service_client::VmServiceClient<tonic::transport::Channel>,
) -> Vec<String> {
    let mut uuids: Vec<String> = vms
        .list(hvagent_proto::v1::ListVmsRequest {})
        .await
        .unwrap()
        .into_inner()
        .vms
        .into_iter()
        .map(|v| v.uuid)
        .collect();
    uuids.sort();
    uuids
}

/// The VM UUIDs of the agent's claims.
pub async fn claims(
    placement: &mut hvagent_proto::v1::placement_service_client::PlacementServiceClient<
        tonic::transport::Channel,
    >,
) -> Vec<String> {
    placement
        .list_claims(hvagent_proto::v1::ListClaimsRequest {})
        .await
        .unwrap()
        .into_inner()
        .claims
        .into_iter()
        .map(|c| c.vm_uuid)
        .collect()
}

/// Whether libvirt has a domain with this UUID (anyone's).
pub fn domain_exists(uuid: &str) -> bool {
    Command::new("virsh")
        .args(["-c", "qemu:///system", "domstate", uuid])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The agent's view after a restart agrees with libvirt and the disk: every guest of `ids` is
/// listed, claimed, defined and has its files, or has none of them.
pub async fn whole_or_gone(agent: &Agent, ids: &[String], when: &str) -> Vec<String> {
    let channel = hvctl::client::connect(&agent.socket).await.unwrap();
    let mut vms = hvagent_proto::v1::vm_service_client::VmServiceClient::new(channel.clone());
    let mut placement =
        hvagent_proto::v1::placement_service_client::PlacementServiceClient::new(channel);
    // Placement answers once it is rebuilt from libvirt (which is starting again).
    let deadline = Instant::now() + Duration::from_secs(60);
    let claimed = loop {
        match placement
            .list_claims(hvagent_proto::v1::ListClaimsRequest {})
            .await
        {
            Ok(r) => break r.into_inner().claims,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{when}: {s:?}");
                assert!(
                    Instant::now() < deadline,
                    "{when}: placement never rebuilt: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let listed = listed(&mut vms).await;
    for id in ids {
        let domain = domain_exists(id);
        let files = agent.dir.path().join("store/vms").join(id).exists();
        let guest = listed.contains(id);
        let claim = claimed.iter().any(|c| &c.vm_uuid == id);
        assert!(
            (domain && files && guest && claim) || (!domain && !files && !guest && !claim),
            "{when}: {id}: domain {domain}, files {files}, listed {guest}, claim {claim}"
        );
    }
    listed
}

/// xorshift64*: deterministic, so a failure names the seed that reproduces it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// A qemu-nbd serving a raw file, stopped when dropped.
pub struct Nbd {
    pid_file: PathBuf,
}

impl Drop for Nbd {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Serves `file` as export `name` on `address` and a free port (its pid file in `dir`);
/// `None` (said why) when qemu-nbd is missing.
pub fn serve_nbd(dir: &Path, file: &Path, name: &str, address: &str) -> Option<(Nbd, u16)> {
    let port = free_port();
    let pid_file = dir.join(format!("qemu-nbd-{name}.pid"));
    let started = Command::new("qemu-nbd")
        // Any number of clients at once: a migrating guest's two QEMUs both connect.
        .args([
            "--fork",
            "--persistent",
            "--shared=0",
            "-b",
            address,
            "-f",
            "raw",
        ])
        .args(["-x", name, "-p", &port.to_string(), "--pid-file"])
        .arg(&pid_file)
        .arg(file)
        .output();
    match started {
        Err(e) => {
            eprintln!("skipping the NBD volume: cannot run qemu-nbd ({e})");
            None
        }
        Ok(out) => {
            assert!(out.status.success(), "qemu-nbd: {}", stderr(&out));
            Some((Nbd { pid_file }, port))
        }
    }
}
