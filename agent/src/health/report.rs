//! The guarantee report: each promise a guest's SCS flavor makes, what the agent claimed for
//! it, what is observed, and a verdict — kept, violated, or not verifiable here (with why).
//! Pure: the caller gathers the claim, pins, stats and memory placement.

use std::collections::BTreeMap;

use crate::domain::xml::Emulation;
use crate::flavor::{CpuType, FlavorSpec};
use crate::host::memory::Ecc;
use crate::host::sysfs::format_cpulist;
use crate::placement::claim::Claim;

use super::guests::GuestView;
use super::pinning::Violation;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Kept,
    Violated,
    NotVerifiable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Promise {
    pub name: &'static str,
    pub promised: String,
    pub observed: String,
    pub verdict: Verdict,
    pub why: String,
}

/// A guest's report as the API answers it.
#[derive(Debug, Clone)]
pub struct Report {
    pub guest: crate::guest::Guest,
    pub claim: Claim,
    pub promises: Vec<Promise>,
    /// The pins the claim gives and those found, from the last check (running guests).
    pub expected: Option<super::pinning::Expected>,
    pub observed: Option<super::pinning::Observed>,
    pub view: Option<GuestView>,
    pub numa: BTreeMap<u32, NodeMemory>,
    pub violations: Vec<super::OpenViolation>,
    pub sampled_unix_ms: u64,
    pub window: std::time::Duration,
}

/// Guest memory resident per host NUMA node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeMemory {
    pub resident_bytes: u64,
    pub huge_bytes: u64,
}

/// Steal above this share of wall time breaks a dedicated CPU's promise.
pub const DEDICATED_STEAL_MAX: f64 = 0.05;
/// A `V` vCPU gets at least this share of a core when it wants one.
pub const SHARED_MIN_SHARE: f64 = 0.20;
/// A vCPU that wanted a CPU less than this share of the window says nothing about its share.
const WANTED_MIN: f64 = 0.05;
/// Memory outside the claimed nodes tolerated as QEMU's own (device buffers, libraries).
const FOREIGN_NODE_TOLERANCE: f64 = 0.01;

/// Everything one report is judged from.
pub struct Subject<'a> {
    pub spec: &'a FlavorSpec,
    pub claim: &'a Claim,
    pub emulation: Emulation,
    pub running: bool,
    pub root_disk_gb: u64,
    pub host_ecc: Ecc,
    pub stats: Option<&'a GuestView>,
    /// `None`: not running, or the QEMU process could not be read.
    pub numa: Option<&'a BTreeMap<u32, NodeMemory>>,
    /// This guest's open pinning violations.
    pub violations: &'a [Violation],
    /// Whether its threads were read in the last check.
    pub pins_observed: bool,
}

fn promise(
    name: &'static str,
    promised: String,
    observed: String,
    verdict: Verdict,
    why: &str,
) -> Promise {
    Promise {
        name,
        promised,
        observed,
        verdict,
        why: why.to_string(),
    }
}

fn at_least(name: &'static str, promised: String, observed: String, ok: bool) -> Promise {
    let (verdict, why) = if ok {
        (Verdict::Kept, "observed is not below the promise")
    } else {
        (Verdict::Violated, "observed is below the promise")
    };
    promise(name, promised, observed, verdict, why)
}

