//! The migration saga between two agents over in-memory hypervisors: the target builds the
//! guest's domain from its own claim (not the source's CPUs, which another guest holds
//! there); the source then holds nothing of the guest. A target that refuses, or a libvirt
//! migration that fails, leaves the guest on the source untouched and nothing on the target.
//! An arrival left without Finish or Abort is aborted after its bound, unless its guest runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::domain::Hypervisor;
use crate::domain::events::{DomainEvent, EventKind};
use crate::domain::fake::{FakeHypervisor, Op};
use crate::domain::xml::Emulation;
use crate::guest::CreateRequest;
use crate::guest::testing::{FakeNode, fake_node};
use crate::net::Networks;
use crate::net::link::{Namespace, Netlink};
use crate::placement::PlacementState;
use hvagent_core::counts::KindCounts;

const MOVER: &str = "00000000-0000-4000-8000-00000000000a";
const HOLDER: &str = "00000000-0000-4000-8000-00000000000b";
/// Two dedicated vCPUs and a local root disk.
const FLAVOR: &str = "SCS-2Ci-1u-5";

/// An agent over the fake hypervisor, its store holding image `img` (a blank qcow2 of
/// `image_bytes`: another size is other content), taking guests from other nodes.
struct Node {
    root: tempfile::TempDir,
    hypervisor: Arc<FakeHypervisor>,
    placement: Arc<PlacementState>,
    guests: Arc<Guests>,
}

impl Node {
    async fn new(image_bytes: u64) -> Node {
        let FakeNode {
            root,
            hypervisor,
            placement,
            guests,
        } = fake_node(
            crate::placement::testing::fixture("qemu-2s4c2t-numa"),
            image_bytes,
            BTreeMap::new(),
            |g| {
                g.with_migration(MigrationSettings {
                    libvirt_uri: Some("qemu+tcp://10.0.0.2/system".into()),
                    address: Some("10.0.0.2".into()),
                    partition: Some("/node2".into()),
                })
            },
        )
        .await;
        Node {
            root,
            hypervisor,
            placement,
            guests,
        }
    }

    async fn create(&self, uuid: &str, name: &str) {
        self.guests
            .create(CreateRequest {
                uuid: uuid.into(),
                name: name.into(),
                flavor: FLAVOR.into(),
                image: "img".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    fn dir(&self, uuid: &str) -> std::path::PathBuf {
        GuestFiles::new(self.root.path(), uuid).dir
    }

    /// The guest runs here as it did: running domain, files, the same claim.
    fn has(&self, uuid: &str, claim: &crate::placement::Claim) {
        assert_eq!(
            self.hypervisor.state(uuid).unwrap(),
            DomainState::Running,
            "{uuid} not running"
        );
        assert!(self.dir(uuid).join("root.qcow2").is_file());
        assert_eq!(self.placement.lock().get(uuid), Some(claim));
    }

    /// No domain, no files, no claim of `uuid`.
    fn holds_nothing_of(&self, uuid: &str) {
        assert!(
            self.hypervisor.domains().iter().all(|d| d.uuid != uuid),
            "a domain is left"
        );
        assert!(!self.dir(uuid).exists(), "files are left");
        assert!(self.placement.lock().get(uuid).is_none(), "a claim is left");
    }
}

/// The target agent in this process. libvirt's move is the fake's: the domain leaves the
/// source's hypervisor, and has arrived at the target's (defined from the XML the target
/// answered) when the source says Finish.
struct Local<'a> {
    target: &'a Node,
    dest_xml: Mutex<Option<String>>,
    /// The Finish is lost on the way (the guest has arrived all the same).
    lose_finish: bool,
    /// The Prepare's answer is lost on the way (the target has prepared all the same).
    lose_prepared: bool,
}

impl MigrationPeer for Local<'_> {
    async fn prepare(&self, guest: IncomingGuest) -> Result<MigrationTarget, GuestError> {
        let target = self.target.guests.prepare_incoming(guest).await?;
        if self.lose_prepared {
            return Err(GuestError::Unavailable("the answer went astray".into()));
        }
        *self.dest_xml.lock().unwrap() = Some(target.dest_xml.clone());
        Ok(target)
    }

    async fn finish(&self, uuid: &str) -> Result<Option<Duration>, GuestError> {
        let arrived = self.dest_xml.lock().unwrap().take();
        if let Some(xml) = arrived {
            self.target.hypervisor.define_and_start(&xml).unwrap();
        }
        if self.lose_finish {
            return Err(GuestError::Unavailable("the target went away".into()));
        }
        self.target.guests.finish_incoming(uuid).await
    }

    async fn abort(&self, uuid: &str) -> Result<(), GuestError> {
        self.target.guests.abort_incoming(uuid).await
    }
}

fn peer(target: &Node) -> Local<'_> {
    Local {
        target,
        dest_xml: Mutex::new(None),
        lose_finish: false,
        lose_prepared: false,
    }
}

