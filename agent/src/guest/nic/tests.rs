//! NIC hot-plug against the in-memory hypervisor: slots and intent edits, the interface XML
//! read back, refusals that change nothing, a failed attach undone, detach (also of a NIC in
//! the middle), a guest that does not release the NIC, and the start-up pass.

use std::sync::Arc;

use super::*;
use crate::domain::Hypervisor;
use crate::domain::fake::{FakeHypervisor, Op};
use crate::guest::CreateRequest;
use crate::guest::testing::{FakeNode, plain_node};

const A: &str = "00000000-0000-4000-8000-0000000000a1";

struct Node {
    _root: tempfile::TempDir,
    hypervisor: Arc<FakeHypervisor>,
    guests: Arc<Guests>,
}

impl Node {
    /// One running guest `A` without NICs, and no managed networks.
    async fn new() -> Node {
        let FakeNode {
            root,
            hypervisor,
            guests,
            ..
        } = plain_node().await;
        guests
            .create(CreateRequest {
                uuid: A.into(),
                name: "a".into(),
                flavor: "SCS-1Vi-1u".into(),
                image: "img".into(),
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

    fn intent(&self) -> Intent {
        let d = self.hypervisor.guests().unwrap();
        d.into_iter().find(|d| d.uuid == A).unwrap().intent.unwrap()
    }

    fn macs(&self) -> Vec<String> {
        interface_macs(&self.hypervisor.live_xml(A).unwrap()).unwrap()
    }

    /// NICs `macs` in host bridge `br`, put into the domain and the intent as an attach
    /// leaves them (slots as given).
    fn with_nics(&self, nics: &[(&str, Option<usize>)]) {
        let mut intent = self.intent();
        for (mac, slot) in nics {
            let spec = NicSpec {
                attach: NicAttach::Bridge {
                    bridge: "br".into(),
                    tap: nic::tap_name(A, slot.unwrap_or(intent.nics.len())),
                },
                mac: mac.to_string(),
            };
            self.hypervisor
                .attach_device(A, &interface_xml(&spec).unwrap())
                .unwrap();
            intent = with_nic(
                &intent,
                "br",
                NicIntent {
                    mac: mac.to_string(),
                    slot: *slot,
                    ..NicIntent::default()
                },
            );
        }
        self.hypervisor.set_intent(A, &intent).unwrap();
    }
}

fn nic_at(mac: &str, slot: Option<usize>) -> NicIntent {
    NicIntent {
        mac: mac.into(),
        slot,
        ..NicIntent::default()
    }
}

#[tokio::test]
async fn the_first_free_slot_is_taken_and_a_detach_keeps_the_others_slots() {
    let empty = Node::new().await.intent();
    let intent = with_nic(
        &with_nic(
            &with_nic(&empty, "n0", nic_at("m0", None)),
            "n1",
            nic_at("m1", None),
        ),
        "n2",
        nic_at("m2", None),
    );
    assert_eq!(intent.networks, ["n0", "n1", "n2"]);
    assert_eq!(free_slot(&intent.nics), Some(3));
    // The middle one goes: the last moves up the list and keeps slot 2 (its tap's name).
    let after = without_nic(&intent, 1);
    assert_eq!(after.networks, ["n0", "n2"]);
    assert_eq!(after.nics, [nic_at("m0", None), nic_at("m2", Some(2))]);
    assert_eq!(after.nics[1].slot_at(1), 2);
    // Slot 1 is free again, and taken by the next NIC.
    assert_eq!(free_slot(&after.nics), Some(1));
    let full: Vec<NicIntent> = (0..nic::MAX_NICS).map(|_| NicIntent::default()).collect();
    assert_eq!(free_slot(&full), None);
}

/// Older intents may list networks without NIC entries: the new NIC lines up with its
/// network all the same.
#[tokio::test]
async fn a_new_nic_lines_up_with_its_network() {
    let intent = Intent {
        networks: vec!["old".into()],
        ..Node::new().await.intent()
    };
    let new = with_nic(&intent, "new", nic_at("m", Some(1)));
    assert_eq!(new.networks, ["old", "new"]);
    assert_eq!(new.nics.len(), 2);
    assert_eq!(new.nics[1].mac, "m");
}

#[test]
fn the_interface_xml_is_read_back_by_its_mac() {
    let tap = nic::tap_name(A, 3);
    let xml = interface_xml(&NicSpec {
        attach: NicAttach::Tap(tap.clone()),
        mac: "02:00:00:00:00:0a".into(),
    })
    .unwrap();
    assert_eq!(
        xml,
        format!(
            "<interface type=\"ethernet\"><mac address=\"02:00:00:00:00:0a\"/><target dev=\"{tap}\" managed=\"no\"/><model type=\"virtio\"/></interface>"
        )
    );
    let domain = format!(
        "<domain><devices><disk><mac address=\"02:00:00:00:00:ff\"/></disk>{xml}<interface type='bridge'><mac address='02:00:00:00:00:0B'/></interface></devices></domain>"
    );
    assert_eq!(
        interface_macs(&domain).unwrap(),
        ["02:00:00:00:00:0a", "02:00:00:00:00:0b"],
        "only interfaces' MACs, lowercased"
    );
    // With how each is attached (a migration's target checks it is the same there).
    assert_eq!(
        interface_list(&domain).unwrap(),
        [
            ("ethernet".to_string(), "02:00:00:00:00:0a".to_string()),
            ("bridge".to_string(), "02:00:00:00:00:0b".to_string())
        ]
    );
}

#[tokio::test]
async fn refused_attaches_change_nothing() {
    let node = Node::new().await;
    node.with_nics(&[("02:00:00:00:00:01", None)]);
    let before = (node.intent(), node.hypervisor.live_xml(A).unwrap());
    let attach = |network: &str, mac: &str, address: &str| NicRequest {
        uuid: A.into(),
        network: network.into(),
        mac: mac.into(),
        address: address.into(),
        ..NicRequest::default()
    };
    let cases = [
        (
            attach("no-such-net", "", ""),
            "network: no network or bridge named \"no-such-net\" on this node",
        ),
        (
            attach("x; rm", "", ""),
            "network: must be an interface name of 1-15 characters",
        ),
        (
            attach("br", "", "10.0.0.1"),
            "address: \"10.0.0.1\" must be ADDRESS/PREFIX",
        ),
        (
            attach("br", "01:00:5e:00:00:01", ""),
            "mac: 01:00:5e:00:00:01 is a multicast address",
        ),
        (
            attach("br", "02:00:00:00:00:01", ""),
            "mac: guest 00000000-0000-4000-8000-0000000000a1 has a NIC with MAC 02:00:00:00:00:01 already",
        ),
        (
            NicRequest {
                uuid: "00000000-0000-4000-8000-0000000000ff".into(),
                ..attach("br", "", "")
            },
            "no guest 00000000-0000-4000-8000-0000000000ff",
        ),
    ];
    let set_intents = node.hypervisor.calls(Op::SetIntent).len();
    for (req, message) in cases {
        let e = node.guests.attach_interface(req).await.unwrap_err();
        assert!(e.to_string().starts_with(message), "{e}");
    }
    assert_eq!(node.hypervisor.calls(Op::SetIntent).len(), set_intents);
    assert_eq!(
        node.hypervisor.calls(Op::Attach).len(),
        1,
        "with_nics' only"
    );
    assert_eq!(
        (node.intent(), node.hypervisor.live_xml(A).unwrap()),
        before
    );
}

#[tokio::test]
async fn a_guest_with_sixteen_nics_takes_no_more() {
    let node = Node::new().await;
    let macs: Vec<String> = (0..16).map(|i| format!("02:00:00:00:01:{i:02x}")).collect();
    let nics: Vec<(&str, Option<usize>)> = macs.iter().map(|m| (m.as_str(), None)).collect();
    node.with_nics(&nics);
    let e = node
        .guests
        .attach_interface(NicRequest {
            uuid: A.into(),
            network: "br".into(),
            ..NicRequest::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, GuestError::Precondition(m) if m.contains("has 16 NICs")),
        "{e}"
    );
}

/// With a host bridge the test makes (root), the attach reaches libvirt: when libvirt
/// refuses, the intent is as before and no tap is left; else the NIC is in the XML and the
/// intent, with a MAC derived from its slot.
#[tokio::test]
async fn an_attach_is_undone_when_libvirt_refuses_it() {
    let bridge = format!("hvnt{}", std::process::id() % 100_000);
    let made = std::process::Command::new("ip")
        .args(["link", "add", &bridge, "type", "bridge"])
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("SKIP: cannot make a host bridge here (not root, or no `ip`)");
        return;
    }
    let node = Node::new().await;
    let before = node.intent();
    node.hypervisor.fail_once(Op::Attach);
    let req = NicRequest {
        uuid: A.into(),
        network: bridge.clone(),
        ..NicRequest::default()
    };
    let refused = node.guests.attach_interface(req.clone()).await;
    let after_refusal = (node.intent(), node.macs());
    let attached = node.guests.attach_interface(req).await;
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &bridge])
        .status();
    assert!(refused.is_err());
    assert_eq!(
        after_refusal,
        (before, vec![]),
        "the intent entry is undone"
    );
    let g = attached.unwrap();
    let mac = nic::format_mac(&nic::derived_mac(A, 0));
    assert_eq!(g.intent.networks, [bridge]);
    assert_eq!(g.intent.nics[0].mac, mac);
    assert_eq!(g.intent.nics[0].slot, Some(0));
    assert_eq!(node.macs(), [mac]);
}

