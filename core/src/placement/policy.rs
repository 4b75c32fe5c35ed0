//! Node policy (`[placement]` in the config): which CPUs the host keeps, which CPUs serve
//! dedicated and shared guests, how crowded `L` may get, which flavors get hugepages and how
//! much memory QEMU needs beside the guest. [`Policy::resolve`] checks it against a topology.

use std::collections::BTreeMap;

use super::topology::Topology;
use crate::flavor::CpuType;
use crate::host::scheduler::{SHARED_RATIO_NO_SMT, SHARED_RATIO_SMT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservedCpus {
    /// CPU 0 and its SMT siblings: where the kernel's housekeeping and the agent run anyway.
    Auto,
    List(Vec<u32>),
}

/// QEMU's own memory beside the guest RAM: `fixed + per_vcpu × vCPUs + RAM × permille / 1000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overhead {
    pub fixed_mib: u64,
    pub per_vcpu_mib: u64,
    pub ram_permille: u64,
}

impl Overhead {
    pub fn mib(&self, vcpus: u32, ram_mib: u64) -> u64 {
        self.fixed_mib
            + self.per_vcpu_mib * u64::from(vcpus)
            + (ram_mib * self.ram_permille).div_ceil(1000)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub reserved_cpus: ReservedCpus,
    pub reserved_memory_mib: u64,
    /// Static dedicated set; `None` with `shared_cpus` also `None`: dedicated CPUs are carved
    /// out of the shared pool on demand.
    pub dedicated_cpus: Option<Vec<u32>>,
    pub shared_cpus: Option<Vec<u32>>,
    /// vCPUs per hardware thread for `L`.
    pub crowded_ratio: u32,
    /// CPU type letter → hugepage size in KiB backing that type's guest RAM.
    pub hugepages: BTreeMap<char, u64>,
    pub overhead: Overhead,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            reserved_cpus: ReservedCpus::Auto,
            reserved_memory_mib: 1024,
            dedicated_cpus: None,
            shared_cpus: None,
            crowded_ratio: 8,
            hugepages: BTreeMap::new(),
            overhead: Overhead {
                fixed_mib: 128,
                per_vcpu_mib: 8,
                ram_permille: 10,
            },
        }
    }
}

pub const MAX_CROWDED_RATIO: u32 = 64;

/// A policy that does not fit the node; `Display` names the key and the rule.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("placement.{key}: {problem}")]
pub struct PolicyError {
    pub key: String,
    pub problem: String,
}

/// `"2M"`, `"1G"`, `"64K"` → KiB; `"none"` → `None`.
pub fn parse_page_size(s: &str) -> Result<Option<u64>, String> {
    if s == "none" {
        return Ok(None);
    }
    let bad = || format!("{s:?} is not a page size (\"none\", \"2M\", \"1G\", ...)");
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let kib = match unit {
        "K" => n,
        "M" => n.checked_mul(1 << 10).ok_or_else(bad)?,
        "G" => n.checked_mul(1 << 20).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if kib <= 4 || !kib.is_power_of_two() {
        return Err(format!(
            "{s:?} is not a hugepage size (a power of two above 4K)"
        ));
    }
    Ok(Some(kib))
}

/// The policy applied to one topology: per-CPU eligibility and pool arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pools {
    pub reserved: Vec<u32>,
    /// Indexed by CPU id: may hold a pinned (`C`/`T`) vCPU.
    pub dedicated_ok: Vec<bool>,
    /// Indexed by CPU id: belongs to the shared pool while no dedicated vCPU holds it.
    pub shared_ok: Vec<bool>,
    /// Host reserve per node index, proportional to node memory.
    pub reserved_mib: Vec<u64>,
    /// Pool accounting: a thread is worth `units_per_thread`; a `V` vCPU costs `v_cost`, an
    /// `L` vCPU `l_cost`. With the standard's 3 (SMT) or 5 (no SMT) `V` vCPUs per thread and
    /// the crowded ratio, both costs are whole numbers.
    pub units_per_thread: u64,
    pub v_cost: u64,
    pub l_cost: u64,
    pub v_ratio: u64,
}

