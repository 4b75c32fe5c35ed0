//! Two "nodes" on one machine for live migration (tests/tests/migration.rs,
//! benches/benches/migration.rs): node2 is a second libvirtd in its own mount and network
//! namespaces (tests/scripts/node2.sh), reached over TCP on a veth; and a test CA for the
//! agents' mutual TLS. Included by path from the benches: it needs nothing of `common`.

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{CertificateParams, DistinguishedName, DnType, Issuer, KeyPair, SanType};

/// The subnet of the veth between the nodes; node2 is `.2`.
pub const NET: &str = "10.78.0";
/// node2's network namespace (`ip netns`), where its libvirtd and the target agent run.
pub const NETNS: &str = "hvnode2";
pub const NODE2_URI: &str = "qemu+tcp://10.78.0.2/system";
/// `program` to run in network namespace `netns` (an `ip netns` name; `None`: this
/// process's). nsenter execs it: the child's pid is the program's.
pub fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The source agent's `[migration]` identity, a `controller` on the target.
pub const SOURCE_IDENTITY: &str = "spiffe://test.example/node1";

/// The config of a source agent (on the main libvirtd) and a target agent (on node2, in its
/// network namespace, its TCP API on node2's address, port `port`), with certificates of
/// `ca`: TOML lines to append (`source`, `target`) and lines for the target's `[api]` section
/// (`target_api`).
pub struct Pair {
    pub source: String,
    pub target: String,
    pub target_api: String,
    /// The target agent's TCP API, `HOST:PORT`.
    pub endpoint: String,
}

impl Pair {
    pub fn new(ca: &Ca, port: u16, node: &Node2) -> Pair {
        let address: std::net::IpAddr = format!("{NET}.2").parse().unwrap();
        let (target_cert, target_key) = ca.sign("target", SanType::IpAddress(address));
        let (source_cert, source_key) =
            ca.sign("source", SanType::URI(SOURCE_IDENTITY.try_into().unwrap()));
        Pair {
            source: format!(
                "[migration]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nserver_ca = \"{}\"\n",
                source_cert.display(),
                source_key.display(),
                ca.pem.display()
            ),
            target: format!(
                "[libvirt]\nuri = \"{NODE2_URI}\"\npartition = \"/hvnode2\"\nqemu_pid_dir = \"{}\"\n[migration]\nlibvirt_uri = \"{NODE2_URI}\"\naddress = \"{NET}.2\"\n[access]\ntls_identities = {{ \"{SOURCE_IDENTITY}\" = \"controller\" }}\n",
                node.qemu_pid_dir().display()
            ),
            target_api: format!(
                "tcp_listen = \"{address}:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
                target_cert.display(),
                target_key.display(),
                ca.pem.display()
            ),
            endpoint: format!("{address}:{port}"),
        }
    }
}

/// node2 while the test runs: started by `new`, stopped on drop (also when the test panics).
pub struct Node2 {
    script: PathBuf,
    state: tempfile::TempDir,
}

impl Node2 {
    /// Starts node2, or says why it cannot run here.
    pub fn start() -> Result<Node2, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root: namespaces and a second libvirtd need root".into());
        }
        for tool in ["nsenter", "unshare", "ip", "libvirtd", "virtlogd"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!("{tool} is not installed"));
            }
        }
        let node = Node2 {
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/node2.sh"),
            state: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        // A node2 a killed test run left behind goes first.
        node.run(&["stop"]);
        let out = node.run(&["start"]);
        if !out.status.success() {
            return Err(format!(
                "node2.sh start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(node)
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.script)
            .args(args)
            .env("HVNODE2_STATE", self.state.path().join("node2"))
            .env("HVNODE2_NET", NET)
            .output()
            .expect("run node2.sh")
    }

    /// node2's `/run/libvirt/qemu` (the guests' pid files) as the root mount namespace
    /// reaches it: through its libvirtd's `/proc/PID/root`.
    pub fn qemu_pid_dir(&self) -> PathBuf {
        let pid = std::fs::read_to_string(self.state.path().join("node2/libvirtd.pid"))
            .expect("node2's libvirtd pid file");
        PathBuf::from(format!("/proc/{}/root/run/libvirt/qemu", pid.trim()))
    }

    /// `virsh` against node2's libvirtd, over TCP as other nodes reach it.
    pub fn virsh(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("virsh")
            .args(["-c", NODE2_URI])
            .args(args)
            .output()
            .expect("run virsh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Node2 {
    fn drop(&mut self) {
        let out = self.run(&["stop"]);
        if !out.status.success() {
            eprintln!("node2.sh stop: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// A test CA and the certificate files it signs.
pub struct Ca {
    dir: PathBuf,
    pub pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "agents-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca {
            dir: dir.to_path_buf(),
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// `file.pem` and `file.key`, with the SAN `san`.
    pub fn sign(&self, file: &str, san: SanType) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, file);
        params.subject_alt_names.push(san);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (pem, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&pem, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (pem, k)
    }
}