/// With a host bridge the test makes (root): libvirt attaches the NIC but its limits cannot
/// be applied (the test puts a `clsact` qdisc on a link with the tap's name, which the
/// egress policer's `ingress` qdisc cannot replace). The call fails and undoes all of it:
/// the NIC is detached again, the tap goes, the intent is as before.
#[tokio::test]
async fn an_attach_whose_limits_fail_is_undone() {
    let pid = std::process::id() % 100_000;
    let bridge = format!("hvnl{pid}");
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ip(&["link", "add", &bridge, "type", "bridge"]) {
        eprintln!("SKIP: cannot make a host bridge here (not root, or no `ip`)");
        return;
    }
    let node = Node::new().await;
    // Slots 0-14 taken, so the new NIC's tap (slot 15) is a name no other test here uses.
    let macs: Vec<String> = (0..15).map(|i| format!("02:00:00:00:02:{i:02x}")).collect();
    let nics: Vec<(&str, Option<usize>)> = macs.iter().map(|m| (m.as_str(), None)).collect();
    node.with_nics(&nics);
    let tap = nic::tap_name(A, 15);
    let blocked = ip(&["link", "add", &tap, "type", "bridge"])
        && std::process::Command::new("tc")
            .args(["qdisc", "add", "dev", &tap, "clsact"])
            .output()
            .is_ok_and(|o| o.status.success());
    let before = (node.intent(), node.macs());
    let detaches = node.hypervisor.calls(Op::Detach).len();
    let result = node
        .guests
        .attach_interface(NicRequest {
            uuid: A.into(),
            network: bridge.clone(),
            egress_kbps: 1000,
            ..NicRequest::default()
        })
        .await;
    let tap_left = ip(&["link", "show", &tap]);
    let _ = ip(&["link", "del", &tap]);
    let _ = ip(&["link", "del", &bridge]);
    if !blocked {
        eprintln!("SKIP: cannot put a clsact qdisc on a bridge here (no `tc`, or no sch_ingress)");
        return;
    }
    let e = result.unwrap_err();
    assert!(e.to_string().contains("egress_kbps"), "{e}");
    assert_eq!(
        node.hypervisor.calls(Op::Detach).len(),
        detaches + 1,
        "the attached NIC is detached again"
    );
    assert_eq!((node.intent(), node.macs()), before);
    assert!(!tap_left, "the tap is removed");
}

