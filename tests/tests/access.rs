//! Who may call what on the Unix socket: real local users (made by the test) run the real
//! hvctl against the real agent; roles come from their groups; every mutating call, allowed or
//! denied, is exactly one line in the audit log.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{Agent, bin, stderr, stdout};

const SOCKET_GROUP: &str = "hvtest-sock";
const READERS: &str = "hvtest-read";

/// Makes a group and a user in the given groups, if missing.
fn ensure_user(user: &str, groups: &[&str]) {
    // Tests run in parallel; useradd refuses to run beside another useradd.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for g in groups {
        let _ = Command::new("groupadd").args(["-f", g]).status();
    }
    if Command::new("id")
        .arg(user)
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return;
    }
    let out = Command::new("useradd")
        .args([
            "-M",
            "-N",
            "-s",
            "/usr/sbin/nologin",
            "-G",
            &groups.join(","),
            user,
        ])
        .output()
        .expect("useradd (the test makes its own users)");
    assert!(out.status.success(), "useradd {user}: {}", stderr(&out));
}

/// hvctl as `user` (its own uid, gid and groups), from a copy every user may run.
fn hvctl_as(user: &str, hvctl: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={}", primary_gid(user)),
            "--init-groups",
            "--",
        ])
        .arg(hvctl)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

fn primary_gid(user: &str) -> String {
    String::from_utf8(
        Command::new("id")
            .args(["-g", user])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string()
}

#[test]
fn local_callers_get_the_roles_of_their_groups_and_every_mutation_is_audited() {
    ensure_user("hvtest-reader", &[SOCKET_GROUP, READERS]);
    ensure_user("hvtest-outsider", &[SOCKET_GROUP]);
    let agent = Agent::configure("");
    let audit = agent.dir.path().join("audit.log");
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!(
            "{config}[access]\nsocket_group = \"{SOCKET_GROUP}\"\nunix_groups = {{ {READERS} = \"reader\" }}\naudit_log = \"{}\"\n",
            audit.display()
        ),
    )
    .unwrap();
    // Other users must reach the socket's directory and run hvctl.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = agent.spawn();
    let tools = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let hvctl = tools.path().join("hvctl");
    std::fs::copy(bin("hvctl"), &hvctl).unwrap();
    std::fs::set_permissions(&hvctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gone = "00000000-0000-4000-8000-0000000acce5";

    // A reader: inventory yes, delete no (naming the role needed).
    let out = hvctl_as(
        "hvtest-reader",
        &hvctl,
        &agent.socket,
        &["node", "capacity", "SCS-1Vi-2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = hvctl_as(
        "hvtest-reader",
        &hvctl,
        &agent.socket,
        &["vm", "delete", gone],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(
        err.contains("hvagent.v1.VmService/Delete needs role controller")
            && err.contains("has role reader"),
        "{err}"
    );
    // In the socket's group but in no group with a role: nothing at all.
    let out = hvctl_as(
        "hvtest-outsider",
        &hvctl,
        &agent.socket,
        &["node", "capacity", "SCS-1Vi-2"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("needs role reader") && err.contains("has no role"),
        "{err}"
    );
    // Root is controller.
    let out = agent.hvctl(&["vm", "delete", gone]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "nothing to delete\n");
    // Typing into a guest's console needs an operator: a reader is refused before any guest
    // is looked at.
    let out = hvctl_as(
        "hvtest-reader",
        &hvctl,
        &agent.socket,
        &["vm", "console", gone, "--attach"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("hvagent.v1.VmService/Console needs role operator")
            && err.contains("has role reader"),
        "{err}"
    );

    // Exactly one line per mutating call: the reader's denied delete, root's delete and the
    // reader's denied console; reads are not audited.
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let reader_uid = String::from_utf8(
        Command::new("id")
            .args(["-u", "hvtest-reader"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert!(
        lines[0]["who"]
            .as_str()
            .unwrap()
            .starts_with(&format!("uid={reader_uid} ")),
        "{text}"
    );
    assert_eq!(lines[0]["role"], "reader");
    assert_eq!(lines[0]["method"], "hvagent.v1.VmService/Delete");
    assert_eq!(lines[0]["target"], gone);
    assert_eq!(lines[0]["result"], "PERMISSION_DENIED");
    assert!(
        lines[1]["who"].as_str().unwrap().starts_with("uid=0 "),
        "{text}"
    );
    assert_eq!(lines[1]["role"], "controller");
    assert_eq!(lines[1]["result"], "OK");
    assert_eq!(lines[1]["from"], "unix");
    assert_eq!(lines[2]["method"], "hvagent.v1.VmService/Console");
    assert_eq!(lines[2]["target"], gone);
    assert_eq!(lines[2]["result"], "PERMISSION_DENIED");
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A member of the socket's group cannot make the agent hold more than its share of local
/// connections, nor hold silent ones: 100 silent connections of one user hold at most
/// `MAX_LOCAL_CONNECTIONS_PER_USER`, root's own (never limited) still get in, and every silent
/// one is closed after `FIRST_BYTES_TIMEOUT`.
#[test]
fn local_users_hold_a_bounded_number_of_connections_and_silent_ones_are_closed() {
    use hvagent::daemon::listener::{FIRST_BYTES_TIMEOUT, MAX_LOCAL_CONNECTIONS_PER_USER};
    use std::io::BufRead;
    use std::time::Duration;
    ensure_user("hvtest-outsider", &[SOCKET_GROUP]);
    let agent = Agent::configure("");
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("{config}[access]\nsocket_group = \"{SOCKET_GROUP}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = agent.spawn();
    let pid = agent.pid();
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // The agent's own descriptors (its libvirt connection among them) opened first.
    let out = agent.hvctl(&["vm", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = descriptors();

    // 100 connections of one user, which say nothing (perl: in every Debian, for any user).
    let script = "use IO::Socket::UNIX; \
        my @s = map { IO::Socket::UNIX->new(Peer => $ARGV[0]) or die \"connect: $!\" } 1..100; \
        $| = 1; print \"connected\\n\"; sleep 60;";
    let mut user = Command::new("setpriv")
        .args([
            "--reuid=hvtest-outsider",
            &format!("--regid={}", primary_gid("hvtest-outsider")),
            "--init-groups",
            "--",
            "/usr/bin/perl",
            "-e",
            script,
        ])
        .arg(&agent.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv and perl");
    let mut line = String::new();
    std::io::BufReader::new(user.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "connected");
    // Root's, 100 silent ones too: not limited.
    let root: Vec<std::os::unix::net::UnixStream> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&agent.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = descriptors();
    println!("agent descriptors: {before} before, {during} with 100 + 100 silent connections");
    assert!(
        during >= before + root.len()
            && during <= before + root.len() + MAX_LOCAL_CONNECTIONS_PER_USER + 8,
        "{during} descriptors open, {before} before"
    );
    let out = agent.hvctl(&["vm", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));

    std::thread::sleep(FIRST_BYTES_TIMEOUT + Duration::from_secs(1));
    let after = descriptors();
    let _ = user.kill();
    let _ = user.wait();
    println!("agent descriptors: {after} once the silent ones were closed");
    assert!(after <= before + 2, "{after} descriptors, {before} before");
    let out = agent.hvctl(&["vm", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
