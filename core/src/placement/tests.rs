//! Scenario tests on the captured fixtures and on synthetic hosts: exact pins, exact refusal
//! texts, idempotency, reservations, release and rebuild.

use std::collections::BTreeMap;

use super::claim::{Emulator, MemoryShare, NORMAL_PAGE_KIB};
use super::policy::{ReservedCpus, parse_page_size};
use super::testing::fixture;
use super::topology::Shape;
use super::*;
use crate::flavor::{FlavorSpec, parse};

pub(super) fn spec(name: &str) -> FlavorSpec {
    parse(name).expect(name).spec
}

fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn req(n: u64, flavor: &str) -> ClaimRequest {
    ClaimRequest {
        vm_uuid: uuid(n),
        request_id: format!("r{n}"),
        flavor: spec(flavor),
    }
}

fn policy() -> Policy {
    Policy {
        reserved_memory_mib: 256,
        ..Policy::default()
    }
}

fn pins(c: &Claim) -> Vec<u32> {
    c.dedicated_cpus().collect()
}

fn refusal(alloc: &mut Allocator, n: u64, flavor: &str) -> Refusal {
    alloc.claim(&req(n, flavor), 0).unwrap_err()
}

#[test]
fn fixture_topologies() {
    let t = fixture("qemu-2s4c2t-numa");
    assert_eq!(t.cpus.len(), 16);
    assert_eq!(t.cores.len(), 8);
    assert_eq!(t.cores[1].threads, vec![2, 3]);
    assert_eq!(t.cores[4].node, 1);
    assert!(t.smt);
    // MDS "Vulnerable ... SMT Host state unknown" with SMT on.
    assert!(t.sibling_leak);
    // node0 2995324 kB − 64 × 2 MiB; node1 3093632 kB − 32 × 2 MiB − 1 GiB.
    assert_eq!(t.nodes[0].memory_mib, 2925 - 128);
    assert_eq!(t.nodes[1].memory_mib, 3021 - 64 - 1024);
    assert_eq!(
        t.nodes[1].hugepages,
        BTreeMap::from([(2048, 32), (1 << 20, 1)])
    );
    assert!(!t.facts.ecc.holds && !t.facts.secure.holds);

    let t = fixture("qemu-offline-cpus");
    assert_eq!(t.cpus.iter().map(|c| c.id).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(!t.smt && !t.sibling_leak);
}

#[test]
fn dedicated_cores_pack_into_one_node_with_idle_siblings() {
    let mut a = Allocator::new(fixture("qemu-2s4c2t-numa"), policy()).unwrap();
    // Node 0 keeps core 0 (CPUs 0,1) for the host: three cores left there, four on node 1.
    // 2 GiB + 165 MiB overhead fit only node 0's memory (2797 − 152 MiB reserve).
    let c = a.claim(&req(1, "SCS-2Ci-2u"), 0).unwrap();
    assert_eq!(pins(&c), [2, 4]);
    assert_eq!(c.idle_cpus, [3, 5]);
    assert_eq!(c.emulator, Emulator::Reserved(vec![0, 1]));
    assert_eq!(
        c.memory,
        [MemoryShare {
            numa_node: 0,
            mib: 2048,
            page_size_kib: NORMAL_PAGE_KIB
        }]
    );
    assert_eq!(c.overhead.mib, 128 + 2 * 8 + 21);
    assert_eq!(
        (
            c.guest_topology.sockets,
            c.guest_topology.cores,
            c.guest_topology.threads
        ),
        (1, 2, 1)
    );
    assert_eq!(c.guest_numa.len(), 1);
    assert_eq!(c.guest_numa[0].host_node, 0);
    // The shared pool lost the guest's cores and their idle siblings.
    assert_eq!(a.pool_cpus(), [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);

    // Four cores on node 1, but 1 GiB + overhead no longer fits node 0 next to them: node 1.
    let c = a.claim(&req(2, "SCS-4Ci-1u"), 0).unwrap();
    assert_eq!(pins(&c), [8, 10, 12, 14]);
    assert_eq!(c.memory[0].numa_node, 1);

    let r = refusal(&mut a, 3, "SCS-2Ci-1u");
    assert_eq!(r.kind, RefusalKind::Exhausted);
    assert_eq!(r.limited_by, "PCPU");
    assert_eq!(
        r.message,
        "2 dedicated vCPUs need 2 free cores with all their threads free; 1 are free (node 0: 1, node 1: 0)"
    );
}

#[test]
fn dedicated_guest_spreads_only_when_no_node_fits_and_memory_follows_cpus() {
    let mut a = Allocator::new(fixture("qemu-2s4c2t-numa"), policy()).unwrap();
    // Six cores: node 1 has four, node 0 three free: spread 4 + 2, memory 2/3 and 1/3.
    let c = a.claim(&req(1, "SCS-6Ci-1.5u"), 0).unwrap();
    assert_eq!(pins(&c), [8, 10, 12, 14, 2, 4]);
    let shares: Vec<(u32, u64)> = c.memory.iter().map(|m| (m.numa_node, m.mib)).collect();
    assert_eq!(shares, [(1, 1024), (0, 512)]);
    assert_eq!(c.overhead.numa_node, 1);
    assert_eq!(c.guest_numa.len(), 2);
    assert_eq!(c.guest_numa[0].vcpus, [0, 1, 2, 3]);
    assert_eq!(c.guest_numa[1].vcpus, [4, 5]);
    // Unequal cells: one socket, six cores.
    assert_eq!((c.guest_topology.sockets, c.guest_topology.cores), (1, 6));
}

#[test]
fn dedicated_threads_take_sibling_pairs_and_leave_odd_siblings_idle_on_leaky_hosts() {
    let mut shape = Shape::new(1, 4, 2);
    shape.sibling_leak = true;
    let topo = Topology::regular(&shape);
    let mut a = Allocator::new(topo.clone(), policy()).unwrap();
    // CPUs: core c has threads c and c+4. Core 0 (0,4) is the host's.
    let c = a.claim(&req(1, "SCS-2T-4"), 0).unwrap();
    assert_eq!(pins(&c), [1, 5]);
    assert!(c.idle_cpus.is_empty());
    assert_eq!((c.guest_topology.cores, c.guest_topology.threads), (1, 2));
    let c = a.claim(&req(2, "SCS-1T-2"), 0).unwrap();
    assert_eq!(pins(&c), [2]);
    assert_eq!(c.idle_cpus, [6], "a lone thread's sibling stays idle");
    assert_eq!(c.guest_topology.threads, 1);
    // An `i` guest may sit beside another `i` guest's thread, never beside a secure one's.
    let c = a.claim(&req(3, "SCS-1Ti-2"), 0).unwrap();
    assert_eq!(pins(&c), [3]);
    assert!(
        c.idle_cpus.is_empty(),
        "an `i` guest leaves its sibling usable"
    );
    let c = a.claim(&req(4, "SCS-1Ti-2"), 0).unwrap();
    assert_eq!(pins(&c), [7]);
    assert_eq!(refusal(&mut a, 5, "SCS-1Ti-2").limited_by, "PCPU");

    // Without the leak, a lone thread's sibling stays free and serves the next lone thread.
    let mut a = Allocator::new(Topology::regular(&Shape::new(1, 4, 2)), policy()).unwrap();
    assert_eq!(pins(&a.claim(&req(1, "SCS-1T-2"), 0).unwrap()), [1]);
    assert_eq!(pins(&a.claim(&req(2, "SCS-1T-2"), 0).unwrap()), [5]);
}

#[test]
fn shared_pool_keeps_its_ratio_when_dedicated_cores_are_carved_out() {
    // Core c has threads c and c+8; core 0 (0,8) is the host's: 14 threads in the pool, 3 V
    // vCPUs per thread with SMT: 42.
    let mut a = Allocator::new(Topology::regular(&Shape::new(1, 8, 2)), policy()).unwrap();
    for n in 0..5 {
        a.claim(&req(n, "SCS-8V-0.5"), 0).unwrap();
    }
    // A dedicated core would take 2 threads: 12 × 3 = 36 < 40.
    let r = refusal(&mut a, 9, "SCS-1C-0.5");
    assert_eq!(r.limited_by, "shared-pool ratio");
    assert_eq!(
        r.message,
        "taking CPUs 1,9 out of the shared pool would leave 12 threads for 40 V vCPUs placed there (at most 3 per thread)"
    );
    let r = refusal(&mut a, 9, "SCS-3V-0.5");
    assert_eq!(
        r.message,
        "the shared pool's 14 threads carry at most 42 V vCPUs (3 per thread); 40 are placed, 3 more V vCPUs would exceed that"
    );
    a.claim(&req(10, "SCS-2V-0.5"), 0).unwrap();
    // `L` costs 3 of 24 units per thread (8 per thread), `V` 8: the pool is full for both.
    assert_eq!(
        refusal(&mut a, 11, "SCS-1L-0.5").limited_by,
        "shared-pool ratio"
    );
    a.release(&uuid(10)).unwrap();
    // 2 V vCPUs of room = 16 units = 5 L vCPUs (15 units).
    for n in 20..25 {
        a.claim(&req(n, "SCS-1L-0.5"), 0).unwrap();
    }
    let r = refusal(&mut a, 30, "SCS-1L-0.5");
    assert!(r.message.contains("41.9 are placed"), "{}", r.message);
}

#[test]
fn hugepage_policy_backs_guest_ram_and_counts_pages() {
    let mut p = policy();
    p.hugepages.insert('V', 1 << 20);
    let mut a = Allocator::new(fixture("qemu-2s4c2t-numa"), p).unwrap();
    let c = a.claim(&req(1, "SCS-1Vi-1u"), 0).unwrap();
    assert_eq!(
        c.memory,
        [MemoryShare {
            numa_node: 1,
            mib: 1024,
            page_size_kib: 1 << 20
        }]
    );
    // The overhead stays on normal pages, on the same node.
    assert_eq!((c.overhead.numa_node, c.overhead.page_size_kib), (1, 4));
    let r = refusal(&mut a, 2, "SCS-1Vi-1u");
    assert_eq!(r.limited_by, "CUSTOM_HUGEPAGES_1G");
    assert_eq!(
        r.message,
        "guest needs 1024 MiB of 1G pages plus 147 MiB overhead; 0 MiB are free"
    );
    // Other types keep normal pages.
    let c = a.claim(&req(3, "SCS-1Ci-1u"), 0).unwrap();
    assert_eq!(c.memory[0].page_size_kib, NORMAL_PAGE_KIB);
}

#[test]
fn promises_the_node_cannot_keep_are_preconditions() {
    let mut a = Allocator::new(fixture("qemu-2s4c2t-numa"), policy()).unwrap();
    let r = refusal(&mut a, 1, "SCS-2V-4");
    assert_eq!(
        (r.kind, r.limited_by.as_str()),
        (RefusalKind::Precondition, "ECC")
    );
    assert!(
        r.message
            .starts_with("flavor promises ECC memory (no `u` in the name) but this node cannot: "),
        "{}",
        r.message
    );
    let r = refusal(&mut a, 1, "SCS-2V-4u");
    assert_eq!(r.limited_by, "security");
    assert!(
        r.message.ends_with(
            "`i` flavors: gather_data_sampling: Unknown: Dependent on hypervisor status"
        ),
        "{}",
        r.message
    );
    let cases = [
        (
            "SCS-2Vi-4u-10n",
            "disk class",
            "flavor asks for network-backed disks (`n`) but no network storage pool is configured on this node",
        ),
        (
            "SCS-2Vi-4u-10p",
            "disk class",
            "flavor asks for nvme disks (`p`) but the local disks are [h]",
        ),
        (
            "SCS-2Vi-4u_hwv",
            "hwv",
            "flavor promises nested virtualization (`_hwv`) but: KVM is absent: fixture",
        ),
        (
            "SCS-2Vi-4u_kvm",
            "hypervisor",
            "flavor names the KVM hypervisor (`_kvm`) but KVM does not work here: fixture",
        ),
        (
            "SCS-2Vi-4u_xen",
            "hypervisor",
            "flavor names the `xen` hypervisor; this node runs KVM/QEMU",
        ),
        (
            "SCS-2Vi-4u_z3",
            "CPU brand",
            "flavor asks for CPU vendor amd (`z`), this node has `i1`",
        ),
        (
            "SCS-2Vi-4u_i3",
            "CPU brand",
            "flavor asks for CPU generation 3 (Ice Lake), this node has `i1`",
        ),
        (
            "SCS-2Vi-4u_i1h",
            "CPU brand",
            "flavor asks for frequency level 1 (`h`), this node can promise none (its all-core clock is unknown)",
        ),
        (
            "SCS-2Vi-4u_GN",
            "GPU",
            "flavor asks for a GPU of vendor nvidia; this node has none",
        ),
        (
            "SCS-2Vi-4u_gN",
            "GPU",
            "flavor asks for a virtual GPU (`g`); this node passes through whole GPUs only",
        ),
        (
            "SCS-2Vi-4u_ib",
            "InfiniBand",
            "flavor asks for InfiniBand (`_ib`); this node has no InfiniBand device",
        ),
    ];
    for (name, what, message) in cases {
        let r = refusal(&mut a, 1, name);
        assert_eq!(
            (r.kind, r.limited_by.as_str(), r.message.as_str()),
            (RefusalKind::Precondition, what, message),
            "{name}"
        );
    }
    // Nothing was taken by any of them.
    assert_eq!(a.generation(), 0);
    assert_eq!(a.claims().count(), 0);
    assert!(a.claim(&req(1, "SCS-2Vi-4u_i1"), 0).is_ok());
}

#[test]
fn offline_cpus_are_never_used() {
    let mut a = Allocator::new(fixture("qemu-offline-cpus"), policy()).unwrap();
    let c = a.claim(&req(1, "SCS-2Ci-0.5u"), 0).unwrap();
    assert_eq!(pins(&c), [1, 2]);
    assert_eq!(refusal(&mut a, 2, "SCS-1Ci-0.5u").limited_by, "PCPU");
    // The pool is empty now: no floating guest fits.
    let r = refusal(&mut a, 3, "SCS-1Vi-0.5u");
    assert_eq!(
        r.message,
        "the shared pool's 0 threads carry at most 0 V vCPUs (5 per thread); 0 are placed, 1 more V vCPUs would exceed that"
    );
}

#[test]
fn claims_are_idempotent_per_request_id() {
    let mut a = Allocator::new(fixture("qemu-2s4c2t-numa"), policy()).unwrap();
    let first = a.claim(&req(1, "SCS-2Ci-1u"), 0).unwrap();
    let generation = a.generation();
    assert_eq!(a.claim(&req(1, "SCS-2Ci-1u"), 0).unwrap(), first);
    assert_eq!(
        a.generation(),
        generation,
        "a repeated request changes nothing"
    );
    let mut other = req(1, "SCS-4Vi-1u");
    let r = a.claim(&other, 0).unwrap_err();
    assert_eq!(r.kind, RefusalKind::AlreadyExists);
    assert_eq!(
        r.message,
        format!(
            "request_id \"r1\" already holds a claim for VM {} with flavor SCS-2Ci-1u",
            uuid(1)
        )
    );
    other.request_id = "r2".into();
    let r = a.claim(&other, 0).unwrap_err();
    assert_eq!(r.kind, RefusalKind::AlreadyExists);
    assert_eq!(r.limited_by, "vm_uuid");
    // Upper-case UUIDs name the same VM.
    let mut upper = req(1, "SCS-2Ci-1u");
    upper.vm_uuid = upper.vm_uuid.to_uppercase();
    assert_eq!(a.claim(&upper, 0).unwrap(), first);

    let mut bad = req(5, "SCS-1Vi-1u");
    bad.vm_uuid = "vm-5".into();
    let r = a.claim(&bad, 0).unwrap_err();
    assert_eq!(
        (r.kind, r.message.as_str()),
        (
            RefusalKind::Invalid,
            "vm_uuid: must be a UUID (8-4-4-4-12 hex digits)"
        )
    );
    let mut bad = req(5, "SCS-1Vi-1u");
    bad.request_id = "a b".into();
    assert_eq!(
        a.claim(&bad, 0).unwrap_err().message,
        "request_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -"
    );
}

#[test]
fn release_returns_exactly_what_was_taken() {
    let mut p = policy();
    p.hugepages.insert('C', 2048);
    let mut shape = Shape::new(2, 6, 2);
    shape.nodes_per_socket = 2;
    shape.hugepages_per_node = BTreeMap::from([(2048, 2048)]);
    let mut a = Allocator::new(Topology::regular(&shape), p).unwrap();
    let before = a.clone();
    let flavors = ["SCS-4C-8", "SCS-3T-4", "SCS-8V-16", "SCS-2L-1", "SCS-1C-2"];
    for (n, f) in flavors.iter().enumerate() {
        a.claim(&req(n as u64, f), 0).unwrap();
    }
    for n in 0..flavors.len() {
        a.release(&uuid(n as u64)).unwrap();
    }
    assert_eq!(a.ledger(), before.ledger());
    let r = a.release(&uuid(0)).unwrap_err();
    assert_eq!(
        (r.kind, r.message),
        (
            RefusalKind::NotFound,
            format!("VM {} holds no claim", uuid(0))
        )
    );
}

#[test]
fn reservations_expire_unless_bound() {
    let mut a = Allocator::new(fixture("qemu-2s4c2t-numa"), policy()).unwrap();
    let empty = a.ledger().clone();
    let c = a.reserve(&req(1, "SCS-2Ci-1u"), 1_000, 30_000).unwrap();
    assert_eq!(c.expires_at_ms, Some(31_000));
    a.reserve(&req(2, "SCS-2Ci-1u"), 1_000, 30_000).unwrap();
    assert_eq!(a.bind("r2", 20_000).unwrap().expires_at_ms, None);
    // r1 expires at 31 s; the next call after that sees it gone.
    assert_eq!(a.expire(30_999).len(), 0);
    let expired = a.expire(31_000);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].vm_uuid, uuid(1));
    let r = a.bind("r1", 31_000).unwrap_err();
    assert_eq!(r.kind, RefusalKind::NotFound);
    // A bound claim is its guest's: Release refuses it and changes nothing.
    let before = a.clone();
    let r = a.release_reservation(&uuid(2).to_uppercase()).unwrap_err();
    assert_eq!(
        (r.kind, r.limited_by.as_str(), r.message),
        (
            RefusalKind::Precondition,
            "vm_uuid",
            format!(
                "the claim of VM {} is bound to its guest; delete the guest (VmService/Delete) to free it",
                uuid(2)
            )
        )
    );
    assert_eq!(a.ledger(), before.ledger());
    assert_eq!(a.generation(), before.generation());
    a.reserve(&req(4, "SCS-1Vi-1u"), 40_000, 30_000).unwrap();
    assert_eq!(a.release_reservation(&uuid(4)).unwrap().vm_uuid, uuid(4));
    assert_eq!(
        a.release_reservation(&uuid(4)).unwrap_err().kind,
        RefusalKind::NotFound
    );
    a.release(&uuid(2)).unwrap();
    assert_eq!(a.ledger(), &empty);
    let r = a.reserve(&req(3, "SCS-1Vi-1u"), 0, 10).unwrap_err();
    assert_eq!(
        (r.kind, r.message.as_str()),
        (
            RefusalKind::Invalid,
            "ttl_seconds: must be between 1 and 3600"
        )
    );
}

