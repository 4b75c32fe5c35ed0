//! The create saga against the in-memory hypervisor: a failure at any step leaves nothing
//! behind, creates of one UUID or name racing each other make one guest, retries take
//! nothing twice, and a reservation is bound once; and the lifecycle calls on the guest's
//! state.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::domain::fake::{FakeHypervisor, Op};
use crate::domain::firmware::FirmwareFacts;
use crate::domain::hypervisor::DomainState;
use crate::net::link::{Namespace, Netlink};
use crate::placement::{Allocator, ClaimRequest, Policy};
use crate::storage::disks;
use hvagent_core::counts::KindCounts;

#[test]
fn emulation_follows_kvm_and_policy() {
    assert_eq!(
        choose_emulation(true, EmulationPolicy::Forbid),
        Some(Emulation::Kvm)
    );
    assert_eq!(
        choose_emulation(false, EmulationPolicy::Allow),
        Some(Emulation::Tcg)
    );
    assert_eq!(choose_emulation(false, EmulationPolicy::Forbid), None);
}

/// `Guests` over the fake hypervisor, a temporary storage root with one image (`img`, a
/// blank 64 MiB qcow2), placement on a captured two-socket host (rebuilt from the no guests
/// there are, as at start-up), and no managed networks.
struct Node {
    root: tempfile::TempDir,
    hypervisor: Arc<FakeHypervisor>,
    placement: Arc<PlacementState>,
    guests: Arc<Guests>,
}

impl Node {
    async fn new() -> Node {
        Node::offering(FirmwareFacts::default()).await
    }

    /// A node whose guests may have the firmware `firmware` says.
    async fn offering(firmware: FirmwareFacts) -> Node {
        let root = tempfile::tempdir().unwrap();
        let hypervisor = Arc::new(FakeHypervisor::default());
        let (placement, guests) = Node::start(root.path(), &hypervisor, firmware);
        let base = root.path().join("base.qcow2");
        disks::blank(&base, 64 << 20).unwrap();
        guests
            .images
            .import_local("img", &base, None, BTreeMap::new(), 0)
            .unwrap();
        guests.rebuild_placement().await.unwrap();
        Node {
            root,
            hypervisor,
            placement,
            guests,
        }
    }

