//! Guests without pinned vCPUs (`V`, `L`): their place is the shared pool, and their memory
//! one NUMA node if any can take it whole, else spread over the nodes with most free.

use super::*;

impl Ledger {
    pub(super) fn place_floating(
        &self,
        topo: &Topology,
        pools: &Pools,
        need: &Need,
        only: Option<usize>,
    ) -> Result<Claim, Refusal> {
        // Only the ratio binds: a guest may have more vCPUs than the pool has threads, each
        // still gets its share.
        let vcpus = u64::from(need.vcpus);
        let cost = pools.cost(need.cpu_type) * vcpus;
        let limit = self.pool_threads * pools.units_per_thread;
        if self.pool_used + cost > limit {
            return Err(Refusal::exhausted(
                "shared-pool ratio",
                format!(
                    "the shared pool's {} threads carry at most {} V vCPUs ({} per thread); {} are placed, {} more {} vCPUs would exceed that",
                    self.pool_threads,
                    self.pool_threads * pools.v_ratio,
                    pools.v_ratio,
                    v_equivalents(self.pool_used, pools),
                    need.vcpus,
                    need.cpu_type.letter()
                ),
            ));
        }
        let allowed: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.nodes.len()).collect(),
        };
        let (shares, overhead_node) = floating_memory(&self.nodes, &allowed, need)?;
        let memory: Vec<MemoryShare> = shares
            .iter()
            .map(|&(i, units)| need.share(topo.nodes[i].id, units))
            .collect();
        let home = shares
            .iter()
            .max_by_key(|(_, u)| *u)
            .map_or(overhead_node, |(i, _)| *i);
        Ok(Claim {
            cpu_type: need.cpu_type.letter(),
            insecure: need.insecure,
            vcpus: (0..need.vcpus)
                .map(|vcpu| VcpuPin { vcpu, cpu: None })
                .collect(),
            guest_topology: GuestTopology {
                sockets: 1,
                cores: need.vcpus,
                threads: 1,
            },
            guest_numa: vec![GuestCell {
                id: 0,
                vcpus: (0..need.vcpus).collect(),
                mib: need.ram_mib,
                host_node: topo.nodes[home].id,
            }],
            memory,
            overhead: MemoryShare {
                numa_node: topo.nodes[overhead_node].id,
                mib: need.overhead_mib,
                page_size_kib: NORMAL_PAGE_KIB,
            },
            ..empty_claim()
        })
    }
}

/// Floating guests' memory: one node if any can take it whole (the one with most free
/// memory, to balance), else spread: overhead on the node with most free memory, RAM taken
/// from the nodes with most free first.
pub(in crate::placement) fn floating_memory(
    nodes: &[NodeFree],
    allowed: &[usize],
    need: &Need,
) -> Result<MemoryPlan, Refusal> {
    let most_free = |filter: &dyn Fn(&NodeFree) -> bool| {
        allowed
            .iter()
            .copied()
            .filter(|&i| filter(&nodes[i]))
            .max_by_key(|&i| (nodes[i].mib, std::cmp::Reverse(i)))
    };
    if let Some(i) = most_free(&|n| need.alone_count(n) >= 1) {
        return Ok((vec![(i, need.ram_units())], i));
    }
    let short = |free_units: u64| {
        Refusal::exhausted(
            &need.memory_class(),
            format!(
                "guest needs {}; {} MiB are free{}",
                need.describe(),
                need.units_to_mib(free_units),
                if allowed.len() == 1 {
                    " on that node"
                } else {
                    ""
                }
            ),
        )
    };
    let Some(home) = most_free(&|n| n.mib >= need.overhead_mib) else {
        return Err(short(0));
    };
    let mut free: Vec<(usize, u64)> = allowed
        .iter()
        .map(|&i| {
            let mut units = need.free_units(&nodes[i]);
            if !need.huge() && i == home {
                units -= need.overhead_mib;
            }
            (i, units)
        })
        .collect();
    let total: u64 = free.iter().map(|f| f.1).sum();
    if total < need.ram_units() {
        return Err(short(total));
    }
    free.sort_by_key(|&(i, units)| (std::cmp::Reverse(units), i));
    let mut left = need.ram_units();
    let mut shares = Vec::new();
    for (i, units) in free {
        if left == 0 {
            break;
        }
        let take = units.min(left);
        if take > 0 {
            shares.push((i, take));
            left -= take;
        }
    }
    shares.sort_unstable();
    Ok((shares, home))
}

/// Takes a floating plan out of `nodes` (the capacity simulation's copy).
pub(in crate::placement) fn take_memory(nodes: &mut [NodeFree], plan: &MemoryPlan, need: &Need) {
    for &(i, units) in &plan.0 {
        if need.huge() {
            if let Some(p) = nodes[i].pages.get_mut(&need.page_kib) {
                *p -= units;
            }
        } else {
            nodes[i].mib -= units;
        }
    }
    nodes[plan.1].mib -= need.overhead_mib;
}