#[tokio::test]
async fn the_guest_moves_onto_the_targets_claim_and_leaves_nothing_behind() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    // On the target another guest holds the CPUs the mover has on the source.
    target.create(HOLDER, "holder").await;
    let source_claim = source.placement.lock().get(MOVER).cloned().unwrap();
    let held = target.placement.lock().get(HOLDER).cloned().unwrap();
    assert_eq!(
        source_claim.dedicated_cpus().collect::<Vec<_>>(),
        held.dedicated_cpus().collect::<Vec<_>>()
    );
    let local = peer(&target);
    source.guests.migrate(MOVER, &local).await.unwrap();

    source.holds_nothing_of(MOVER);
    let arrived = target.guests.get(MOVER).await.unwrap();
    assert_eq!(arrived.state, DomainState::Running);
    assert_eq!(arrived.intent.store, target.root.path());
    let claim = target.placement.lock().get(MOVER).cloned().unwrap();
    assert_eq!(arrived.intent.claim, claim);
    let cpus: Vec<u32> = claim.dedicated_cpus().collect();
    assert!(
        cpus.iter().all(|c| !held.dedicated_cpus().any(|h| h == *c)),
        "the mover got the holder's CPUs {cpus:?}"
    );
    let xml = target.hypervisor.live_xml(MOVER).unwrap();
    for cpu in &cpus {
        assert!(xml.contains(&format!("cpuset=\"{cpu}\"")), "{xml}");
    }
    assert!(
        xml.contains(&format!("{}/", target.dir(MOVER).display()))
            && xml.contains("<partition>/node2</partition>"),
        "{xml}"
    );
    // Its files are on the target: overlay on the target's image, seed, and nothing pending.
    assert!(target.dir(MOVER).join("root.qcow2").is_file());
    assert!(target.dir(MOVER).join("seed.img").is_file());
    assert!(target.guests.settled());
}

impl Node {
    /// Makes store volume `name` (1 GiB; shareable ones raw) and attaches it to `uuid`.
    async fn attach(&self, uuid: &str, name: &str, shareable: bool) {
        self.guests
            .create_volume(crate::guest::VolumeRequest {
                name: name.into(),
                size_gb: 1,
                format: if shareable { "raw" } else { "qcow2" }.into(),
                shareable,
                ..Default::default()
            })
            .await
            .unwrap();
        self.guests.attach_volume(uuid, name).await.unwrap();
    }

    /// What this node, as the source, sends the target for MOVER (as `migrate` does), with
    /// `volumes`.
    fn incoming(&self, volumes: Vec<VolumeRecord>) -> IncomingGuest {
        IncomingGuest {
            uuid: MOVER.into(),
            domain_xml: self.hypervisor.migratable_xml(MOVER).unwrap(),
            image_sha256: self.guests.images.get("img").unwrap().sha256,
            root_disk_bytes: 5 << 30,
            seed: std::fs::read(GuestFiles::new(self.root.path(), MOVER).seed()).unwrap(),
            volumes,
        }
    }

    fn volume_names(&self) -> Vec<String> {
        self.guests
            .volumes
            .list()
            .0
            .into_iter()
            .map(|r| r.name)
            .collect()
    }
}

