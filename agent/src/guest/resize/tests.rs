//! Resize against the in-memory hypervisor, with real disk files (qemu-img): what is refused
//! and that a refusal changes nothing, the claims during a resize, confirm and revert, a
//! failure rolled back, and what a restarted agent makes of a marker.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::domain::Hypervisor;
use crate::domain::fake::{FakeHypervisor, Op};
use crate::domain::xml::Emulation;
use crate::guest::CreateRequest;
use crate::net::Networks;
use crate::net::link::{Namespace, Netlink};
use crate::placement::{Allocator, Claim, PlacementState, Policy};
use hvagent_core::counts::KindCounts;

const UUID: &str = "00000000-0000-4000-8000-0000000000e1";
const SMALL: &str = "SCS-1Vi-1u-5";
const BIG: &str = "SCS-2Vi-2u-3x10";

fn spec(name: &str) -> FlavorSpec {
    flavor::parse(name).unwrap().spec
}

fn image(virtual_gib: u64, min_ram: &str) -> ImageRecord {
    ImageRecord {
        name: "img".into(),
        format: "qcow2".into(),
        virtual_size_bytes: virtual_gib * GIB,
        file_bytes: 1,
        sha256: String::new(),
        properties: [("min_ram".to_string(), min_ram.to_string())].into(),
        created_unix: 0,
    }
}

#[test]
fn what_a_resize_may_change() {
    let img = image(1, "0");
    let changes = check(
        &spec("SCS-1Vi-1u-5"),
        &spec("SCS-2Vi-2u-3x10"),
        Some(&img),
        5 * GIB,
    )
    .unwrap();
    assert_eq!(
        changes,
        DiskChanges {
            root_bytes: Some(10 * GIB),
            grow: vec![],
            add: vec![(1, 10 * GIB), (2, 10 * GIB)],
        }
    );
    let changes = check(
        &spec("SCS-1Vi-1u-2x5"),
        &spec("SCS-1Vi-2u-3x5"),
        Some(&img),
        5 * GIB,
    )
    .unwrap();
    assert_eq!(
        changes,
        DiskChanges {
            root_bytes: None,
            grow: vec![],
            add: vec![(2, 5 * GIB)],
        }
    );
    let changes = check(
        &spec("SCS-1Vi-1u-2x5"),
        &spec("SCS-1Vi-1u-2x8"),
        Some(&img),
        5 * GIB,
    )
    .unwrap();
    assert_eq!(changes.grow, [(1, 8 * GIB)]);
    // Diskless to diskless: only CPUs and memory.
    let changes = check(&spec("SCS-1Vi-1u"), &spec("SCS-2Vi-4u"), Some(&img), GIB).unwrap();
    // Booted from a volume given at Create (no image): the same.
    assert_eq!(
        check(&spec("SCS-1Vi-1u"), &spec("SCS-2Vi-4u"), None, 0).unwrap(),
        changes
    );
    assert_eq!(
        changes,
        DiskChanges {
            root_bytes: None,
            grow: vec![],
            add: vec![]
        }
    );
    let refused = |old: &str, new: &str, img: &ImageRecord, root: u64| match check(
        &spec(old),
        &spec(new),
        Some(img),
        root,
    )
    .unwrap_err()
    {
        GuestError::Precondition(m) => m,
        other => panic!("{other:?}"),
    };
    for (old, new, img, root, message) in [
        (
            "SCS-1Vi-1u-5",
            "SCS-1Vi-1u-5",
            &img,
            5 * GIB,
            "flavor: the guest already has flavor SCS-1Vi-1u-5",
        ),
        (
            "SCS-2Vi-2u-10",
            "SCS-4Vi-4u-5",
            &img,
            10 * GIB,
            "flavor: SCS-4Vi-4u-5 has a 5 GB root disk, smaller than the guest's 10 GB (10737418240 bytes): a root disk never shrinks",
        ),
        (
            "SCS-1Vi-1u-5",
            "SCS-2Vi-2u",
            &img,
            5 * GIB,
            "flavor: SCS-1Vi-1u-5 has a local root disk and SCS-2Vi-2u none: a guest cannot move between the two (boot-from-volume guests have no local root disk)",
        ),
        (
            "SCS-1Vi-1u",
            "SCS-2Vi-2u-10",
            &img,
            GIB,
            "flavor: SCS-2Vi-2u-10 has a local root disk and SCS-1Vi-1u none",
        ),
        (
            "SCS-1Vi-1u-5",
            "SCS-1Vi-1u-5_GN",
            &img,
            5 * GIB,
            "flavor: SCS-1Vi-1u-5_GN has a GPU or InfiniBand part: resize of guests with passed-through devices is not supported (delete and create)",
        ),
        (
            "SCS-1Vi-1u-5_GN",
            "SCS-2Vi-2u-5",
            &img,
            5 * GIB,
            "flavor: SCS-1Vi-1u-5_GN has a GPU or InfiniBand part",
        ),
        (
            "SCS-1Vi-1u-5_GN",
            "SCS-2Vi-2u-5_GN",
            &img,
            5 * GIB,
            "flavor: SCS-1Vi-1u-5_GN has a GPU or InfiniBand part",
        ),
        (
            "SCS-1Vi-1u-5",
            "SCS-2Vi-2u-5_ib",
            &img,
            5 * GIB,
            "flavor: SCS-2Vi-2u-5_ib has a GPU or InfiniBand part",
        ),
        (
            "SCS-1Vi-1u-3x5",
            "SCS-1Vi-2u-2x5",
            &img,
            5 * GIB,
            "flavor: SCS-1Vi-2u-2x5 has 1 extra disks, the guest 2: disks are never removed",
        ),
        (
            "SCS-1Vi-1u-2x10",
            "SCS-1Vi-2u-3x8",
            &img,
            8 * GIB,
            "flavor: SCS-1Vi-2u-3x8 has extra disks of 8 GB, smaller than the guest's 10 GB: disks never shrink",
        ),
        (
            "SCS-1Vi-1u-5",
            "SCS-1Vi-0.5u-5",
            &image(1, "1024"),
            5 * GIB,
            "flavor SCS-1Vi-0.5u-5 has 512 MiB of RAM; image \"img\" needs at least 1024 MiB (min_ram)",
        ),
        (
            "SCS-1Vi-1u-5",
            "SCS-1Vi-2u-8",
            &image(9, "0"),
            9 * GIB,
            "flavor SCS-1Vi-2u-8 has a 8 GB root disk; image \"img\" needs at least 9 GB",
        ),
    ] {
        let got = refused(old, new, img, root);
        assert!(got.starts_with(message), "{old} → {new}: {got}");
    }
}

