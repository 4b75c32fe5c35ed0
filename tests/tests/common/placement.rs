//! A real OpenStack Placement (`tests/python/placement_server.py`: the PyPI package on SQLite,
//! `noauth2` or behind a real Keystone, `tests/python/keystone_server.py`) in a temporary
//! directory, stopped when dropped, and a small HTTP client for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The microversion the tests speak (the agent's own: consumer generations and types).
pub const MICROVERSION: &str = "placement 1.39";

pub struct Placement {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// An admin's token: `admin` for `noauth2`, else a Keystone token of user admin.
    pub token: String,
    /// Keystone's URL when Placement validates tokens there.
    keystone: Option<String>,
    child: Option<Child>,
}

/// A real Keystone with user `admin` and an application credential of it.
pub struct Keystone {
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` (the API is under `/v3`).
    pub url: String,
    /// A token of user admin, scoped to project admin.
    pub admin_token: String,
    /// `id = "..."`, `secret = "..."`: the agent's `credential_file`.
    pub credential_file: std::path::PathBuf,
    child: Child,
}

impl Keystone {
    /// Starts Keystone, or `None` with the reason printed where the package is missing
    /// (`make python` installs it).
    pub fn start() -> Option<Keystone> {
        if !python_has("keystone.server.wsgi", "keystone") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("python3");
        cmd.arg(super::repo_root().join("tests/python/keystone_server.py"))
            .arg(dir.path());
        let (child, port) = spawn_ready(cmd, &dir.path().join("keystone.log"));
        let admin_token =
            std::fs::read_to_string(dir.path().join("admin-token")).expect("admin-token");
        Some(Keystone {
            url: format!("http://127.0.0.1:{port}"),
            credential_file: dir.path().join("credential.toml"),
            admin_token,
            dir,
            child,
        })
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether python3 imports `module`; if not, prints why the test is skipped.
fn python_has(module: &str, package: &str) -> bool {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    let found = probe.is_ok_and(|o| o.status.success());
    if !found {
        println!(
            "SKIP: the {package} package is not installed for python3 (make python installs it)"
        );
    }
    found
}

/// Spawns a server script that prints `READY <port>` once it serves (stderr to `log`); waits
/// 90 s at most for it.
fn spawn_ready(mut cmd: Command, log: &std::path::Path) -> (Child, u16) {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("server log");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .expect("start server script");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The first line that says READY (anything a library prints before it is skipped).
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.starts_with("READY ") {
            line.clear();
        }
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_default();
    match line
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
    {
        Some(port) => (child, port),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not start: {line:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// An answer: status and JSON body (`null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Placement {
    /// Starts Placement with `noauth2`, or `None` with the reason printed where the package is
    /// missing (`make python` installs it).
    pub fn start() -> Option<Placement> {
        Placement::start_with(None)
    }

    /// Starts Placement validating tokens at `keystone` (writes need Keystone's admin role).
    pub fn start_behind(keystone: &Keystone) -> Option<Placement> {
        Placement::start_with(Some(keystone))
    }

    fn start_with(keystone: Option<&Keystone>) -> Option<Placement> {
        if !python_has("placement.wsgi", "openstack-placement") {
            return None;
        }
        let mut placement = Placement {
            dir: tempfile::tempdir().expect("tempdir"),
            port: 0,
            url: String::new(),
            token: keystone.map_or("admin".into(), |k| k.admin_token.clone()),
            keystone: keystone.map(|k| k.url.clone()),
            child: None,
        };
        placement.run();
        Some(placement)
    }

    /// Starts the server (again) on the same directory (database) and, after the first
    /// start, the same port.
    fn run(&mut self) {
        let mut cmd = Command::new("python3");
        cmd.arg(super::repo_root().join("tests/python/placement_server.py"))
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .args(self.keystone.iter());
        let (child, port) = spawn_ready(cmd, &self.dir.path().join("placement.log"));
        self.port = port;
        self.url = format!("http://127.0.0.1:{port}");
        self.child = Some(child);
    }

    /// Stops the server; the database stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Its request log (one line per request) and errors.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("placement.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None)
    }

    pub fn put(&self, path: &str, body: &serde_json::Value) -> Answer {
        self.call("PUT", path, Some(body))
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Answer {
        self.call("POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, None)
    }

    /// One HTTP/1.1 call (connection closed after it) with the admin token and microversion.
    pub fn call(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Answer {
        self.call_as(&self.token, method, path, body)
    }

    /// The same with another token.
    pub fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Answer {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to placement");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Auth-Token: {}\r\nOpenStack-API-Version: {MICROVERSION}\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            token,
            body.len()
        )
        .expect("send request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read answer");
        let (head, text) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {raw:?}"));
        let body = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
        };
        Answer { status, body }
    }

    /// The provider named `name`: (uuid, generation), if it exists.
    pub fn provider(&self, name: &str) -> Option<(String, u64)> {
        let a = self.get(&format!("/resource_providers?name={name}"));
        assert_eq!(a.status, 200, "{a:?}");
        a.body["resource_providers"].as_array()?.first().map(|p| {
            (
                p["uuid"].as_str().expect("uuid").to_string(),
                p["generation"].as_u64().expect("generation"),
            )
        })
    }

    /// What each consumer holds on the provider `uuid`: consumer → {class: amount}.
    pub fn allocations(&self, uuid: &str) -> serde_json::Map<String, serde_json::Value> {
        let a = self.get(&format!("/resource_providers/{uuid}/allocations"));
        assert_eq!(a.status, 200, "{a:?}");
        a.body["allocations"]
            .as_object()
            .expect("allocations")
            .iter()
            .map(|(c, v)| (c.clone(), v["resources"].clone()))
            .collect()
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.stop();
    }
}
