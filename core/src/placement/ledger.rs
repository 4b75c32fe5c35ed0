//! The free resources of a node and the two things done with them: [`Ledger::place`] decides
//! where a guest would go without changing anything; [`Ledger::apply`] takes exactly what a
//! claim names (checking every bit first) and [`Ledger::unapply`] gives exactly that back.
//! Fresh claims, rebuilt claims and capacity simulations all go through these three, so the
//! counting can never drift from the choosing.

use std::collections::BTreeMap;

use super::claim::{
    Claim, Emulator, GuestCell, GuestTopology, MemoryShare, NORMAL_PAGE_KIB, Refusal, VcpuPin,
};
use super::policy::{Policy, Pools};
use super::topology::Topology;
use crate::flavor::{CpuType, FlavorSpec};
use crate::host::scheduler::page_size_label;
use crate::host::sysfs::format_cpulist;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// Not an online CPU.
    Absent,
    /// `reserved_cpus`: the host's.
    Host,
    Free,
    /// Pinned to a guest's vCPU; `insecure`: that guest has an `i` flavor.
    Dedicated {
        insecure: bool,
    },
    /// Kept idle beside a guest's dedicated vCPU.
    Idle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeFree {
    /// Normal-page memory.
    pub mib: u64,
    /// Page size in KiB → free pages.
    pub pages: BTreeMap<u64, u64>,
}

/// What a flavor needs, in the units the ledger counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Need {
    pub cpu_type: CpuType,
    pub vcpus: u32,
    pub insecure: bool,
    pub ram_mib: u64,
    /// [`NORMAL_PAGE_KIB`] or a hugepage size.
    pub page_kib: u64,
    pub overhead_mib: u64,
    pub disk_gb: u64,
    /// SCS GPU vendor letter of a passed-through GPU.
    pub gpu: Option<char>,
}

impl Need {
    pub fn new(spec: &FlavorSpec, policy: &Policy) -> Need {
        let ram_mib = u64::from(spec.ram_half_gib) * 512;
        Need {
            cpu_type: spec.cpu_type,
            vcpus: spec.cpus,
            insecure: spec.insecure,
            ram_mib,
            page_kib: policy
                .hugepage_kib(spec.cpu_type)
                .unwrap_or(NORMAL_PAGE_KIB),
            overhead_mib: policy.overhead.mib(spec.cpus, ram_mib),
            disk_gb: spec.disk.map_or(0, |d| {
                u64::from(d.count) * u64::from(d.size_gb.unwrap_or(0))
            }),
            gpu: spec.gpu.as_ref().map(|g| g.vendor.letter()),
        }
    }

    fn huge(&self) -> bool {
        self.page_kib != NORMAL_PAGE_KIB
    }

    /// Guest RAM in ledger units: pages when huge, MiB otherwise.
    pub fn ram_units(&self) -> u64 {
        if self.huge() {
            (self.ram_mib * 1024).div_ceil(self.page_kib)
        } else {
            self.ram_mib
        }
    }

    fn units_to_mib(&self, units: u64) -> u64 {
        if self.huge() {
            units * self.page_kib / 1024
        } else {
            units
        }
    }

    fn free_units(&self, node: &NodeFree) -> u64 {
        if self.huge() {
            node.pages.get(&self.page_kib).copied().unwrap_or(0)
        } else {
            node.mib
        }
    }

    /// How many such guests fit in `node` alone, by memory.
    pub fn alone_count(&self, node: &NodeFree) -> u64 {
        if self.huge() {
            let by_pages = self.free_units(node) / self.ram_units().max(1);
            let by_overhead = node.mib.checked_div(self.overhead_mib).unwrap_or(u64::MAX);
            by_pages.min(by_overhead)
        } else {
            node.mib / (self.ram_mib + self.overhead_mib).max(1)
        }
    }