#[test]
fn rebuild_gives_the_same_state_and_reports_overlaps() {
    let topo = fixture("qemu-2s4c2t-numa");
    let mut a = Allocator::new(topo.clone(), policy()).unwrap();
    for (n, f) in ["SCS-2Ci-1u", "SCS-1Ti-1u", "SCS-4Vi-1u", "SCS-2Li-0.5u"]
        .iter()
        .enumerate()
    {
        a.claim(&req(n as u64, f), 0).unwrap();
    }
    let stored: Vec<Claim> = a
        .claims()
        .map(|c| serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap())
        .collect();
    let b = Allocator::rebuild(topo.clone(), policy(), stored.clone()).unwrap();
    assert_eq!(b.ledger(), a.ledger());
    assert_eq!(
        b.claims().collect::<Vec<_>>(),
        a.claims().collect::<Vec<_>>()
    );
    assert!(b.generation() > a.generation() - 1);

    let mut twin = stored[0].clone();
    twin.vm_uuid = uuid(99);
    twin.request_id = "r99".into();
    let mut overlapping = stored.clone();
    overlapping.push(twin);
    let e = Allocator::rebuild(topo.clone(), policy(), overlapping).unwrap_err();
    assert_eq!(
        e.conflicts,
        [format!(
            "VM {}: CPU 2 is not free (held by VM {})",
            uuid(99),
            uuid(0)
        )]
    );
    // A policy that now reserves a guest's CPU is a conflict too, never silently accepted.
    let mut p = policy();
    p.reserved_cpus = ReservedCpus::List(vec![0, 1, 2]);
    let e = Allocator::rebuild(topo, p, stored).unwrap_err();
    assert_eq!(e.conflicts, [format!("VM {}: CPU 2 is not free", uuid(0))]);
}

