//! Guests with dedicated vCPUs (`C`, `T`): which cores and threads, on which NUMA nodes, and
//! what a lone thread beside another guest may be.

use super::*;

impl Ledger {
    /// May a lone free thread be used beside the other threads of its core?
    pub(super) fn lone_ok(&self, topo: &Topology, cpu: u32, insecure: bool) -> bool {
        let core = &topo.cores[topo.cpu(cpu).map_or(0, |c| c.core)];
        core.threads
            .iter()
            .filter(|&&t| t != cpu)
            .all(|&t| match self.owner[t as usize] {
                Owner::Host => true,
                Owner::Dedicated { insecure: other } => !topo.sibling_leak || (insecure && other),
                Owner::Free | Owner::Idle | Owner::Absent => false,
            })
    }

    pub(super) fn free_dedicated(&self, pools: &Pools, cpu: u32) -> bool {
        self.owner[cpu as usize] == Owner::Free && pools.dedicated_ok[cpu as usize]
    }

    /// Cores of node `n` whose threads are all free for dedicated use, and (for `T`) lone
    /// free threads usable beside their core's other owners.
    pub(super) fn node_candidates(
        &self,
        topo: &Topology,
        pools: &Pools,
        n: usize,
        need: &Need,
    ) -> (Vec<usize>, Vec<u32>) {
        let mut full = Vec::new();
        let mut lone = Vec::new();
        for (i, core) in topo.cores.iter().enumerate().filter(|(_, c)| c.node == n) {
            let free: Vec<u32> = core
                .threads
                .iter()
                .copied()
                .filter(|&t| self.free_dedicated(pools, t))
                .collect();
            if free.len() == core.threads.len() {
                full.push(i);
            } else if need.cpu_type == CpuType::DedicatedThread {
                lone.extend(
                    free.into_iter()
                        .filter(|&t| self.lone_ok(topo, t, need.insecure)),
                );
            }
        }
        (full, lone)
    }

    /// vCPUs node `n` can take now.
    pub(super) fn node_room(
        &self,
        topo: &Topology,
        full: &[usize],
        lone: &[u32],
        need: &Need,
    ) -> u32 {
        match need.cpu_type {
            CpuType::DedicatedCore => full.len() as u32,
            _ => {
                full.iter()
                    .map(|&c| topo.cores[c].threads.len() as u32)
                    .sum::<u32>()
                    + lone.len() as u32
            }
        }
    }

    /// Takes `want` vCPUs from one node's candidates: `(pins, idle, whole_core_pairs)`.
    pub(super) fn take(
        &self,
        topo: &Topology,
        need: &Need,
        full: &[usize],
        lone: &[u32],
        want: u32,
    ) -> (Vec<u32>, Vec<u32>, bool) {
        let mut pins = Vec::new();
        let mut idle = Vec::new();
        let mut whole = true;
        let mut full = full.iter();
        if need.cpu_type == CpuType::DedicatedCore {
            for &c in full.take(want as usize) {
                let threads = &topo.cores[c].threads;
                pins.push(threads[0]);
                idle.extend(&threads[1..]);
            }
            return (pins, idle, false);
        }
        let mut left = want as usize;
        let mut rest = Vec::new();
        for &c in full.by_ref() {
            let threads = &topo.cores[c].threads;
            if threads.len() <= left {
                pins.extend(threads);
                left -= threads.len();
            } else {
                rest.push(c);
            }
            if left == 0 {
                break;
            }
        }
        if left > 0 {
            whole = false;
            let from_lone = lone.len().min(left);
            pins.extend(&lone[..from_lone]);
            left -= from_lone;
        }
        if left > 0
            && let Some(&c) = rest.iter().chain(full).next()
        {
            let threads = &topo.cores[c].threads;
            pins.extend(&threads[..left]);
            // On a host that leaks across SMT siblings the rest of the core stays idle,
            // unless this guest accepted the risk.
            if topo.sibling_leak && !need.insecure {
                idle.extend(&threads[left..]);
            }
        }
        (pins, idle, whole)
    }

