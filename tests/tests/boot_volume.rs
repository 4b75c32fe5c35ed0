//! Boot from volume end to end with real TCG guests: a flavor without a disk boots from the
//! volume named at Create (made from the image by VolumeService), or else from a volume the
//! agent makes from the image; neither has a local root disk, and the node's local disk
//! (DISK_GB) does not shrink for them, while a guest of a flavor with a disk takes its GB.
//! Refusals change nothing; the named volume outlives its guest, the made one goes with it.

mod common;

use common::{Agent, Cleanup, import_testguest, ready, runtime};
use hvagent_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

type Vms = pb::vm_service_client::VmServiceClient<Channel>;
type Volumes = pb::volume_service_client::VolumeServiceClient<Channel>;
type Node = pb::node_service_client::NodeServiceClient<Channel>;

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{:012x}", 0xb0f000 + n)
}

/// The local disk the node has free for guests, in GB, as placement counts it: from the
/// refusal of a flavor whose disk no node has.
async fn disk_free_gb(node: &mut Node) -> u64 {
    let answer = node
        .get_capacity(pb::GetCapacityRequest {
            flavors: vec!["SCS-1Vi-0.5u-16384".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let c = &answer.flavors[0];
    assert_eq!((c.more, c.limited_by.as_str()), (0, "DISK_GB"), "{c:?}");
    c.reason
        .rsplit("; ")
        .next()
        .and_then(|r| r.strip_suffix(" GB are free"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("free GB in {:?}", c.reason))
}

async fn get(vms: &mut Vms, uuid: &str) -> pb::Vm {
    vms.get(pb::GetVmRequest { uuid: uuid.into() })
        .await
        .unwrap()
        .into_inner()
}

fn create(uuid: &str, name: &str, flavor: &str, image: &str, volume: &str) -> pb::CreateVmRequest {
    pb::CreateVmRequest {
        uuid: uuid.into(),
        name: name.into(),
        flavor: flavor.into(),
        image: image.into(),
        boot_volume: volume.into(),
        ..Default::default()
    }
}

#[test]
fn diskless_flavors_boot_from_volumes_and_take_no_local_disk() {
    let agent = Agent::configure_tcg("", "").spawn();
    let (named, made, local) = (uuid(1), uuid(2), uuid(3));
    let _cleanup = Cleanup(vec![named.clone(), made.clone(), local.clone()]);
    let root_qcow2 = |u: &str| {
        agent
            .dir
            .path()
            .join("store/vms")
            .join(u)
            .join("root.qcow2")
    };
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        import_testguest(channel.clone()).await;
        let mut vms = Vms::new(channel.clone());
        let mut volumes = Volumes::new(channel.clone());
        let mut node = Node::new(channel);
        let free = disk_free_gb(&mut node).await;

        // A volume made from the image, then a guest booted from it.
        let system = volumes
            .create(pb::CreateVolumeRequest {
                name: "bfv-system".into(),
                image: "testguest".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        vms.create(create(
            &named,
            "bfv-named",
            "SCS-1Vi-0.5u",
            "",
            "bfv-system",
        ))
        .await
        .unwrap();
        let report = ready(&mut vms, &named).await;
        assert!(
            report.contains(&format!("hvagent.root_disk_bytes={}", system.size_bytes)),
            "the guest's vda is the volume:\n{report}"
        );
        let vm = get(&mut vms, &named).await;
        assert_eq!(
            (
                vm.boot_volume.as_str(),
                vm.boot_volume_made,
                vm.root_disk_gb
            ),
            ("bfv-system", false, 0)
        );
        assert!(
            vm.volumes.is_empty(),
            "the boot volume is named apart: {vm:?}"
        );
        assert!(!root_qcow2(&named).exists(), "no local root disk");
        let got = volumes
            .get(pb::GetVolumeRequest {
                name: "bfv-system".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.attached_to, std::slice::from_ref(&named));

        // No volume named: the agent makes one from the image, and says so.
        vms.create(create(&made, "bfv-made", "SCS-1Vi-0.5u", "testguest", ""))
            .await
            .unwrap();
        ready(&mut vms, &made).await;
        let vm = get(&mut vms, &made).await;
        let made_name = format!("root-{made}");
        assert_eq!(
            (
                vm.boot_volume.as_str(),
                vm.boot_volume_made,
                vm.root_disk_gb
            ),
            (made_name.as_str(), true, 0)
        );
        assert!(!root_qcow2(&made).exists(), "no local root disk");
        let got = volumes
            .get(pb::GetVolumeRequest {
                name: made_name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (got.made_for.as_str(), got.image.as_str()),
            (made.as_str(), "testguest")
        );
        assert_eq!(got.attached_to, std::slice::from_ref(&made));
        assert_eq!(disk_free_gb(&mut node).await, free, "no local disk taken");

        // Refusals: the right code, and nothing changes.
        let before = common::listed(&mut vms).await;
        for (what, req, code) in [
            (
                "a disk flavor with a boot volume",
                create(&local, "bfv-x", "SCS-1Vi-0.5u-1", "", "bfv-system"),
                Code::InvalidArgument,
            ),
            (
                "an image and a boot volume",
                create(&local, "bfv-x", "SCS-1Vi-0.5u", "testguest", "bfv-system"),
                Code::InvalidArgument,
            ),
            (
                "a volume in use",
                create(&local, "bfv-x", "SCS-1Vi-0.5u", "", "bfv-system"),
                Code::FailedPrecondition,
            ),
            (
                "a missing volume",
                create(&local, "bfv-x", "SCS-1Vi-0.5u", "", "bfv-nothing"),
                Code::NotFound,
            ),
        ] {
            let e = vms.create(req).await.expect_err(what);
            assert_eq!(e.code(), code, "{what}: {e:?}");
        }
        assert_eq!(common::listed(&mut vms).await, before);
        assert_eq!(disk_free_gb(&mut node).await, free);

        // The boot disk cannot be detached; a snapshot of it boots like an image.
        let e = vms
            .detach_volume(pb::DetachVolumeRequest {
                uuid: named.clone(),
                volume: "bfv-system".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let snap = vms
            .snapshot(pb::SnapshotVmRequest {
                uuid: named.clone(),
                image: "bfv-snap".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(snap.virtual_size_bytes, system.size_bytes);

        // Deleting: the named volume stays (free again), the made one goes.
        for u in [&named, &made] {
            vms.delete(pb::DeleteVmRequest {
                uuid: u.to_string(),
            })
            .await
            .unwrap();
        }
        let kept = volumes
            .get(pb::GetVolumeRequest {
                name: "bfv-system".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(kept.attached_to.is_empty());
        let e = volumes
            .get(pb::GetVolumeRequest { name: made_name })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");

        // The control: a flavor with a disk has a local root disk and takes its GB.
        vms.create(create(
            &local,
            "bfv-local",
            "SCS-1Vi-0.5u-1",
            "bfv-snap",
            "",
        ))
        .await
        .unwrap();
        let vm = get(&mut vms, &local).await;
        assert_eq!((vm.boot_volume.as_str(), vm.root_disk_gb), ("", 1));
        assert!(root_qcow2(&local).is_file());
        assert_eq!(disk_free_gb(&mut node).await, free - 1);
        vms.delete(pb::DeleteVmRequest {
            uuid: local.clone(),
        })
        .await
        .unwrap();
        volumes
            .delete(pb::DeleteVolumeRequest {
                name: "bfv-system".into(),
            })
            .await
            .unwrap();
    });
}

/// Explain tells what the agent does for a flavor without a disk.
#[test]
fn explain_says_a_diskless_flavor_boots_from_a_volume() {
    let agent = Agent::start("");
    let out = agent.hvctl(&["flavor", "explain", "SCS-2V-4"]);
    let text = common::stdout(&out);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        text.contains("no local root disk: the guest boots from a volume")
            && text.contains("boot_volume")
            && text.contains("DISK_GB 0"),
        "{text}"
    );
}