#[test]
fn policy_errors_name_the_key() {
    let topo = fixture("qemu-2s4c2t-numa");
    let err = |p: Policy| Allocator::new(topo.clone(), p).unwrap_err().to_string();
    let mut p = policy();
    p.reserved_cpus = ReservedCpus::List(vec![0, 16]);
    assert_eq!(
        err(p),
        "placement.reserved_cpus: CPU 16 is not an online CPU of this node"
    );
    let mut p = policy();
    p.dedicated_cpus = Some(vec![1, 2]);
    assert_eq!(
        err(p),
        "placement.dedicated_cpus: CPU 1 is also in placement.reserved_cpus"
    );
    let mut p = policy();
    p.dedicated_cpus = Some(vec![2, 3]);
    p.shared_cpus = Some(vec![3, 4]);
    assert_eq!(
        err(p),
        "placement.shared_cpus: CPU 3 is also in placement.dedicated_cpus"
    );
    let mut p = policy();
    p.hugepages.insert('C', 16 << 20);
    assert_eq!(
        err(p),
        "placement.hugepages.C: this node has no 16G hugepage pool (/sys/kernel/mm/hugepages/hugepages-16777216kB)"
    );
    let mut shape = Shape::new(1, 4, 1);
    shape.isolated = vec![3];
    let mut p = policy();
    p.shared_cpus = Some(vec![2, 3]);
    assert_eq!(
        Allocator::new(Topology::regular(&shape), p)
            .unwrap_err()
            .to_string(),
        "placement.shared_cpus: CPU 3 is isolated (isolcpus): the kernel does not balance floating vCPUs onto it"
    );
    assert_eq!(parse_page_size("2M"), Ok(Some(2048)));
    assert_eq!(parse_page_size("1G"), Ok(Some(1 << 20)));
    assert_eq!(parse_page_size("none"), Ok(None));
    assert!(parse_page_size("3M").is_err());
    assert!(parse_page_size("4K").is_err());
    assert!(parse_page_size("G").is_err());
}