/// A store volume moves with its guest: the target takes it in under its name (an empty
/// file of its size, which libvirt copies into), the domain there has the target's path, and
/// the source forgets it. When the move fails, or the target has a volume of that name, the
/// source keeps it and the target holds none; a shareable volume does not move.
#[tokio::test]
async fn a_store_volume_moves_with_its_guest() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    source.attach(MOVER, "data", false).await;
    let claim = source.placement.lock().get(MOVER).cloned().unwrap();
    let record = source.guests.volumes.get("data").unwrap();

    // libvirt fails the move: the volume stays the source's, the target took in none.
    source.hypervisor.fail_once(Op::Migrate);
    let failed = source
        .guests
        .migrate(MOVER, &peer(&target))
        .await
        .unwrap_err();
    assert!(matches!(failed, GuestError::Libvirt(_)), "{failed:?}");
    source.has(MOVER, &claim);
    assert_eq!(source.volume_names(), ["data"]);
    assert!(target.volume_names().is_empty());
    target.holds_nothing_of(MOVER);

    // A target with a volume of that name refuses before it takes anything; its own stays.
    let crowded = Node::new(1 << 30).await;
    crowded
        .guests
        .create_volume(crate::guest::VolumeRequest {
            name: "data".into(),
            size_gb: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = source
        .guests
        .migrate(MOVER, &peer(&crowded))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GuestError::Precondition(m) if m == "volumes[0]: this node has a volume named \"data\" already"),
        "{refused:?}"
    );
    assert_eq!(
        crowded.guests.volumes.get("data").unwrap().size_bytes,
        2 << 30
    );
    crowded.holds_nothing_of(MOVER);
    source.has(MOVER, &claim);

    source.guests.migrate(MOVER, &peer(&target)).await.unwrap();
    source.holds_nothing_of(MOVER);
    assert!(
        source.volume_names().is_empty(),
        "the source kept the volume"
    );
    let arrived = target.guests.volumes.get("data").unwrap();
    assert_eq!(
        (arrived.format.as_str(), arrived.size_bytes, &arrived.source),
        (record.format.as_str(), record.size_bytes, &record.source)
    );
    let file = target.guests.volumes.file("data", "qcow2");
    assert_eq!(qcow2_virtual_size(&file), Some(1 << 30));
    let xml = target.hypervisor.live_xml(MOVER).unwrap();
    assert!(
        xml.contains(&format!("<source file=\"{}\"", file.display())),
        "{xml}"
    );
    let guest = target.guests.get(MOVER).await.unwrap();
    assert_eq!(target.guests.volumes_of(&guest).await.unwrap(), ["data"]);
    // Arrived: the target's for good (no longer its arrival's).
    assert_eq!(arrived.arriving_for, "");

    // A shareable volume stays with its other guests: the guest does not move.
    target.attach(MOVER, "shared", true).await;
    let back = Node::new(1 << 30).await;
    let stays = target
        .guests
        .migrate(MOVER, &peer(&back))
        .await
        .unwrap_err();
    assert!(
        matches!(&stays, GuestError::Precondition(m) if m.ends_with("cannot migrate: volume \"shared\" is shareable (its other guests stay here)")),
        "{stays:?}"
    );
    back.holds_nothing_of(MOVER);
    assert!(back.volume_names().is_empty());
}

#[tokio::test]
async fn a_refusal_or_a_failed_migration_leaves_the_guest_on_the_source() {
    // The target's "img" has other content: Prepare refuses, naming it.
    let (source, other) = (Node::new(1 << 30).await, Node::new(2 << 30).await);
    source.create(MOVER, "mover").await;
    let claim = source.placement.lock().get(MOVER).cloned().unwrap();
    let refused = source
        .guests
        .migrate(MOVER, &peer(&other))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GuestError::Precondition(m) if m.contains("\"img\"")),
        "{refused:?}"
    );
    source.has(MOVER, &claim);
    other.holds_nothing_of(MOVER);

    // libvirt fails the move: the target aborts, the guest runs on at the source.
    let target = Node::new(1 << 30).await;
    source.hypervisor.fail_once(Op::Migrate);
    let failed = source
        .guests
        .migrate(MOVER, &peer(&target))
        .await
        .unwrap_err();
    assert!(matches!(failed, GuestError::Libvirt(_)), "{failed:?}");
    source.has(MOVER, &claim);
    target.holds_nothing_of(MOVER);
    assert!(target.guests.settled(), "the arrival is still marked busy");

    // Abort is idempotent, and Finish of nothing prepared is NOT_FOUND.
    target.guests.abort_incoming(MOVER).await.unwrap();
    assert!(matches!(
        target.guests.finish_incoming(MOVER).await,
        Err(GuestError::NotFound(_))
    ));
}