fn intent(flavor: &str, resize: bool) -> Intent {
    let mut alloc = Allocator::new(
        crate::placement::testing::fixture("qemu-2s4c2t-numa"),
        Policy::default(),
    )
    .unwrap();
    let claim = alloc
        .claim(
            &ClaimRequest {
                vm_uuid: UUID.into(),
                request_id: "r".into(),
                flavor: spec(flavor),
            },
            0,
        )
        .unwrap();
    Intent {
        store: "/s".into(),
        name: "web".into(),
        flavor: flavor.into(),
        request_id: "r".into(),
        image: "img".into(),
        networks: vec![],
        nics: vec![],
        metadata: BTreeMap::new(),
        boot_volume: None,
        resize: resize.then(|| ResizeIntent {
            holder: "00000000-0000-4000-8000-0000000000ff".into(),
            old_flavor: "SCS-1Vi-1u".into(),
            old_claim: claim.clone(),
            was_running: true,
        }),
        claim,
        emulation: Emulation::Tcg,
        created_unix: 1,
        firmware: Default::default(),
    }
}

#[test]
fn a_marker_found_at_start_rolls_back_finishes_or_is_forgotten() {
    let old = intent("SCS-1Vi-1u", false);
    assert_eq!(recovery(&old, &old), Recovery::RollBack);
    assert_eq!(
        recovery(&old, &intent("SCS-2Vi-2u", true)),
        Recovery::Finish
    );
    assert_eq!(
        recovery(&old, &intent("SCS-2Vi-2u", false)),
        Recovery::Forget
    );
}

/// Guests over the fake hypervisor with image `img` (a blank 1 GiB qcow2) and one running
/// guest of flavor [`SMALL`].
struct Node {
    root: tempfile::TempDir,
    hypervisor: Arc<FakeHypervisor>,
    placement: Arc<PlacementState>,
    guests: Arc<Guests>,
}