#[test]
fn static_pools_keep_dedicated_and_shared_apart() {
    let mut p = policy();
    p.dedicated_cpus = Some(vec![2, 3, 4, 5]);
    let mut shape = Shape::new(1, 8, 1);
    shape.isolated = vec![7];
    let mut a = Allocator::new(Topology::regular(&shape), p).unwrap();
    // Shared = everything else that is not reserved or isolated.
    assert_eq!(a.pool_cpus(), [1, 6]);
    let c = a.claim(&req(1, "SCS-4C-4"), 0).unwrap();
    assert_eq!(pins(&c), [2, 3, 4, 5]);
    assert_eq!(a.pool_cpus(), [1, 6], "static pools do not shrink");
    assert_eq!(refusal(&mut a, 2, "SCS-1C-1").limited_by, "PCPU");
    // Isolated CPUs serve pinned vCPUs in the dynamic policy only when not reserved.
    let mut a = Allocator::new(Topology::regular(&shape), policy()).unwrap();
    assert_eq!(a.pool_cpus(), [1, 2, 3, 4, 5, 6]);
    let c = a.claim(&req(1, "SCS-7C-1"), 0).unwrap();
    assert!(pins(&c).contains(&7));
}

#[test]
fn no_reserved_cpus_puts_emulator_threads_on_the_guests_own_cpus() {
    let mut p = policy();
    p.reserved_cpus = ReservedCpus::List(vec![]);
    let mut a = Allocator::new(Topology::regular(&Shape::new(1, 4, 1)), p).unwrap();
    let c = a.claim(&req(1, "SCS-1C-1"), 0).unwrap();
    assert_eq!(c.emulator, Emulator::Own);
    assert_eq!(a.emulator_cpus(&c), [0]);
    let v = a.claim(&req(2, "SCS-2V-1"), 0).unwrap();
    assert_eq!(v.emulator, Emulator::Pool);
    assert_eq!(a.emulator_cpus(&v), [1, 2, 3]);
    assert_eq!(a.vcpu_cpus(&v), [vec![1, 2, 3], vec![1, 2, 3]]);
}

#[test]
fn capacity_names_what_binds() {
    let mut a = Allocator::new(fixture("qemu-2s4c2t-numa"), policy()).unwrap();
    let c = a.capacity(&spec("SCS-2Ci-1u"));
    // Seven free cores: 3 guests by CPUs; memory: node 0 takes 2 (1.17 GiB each), node 1 one.
    assert_eq!(c.more, 3);
    assert_eq!(c.per_numa_node, [(0, 1), (1, 1)]);
    assert_eq!(c.limited_by, "PCPU");
    let c = a.capacity(&spec("SCS-1Vi-2u"));
    assert_eq!(c.limited_by, "MEMORY_MB");
    assert_eq!(c.more, 2);
    let c = a.capacity(&spec("SCS-2V-4"));
    assert_eq!((c.more, c.limited_by.as_str()), (0, "ECC"));
    a.claim(&req(1, "SCS-4Vi-1u"), 0).unwrap();
    let c = a.capacity(&spec("SCS-1Li-0.5u"));
    assert_eq!(c.limited_by, "MEMORY_MB");
}
