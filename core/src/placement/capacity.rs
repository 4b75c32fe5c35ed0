//! How many more guests of a flavor fit now, where, and what runs out first. Dedicated, GPU and
//! InfiniBand guests are counted by placing them one after another on a copy of the ledger
//! (each takes at least one CPU or device, so that ends quickly). Floating guests are counted in closed form,
//! because a big host holds hundreds of them: the shared pool, the disk and the memory bound
//! them independently, and memory goes first node by node (each node takes
//! `floor(free / need)` whole guests whatever the order), then spread over the remainders
//! exactly as [`super::ledger::floating_memory`] would.

use super::admission;
use super::allocator::Allocator;
use super::claim::Refusal;
use super::ledger::{Ledger, Need, NodeFree, floating_memory, take_memory};
use crate::flavor::{CpuType, FlavorSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub flavor: String,
    /// Guests of this flavor that fit now, placed one after another.
    pub more: u64,
    /// (NUMA node id, guests that fit on that node alone, at most `more`: the free placement
    /// can use up the shared pool's ratio on another node first, so a node alone may take
    /// more than the claims will get, and no caller can ask for a node).
    pub per_numa_node: Vec<(u32, u64)>,
    /// The resource or promise that stops the next one.
    pub limited_by: String,
    pub reason: String,
}

impl Allocator {
    pub fn capacity(&self, spec: &FlavorSpec) -> Capacity {
        let flavor = spec.name();
        let nodes = &self.topology().nodes;
        let admitted = if self.is_draining() {
            Err(super::allocator::draining_refusal())
        } else {
            admission::check(spec, self.topology())
        };
        if let Err(r) = admitted {
            return Capacity {
                flavor,
                more: 0,
                per_numa_node: nodes.iter().map(|n| (n.id, 0)).collect(),
                limited_by: r.limited_by,
                reason: r.message,
            };
        }
        let need = Need::new(spec, self.policy());
        let floating = matches!(spec.cpu_type, CpuType::Shared | CpuType::Crowded);
        if floating && need.gpu.is_none() && !need.ib {
            return self.floating_capacity(flavor, &need);
        }
        let (more, stop) = self.simulate(&need, None);
        Capacity {
            flavor,
            more,
            per_numa_node: (0..nodes.len())
                .map(|i| (nodes[i].id, self.simulate(&need, Some(i)).0.min(more)))
                .collect(),
            limited_by: stop.limited_by,
            reason: stop.message,
        }
    }

    /// Places guests of `need` until one is refused: (count, that refusal).
    fn simulate(&self, need: &Need, only: Option<usize>) -> (u64, Refusal) {
        let mut ledger: Ledger = self.ledger().clone();
        let mut count = 0;
        loop {
            let placed = ledger
                .place(self.topology(), self.pools(), need, only)
                .and_then(|claim| ledger.apply(self.topology(), self.pools(), &claim));
            match placed {
                Ok(()) => count += 1,
                Err(refusal) => return (count, refusal),
            }
        }
    }

    fn floating_capacity(&self, flavor: String, need: &Need) -> Capacity {
        let ledger = self.ledger();
        let pools = self.pools();
        let room = ledger.pool_threads * pools.units_per_thread - ledger.pool_used;
        let by_pool = room / (pools.cost(need.cpu_type) * u64::from(need.vcpus));
        let by_disk = match ledger.disk_free_gb {
            Some(free) if need.disk_gb > 0 => free / need.disk_gb,
            _ => u64::MAX,
        };
        let alone: Vec<u64> = ledger.nodes.iter().map(|n| need.alone_count(n)).collect();
        let by_memory = alone.iter().sum::<u64>() + spread_count(&ledger.nodes, &alone, need);
        let more = by_pool.min(by_disk).min(by_memory);
        let free_mib: u64 = ledger.nodes.iter().map(|n| n.mib).sum();
        let (limited_by, reason) = if more == by_pool {
            (
                "shared-pool ratio".to_string(),
                format!(
                    "the shared pool ({} threads, {} V vCPUs per thread) has room for {} more {} vCPUs",
                    ledger.pool_threads,
                    pools.v_ratio,
                    room / pools.cost(need.cpu_type),
                    need.cpu_type.letter()
                ),
            )
        } else if more == by_memory {
            (
                need.memory_class(),
                format!(
                    "each guest needs {} MiB plus {} MiB overhead; {free_mib} MiB of normal memory are free",
                    need.ram_mib, need.overhead_mib
                ),
            )
        } else {
            (
                "DISK_GB".to_string(),
                format!(
                    "each guest needs {} GB of local disk; {} GB are free",
                    need.disk_gb,
                    ledger.disk_free_gb.unwrap_or(0)
                ),
            )
        };
        let others = by_pool.min(by_disk);
        Capacity {
            flavor,
            more,
            per_numa_node: self
                .topology()
                .nodes
                .iter()
                .zip(&alone)
                .map(|(n, &k)| (n.id, k.min(others)))
                .collect(),
            limited_by,
            reason,
        }
    }
}

/// Guests that still fit, spread over nodes, once every node has taken its `alone` share.
fn spread_count(nodes: &[NodeFree], alone: &[u64], need: &Need) -> u64 {
    let mut left: Vec<NodeFree> = nodes
        .iter()
        .zip(alone)
        .map(|(n, &k)| {
            let mut n = n.clone();
            let units = k * need.ram_units();
            if need.page_kib == super::claim::NORMAL_PAGE_KIB {
                n.mib -= units + k * need.overhead_mib;
            } else {
                if let Some(p) = n.pages.get_mut(&need.page_kib) {
                    *p -= units;
                }
                n.mib -= k * need.overhead_mib;
            }
            n
        })
        .collect();
    let all: Vec<usize> = (0..left.len()).collect();
    let mut count = 0;
    while let Ok(plan) = floating_memory(&left, &all, need) {
        take_memory(&mut left, &plan, need);
        count += 1;
    }
    count
}
