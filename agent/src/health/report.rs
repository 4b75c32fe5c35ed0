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
mod tests {
    use super::*;
    use crate::flavor;
    use crate::health::guests::{GuestStats, VcpuTimes};
    use crate::health::pinning::Kind;
    use crate::placement::claim::{Emulator, GuestTopology, MemoryShare, VcpuPin};

    fn claim(spec: &FlavorSpec, page_kib: u64) -> Claim {
        Claim {
            vm_uuid: "u".into(),
            request_id: "r".into(),
            flavor: spec.name(),
            cpu_type: 'C',
            insecure: false,
            vcpus: (0..spec.cpus)
                .map(|v| VcpuPin {
                    vcpu: v,
                    cpu: Some(v + 1),
                })
                .collect(),
            idle_cpus: vec![],
            emulator: Emulator::Reserved(vec![0]),
            memory: vec![MemoryShare {
                numa_node: 0,
                mib: u64::from(spec.ram_half_gib) * 512,
                page_size_kib: page_kib,
            }],
            overhead: MemoryShare {
                numa_node: 0,
                mib: 100,
                page_size_kib: 4,
            },
            guest_topology: GuestTopology {
                sockets: 1,
                cores: spec.cpus,
                threads: 1,
            },
            guest_numa: vec![],
            gpus: vec![],
            disk_gb: 0,
            generation: 1,
            expires_at_ms: None,
        }
    }

    fn view(vcpus: usize, balloon_kib: u64, ratios: Vec<(f64, f64)>) -> GuestView {
        GuestView {
            uuid: "u".into(),
            name: "g".into(),
            stats: GuestStats {
                state: 1,
                vcpus: vec![VcpuTimes::default(); vcpus],
                balloon_kib,
                complete: true,
                ..GuestStats::default()
            },
            age_ms: 0,
            quarantined: None,
            ratios,
        }
    }

    struct Case {
        spec: FlavorSpec,
        claim: Claim,
        emulation: Emulation,
        disk: u64,
        ecc: Ecc,
        stats: GuestView,
        numa: BTreeMap<u32, NodeMemory>,
        violations: Vec<Violation>,
    }

    impl Case {
        fn new(name: &str, page_kib: u64) -> Case {
            let spec = flavor::parse(name).unwrap().spec;
            let claim = claim(&spec, page_kib);
            let mib = u64::from(spec.ram_half_gib) * 512;
            let huge = if page_kib > 4 { mib << 20 } else { 0 };
            Case {
                stats: view(
                    spec.cpus as usize,
                    mib * 1024,
                    vec![(0.5, 0.01); spec.cpus as usize],
                ),
                disk: spec
                    .disk
                    .as_ref()
                    .and_then(|d| d.size_gb)
                    .unwrap_or(0)
                    .into(),
                spec,
                claim,
                emulation: Emulation::Kvm,
                ecc: Ecc::Present,
                numa: BTreeMap::from([(
                    0,
                    NodeMemory {
                        resident_bytes: mib << 20,
                        huge_bytes: huge,
                    },
                )]),
                violations: vec![],
            }
        }