    pub(super) fn place_dedicated(
        &self,
        topo: &Topology,
        pools: &Pools,
        need: &Need,
        only: Option<usize>,
    ) -> Result<Claim, Refusal> {
        let nodes: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.nodes.len()).collect(),
        };
        let candidates: Vec<(usize, Vec<usize>, Vec<u32>, u32)> = nodes
            .iter()
            .map(|&n| {
                let (full, lone) = self.node_candidates(topo, pools, n, need);
                let room = self.node_room(topo, &full, &lone, need);
                (n, full, lone, room)
            })
            .collect();
        let total: u32 = candidates.iter().map(|c| c.3).sum();
        let what = if need.cpu_type == CpuType::DedicatedCore {
            "free cores with all their threads free"
        } else {
            "free threads"
        };
        if total < need.vcpus {
            return Err(Refusal::exhausted(
                "PCPU",
                format!(
                    "{} dedicated vCPUs need {} {what}; {total} are free ({})",
                    need.vcpus,
                    need.vcpus,
                    candidates
                        .iter()
                        .map(|c| format!("node {}: {}", topo.nodes[c.0].id, c.3))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        // One node when the CPUs and the memory fit there: the fullest such node (packing keeps
        // whole nodes free for big guests). Else spread: memory follows the vCPUs, so each node
        // takes only as many vCPUs as its free memory backs, nodes backing most first; the first
        // node used also carries the overhead.
        let single = candidates
            .iter()
            .filter(|c| c.3 >= need.vcpus && need.alone_count(&self.nodes[c.0]) >= 1)
            .min_by_key(|c| (c.3, c.0));
        let mut taken: Vec<(usize, Vec<u32>, Vec<u32>, bool)> = Vec::new();
        match single {
            Some((n, full, lone, _)) => {
                let (pins, idle, whole) = self.take(topo, need, full, lone, need.vcpus);
                taken.push((*n, pins, idle, whole));
            }
            None => {
                let per_vcpu = need.ram_units().div_ceil(u64::from(need.vcpus)).max(1);
                let backs = |n: usize, home: bool| -> u32 {
                    let node = &self.nodes[n];
                    let mut free = need.free_units(node);
                    if home {
                        if node.mib < need.overhead_mib {
                            return 0;
                        }
                        if !need.huge() {
                            free -= need.overhead_mib;
                        }
                    }
                    u32::try_from(free / per_vcpu).unwrap_or(u32::MAX)
                };
                let mut order: Vec<&(usize, Vec<usize>, Vec<u32>, u32)> =
                    candidates.iter().filter(|c| c.3 > 0).collect();
                order.sort_by_key(|c| (std::cmp::Reverse(c.3.min(backs(c.0, false))), c.0));
                let mut left = need.vcpus;
                for (n, full, lone, room) in order {
                    let want = left.min(*room).min(backs(*n, taken.is_empty()));
                    if want == 0 {
                        continue;
                    }
                    let (pins, idle, whole) = self.take(topo, need, full, lone, want);
                    left -= want;
                    taken.push((*n, pins, idle, whole));
                }
                if left > 0 {
                    return Err(Refusal::exhausted(
                        &need.memory_class(),
                        format!(
                            "dedicated memory must come from the NUMA node(s) of the guest's CPUs, and no set of nodes with free CPUs has {} free ({})",
                            need.describe(),
                            candidates
                                .iter()
                                .map(|c| format!(
                                    "node {}: {} vCPUs, {} MiB",
                                    topo.nodes[c.0].id,
                                    c.3,
                                    need.units_to_mib(need.free_units(&self.nodes[c.0]))
                                ))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        let pins: Vec<u32> = taken.iter().flat_map(|t| t.1.iter().copied()).collect();
        let idle: Vec<u32> = taken.iter().flat_map(|t| t.2.iter().copied()).collect();
        self.check_carve_out(pools, pins.iter().chain(&idle))?;

        // Memory strictly on the nodes of the CPUs, in proportion to the vCPUs there.
        let units = need.ram_units();
        let mut shares: Vec<(usize, u64)> = Vec::new();
        let mut given = 0;
        for (k, (n, p, _, _)) in taken.iter().enumerate() {
            let share = if k + 1 == taken.len() {
                units - given
            } else {
                units * p.len() as u64 / u64::from(need.vcpus)
            };
            given += share;
            shares.push((*n, share));
        }
        let home = taken[0].0;
        for &(n, share) in &shares {
            let node = &self.nodes[n];
            let mut need_mib = if need.huge() { 0 } else { share };
            if n == home {
                need_mib += need.overhead_mib;
            }
            let short_pages = need.huge() && need.free_units(node) < share;
            if short_pages || node.mib < need_mib {
                let free = if short_pages {
                    format!("{} MiB", need.units_to_mib(need.free_units(node)))
                } else {
                    format!("{} MiB", node.mib)
                };
                return Err(Refusal::exhausted(
                    if short_pages {
                        need.memory_class()
                    } else {
                        "MEMORY_MB".into()
                    }
                    .as_str(),
                    format!(
                        "dedicated memory must come from the NUMA node(s) of the guest's CPUs: node {} needs {} MiB{} and has {free} free",
                        topo.nodes[n].id,
                        if short_pages {
                            need.units_to_mib(share)
                        } else {
                            need_mib
                        },
                        if short_pages {
                            format!(" of {} pages", page_size_label(need.page_kib))
                        } else {
                            String::new()
                        },
                    ),
                ));
            }
        }

        let threads = if need.cpu_type == CpuType::DedicatedThread && taken.iter().all(|t| t.3) {
            taken
                .iter()
                .flat_map(|t| t.1.iter())
                .filter_map(|&c| topo.cpu(c))
                .map(|c| topo.cores[c.core].threads.len() as u32)
                .min()
                .unwrap_or(1)
        } else {
            1
        };
        let equal = taken.iter().all(|t| t.1.len() == taken[0].1.len());
        let sockets = if equal && (taken[0].1.len() as u32).is_multiple_of(threads) {
            taken.len() as u32
        } else {
            1
        };
        let mut vcpu = 0;
        let mut guest_numa = Vec::new();
        for (cell, ((n, p, _, _), (_, share))) in taken.iter().zip(&shares).enumerate() {
            guest_numa.push(GuestCell {
                id: cell as u32,
                vcpus: (vcpu..vcpu + p.len() as u32).collect(),
                mib: need.units_to_mib(*share),
                host_node: topo.nodes[*n].id,
            });
            vcpu += p.len() as u32;
        }
        Ok(Claim {
            cpu_type: need.cpu_type.letter(),
            insecure: need.insecure,
            vcpus: pins
                .iter()
                .enumerate()
                .map(|(i, &cpu)| VcpuPin {
                    vcpu: i as u32,
                    cpu: Some(cpu),
                })
                .collect(),
            idle_cpus: idle,
            memory: shares
                .iter()
                .map(|&(n, u)| need.share(topo.nodes[n].id, u))
                .collect(),
            overhead: MemoryShare {
                numa_node: topo.nodes[home].id,
                mib: need.overhead_mib,
                page_size_kib: NORMAL_PAGE_KIB,
            },
            guest_topology: GuestTopology {
                sockets,
                cores: need.vcpus / (sockets * threads),
                threads,
            },
            guest_numa,
            ..empty_claim()
        })
    }
}
