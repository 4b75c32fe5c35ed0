//! libvirtd goes away under a running agent and comes back: guest calls answer UNAVAILABLE
//! meanwhile and work again once it is back, without restarting the agent. A test binary of
//! its own, so that no other test's libvirt calls run while libvirtd is down.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Agent;
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

#[test]
fn guest_calls_recover_after_libvirtd_restarts() {
    let agent = Agent::start("[host]\nkvm_device = \"/nonexistent/kvm\"\n");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = hvagent::ctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel);
        vms.list(pb::ListVmsRequest {}).await.expect("libvirt up");

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

        drop(restart);
        // The agent reconnects on its own (it checks every 2 s) and answers again.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match vms.list(pb::ListVmsRequest {}).await {
                Ok(_) => break,
                Err(s) => {
                    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                    assert!(Instant::now() < deadline, "no recovery: {s:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
}
