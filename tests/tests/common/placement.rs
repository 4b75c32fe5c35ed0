//! A real OpenStack Placement (`tests/python/placement_server.py`: the PyPI package on SQLite,
//! `noauth2`) in a temporary directory, stopped when dropped, and a small HTTP client for it.

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
    /// What `noauth2` takes for an admin.
    pub token: &'static str,
    child: Option<Child>,
}

/// An answer: status and JSON body (`null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Placement {
    /// Starts Placement, or `None` with the reason printed where the package is missing
    /// (`make python` installs it).
    pub fn start() -> Option<Placement> {
        let probe = Command::new("python3")
            .args(["-c", "import placement.wsgi"])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            println!(
                "SKIP: openstack-placement is not installed for python3 (make python installs it)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut placement = Placement {
            dir,
            port: 0,
            url: String::new(),
            token: "admin",
            child: None,
        };
        placement.run();
        Some(placement)
    }

    /// Starts the server (again) on the same directory (database) and, after the first
    /// start, the same port.
    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("placement.log"))
            .expect("placement log");
        let mut child = Command::new("python3")
            .arg(super::repo_root().join("tests/python/placement_server.py"))
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start placement_server.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_default();
        let Some(port) = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("placement did not start: {line:?}\n{}", self.log());
        };
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
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to placement");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Auth-Token: {}\r\nOpenStack-API-Version: {MICROVERSION}\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.token,
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
