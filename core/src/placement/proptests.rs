//! Properties over generated hosts (1-4 sockets, 1-64 cores each, SMT on/off, 1-8 NUMA nodes,
//! offline and isolated CPUs, static or dynamic pools, hugepages) and random sequences of
//! claim, reserve, expire, bind and release. After every step the invariants are recomputed
//! from the claims alone, not from the allocator's own counters.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::claim::NORMAL_PAGE_KIB;
use super::policy::ReservedCpus;
use super::tests::spec;
use super::topology::Shape;
use super::*;

#[derive(Debug, Clone)]
enum Op {
    Claim(usize),
    Reserve(usize, u64),
    Advance(u64),
    Bind(usize),
    Release(usize),
    /// Claim and release at once: everything must be as before.
    Bounce(usize),
}

fn flavor() -> impl Strategy<Value = String> {
    (
        1u32..=8,
        0usize..4,
        any::<bool>(),
        prop_oneof![3 => 1u32..=4, 1 => 1u32..=24],
    )
        .prop_map(|(n, t, i, half)| {
            let ram = if half % 2 == 0 {
                (half / 2).to_string()
            } else {
                format!("{}.5", half / 2)
            };
            format!(
                "SCS-{n}{}{}-{ram}",
                ['L', 'V', 'T', 'C'][t],
                if i { "i" } else { "" }
            )
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..6).prop_map(Op::Claim),
        2 => (0usize..6, 1u64..=20).prop_map(|(f, s)| Op::Reserve(f, s)),
        1 => (1u64..=15_000).prop_map(Op::Advance),
        1 => any::<usize>().prop_map(Op::Bind),
        2 => any::<usize>().prop_map(Op::Release),
        1 => (0usize..6).prop_map(Op::Bounce),
    ]
}

#[derive(Debug, Clone)]
struct Host {
    shape: Shape,
    policy: Policy,
}

fn host() -> impl Strategy<Value = Host> {
    (
        (1u32..=4, 1u32..=64, 1u32..=2, 1u32..=2, any::<bool>()),
        (
            proptest::collection::vec(any::<u16>(), 0..4),
            proptest::collection::vec(any::<u16>(), 0..4),
        ),
        (2u64..=64, 0u64..=1024),
        (0usize..3, 0usize..3, any::<bool>(), 1u32..=16),
    )
        .prop_filter("at most 8 NUMA nodes", |((s, _, _, nps, _), ..)| {
            s * nps <= 8
        })
        .prop_map(
            |((sockets, cores, threads, nps, leak), (off, iso), (gib, pages), pol)| {
                let total = sockets * cores * threads;
                let mut shape = Shape::new(sockets, cores, threads);
                shape.nodes_per_socket = nps.min(cores);
                shape.sibling_leak = leak && threads > 1;
                shape.memory_mib_per_node = gib * 1024;
                shape.hugepages_per_node = BTreeMap::from([(2048, pages)]);
                // CPU 0 stays online, as on Linux.
                shape.offline = off
                    .iter()
                    .map(|x| u32::from(*x) % total)
                    .filter(|&c| c != 0)
                    .collect();
                shape.isolated = iso.iter().map(|x| u32::from(*x) % total).collect();
                let (reserved, split, huge_c, crowded) = pol;
                let mut policy = Policy {
                    reserved_memory_mib: 512,
                    crowded_ratio: crowded,
                    ..Policy::default()
                };
                policy.reserved_cpus = match reserved {
                    0 => ReservedCpus::Auto,
                    1 => ReservedCpus::List(vec![]),
                    _ => ReservedCpus::List(vec![0]),
                };
                if split == 1 {
                    // Static: the upper half of the online CPUs is dedicated.
                    let online: Vec<u32> =
                        (0..total).filter(|c| !shape.offline.contains(c)).collect();
                    policy.dedicated_cpus = Some(
                        online[online.len() / 2..]
                            .iter()
                            .copied()
                            // Core 0's threads may be the host's (`Auto`).
                            .filter(|&c| c % (sockets * cores) != 0)
                            .collect(),
                    );
                }
                if huge_c {
                    policy.hugepages.insert('C', 2048);
                }
                Host { shape, policy }
            },
        )
}