    /// Placement on the captured host, not yet rebuilt, and the guests over `root` and
    /// `hypervisor`: the agent as it starts.
    fn start(
        root: &std::path::Path,
        hypervisor: &Arc<FakeHypervisor>,
        firmware: FirmwareFacts,
    ) -> (Arc<PlacementState>, Arc<Guests>) {
        let topology = crate::placement::testing::fixture("qemu-2s4c2t-numa");
        let placement = Arc::new(PlacementState::new(
            Allocator::new(topology, Policy::default()).unwrap(),
        ));
        // Guests without networks: the undo only lists the host's links, looking for taps.
        let netlink = Netlink::open(Namespace::default()).unwrap();
        let networks = Arc::new(Networks::new(netlink, root, KindCounts::default()));
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

    /// Creates guest `n` named `name` of `flavor` from the test image.
    async fn create(&self, n: u64, name: &str, flavor: &str) -> Result<Guest, GuestError> {
        self.guests.create(request(n, name, flavor)).await
    }

    fn dir(&self, uuid: &str) -> PathBuf {
        self.root.path().join("vms").join(uuid)
    }

    /// The boot volume the agent makes for a guest whose flavor has no disk (every flavor
    /// here): the volume store's data file.
    fn made_volume(&self, uuid: &str) -> PathBuf {
        self.root
            .path()
            .join("volumes")
            .join(format!("root-{uuid}.qcow2"))
    }

    /// No domain, no files and no claim of `uuid`.
    fn assert_nothing_of(&self, uuid: &str) {
        assert!(
            self.hypervisor.domains().iter().all(|d| d.uuid != uuid),
            "domain left"
        );
        assert!(!self.dir(uuid).exists(), "files left");
        assert!(!self.made_volume(uuid).exists(), "boot volume left");
        assert!(
            self.guests.volumes.get(&format!("root-{uuid}")).is_err(),
            "boot volume record left"
        );
        assert!(self.placement.lock().get(uuid).is_none(), "claim left");
    }

    /// The one guest `uuid` in full: running domain, root disk and seed, claim.
    fn assert_made(&self, uuid: &str) {
        let domains = self.hypervisor.domains();
        assert!(
            domains
                .iter()
                .any(|d| d.uuid == uuid && d.state == DomainState::Running),
            "{domains:?}"
        );
        // No local root disk: the flavors here have no disk, so they boot from a volume made
        // from the image.
        assert!(!self.dir(uuid).join("root.qcow2").exists());
        assert!(self.made_volume(uuid).is_file());
        assert_eq!(
            self.guests
                .volumes
                .get(&format!("root-{uuid}"))
                .unwrap()
                .made_for,
            uuid
        );
        assert!(self.dir(uuid).join("seed.img").is_file());
        assert!(self.placement.lock().get(uuid).is_some());
    }

    fn claims(&self) -> usize {
        self.placement.lock().claims().count()
    }

    fn generation(&self) -> u64 {
        self.placement.lock().generation()
    }
}

fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn request(n: u64, name: &str, flavor: &str) -> CreateRequest {
    CreateRequest {
        uuid: uuid(n),
        name: name.into(),
        flavor: flavor.into(),
        image: "img".into(),
        user_data: b"#cloud-config\n".to_vec(),
        ..Default::default()
    }
}

const FLOATING: &str = "SCS-1Vi-1u";
const DEDICATED: &str = "SCS-2Ci-1u";

#[tokio::test]
async fn create_makes_domain_files_and_claim() {
    let node = Node::new().await;
    let guest = node.create(1, "web", FLOATING).await.unwrap();
    assert_eq!(guest.uuid, uuid(1));
    assert_eq!(guest.state, DomainState::Running);
    assert_eq!(guest.root_disk_gb, 0, "no local root disk");
    assert_eq!(
        guest.intent.boot_volume,
        Some(crate::domain::xml::BootVolume {
            name: format!("root-{}", uuid(1)),
            made: true
        })
    );
    node.assert_made(&uuid(1));
    let listed = node.guests.get(&uuid(1)).await.unwrap();
    assert_eq!(listed.intent, guest.intent);
    assert!(node.guests.delete(&uuid(1)).await.unwrap());
    node.assert_nothing_of(&uuid(1));
}

/// Imports `base.qcow2` under `root` as image "uefi", asking for UEFI with Secure Boot and a
/// TPM 2.0.
pub(super) fn import_uefi(guests: &Guests, root: &std::path::Path) {
    let properties = [
        ("hw_firmware_type", "uefi"),
        ("os_secure_boot", "required"),
        ("hw_tpm_version", "2.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    guests
        .images
        .import_local("uefi", &root.join("base.qcow2"), None, properties, 0)
        .unwrap();
}

/// An image asking for UEFI with Secure Boot and a TPM: on a node without OVMF and swtpm the
/// create is FAILED_PRECONDITION with the node's reason and leaves nothing behind; on a node
/// with them the definition has the firmware, the intent keeps it, and a delete leaves nothing.
#[tokio::test]
async fn firmware_comes_from_the_image_and_what_the_node_has() {
    use crate::domain::firmware::{Boot, Firmware, Machine, TpmModel};
    let lacking = FirmwareFacts {
        reason: "no x86_64 UEFI firmware (install ovmf)".into(),
        ..FirmwareFacts::default()
    };
    let offering = FirmwareFacts {
        uefi: true,
        secure_boot: true,
        vtpm: true,
        reason: String::new(),
    };
    for facts in [lacking, offering] {
        let node = Node::offering(facts.clone()).await;
        import_uefi(&node.guests, node.root.path());
        let req = CreateRequest {
            image: "uefi".into(),
            ..request(1, "web", FLOATING)
        };
        let result = node.guests.create(req).await;
        if !facts.uefi {
            let Err(GuestError::Precondition(m)) = result else {
                panic!("{result:?}")
            };
            assert_eq!(
                m,
                "image: \"uefi\": this node cannot give hw_firmware_type uefi: no x86_64 UEFI firmware (install ovmf)"
            );
            node.assert_nothing_of(&uuid(1));
            continue;
        }
        let guest = result.unwrap();
        assert_eq!(
            guest.intent.firmware,
            Firmware {
                machine: Machine::Q35,
                boot: Boot::Uefi { secure_boot: true },
                tpm: Some(TpmModel::Tis),
            }
        );
        let xml = xml_of(&node, &uuid(1)).unwrap();
        for part in [
            "<os firmware=\"efi\"><type arch=\"x86_64\" machine=\"q35\">",
            "<loader secure=\"yes\"/>",
            &format!(
                "<nvram>{}</nvram>",
                node.dir(&uuid(1)).join("nvram.fd").display()
            ),
            "<smm state=\"on\"/>",
            "<tpm model=\"tpm-tis\">",
        ] {
            assert!(xml.contains(part), "{part} not in {xml}");
        }
        assert!(node.guests.delete(&uuid(1)).await.unwrap());
        node.assert_nothing_of(&uuid(1));
    }
}

/// Every effect of the saga fails once in turn; each failure leaves no domain, no files and
/// no claim, and the same create then succeeds (nothing was kept that it would collide with).
#[tokio::test]
async fn a_failure_at_any_step_leaves_nothing_behind() {
    /// One way to make a create fail, and how to undo that way.
    struct Case {
        step: &'static str,
        inject: fn(&Node),
        heal: fn(&Node),
        message: &'static str,
    }
    let cases = [
        Case {
            step: "listing the domains",
            inject: |n| n.hypervisor.fail(Op::List),
            heal: |n| n.hypervisor.heal(Op::List),
            message: "libvirt: injected failure of List",
        },
        Case {
            step: "claim",
            // Other VMs hold all the flavor could have: placement refuses the claim.
            inject: |n| {
                let mut alloc = n.placement.lock();
                let hog = |i: u64| ClaimRequest {
                    vm_uuid: uuid(100 + i),
                    request_id: format!("hog-{i}"),
                    flavor: crate::flavor::parse(DEDICATED).unwrap().spec,
                };
                let mut i = 0u64;
                while alloc.claim(&hog(i), 0).is_ok() {
                    i += 1;
                }
            },
            heal: |n| {
                let hogs: Vec<String> = n
                    .placement
                    .lock()
                    .claims()
                    .map(|c| c.vm_uuid.clone())
                    .collect();
                for hog in hogs {
                    n.placement.lock().release(&hog).unwrap();
                }
            },
            message: "dedicated memory must come from the NUMA node(s) of the guest's CPUs",
        },
        Case {
            step: "disk files",
            // The image's file gone: qemu-img cannot make the overlay.
            inject: |n| {
                let file = n.guests.images.file("img");
                std::fs::rename(&file, file.with_extension("away")).unwrap();
            },
            heal: |n| {
                let file = n.guests.images.file("img");
                std::fs::rename(file.with_extension("away"), &file).unwrap();
            },
            message: "disk: qemu-img:",
        },
        Case {
            step: "define",
            inject: |n| n.hypervisor.fail(Op::Define),
            heal: |n| n.hypervisor.heal(Op::Define),
            message: "libvirt refused the guest: injected failure of Define",
        },
        Case {
            step: "start",
            inject: |n| n.hypervisor.fail(Op::Start),
            heal: |n| n.hypervisor.heal(Op::Start),
            message: "libvirt refused the guest: injected failure of Start",
        },
    ];
    for case in cases {
        let node = Node::new().await;
        (case.inject)(&node);
        let claims = node.claims();
        let e = node.create(1, "web", DEDICATED).await.unwrap_err();
        assert!(
            e.to_string().starts_with(case.message),
            "{}: {e}",
            case.step
        );
        node.assert_nothing_of(&uuid(1));
        assert_eq!(node.claims(), claims, "{}", case.step);
        (case.heal)(&node);
        node.create(1, "web", DEDICATED)
            .await
            .unwrap_or_else(|e| panic!("{}: after healing: {e}", case.step));
        node.assert_made(&uuid(1));
    }
}

/// A create held at a call of the hypervisor: its guest is busy until `release` is sent or
/// dropped.
struct Held {
    create: tokio::task::JoinHandle<Result<Guest, GuestError>>,
    release: std::sync::mpsc::Sender<()>,
}

/// Lets the spawned calls run until they wait (for a busy guest): on the test's one-thread
/// runtime each yield runs every task that is ready.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

async fn create_held(node: &Node, op: Op, req: CreateRequest) -> Held {
    let (arrived, release) = node.hypervisor.hold(op);
    let guests = node.guests.clone();
    let create = tokio::spawn(async move { guests.create(req).await });
    arrived.await.unwrap();
    Held { create, release }
}

#[tokio::test]
async fn racing_creates_of_one_uuid_make_one_guest() {
    let node = Node::new().await;
    let first = create_held(&node, Op::Define, request(1, "web", FLOATING)).await;
    // The same request again, and another one for the same UUID: both wait for the first.
    let guests = node.guests.clone();
    let same = tokio::spawn(async move { guests.create(request(1, "web", FLOATING)).await });
    let guests = node.guests.clone();
    let other = tokio::spawn(async move { guests.create(request(1, "db", FLOATING)).await });
    settle().await;
    assert!(!same.is_finished() && !other.is_finished());
    first.release.send(()).unwrap();
    let made = first.create.await.unwrap().unwrap();
    let again = same.await.unwrap().unwrap();
    assert_eq!((&again.uuid, &again.intent), (&made.uuid, &made.intent));
    assert_eq!(
        other.await.unwrap().unwrap_err().to_string(),
        format!(
            "uuid: guest {} already exists with another name, flavor, image or networks",
            uuid(1)
        )
    );
    assert_eq!(node.hypervisor.calls(Op::Define).len(), 1);
    assert_eq!(node.hypervisor.domains().len(), 1);
    assert_eq!(node.claims(), 1);
    node.assert_made(&uuid(1));
}

#[tokio::test]
async fn racing_creates_of_one_name_make_one_guest() {
    let node = Node::new().await;
    let first = create_held(&node, Op::Define, request(1, "web", FLOATING)).await;
    // While the first is in flight its name is taken, and the refused create takes nothing.
    let e = node.create(2, "web", FLOATING).await.unwrap_err();
    assert!(matches!(e, GuestError::AlreadyExists(_)));
    assert_eq!(
        e.to_string(),
        format!(
            "name: \"web\" is taken by guest {} (being created or deleted)",
            uuid(1)
        )
    );
    node.assert_nothing_of(&uuid(2));
    first.release.send(()).unwrap();
    first.create.await.unwrap().unwrap();
    // Once it exists, libvirt's domain holds the name.
    let e = node.create(2, "web", FLOATING).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("name: \"web\" is taken by guest {}", uuid(1))
    );
    node.assert_nothing_of(&uuid(2));
    assert_eq!(node.hypervisor.calls(Op::Define).len(), 1);
    assert_eq!(node.claims(), 1);
}

#[tokio::test]
async fn a_retried_create_returns_the_same_guest_and_takes_nothing_twice() {
    let node = Node::new().await;
    let made = node.create(1, "web", DEDICATED).await.unwrap();
    let generation = node.generation();
    let claim = node.placement.lock().get(&uuid(1)).cloned();
    for _ in 0..3 {
        let again = node.create(1, "web", DEDICATED).await.unwrap();
        assert_eq!(again.uuid, made.uuid);
        assert_eq!(again.intent, made.intent);
    }
    assert_eq!(node.hypervisor.calls(Op::Define).len(), 1);
    assert_eq!(node.generation(), generation);
    assert_eq!(node.placement.lock().get(&uuid(1)).cloned(), claim);
    assert_eq!(node.claims(), 1);
}

/// A reservation made through placement, for `uuid(n)` and `flavor`.
fn reserve(node: &Node, n: u64, id: &str, flavor: &str) {
    let now = node.placement.now_ms();
    node.placement
        .lock()
        .reserve(
            &ClaimRequest {
                vm_uuid: uuid(n),
                request_id: id.into(),
                flavor: crate::flavor::parse(flavor).unwrap().spec,
            },
            now,
            60_000,
        )
        .unwrap();
}

#[tokio::test]
async fn a_reservation_is_bound_once() {
    let node = Node::new().await;
    reserve(&node, 1, "res-1", DEDICATED);
    let reserved = node.placement.lock().get(&uuid(1)).cloned().unwrap();
    assert!(reserved.expires_at_ms.is_some());
    let generation = node.generation();
    let req = CreateRequest {
        reservation: "res-1".into(),
        ..request(1, "web", DEDICATED)
    };
    let made = node.guests.create(req.clone()).await.unwrap();
    // Bound: the reserved resources themselves, kept for good, one generation later.
    assert_eq!(made.intent.request_id, "res-1");
    let bound = node.placement.lock().get(&uuid(1)).cloned().unwrap();
    assert_eq!(bound.expires_at_ms, None);
    assert_eq!(bound.vcpus, reserved.vcpus);
    assert_eq!(made.intent.claim, bound);
    assert_eq!(node.generation(), generation + 1);
    // A retry answers with the guest and binds nothing again.
    let again = node.guests.create(req).await.unwrap();
    assert_eq!(again.intent, made.intent);
    assert_eq!(node.generation(), generation + 1);
    assert_eq!(node.hypervisor.calls(Op::Define).len(), 1);
    assert_eq!(node.claims(), 1);
}

#[tokio::test]
async fn a_reservation_is_only_for_its_vm_and_flavor() {
    let node = Node::new().await;
    reserve(&node, 1, "res-1", DEDICATED);
    let with = |n, flavor, reservation: &str| CreateRequest {
        reservation: reservation.into(),
        ..request(n, "web", flavor)
    };
    let e = node
        .guests
        .create(with(2, DEDICATED, "res-1"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "reservation: \"res-1\" holds resources for VM {}, not {}",
            uuid(1),
            uuid(2)
        )
    );
    node.assert_nothing_of(&uuid(2));
    let e = node
        .guests
        .create(with(3, DEDICATED, "res-9"))
        .await
        .unwrap_err();
    assert!(matches!(e, GuestError::NotFound(_)), "{e}");
    node.assert_nothing_of(&uuid(3));
    // The reservation is still there, unbound, for the VM it was made for.
    let reserved = node.placement.lock().get(&uuid(1)).cloned().unwrap();
    assert!(reserved.expires_at_ms.is_some());
}

/// Today a create that bound a reservation and then failed gives the reservation back with
/// everything else: the caller reserves again before retrying.
#[tokio::test]
async fn a_failed_create_releases_the_reservation_it_bound() {
    let node = Node::new().await;
    reserve(&node, 1, "res-1", DEDICATED);
    node.hypervisor.fail(Op::Start);
    let req = CreateRequest {
        reservation: "res-1".into(),
        ..request(1, "web", DEDICATED)
    };
    node.guests.create(req.clone()).await.unwrap_err();
    node.assert_nothing_of(&uuid(1));
    assert_eq!(node.placement.lock().vm_of_request("res-1"), None);
    node.hypervisor.heal(Op::Start);
    let e = node.guests.create(req).await.unwrap_err();
    assert!(matches!(e, GuestError::NotFound(_)), "{e}");
}

/// Re-pins after a create are best effort: a failing one is logged, the create stands.
#[tokio::test]
async fn a_failed_repin_does_not_undo_a_create() {
    let node = Node::new().await;
    node.create(1, "floating", FLOATING).await.unwrap();
    node.hypervisor.fail(Op::Repin);
    // A dedicated guest takes CPUs from the shared pool: the floating one is re-pinned.
    node.create(2, "dedicated", DEDICATED).await.unwrap();
    assert!(node.hypervisor.calls(Op::Repin).contains(&uuid(1)));
    node.assert_made(&uuid(1));
    node.assert_made(&uuid(2));
}

/// A delete of a guest whose create is in flight waits for it, then removes what it made.
#[tokio::test]
async fn a_delete_waits_for_the_create_in_flight() {
    let node = Node::new().await;
    let first = create_held(&node, Op::Start, request(1, "web", FLOATING)).await;
    let guests = node.guests.clone();
    let delete = tokio::spawn(async move { guests.delete(&uuid(1)).await });
    settle().await;
    assert!(!delete.is_finished());
    first.release.send(()).unwrap();
    first.create.await.unwrap().unwrap();
    assert!(delete.await.unwrap().unwrap());
    node.assert_nothing_of(&uuid(1));
}

/// A create that waited for a failed one of the same guest finds nothing, and makes it.
#[tokio::test]
async fn a_create_waiting_on_a_failed_one_makes_the_guest() {
    let node = Node::new().await;
    node.hypervisor.fail_once(Op::Start);
    let first = create_held(&node, Op::Start, request(1, "web", FLOATING)).await;
    let guests = node.guests.clone();
    let second = tokio::spawn(async move { guests.create(request(1, "web", FLOATING)).await });
    settle().await;
    assert!(!second.is_finished());
    first.release.send(()).unwrap();
    let e = first.create.await.unwrap().unwrap_err();
    assert!(
        e.to_string().starts_with("libvirt refused the guest"),
        "{e}"
    );
    second.await.unwrap().unwrap();
    assert_eq!(node.hypervisor.calls(Op::Define).len(), 2);
    assert_eq!(node.claims(), 1);
    node.assert_made(&uuid(1));
}

/// Stop, start and reboot ask the hypervisor only what the guest's state calls for.
#[tokio::test]
async fn stop_start_and_reboot_follow_the_domain_state() {
    let node = Node::new().await;
    node.create(1, "web", FLOATING).await.unwrap();
    let timeout = std::time::Duration::from_secs(5);
    let stopped = node.guests.stop(&uuid(1), false, timeout).await.unwrap();
    assert_eq!(stopped.state, DomainState::ShutOff);
    assert_eq!(node.hypervisor.calls(Op::Shutdown), [uuid(1)]);
    // The guest obeyed the power button: no destroy, and none for a stopped guest either.
    node.guests.stop(&uuid(1), true, timeout).await.unwrap();
    assert!(node.hypervisor.calls(Op::Destroy).is_empty());
    let e = node.guests.reboot(&uuid(1), false).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("guest {} is shut off, not running", uuid(1))
    );
    assert!(node.hypervisor.calls(Op::Reboot).is_empty());
    let started = node.guests.start(&uuid(1)).await.unwrap();
    assert_eq!(started.state, DomainState::Running);
    node.guests.reboot(&uuid(1), true).await.unwrap();
    assert_eq!(node.hypervisor.calls(Op::Reboot), [uuid(1)]);
}

/// Guest info: the agent's report for a running guest; a silent agent UNAVAILABLE, a stopped
/// guest FAILED_PRECONDITION without asking it, a missing one NOT_FOUND; nothing changes.
#[tokio::test]
async fn guest_info_asks_the_agent_of_a_running_guest_only() {
    use crate::domain::guest_agent::GuestReport;
    let node = Node::new().await;
    node.create(1, "web", FLOATING).await.unwrap();
    let e = node.guests.guest_info(&uuid(1)).await.unwrap_err();
    assert!(
        matches!(&e, GuestError::Unavailable(m) if m.contains("does not answer")),
        "{e:?}"
    );
    let report = GuestReport {
        hostname: "web".into(),
        ..Default::default()
    };
    node.hypervisor.set_agent(Some(report.clone()));
    let info = node.guests.guest_info(&uuid(1)).await.unwrap();
    assert_eq!(info.report, report);
    assert!(info.sampled_unix_ms >= now_unix() * 1000 - 1000);
    node.hypervisor.power_off(&uuid(1));
    let e = node.guests.guest_info(&uuid(1)).await.unwrap_err();
    assert!(
        matches!(&e, GuestError::Precondition(m) if m.contains("shut off")),
        "{e:?}"
    );
    assert_eq!(
        node.hypervisor.calls(Op::GuestInfo).len(),
        2,
        "not asked when stopped"
    );
    assert!(matches!(
        node.guests.guest_info(&uuid(2)).await,
        Err(GuestError::NotFound(_))
    ));
    assert_eq!(
        node.hypervisor.state(&uuid(1)).unwrap(),
        DomainState::ShutOff
    );
}

/// A slow guest: stop returns at its `stopped` event, long before the timeout, without a
/// destroy; the state is read a bounded number of times, not polled in a loop.
#[tokio::test]
async fn stop_returns_at_the_guests_stopped_event() {
    let node = Node::new().await;
    node.create(1, "web", FLOATING).await.unwrap();
    node.hypervisor.ignore_shutdown();
    let hypervisor = node.hypervisor.clone();
    let powered_off = tokio::spawn(async move {
        // Once the power button was pressed, the guest takes a moment, then goes.
        while hypervisor.calls(Op::Shutdown).is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        hypervisor.power_off(&uuid(1));
    });
    let states_before = node.hypervisor.calls(Op::State).len();
    let began = std::time::Instant::now();
    let stopped = node
        .guests
        .stop(&uuid(1), false, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    powered_off.await.unwrap();
    assert_eq!(stopped.state, DomainState::ShutOff);
    assert!(node.hypervisor.calls(Op::Destroy).is_empty());
    assert!(
        began.elapsed() < super::lifecycle::STOP_RECHECK,
        "woken by the event, not by a state re-read: {:?}",
        began.elapsed()
    );
    assert!(node.hypervisor.calls(Op::State).len() - states_before <= 2);
}

/// A guest that ignores the power button is destroyed when the timeout passes.
#[tokio::test]
async fn stop_destroys_a_guest_that_ignores_acpi_after_the_timeout() {
    let node = Node::new().await;
    node.create(1, "web", FLOATING).await.unwrap();
    node.hypervisor.ignore_shutdown();
    let timeout = std::time::Duration::from_millis(500);
    let began = std::time::Instant::now();
    let stopped = node.guests.stop(&uuid(1), false, timeout).await.unwrap();
    assert!(began.elapsed() >= timeout);
    assert_eq!(stopped.state, DomainState::ShutOff);
    assert_eq!(node.hypervisor.calls(Op::Shutdown), [uuid(1)]);
    assert_eq!(node.hypervisor.calls(Op::Destroy), [uuid(1)]);
}

/// A shutdown request libvirt does not answer (QEMU frozen): stops of that guest send it once,
/// go on after `SHUTDOWN_ASK` to wait for the guest, and destroy it at their timeout.
#[tokio::test]
async fn stops_of_a_guest_whose_qemu_does_not_answer_ask_once_and_destroy() {
    let node = Node::new().await;
    node.create(1, "web", FLOATING).await.unwrap();
    node.hypervisor.ignore_shutdown();
    let (arrived, release) = node.hypervisor.hold(Op::Shutdown);
    let timeout = std::time::Duration::from_millis(500);
    let stop = || {
        let guests = node.guests.clone();
        async move { guests.stop(&uuid(1), false, timeout).await }
    };
    let began = std::time::Instant::now();
    let (a, b) = tokio::join!(stop(), async {
        arrived.await.unwrap();
        stop().await
    });
    let waited = began.elapsed();
    assert_eq!(a.unwrap().state, DomainState::ShutOff);
    assert_eq!(b.unwrap().state, DomainState::ShutOff);
    assert!(waited >= super::lifecycle::SHUTDOWN_ASK, "{waited:?}");
    assert!(
        waited < super::lifecycle::SHUTDOWN_ASK + std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(node.hypervisor.calls(Op::Shutdown), [uuid(1)]);
    assert!(!node.hypervisor.calls(Op::Destroy).is_empty());
    release.send(()).unwrap();
}

/// The XML of the domain `uuid` in the fake, if any.
fn xml_of(node: &Node, uuid: &str) -> Option<String> {
    let domains = node.hypervisor.domains();
    domains.into_iter().find(|d| d.uuid == uuid).map(|d| d.xml)
}

/// A domain someone else defined is not the agent's to delete: `deleted = false`, no remove.
#[tokio::test]
async fn delete_leaves_a_domain_that_is_not_the_agents() {
    let node = Node::new().await;
    node.hypervisor.define_foreign(&uuid(7), "infra-foreign");
    let before = xml_of(&node, &uuid(7));
    assert!(!node.guests.delete(&uuid(7)).await.unwrap());
    assert!(node.hypervisor.calls(Op::Remove).is_empty());
    assert_eq!(xml_of(&node, &uuid(7)), before);
}

/// A domain whose hvagent metadata cannot be read may be this agent's guest or another's:
/// Delete refuses it (FAILED_PRECONDITION naming why) and removes nothing of it.
#[tokio::test]
async fn delete_refuses_a_domain_whose_metadata_cannot_be_read() {
    let node = Node::new().await;
    node.hypervisor.define_unreadable(&uuid(7), "damaged");
    std::fs::create_dir_all(node.dir(&uuid(7))).unwrap();
    let before = xml_of(&node, &uuid(7));
    let e = node.guests.delete(&uuid(7)).await.unwrap_err();
    assert!(matches!(e, GuestError::Precondition(_)), "{e}");
    assert!(
        e.to_string()
            .contains("has hvagent metadata that cannot be read"),
        "{e}"
    );
    assert!(node.hypervisor.calls(Op::Remove).is_empty());
    assert_eq!(xml_of(&node, &uuid(7)), before);
    assert!(node.dir(&uuid(7)).is_dir());
}

/// A create that reuses a foreign domain's UUID is refused before it takes anything, so it can
/// neither overwrite that domain's XML nor remove it in an undo.
#[tokio::test]
async fn a_create_with_a_foreign_uuid_is_refused_and_changes_nothing() {
    let node = Node::new().await;
    for name in ["infra-foreign", "web"] {
        node.hypervisor.define_foreign(&uuid(1), name);
        let before = xml_of(&node, &uuid(1));
        let e = node.create(1, "web", DEDICATED).await.unwrap_err();
        assert!(matches!(e, GuestError::AlreadyExists(_)), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "uuid: {} is a libvirt domain that is not this agent's guest",
                uuid(1)
            )
        );
        assert_eq!(xml_of(&node, &uuid(1)), before);
        assert!(node.hypervisor.calls(Op::Define).is_empty());
        assert!(node.hypervisor.calls(Op::Remove).is_empty());
        assert_eq!(node.claims(), 0);
        assert!(!node.dir(&uuid(1)).exists());
    }
}

/// A foreign domain that takes the UUID between the check and the define: libvirt refuses the
/// define, and the undo leaves that domain alone while it takes back the claim and files.
#[tokio::test]
async fn the_undo_removes_only_a_domain_this_create_defined() {
    let node = Node::new().await;
    let (arrived, release) = node.hypervisor.hold(Op::Define);
    let guests = node.guests.clone();
    let create = tokio::spawn(async move { guests.create(request(1, "web", DEDICATED)).await });
    arrived.await.unwrap();
    node.hypervisor.define_foreign(&uuid(1), "intruder");
    release.send(()).unwrap();
    let e = create.await.unwrap().unwrap_err();
    assert!(
        e.to_string().starts_with("libvirt refused the guest:"),
        "{e}"
    );
    assert!(node.hypervisor.calls(Op::Remove).is_empty());
    let left = node.hypervisor.domains();
    assert!(
        left.iter()
            .any(|d| d.uuid == uuid(1) && d.name == "intruder"),
        "{left:?}"
    );
    assert_eq!(node.claims(), 0);
    assert!(!node.dir(&uuid(1)).exists());
}

/// When the undo cannot remove the domain it defined, the guest's files and claim stay with
/// it: placement must not hand its CPUs to another guest.
#[tokio::test]
async fn an_undo_that_cannot_remove_the_domain_keeps_its_files_and_claim() {
    let node = Node::new().await;
    node.hypervisor.fail(Op::Start);
    node.hypervisor.fail(Op::Remove);
    node.create(1, "web", DEDICATED).await.unwrap_err();
    assert_eq!(node.hypervisor.calls(Op::Remove), [uuid(1)]);
    assert!(node.hypervisor.domains().iter().any(|d| d.uuid == uuid(1)));
    assert!(node.made_volume(&uuid(1)).is_file());
    assert!(node.placement.lock().get(&uuid(1)).is_some());
}

/// An agent that starts while libvirt does not answer has not rebuilt placement; once it
/// does, the running guests' stored claims win over anything claimed meanwhile, and a
/// domain listing that fails part-way never counts as complete.
#[tokio::test]
async fn stored_claims_win_the_rebuild_after_libvirt_comes_back() {
    let node = Node::new().await;
    node.create(1, "web", DEDICATED).await.unwrap();
    let cpus = node
        .placement
        .lock()
        .get(&uuid(1))
        .unwrap()
        .dedicated_cpus()
        .collect::<Vec<_>>();

    // The agent restarts; libvirt's listing fails.
    node.hypervisor.fail(Op::List);
    let (placement, guests) =
        Node::start(node.root.path(), &node.hypervisor, FirmwareFacts::default());
    let e = guests.rebuild_placement().await.unwrap_err();
    assert!(e.to_string().contains("injected failure of List"), "{e}");
    assert!(!placement.is_rebuilt());
    let e = guests
        .create(request(2, "db", DEDICATED))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("injected failure of List"), "{e}");
    assert_eq!(placement.lock().claims().count(), 0);

    // Something claims the same CPUs meanwhile (the API refuses to; the rebuild must not
    // depend on that).
    let meanwhile = placement
        .lock()
        .claim(
            &ClaimRequest {
                vm_uuid: uuid(3),
                request_id: "meanwhile".into(),
                flavor: crate::flavor::parse(DEDICATED).unwrap().spec,
            },
            0,
        )
        .unwrap();
    assert_eq!(meanwhile.dedicated_cpus().collect::<Vec<_>>(), cpus);

    node.hypervisor.heal(Op::List);
    guests.rebuild_placement().await.unwrap();
    assert!(placement.is_rebuilt());
    let alloc = placement.lock();
    assert_eq!(
        alloc
            .get(&uuid(1))
            .unwrap()
            .dedicated_cpus()
            .collect::<Vec<_>>(),
        cpus
    );
    assert!(alloc.get(&uuid(3)).is_none());
}

/// The guests that own taps, for the network reconcile: a guest being created (its taps are
/// made before its domain is defined), one whose metadata cannot be read, and a made one;
/// not a domain that is not the agent's. No listing, no owners (and so no tap removed).
#[tokio::test]
async fn tap_owners_include_creates_in_flight_and_unreadable_domains() {
    use crate::net::nic::tap_name;
    let node = Node::new().await;
    node.create(1, "made", DEDICATED).await.unwrap();
    node.hypervisor.define_unreadable(&uuid(2), "garbled");
    node.hypervisor.define_foreign(&uuid(3), "foreign");
    let (arrived, release) = node.hypervisor.hold(Op::Define);
    let guests = node.guests.clone();
    let create = tokio::spawn(async move { guests.create(request(4, "new", DEDICATED)).await });
    arrived.await.unwrap();
    let owners = node.guests.tap_owners().await.unwrap();
    for (n, owned) in [(1, true), (2, true), (3, false), (4, true), (5, false)] {
        assert_eq!(owners.owns(&tap_name(&uuid(n), 0)), owned, "guest {n}");
    }
    release.send(()).unwrap();
    create.await.unwrap().unwrap();
    node.hypervisor.fail(Op::List);
    assert!(node.guests.tap_owners().await.is_err());
}

/// After a host reboot (all guests shut off, a new boot id) the guests whose owner did not
/// stop them are started, one at a time with a concurrency of 1; the one stopped through the
/// API stays off; a restart on the same boot starts nothing; a start that fails is counted.
#[tokio::test]
async fn a_host_reboot_starts_the_guests_wanted_running() {
    let node = Node::new().await;
    for n in 1..=3 {
        node.create(n, &format!("g{n}"), FLOATING).await.unwrap();
    }
    let timeout = std::time::Duration::from_secs(5);
    node.guests.stop(&uuid(2), true, timeout).await.unwrap();
    // Guest 3 powers itself off: its owner did not ask, so it is still wanted running.
    node.hypervisor.power_off(&uuid(3));
    let boot_id = node.root.path().join("boot_id_now");
    let settings = ResumeSettings {
        on_boot: true,
        concurrency: 1,
    };
    let counts = KindCounts::default();
    let resume = |settings: ResumeSettings| {
        let guests = node.guests.clone();
        let (boot_id, counts) = (boot_id.clone(), counts.clone());
        tokio::spawn(async move { guests.resume_after_boot(&settings, &boot_id, &counts).await })
    };
    let reboot = |id: &str| {
        std::fs::write(&boot_id, format!("{id}\n")).unwrap();
        for n in 1..=3 {
            node.hypervisor.power_off(&uuid(n));
        }
    };
    let running = || -> Vec<String> {
        let mut up: Vec<_> = node
            .hypervisor
            .domains()
            .into_iter()
            .filter(|d| d.state == DomainState::Running)
            .map(|d| d.uuid)
            .collect();
        up.sort();
        up
    };
    // The first start on this store only records the boot.
    reboot("boot-1");
    assert_eq!(resume(settings.clone()).await.unwrap(), None);
    assert!(running().is_empty());
    // The host reboots: guests 1 and 3 come back, one start at a time.
    reboot("boot-2");
    let starts_before = node.hypervisor.calls(Op::Start).len();
    let (arrived, release) = node.hypervisor.hold(Op::Start);
    let pass = resume(settings.clone());
    arrived.await.unwrap();
    settle().await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(node.hypervisor.calls(Op::Start).len(), starts_before + 1);
    release.send(()).unwrap();
    let mut resumed = pass.await.unwrap().unwrap();
    resumed.started.sort();
    assert_eq!(resumed.started, [uuid(1), uuid(3)]);
    assert!(resumed.failed.is_empty());
    assert_eq!(running(), [uuid(1), uuid(3)]);
    assert_eq!(counts.get(), BTreeMap::from([("started".into(), 2)]));
    // The agent alone restarts: nothing is started.
    node.hypervisor.power_off(&uuid(1));
    assert_eq!(resume(settings.clone()).await.unwrap(), None);
    assert_eq!(running(), [uuid(3)]);
    // Turned off: a reboot starts nothing.
    reboot("boot-3");
    let off = ResumeSettings {
        on_boot: false,
        ..settings.clone()
    };
    assert_eq!(resume(off).await.unwrap(), None);
    assert!(running().is_empty());
    // A start libvirt refuses is counted as failed; the others still start.
    reboot("boot-4");
    node.hypervisor.fail_once(Op::Start);
    let resumed = resume(settings).await.unwrap().unwrap();
    assert_eq!((resumed.started.len(), resumed.failed.len()), (1, 1));
    assert_eq!(
        counts.get(),
        BTreeMap::from([("failed".into(), 1), ("started".into(), 3)])
    );
    // The owner's Start makes guest 2 wanted running again.
    node.guests.start(&uuid(2)).await.unwrap();
    reboot("boot-5");
    let mut resumed = resume(ResumeSettings::default()).await.unwrap().unwrap();
    resumed.started.sort();
    assert_eq!(resumed.started, [uuid(1), uuid(2), uuid(3)]);
}

/// After a host reboot no more than `[guests] resume_concurrency` starts run at once, and
/// that many do: five guests, starts that each take 300 ms, a concurrency of 2.
#[tokio::test]
async fn a_resume_runs_at_most_its_concurrency_of_starts_at_once() {
    let node = Node::new().await;
    for n in 1..=5 {
        node.create(n, &format!("g{n}"), "SCS-1Vi-0.5u")
            .await
            .unwrap();
    }
    let boot_id = node.root.path().join("boot_id_now");
    let settings = ResumeSettings {
        on_boot: true,
        concurrency: 2,
    };
    let counts = KindCounts::default();
    for boot in ["boot-1", "boot-2"] {
        std::fs::write(&boot_id, format!("{boot}\n")).unwrap();
        for n in 1..=5 {
            node.hypervisor.power_off(&uuid(n));
        }
        if boot == "boot-2" {
            node.hypervisor
                .slow_starts(std::time::Duration::from_millis(300));
        }
        node.guests
            .resume_after_boot(&settings, &boot_id, &counts)
            .await;
    }
    assert_eq!(counts.get(), BTreeMap::from([("started".into(), 5)]));
    assert_eq!(node.hypervisor.most_starts_at_once(), 2);
}

/// A volume of 1 GiB in the node's store.
fn volume(node: &Node, name: &str, shareable: bool) {
    node.guests
        .volumes
        .create(
            &crate::storage::volumes::VolumeSpec {
                name: name.into(),
                size_gb: 1,
                format: if shareable { "raw" } else { "qcow2" }.into(),
                shareable,
                ..Default::default()
            },
            0,
        )
        .unwrap();
}

fn booting_from(n: u64, name: &str, volume: &str) -> CreateRequest {
    CreateRequest {
        image: String::new(),
        boot_volume: volume.into(),
        ..request(n, name, FLOATING)
    }
}

/// A flavor without a disk boots from the volume the request names: its first disk, no
/// local root disk, no volume made; the volume stays with its data when the guest goes.
#[tokio::test]
async fn a_guest_boots_from_the_volume_it_names_and_leaves_it_when_deleted() {
    let node = Node::new().await;
    volume(&node, "sys", false);
    let guest = node
        .guests
        .create(booting_from(1, "bfv", "sys"))
        .await
        .unwrap();
    assert_eq!(
        guest.intent.boot_volume,
        Some(crate::domain::xml::BootVolume {
            name: "sys".into(),
            made: false
        })
    );
    assert_eq!((guest.root_disk_gb, guest.intent.image.as_str()), (0, ""));
    let xml = node.hypervisor.domains()[0].xml.clone();
    let first = xml.find("<disk").unwrap();
    assert!(
        xml[first..].starts_with("<disk type=\"file\" device=\"disk\"><driver name=\"qemu\" type=\"qcow2\"/><source file=\"")
            && xml[first..xml[first..].find("</disk>").unwrap() + first].contains("volumes/sys.qcow2"),
        "{xml}"
    );
    assert!(!node.dir(&uuid(1)).join("root.qcow2").exists());
    assert!(!node.made_volume(&uuid(1)).exists());
    // Its boot disk cannot be detached.
    let e = node
        .guests
        .detach_volume(&uuid(1), "sys")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("boot disk"), "{e}");
    assert!(node.guests.delete(&uuid(1)).await.unwrap());
    node.assert_nothing_of(&uuid(1));
    assert!(
        node.guests.volumes.get("sys").is_ok(),
        "a named volume stays"
    );
}

