//! Snapshots against the in-memory hypervisor, with real disk files: how each state is read,
//! what the new image holds, and that every failure leaves no image and the guest as it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::domain::fake::{FakeHypervisor, Op};
use crate::guest::CreateRequest;
use crate::guest::testing::{FakeNode, fake_node};

const UUID: &str = "00000000-0000-4000-8000-00000000005a";

/// Guests over the fake hypervisor with image `img` (a blank 64 MiB qcow2 with `min_ram`) and
/// one running guest of it with a 1 GiB root disk.
struct Node {
    root: tempfile::TempDir,
    hypervisor: Arc<FakeHypervisor>,
    guests: Arc<Guests>,
}

impl Node {
    async fn new() -> Node {
        Node::of_image(&[("min_ram", "128")]).await
    }

    /// The node with `img` of these properties, on a host with OVMF and swtpm.
    async fn of_image(properties: &[(&str, &str)]) -> Node {
        let firmware = crate::domain::firmware::FirmwareFacts {
            uefi: true,
            secure_boot: true,
            vtpm: true,
            reason: String::new(),
        };
        let FakeNode {
            root,
            hypervisor,
            guests,
            ..
        } = fake_node(
            crate::placement::testing::fixture("qemu-2s4c2t-numa"),
            64 << 20,
            properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            |g| g.with_firmware(firmware),
        )
        .await;
        guests
            .create(CreateRequest {
                uuid: UUID.into(),
                name: "web".into(),
                flavor: "SCS-1Vi-1u".into(),
                image: "img".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        Node {
            root,
            hypervisor,
            guests,
        }
    }

    async fn snapshot(&self, image: &str) -> Result<ImageRecord, SnapshotError> {
        self.guests
            .snapshot(SnapshotRequest {
                uuid: UUID.into(),
                image: image.into(),
                properties: BTreeMap::from([("os_version".into(), "2".into())]),
            })
            .await
    }

    fn state(&self) -> DomainState {
        self.hypervisor.state(UUID).unwrap()
    }

    fn marker(&self) -> PathBuf {
        marker(&GuestFiles::new(self.root.path(), UUID))
    }

    /// The store's entries: images and anything a snapshot left.
    fn store(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

#[tokio::test]
async fn a_running_guest_is_paused_for_the_copy_and_resumed() {
    let node = Node::new().await;
    let record = node.snapshot("snap").await.unwrap();
    assert_eq!(node.hypervisor.calls(Op::Suspend), [UUID]);
    assert_eq!(node.hypervisor.calls(Op::Resume), [UUID]);
    assert_eq!(node.state(), DomainState::Running);
    assert!(!node.marker().exists());
    assert_eq!(record.format, "qcow2");
    assert_eq!(record.virtual_size_bytes, 1 << 30, "the root disk's size");
    assert_eq!(
        record.properties,
        BTreeMap::from([
            (
                "hvagent_snapshot_consistency".to_string(),
                "crash".to_string()
            ),
            ("min_ram".to_string(), "128".to_string()),
            ("os_version".to_string(), "2".to_string()),
        ])
    );
    let file = node.guests.images.file("snap");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(record.file_bytes, bytes.len() as u64);
    {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(record.sha256, hex);
    }
    assert_eq!(node.guests.images.get("snap").unwrap(), record);
    assert_eq!(node.store(), ["img", "snap"]);
    // The snapshot is an image like any other: a guest can be made of it.
    node.guests
        .create(CreateRequest {
            uuid: "00000000-0000-4000-8000-00000000005b".into(),
            name: "web-2".into(),
            flavor: "SCS-1Vi-1u".into(),
            image: "snap".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A snapshot of a UEFI guest with Secure Boot and a TPM carries its image's firmware
/// properties, so a guest made from it gets the same firmware.
#[tokio::test]
async fn a_snapshot_of_a_uefi_guest_boots_as_uefi() {
    let firmware = [
        ("hw_firmware_type", "uefi"),
        ("os_secure_boot", "required"),
        ("hw_tpm_version", "2.0"),
    ];
    let node = Node::of_image(&firmware).await;
    let original = node.guests.get(UUID).await.unwrap().intent.firmware;
    assert!(
        original.secure_boot() && original.tpm.is_some(),
        "{original:?}"
    );
    let record = node.snapshot("snap").await.unwrap();
    for (key, value) in firmware {
        assert_eq!(record.properties[key], value, "{key}");
    }
    // Room on the captured host for the copy.
    assert!(node.guests.delete(UUID).await.unwrap());
    let copy = node
        .guests
        .create(CreateRequest {
            uuid: "00000000-0000-4000-8000-00000000005b".into(),
            name: "copy".into(),
            flavor: "SCS-1Vi-1u".into(),
            image: "snap".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(copy.intent.firmware, original);
}

#[tokio::test]
async fn shut_off_and_paused_guests_are_read_as_they_are() {
    let node = Node::new().await;
    node.hypervisor.power_off(UUID);
    node.snapshot("off").await.unwrap();
    assert!(node.hypervisor.calls(Op::Suspend).is_empty());
    assert_eq!(node.state(), DomainState::ShutOff);
    node.hypervisor.start(UUID).unwrap();
    node.hypervisor.suspend(UUID).unwrap();
    node.snapshot("paused").await.unwrap();
    assert!(
        node.hypervisor.calls(Op::Resume).is_empty(),
        "the owner's pause is kept"
    );
    assert_eq!(node.state(), DomainState::Paused);
    assert_eq!(node.store(), ["img", "off", "paused"]);
    let consistency = |image: &str| {
        node.guests.images.get(image).unwrap().properties["hvagent_snapshot_consistency"].clone()
    };
    assert_eq!(consistency("off"), "stopped");
    assert_eq!(
        consistency("paused"),
        "crash",
        "a paused guest's agent cannot answer"
    );
    assert!(node.hypervisor.calls(Op::Freeze).is_empty());
}

/// The agent-side calls of a snapshot, in order.
fn agent_ops(node: &Node) -> Vec<Op> {
    let ops = node.hypervisor.ops().into_iter().map(|(op, _)| op);
    ops.filter(|op| matches!(op, Op::Freeze | Op::Suspend | Op::Resume | Op::Thaw))
        .collect()
}

#[tokio::test]
async fn an_answering_agent_freezes_the_file_systems_around_the_copy() {
    let node = Node::new().await;
    node.hypervisor
        .set_agent(Some(crate::domain::guest_agent::GuestReport::default()));
    let record = node.snapshot("frozen").await.unwrap();
    // Frozen before the pause, thawed after the resume (a paused guest's agent cannot answer).
    assert_eq!(
        agent_ops(&node),
        [Op::Freeze, Op::Suspend, Op::Resume, Op::Thaw]
    );
    assert_eq!(
        record.properties["hvagent_snapshot_consistency"], "filesystem",
        "the freeze held for the copy"
    );
    // The copy fails: resumed, then thawed all the same.
    let root = node
        .root
        .path()
        .join("volumes")
        .join(format!("root-{UUID}.qcow2"));
    std::fs::write(&root, b"not a qcow2").unwrap();
    node.snapshot("failed").await.unwrap_err();
    assert_eq!(
        agent_ops(&node)[4..],
        [Op::Freeze, Op::Suspend, Op::Resume, Op::Thaw]
    );
    // The pause is refused: thawed, nothing else.
    node.hypervisor.fail_once(Op::Suspend);
    node.snapshot("failed").await.unwrap_err();
    assert_eq!(agent_ops(&node)[8..], [Op::Freeze, Op::Suspend, Op::Thaw]);
    // The name is taken: the ticket is refused after the freeze, which is thawed at once.
    node.snapshot("frozen").await.unwrap_err();
    assert_eq!(agent_ops(&node)[11..], [Op::Freeze, Op::Thaw]);
    assert_eq!(node.state(), DomainState::Running);
    assert_eq!(node.store(), ["frozen", "img"]);
}

#[tokio::test]
async fn a_silent_agent_leaves_the_copy_crash_consistent() {
    let node = Node::new().await;
    let record = node.snapshot("crash").await.unwrap();
    assert_eq!(agent_ops(&node), [Op::Freeze, Op::Suspend, Op::Resume]);
    assert_eq!(record.properties["hvagent_snapshot_consistency"], "crash");
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let node = Node::new().await;
    node.snapshot("taken").await.unwrap();
    let refused = |e: SnapshotError| match e {
        SnapshotError::Store(e) => e.to_string(),
        SnapshotError::Guest(e) => e.to_string(),
    };
    let e = node.snapshot("Bad Name").await.unwrap_err();
    assert!(matches!(
        e,
        SnapshotError::Store(StoreError::Invalid { .. })
    ));
    assert!(refused(e).starts_with("image: must be 1-64"));
    let e = node.snapshot("taken").await.unwrap_err();
    assert!(
        matches!(e, SnapshotError::Store(StoreError::Exists { .. })),
        "{e}"
    );
    let e = node
        .guests
        .snapshot(SnapshotRequest {
            uuid: "00000000-0000-4000-8000-0000000000ff".into(),
            image: "x".into(),
            properties: BTreeMap::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, SnapshotError::Guest(GuestError::NotFound(_))),
        "{e}"
    );
    let e = node
        .guests
        .snapshot(SnapshotRequest {
            uuid: UUID.into(),
            image: "x".into(),
            properties: BTreeMap::from([("min_disk".into(), "big".into())]),
        })
        .await
        .unwrap_err();
    assert!(refused(e).starts_with("properties: min_disk"));
    assert_eq!(
        node.hypervisor.calls(Op::Suspend).len(),
        1,
        "only the first"
    );
    assert_eq!(node.store(), ["img", "taken"]);
    assert_eq!(node.state(), DomainState::Running);
}

#[tokio::test]
async fn a_failed_snapshot_leaves_no_image_and_the_guest_running() {
    let node = Node::new().await;
    // libvirt refuses the pause: nothing is read, no marker stays.
    node.hypervisor.fail_once(Op::Suspend);
    node.snapshot("a").await.unwrap_err();
    assert!(!node.marker().exists());
    // The copy fails (the disk is unreadable) while the guest is paused: it is resumed.
    // The flavor has no disk: the guest boots from the volume made from the image.
    let root = node
        .root
        .path()
        .join("volumes")
        .join(format!("root-{UUID}.qcow2"));
    let saved = std::fs::read(&root).unwrap();
    std::fs::write(&root, b"not a qcow2").unwrap();
    let e = node.snapshot("a").await.unwrap_err();
    assert!(e.to_string().contains("qemu-img"), "{e}");
    assert_eq!(node.state(), DomainState::Running);
    assert_eq!(node.hypervisor.calls(Op::Resume).len(), 1);
    assert!(!node.marker().exists());
    std::fs::write(&root, saved).unwrap();
    assert_eq!(node.store(), ["img"]);
    assert!(
        node.guests.images.importing().is_empty(),
        "the name is free"
    );
    // The resume fails: the snapshot fails, and the marker stays until a later resume
    // (as at the agent's next start) succeeds.
    node.hypervisor.fail(Op::Resume);
    node.snapshot("a").await.unwrap_err();
    assert_eq!(node.state(), DomainState::Paused);
    assert!(node.marker().exists());
    assert_eq!(node.store(), ["img"]);
    node.hypervisor.heal(Op::Resume);
    node.guests.resume_paused_by_snapshots().await;
    assert_eq!(node.state(), DomainState::Running);
    assert!(!node.marker().exists());
    // Now it works, under the same name.
    node.snapshot("a").await.unwrap();
    assert_eq!(node.store(), ["a", "img"]);
}

#[tokio::test]
async fn a_guest_paused_by_its_owner_is_not_resumed_at_start() {
    let node = Node::new().await;
    node.hypervisor.suspend(UUID).unwrap();
    node.guests.resume_paused_by_snapshots().await;
    assert_eq!(node.state(), DomainState::Paused);
    assert!(node.hypervisor.calls(Op::Resume).is_empty());
}

/// An agent killed while a snapshot held the guest paused and frozen: the next start resumes
/// it, then thaws it (a paused guest's agent cannot answer), and the markers go.
#[tokio::test]
async fn a_guest_frozen_by_a_killed_agent_is_resumed_then_thawed_at_start() {
    let node = Node::new().await;
    let frozen = GuestFiles::new(node.root.path(), UUID)
        .dir
        .join("snapshot-frozen");
    std::fs::write(node.marker(), b"").unwrap();
    std::fs::write(&frozen, b"").unwrap();
    node.hypervisor.suspend(UUID).unwrap();
    // Its agent does not answer: resumed, the freeze marker kept for the next start.
    node.guests.resume_paused_by_snapshots().await;
    assert_eq!(node.state(), DomainState::Running);
    assert!(!node.marker().exists());
    assert!(frozen.exists());
    node.hypervisor
        .set_agent(Some(crate::domain::guest_agent::GuestReport::default()));
    node.guests.resume_paused_by_snapshots().await;
    assert_eq!(
        agent_ops(&node),
        [Op::Suspend, Op::Resume, Op::Thaw, Op::Thaw],
        "resumed before the thaws"
    );
    assert!(!frozen.exists());
}

#[test]
fn the_state_decides_how_the_disk_is_read() {
    let u = "u";
    assert_eq!(
        Capture::of(u, DomainState::ShutOff).unwrap(),
        Capture::Locked
    );
    assert_eq!(
        Capture::of(u, DomainState::Running).unwrap(),
        Capture::Pause
    );
    assert_eq!(
        Capture::of(u, DomainState::Paused).unwrap(),
        Capture::AsPaused
    );
    assert!(!Capture::Locked.shared());
    assert!(Capture::Pause.shared() && Capture::AsPaused.shared());
    for s in [
        DomainState::ShuttingDown,
        DomainState::Suspended,
        DomainState::Unknown,
    ] {
        let e = Capture::of(u, s).unwrap_err();
        assert!(
            matches!(e, GuestError::Precondition(_)) && e.to_string().starts_with("uuid: "),
            "{s}: {e}"
        );
    }
}