#[tokio::test]
async fn only_a_running_guest_without_devices_moves() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    source.guests.pause(MOVER).await.unwrap();
    let paused = source
        .guests
        .migrate(MOVER, &peer(&target))
        .await
        .unwrap_err();
    assert!(
        matches!(&paused, GuestError::Precondition(m) if m.contains("paused")),
        "{paused:?}"
    );
    target.holds_nothing_of(MOVER);
    // A node without [migration] libvirt_uri and address takes no guests.
    let closed = Node::new(1 << 30).await;
    let guests = Arc::new(Guests::new(
        closed.hypervisor.clone(),
        closed.placement.clone(),
        closed.root.path(),
        Ok(Emulation::Tcg),
        Vec::new(),
        Arc::new(Networks::new(
            Netlink::open(Namespace::default()).unwrap(),
            closed.root.path(),
            KindCounts::default(),
        )),
    ));
    let refused = guests
        .prepare_incoming(IncomingGuest {
            uuid: MOVER.into(),
            domain_xml: String::new(),
            image_sha256: String::new(),
            root_disk_bytes: 0,
            seed: Vec::new(),
            volumes: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GuestError::Precondition(m) if m.contains("[migration]")),
        "{refused:?}"
    );
}

/// A prepared arrival that neither Finish nor Abort ends within PREPARED_FOR is aborted: its
/// claim and files go (a source that died mid-migration holds nothing here for ever).
#[tokio::test]
async fn a_forgotten_arrival_is_aborted() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    target
        .guests
        .prepare_incoming(source.incoming(Vec::new()))
        .await
        .unwrap();
    assert!(target.placement.lock().get(MOVER).is_some());
    assert!(target.dir(MOVER).join("root.qcow2").is_file());
    assert!(!target.guests.settled(), "the arrival is busy");
    tokio::time::pause();
    tokio::time::advance(PREPARED_FOR + Duration::from_secs(1)).await;
    tokio::time::resume();
    for _ in 0..100 {
        if target.guests.settled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    target.holds_nothing_of(MOVER);
    assert!(target.guests.settled());
}

/// An arrival whose guest runs here when the bound passes (its source's Finish was lost) is
/// taken over, never removed: the source gave the guest up when libvirt moved it.
#[tokio::test]
async fn an_arrived_guest_whose_finish_was_lost_is_kept() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    let prepared = target
        .guests
        .prepare_incoming(source.incoming(Vec::new()))
        .await
        .unwrap();
    // libvirt moved it; no Finish comes.
    target
        .hypervisor
        .define_and_start(&prepared.dest_xml)
        .unwrap();
    let claim = target.placement.lock().get(MOVER).cloned().unwrap();
    tokio::time::pause();
    tokio::time::advance(PREPARED_FOR + Duration::from_secs(1)).await;
    tokio::time::resume();
    for _ in 0..100 {
        if target.guests.settled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(target.guests.settled(), "the arrival never ended");
    target.has(MOVER, &claim);
    assert_eq!(target.guests.get(MOVER).await.unwrap().intent.claim, claim);
}

/// A Prepare whose answer is lost: the source asks the target to abort what it prepared,
/// and the guest runs on at the source.
#[tokio::test]
async fn a_lost_prepare_answer_is_aborted_on_the_target() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    let claim = source.placement.lock().get(MOVER).cloned().unwrap();
    let lossy = Local {
        lose_prepared: true,
        ..peer(&target)
    };
    let e = source.guests.migrate(MOVER, &lossy).await.unwrap_err();
    assert!(matches!(e, GuestError::Unavailable(_)), "{e:?}");
    source.has(MOVER, &claim);
    target.holds_nothing_of(MOVER);
    assert!(target.guests.settled(), "the arrival is still marked busy");
}

