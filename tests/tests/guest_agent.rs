//! The qemu guest agent end to end, with real TCG guests of the test image (which runs
//! `qemu-ga` on the channel every guest gets, unless user-data says `hvagent-guest-agent: off`):
//! `GetGuestInfo` reports the guest's host name, kernel, and the address the NoCloud seed gave
//! its NIC on a managed network; a guest without an agent, a stopped one, a missing one are
//! clear errors that change nothing; a snapshot freezes the file systems through the agent
//! when it answers (`hvagent_snapshot_consistency` = `filesystem`, and the guest's freeze hook
//! prints the freeze and the thaw) and is crash-consistent when it does not.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, Cleanup, code, console, import_testguest, runtime, state, stderr, stdout};
use hvagent_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

type Vms = pb::vm_service_client::VmServiceClient<Channel>;

const WITH: &str = "00000000-0000-4000-8000-0000006a0e01";
const WITHOUT: &str = "00000000-0000-4000-8000-0000006a0e02";
const MISSING: &str = "00000000-0000-4000-8000-0000006a0e99";
const ADDRESS: &str = "10.79.0.5/24";

/// Removes the test's bridge even when the test fails halfway.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

async fn guest_info(vms: &mut Vms, uuid: &str) -> Result<pb::GuestInfo, tonic::Status> {
    vms.get_guest_info(pb::GetGuestInfoRequest { uuid: uuid.into() })
        .await
        .map(tonic::Response::into_inner)
}

/// Asks until the agent reports an interface with `mac` and an address (180 s at most: boot
/// under TCG); until then the only answer allowed is UNAVAILABLE (the agent not up yet).
async fn info_with_address(vms: &mut Vms, uuid: &str, mac: &str) -> pb::GuestInfo {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match guest_info(vms, uuid).await {
            Ok(info)
                if info
                    .interfaces
                    .iter()
                    .any(|i| i.mac == mac && !i.addresses.is_empty()) =>
            {
                return info;
            }
            Ok(_) => {}
            Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no guest info with {mac}'s address within 180 s:\n{}",
            console(vms, uuid).await
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits for `line` on the guest's console (60 s at most).
async fn console_line(vms: &mut Vms, uuid: &str, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = console(vms, uuid).await;
        if text.contains(line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line} within 60 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn snapshot_consistency(vms: &mut Vms, uuid: &str, image: &str) -> String {
    let image = vms
        .snapshot(pb::SnapshotVmRequest {
            uuid: uuid.into(),
            image: image.into(),
            properties: [("hvagent_snapshot_consistency".into(), "made-up".into())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    image.properties["hvagent_snapshot_consistency"].clone()
}

#[test]
fn the_guest_agent_reports_the_seeds_address_and_freezes_for_snapshots() {
    let agent = Agent::configure_tcg("", "").spawn();
    let _cleanup = Cleanup(vec![WITH.into(), WITHOUT.into()]);
    let network = format!("ga{}", std::process::id() % 100_000);
    let _bridge = Bridge(format!("br-{network}"));
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        import_testguest(channel.clone()).await;
        pb::network_service_client::NetworkServiceClient::new(channel.clone())
            .ensure(pb::EnsureNetworkRequest {
                network: Some(pb::Network {
                    name: network.clone(),
                    kind: "bridge".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let mut vms = Vms::new(channel);
        let with = vms
            .create(pb::CreateVmRequest {
                uuid: WITH.into(),
                name: "guest-agent-with".into(),
                flavor: "SCS-1Vi-0.5u".into(),
                image: "testguest".into(),
                networks: vec![network.clone()],
                addresses: vec![ADDRESS.into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        vms.create(pb::CreateVmRequest {
            uuid: WITHOUT.into(),
            name: "guest-agent-without".into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            user_data: b"hvagent-guest-agent: off\n".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        // The channel is in the running domain.
        let xml = common::tool("virsh", &["dumpxml", WITH]);
        assert!(xml.contains("org.qemu.guest_agent.0"), "{xml}");

        // What the agent reports: the seed's address on the NIC with the guest's MAC.
        let mac = with.macs[0].clone();
        let started = Instant::now();
        let info = info_with_address(&mut vms, WITH, &mac).await;
        eprintln!(
            "guest info with the address {:.1} s after the create",
            started.elapsed().as_secs_f64()
        );
        let nic = info.interfaces.iter().find(|i| i.mac == mac).unwrap();
        assert!(
            nic.addresses.iter().any(|a| a == ADDRESS),
            "{ADDRESS} in {nic:?}"
        );
        assert_eq!(info.hostname, "guest-agent-with");
        // qemu-ga lists only file systems on block devices (a source starting with '/'); the
        // test image runs from its initramfs and keeps only proc, sysfs and devtmpfs mounted
        // (its seed is unmounted once read), so there are none to report.
        assert!(info.filesystems.is_empty(), "{:?}", info.filesystems);
        let os = info.os.clone().unwrap();
        assert_eq!(os.id, "hvagent-testguest");
        assert!(os.kernel_release.contains("cloud-amd64"), "{os:?}");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            now_ms.abs_diff(info.sampled_unix_ms) < 60_000,
            "sampled {} vs now {now_ms}",
            info.sampled_unix_ms
        );
        // hvctl: the table and the JSON.
        let out = agent.hvctl(&["vm", "guest-info", "guest-agent-with"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains(ADDRESS) && stdout(&out).contains(&mac),
            "{}",
            stdout(&out)
        );
        let out = agent.hvctl(&["vm", "guest-info", "guest-agent-with", "--output", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(json["hostname"], "guest-agent-with", "{json}");

        // No agent in the guest: UNAVAILABLE saying so, and the guest runs on.
        console_line(&mut vms, WITHOUT, "hvagent.guest_agent=off").await;
        let e = guest_info(&mut vms, WITHOUT).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains(
                "the guest agent does not answer (is qemu-guest-agent running in the guest?)"
            ) && e.message().contains(WITHOUT),
            "{}",
            e.message()
        );
        assert_eq!(state(&mut vms, WITHOUT).await, "running");
        let out = agent.hvctl(&["vm", "guest-info", "guest-agent-without"]);
        assert_ne!(code(&out.status), 0);
        assert!(stderr(&out).contains("does not answer"), "{}", stderr(&out));

        // Snapshots: frozen through the agent (its hook prints both steps), or crash-consistent.
        assert_eq!(
            snapshot_consistency(&mut vms, WITH, "guest-agent-frozen").await,
            "filesystem"
        );
        console_line(&mut vms, WITH, "hvagent.fsfreeze=freeze").await;
        console_line(&mut vms, WITH, "hvagent.fsfreeze=thaw").await;
        assert_eq!(state(&mut vms, WITH).await, "running");
        // Thawed: the agent answers again.
        guest_info(&mut vms, WITH).await.unwrap();
        assert_eq!(
            snapshot_consistency(&mut vms, WITHOUT, "guest-agent-crash").await,
            "crash"
        );
        assert_eq!(state(&mut vms, WITHOUT).await, "running");

        // A stopped guest, a missing one, a bad UUID: refused, nothing changed.
        vms.stop(pb::StopVmRequest {
            uuid: WITHOUT.into(),
            force: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let e = guest_info(&mut vms, WITHOUT).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("shut off"), "{}", e.message());
        assert_eq!(state(&mut vms, WITHOUT).await, "shut off");
        let e = guest_info(&mut vms, MISSING).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = guest_info(&mut vms, "not-a-uuid").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("uuid"), "{}", e.message());
    });
}
