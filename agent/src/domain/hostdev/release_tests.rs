//! A GPU guest on the in-memory hypervisor, placed on a captured host with the
//! `devices-gpu-vfio` device fixture (one NVIDIA GPU that can be passed through, in IOMMU group
//! 13 with its audio function, both on vfio-pci): the defined domain gets the claimed GPU as a
//! `<hostdev>`, and a create that fails after the claim (at define, at start) gives the GPU
//! back: the GPU flavor's capacity is what it was before.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::fake::{FakeHypervisor, Op};
use crate::guest::testing::{FakeNode, fake_node};
use crate::guest::{CreateRequest, Guests};
use crate::placement::PlacementState;
use crate::placement::testing::fixture_with_devices;

const GPU_FLAVOR: &str = "SCS-1Vi-1u_GN";
const UUID: &str = "00000000-0000-4000-8000-0000000000a1";

struct Node {
    _root: tempfile::TempDir,
    hypervisor: Arc<FakeHypervisor>,
    placement: Arc<PlacementState>,
    guests: Arc<Guests>,
}

async fn node() -> Node {
    let FakeNode {
        root,
        hypervisor,
        placement,
        guests,
    } = fake_node(
        fixture_with_devices("qemu-2s4c2t-numa", "devices-gpu-vfio"),
        64 << 20,
        BTreeMap::new(),
        |g| g,
    )
    .await;
    Node {
        _root: root,
        hypervisor,
        placement,
        guests,
    }
}

impl Node {
    /// Guests of the GPU flavor that still fit.
    fn gpu_capacity(&self) -> u64 {
        let spec = crate::flavor::parse(GPU_FLAVOR).unwrap().spec;
        self.placement.lock().capacity(&spec).more
    }

    async fn create(&self) -> Result<crate::guest::Guest, crate::guest::GuestError> {
        self.guests
            .create(CreateRequest {
                uuid: UUID.into(),
                name: "gpu".into(),
                flavor: GPU_FLAVOR.into(),
                image: "img".into(),
                ..Default::default()
            })
            .await
    }
}

#[tokio::test]
async fn the_claimed_gpu_is_a_hostdev_of_the_defined_domain() {
    let node = node().await;
    assert_eq!(node.gpu_capacity(), 1);
    node.create().await.unwrap();
    assert_eq!(node.gpu_capacity(), 0, "the guest holds the GPU");
    let xml = node
        .hypervisor
        .domains()
        .into_iter()
        .find(|d| d.uuid == UUID)
        .unwrap()
        .xml;
    assert!(
        xml.contains(
            "<hostdev mode=\"subsystem\" type=\"pci\" managed=\"yes\"><source><address \
             domain=\"0x0000\" bus=\"0x3b\" slot=\"0x00\" function=\"0x0\"/></source></hostdev>"
        ),
        "{xml}"
    );
    assert_eq!(
        xml.matches("<hostdev").count(),
        1,
        "not the T4 the host holds"
    );
}

#[tokio::test]
async fn a_create_failing_after_the_claim_gives_the_gpu_back() {
    for op in [Op::Define, Op::Start] {
        let node = node().await;
        let before = node.gpu_capacity();
        assert_eq!(before, 1);
        node.hypervisor.fail(op);
        let e = node.create().await.unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "libvirt refused the guest: injected failure of {op:?}"
            )),
            "{op:?}: {e}"
        );
        assert_eq!(node.gpu_capacity(), before, "{op:?}: the GPU is free again");
        assert!(
            node.placement.lock().get(UUID).is_none(),
            "{op:?}: claim left"
        );
        assert!(
            node.hypervisor.domains().iter().all(|d| d.uuid != UUID),
            "{op:?}: domain left"
        );
        node.hypervisor.heal(op);
        node.create().await.unwrap();
        assert_eq!(node.gpu_capacity(), 0, "{op:?}: the retry gets the GPU");
    }
}