pub fn judge(s: &Subject) -> Vec<Promise> {
    let mut out = Vec::new();
    let spec = s.spec;
    let claim = s.claim;

    let live_vcpus = s.stats.filter(|_| s.running).map(|g| g.stats.vcpus.len());
    let vcpus = live_vcpus.unwrap_or(claim.vcpus.len());
    out.push(at_least(
        "vcpus",
        format!("{} vCPUs", spec.cpus),
        format!(
            "{vcpus} vCPUs ({})",
            if live_vcpus.is_some() {
                "running"
            } else {
                "claimed"
            }
        ),
        vcpus >= spec.cpus as usize,
    ));

    let promised_mib = u64::from(spec.ram_half_gib) * 512;
    let claimed_mib: u64 = claim.memory.iter().map(|m| m.mib).sum();
    let live_mib = s
        .stats
        .filter(|g| s.running && g.stats.balloon_kib > 0)
        .map(|g| g.stats.balloon_kib / 1024);
    let ram_mib = live_mib.unwrap_or(claimed_mib);
    out.push(at_least(
        "ram",
        format!("{} GiB", spec.ram_gib()),
        format!(
            "{ram_mib} MiB ({})",
            if live_mib.is_some() {
                "guest memory size"
            } else {
                "claimed"
            }
        ),
        ram_mib >= promised_mib,
    ));
    if !spec.ram_oversubscribed {
        out.push(at_least(
            "ram_reserved",
            format!("{promised_mib} MiB held for this guest alone"),
            format!(
                "{claimed_mib} MiB claimed on NUMA node(s) {}",
                nodes(claim.memory.iter().map(|m| m.numa_node))
            ),
            claimed_mib >= promised_mib,
        ));
    }
    if spec.ecc {
        let (verdict, why) = match s.host_ecc {
            Ecc::Present => (Verdict::Kept, "EDAC reports ECC memory controllers"),
            Ecc::Absent => (Verdict::Violated, "the host's memory has no ECC"),
            Ecc::Unknown => (
                Verdict::NotVerifiable,
                "the host does not say whether its memory has ECC (no EDAC)",
            ),
        };
        out.push(promise(
            "ecc",
            "ECC memory".into(),
            s.host_ecc.as_str().into(),
            verdict,
            why,
        ));
    }
    if let Some(gb) = spec.disk.as_ref().and_then(|d| d.size_gb) {
        out.push(if s.root_disk_gb == 0 {
            promise(
                "disk",
                format!("{gb} GB root disk"),
                "size unknown".into(),
                Verdict::NotVerifiable,
                "the root disk's size could not be read",
            )
        } else {
            at_least(
                "disk",
                format!("{gb} GB root disk"),
                format!("{} GiB root disk", s.root_disk_gb),
                s.root_disk_gb >= u64::from(gb),
            )
        });
    }

    let promised_cpu = match spec.cpu_type {
        CpuType::DedicatedCore => {
            "each vCPU alone on a physical core, its sibling threads idle".to_string()
        }
        CpuType::DedicatedThread => "each vCPU alone on a hardware thread".to_string(),
        CpuType::Shared => {
            "vCPUs share the shared pool within its admitted ratio (≥ 20 % of a core each)"
                .to_string()
        }
        CpuType::Crowded => "vCPUs share the crowded pool".to_string(),
    };
    out.push(if !s.running {
        promise(
            "cpu_pinning",
            promised_cpu,
            "guest not running".into(),
            Verdict::NotVerifiable,
            "only a running guest's threads can be checked",
        )
    } else if !s.pins_observed {
        promise(
            "cpu_pinning",
            promised_cpu,
            "pins not read yet".into(),
            Verdict::NotVerifiable,
            "the last pin check did not read this guest (it started since, a create or re-pin was in flight, or libvirt did not answer in time)",
        )
    } else if let Some(v) = s.violations.first() {
        let more = s.violations.len() - 1;
        promise(
            "cpu_pinning",
            promised_cpu,
            if more > 0 {
                format!("{} (and {more} more)", v.detail)
            } else {
                v.detail.clone()
            },
            Verdict::Violated,
            v.kind.as_str(),
        )
    } else {
        let pinned: Vec<String> = claim
            .vcpus
            .iter()
            .map(|v| match v.cpu {
                Some(c) => format!("vCPU {} on CPU {c}", v.vcpu),
                None => format!("vCPU {} on the pool", v.vcpu),
            })
            .collect();
        promise(
            "cpu_pinning",
            promised_cpu,
            format!(
                "{}; libvirt, thread affinity and cpusets agree",
                pinned.join(", ")
            ),
            Verdict::Kept,
            "every thread runs where the claim says and no other guest may use these CPUs",
        )
    });

    let claimed_nodes: Vec<u32> = claim
        .memory
        .iter()
        .map(|m| m.numa_node)
        .chain([claim.overhead.numa_node])
        .collect();
    out.push(match s.numa {
        None => promise(
            "numa_locality",
            format!(
                "guest memory on NUMA node(s) {}",
                nodes(claimed_nodes.iter().copied())
            ),
            "guest not running".into(),
            Verdict::NotVerifiable,
            "memory placement is read from the running QEMU's numa_maps",
        ),
        Some(numa) => {
            let total: u64 = numa.values().map(|n| n.resident_bytes).sum();
            let foreign: u64 = numa
                .iter()
                .filter(|(node, _)| !claimed_nodes.contains(node))
                .map(|(_, n)| n.resident_bytes)
                .sum();
            let observed = numa
                .iter()
                .map(|(node, n)| format!("node {node}: {} MiB", n.resident_bytes >> 20))
                .collect::<Vec<_>>()
                .join(", ");
            let ok = total == 0 || (foreign as f64) <= FOREIGN_NODE_TOLERANCE * total as f64;
            promise(
                "numa_locality",
                format!(
                    "guest memory on NUMA node(s) {}",
                    nodes(claimed_nodes.iter().copied())
                ),
                observed,
                if ok { Verdict::Kept } else { Verdict::Violated },
                if ok {
                    "resident memory is on the claimed nodes (at most 1 % elsewhere)"
                } else {
                    "more than 1 % of resident memory is on other nodes"
                },
            )
        }
    });

    if let Some(huge) = claim.memory.iter().find(|m| m.huge()) {
        let promised = format!("guest RAM on {} KiB pages", huge.page_size_kib);
        out.push(match s.numa {
            None => promise(
                "hugepages",
                promised,
                "guest not running".into(),
                Verdict::NotVerifiable,
                "hugepage backing is read from the running QEMU's numa_maps",
            ),
            Some(numa) => {
                let huge_bytes: u64 = numa.values().map(|n| n.huge_bytes).sum();
                let ok = huge_bytes > 0;
                promise(
                    "hugepages",
                    promised,
                    format!("{} MiB resident on hugepages", huge_bytes >> 20),
                    if ok { Verdict::Kept } else { Verdict::Violated },
                    if ok {
                        "guest RAM is mapped from hugetlbfs"
                    } else {
                        "no hugetlbfs mapping in the QEMU process"
                    },
                )
            }
        });
    }

    if let Some(p) = cpu_share(s) {
        out.push(p);
    }
    out
}