    /// The resource class memory is counted in.
    pub fn memory_class(&self) -> String {
        if self.huge() {
            format!("CUSTOM_HUGEPAGES_{}", page_size_label(self.page_kib))
        } else {
            "MEMORY_MB".into()
        }
    }

    /// `"1024 MiB of 1G pages plus 147 MiB overhead"`, for refusals.
    fn describe(&self) -> String {
        let pages = if self.huge() {
            format!(" of {} pages", page_size_label(self.page_kib))
        } else {
            String::new()
        };
        format!(
            "{} MiB{pages} plus {} MiB overhead",
            self.ram_mib, self.overhead_mib
        )
    }

    fn share(&self, numa_node: u32, units: u64) -> MemoryShare {
        MemoryShare {
            numa_node,
            mib: self.units_to_mib(units),
            page_size_kib: self.page_kib,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub(super) owner: Vec<Owner>,
    pub(super) pool_threads: u64,
    pub(super) pool_used: u64,
    pub(super) nodes: Vec<NodeFree>,
    pub(super) disk_free_gb: Option<u64>,
    pub(super) gpu_free: Vec<bool>,
}

/// Placement of guest RAM: (node index, units) shares and the node carrying the overhead.
type MemoryPlan = (Vec<(usize, u64)>, usize);

impl Ledger {
    pub fn new(topo: &Topology, pools: &Pools) -> Ledger {
        let mut owner = vec![Owner::Absent; topo.cpu_slots()];
        for cpu in &topo.cpus {
            owner[cpu.id as usize] = if pools.reserved.contains(&cpu.id) {
                Owner::Host
            } else {
                Owner::Free
            };
        }
        let pool_threads = pools.shared_ok.iter().filter(|&&ok| ok).count() as u64;
        Ledger {
            owner,
            pool_threads,
            pool_used: 0,
            nodes: topo
                .nodes
                .iter()
                .zip(&pools.reserved_mib)
                .map(|(n, reserve)| NodeFree {
                    mib: n.memory_mib.saturating_sub(*reserve),
                    pages: n.hugepages.clone(),
                })
                .collect(),
            disk_free_gb: topo.facts.disk_gb,
            gpu_free: vec![true; topo.facts.gpus.len()],
        }
    }

    /// The shared pool's CPUs now.
    pub fn pool_cpus(&self, pools: &Pools) -> Vec<u32> {
        self.owner
            .iter()
            .enumerate()
            .filter(|(i, o)| **o == Owner::Free && pools.shared_ok[*i])
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Where a guest of `need` would go now, restricted to node index `only` when given.
    /// Changes nothing.
    pub(super) fn place(
        &self,
        topo: &Topology,
        pools: &Pools,
        need: &Need,
        only: Option<usize>,
    ) -> Result<Claim, Refusal> {
        let mut claim = match need.cpu_type {
            CpuType::Shared | CpuType::Crowded => self.place_floating(topo, pools, need, only)?,
            CpuType::DedicatedThread | CpuType::DedicatedCore => {
                self.place_dedicated(topo, pools, need, only)?
            }
        };
        if let Some(free) = self.disk_free_gb
            && need.disk_gb > free
        {
            return Err(Refusal::exhausted(
                "DISK_GB",
                format!(
                    "flavor needs {} GB of local disk, {free} GB are free",
                    need.disk_gb
                ),
            ));
        }
        claim.disk_gb = need.disk_gb;
        if let Some(vendor) = need.gpu {
            let free = topo
                .facts
                .gpus
                .iter()
                .zip(&self.gpu_free)
                .find(|(g, free)| **free && g.vendor == vendor);
            match free {
                Some((g, _)) => claim.gpus.push(g.pci_address.clone()),
                None => {
                    return Err(Refusal::exhausted(
                        "GPU",
                        format!("every {vendor} GPU of this node is taken"),
                    ));
                }
            }
        }
        claim.emulator = if !pools.reserved.is_empty() {
            Emulator::Reserved(pools.reserved.clone())
        } else if claim.vcpus.iter().any(|v| v.cpu.is_some()) {
            Emulator::Own
        } else {
            Emulator::Pool
        };
        Ok(claim)
    }

    fn place_floating(
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

    /// May a lone free thread be used beside the other threads of its core?
    fn lone_ok(&self, topo: &Topology, cpu: u32, insecure: bool) -> bool {
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

    fn free_dedicated(&self, pools: &Pools, cpu: u32) -> bool {
        self.owner[cpu as usize] == Owner::Free && pools.dedicated_ok[cpu as usize]
    }

    /// Cores of node `n` whose threads are all free for dedicated use, and (for `T`) lone
    /// free threads usable beside their core's other owners.
    fn node_candidates(
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
    fn node_room(&self, topo: &Topology, full: &[usize], lone: &[u32], need: &Need) -> u32 {
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
    fn take(
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

    fn place_dedicated(
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

    /// Taking `cpus` out of the shared pool must leave it within its ratio.
    fn check_carve_out<'a>(
        &self,
        pools: &Pools,
        cpus_taken: impl Iterator<Item = &'a u32>,
    ) -> Result<(), Refusal> {
        let removed: Vec<u32> = cpus_taken
            .copied()
            .filter(|&c| pools.shared_ok[c as usize])
            .collect();
        let left = self.pool_threads - removed.len() as u64;
        if self.pool_used > left * pools.units_per_thread {
            return Err(Refusal::exhausted(
                "shared-pool ratio",
                format!(
                    "taking CPUs {} out of the shared pool would leave {left} threads for {} V vCPUs placed there (at most {} per thread)",
                    format_cpulist(&removed),
                    v_equivalents(self.pool_used, pools),
                    pools.v_ratio
                ),
            ));
        }
        Ok(())
    }

    /// Takes what `claim` names, or changes nothing and says what is in the way.
    pub(super) fn apply(
        &mut self,
        topo: &Topology,
        pools: &Pools,
        claim: &Claim,
    ) -> Result<(), Refusal> {
        let conflict = |what: &str, msg: String| Err(Refusal::exhausted(what, msg));
        let pins: Vec<u32> = claim.dedicated_cpus().collect();
        let mut all: Vec<u32> = pins.iter().chain(&claim.idle_cpus).copied().collect();
        all.sort_unstable();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return conflict("PCPU", "the claim names a CPU twice".into());
        }
        for &c in &all {
            let slot = c as usize;
            if self.owner.get(slot) != Some(&Owner::Free) {
                return conflict("PCPU", format!("CPU {c} is not free"));
            }
        }
        if let Some(c) = pins.iter().find(|&&c| !pools.dedicated_ok[c as usize]) {
            return conflict(
                "PCPU",
                format!("CPU {c} may not hold a dedicated vCPU under this policy"),
            );
        }
        let cost = pools.cost(claim.cpu_type()) * claim.vcpus.len() as u64;
        let removed = all.iter().filter(|&&c| pools.shared_ok[c as usize]).count() as u64;
        let threads = self.pool_threads - removed;
        if self.pool_used + cost > threads * pools.units_per_thread {
            return conflict(
                "shared-pool ratio",
                "the shared pool would exceed its ratio".into(),
            );
        }
        let mut nodes = self.nodes.clone();
        for share in claim.memory.iter().chain([&claim.overhead]) {
            let Some(i) = topo.nodes.iter().position(|n| n.id == share.numa_node) else {
                return conflict(
                    "MEMORY_MB",
                    format!("NUMA node {} does not exist", share.numa_node),
                );
            };
            let node = &mut nodes[i];
            let short = if share.huge() {
                let pages = node.pages.get_mut(&share.page_size_kib);
                match pages {
                    Some(p) if *p >= share.pages() => {
                        *p -= share.pages();
                        false
                    }
                    _ => true,
                }
            } else if node.mib >= share.mib {
                node.mib -= share.mib;
                false
            } else {
                true
            };
            if short {
                return conflict(
                    "MEMORY_MB",
                    format!(
                        "NUMA node {} has not {} MiB of {} pages free",
                        share.numa_node,
                        share.mib,
                        page_size_label(share.page_size_kib)
                    ),
                );
            }
        }
        if let Some(free) = self.disk_free_gb
            && claim.disk_gb > free
        {
            return conflict("DISK_GB", format!("{free} GB of disk are free"));
        }
        let mut gpu_free = self.gpu_free.clone();
        for address in &claim.gpus {
            match topo
                .facts
                .gpus
                .iter()
                .position(|g| &g.pci_address == address)
            {
                Some(i) if gpu_free[i] => gpu_free[i] = false,
                _ => return conflict("GPU", format!("GPU {address} is not free")),
            }
        }
        // Everything checked: take it.
        for &c in &pins {
            self.owner[c as usize] = Owner::Dedicated {
                insecure: claim.insecure,
            };
        }
        for &c in &claim.idle_cpus {
            self.owner[c as usize] = Owner::Idle;
        }
        self.pool_threads = threads;
        self.pool_used += cost;
        self.nodes = nodes;
        if let Some(free) = &mut self.disk_free_gb {
            *free -= claim.disk_gb;
        }
        self.gpu_free = gpu_free;
        Ok(())
    }

    /// Gives back what [`Ledger::apply`] took for `claim`.
    pub(super) fn unapply(&mut self, topo: &Topology, pools: &Pools, claim: &Claim) {
        for c in claim
            .dedicated_cpus()
            .chain(claim.idle_cpus.iter().copied())
        {
            self.owner[c as usize] = Owner::Free;
            if pools.shared_ok[c as usize] {
                self.pool_threads += 1;
            }
        }
        self.pool_used -= pools.cost(claim.cpu_type()) * claim.vcpus.len() as u64;
        for share in claim.memory.iter().chain([&claim.overhead]) {
            if let Some(i) = topo.nodes.iter().position(|n| n.id == share.numa_node) {
                let node = &mut self.nodes[i];
                if share.huge() {
                    *node.pages.entry(share.page_size_kib).or_default() += share.pages();
                } else {
                    node.mib += share.mib;
                }
            }
        }
        if let Some(free) = &mut self.disk_free_gb {
            *free += claim.disk_gb;
        }
        for address in &claim.gpus {
            if let Some(i) = topo
                .facts
                .gpus
                .iter()
                .position(|g| &g.pci_address == address)
            {
                self.gpu_free[i] = true;
            }
        }
    }
}

/// Floating guests' memory: one node if any can take it whole (the one with most free
/// memory, to balance), else spread: overhead on the node with most free memory, RAM taken
/// from the nodes with most free first.
pub(super) fn floating_memory(
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
pub(super) fn take_memory(nodes: &mut [NodeFree], plan: &MemoryPlan, need: &Need) {
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

/// Pool load in `V` vCPUs, for messages: `"7"` or `"7.5"`.
fn v_equivalents(units: u64, pools: &Pools) -> String {
    let whole = units / pools.v_cost;
    let frac = units % pools.v_cost;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{:.1}", units as f64 / pools.v_cost as f64)
    }
}

fn empty_claim() -> Claim {
    Claim {
        vm_uuid: String::new(),
        request_id: String::new(),
        flavor: String::new(),
        cpu_type: 'V',
        insecure: false,
        vcpus: Vec::new(),
        idle_cpus: Vec::new(),
        emulator: Emulator::Pool,
        memory: Vec::new(),
        overhead: MemoryShare {
            numa_node: 0,
            mib: 0,
            page_size_kib: NORMAL_PAGE_KIB,
        },
        guest_topology: GuestTopology {
            sockets: 1,
            cores: 1,
            threads: 1,
        },
        guest_numa: Vec::new(),
        gpus: Vec::new(),
        disk_gb: 0,
        generation: 0,
        expires_at_ms: None,
    }
}