fn guests_over(
    root: &Path,
    hypervisor: &Arc<FakeHypervisor>,
) -> (Arc<PlacementState>, Arc<Guests>) {
    let topology = crate::placement::testing::fixture("qemu-2s4c2t-numa");
    let placement = Arc::new(PlacementState::new(
        Allocator::new(topology, Policy::default()).unwrap(),
    ));
    let netlink = Netlink::open(Namespace::default()).unwrap();
    let networks = Arc::new(Networks::new(netlink, root, KindCounts::default()));
    // A node with OVMF and swtpm: UEFI guests resize too.
    let firmware = crate::domain::firmware::FirmwareFacts {
        uefi: true,
        secure_boot: true,
        vtpm: true,
        reason: String::new(),
    };
    let guests = Arc::new(
        Guests::new(
            hypervisor.clone(),
            placement.clone(),
            root,
            Ok(Emulation::Tcg),
            Vec::new(),
            networks,
        )
        .with_firmware(firmware),
    );
    (placement, guests)
}

impl Node {
    async fn new() -> Node {
        let root = tempfile::tempdir().unwrap();
        let hypervisor = Arc::new(FakeHypervisor::default());
        let (placement, guests) = guests_over(root.path(), &hypervisor);
        let base = root.path().join("base.qcow2");
        disks::blank(&base, GIB).unwrap();
        guests
            .images
            .import_local("img", &base, None, BTreeMap::new(), 0)
            .unwrap();
        guests.rebuild_placement().await.unwrap();
        guests
            .create(CreateRequest {
                uuid: UUID.into(),
                name: "web".into(),
                flavor: SMALL.into(),
                image: "img".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        Node {
            root,
            hypervisor,
            placement,
            guests,
        }
    }

    /// The agent started again over the same store and libvirt.
    async fn restart(&mut self) {
        let (placement, guests) = guests_over(self.root.path(), &self.hypervisor);
        guests.rebuild_placement().await.unwrap();
        self.placement = placement;
        self.guests = guests;
    }

    fn files(&self) -> GuestFiles {
        GuestFiles::new(self.root.path(), UUID)
    }

    fn xml(&self) -> String {
        self.hypervisor.inactive_xml(UUID).unwrap()
    }

    fn claims(&self) -> Vec<Claim> {
        self.placement.lock().claims().cloned().collect()
    }

    fn state(&self) -> DomainState {
        self.hypervisor.state(UUID).unwrap()
    }

    fn root_bytes(&self) -> u64 {
        qcow2_virtual_size(&self.files().root_disk()).unwrap()
    }

    /// What the guest's directory holds besides its disks, seed and console.
    fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.files().dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("resize") || n.starts_with("disk"))
            .collect();
        names.sort();
        names
    }
}

#[tokio::test]
async fn resize_then_revert_restores_the_exact_definition_claim_and_disks() {
    let node = Node::new().await;
    let (xml, claims) = (node.xml(), node.claims());
    assert_eq!(node.root_bytes(), 5 * GIB);
    let g = node.guests.resize(UUID, BIG).await.unwrap();
    assert_eq!(g.state, DomainState::Running);
    assert_eq!(g.intent.flavor, BIG);
    let pending = g.intent.resize.clone().unwrap();
    assert_eq!(pending.old_flavor, SMALL);
    assert!(pending.was_running);
    // Two claims: the new one under the guest, the old one (as it was) under the holder.
    let now = node.claims();
    assert_eq!(now.len(), 2);
    let new = node.placement.lock().get(UUID).cloned().unwrap();
    assert_eq!(new.flavor, BIG);
    assert_eq!(new.vcpus.len(), 2);
    assert_eq!(
        node.placement.lock().get(&pending.holder),
        Some(&Claim {
            vm_uuid: pending.holder.clone(),
            ..claims[0].clone()
        })
    );
    assert_eq!(pending.old_claim.vm_uuid, pending.holder);
    assert_eq!(node.root_bytes(), 10 * GIB);
    assert_eq!(
        node.leftovers(),
        [
            "disk1.qcow2",
            "disk2.qcow2",
            "resize-root.qcow2",
            "resize.json"
        ]
    );
    let new_xml = node.xml();
    assert!(new_xml.contains("<vcpu>2</vcpu>"), "{new_xml}");
    assert!(new_xml.contains("disk2.qcow2"), "{new_xml}");
    assert_eq!(node.hypervisor.calls(Op::Shutdown), [UUID]);

    // One resize at a time.
    let e = node.guests.resize(UUID, "SCS-4Vi-4u-20").await.unwrap_err();
    assert!(
        e.to_string()
            .ends_with("pending: confirm or revert it first"),
        "{e}"
    );

    let g = node.guests.revert_resize(UUID).await.unwrap();
    assert_eq!(g.state, DomainState::Running);
    assert_eq!(g.intent.flavor, SMALL);
    assert!(g.intent.resize.is_none());
    assert_eq!(node.xml(), xml);
    assert_eq!(node.claims(), claims);
    assert_eq!(node.root_bytes(), 5 * GIB);
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
    let e = node.guests.revert_resize(UUID).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("uuid: guest {UUID} has no resize pending")
    );
}