/// Every invariant, recomputed from the claims.
fn check(a: &Allocator) -> Result<(), TestCaseError> {
    let topo = a.topology();
    let pools = a.pools();
    let claims: Vec<&Claim> = a.claims().collect();
    let mut holder: BTreeMap<u32, &str> = BTreeMap::new();
    for c in &claims {
        for cpu in c.dedicated_cpus().chain(c.idle_cpus.iter().copied()) {
            prop_assert!(topo.cpu(cpu).is_some(), "CPU {cpu} is not online");
            prop_assert!(!pools.reserved.contains(&cpu), "reserved CPU {cpu} claimed");
            if let Some(other) = holder.insert(cpu, &c.vm_uuid) {
                prop_assert!(false, "CPU {cpu} held by {other} and {}", c.vm_uuid);
            }
        }
        for cpu in c.dedicated_cpus() {
            prop_assert!(
                pools.dedicated_ok[cpu as usize],
                "CPU {cpu} not dedicated-ok"
            );
        }
        let g = c.guest_topology;
        prop_assert_eq!(g.sockets * g.cores * g.threads, c.vcpus.len() as u32);
    }
    for c in &claims {
        let mine: BTreeSet<u32> = c
            .dedicated_cpus()
            .chain(c.idle_cpus.iter().copied())
            .collect();
        for cpu in c.dedicated_cpus() {
            let core = &topo.cores[topo.cpu(cpu).unwrap().core];
            for &t in &core.threads {
                let ok = match (c.cpu_type, topo.sibling_leak, c.insecure) {
                    // A dedicated core's siblings stay with its guest.
                    ('C', _, _) => mine.contains(&t),
                    // Leaky host: a secure guest shares a core with nobody but the host.
                    ('T', true, false) => mine.contains(&t) || pools.reserved.contains(&t),
                    // Leaky host, `i` guest: only with the host or other `i` guests.
                    ('T', true, true) => {
                        mine.contains(&t)
                            || pools.reserved.contains(&t)
                            || !holder.contains_key(&t)
                            || claims
                                .iter()
                                .any(|o| o.insecure && o.dedicated_cpus().any(|x| x == t))
                    }
                    _ => true,
                };
                prop_assert!(
                    ok,
                    "{} ({}) shares the core of CPU {cpu}",
                    c.vm_uuid,
                    c.cpu_type
                );
            }
        }
        if c.cpu_type == 'C' {
            let cores: BTreeSet<usize> = c
                .dedicated_cpus()
                .map(|x| topo.cpu(x).unwrap().core)
                .collect();
            prop_assert_eq!(cores.len(), c.vcpus.len(), "one core per C vCPU");
        }
        if c.cpu_type == 'C' || c.cpu_type == 'T' {
            // Memory strictly on the nodes of the CPUs.
            let nodes: BTreeSet<u32> = c
                .dedicated_cpus()
                .map(|x| topo.nodes[topo.cores[topo.cpu(x).unwrap().core].node].id)
                .collect();
            for m in &c.memory {
                prop_assert!(nodes.contains(&m.numa_node), "memory off the CPUs' nodes");
            }
            for cell in &c.guest_numa {
                prop_assert!(nodes.contains(&cell.host_node));
            }
        }
    }
    // The shared pool within its ratio.
    let pool = (0..topo.cpu_slots())
        .filter(|&i| pools.shared_ok[i] && !holder.contains_key(&(i as u32)))
        .count() as u64;
    let load: u64 = claims
        .iter()
        .map(|c| pools.cost(c.cpu_type()) * c.vcpus.len() as u64)
        .sum();
    prop_assert!(
        load <= pool * pools.units_per_thread,
        "pool of {pool} threads carries {load} units"
    );
    prop_assert_eq!(a.pool_cpus().len() as u64, pool);
    // Memory and hugepages within each node.
    for (i, node) in topo.nodes.iter().enumerate() {
        let shares = claims
            .iter()
            .flat_map(|c| c.memory.iter().chain([&c.overhead]))
            .filter(|m| m.numa_node == node.id);
        let (mut normal, mut pages) = (0u64, BTreeMap::<u64, u64>::new());
        for m in shares {
            if m.page_size_kib == NORMAL_PAGE_KIB {
                normal += m.mib;
            } else {
                *pages.entry(m.page_size_kib).or_default() += m.pages();
            }
        }
        prop_assert!(normal <= node.memory_mib - pools.reserved_mib[i].min(node.memory_mib));
        for (size, used) in pages {
            prop_assert!(used <= node.hugepages.get(&size).copied().unwrap_or(0));
        }
    }
    // Rebuilding from the stored claims gives the same state.
    let rebuilt = Allocator::rebuild(
        topo.clone(),
        a.policy().clone(),
        claims.iter().map(|c| (*c).clone()).collect(),
    )
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(rebuilt.ledger(), a.ledger());
    Ok(())
}

