//! Attach, detach and volume deletes against the in-memory hypervisor, with real volume files:
//! who uses a volume, letters, idempotence, and refusals that change nothing.

use std::sync::Arc;

use super::*;
use crate::domain::Hypervisor;
use crate::domain::fake::{FakeHypervisor, Op};
use crate::guest::CreateRequest;
use crate::guest::testing::{FakeNode, plain_node};

const A: &str = "00000000-0000-4000-8000-0000000000a1";
const B: &str = "00000000-0000-4000-8000-0000000000b2";
const MISSING: &str = "00000000-0000-4000-8000-0000000000ff";

struct Node {
    _root: tempfile::TempDir,
    hypervisor: Arc<FakeHypervisor>,
    guests: Arc<Guests>,
}

impl Node {
    /// Two running guests, a qcow2 volume `data` and a shareable raw volume `shared`.
    async fn new() -> Node {
        let FakeNode {
            root,
            hypervisor,
            guests,
            ..
        } = plain_node().await;
        for (uuid, name) in [(A, "a"), (B, "b")] {
            guests
                .create(CreateRequest {
                    uuid: uuid.into(),
                    name: name.into(),
                    flavor: "SCS-1Vi-1u".into(),
                    image: "img".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        guests
            .create_volume(VolumeRequest {
                name: "data".into(),
                size_gb: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        guests
            .create_volume(VolumeRequest {
                name: "shared".into(),
                size_gb: 1,
                format: "raw".into(),
                shareable: true,
                ..Default::default()
            })
            .await
            .unwrap();
        Node {
            _root: root,
            hypervisor,
            guests,
        }
    }

    fn xml(&self, uuid: &str) -> String {
        self.hypervisor.live_xml(uuid).unwrap()
    }

    fn targets(&self, uuid: &str) -> Vec<String> {
        volume_disk::disks(&self.xml(uuid))
            .unwrap()
            .into_iter()
            .map(|d| d.target)
            .collect()
    }
}

fn code(e: VolumeCallError) -> &'static str {
    match e {
        VolumeCallError::Guest(GuestError::NotFound(_)) => "not found",
        VolumeCallError::Guest(GuestError::Precondition(_)) => "precondition",
        VolumeCallError::Guest(GuestError::Invalid(_)) => "invalid",
        other => panic!("unexpected: {other}"),
    }
}

#[tokio::test]
async fn attach_takes_the_first_free_letter_and_is_idempotent() {
    let node = Node::new().await;
    let before = node.targets(A);
    assert_eq!(before, ["vda", "vdb"], "root and seed");
    let (_, volumes) = node.guests.attach_volume(A, "data").await.unwrap();
    assert_eq!(volumes, ["data"]);
    assert_eq!(node.targets(A), ["vda", "vdb", "vdc"]);
    let xml = node.xml(A);
    assert!(xml.contains("<serial>data</serial>"), "{xml}");
    assert!(xml.contains("volumes/data.qcow2"), "{xml}");
    // Again: no second disk, no second libvirt call.
    node.guests.attach_volume(A, "data").await.unwrap();
    assert_eq!(node.hypervisor.calls(Op::Attach), [A]);
    let (_, volumes) = node.guests.attach_volume(A, "shared").await.unwrap();
    assert_eq!(volumes, ["data", "shared"]);
    assert_eq!(node.targets(A), ["vda", "vdb", "vdc", "vdd"]);
    let (record, users) = node.guests.volume("data").await.unwrap();
    assert_eq!((record.name.as_str(), users), ("data", vec![A.to_string()]));
    assert_eq!(
        node.guests
            .attached_volumes()
            .await
            .unwrap()
            .get(A)
            .unwrap(),
        &["data", "shared"]
    );
}

#[tokio::test]
async fn a_volume_in_use_cannot_be_attached_elsewhere_unless_shareable() {
    let node = Node::new().await;
    node.guests.attach_volume(A, "data").await.unwrap();
    let xml_b = node.xml(B);
    let e = node.guests.attach_volume(B, "data").await.unwrap_err();
    assert!(e.to_string().contains(A), "names the user: {e}");
    assert_eq!(code(e), "precondition");
    assert_eq!(node.xml(B), xml_b, "nothing changed");
    node.guests.attach_volume(A, "shared").await.unwrap();
    node.guests.attach_volume(B, "shared").await.unwrap();
    let (_, users) = node.guests.volume("shared").await.unwrap();
    assert_eq!(users, [A, B]);
    assert!(node.xml(B).contains("<shareable/>"));
}

#[tokio::test]
async fn missing_guests_and_volumes_are_not_found_and_change_nothing() {
    let node = Node::new().await;
    let (xa, xb) = (node.xml(A), node.xml(B));
    assert_eq!(
        code(
            node.guests
                .attach_volume(MISSING, "data")
                .await
                .unwrap_err()
        ),
        "not found"
    );
    assert_eq!(
        code(node.guests.attach_volume(A, "nope").await.unwrap_err()),
        "not found"
    );
    assert_eq!(
        code(
            node.guests
                .attach_volume("not-a-uuid", "data")
                .await
                .unwrap_err()
        ),
        "invalid"
    );
    assert_eq!(
        code(node.guests.attach_volume(A, "../x").await.unwrap_err()),
        "invalid"
    );
    assert!(node.hypervisor.calls(Op::Attach).is_empty());
    assert_eq!((node.xml(A), node.xml(B)), (xa, xb));
}

#[tokio::test]
async fn detach_frees_the_volume_and_delete_needs_it_free() {
    let node = Node::new().await;
    node.guests.attach_volume(A, "data").await.unwrap();
    let e = node.guests.delete_volume("data").await.unwrap_err();
    assert!(
        matches!(&e, GuestError::Precondition(m) if m.contains(A)),
        "{e}"
    );
    assert!(node.guests.volumes.get("data").is_ok(), "kept");
    let (_, volumes) = node.guests.detach_volume(A, "data").await.unwrap();
    assert!(volumes.is_empty());
    assert_eq!(node.targets(A), ["vda", "vdb"]);
    // Detaching what is not attached is the guest as it is.
    node.guests.detach_volume(A, "data").await.unwrap();
    assert_eq!(node.hypervisor.calls(Op::Detach), [A]);
    node.guests.attach_volume(B, "data").await.unwrap();
    node.guests.detach_volume(B, "data").await.unwrap();
    node.guests.delete_volume("data").await.unwrap();
    assert!(matches!(
        node.guests.volumes.get("data"),
        Err(VolumeError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_guest_delete_leaves_its_volumes_free() {
    let node = Node::new().await;
    node.guests.attach_volume(A, "data").await.unwrap();
    node.guests.delete(A).await.unwrap();
    let (_, users) = node.guests.volume("data").await.unwrap();
    assert!(users.is_empty());
    node.guests.attach_volume(B, "data").await.unwrap();
}

#[tokio::test]
async fn a_failed_attach_changes_nothing() {
    let node = Node::new().await;
    node.hypervisor.fail_once(Op::Attach);
    let xml = node.xml(A);
    assert!(node.guests.attach_volume(A, "data").await.is_err());
    assert_eq!(node.xml(A), xml);
    let (_, users) = node.guests.volume("data").await.unwrap();
    assert!(users.is_empty());
    node.guests.attach_volume(A, "data").await.unwrap();
}

#[tokio::test]
async fn two_attaches_of_one_volume_at_once_one_wins() {
    let node = Node::new().await;
    let (arrived, release) = node.hypervisor.hold(Op::Attach);
    let g = node.guests.clone();
    let first = tokio::spawn(async move { g.attach_volume(A, "data").await });
    arrived.await.unwrap();
    let g = node.guests.clone();
    let second = tokio::spawn(async move { g.attach_volume(B, "data").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished(), "waits for the first's attach");
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(code(second.await.unwrap().unwrap_err()), "precondition");
}

#[tokio::test]
async fn a_guest_that_keeps_the_disk_is_deadline_exceeded_and_the_volume_stays_in_use() {
    let node = Node::new().await;
    node.guests.attach_volume(A, "data").await.unwrap();
    node.hypervisor.ignore_eject();
    let wait = Duration::from_millis(600);
    let e = node
        .guests
        .detach_within(A, "data", wait)
        .await
        .unwrap_err();
    match &e {
        VolumeCallError::NotReleased(m) => {
            assert!(m.contains(A) && m.contains("has not released"), "{m}")
        }
        other => panic!("expected NotReleased, got {other}"),
    }
    // Still the guest's (its live XML has it): not attachable elsewhere, not deletable.
    assert_eq!(
        code(node.guests.attach_volume(B, "data").await.unwrap_err()),
        "precondition"
    );
    assert!(node.guests.delete_volume("data").await.is_err());
    // A retry asks the running guest again (the definition no longer has the disk); a guest
    // that now listens lets it go, and the volume is free.
    node.hypervisor.heed_eject();
    node.guests.detach_within(A, "data", wait).await.unwrap();
    assert_eq!(node.hypervisor.calls(Op::Detach), [A, A]);
    assert_eq!(node.targets(A), ["vda", "vdb"]);
    node.guests.attach_volume(B, "data").await.unwrap();
}

/// An attach and a Create retry of a guest booted from a volume, interleaved as they deadlocked
/// when the attach took the guest's busy mark before the attach lock: the attach is held (at
/// its listing of the domains) with whatever it took, the retry starts and waits, and both
/// must finish once the attach goes on.
#[tokio::test]
async fn an_attach_and_a_create_retry_of_the_same_guest_both_finish() {
    let node = Node::new().await;
    node.guests
        .create_volume(VolumeRequest {
            name: "system".into(),
            size_gb: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let create = CreateRequest {
        uuid: MISSING.into(),
        name: "c".into(),
        flavor: "SCS-1Vi-1u".into(),
        boot_volume: "system".into(),
        ..Default::default()
    };
    node.guests.create(create.clone()).await.unwrap();
    let (arrived, release) = node.hypervisor.hold(Op::List);
    let g = node.guests.clone();
    let attach = tokio::spawn(async move { g.attach_volume(MISSING, "data").await });
    arrived.await.unwrap();
    let g = node.guests.clone();
    let retry = tokio::spawn(async move { g.create(create).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    release.send(()).unwrap();
    let both = async { (attach.await.unwrap(), retry.await.unwrap()) };
    let (attached, retried) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the attach and the Create retry wait for each other");
    assert_eq!(attached.unwrap().1, ["data"]);
    assert_eq!(retried.unwrap().uuid, MISSING);
}