impl Pools {
    pub fn cost(&self, cpu_type: CpuType) -> u64 {
        match cpu_type {
            CpuType::Shared => self.v_cost,
            CpuType::Crowded => self.l_cost,
            CpuType::DedicatedThread | CpuType::DedicatedCore => 0,
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Policy {
    pub fn hugepage_kib(&self, cpu_type: CpuType) -> Option<u64> {
        self.hugepages.get(&cpu_type.letter()).copied()
    }

    pub fn resolve(&self, topo: &Topology) -> Result<Pools, PolicyError> {
        let err = |key: &str, problem: String| PolicyError {
            key: key.to_string(),
            problem,
        };
        let check_online = |key: &str, list: &[u32]| -> Result<(), PolicyError> {
            match list.iter().find(|&&id| topo.cpu(id).is_none()) {
                Some(id) => Err(err(
                    key,
                    format!("CPU {id} is not an online CPU of this node"),
                )),
                None => Ok(()),
            }
        };
        let reserved: Vec<u32> = match &self.reserved_cpus {
            ReservedCpus::Auto => topo
                .cpus
                .first()
                .map(|c| topo.cores[c.core].threads.clone())
                .unwrap_or_default(),
            ReservedCpus::List(list) => {
                check_online("reserved_cpus", list)?;
                list.clone()
            }
        };
        let slots = topo.cpu_slots();
        let mut dedicated_ok = vec![false; slots];
        let mut shared_ok = vec![false; slots];
        let in_list =
            |list: &Option<Vec<u32>>, id: u32| list.as_ref().is_some_and(|l| l.contains(&id));
        for (key, list) in [
            ("dedicated_cpus", &self.dedicated_cpus),
            ("shared_cpus", &self.shared_cpus),
        ] {
            if let Some(list) = list {
                check_online(key, list)?;
                if let Some(id) = list.iter().find(|id| reserved.contains(id)) {
                    return Err(err(
                        key,
                        format!("CPU {id} is also in placement.reserved_cpus"),
                    ));
                }
            }
        }
        if let Some(id) = self
            .shared_cpus
            .iter()
            .flatten()
            .find(|&&id| in_list(&self.dedicated_cpus, id))
        {
            return Err(err(
                "shared_cpus",
                format!("CPU {id} is also in placement.dedicated_cpus"),
            ));
        }
        if let Some(c) = self
            .shared_cpus
            .iter()
            .flatten()
            .filter_map(|&id| topo.cpu(id))
            .find(|c| c.isolated)
        {
            return Err(err(
                "shared_cpus",
                format!(
                    "CPU {} is isolated (isolcpus): the kernel does not balance floating vCPUs onto it",
                    c.id
                ),
            ));
        }
        for cpu in &topo.cpus {
            let id = cpu.id;
            if reserved.contains(&id) {
                continue;
            }
            let slot = id as usize;
            match (&self.dedicated_cpus, &self.shared_cpus) {
                (None, None) => {
                    dedicated_ok[slot] = true;
                    shared_ok[slot] = !cpu.isolated;
                }
                (Some(_), _) => {
                    dedicated_ok[slot] = in_list(&self.dedicated_cpus, id);
                    shared_ok[slot] = match &self.shared_cpus {
                        Some(_) => in_list(&self.shared_cpus, id),
                        None => !dedicated_ok[slot] && !cpu.isolated,
                    };
                }
                (None, Some(_)) => {
                    shared_ok[slot] = in_list(&self.shared_cpus, id);
                    dedicated_ok[slot] = !shared_ok[slot];
                }
            }
        }
        for (letter, kib) in &self.hugepages {
            if !topo.nodes.iter().any(|n| n.hugepages.contains_key(kib)) {
                return Err(err(
                    &format!("hugepages.{letter}"),
                    format!(
                        "this node has no {} hugepage pool (/sys/kernel/mm/hugepages/hugepages-{kib}kB)",
                        crate::host::scheduler::page_size_label(*kib)
                    ),
                ));
            }
        }
        let v_ratio = if topo.smt {
            SHARED_RATIO_SMT
        } else {
            SHARED_RATIO_NO_SMT
        } as u64;
        let crowded = u64::from(self.crowded_ratio.max(1));
        let units_per_thread = v_ratio / gcd(v_ratio, crowded) * crowded;
        Ok(Pools {
            reserved,
            dedicated_ok,
            shared_ok,
            reserved_mib: split_reserve(self.reserved_memory_mib, topo),
            v_cost: units_per_thread / v_ratio,
            l_cost: units_per_thread / crowded,
            units_per_thread,
            v_ratio,
        })
    }
}

/// The host reserve spread over the nodes in proportion to their memory (the host's own
/// allocations follow its CPUs, which span all nodes); the rounding remainder goes to node 0.
fn split_reserve(total: u64, topo: &Topology) -> Vec<u64> {
    let sum: u64 = topo.nodes.iter().map(|n| n.memory_mib).sum();
    if sum == 0 {
        return vec![0; topo.nodes.len()];
    }
    let mut out: Vec<u64> = topo
        .nodes
        .iter()
        .map(|n| (u128::from(total) * u128::from(n.memory_mib) / u128::from(sum)) as u64)
        .collect();
    let rest = total - out.iter().sum::<u64>();
    out[0] += rest;
    out
}
