//! Resize end to end: the real agent resizes real TCG guests of the test image through the
//! real libvirtd and qemu-img, and the guest reports what it sees on its console. A revert
//! restores the exact definition and claim, a confirm frees the old claim, refused resizes
//! change nothing, and an agent killed in the middle leaves the guest before or after.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, Cleanup, repo_root, runtime, stderr, stdout, virsh};
use hvagent_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

type Vms = pb::vm_service_client::VmServiceClient<Channel>;
type Placement = pb::placement_service_client::PlacementServiceClient<Channel>;
type Node = pb::node_service_client::NodeServiceClient<Channel>;

const GIB: u64 = 1 << 30;
const SMALL: &str = "SCS-1Vi-0.5u-5";
const BIG: &str = "SCS-2Vi-1u-10";
/// Flavors whose capacity shows what the claims leave free.
const PROBES: [&str; 3] = ["SCS-1Vi-0.5u", "SCS-2Vi-2u", "SCS-1Vi-1u-5"];

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{:012x}", 0x4e0000 + n)
}

struct Clients {
    vms: Vms,
    placement: Placement,
    node: Node,
}

async fn clients(agent: &Agent) -> Clients {
    let channel = hvctl::client::connect(&agent.socket).await.unwrap();
    Clients {
        vms: pb::vm_service_client::VmServiceClient::new(channel.clone()),
        placement: pb::placement_service_client::PlacementServiceClient::new(channel.clone()),
        node: pb::node_service_client::NodeServiceClient::new(channel),
    }
}