#[tokio::test]
async fn a_detach_removes_the_nic_and_its_entry_and_keeps_the_others_slots() {
    let node = Node::new().await;
    let (m0, m1, m2) = (
        "02:00:00:00:00:10",
        "02:00:00:00:00:11",
        "02:00:00:00:00:12",
    );
    node.with_nics(&[(m0, None), (m1, None), (m2, None)]);
    let g = node.guests.detach_interface(A, m1).await.unwrap();
    assert_eq!(node.macs(), [m0, m2]);
    assert_eq!(g.intent.networks.len(), 2);
    assert_eq!(g.intent.nics[1].mac, m2);
    assert_eq!(g.intent.nics[1].slot_at(1), 2, "its tap keeps its name");
    // In capitals too; and once gone, NOT_FOUND naming the MAC, nothing changed.
    node.guests
        .detach_interface(A, &m2.to_uppercase())
        .await
        .unwrap();
    let before = node.intent();
    let detaches = node.hypervisor.calls(Op::Detach).len();
    let e = node.guests.detach_interface(A, m2).await.unwrap_err();
    assert!(
        matches!(&e, VolumeCallError::Guest(GuestError::NotFound(m)) if m.contains(m2)),
        "{e}"
    );
    let e = node
        .guests
        .detach_interface(A, "nonsense")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, VolumeCallError::Guest(GuestError::Invalid(m)) if m.starts_with("mac: ")),
        "{e}"
    );
    assert_eq!(node.hypervisor.calls(Op::Detach).len(), detaches);
    assert_eq!(node.intent(), before);
    assert_eq!(node.macs(), [m0]);
}

/// A guest that does not release the NIC: DEADLINE_EXCEEDED, and the intent keeps the NIC
/// (it is still in the running guest).
#[tokio::test]
async fn a_nic_the_guest_keeps_stays_in_the_intent() {
    let node = Node::new().await;
    let mac = "02:00:00:00:00:20";
    node.with_nics(&[(mac, None)]);
    node.hypervisor.ignore_eject();
    let e = node
        .guests
        .detach_nic_within(A, mac, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, VolumeCallError::NotReleased(m) if m.contains(mac)),
        "{e}"
    );
    assert_eq!(node.intent().nics[0].mac, mac);
    // A retry asks the running guest again (the definition no longer has the NIC); a guest
    // that now listens lets it go, and the intent drops it.
    let detaches = node.hypervisor.calls(Op::Detach).len();
    node.hypervisor.heed_eject();
    node.guests
        .detach_nic_within(A, mac, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(node.hypervisor.calls(Op::Detach).len(), detaches + 1);
    assert!(node.intent().nics.is_empty());
    assert!(node.macs().is_empty());
}

/// The start-up pass: an entry whose NIC is in no XML (an attach killed before libvirt had
/// it) goes, one in the XML stays.
#[tokio::test]
async fn entries_without_a_nic_are_dropped_at_start() {
    let node = Node::new().await;
    let kept = "02:00:00:00:00:30";
    node.with_nics(&[(kept, None)]);
    let intent = with_nic(&node.intent(), "br", nic_at("02:00:00:00:00:31", Some(1)));
    node.hypervisor.set_intent(A, &intent).unwrap();
    node.guests.settle_nics().await;
    let settled = node.intent();
    assert_eq!(settled.networks, ["br"]);
    assert_eq!(settled.nics, [nic_at(kept, None)]);
}
