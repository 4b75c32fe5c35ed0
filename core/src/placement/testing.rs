//! The captured hosts of `agent/tests/fixtures/` as placement sees them: the scenario tests
//! here and the daemon's guest tests place on them (feature `testing`).

use std::path::Path;

use super::Topology;
use crate::host::{self, ExternalFacts, KvmState, KvmVerdict, LibvirtFacts};

/// The topology of fixture `name`, without libvirt or KVM.
pub fn fixture(name: &str) -> Topology {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures")
        .join(name);
    let inv = host::read(
        &root,
        ExternalFacts {
            libvirt: LibvirtFacts::default(),
            kvm: KvmVerdict {
                state: KvmState::Absent,
                reason: "fixture".into(),
            },
            storage_disk_bytes: None,
        },
    );
    Topology::from_inventory(&inv)
}