/// Each refusal names the field and rule and takes nothing: no domain, files, claim or
/// volume.
#[tokio::test]
async fn boot_volume_refusals_change_nothing() {
    let node = Node::new().await;
    volume(&node, "sys", false);
    volume(&node, "shared", true);
    node.guests
        .create(booting_from(1, "first", "sys"))
        .await
        .unwrap();
    let refused = |r: Result<Guest, GuestError>| match r {
        Ok(g) => panic!("created {}", g.uuid),
        Err(e) => e,
    };
    let e = refused(node.guests.create(booting_from(2, "second", "sys")).await);
    assert!(
        matches!(&e, GuestError::Precondition(m) if m.contains("boot_volume") && m.contains(&uuid(1))),
        "{e}"
    );
    let e = refused(
        node.guests
            .create(booting_from(2, "second", "shared"))
            .await,
    );
    assert!(
        matches!(&e, GuestError::Precondition(m) if m.contains("shareable")),
        "{e}"
    );
    let e = refused(node.guests.create(booting_from(2, "second", "gone")).await);
    assert!(
        matches!(&e, GuestError::NotFound(m) if m.contains("boot_volume")),
        "{e}"
    );
    let with_disk = CreateRequest {
        flavor: "SCS-1Vi-1u-5".into(),
        ..booting_from(2, "second", "sys")
    };
    let e = refused(node.guests.create(with_disk).await);
    assert!(
        matches!(&e, GuestError::Invalid(m) if m.starts_with("boot_volume: flavor SCS-1Vi-1u-5 has a local root disk")),
        "{e}"
    );
    let both = CreateRequest {
        image: "img".into(),
        ..booting_from(2, "second", "sys")
    };
    let e = refused(node.guests.create(both).await);
    assert!(
        matches!(&e, GuestError::Invalid(m) if m.starts_with("image:")),
        "{e}"
    );
    // The made volume's name taken by a volume of someone's: refused, that volume untouched.
    volume(&node, &format!("root-{}", uuid(3)), false);
    let e = refused(node.create(3, "third", FLOATING).await);
    assert!(
        matches!(&e, GuestError::AlreadyExists(m) if m.contains("root-")),
        "{e}"
    );
    assert!(
        node.guests
            .volumes
            .get(&format!("root-{}", uuid(3)))
            .is_ok()
    );
    for n in [2, 3] {
        assert!(node.hypervisor.domains().iter().all(|d| d.uuid != uuid(n)));
        assert!(!node.dir(&uuid(n)).exists());
        assert!(node.placement.lock().get(&uuid(n)).is_none());
    }
    assert_eq!(node.claims(), 1);
}

/// A boot volume made for a guest that has no domain (a create killed halfway) is an orphan
/// once older than the grace; the boot volume of a guest that exists, and any volume made by
/// `VolumeService.Create`, stay.
#[tokio::test]
async fn orphan_boot_volumes_are_removed_and_others_kept() {
    let node = Node::new().await;
    node.create(1, "web", FLOATING).await.unwrap();
    volume(&node, "data", false);
    let base = node.root.path().join("base.qcow2");
    let orphan = format!("root-{}", uuid(9));
    node.guests
        .volumes
        .create_overlay(&orphan, ("img", &base, "qcow2"), 1 << 30, &uuid(9), 0)
        .unwrap();
    let removed = node
        .guests
        .remove_orphans(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(removed, [format!("volume {orphan}")]);
    assert!(node.guests.volumes.get(&orphan).is_err());
    assert!(node.guests.volumes.get("data").is_ok());
    node.assert_made(&uuid(1));
}
