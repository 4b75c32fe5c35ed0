//! The inventory readers on sysfs/procfs trees captured from real machines (QEMU guests with
//! emulated topologies, and the development host); see fixtures/README.md for how each was made.
//! Every topology fact is asserted exactly.

use std::path::{Path, PathBuf};

use hvagent::host::{self, ExternalFacts, Inventory, KvmState, KvmVerdict, LibvirtFacts};
use hvagent::placement::provider::{Guests, ProviderInventory, provider_inventory};
use hvagent::placement::{Allocator, Policy, Topology};

/// The Placement view under the default `[placement]` policy (CPU 0 and its siblings and
/// 1 GiB kept for the host).
fn placement_view(inv: &Inventory) -> ProviderInventory {
    let alloc = Allocator::new(Topology::from_inventory(inv), Policy::default()).unwrap();
    provider_inventory(&alloc, inv, Guests::Kvm)
}

/// (class, total, reserved, ratio) of the Placement view.
fn classes(inv: &Inventory) -> Vec<(String, u64, u64, f64)> {
    placement_view(inv)
        .inventories
        .into_iter()
        .map(|r| (r.resource_class, r.total, r.reserved, r.allocation_ratio))
        .collect()
}

fn fixture(name: &str) -> Inventory {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    assert!(root.is_dir(), "fixture {} missing", root.display());
    host::read(
        &root,
        ExternalFacts {
            libvirt: LibvirtFacts {
                error: "not asked in fixture tests".into(),
                ..Default::default()
            },
            kvm: KvmVerdict {
                state: KvmState::Absent,
                reason: "fixture".into(),
            },
            storage_disk_bytes: None,
        },
    )
}

fn siblings(inv: &Inventory, cpu: u32) -> Vec<u32> {
    inv.cpu
        .cpus
        .iter()
        .find(|c| c.id == cpu)
        .unwrap()
        .siblings
        .clone()
}

fn hugepages(pools: &[host::memory::HugepagePool]) -> Vec<(u64, u64, u64)> {
    pools
        .iter()
        .map(|p| (p.page_size_kib, p.total, p.free))
        .collect()
}

#[test]
fn two_sockets_four_cores_two_threads_two_numa_nodes_with_hugepages() {
    let inv = fixture("qemu-2s4c2t-numa");
    let cpu = &inv.cpu;
    assert_eq!(cpu.vendor, "GenuineIntel");
    assert_eq!((cpu.family, cpu.model), (6, 85));
    assert_eq!(
        (cpu.sockets, cpu.dies, cpu.cores, cpu.threads),
        (2, 2, 8, 16)
    );
    assert!(cpu.smt_active);
    assert_eq!(cpu.smt_control, "on");
    assert_eq!(cpu.online, (0..16).collect::<Vec<_>>());
    assert!(cpu.offline.is_empty());
    let expected_sets: Vec<Vec<u32>> = (0..8).map(|k| vec![2 * k, 2 * k + 1]).collect();
    assert_eq!(cpu.sibling_sets(), expected_sets);
    for c in &cpu.cpus {
        assert_eq!(c.socket, Some(c.id / 8), "cpu{}", c.id);
        assert_eq!(c.core, Some((c.id % 8) / 2), "cpu{}", c.id);
        assert_eq!(c.numa_node, Some(c.id / 8), "cpu{}", c.id);
    }
    assert_eq!(siblings(&inv, 0), vec![0, 1]);
    assert_eq!(siblings(&inv, 8), vec![8, 9]);
    // QEMU 7.2 models L1 per thread, L2 per core, L3 per socket.
    let l3: Vec<_> = cpu
        .caches
        .iter()
        .filter(|c| c.level == 3)
        .map(|c| c.cpus.clone())
        .collect();
    assert_eq!(l3, vec![(0..8).collect::<Vec<_>>(), (8..16).collect()]);
    let l2 = cpu.caches.iter().filter(|c| c.level == 2).count();
    assert_eq!(l2, 8);

    assert_eq!(inv.numa_nodes.len(), 2);
    let (n0, n1) = (&inv.numa_nodes[0], &inv.numa_nodes[1]);
    assert_eq!(n0.cpus, (0..8).collect::<Vec<_>>());
    assert_eq!(n1.cpus, (8..16).collect::<Vec<_>>());
    assert_eq!(n0.memory_total_bytes, 2_995_324 * 1024);
    assert_eq!(n1.memory_total_bytes, 3_093_632 * 1024);
    assert_eq!(inv.memory.total_bytes, 6_088_956 * 1024);
    assert_eq!(n0.distances, vec![10, 21]);
    assert_eq!(n1.distances, vec![21, 10]);
    assert_eq!(
        hugepages(&n0.hugepages),
        vec![(2048, 64, 64), (1_048_576, 0, 0)]
    );
    assert_eq!(
        hugepages(&n1.hugepages),
        vec![(2048, 32, 32), (1_048_576, 1, 1)]
    );
    assert_eq!(
        hugepages(&inv.memory.hugepages),
        vec![(2048, 96, 96), (1_048_576, 1, 1)]
    );

    // SCS facts: Skylake-SP (model 0x55, stepping 4) is generation 1; no EDAC, so no ECC claim.
    assert_eq!(
        inv.scs.cpu_brand.as_ref().map(|b| b.code()).as_deref(),
        Some("i1")
    );
    assert!(!inv.scs.serves_ecc);
    // The Placement view: core 0 (CPUs 0-1) is the host's; of the 7 other cores 6 are PCPU
    // and the pool keeps 14 − 12 = 2 threads at 3 V vCPUs each (SMT on), beside the 2
    // reserved; both hugepage sizes.
    let classes = classes(&inv);
    assert!(classes.contains(&("VCPU".into(), 4, 2, 3.0)), "{classes:?}");
    assert!(classes.contains(&("PCPU".into(), 6, 0, 1.0)), "{classes:?}");
    assert!(
        classes.contains(&("CUSTOM_HUGEPAGES_2M".into(), 96, 0, 1.0)),
        "{classes:?}"
    );
    assert!(
        classes.contains(&("CUSTOM_HUGEPAGES_1G".into(), 1, 0, 1.0)),
        "{classes:?}"
    );
    let traits = placement_view(&inv).traits;
    assert!(traits.contains(&"CUSTOM_SCS_CPU_I1".to_string()));
}