#[tokio::test]
async fn confirm_frees_the_old_claim_and_keeps_the_new_guest() {
    let node = Node::new().await;
    let g = node.guests.resize(UUID, BIG).await.unwrap();
    let new_claim = g.intent.claim.clone();
    let g = node.guests.confirm_resize(UUID).await.unwrap();
    assert!(g.intent.resize.is_none());
    assert_eq!(g.intent.flavor, BIG);
    assert_eq!(node.claims(), [new_claim]);
    assert!(node.xml().contains("<vcpu>2</vcpu>"));
    assert_eq!(node.root_bytes(), 10 * GIB);
    assert_eq!(node.leftovers(), ["disk1.qcow2", "disk2.qcow2"]);
    assert_eq!(node.state(), DomainState::Running);
    assert!(matches!(
        node.guests.confirm_resize(UUID).await,
        Err(GuestError::Precondition(_))
    ));
    // A shut-off guest stays off through a resize.
    node.guests
        .stop(UUID, true, DEFAULT_STOP_TIMEOUT)
        .await
        .unwrap();
    let g = node.guests.resize(UUID, "SCS-4Vi-1u-3x20").await.unwrap();
    assert_eq!(g.state, DomainState::ShutOff);
    // Deleting a guest with a resize pending frees both claims.
    assert!(node.guests.delete(UUID).await.unwrap());
    assert!(node.claims().is_empty());
}

