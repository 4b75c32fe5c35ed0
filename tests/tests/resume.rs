//! Guests back after a host reboot, with real TCG guests: three guests (one on a managed
//! network), one stopped through the API; then a simulated reboot (agent stopped, every guest
//! destroyed, the tap and the network's bridge removed, a new boot id in the file the config
//! points at) brings back exactly the two that were running, tap and bridge included. A
//! restart of the agent alone starts nothing; nor does a reboot with `resume_on_boot = false`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, http_get, import_testguest, runtime, wait_for};
use hvagent_proto::v1 as pb;
use nix::sys::signal::Signal;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-00000052e5{n:02x}")
}

/// Removes the guests and the namespace even when the test fails halfway.
struct Cleanup {
    guests: Vec<String>,
    netns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for u in &self.guests {
            let _ = Command::new("virsh").args(["destroy", u]).output();
            let _ = Command::new("virsh")
                .args(["undefine", u, "--nvram"])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn domstate(uuid: &str) -> String {
    common::tool("virsh", &["domstate", uuid])
        .trim()
        .to_string()
}

/// The master of `dev` in namespace `ns`, or `None` when there is no such device.
fn master_in(ns: &str, dev: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", dev])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v.get(0)?.get("master")?.as_str()?.to_string())
}

/// The inode of the agent's stored boot id: a new one once a start has finished its resume
/// pass (the record is rewritten whole after it, whatever the pass did).
fn boot_record(store: &Path) -> Option<u64> {
    std::fs::metadata(store.join("boot_id"))
        .ok()
        .map(|m| m.ino())
}

/// Starts the agent and waits until its resume pass is over (the boot record rewritten);
/// prints how long that took from the spawn.
fn start_and_settle(agent: Agent, store: &Path, what: &str) -> Agent {
    let before = boot_record(store);
    let spawned = std::time::Instant::now();
    let agent = agent.spawn();
    wait_for(Duration::from_secs(120), "the resume pass", || {
        boot_record(store).filter(|ino| Some(*ino) != before)
    });
    eprintln!(
        "{what}: agent spawned to resume pass done in {} ms",
        spawned.elapsed().as_millis()
    );
    agent
}

/// Stops the agent, destroys every guest and removes what a reboot takes: the tap and the
/// managed network's bridge; the host's boot id changes to `boot`.
fn reboot(agent: &mut Agent, boot_id: &Path, boot: &str, ns: &str, tap: &str) {
    let (status, err) = agent.stop_with(Signal::SIGTERM);
    assert!(status.success(), "{err}");
    for n in 1..=3 {
        let _ = Command::new("virsh").args(["destroy", &uuid(n)]).output();
        assert_eq!(domstate(&uuid(n)), "shut off");
    }
    let _ = Command::new("ip")
        .args(["-n", ns, "link", "del", tap])
        .output();
    let _ = Command::new("ip")
        .args(["-n", ns, "link", "del", "br-seg"])
        .output();
    assert_eq!(master_in(ns, tap), None);
    std::fs::write(boot_id, format!("{boot}\n")).unwrap();
}

fn resumed_started(port: u16) -> Option<String> {
    http_get(port, "/metrics")
        .lines()
        .find(|l| l.starts_with("hvagent_guests_resumed_total{result=\"started\"}"))
        .map(str::to_string)
}

#[test]
fn a_host_reboot_brings_back_exactly_the_guests_that_were_running() {
    let ns = format!("hvrs-{}", std::process::id() % 100_000);
    ip(&["netns", "add", &ns]);
    let _cleanup = Cleanup {
        guests: (1..=3).map(uuid).collect(),
        netns: ns.clone(),
    };
    let agent = Agent::configure_tcg("", &format!("[network]\nnamespace = \"/run/netns/{ns}\"\n"));
    let boot_id: PathBuf = agent.dir.path().join("boot_id");
    let store = agent.dir.path().join("store");
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        text.replacen(
            "[host]\n",
            &format!("[host]\nboot_id_path = \"{}\"\n", boot_id.display()),
            1,
        ),
    )
    .unwrap();
    std::fs::write(&boot_id, "boot-1\n").unwrap();
    let port = common::free_port();
    let mut agent = start_and_settle(agent.with_metrics_port(port), &store, "first start");
    let tap = hvagent::net::nic::tap_name(&uuid(1), 0);
    let rt = runtime();
    let connect =
        |socket: PathBuf| async move { Vms::new(hvctl::client::connect(&socket).await.unwrap()) };
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        import_testguest(channel.clone()).await;
        pb::network_service_client::NetworkServiceClient::new(channel)
            .ensure(pb::EnsureNetworkRequest {
                network: Some(pb::Network {
                    name: "seg".into(),
                    kind: "bridge".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let mut vms = connect(agent.socket.clone()).await;
        for n in 1..=3 {
            vms.create(pb::CreateVmRequest {
                uuid: uuid(n),
                name: format!("resume-{n}"),
                flavor: "SCS-1Vi-0.5u".into(),
                image: "testguest".into(),
                networks: if n == 1 { vec!["seg".into()] } else { vec![] },
                ..Default::default()
            })
            .await
            .unwrap();
        }
        vms.stop(pb::StopVmRequest {
            uuid: uuid(2),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
    });
    assert_eq!(master_in(&ns, &tap).as_deref(), Some("br-seg"));

    // The host reboots: guests 1 and 3 come back, with guest 1's tap in its bridge.
    reboot(&mut agent, &boot_id, "boot-2", &ns, &tap);
    agent = start_and_settle(agent, &store, "after a reboot");
    for n in [1, 3] {
        assert_eq!(domstate(&uuid(n)), "running", "guest {n}");
    }
    assert_eq!(domstate(&uuid(2)), "shut off", "stopped by its owner");
    assert_eq!(master_in(&ns, &tap).as_deref(), Some("br-seg"), "tap back");
    let nics = common::tool("virsh", &["domiflist", &uuid(1)]);
    assert!(nics.contains(&tap), "{nics}");
    assert_eq!(
        resumed_started(port).as_deref(),
        Some("hvagent_guests_resumed_total{result=\"started\"} 2")
    );

    // The agent alone restarts (same boot id): a guest that is off stays off.
    let (status, err) = agent.stop_with(Signal::SIGTERM);
    assert!(status.success(), "{err}");
    common::tool("virsh", &["destroy", &uuid(3)]);
    agent = start_and_settle(agent, &store, "after a restart of the agent alone");
    assert_eq!(domstate(&uuid(3)), "shut off");
    assert_eq!(domstate(&uuid(1)), "running");
    assert_eq!(resumed_started(port), None, "nothing resumed");

    // Turned off: after a reboot every guest stays off.
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("{text}[guests]\nresume_on_boot = false\n"),
    )
    .unwrap();
    reboot(&mut agent, &boot_id, "boot-3", &ns, &tap);
    agent = start_and_settle(agent, &store, "after a reboot, resume_on_boot = false");
    for n in 1..=3 {
        assert_eq!(domstate(&uuid(n)), "shut off", "guest {n}");
    }

    rt.block_on(async {
        let mut vms = connect(agent.socket.clone()).await;
        for n in 1..=3 {
            vms.delete(pb::DeleteVmRequest { uuid: uuid(n) })
                .await
                .unwrap();
        }
    });
}