#[test]
fn one_socket_eight_cores_without_smt() {
    let inv = fixture("qemu-1s8c-nosmt");
    let cpu = &inv.cpu;
    assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (1, 8, 8));
    assert!(!cpu.smt_active);
    assert_eq!(cpu.smt_control, "notsupported");
    assert_eq!(
        cpu.sibling_sets(),
        (0..8).map(|c| vec![c]).collect::<Vec<_>>()
    );
    for c in &cpu.cpus {
        assert_eq!((c.socket, c.core), (Some(0), Some(c.id)), "cpu{}", c.id);
    }
    assert_eq!(inv.numa_nodes.len(), 1);
    assert_eq!(inv.numa_nodes[0].cpus, (0..8).collect::<Vec<_>>());
    assert_eq!(inv.numa_nodes[0].memory_total_bytes, 994_904 * 1024);
    assert!(
        inv.memory
            .hugepages
            .iter()
            .all(|p| p.total == 0 && p.free == 0)
    );
    // CPU 0 is the host's; 6 of the 7 others are PCPU, 1 pool thread at 5 V vCPUs.
    let classes = classes(&inv);
    assert!(
        classes.contains(&("VCPU".into(), 2, 1, 5.0)),
        "SMT off: 5 vCPUs per core: {classes:?}"
    );
    assert!(classes.contains(&("PCPU".into(), 6, 0, 1.0)), "{classes:?}");
    // Devices: the virtio NIC and disk count, loopback does not.
    assert_eq!(
        inv.nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        vec!["eth0"]
    );
    assert_eq!(inv.nics[0].driver, "virtio_net");
    assert_eq!(inv.block_devices.len(), 1);
    assert_eq!(inv.block_devices[0].name, "vda");
    assert_eq!(inv.block_devices[0].size_bytes, 131_072 * 512);
    assert_eq!(inv.block_devices[0].scs_disk_class(), 'h');
}

#[test]
fn offline_cpus_have_no_invented_socket() {
    let inv = fixture("qemu-offline-cpus");
    let cpu = &inv.cpu;
    assert_eq!(cpu.online, vec![0, 1, 2]);
    assert_eq!(cpu.offline, vec![3, 4, 5, 6, 7]);
    assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (1, 3, 3));
    for c in &cpu.cpus {
        if c.online {
            assert_eq!(c.socket, Some(0), "cpu{}", c.id);
            assert_eq!(c.siblings, vec![c.id]);
        } else {
            // libvirt reports these as socket 0; sysfs has no topology for them, nor do we.
            assert_eq!((c.socket, c.core, c.die), (None, None, None), "cpu{}", c.id);
            assert!(c.siblings.is_empty());
        }
    }
    assert_eq!(inv.numa_nodes[0].cpus, vec![0, 1, 2]);
    // CPU 0 is the host's, CPUs 1-2 are split one each: offline CPUs are not capacity.
    let classes = classes(&inv);
    assert!(classes.contains(&("VCPU".into(), 2, 1, 5.0)), "{classes:?}");
    assert!(classes.contains(&("PCPU".into(), 1, 0, 1.0)), "{classes:?}");
}

#[test]
fn development_host() {
    let inv = fixture("host-firecracker");
    let cpu = &inv.cpu;
    assert_eq!(cpu.vendor, "AuthenticAMD");
    assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (1, 2, 2));
    assert!(!cpu.smt_active);
    assert_eq!((cpu.family, cpu.model), (25, 1));
    assert_eq!(
        inv.scs.cpu_brand.as_ref().map(|b| b.code()).as_deref(),
        Some("z3")
    );
    assert_eq!(
        inv.nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        vec!["eth0"]
    );
    assert_eq!(inv.nics[0].mtu, 1400);
    assert_eq!(
        inv.block_devices
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>(),
        vec!["vda"]
    );
    assert!(inv.gpus.is_empty());
    assert!(inv.infiniband.is_empty());
    assert!(inv.scs.serves_secure, "{}", inv.scs.serves_secure_reason);
}