/// A UEFI guest with Secure Boot and a TPM keeps its firmware, NVRAM and TPM through a resize
/// (the firmware comes from its intent, the TPM with the old definition's devices), and a
/// revert gives back the exact definition.
#[tokio::test]
async fn a_uefi_guest_keeps_its_firmware_through_a_resize() {
    const UEFI: &str = "00000000-0000-4000-8000-0000000000e2";
    let node = Node::new().await;
    // Room for the resized guest on the captured host: the BIOS guest goes.
    assert!(node.guests.delete(UUID).await.unwrap());
    crate::guest::tests::import_uefi(&node.guests, node.root.path());
    let created = node
        .guests
        .create(CreateRequest {
            uuid: UEFI.into(),
            name: "sb".into(),
            flavor: SMALL.into(),
            image: "uefi".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created.intent.firmware.secure_boot());
    let before = node.hypervisor.inactive_xml(UEFI).unwrap();
    let nvram = GuestFiles::new(node.root.path(), UEFI).nvram();
    let firmware_parts = [
        "<os firmware=\"efi\"><type arch=\"x86_64\" machine=\"q35\">".to_string(),
        "<loader secure=\"yes\"/>".to_string(),
        format!("<nvram>{}</nvram>", nvram.display()),
        "<smm state=\"on\"/>".to_string(),
        "<tpm model=\"tpm-tis\">".to_string(),
    ];
    let resized = node.guests.resize(UEFI, BIG).await.unwrap();
    assert_eq!(resized.intent.firmware, created.intent.firmware);
    let xml = node.hypervisor.inactive_xml(UEFI).unwrap();
    assert!(xml.contains("<vcpu>2</vcpu>"), "{xml}");
    for part in &firmware_parts {
        assert!(
            xml.contains(part.as_str()),
            "{part} lost in the resize:\n{xml}"
        );
        assert_eq!(
            xml.matches(part.as_str()).count(),
            1,
            "{part} twice:\n{xml}"
        );
    }
    node.guests.revert_resize(UEFI).await.unwrap();
    assert_eq!(node.hypervisor.inactive_xml(UEFI).unwrap(), before);
}

/// A flavor that does not fit, an invalid one, and a failing define: each an error, and the
/// guest, its definition, disks and claims as they were.
#[tokio::test]
async fn a_refused_or_failed_resize_changes_nothing() {
    let node = Node::new().await;
    let (xml, claims) = (node.xml(), node.claims());
    let unchanged = |node: &Node| {
        assert_eq!(node.xml(), xml);
        assert_eq!(node.claims(), claims);
        assert_eq!(node.state(), DomainState::Running);
        assert_eq!(node.root_bytes(), 5 * GIB);
        assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
    };
    // More memory than the captured host has.
    let e = node.guests.resize(UUID, "SCS-2Vi-64u-5").await.unwrap_err();
    assert!(matches!(e, GuestError::Refused(_)), "{e:?}");
    unchanged(&node);
    let e = node.guests.resize(UUID, "SCS-2Xi-2u").await.unwrap_err();
    assert!(
        matches!(e, GuestError::Invalid(ref m) if m.starts_with("flavor: ")),
        "{e:?}"
    );
    let e = node.guests.resize(UUID, "").await.unwrap_err();
    assert_eq!(e.to_string(), "flavor: must not be empty");
    assert!(matches!(
        node.guests.resize(UUID, "SCS-1Vi-1u-2").await,
        Err(GuestError::Precondition(_))
    ));
    unchanged(&node);
    node.hypervisor.fail_once(Op::Define);
    let e = node.guests.resize(UUID, BIG).await.unwrap_err();
    assert!(e.to_string().contains("injected failure of Define"), "{e}");
    unchanged(&node);
    // And then it works.
    node.guests.resize(UUID, BIG).await.unwrap();
}

/// An agent killed before the new definition was made: the restarted agent puts the old
/// disks back and starts the guest; killed after: it starts the resized guest, and the resize
/// can still be reverted.
#[tokio::test]
async fn a_restarted_agent_finishes_what_a_resize_left() {
    let mut node = Node::new().await;
    let (xml, claims) = (node.xml(), node.claims());
    // Killed while writing the marker: only its temporary file, which goes.
    std::fs::write(node.files().dir.join("resize.json.tmp"), b"{\"old_x").unwrap();
    node.restart().await;
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
    assert_eq!((node.xml(), node.claims()), (xml.clone(), claims.clone()));
    // Before: the marker written, the guest stopped, the root copied and grown, a disk added.
    let files = node.files();
    let guest = node.guests.get(UUID).await.unwrap();
    write_marker(
        &files,
        &Marker {
            old_xml: xml.clone(),
            old_intent: guest.intent.clone(),
            was_running: true,
        },
    )
    .unwrap();
    node.hypervisor.power_off(UUID);
    change_disks(
        &files,
        &check(&spec(SMALL), &spec(BIG), Some(&image(1, "0")), 5 * GIB).unwrap(),
    )
    .unwrap();
    node.restart().await;
    assert_eq!(node.state(), DomainState::Running);
    assert_eq!(node.xml(), xml);
    assert_eq!(node.claims(), claims);
    assert_eq!(node.root_bytes(), 5 * GIB);
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());

    // After: defined, not started again yet.
    let g = node.guests.resize(UUID, BIG).await.unwrap();
    node.hypervisor.power_off(UUID);
    node.restart().await;
    assert_eq!(node.state(), DomainState::Running);
    let mut rebuilt = node.claims();
    rebuilt.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    assert_eq!(rebuilt.len(), 2);
    assert_eq!(rebuilt[0].vm_uuid, g.intent.resize.unwrap().holder);
    assert!(node.leftovers().contains(&"resize.json".to_string()));
    node.guests.revert_resize(UUID).await.unwrap();
    assert_eq!(node.xml(), xml);
    assert_eq!(node.claims(), claims);
}
