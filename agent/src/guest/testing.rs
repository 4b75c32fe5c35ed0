//! The in-memory node the guest unit tests share: `Guests` on the fake hypervisor, placed on a
//! captured host, with one image imported and placement rebuilt.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Guests;
use crate::domain::fake::FakeHypervisor;
use crate::domain::xml::Emulation;
use crate::net::Networks;
use crate::net::link::{Namespace, Netlink};
use crate::placement::{Allocator, PlacementState, Policy, Topology};
use crate::storage::disks;
use hvagent_core::counts::KindCounts;

pub(crate) struct FakeNode {
    pub root: tempfile::TempDir,
    pub hypervisor: Arc<FakeHypervisor>,
    pub placement: Arc<PlacementState>,
    pub guests: Arc<Guests>,
}

/// [`fake_node`] on the two-node fixture with a 64 MiB image of no properties, as most
/// guest tests need it.
pub(crate) async fn plain_node() -> FakeNode {
    fake_node(
        crate::placement::testing::fixture("qemu-2s4c2t-numa"),
        64 << 20,
        BTreeMap::new(),
        |g| g,
    )
    .await
}

/// Guests under TCG on `topology` with the image `img` (a blank qcow2 of `image_bytes`,
/// `base.qcow2` under the root) of `properties`; `adjust` sets what a test needs on `Guests`
/// (firmware facts, migration settings) before it is shared.
pub(crate) async fn fake_node(
    topology: Topology,
    image_bytes: u64,
    properties: BTreeMap<String, String>,
    adjust: impl FnOnce(Guests) -> Guests,
) -> FakeNode {
    let root = tempfile::tempdir().unwrap();
    let hypervisor = Arc::new(FakeHypervisor::default());
    let placement = Arc::new(PlacementState::new(
        Allocator::new(topology, Policy::default()).unwrap(),
    ));
    let netlink = Netlink::open(Namespace::default()).unwrap();
    let networks = Arc::new(Networks::new(netlink, root.path(), KindCounts::default()));
    let guests = Arc::new(adjust(Guests::new(
        hypervisor.clone(),
        placement.clone(),
        root.path(),
        Ok(Emulation::Tcg),
        Vec::new(),
        networks,
    )));
    let base = root.path().join("base.qcow2");
    disks::blank(&base, image_bytes).unwrap();
    guests
        .images
        .import_local("img", &base, None, properties, 0)
        .unwrap();
    guests.rebuild_placement().await.unwrap();
    FakeNode {
        root,
        hypervisor,
        placement,
        guests,
    }
}