/// A Finish lost after libvirt moved the guest is no failed migration: the source holds
/// nothing of the guest and says it runs on the target.
#[tokio::test]
async fn a_lost_finish_still_frees_the_source() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    let lossy = Local {
        lose_finish: true,
        ..peer(&target)
    };
    let e = source.guests.migrate(MOVER, &lossy).await.unwrap_err();
    assert!(
        matches!(&e, GuestError::Internal(m) if m.contains("runs on the target now")),
        "{e:?}"
    );
    source.holds_nothing_of(MOVER);
    assert_eq!(
        target.hypervisor.state(MOVER).unwrap(),
        DomainState::Running
    );
}

/// A source whose domain has a disk it does not bring as a volume is refused: libvirt would
/// write the guest's data over whatever has that path on the target.
#[tokio::test]
async fn a_disk_the_source_does_not_bring_is_refused() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    source.attach(MOVER, "data", false).await;
    let refused = target
        .guests
        .prepare_incoming(source.incoming(Vec::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GuestError::Invalid(m) if m.starts_with("domain_xml: disk vd") && m.ends_with("is neither the guest's nor a volume it brings")),
        "{refused:?}"
    );
    target.holds_nothing_of(MOVER);
    assert!(target.volume_names().is_empty());
    assert!(target.guests.settled());
}

/// Volumes of an arrival a restart cut short are swept like its files (the guest never
/// arrived); those of a guest that arrived though its Finish was lost are kept, as its own.
#[tokio::test]
async fn a_restart_sweeps_the_volumes_of_an_arrival_that_never_came() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    source.attach(MOVER, "data", false).await;
    let record = source.guests.volumes.get("data").unwrap();
    target
        .guests
        .prepare_incoming(source.incoming(vec![record]))
        .await
        .unwrap();
    assert_eq!(
        target.guests.volumes.get("data").unwrap().arriving_for,
        MOVER
    );
    // Nobody else may take or remove it meanwhile.
    target.create(HOLDER, "holder").await;
    let taken = target
        .guests
        .attach_volume(HOLDER, "data")
        .await
        .unwrap_err()
        .to_string();
    assert!(taken.contains("is arriving with guest"), "{taken}");
    let removed = target.guests.delete_volume("data").await.unwrap_err();
    assert!(
        matches!(&removed, GuestError::Precondition(m) if m.contains("is arriving with guest")),
        "{removed:?}"
    );
    target.guests.delete(HOLDER).await.unwrap();
    // What a restarted agent's sweep sees: no domain of the guest.
    let removed = target.guests.remove_orphans(Duration::ZERO).await.unwrap();
    assert!(removed.contains(&"volume data".to_string()), "{removed:?}");
    assert!(target.volume_names().is_empty());
    assert!(!target.guests.volumes.file("data", "qcow2").exists());
    target.guests.abort_incoming(MOVER).await.unwrap();

    // The guest arrives, its Finish is lost: the sweep keeps its volume and settles it.
    let lossy = Local {
        lose_finish: true,
        ..peer(&target)
    };
    source.guests.migrate(MOVER, &lossy).await.unwrap_err();
    let removed = target.guests.remove_orphans(Duration::ZERO).await.unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(target.guests.volumes.get("data").unwrap().arriving_for, "");
}

