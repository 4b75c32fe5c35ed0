//! Stopping the agent never touches guests: a real TCG guest started through libvirt keeps
//! running across an agent's whole life and its SIGTERM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, code, repo_root};
use nix::sys::signal::Signal;

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh")
}

/// Destroys the transient guest even when the test fails.
struct Guest(String);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
    }
}

#[test]
fn guest_keeps_running_when_the_agent_stops() {
    let image = repo_root().join("images/out");
    for file in ["vmlinuz", "initramfs.img"] {
        assert!(
            image.join(file).exists(),
            "{} missing: build the test guest with images/build.sh (make test does)",
            image.join(file).display()
        );
    }
    // QEMU runs as an unprivileged user: give it a world-readable copy and a console log path.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in ["vmlinuz", "initramfs.img"] {
        std::fs::copy(image.join(file), dir.path().join(file)).unwrap();
    }
    let name = format!("hvagent-e2e-survive-{}", std::process::id());
    let console = dir.path().join("console.log");
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{k}</kernel><initrd>{i}</initrd>\
         <cmdline>console=ttyS0 no_timer_check</cmdline></os><on_poweroff>destroy</on_poweroff>\
         <devices><serial type='file'><source path='{c}'/><target port='0'/></serial>\
         <console type='file'><source path='{c}'/><target type='serial' port='0'/></console>\
         </devices></domain>",
        k = dir.path().join("vmlinuz").display(),
        i = dir.path().join("initramfs.img").display(),
        c = console.display(),
    );
    let xml_path = dir.path().join("guest.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let out = virsh(&["create", xml_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "virsh create: {}",
        common::stderr(&out)
    );
    let guest = Guest(name.clone());
    let pid_of_guest = || {
        let out = Command::new("pgrep")
            .args(["-f", &format!("guest={name}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let qemu_pid = pid_of_guest();
    assert!(!qemu_pid.is_empty(), "QEMU process of the guest");

    let mut agent = Agent::start("");
    assert!(
        agent.inventory_json()["hypervisor"]["libvirt_connected"]
            .as_bool()
            .unwrap()
    );
    let (status, err) = agent.stop_with(Signal::SIGTERM);
    assert_eq!(code(&status), 0, "{err}");

    // The same QEMU process still runs the guest, and the guest reaches userspace.
    let state = virsh(&["domstate", &name]);
    assert_eq!(common::stdout(&state).trim(), "running");
    assert_eq!(
        pid_of_guest(),
        qemu_pid,
        "the guest's QEMU was not restarted"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("HVAGENT-GUEST-READY") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "guest did not boot; console:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(guest);
}
