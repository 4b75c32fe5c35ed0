//! The captured hosts of `agent/tests/fixtures/` as placement sees them: the scenario tests
//! here and the daemon's guest tests place on them (feature `testing`).

use std::path::Path;

use super::Topology;
use crate::host::{self, ExternalFacts, Inventory, KvmState, KvmVerdict, LibvirtFacts};

/// The inventory of fixture `name`, without libvirt or KVM.
pub fn inventory(name: &str) -> Inventory {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures")
        .join(name);
    host::read(
        &root,
        ExternalFacts {
            libvirt: LibvirtFacts::default(),
            kvm: KvmVerdict {
                state: KvmState::Absent,
                reason: "fixture".into(),
            },
            storage_disk_bytes: None,
        },
    )
}

/// The topology of fixture `name`, without libvirt or KVM.
pub fn fixture(name: &str) -> Topology {
    Topology::from_inventory(&inventory(name))
}

/// Host fixture `host` with the PCI devices (GPUs, InfiniBand HCAs, mediated device types)
/// and the SCS device facts of the device fixture `devices` (`devices-*`, which holds only
/// those parts of sysfs).
pub fn inventory_with_devices(host: &str, devices: &str) -> Inventory {
    let mut inv = inventory(host);
    let dev = inventory(devices);
    inv.gpus = dev.gpus;
    inv.infiniband = dev.infiniband;
    inv.mdev_types = dev.mdev_types;
    inv.scs.serves_gpu = dev.scs.serves_gpu;
    inv.scs.serves_gpu_reason = dev.scs.serves_gpu_reason;
    inv.scs.serves_ib = dev.scs.serves_ib;
    inv.scs.serves_ib_reason = dev.scs.serves_ib_reason;
    inv
}

/// The topology of [`inventory_with_devices`].
pub fn fixture_with_devices(host: &str, devices: &str) -> Topology {
    Topology::from_inventory(&inventory_with_devices(host, devices))
}