/// A drain moves each running guest to the first target that takes it, reports the rest
/// with every target's answer (one unreachable, one full), leaves a stopped guest, connects
/// to each target once, and from its start admits nothing new until Undrain.
#[tokio::test]
async fn a_drain_moves_what_fits_and_says_why_the_rest_stays() {
    const FITS: &str = "00000000-0000-4000-8000-000000000001";
    const NO_ROOM: &str = "00000000-0000-4000-8000-000000000002";
    const STOPPED: &str = "00000000-0000-4000-8000-000000000003";
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(FITS, "fits").await;
    source.create(NO_ROOM, "no-room").await;
    source
        .guests
        .create(CreateRequest {
            uuid: STOPPED.into(),
            name: "stopped".into(),
            flavor: "SCS-1Vi-0.5u-5".into(),
            image: "img".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    source
        .guests
        .stop(STOPPED, true, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    // The target has room for one more of these guests (their memory on the NUMA nodes of
    // their CPUs: two fit).
    target.create(HOLDER, "holder").await;
    let stays = source.placement.lock().get(NO_ROOM).cloned().unwrap();
    let connects = std::sync::atomic::AtomicUsize::new(0);
    let (target_ref, connects_ref) = (&target, &connects);
    let targets = vec!["down:1".to_string(), "up:2".to_string()];
    let report = source
        .guests
        .drain(&targets, |t| async move {
            connects_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if t == "down:1" {
                Err(GuestError::Unavailable("cannot reach the agent".into()))
            } else {
                Ok(peer(target_ref))
            }
        })
        .await
        .unwrap();

    assert_eq!(connects.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(
        report
            .moved
            .iter()
            .map(|m| (m.uuid.as_str(), m.target.as_str()))
            .collect::<Vec<_>>(),
        vec![(FITS, "up:2")]
    );
    source.holds_nothing_of(FITS);
    assert_eq!(
        target.guests.get(FITS).await.unwrap().state,
        DomainState::Running
    );
    let stayed: BTreeMap<&str, &str> = report
        .stayed
        .iter()
        .map(|s| (s.uuid.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(stayed.len(), 2, "{stayed:?}");
    let no_room = stayed[NO_ROOM];
    assert!(
        no_room.starts_with("down:1: cannot reach the agent; up:2: dedicated memory"),
        "{no_room}"
    );
    assert!(stayed[STOPPED].contains("shut off"), "{}", stayed[STOPPED]);
    source.has(NO_ROOM, &stays);
    target.holds_nothing_of(NO_ROOM);

    // Draining: nothing new is admitted here, a retried Create of a held guest still answers.
    assert!(source.guests.draining());
    assert!(source.root.path().join("draining").is_file());
    let refused = source
        .guests
        .create(CreateRequest {
            uuid: MOVER.into(),
            name: "late".into(),
            flavor: FLAVOR.into(),
            image: "img".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GuestError::Refused(r) if r.limited_by == "draining"),
        "{refused:?}"
    );
    source.holds_nothing_of(MOVER);
    // Bad targets change nothing.
    let bad = source
        .guests
        .drain(&[], |_| async { Ok(peer(target_ref)) })
        .await
        .unwrap_err();
    assert!(matches!(bad, GuestError::Invalid(_)), "{bad:?}");

    // One drain at a time, and no Undrain while one runs.
    {
        let _running = source.guests.drain_running.try_lock().unwrap();
        let again = source
            .guests
            .drain(&targets, |_| async { Ok(peer(target_ref)) })
            .await
            .unwrap_err();
        assert!(
            matches!(&again, GuestError::Precondition(m) if m.contains("under way")),
            "{again:?}"
        );
        let undrain = source.guests.undrain().await.unwrap_err();
        assert!(
            matches!(&undrain, GuestError::Precondition(m) if m.contains("under way")),
            "{undrain:?}"
        );
        assert!(source.guests.draining());
    }
    source.guests.undrain().await.unwrap();
    assert!(!source.guests.draining());
    assert!(!source.root.path().join("draining").exists());
    source.create(MOVER, "late").await;
}

/// The drain marker outlives the agent: a Guests over the same store (a restart) admits
/// nothing until Undrain.
#[tokio::test]
async fn a_restarted_agent_is_still_draining() {
    let node = Node::new(1 << 30).await;
    node.guests.set_draining(true).await.unwrap();
    node.placement.lock().set_draining(false);
    assert!(!node.guests.draining());
    node.guests.restore_draining();
    assert!(node.guests.draining());
    let capacity = node
        .placement
        .lock()
        .capacity(&crate::flavor::parse(FLAVOR).unwrap().spec);
    assert_eq!(
        (capacity.more, capacity.limited_by.as_str()),
        (0, "draining")
    );
}

/// A guest arriving under a name that a Create still in flight on the target has taken (no
/// domain yet) is refused before anything is claimed; the source keeps it.
#[tokio::test]
async fn an_arrival_whose_name_a_create_in_flight_holds_is_refused() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    let claim = source.placement.lock().get(MOVER).cloned().unwrap();
    let creating = target.guests.busy.mark(HOLDER, "mover");
    let refused = source
        .guests
        .migrate(MOVER, &peer(&target))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GuestError::AlreadyExists(m) if m.contains("\"mover\"") && m.contains(HOLDER)),
        "{refused:?}"
    );
    source.has(MOVER, &claim);
    target.holds_nothing_of(MOVER);
    drop(creating);
}

/// The `migration` events a receiver has got so far: (UUID, phase).
fn phases(events: &mut tokio::sync::broadcast::Receiver<DomainEvent>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.kind == EventKind::Migration {
            assert!(!e.name.is_empty(), "{e:?}");
            out.push((e.uuid, e.detail.to_string()));
        }
    }
    out
}

#[tokio::test]
async fn both_halves_announce_their_phases_in_order() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    let (mut from, mut to) = (source.hypervisor.subscribe(), target.hypervisor.subscribe());
    source.guests.migrate(MOVER, &peer(&target)).await.unwrap();
    let said = |ps: &[&str]| -> Vec<(String, String)> {
        ps.iter()
            .map(|p| (MOVER.to_string(), p.to_string()))
            .collect()
    };
    assert_eq!(
        phases(&mut from),
        said(&["preparing", "copying", "finishing", "migrated"])
    );
    assert_eq!(phases(&mut to), said(&["arriving", "arrived"]));

    // A failed move: the source says so, the target gives the arrival up.
    let back = Node::new(1 << 30).await;
    let mut back_events = back.hypervisor.subscribe();
    let mut to = target.hypervisor.subscribe();
    target.hypervisor.fail_once(Op::Migrate);
    target
        .guests
        .migrate(MOVER, &peer(&back))
        .await
        .unwrap_err();
    assert_eq!(phases(&mut to), said(&["preparing", "copying", "failed"]));
    assert_eq!(phases(&mut back_events), said(&["arriving", "aborted"]));

    // A refused Prepare: failed, and the target never announced an arrival.
    let other = Node::new(2 << 30).await;
    let mut other_events = other.hypervisor.subscribe();
    target
        .guests
        .migrate(MOVER, &peer(&other))
        .await
        .unwrap_err();
    assert_eq!(phases(&mut to), said(&["preparing", "failed"]));
    assert!(phases(&mut other_events).is_empty());
}

#[tokio::test]
async fn a_target_without_the_guests_network_refuses_before_taking_anything() {
    let (source, target) = (Node::new(1 << 30).await, Node::new(1 << 30).await);
    source.create(MOVER, "mover").await;
    // The mover has a NIC in host bridge "br-src", which the target does not have.
    let spec = crate::domain::xml::NicSpec {
        attach: NicAttach::Bridge {
            bridge: "br-src".into(),
            tap: crate::net::nic::tap_name(MOVER, 0),
        },
        mac: "52:54:00:00:00:0a".into(),
    };
    source
        .hypervisor
        .attach_device(MOVER, &crate::domain::xml::interface_xml(&spec).unwrap())
        .unwrap();
    let mut intent = source.guests.get(MOVER).await.unwrap().intent;
    intent.networks.push("br-src".into());
    intent.nics.push(crate::domain::xml::NicIntent {
        mac: spec.mac.clone(),
        ..Default::default()
    });
    source.hypervisor.set_intent(MOVER, &intent).unwrap();
    let claim = source.placement.lock().get(MOVER).cloned().unwrap();
    let mut events = target.hypervisor.subscribe();

    let refused = source
        .guests
        .migrate(MOVER, &peer(&target))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GuestError::Precondition(m)
            if m == "networks[0]: no network or bridge named \"br-src\" on this node"),
        "{refused:?}"
    );
    source.has(MOVER, &claim);
    target.holds_nothing_of(MOVER);
    assert!(target.guests.settled());
    assert!(
        phases(&mut events).is_empty(),
        "the target announced an arrival"
    );
}
