//! libvirtd goes away under a running agent and comes back: guest calls answer UNAVAILABLE
//! meanwhile and work again once it is back, without restarting the agent; the guest keeps
//! running; an event stream opened before gets a `lost` event and then the guest's events;
//! the node's health says LibvirtDisconnected and not ready meanwhile, and ready again after.
//! libvirtd killed at every step of a create and a delete: after the agent restarts, each
//! guest is whole or gone. An agent that starts while libvirtd is down answers placement
//! calls UNAVAILABLE until it has rebuilt placement from the running guests' claims.
//! A test binary of its own, so that no other test's libvirt calls run while libvirtd is down;
//! its tests take turns (`ONE_AT_A_TIME`).

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

/// Starts libvirtd if it is not running and waits until it answers (at most 30 s).
fn start_libvirtd() {
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

/// Starts libvirtd again even when the test fails halfway.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        start_libvirtd();
    }
}

/// Lets a stopped libvirtd go on even when the test fails halfway.
struct Resume(nix::unistd::Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// The tests here stop libvirtd: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Kills libvirtd (SIGKILL: no clean-up of its own) and waits until it is gone.
fn kill_libvirtd() {
    let _ = Command::new("pkill")
        .args(["-KILL", "-x", "libvirtd"])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while libvirtd_running() {
        assert!(Instant::now() < deadline, "libvirtd did not die");
        std::thread::sleep(Duration::from_millis(50));
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
    let _turn = one_at_a_time();
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

/// libvirtd dies (SIGKILL) at a different instant of a create, then of a delete; libvirtd and
/// the agent start again. Each guest is then whole (domain, files, claim, listed) or gone.
#[test]
fn libvirtd_killed_mid_create_or_delete_leaves_guests_whole_or_gone() {
    let _turn = one_at_a_time();
    let mut agent = Agent::configure_tcg("orphan_grace_seconds = 0\n", "").spawn();
    let ids: Vec<String> = (0..6)
        .map(|n| format!("00000000-0000-4000-8000-0000000c7a{n:02x}"))
        .collect();
    let _cleanup = Cleanup(ids.clone());
    let _restart = Restart;
    let rt = common::runtime();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        import_testguest(channel).await;
    });
    let instants_ms = [0u64, 20, 60, 150, 300, 600];
    for (i, (id, at)) in ids.iter().zip(instants_ms).enumerate() {
        let socket = agent.socket.clone();
        let req = pb::CreateVmRequest {
            uuid: id.clone(),
            name: format!("lvkill-{i}"),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            ..Default::default()
        };
        let create = std::thread::spawn(move || {
            common::runtime().block_on(async move {
                let channel = hvctl::client::connect(&socket).await.unwrap();
                pb::vm_service_client::VmServiceClient::new(channel)
                    .create(req)
                    .await
                    .map(|_| ())
            })
        });
        std::thread::sleep(Duration::from_millis(at));
        kill_libvirtd();
        let answer = create.join().unwrap();
        start_libvirtd();
        let (_, _) = agent.stop_with(nix::sys::signal::Signal::SIGKILL);
        agent = agent.spawn();
        let when = format!("libvirtd killed {at} ms into create {i} (answered {answer:?})");
        rt.block_on(common::whole_or_gone(&agent, &ids[..=i], &when));
    }
    // Deletes, each of a guest that is whole now.
    let alive: Vec<String> = rt.block_on(common::whole_or_gone(&agent, &ids, "before the deletes"));
    for (i, id) in alive.iter().enumerate() {
        let socket = agent.socket.clone();
        let uuid = id.clone();
        let delete = std::thread::spawn(move || {
            common::runtime().block_on(async move {
                let channel = hvctl::client::connect(&socket).await.unwrap();
                pb::vm_service_client::VmServiceClient::new(channel)
                    .delete(pb::DeleteVmRequest { uuid })
                    .await
                    .map(|r| r.into_inner().deleted)
            })
        });
        let at = instants_ms[i % instants_ms.len()] / 3;
        std::thread::sleep(Duration::from_millis(at));
        kill_libvirtd();
        let answer = delete.join().unwrap();
        start_libvirtd();
        let (_, _) = agent.stop_with(nix::sys::signal::Signal::SIGKILL);
        agent = agent.spawn();
        let when = format!("libvirtd killed {at} ms into the delete of {id} (answered {answer:?})");
        rt.block_on(common::whole_or_gone(&agent, &ids, &when));
    }
}

/// An agent that starts while libvirtd is down knows no guest's claim: Reserve, ListClaims and
/// GetCapacity answer UNAVAILABLE until libvirtd is back and placement has been rebuilt, and
/// then the running guest's claim is there.
#[test]
fn placement_waits_for_libvirt_at_start() {
    let _turn = one_at_a_time();
    let mut agent = Agent::configure_tcg("", "").spawn();
    let uuid = "00000000-0000-4000-8000-0000000c7b01".to_string();
    let _cleanup = Cleanup(vec![uuid.clone()]);
    let rt = common::runtime();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        import_testguest(channel.clone()).await;
        pb::vm_service_client::VmServiceClient::new(channel)
            .create(pb::CreateVmRequest {
                uuid: uuid.clone(),
                name: "waits".into(),
                flavor: "SCS-1Ci-0.5u".into(),
                image: "testguest".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    let restart = Restart;
    kill_libvirtd();
    agent = agent.spawn();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut placement =
            pb::placement_service_client::PlacementServiceClient::new(channel.clone());
        let mut node = pb::node_service_client::NodeServiceClient::new(channel);
        let e = placement
            .list_claims(pb::ListClaimsRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().starts_with("placement: not yet rebuilt"),
            "{e:?}"
        );
        let e = placement
            .reserve(pb::ReserveRequest {
                vm_uuid: "00000000-0000-4000-8000-0000000c7b02".into(),
                request_id: "r".into(),
                flavor: "SCS-1Ci-0.5u".into(),
                ttl_seconds: 60,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        let e = node
            .get_capacity(pb::GetCapacityRequest {
                flavors: vec!["SCS-1Ci-0.5u".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        // Bad input is still named as such.
        let e = placement
            .reserve(pb::ReserveRequest {
                flavor: "nonsense".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        drop(restart);
        let deadline = Instant::now() + Duration::from_secs(60);
        let claims = loop {
            match placement.list_claims(pb::ListClaimsRequest {}).await {
                Ok(r) => break r.into_inner().claims,
                Err(s) => {
                    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                    assert!(Instant::now() < deadline, "placement never rebuilt: {s:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert_eq!(
            claims
                .iter()
                .map(|c| c.vm_uuid.as_str())
                .collect::<Vec<_>>(),
            [uuid.as_str()]
        );
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        assert!(
            pb::vm_service_client::VmServiceClient::new(channel)
                .delete(pb::DeleteVmRequest { uuid: uuid.clone() })
                .await
                .unwrap()
                .into_inner()
                .deleted
        );
    });
}
