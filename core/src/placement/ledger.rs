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

mod dedicated;
mod devices;
mod floating;

pub(super) use floating::{floating_memory, take_memory};

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
    /// A passed-through InfiniBand HCA (`_ib`).
    pub ib: bool,
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
            ib: spec.ib,
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
    /// One flag per InfiniBand HCA of the topology.
    pub(super) ib_free: Vec<bool>,
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
            ib_free: vec![true; topo.facts.infiniband.len()],
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
            claim
                .gpus
                .push(self.pick_device(topo, devices::Kind::Gpu, Some(vendor))?);
        }
        if need.ib {
            claim
                .infiniband
                .push(self.pick_device(topo, devices::Kind::Infiniband, None)?);
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
        let gpu_free = match self.take_devices(topo, devices::Kind::Gpu, &claim.gpus) {
            Ok(free) => free,
            Err(address) => return conflict("GPU", format!("GPU {address} is not free")),
        };
        let ib_free = match self.take_devices(topo, devices::Kind::Infiniband, &claim.infiniband) {
            Ok(free) => free,
            Err(address) => {
                return conflict(
                    "InfiniBand",
                    format!("InfiniBand HCA {address} is not free"),
                );
            }
        };
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
        self.set_free_flags(devices::Kind::Gpu, gpu_free);
        self.set_free_flags(devices::Kind::Infiniband, ib_free);
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
        self.give_back_devices(topo, devices::Kind::Gpu, &claim.gpus);
        self.give_back_devices(topo, devices::Kind::Infiniband, &claim.infiniband);
    }
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
        infiniband: Vec::new(),
        disk_gb: 0,
        generation: 0,
        expires_at_ms: None,
    }
}
