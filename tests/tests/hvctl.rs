//! The real `hvctl` against the real agent: output formats, help, and every connection error.

mod common;

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::process::Command;

use common::{Agent, bin, code, hvctl_at, stderr, stdout};

#[test]
fn inventory_as_table_and_as_json() {
    let agent = Agent::start("");
    let table = agent.hvctl(&["node", "inventory"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    for heading in [
        "topology",
        "NUMA  CPUS",
        "CPU  ONLINE  SOCKET",
        "RESOURCE",
        "traits",
    ] {
        assert!(text.contains(heading), "missing {heading:?} in:\n{text}");
    }
    let json = agent.inventory_json();
    // Stable keys: the proto field names.
    for key in [
        "cpu",
        "memory",
        "numa_nodes",
        "hypervisor",
        "scs",
        "scheduler",
        "warnings",
    ] {
        assert!(json.get(key).is_some(), "missing key {key}");
    }
    let threads = json["cpu"]["threads"].as_u64().unwrap();
    assert!(text.contains(&format!("{threads} thread(s)")), "{text}");
}

#[test]
fn missing_socket_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let out = hvctl_at(&socket, &["node", "inventory"]);
    assert_eq!(code(&out.status), 3);
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "hvctl: cannot connect to {}: no such socket (is hvagent running? start it with `make run` or `systemctl start hvagent`)",
            socket.display()
        )
    );
}

#[test]
fn stale_socket_says_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    drop(UnixListener::bind(&socket).unwrap());
    let out = hvctl_at(&socket, &["node", "inventory"]);
    assert_eq!(code(&out.status), 3);
    assert!(
        stderr(&out).contains("nothing is listening"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn permission_denied_names_the_socket() {
    let agent = Agent::start("");
    // The agent's socket is 0660 root:root; an unprivileged user may not connect.
    std::fs::set_permissions(
        agent.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        agent.socket.parent().unwrap(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("hvctl"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["node", "inventory"])
        .output()
        .expect("setpriv (util-linux) runs hvctl as nobody");
    assert_eq!(code(&out.status), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "cannot connect to {}: permission denied",
            agent.socket.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_socket_that_is_not_an_agent_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("other.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // A peer that answers with something other than HTTP/2, like a random service would.
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let out = hvctl_at(&socket, &["node", "inventory"]);
    assert_eq!(code(&out.status), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{} is not an hvagent:", socket.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_explains_each_command() {
    let out = Command::new(bin("hvctl")).arg("--help").output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success());
    for needle in [
        "node",
        "placement",
        "plan",
        "--socket <PATH>",
        "--output <OUTPUT>",
        "Exit status",
        "/run/hvagent/hvagent.sock",
    ] {
        assert!(text.contains(needle), "missing {needle:?}:\n{text}");
    }
    let out = Command::new(bin("hvctl"))
        .args(["node", "--help"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("inventory"), "{}", stdout(&out));
    assert!(stdout(&out).contains("capacity"), "{}", stdout(&out));
    let out = Command::new(bin("hvctl"))
        .args(["plan", "--help"])
        .output()
        .unwrap();
    for needle in [
        "--root <DIR>",
        "--config <FILE>",
        "--flavor <NAME=COUNT>",
        "captured sysfs/procfs tree",
    ] {
        assert!(
            stdout(&out).contains(needle),
            "missing {needle:?}: {}",
            stdout(&out)
        );
    }
    let out = Command::new(bin("hvctl"))
        .args(["node", "inventory", "--help"])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("Hardware inventory"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bad_command_lines_exit_2() {
    let out = Command::new(bin("hvctl"))
        .args(["--output", "yaml", "node", "inventory"])
        .output()
        .unwrap();
    assert_eq!(code(&out.status), 2);
    assert!(
        stderr(&out).contains("invalid value 'yaml'"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(bin("hvctl"))
        .args(["node", "bogus"])
        .output()
        .unwrap();
    assert_eq!(code(&out.status), 2);
}

#[test]
fn agent_on_a_captured_tree_reports_that_machine() {
    // [host] sysfs_root points the real agent at a tree captured from a 2-socket QEMU guest.
    let fixture = common::repo_root().join("agent/tests/fixtures/qemu-2s4c2t-numa");
    let agent = Agent::start(&format!("[host]\nsysfs_root = \"{}\"\n", fixture.display()));
    let inv = agent.inventory_json();
    assert_eq!(inv["cpu"]["sockets"], 2);
    assert_eq!(inv["cpu"]["cores"], 8);
    assert_eq!(inv["cpu"]["threads"], 16);
    assert_eq!(
        inv["numa_nodes"][1]["cpus"],
        serde_json::json!([8, 9, 10, 11, 12, 13, 14, 15])
    );
    assert_eq!(
        inv["numa_nodes"][1]["hugepages"][1]["page_size_kib"],
        1_048_576
    );
    assert_eq!(inv["numa_nodes"][1]["hugepages"][1]["total"], 1);
    let table = stdout(&agent.hvctl(&["node", "inventory"]));
    assert!(
        table.contains("2 socket(s), 2 die(s), 8 core(s), 16 thread(s), SMT on"),
        "{table}"
    );
    assert!(table.contains("2M: 32/32 free, 1G: 1/1 free"), "{table}");
}
