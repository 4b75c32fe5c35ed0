//! libvirtd goes away under a running agent and comes back: guest calls answer UNAVAILABLE
//! meanwhile and work again once it is back, without restarting the agent; the guest keeps
//! running; an event stream opened before gets a `lost` event and then the guest's events;
//! the node's health says LibvirtDisconnected and not ready meanwhile, and ready again after.
//! A test binary of its own, so that no other test's libvirt calls run while libvirtd is down.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, Cleanup, import_testguest};
use hvagent_proto::v1 as pb;
use tonic::Code;

fn libvirtd_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts libvirtd again even when the test fails halfway.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        if !libvirtd_running() {
            let _ = std::fs::remove_file("/run/libvirtd.pid");
            let _ = Command::new("libvirtd").arg("-d").status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let up = Command::new("virsh")
                .args(["-c", "qemu:///system", "version"])
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Lets a stopped libvirtd go on even when the test fails halfway.
struct Resume(nix::unistd::Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

type Node = pb::node_service_client::NodeServiceClient<tonic::transport::Channel>;

/// Polls GetHealth until `wanted` holds (at most 30 s).
async fn wait_health(node: &mut Node, wanted: impl Fn(&pb::Health) -> bool) -> pb::Health {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = node
            .get_health(pb::GetHealthRequest {})
            .await
            .expect("GetHealth answers whether libvirt does or not")
            .into_inner();
        if wanted(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "health not as wanted: {h:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition(h: &pb::Health, kind: &str) -> pb::Condition {
    h.conditions
        .iter()
        .find(|c| c.r#type == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} in {h:?}"))
}

#[test]
fn guest_calls_recover_after_libvirtd_restarts() {
    // Sampling health every second; DiskPressure off (a CI disk may be nearly full).
    let agent = Agent::configure(
        "[host]\nkvm_device = \"/nonexistent/kvm\"\n\
         [health]\ninterval_seconds = 1\ndisk_free_min_percent = 0\n",
    );
    // QEMU (an unprivileged user) must reach the guest's disks.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = agent.spawn();
    let uuid = "00000000-0000-4000-8000-0000000e7e57".to_string();
    let _cleanup = Cleanup(vec![uuid.clone()]);
    let rt = common::runtime();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel.clone());
        let mut node = pb::node_service_client::NodeServiceClient::new(channel.clone());
        import_testguest(channel).await;
        vms.create(pb::CreateVmRequest {
            uuid: uuid.clone(),
            name: "survivor".into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            ..Default::default()
        })
        .await
        .expect("create");
        let mut events = vms
            .watch_events(pb::WatchEventsRequest::default())
            .await
            .unwrap()
            .into_inner();

        // The sampler has the guest's figures before libvirtd goes.
        wait_health(&mut node, |h| h.guests.len() == 1).await;
        let restart = Restart;
        assert!(
            Command::new("pkill")
                .args(["-x", "libvirtd"])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while libvirtd_running() {
            assert!(Instant::now() < deadline, "libvirtd did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
        let down = vms.list(pb::ListVmsRequest {}).await.unwrap_err();
        assert_eq!(down.code(), Code::Unavailable, "{down:?}");
        assert!(down.message().starts_with("libvirt: "), "{down:?}");
        // The node says it cannot take guests, and why.
        let health = wait_health(&mut node, |h| !h.ready).await;
        let disconnected = condition(&health, "LibvirtDisconnected");
        assert!(disconnected.status, "{health:?}");
        assert_eq!(disconnected.reason, "Unreachable");
        let ready = condition(&health, "Ready");
        assert_eq!(ready.reason, "LibvirtDisconnected", "{ready:?}");
        assert!(ready.message.contains("libvirt"), "{ready:?}");
        // The guest is still shown, with its last figures.
        assert_eq!(health.guests.len(), 1, "{health:?}");

        drop(restart);
        // Ready again once libvirtd is back.
        let health = wait_health(&mut node, |h| h.ready).await;
        assert!(!condition(&health, "LibvirtDisconnected").status);
        // The agent reconnects on its own (it checks every 2 s) and answers again; the
        // guest kept running.
        let deadline = Instant::now() + Duration::from_secs(30);
        let listed = loop {
            match vms.list(pb::ListVmsRequest {}).await {
                Ok(r) => break r.into_inner().vms,
                Err(s) => {
                    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                    assert!(Instant::now() < deadline, "no recovery: {s:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, "running");

        // The stream opened before the restart says events were lost, then carries the
        // guest's events from the new connection.
        vms.stop(pb::StopVmRequest {
            uuid: uuid.clone(),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
        let mut seen = Vec::new();
        while !seen.iter().any(|e: &pb::VmEvent| e.kind == "stopped") {
            let next = tokio::time::timeout(Duration::from_secs(30), events.message())
                .await
                .unwrap_or_else(|_| panic!("no stop event within 30 s; saw {seen:?}"))
                .unwrap()
                .expect("stream open");
            seen.push(next);
        }
        assert_eq!(seen[0].kind, "lost", "{seen:?}");
        assert_eq!(seen[0].detail, "libvirt reconnected");
        let stopped = seen.last().unwrap();
        assert_eq!(
            (stopped.uuid.as_str(), stopped.detail.as_str()),
            (uuid.as_str(), "destroyed")
        );
        // A libvirtd that hangs (stopped, not gone): a call fails UNAVAILABLE after the
        // agent's 20 s instead of waiting for ever, and calls work again once it answers.
        let pid = std::fs::read_to_string("/run/libvirtd.pid").unwrap();
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        let resume = Resume(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let started = Instant::now();
        let hung = tokio::time::timeout(Duration::from_secs(60), vms.list(pb::ListVmsRequest {}))
            .await
            .expect("the call ends within 60 s");
        let waited = started.elapsed();
        let status = hung.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(waited >= Duration::from_secs(19), "{waited:?}: {status:?}");
        println!(
            "a call to a hung libvirtd failed after {waited:?}: {}",
            status.message()
        );
        drop(resume);
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(s) = vms.list(pb::ListVmsRequest {}).await {
            assert!(Instant::now() < deadline, "no recovery: {s:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        assert!(
            vms.delete(pb::DeleteVmRequest { uuid })
                .await
                .unwrap()
                .into_inner()
                .deleted
        );
    });
}