async fn import_testguest(agent: &Agent) {
    let image = repo_root().join("images/out/testguest.qcow2");
    assert!(
        image.exists(),
        "{} missing: build it with images/build.sh (make test does)",
        image.display()
    );
    let channel = hvctl::client::connect(&agent.socket).await.unwrap();
    pb::image_service_client::ImageServiceClient::new(channel)
        .import(pb::ImportImageRequest {
            name: "testguest".into(),
            source_path: image.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn create(vms: &mut Vms, uuid: &str, name: &str) {
    vms.create(pb::CreateVmRequest {
        uuid: uuid.into(),
        name: name.into(),
        flavor: SMALL.into(),
        image: "testguest".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn get(vms: &mut Vms, uuid: &str) -> pb::Vm {
    vms.get(pb::GetVmRequest { uuid: uuid.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn resize(vms: &mut Vms, uuid: &str, flavor: &str) -> Result<pb::Vm, tonic::Status> {
    vms.resize(pb::ResizeVmRequest {
        uuid: uuid.into(),
        flavor: flavor.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn revert(vms: &mut Vms, uuid: &str) -> Result<pb::Vm, tonic::Status> {
    vms.revert_resize(pb::RevertResizeVmRequest { uuid: uuid.into() })
        .await
        .map(tonic::Response::into_inner)
}

async fn confirm(vms: &mut Vms, uuid: &str) -> Result<pb::Vm, tonic::Status> {
    vms.confirm_resize(pb::ConfirmResizeVmRequest { uuid: uuid.into() })
        .await
        .map(tonic::Response::into_inner)
}

/// Every claim, waiting while placement is still being rebuilt (after a restart).
async fn claims(placement: &mut Placement) -> Vec<pb::Claim> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match placement.list_claims(pb::ListClaimsRequest {}).await {
            Ok(r) => return r.into_inner().claims,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(Instant::now() < deadline, "placement never rebuilt: {s:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn capacity(node: &mut Node, flavors: &[&str]) -> Vec<(String, u64)> {
    node.get_capacity(pb::GetCapacityRequest {
        flavors: flavors.iter().map(|f| f.to_string()).collect(),
    })
    .await
    .unwrap()
    .into_inner()
    .flavors
    .into_iter()
    .map(|f| (f.flavor, f.more))
    .collect()
}

fn inactive_xml(uuid: &str) -> String {
    virsh(&["dumpxml", "--inactive", uuid])
}

fn domstate(uuid: &str) -> String {
    virsh(&["domstate", uuid]).trim().to_string()
}

/// libvirt's id of the running domain: a new one at every start.
fn domid(uuid: &str) -> String {
    virsh(&["domid", uuid]).trim().to_string()
}

/// The serial console log from byte `offset` of the whole log on (within its last 1 MiB).
async fn console_from(vms: &mut Vms, uuid: &str, offset: u64) -> String {
    let log = vms
        .get_console_log(pb::GetConsoleLogRequest {
            uuid: uuid.into(),
            max_bytes: 1 << 20,
        })
        .await
        .unwrap()
        .into_inner();
    let skip = (log.data.len() as u64).saturating_sub(log.total_bytes.saturating_sub(offset));
    String::from_utf8_lossy(&log.data[skip as usize..]).into_owned()
}

async fn console_size(vms: &mut Vms, uuid: &str) -> u64 {
    vms.get_console_log(pb::GetConsoleLogRequest {
        uuid: uuid.into(),
        max_bytes: 1,
    })
    .await
    .unwrap()
    .into_inner()
    .total_bytes
}

/// Waits until the guest reports ready after byte `offset` of its console log; returns its
/// report from there.
async fn ready_after(vms: &mut Vms, uuid: &str, offset: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let text = console_from(vms, uuid, offset).await;
        if text.contains("HVAGENT-GUEST-READY") {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "guest {uuid} not ready within 240 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The value of `hvagent.KEY=` in a guest's report.
fn reported(report: &str, key: &str) -> u64 {
    let prefix = format!("hvagent.{key}=");
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{report}"))
}

/// What the resize leaves in the guest's directory besides its own files.
fn leftovers(agent: &Agent, uuid: &str) -> Vec<String> {
    let dir = agent.dir.path().join("store/vms").join(uuid);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("resize"))
        .collect();
    names.sort();
    names
}

/// The claim of `vm`, and the claims of others.
fn split(claims: Vec<pb::Claim>, vm: &str) -> (Option<pb::Claim>, Vec<pb::Claim>) {
    let (mine, others): (Vec<_>, Vec<_>) = claims.into_iter().partition(|c| c.vm_uuid == vm);
    (mine.into_iter().next(), others)
}

#[test]
fn resize_up_revert_and_confirm() {
    let agent = Agent::configure_tcg("", "").spawn();
    let id = uuid(1);
    let _cleanup = Cleanup(vec![id.clone()]);
    runtime().block_on(async {
        let Clients {
            mut vms,
            mut placement,
            mut node,
        } = clients(&agent).await;
        import_testguest(&agent).await;
        // What the node has free with one guest of the new flavor and nothing else.
        let reference = uuid(99);
        placement
            .reserve(pb::ReserveRequest {
                request_id: "resize-reference".into(),
                vm_uuid: reference.clone(),
                flavor: BIG.into(),
                ttl_seconds: 60,
            })
            .await
            .unwrap();
        let with_big_only = capacity(&mut node, &PROBES).await;
        placement
            .release(pb::ReleaseRequest { vm_uuid: reference })
            .await
            .unwrap();

        create(&mut vms, &id, "resize-up").await;
        let report = ready_after(&mut vms, &id, 0).await;
        assert_eq!(reported(&report, "vcpus"), 1);
        assert_eq!(reported(&report, "root_disk_bytes"), 5 * GIB);
        let small_kib = reported(&report, "memory_kib");
        let old_xml = inactive_xml(&id);
        let old_claims = claims(&mut placement).await;
        assert_eq!(old_claims.len(), 1);

        // Up, through hvctl: the guest runs the new flavor, both claims are held.
        let offset = console_size(&mut vms, &id).await;
        let out = agent.hvctl(&["vm", "resize", "resize-up", "--flavor", BIG]);
        assert!(out.status.success(), "{}", stderr(&out));
        let shown = stdout(&out);
        assert!(
            shown.contains(&format!("{BIG} (resize from {SMALL} pending)")),
            "{shown}"
        );
        let vm = get(&mut vms, &id).await;
        assert_eq!(
            (vm.state.as_str(), vm.flavor.as_str(), vm.resize_pending),
            ("running", BIG, true)
        );
        assert_eq!(vm.old_flavor, SMALL);
        assert_eq!(vm.root_disk_gb, 10);
        let report = ready_after(&mut vms, &id, offset).await;
        assert_eq!(reported(&report, "vcpus"), 2);
        assert_eq!(reported(&report, "root_disk_bytes"), 10 * GIB);
        let big_kib = reported(&report, "memory_kib");
        assert!(
            big_kib > small_kib + 400 * 1024,
            "memory {small_kib} KiB → {big_kib} KiB"
        );
        let (new_claim, held) = split(claims(&mut placement).await, &id);
        assert_eq!(new_claim.map(|c| c.flavor).as_deref(), Some(BIG));
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(
            pb::Claim {
                vm_uuid: id.clone(),
                ..held[0].clone()
            },
            old_claims[0],
            "the old claim is kept as it was, under its holder"
        );
        assert_eq!(leftovers(&agent, &id), ["resize-root.qcow2", "resize.json"]);

        // Revert: the definition and the claim exactly as before, the old disk back.
        let offset = console_size(&mut vms, &id).await;
        let vm = revert(&mut vms, &id).await.unwrap();
        assert_eq!(
            (vm.state.as_str(), vm.flavor.as_str(), vm.resize_pending),
            ("running", SMALL, false)
        );
        assert_eq!(inactive_xml(&id), old_xml);
        assert_eq!(claims(&mut placement).await, old_claims);
        assert!(leftovers(&agent, &id).is_empty());
        let report = ready_after(&mut vms, &id, offset).await;
        assert_eq!(reported(&report, "vcpus"), 1);
        assert_eq!(reported(&report, "root_disk_bytes"), 5 * GIB);

        // Up again and confirmed, through hvctl: the old claim is gone, and the node has as
        // much free as with one guest of the new flavor alone.
        resize(&mut vms, &id, BIG).await.unwrap();
        let out = agent.hvctl(&["vm", "resize-confirm", "resize-up"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let vm = get(&mut vms, &id).await;
        assert_eq!(
            (vm.state.as_str(), vm.flavor.as_str(), vm.resize_pending),
            ("running", BIG, false)
        );
        let now = claims(&mut placement).await;
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(
            (now[0].vm_uuid.as_str(), now[0].flavor.as_str()),
            (id.as_str(), BIG)
        );
        assert_eq!(capacity(&mut node, &PROBES).await, with_big_only);
        assert!(leftovers(&agent, &id).is_empty());
        let out = agent.hvctl(&["vm", "resize-revert", "resize-up"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("has no resize pending"),
            "{}",
            stderr(&out)
        );

        vms.delete(pb::DeleteVmRequest { uuid: id.clone() })
            .await
            .unwrap();
        assert!(claims(&mut placement).await.is_empty());
    });
}

#[test]
fn refused_resizes_change_nothing() {
    let agent = Agent::configure_tcg("", "").spawn();
    let id = uuid(2);
    let _cleanup = Cleanup(vec![id.clone()]);
    runtime().block_on(async {
        let Clients {
            mut vms,
            mut placement,
            mut node,
        } = clients(&agent).await;
        import_testguest(&agent).await;
        create(&mut vms, &id, "resize-refused").await;
        let xml = inactive_xml(&id);
        let before = claims(&mut placement).await;
        // A flavor larger than the node: GetCapacity says none fits even on an empty node.
        let candidates = ["SCS-2Vi-64u-10", "SCS-2Vi-256u-10", "SCS-2Vi-1024u-10"];
        let fits = capacity(&mut node, &candidates).await;
        let unfitting = fits
            .iter()
            .find(|(_, more)| *more == 0)
            .map(|(f, _)| f.clone())
            .unwrap_or_else(|| panic!("every candidate fits: {fits:?}"));
        let refused = resize(&mut vms, &id, &unfitting).await.unwrap_err();
        assert!(
            matches!(
                refused.code(),
                Code::ResourceExhausted | Code::FailedPrecondition
            ),
            "{refused:?}"
        );
        assert!(refused.message().contains("MiB"), "{refused:?}");
        for (flavor, code, message) in [
            ("SCS-banana", Code::InvalidArgument, "flavor: "),
            ("", Code::InvalidArgument, "flavor: must not be empty"),
            (SMALL, Code::FailedPrecondition, "already has flavor"),
            (
                "SCS-1Vi-1u-2",
                Code::FailedPrecondition,
                "a root disk never shrinks",
            ),
            (
                "SCS-1Vi-1u",
                Code::FailedPrecondition,
                "boot-from-volume guests",
            ),
        ] {
            let e = resize(&mut vms, &id, flavor).await.unwrap_err();
            assert_eq!(e.code(), code, "{flavor}: {e:?}");
            assert!(e.message().contains(message), "{flavor}: {e:?}");
        }
        let e = resize(&mut vms, &uuid(98), BIG).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        for e in [
            confirm(&mut vms, &id).await.unwrap_err(),
            revert(&mut vms, &id).await.unwrap_err(),
        ] {
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        }
        let out = agent.hvctl(&["vm", "resize", "resize-refused", "--flavor", "SCS-2Vi-1u-2"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("never shrinks"), "{}", stderr(&out));

        assert_eq!(inactive_xml(&id), xml);
        assert_eq!(claims(&mut placement).await, before);
        assert_eq!(domstate(&id), "running");
        assert!(leftovers(&agent, &id).is_empty());
        vms.delete(pb::DeleteVmRequest { uuid: id.clone() })
            .await
            .unwrap();
    });
}

/// The agent is killed (SIGKILL) at several moments of a resize run through hvctl, and
/// started again: each time the guest runs either its old definition with its old claim alone
/// or its new one with the resize pending and both claims, and the resize can be reverted (or
/// confirmed) after.
#[test]
fn an_agent_killed_during_a_resize_leaves_the_guest_before_or_after() {
    let mut agent = Agent::configure_tcg("", "").spawn();
    let id = uuid(3);
    let _cleanup = Cleanup(vec![id.clone()]);
    let rt = runtime();
    let (old_xml, old_claims) = rt.block_on(async {
        let mut c = clients(&agent).await;
        import_testguest(&agent).await;
        create(&mut c.vms, &id, "resize-killed").await;
        ready_after(&mut c.vms, &id, 0).await;
        (inactive_xml(&id), claims(&mut c.placement).await)
    });
    let mut outcomes = Vec::new();
    for delay_ms in [0u64, 100, 400, 1000, 2500] {
        let before_id = domid(&id);
        let offset = rt.block_on(async {
            let mut c = clients(&agent).await;
            console_size(&mut c.vms, &id).await
        });
        let mut call = Command::new(common::bin("hvctl"))
            .arg("--socket")
            .arg(&agent.socket)
            .args(["vm", "resize", &id, "--flavor", BIG])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start hvctl");
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.stop_with(nix::sys::signal::Signal::SIGKILL);
        let _ = call.wait();
        agent = agent.spawn();
        let outcome = rt.block_on(async {
            let mut c = clients(&agent).await;
            let claimed = claims(&mut c.placement).await;
            let vm = get(&mut c.vms, &id).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            while domstate(&id) != "running" {
                assert!(
                    Instant::now() < deadline,
                    "{delay_ms} ms: the guest is {} a minute after the restart",
                    domstate(&id)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let outcome = if vm.resize_pending {
                assert_eq!(vm.flavor, BIG, "{delay_ms} ms");
                let (new, held) = split(claimed, &id);
                assert_eq!(new.map(|c| c.flavor).as_deref(), Some(BIG), "{delay_ms} ms");
                assert_eq!(held.len(), 1, "{delay_ms} ms: {held:?}");
                assert_eq!(
                    pb::Claim {
                        vm_uuid: id.clone(),
                        ..held[0].clone()
                    },
                    old_claims[0],
                    "{delay_ms} ms"
                );
                "after"
            } else {
                assert_eq!(vm.flavor, SMALL, "{delay_ms} ms");
                assert_eq!(inactive_xml(&id), old_xml, "{delay_ms} ms");
                assert_eq!(claimed, old_claims, "{delay_ms} ms");
                assert!(leftovers(&agent, &id).is_empty(), "{delay_ms} ms");
                "before"
            };
            // Restarted (stopped by the resize, or its roll back): wait until it boots so
            // that the next resize's ACPI shutdown is heard.
            if domid(&id) != before_id {
                ready_after(&mut c.vms, &id, offset).await;
            }
            if vm.resize_pending {
                let offset = console_size(&mut c.vms, &id).await;
                let reverted = revert(&mut c.vms, &id).await.unwrap();
                assert_eq!(reverted.state, "running", "{delay_ms} ms");
                assert_eq!(inactive_xml(&id), old_xml, "{delay_ms} ms");
                assert_eq!(claims(&mut c.placement).await, old_claims, "{delay_ms} ms");
                ready_after(&mut c.vms, &id, offset).await;
            }
            outcome
        });
        outcomes.push((delay_ms, outcome));
    }
    println!("outcomes by delay: {outcomes:?}");
    // And a confirm works on a guest that went through all that.
    rt.block_on(async {
        let mut c = clients(&agent).await;
        resize(&mut c.vms, &id, BIG).await.unwrap();
        confirm(&mut c.vms, &id).await.unwrap();
        let now = claims(&mut c.placement).await;
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(now[0].flavor, BIG);
        c.vms
            .delete(pb::DeleteVmRequest { uuid: id.clone() })
            .await
            .unwrap();
    });
}