        fn judge(&self) -> BTreeMap<&'static str, (Verdict, String)> {
            judge(&Subject {
                spec: &self.spec,
                claim: &self.claim,
                emulation: self.emulation,
                running: true,
                root_disk_gb: self.disk,
                host_ecc: self.ecc,
                stats: Some(&self.stats),
                numa: Some(&self.numa),
                violations: &self.violations,
                pins_observed: true,
            })
            .into_iter()
            .map(|p| (p.name, (p.verdict, p.observed)))
            .collect()
        }
    }

    #[test]
    fn a_guest_as_promised_keeps_every_promise() {
        let v = Case::new("SCS-2C-4-10", 2048).judge();
        let names: Vec<_> = v.keys().copied().collect();
        assert_eq!(
            names,
            [
                "cpu_pinning",
                "cpu_share",
                "disk",
                "ecc",
                "hugepages",
                "numa_locality",
                "ram",
                "ram_reserved",
                "vcpus"
            ]
        );
        assert!(
            v.values().all(|(verdict, _)| *verdict == Verdict::Kept),
            "{v:?}"
        );
    }

    #[test]
    fn each_broken_promise_is_violated_alone() {
        let check = |mutate: &dyn Fn(&mut Case), broken: &str| {
            let mut c = Case::new("SCS-2C-4-10", 2048);
            mutate(&mut c);
            let v = c.judge();
            let violated: Vec<_> = v
                .iter()
                .filter(|(_, (verdict, _))| *verdict == Verdict::Violated)
                .map(|(n, _)| *n)
                .collect();
            assert_eq!(violated, [broken], "{v:?}");
        };
        check(
            &|c| {
                c.stats.stats.vcpus.pop();
            },
            "vcpus",
        );
        check(&|c| c.stats.stats.balloon_kib = 1024 * 1024, "ram");
        check(&|c| c.claim.memory[0].mib = 1024, "ram_reserved");
        check(&|c| c.ecc = Ecc::Absent, "ecc");
        check(&|c| c.disk = 5, "disk");
        let mut unknown = Case::new("SCS-2C-4-10", 2048);
        unknown.disk = 0;
        assert_eq!(unknown.judge()["disk"].0, Verdict::NotVerifiable);
        check(
            &|c| {
                c.violations.push(Violation {
                    uuid: "u".into(),
                    name: "g".into(),
                    kind: Kind::VcpuAffinity,
                    vcpu: Some(0),
                    expected: vec![1],
                    actual: vec![0],
                    detail: "vCPU 0 thread 9 may run on other CPUs: expected CPUs 1, found 0"
                        .into(),
                })
            },
            "cpu_pinning",
        );
        check(
            &|c| {
                c.numa.insert(
                    1,
                    NodeMemory {
                        resident_bytes: 1 << 30,
                        huge_bytes: 0,
                    },
                );
            },
            "numa_locality",
        );
        check(&|c| c.numa.get_mut(&0).unwrap().huge_bytes = 0, "hugepages");
        check(&|c| c.stats.ratios[1] = (0.5, 0.2), "cpu_share");
    }

    #[test]
    fn shared_vcpus_need_a_fifth_of_a_core_when_busy() {
        let mut c = Case::new("SCS-2V-4", 4);
        c.stats.ratios = vec![(0.2, 0.7), (0.0, 0.01)];
        assert_eq!(
            c.judge()["cpu_share"].0,
            Verdict::Kept,
            "20 % share, and an idle vCPU"
        );
        c.stats.ratios = vec![(0.15, 0.85), (0.0, 0.0)];
        assert_eq!(c.judge()["cpu_share"].0, Verdict::Violated);
        assert!(
            !c.judge().contains_key("hugepages"),
            "not promised on normal pages"
        );
        assert!(!c.judge().contains_key("disk"), "no root disk in the name");
    }

    #[test]
    fn timing_under_emulation_is_not_verifiable() {
        let mut c = Case::new("SCS-1V-2", 4);
        c.emulation = Emulation::Tcg;
        c.stats.ratios = vec![(0.01, 0.99)];
        let (verdict, observed) = c.judge()["cpu_share"].clone();
        assert_eq!(verdict, Verdict::NotVerifiable);
        assert!(observed.contains("steal 99.0 %"), "{observed}");
    }

    #[test]
    fn a_stopped_guest() {
        let c = Case::new("SCS-1C-2u-5", 4);
        let v: BTreeMap<_, _> = judge(&Subject {
            spec: &c.spec,
            claim: &c.claim,
            emulation: Emulation::Kvm,
            running: false,
            root_disk_gb: 5,
            host_ecc: Ecc::Unknown,
            stats: None,
            numa: None,
            violations: &[],
            pins_observed: false,
        })
        .into_iter()
        .map(|p| (p.name, p.verdict))
        .collect();
        assert_eq!(v["vcpus"], Verdict::Kept);
        assert_eq!(v["cpu_pinning"], Verdict::NotVerifiable);
        assert_eq!(v["numa_locality"], Verdict::NotVerifiable);
        assert_eq!(v["cpu_share"], Verdict::NotVerifiable);
        assert!(!v.contains_key("ecc"), "u: no ECC promised");
    }

    #[test]
    fn numa_maps() {
        let text = "\
7f00 default file=/dev/hugepages/libvirt/qemu/1-g/qemu_back_mem huge dirty=256 N0=200 N1=56 kernelpagesize_kB=2048\n\
7f10 default anon=100 dirty=100 N0=100 kernelpagesize_kB=4\n\
7f20 default file=/usr/lib/x.so mapped=3 N1=3 kernelpagesize_kB=4\n";
        let m = parse_numa_maps(text);
        assert_eq!(m[&0].huge_bytes, (200 * 2) << 20);
        assert_eq!(m[&0].resident_bytes, ((200 * 2) << 20) + 100 * 4096);
        assert_eq!(m[&1].resident_bytes, ((56 * 2) << 20) + 3 * 4096);
    }
}