fn request(n: u64, flavor: &str) -> ClaimRequest {
    ClaimRequest {
        vm_uuid: format!("00000000-0000-4000-8000-{n:012x}"),
        request_id: format!("p{n}"),
        flavor: spec(flavor),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_through_any_sequence(
        host in host(),
        flavors in proptest::collection::vec(flavor(), 6),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let topo = Topology::regular(&host.shape);
        let Ok(mut a) = Allocator::new(topo, host.policy.clone()) else {
            // Generated policies that do not fit (e.g. a static set that is empty) are the
            // resolver's business, tested elsewhere.
            return Ok(());
        };
        let mut now = 0;
        let mut serial = 0;
        for op in ops {
            let before = a.clone();
            serial += 1;
            match op {
                Op::Claim(f) | Op::Reserve(f, _) => {
                    let req = request(serial, &flavors[f]);
                    let result = match op {
                        Op::Reserve(_, ttl) => a.reserve(&req, now, ttl * 1000),
                        _ => a.claim(&req, now),
                    };
                    match result {
                        Ok(claim) => {
                            prop_assert!(a.generation() > before.generation());
                            prop_assert_eq!(a.get(&claim.vm_uuid), Some(&claim));
                        }
                        Err(_) => {
                            // Refused: nothing changed beyond expiring what was due.
                            let mut expected = before.clone();
                            expected.expire(now);
                            prop_assert_eq!(a.ledger(), expected.ledger());
                            prop_assert_eq!(a.generation(), expected.generation());
                        }
                    }
                }
                Op::Advance(ms) => {
                    now += ms;
                    for gone in a.expire(now) {
                        prop_assert!(gone.expires_at_ms.is_some_and(|t| t <= now));
                    }
                    prop_assert!(a.claims().all(|c| c.expires_at_ms.is_none_or(|t| t > now)));
                }
                Op::Bind(pick) => {
                    let ids: Vec<String> = a.claims().map(|c| c.request_id.clone()).collect();
                    if !ids.is_empty() {
                        let bound = a.bind(&ids[pick % ids.len()], now);
                        prop_assert!(bound.is_ok_and(|c| c.expires_at_ms.is_none()));
                    }
                }
                Op::Release(pick) => {
                    let vms: Vec<String> = a.claims().map(|c| c.vm_uuid.clone()).collect();
                    if !vms.is_empty() {
                        let released = a.release(&vms[pick % vms.len()]).unwrap();
                        prop_assert!(a.get(&released.vm_uuid).is_none());
                    }
                }
                Op::Bounce(f) => {
                    let spec = spec(&flavors[f]);
                    let capacity = a.capacity(&spec);
                    let req = request(serial, &flavors[f]);
                    if a.claim(&req, now).is_ok() {
                        a.release(&req.vm_uuid).unwrap();
                        prop_assert_eq!(a.ledger(), before.ledger());
                        prop_assert_eq!(a.capacity(&spec), capacity);
                    }
                }
            }
            check(&a)?;
        }
    }

    /// The capacity answer is exactly the number of guests that can then be claimed.
    #[test]
    fn capacity_counts_what_claims_then_get(
        host in host(),
        existing in proptest::collection::vec(flavor(), 0..6),
        probe in flavor(),
    ) {
        let topo = Topology::regular(&host.shape);
        let Ok(mut a) = Allocator::new(topo, host.policy.clone()) else { return Ok(()) };
        for (n, f) in existing.iter().enumerate() {
            let _ = a.claim(&request(n as u64, f), 0);
        }
        let spec = spec(&probe);
        let answer = a.capacity(&spec);
        let mut sim = a.clone();
        let mut got = 0u64;
        let mut last = None;
        for n in 1000.. {
            match sim.claim(&request(n, &probe), 0) {
                Ok(_) => got += 1,
                Err(r) => { last = Some(r); break; }
            }
        }
        prop_assert_eq!(answer.more, got, "capacity {:?}", answer);
        for (_, alone) in &answer.per_numa_node {
            prop_assert!(*alone <= answer.more);
        }
        // The same resource stops the real claims.
        if let Some(r) = last {
            prop_assert_eq!(answer.limited_by, r.limited_by);
        }
    }
}