/// The timing side of the CPU promise, from run and delay (steal) over the window.
fn cpu_share(s: &Subject) -> Option<Promise> {
    let (promised, dedicated) = match s.spec.cpu_type {
        CpuType::DedicatedCore | CpuType::DedicatedThread => (
            format!(
                "steal at most {:.0} % per vCPU",
                DEDICATED_STEAL_MAX * 100.0
            ),
            true,
        ),
        CpuType::Shared => (
            format!(
                "each vCPU gets at least {:.0} % of a core when busy",
                SHARED_MIN_SHARE * 100.0
            ),
            false,
        ),
        CpuType::Crowded => return None,
    };
    let ratios = s
        .stats
        .filter(|_| s.running)
        .map(|g| g.ratios.clone())
        .filter(|r| !r.is_empty());
    let Some(ratios) = ratios else {
        return Some(promise(
            "cpu_share",
            promised,
            "no samples yet".into(),
            Verdict::NotVerifiable,
            "needs two samples of a running guest",
        ));
    };
    let observed = ratios
        .iter()
        .enumerate()
        .map(|(i, (run, delay))| {
            format!(
                "vCPU {i}: run {:.1} %, steal {:.1} %",
                run * 100.0,
                delay * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    if s.emulation == Emulation::Tcg {
        return Some(promise(
            "cpu_share",
            promised,
            observed,
            Verdict::NotVerifiable,
            "not verifiable under emulation: TCG vCPU threads also translate code, so run and steal times are not the guest's",
        ));
    }
    let ok = if dedicated {
        ratios
            .iter()
            .all(|(_, delay)| *delay <= DEDICATED_STEAL_MAX)
    } else {
        ratios.iter().all(|(run, delay)| {
            let wanted = run + delay;
            wanted < WANTED_MIN || run / wanted >= SHARED_MIN_SHARE
        })
    };
    Some(promise(
        "cpu_share",
        promised,
        observed,
        if ok { Verdict::Kept } else { Verdict::Violated },
        if ok {
            "over the window, within the threshold"
        } else {
            "over the window, beyond the threshold"
        },
    ))
}

fn nodes(ids: impl Iterator<Item = u32>) -> String {
    let mut v: Vec<u32> = ids.collect();
    v.sort_unstable();
    v.dedup();
    format_cpulist(&v)
}

/// Resident memory per node from `/proc/<pid>/numa_maps` (`N0=12` pages of `kernelpagesize_kB`;
/// `huge` marks hugetlbfs mappings).
pub fn parse_numa_maps(text: &str) -> BTreeMap<u32, NodeMemory> {
    let mut out: BTreeMap<u32, NodeMemory> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let page_kib = fields
            .iter()
            .find_map(|f| f.strip_prefix("kernelpagesize_kB="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(4);
        let huge = fields.contains(&"huge");
        for f in &fields {
            let Some((node, pages)) = f
                .strip_prefix('N')
                .and_then(|r| r.split_once('='))
                .and_then(|(n, p)| Some((n.parse::<u32>().ok()?, p.parse::<u64>().ok()?)))
            else {
                continue;
            };
            let bytes = pages * page_kib * 1024;
            let e = out.entry(node).or_default();
            e.resident_bytes += bytes;
            if huge {
                e.huge_bytes += bytes;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
