//! The verdicts: what a flavor name promises, against what the probe measured in the guest
//! and what the agent observed on the host. Pure: everything it needs comes in [`Evidence`].

use std::collections::BTreeSet;

use hvagent_probe::report::{Report, Sample};
use hvagent_proto::v1 as pb;

use super::{Check, Verdict};
use hvagent_core::flavor::{CpuType, DiskType, FlavorSpec};

/// `V`: every vCPU gets at least this share of a core (scs-0100).
pub const V_SHARE: f64 = 0.2;
/// `s`/`p`: more than this many sequential IOPS per VM.
pub const MIN_IOPS: f64 = 1000.0;
/// scs-0101: entropy_avail must read at least this...
pub const ENTROPY_AVAIL: u32 = 256;
/// ...and at most this many FIPS 140-2 blocks in 1000 may fail.
pub const FIPS_FAILURES_PER_1000: u32 = 5;
/// What firmware may keep of the guest's RAM (the legacy hole below 1 MiB, ACPI tables, the
/// BIOS area): well under 1 % of any flavor's RAM.
pub const FIRMWARE_SHARE: f64 = 0.01;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Everything known about one probe guest when it is judged.
pub struct Evidence<'a> {
    pub spec: &'a FlavorSpec,
    /// Guests run under TCG: timing says nothing about the hardware.
    pub emulated: bool,
    /// SMT on the host (the `V` ratio is 3 per thread instead of 5 per core).
    pub smt: bool,
    pub probe: &'a Report,
    pub agent: &'a pb::GuaranteeReport,
    /// The agent's reports of every other guest on the node.
    pub others: &'a [pb::GuaranteeReport],
    /// Workload samples with no neighbour running, and with the neighbours running.
    pub alone: &'a [Sample],
    pub with_neighbours: &'a [Sample],
    /// `C`/`T`: how much throughput may drop beside neighbours (0.1: to 90 %).
    pub tolerance: f64,
}

fn check(promise: &str, verdict: Verdict, measured: String, threshold: String, why: &str) -> Check {
    Check {
        promise: promise.into(),
        verdict,
        measured,
        threshold,
        why: why.into(),
    }
}

fn at_least(promise: &str, measured: f64, min: f64, shown: String, threshold: String) -> Check {
    // A hair of slack for figures computed in floating point (1 − 0.8 is 0.19999…).
    let verdict = if measured + 1e-9 >= min {
        Verdict::Kept
    } else {
        Verdict::Violated
    };
    check(promise, verdict, shown, threshold, "")
}

/// Timing only means something on real hardware: under emulation the figure is shown and the
/// verdict is "not verifiable".
fn timed(emulated: bool, mut c: Check) -> Check {
    if emulated {
        c.verdict = Verdict::NotVerifiable;
        c.why = "not verifiable under emulation: guests run under TCG, so timing says nothing about the hardware".into();
    }
    c
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Per vCPU, the median throughput over `samples`.
pub(super) fn per_vcpu_median(samples: &[Sample], vcpus: usize) -> Vec<Option<f64>> {
    (0..vcpus)
        .map(|i| {
            median(
                samples
                    .iter()
                    .filter_map(|s| s.throughput.get(i).copied().flatten())
                    .collect(),
            )
        })
        .collect()
}

/// vCPUs in the widest sample.
pub(super) fn vcpus_sampled(alone: &[Sample], with: &[Sample]) -> usize {
    alone
        .iter()
        .chain(with)
        .map(|s| s.throughput.len())
        .max()
        .unwrap_or(0)
}

/// Per vCPU of the probe guest, median throughput with neighbours over median alone.
pub fn throughput_ratios(alone: &[Sample], with: &[Sample]) -> Vec<Option<f64>> {
    let vcpus = vcpus_sampled(alone, with);
    per_vcpu_median(alone, vcpus)
        .into_iter()
        .zip(per_vcpu_median(with, vcpus))
        .map(|(a, w)| match (a, w) {
            (Some(a), Some(w)) if a > 0.0 => Some(w / a),
            _ => None,
        })
        .collect()
}

fn cpus_text(cpus: &BTreeSet<u32>) -> String {
    let v: Vec<String> = cpus.iter().map(u32::to_string).collect();
    v.join(",")
}

/// A guest whose vCPU threads the agent did not read (one it left out of its placement, say
/// after a restart with another config): nothing bounds where it runs.
fn unobserved(r: &pb::GuaranteeReport) -> bool {
    r.vcpus.iter().any(|v| v.actual.is_empty())
}

/// `C`/`T`: each vCPU runs on exactly the one host CPU claimed for it, and no other guest's
/// vCPU or emulator thread may run there (nor, for `C`, on the core's idle siblings).
fn exclusive_pins(e: &Evidence) -> Check {
    let mut problems = Vec::new();
    let mut own = BTreeSet::new();
    for v in &e.agent.vcpus {
        if v.actual.len() != 1 || v.actual != v.claimed {
            problems.push(format!(
                "vCPU {} may run on {:?}, claimed {:?}",
                v.vcpu, v.actual, v.claimed
            ));
        }
        own.extend(v.actual.iter().copied());
    }
    let mut guarded = own.clone();
    if e.spec.cpu_type == CpuType::DedicatedCore {
        guarded.extend(e.agent.idle_siblings.iter().copied());
    }
    for other in e.others {
        if unobserved(other) {
            problems.push(format!(
                "guest {} ({}): the agent does not observe its pins, so it may run on any host CPU",
                other.vm_name, other.flavor
            ));
            continue;
        }
        let theirs: BTreeSet<u32> = other
            .vcpus
            .iter()
            .flat_map(|v| v.actual.iter().copied())
            .chain(other.emulator_actual.iter().copied())
            .collect();
        let shared: BTreeSet<u32> = theirs.intersection(&guarded).copied().collect();
        if !shared.is_empty() {
            problems.push(format!(
                "guest {} ({}) may run on host CPU {}",
                other.vm_name,
                other.flavor,
                cpus_text(&shared)
            ));
        }
    }
    let cpus = e.agent.vcpus.len();
    let measured = if problems.is_empty() {
        format!("{cpus} vCPUs on host CPUs {} alone", cpus_text(&own))
    } else {
        problems.join("; ")
    };
    let threshold = match e.spec.cpu_type {
        CpuType::DedicatedCore => {
            "one host CPU per vCPU, core and its siblings used by no other guest"
        }
        _ => "one host CPU per vCPU, used by no other guest",
    };
    check(
        "cpu_exclusive",
        if problems.is_empty() && cpus > 0 {
            Verdict::Kept
        } else {
            Verdict::Violated
        },
        measured,
        threshold.into(),
        "",
    )
}

const UNPINNED: &str = "the probe could not run its workload on every vCPU (see its errors): an idle vCPU says nothing";

/// A window in which a vCPU's workload thread could not run there.
fn unmeasured(samples: &[Sample]) -> bool {
    samples
        .iter()
        .any(|s| s.throughput.iter().any(Option::is_none))
}

/// `C`/`T` beside noisy neighbours: every vCPU keeps its throughput within the tolerance.
fn steady_throughput(e: &Evidence) -> Check {
    let threshold = format!(
        "every vCPU keeps at least {:.0} % of its throughput alone",
        (1.0 - e.tolerance) * 100.0
    );
    if e.with_neighbours.is_empty() || e.alone.is_empty() {
        return check(
            "cpu_throughput",
            Verdict::NotVerifiable,
            "no samples beside neighbours".into(),
            threshold,
            "no neighbour ran (--neighbours 0, or none fits the node)",
        );
    }
    if unmeasured(e.alone) || unmeasured(e.with_neighbours) {
        return check(
            "cpu_throughput",
            Verdict::NotVerifiable,
            "not every vCPU measured".into(),
            threshold,
            UNPINNED,
        );
    }
    let ratios = throughput_ratios(e.alone, e.with_neighbours);
    let worst = ratios
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let c = if ratios.iter().any(Option::is_none) || !worst.is_finite() {
        check(
            "cpu_throughput",
            Verdict::Violated,
            "a vCPU did no work alone".into(),
            threshold,
            "",
        )
    } else {
        at_least(
            "cpu_throughput",
            worst,
            1.0 - e.tolerance,
            format!(
                "worst vCPU at {:.0} % of its throughput alone",
                worst * 100.0
            ),
            threshold,
        )
    };
    timed(e.emulated, c)
}

/// Cost of one `V` vCPU in host threads: 1/5 of a core, or 1/3 of a thread with SMT.
fn v_cost(smt: bool) -> f64 {
    if smt { 1.0 / 3.0 } else { V_SHARE }
}

/// `V`: the pool this guest floats over carries no more V vCPUs than its ratio admits.
fn pool_ratio(e: &Evidence) -> Check {
    let pool: BTreeSet<u32> = e
        .agent
        .vcpus
        .iter()
        .flat_map(|v| v.actual.iter().copied())
        .collect();
    let mut v_vcpus = 0usize;
    for r in std::iter::once(e.agent).chain(e.others) {
        let shared = hvagent_core::flavor::parse(&r.flavor)
            .is_ok_and(|p| p.spec.cpu_type == CpuType::Shared);
        if shared {
            // Unobserved threads may run anywhere, the pool included.
            v_vcpus += r
                .vcpus
                .iter()
                .filter(|v| v.actual.is_empty() || v.actual.iter().any(|c| pool.contains(c)))
                .count();
        }
    }
    let load = v_vcpus as f64 * v_cost(e.smt);
    let per = if e.smt { "3 per thread" } else { "5 per core" };
    check(
        "shared_ratio",
        if !pool.is_empty() && load <= pool.len() as f64 + 1e-9 {
            Verdict::Kept
        } else {
            Verdict::Violated
        },
        format!(
            "{v_vcpus} V vCPUs on {} host CPUs ({})",
            pool.len(),
            cpus_text(&pool)
        ),
        format!(
            "at most {per} ({:.0} vCPUs)",
            pool.len() as f64 / v_cost(e.smt)
        ),
        "",
    )
}

/// `V`: in every window beside the neighbours (or alone, if none ran), every vCPU got at
/// least 20 % of a core: 1 - steal, with the workload keeping it busy.
fn core_share(e: &Evidence) -> Check {
    let samples = if e.with_neighbours.is_empty() {
        e.alone
    } else {
        e.with_neighbours
    };
    let threshold = format!(
        "every vCPU at least {:.0} % of a core in every window",
        V_SHARE * 100.0
    );
    if unmeasured(samples) {
        return check(
            "cpu_share",
            Verdict::NotVerifiable,
            "not every vCPU measured".into(),
            threshold,
            UNPINNED,
        );
    }
    let worst = samples
        .iter()
        .flat_map(|s| s.steal_ratio.iter().map(|st| 1.0 - st))
        .fold(f64::INFINITY, f64::min);
    if !worst.is_finite() {
        return check(
            "cpu_share",
            Verdict::NotVerifiable,
            "no samples".into(),
            threshold,
            "the probe printed no workload sample",
        );
    }
    // Throughput against alone says what steal cannot where there is no steal clock (TCG):
    // shown beside the verdict, which stays with steal (throughput also drops for shared
    // caches and memory bandwidth, which the V promise does not cover).
    let relative = relative_throughput(e.alone, e.with_neighbours)
        .into_iter()
        .flatten()
        .flatten()
        .fold(f64::INFINITY, f64::min);
    let beside = if relative.is_finite() {
        format!(
            "; throughput beside the neighbours down to {:.0} % of alone",
            relative * 100.0
        )
    } else {
        String::new()
    };
    timed(
        e.emulated,
        at_least(
            "cpu_share",
            worst,
            V_SHARE,
            format!(
                "lowest {:.0} % by steal over {} windows{beside}",
                worst * 100.0,
                samples.len()
            ),
            threshold,
        ),
    )
}

/// Per window of `samples`, each vCPU's throughput over its median throughput `alone`.
pub(super) fn relative_throughput(alone: &[Sample], samples: &[Sample]) -> Vec<Vec<Option<f64>>> {
    let base = per_vcpu_median(alone, vcpus_sampled(alone, samples));
    samples
        .iter()
        .map(|s| {
            base.iter()
                .enumerate()
                .map(|(i, b)| match (b, s.throughput.get(i).copied().flatten()) {
                    (Some(b), Some(t)) if *b > 0.0 => Some(t / b),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

fn entropy(p: &Report) -> Check {
    let threshold = format!(
        "entropy_avail at least {ENTROPY_AVAIL}, at most {FIPS_FAILURES_PER_1000} FIPS 140-2 failures per 1000 blocks"
    );
    let f = p.fips;
    let measured = format!(
        "entropy_avail {}, {} of {} blocks failed",
        p.entropy_avail.map_or("unknown".into(), |a| a.to_string()),
        f.failed_blocks,
        f.blocks
    );
    if f.blocks < 1000 {
        return check(
            "entropy",
            Verdict::NotVerifiable,
            measured,
            threshold,
            "the check needs at least 1000 blocks",
        );
    }
    // Kernels since 5.18 always say 256; older ones count up to 4096.
    let ok = p.entropy_avail.is_some_and(|a| a >= ENTROPY_AVAIL)
        && u64::from(f.failed_blocks) * 1000
            <= u64::from(FIPS_FAILURES_PER_1000) * u64::from(f.blocks);
    check(
        "entropy",
        if ok { Verdict::Kept } else { Verdict::Violated },
        measured,
        threshold,
        "",
    )
}

/// CPU flags QEMU's TCG can emulate for a guest (it has no RDSEED and no VMX); KVM passes the
/// host's through.
const TCG_EMULATES: [&str; 2] = ["rdrand", "svm"];

/// `flags`: any one of them keeps the promise.
fn visible(promise: &str, seen: bool, flags: &[&str], emulated: bool) -> Check {
    let flag = flags.join(" or ");
    if !seen && emulated && !flags.iter().any(|f| TCG_EMULATES.contains(f)) {
        return check(
            promise,
            Verdict::NotVerifiable,
            format!("no {flag} in the guest's /proc/cpuinfo"),
            format!("{flag} visible to the guest"),
            &format!(
                "not verifiable under emulation: TCG cannot emulate {flag} (KVM passes the host's through)"
            ),
        );
    }
    check(
        promise,
        if seen {
            Verdict::Kept
        } else {
            Verdict::Violated
        },
        if seen {
            format!("{flag} in the guest's /proc/cpuinfo")
        } else {
            format!("no {flag} in the guest's /proc/cpuinfo")
        },
        format!("{flag} visible to the guest"),
        "",
    )
}

/// The agent's own verdict on a promise only it can see (host memory placement).
fn from_agent(agent: &pb::GuaranteeReport, name: &str) -> Option<Check> {
    let p = agent.promises.iter().find(|p| p.name == name)?;
    let verdict = match pb::Verdict::try_from(p.verdict) {
        Ok(pb::Verdict::Kept) => Verdict::Kept,
        Ok(pb::Verdict::Violated) => Verdict::Violated,
        _ => Verdict::NotVerifiable,
    };
    Some(check(
        name,
        verdict,
        p.observed.clone(),
        p.promised.clone(),
        &format!(
            "measured by the agent on the host (/proc/PID/numa_maps){}{}",
            if p.why.is_empty() { "" } else { ": " },
            p.why
        ),
    ))
}

/// Every promise of the flavor, judged.
pub fn judge(e: &Evidence) -> Vec<Check> {
    let p = e.probe;
    let spec = e.spec;
    let mut out = vec![at_least(
        "vcpus",
        f64::from(p.cpu.vcpus),
        f64::from(spec.cpus),
        format!("{} vCPUs", p.cpu.vcpus),
        format!("at least {}", spec.cpus),
    )];
    let ram = spec.ram_gib() * GIB;
    out.push(match p.mem_present_bytes {
        Some(b) => at_least(
            "ram",
            b as f64,
            ram * (1.0 - FIRMWARE_SHARE),
            format!(
                "{:.3} GiB present (MemTotal {:.3} GiB)",
                b as f64 / GIB,
                p.mem_total_bytes.unwrap_or(0) as f64 / GIB
            ),
            format!(
                "{} GiB less at most {:.0} % kept by firmware",
                spec.ram_gib(),
                FIRMWARE_SHARE * 100.0
            ),
        ),
        None => check(
            "ram",
            Verdict::NotVerifiable,
            "unknown".into(),
            format!("{} GiB", spec.ram_gib()),
            "the probe could not read /proc/zoneinfo",
        ),
    });
    if let Some(size) = spec.disk.as_ref().and_then(|d| d.size_gb) {
        let root = p.disks.iter().find(|d| d.name == "vda");
        out.push(match root {
            Some(d) => at_least(
                "disk",
                d.bytes as f64,
                f64::from(size) * GIB,
                format!(
                    "{:.2} GiB root disk ({} bytes)",
                    d.bytes as f64 / GIB,
                    d.bytes
                ),
                format!("at least {size} GiB (a flavor's GB as Nova and the agent size disks)"),
            ),
            None => check(
                "disk",
                Verdict::Violated,
                "no root disk".into(),
                format!("at least {size} GiB"),
                "",
            ),
        });
    }
    if let Some(kind @ (DiskType::Ssd | DiskType::Nvme)) = spec.disk.as_ref().and_then(|d| d.kind) {
        let threshold = format!(
            "more than {MIN_IOPS:.0} sequential synchronous 4 KiB writes per second ({kind:?})"
        );
        out.push(match &p.iops {
            Some(i) => timed(
                e.emulated,
                check(
                    "disk_iops",
                    if i.iops > MIN_IOPS {
                        Verdict::Kept
                    } else {
                        Verdict::Violated
                    },
                    format!(
                        "{:.0} IOPS ({} writes in {:.1} s)",
                        i.iops, i.writes, i.seconds
                    ),
                    threshold,
                    "",
                ),
            ),
            None => check(
                "disk_iops",
                Verdict::NotVerifiable,
                "not measured".into(),
                threshold,
                "the probe could not write to the root disk (see its errors)",
            ),
        });
    }
    match spec.cpu_type {
        CpuType::DedicatedCore | CpuType::DedicatedThread => {
            out.push(exclusive_pins(e));
            out.push(steady_throughput(e));
        }
        CpuType::Shared => {
            out.push(pool_ratio(e));
            out.push(core_share(e));
        }
        CpuType::Crowded => {}
    }
    out.push(entropy(p));
    out.push(visible("rdrand", p.cpu.rdrand, &["rdrand"], e.emulated));
    out.push(visible("rdseed", p.cpu.rdseed, &["rdseed"], e.emulated));
    if spec.hwv {
        out.push(visible("hwv", p.cpu.hwv, &["vmx", "svm"], e.emulated));
    }
    out.extend(
        ["numa_locality", "hugepages"]
            .into_iter()
            .filter_map(|n| from_agent(e.agent, n)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvagent_probe::facts::Cpu;
    use hvagent_probe::fips::Summary;
    use hvagent_probe::report::{Disk, Iops};

    fn spec(name: &str) -> FlavorSpec {
        hvagent_core::flavor::parse(name)
            .expect("valid flavor")
            .spec
    }

    /// What a healthy 2-vCPU guest of `name` reports.
    fn probe(name: &str) -> Report {
        let s = spec(name);
        Report {
            cpu: Cpu {
                vcpus: s.cpus,
                rdrand: true,
                rdseed: true,
                hwv: true,
                ..Cpu::default()
            },
            mem_present_bytes: Some((s.ram_gib() * GIB) as u64),
            disks: vec![Disk {
                name: "vda".into(),
                bytes: u64::from(s.disk.as_ref().and_then(|d| d.size_gb).unwrap_or(1)) << 30,
            }],
            entropy_avail: Some(256),
            fips: Summary {
                blocks: 1000,
                failed_blocks: 2,
                ..Summary::default()
            },
            iops: Some(Iops {
                block_bytes: 4096,
                writes: 6000,
                seconds: 3.0,
                iops: 2000.0,
            }),
            ..Report::default()
        }
    }

    fn vcpu(i: u32, claimed: &[u32], actual: &[u32]) -> pb::ObservedVcpu {
        pb::ObservedVcpu {
            vcpu: i,
            claimed: claimed.to_vec(),
            actual: actual.to_vec(),
            ..Default::default()
        }
    }

    fn guest(name: &str, flavor: &str, vcpus: Vec<pb::ObservedVcpu>) -> pb::GuaranteeReport {
        pb::GuaranteeReport {
            vm_name: name.into(),
            flavor: flavor.into(),
            vcpus,
            ..Default::default()
        }
    }

    fn sample(t_ms: u64, throughput: f64, steal: f64) -> Sample {
        Sample {
            t_ms,
            throughput: vec![Some(throughput); 2],
            steal_ratio: vec![steal; 2],
        }
    }

    struct Case {
        spec: FlavorSpec,
        emulated: bool,
        smt: bool,
        probe: Report,
        agent: pb::GuaranteeReport,
        others: Vec<pb::GuaranteeReport>,
        alone: Vec<Sample>,
        with: Vec<Sample>,
    }

    impl Case {
        /// SCS-2C-4-10s on host CPUs 2 and 3 (siblings 6, 7 kept idle), alone on its core.
        fn dedicated() -> Case {
            let mut agent = guest(
                "probe",
                "SCS-2C-4-10s",
                vec![vcpu(0, &[2], &[2]), vcpu(1, &[3], &[3])],
            );
            agent.idle_siblings = vec![6, 7];
            Case {
                spec: spec("SCS-2C-4-10s"),
                emulated: false,
                smt: true,
                probe: probe("SCS-2C-4-10s"),
                agent,
                others: vec![guest(
                    "v",
                    "SCS-2V-4",
                    vec![vcpu(0, &[0, 1], &[0, 1]), vcpu(1, &[0, 1], &[0, 1])],
                )],
                alone: vec![sample(1000, 100.0, 0.0), sample(2000, 102.0, 0.0)],
                with: vec![sample(4000, 97.0, 0.02), sample(5000, 96.0, 0.01)],
            }
        }

        /// SCS-2V-4 floating over host CPUs 0-1 (no SMT) beside one more V guest.
        fn shared() -> Case {
            Case {
                spec: spec("SCS-2V-4"),
                smt: false,
                probe: probe("SCS-2V-4"),
                agent: guest(
                    "probe",
                    "SCS-2V-4",
                    vec![vcpu(0, &[0, 1], &[0, 1]), vcpu(1, &[0, 1], &[0, 1])],
                ),
                others: vec![guest(
                    "n",
                    "SCS-4V-8",
                    (0..4).map(|i| vcpu(i, &[0, 1], &[0, 1])).collect(),
                )],
                with: vec![sample(4000, 30.0, 0.7), sample(5000, 30.0, 0.6)],
                ..Case::dedicated()
            }
        }

        fn judge(&self) -> Vec<Check> {
            judge(&Evidence {
                spec: &self.spec,
                emulated: self.emulated,
                smt: self.smt,
                probe: &self.probe,
                agent: &self.agent,
                others: &self.others,
                alone: &self.alone,
                with_neighbours: &self.with,
                tolerance: 0.1,
            })
        }

        fn verdict(&self, promise: &str) -> Verdict {
            self.check(promise).verdict
        }

        fn check(&self, promise: &str) -> Check {
            self.judge()
                .into_iter()
                .find(|c| c.promise == promise)
                .unwrap_or_else(|| panic!("no {promise} in {:#?}", self.judge()))
        }
    }

    fn promises(checks: &[Check]) -> Vec<&str> {
        checks.iter().map(|c| c.promise.as_str()).collect()
    }

    #[test]
    fn a_healthy_guest_keeps_every_promise_of_its_flavor() {
        let c = Case::dedicated().judge();
        assert_eq!(
            promises(&c),
            [
                "vcpus",
                "ram",
                "disk",
                "disk_iops",
                "cpu_exclusive",
                "cpu_throughput",
                "entropy",
                "rdrand",
                "rdseed"
            ]
        );
        assert!(c.iter().all(|c| c.verdict == Verdict::Kept), "{c:#?}");
        let v = Case::shared().judge();
        assert_eq!(
            promises(&v),
            [
                "vcpus",
                "ram",
                "shared_ratio",
                "cpu_share",
                "entropy",
                "rdrand",
                "rdseed"
            ]
        );
        assert!(v.iter().all(|c| c.verdict == Verdict::Kept), "{v:#?}");
        // L: no CPU promise to check; hwv only where the name says so.
        let mut l = Case::shared();
        l.spec = spec("SCS-1L-1_hwv");
        assert_eq!(
            promises(&l.judge()),
            ["vcpus", "ram", "entropy", "rdrand", "rdseed", "hwv"]
        );
    }

    #[test]
    fn sizes_not_below_the_name() {
        let mut c = Case::dedicated();
        c.probe.cpu.vcpus = 1;
        assert_eq!(c.verdict("vcpus"), Verdict::Violated);
        let mut c = Case::dedicated();
        let min = (4.0 * GIB * 0.99).ceil() as u64;
        c.probe.mem_present_bytes = Some(min);
        assert_eq!(c.verdict("ram"), Verdict::Kept);
        c.probe.mem_present_bytes = Some(min - 1);
        assert_eq!(c.verdict("ram"), Verdict::Violated);
        c.probe.mem_present_bytes = None;
        assert_eq!(c.verdict("ram"), Verdict::NotVerifiable);
        // Disks in GiB, as the agent sizes them.
        let mut c = Case::dedicated();
        c.probe.disks[0].bytes = 10 << 30;
        assert_eq!(c.verdict("disk"), Verdict::Kept);
        c.probe.disks[0].bytes = (10 << 30) - 1;
        assert_eq!(
            c.check("disk").measured,
            "10.00 GiB root disk (10737418239 bytes)"
        );
        assert_eq!(c.verdict("disk"), Verdict::Violated);
        c.probe.disks.clear();
        assert_eq!(c.verdict("disk"), Verdict::Violated);
    }

    #[test]
    fn iops_more_than_a_thousand_on_real_hardware_only() {
        let mut c = Case::dedicated();
        c.probe.iops.as_mut().unwrap().iops = 1000.0;
        assert_eq!(c.verdict("disk_iops"), Verdict::Violated);
        c.probe.iops.as_mut().unwrap().iops = 1000.5;
        assert_eq!(c.verdict("disk_iops"), Verdict::Kept);
        c.emulated = true;
        let nv = c.check("disk_iops");
        assert_eq!(nv.verdict, Verdict::NotVerifiable);
        assert!(
            nv.why.contains("emulation") && nv.measured.starts_with("1000 IOPS"),
            "{nv:?}"
        );
        c.probe.iops = None;
        c.emulated = false;
        assert_eq!(c.verdict("disk_iops"), Verdict::NotVerifiable);
        // Network and HDD disks promise no IOPS.
        c.spec = spec("SCS-2C-4-10n");
        assert!(!promises(&c.judge()).contains(&"disk_iops"));
    }

    #[test]
    fn dedicated_cpus_are_exclusive() {
        // A vCPU thread allowed beyond its claimed CPU.
        let mut c = Case::dedicated();
        c.agent.vcpus[1].actual = vec![3, 4];
        let x = c.check("cpu_exclusive");
        assert_eq!(x.verdict, Verdict::Violated);
        assert!(
            x.measured.contains("vCPU 1 may run on [3, 4], claimed [3]"),
            "{x:?}"
        );
        // Another guest's vCPU or emulator on a dedicated CPU or (C) an idle sibling.
        for (vcpu_cpus, emulator, shared) in [
            (vec![3], vec![], "3"),
            (vec![0], vec![2], "2"),
            (vec![7], vec![], "7"),
        ] {
            let mut c = Case::dedicated();
            c.others[0].vcpus[0].actual = vcpu_cpus;
            c.others[0].emulator_actual = emulator;
            let x = c.check("cpu_exclusive");
            assert_eq!(x.verdict, Verdict::Violated, "{x:?}");
            assert!(
                x.measured
                    .contains(&format!("guest v (SCS-2V-4) may run on host CPU {shared}")),
                "{x:?}"
            );
        }
        // T keeps no siblings idle: a sibling in use is no violation of T.
        let mut t = Case::dedicated();
        t.spec = spec("SCS-2T-4-10s");
        t.others[0].vcpus[0].actual = vec![7];
        assert_eq!(t.verdict("cpu_exclusive"), Verdict::Kept);
        // A guest whose pins the agent does not observe may be anywhere.
        let mut c = Case::dedicated();
        c.others[0].vcpus[1].actual.clear();
        let x = c.check("cpu_exclusive");
        assert_eq!(x.verdict, Verdict::Violated);
        assert!(x.measured.contains("does not observe its pins"), "{x:?}");
        // No observed vCPU at all is no proof.
        let mut c = Case::dedicated();
        c.agent.vcpus.clear();
        assert_eq!(c.verdict("cpu_exclusive"), Verdict::Violated);
    }

    #[test]
    fn dedicated_throughput_holds_beside_neighbours() {
        let mut c = Case::dedicated();
        assert_eq!(
            c.check("cpu_throughput").measured,
            "worst vCPU at 96 % of its throughput alone"
        );
        c.with = vec![sample(4000, 90.0, 0.0), sample(5000, 92.0, 0.0)];
        // 91 / 101 = 90.1 %: within 10 %.
        assert_eq!(c.verdict("cpu_throughput"), Verdict::Kept);
        c.with = vec![sample(4000, 89.0, 0.0), sample(5000, 90.0, 0.0)];
        assert_eq!(c.verdict("cpu_throughput"), Verdict::Violated);
        c.emulated = true;
        assert_eq!(c.verdict("cpu_throughput"), Verdict::NotVerifiable);
        c.emulated = false;
        c.with[0].throughput[1] = None;
        let x = c.check("cpu_throughput");
        assert_eq!(x.verdict, Verdict::NotVerifiable);
        assert!(x.why.contains("could not run its workload"), "{x:?}");
        c.with[0].throughput[1] = Some(90.0);
        c.alone[0].throughput[1] = Some(0.0);
        c.alone[1].throughput[1] = Some(0.0);
        assert_eq!(
            c.check("cpu_throughput").measured,
            "a vCPU did no work alone"
        );
        assert_eq!(c.verdict("cpu_throughput"), Verdict::Violated);
        c.with.clear();
        let x = c.check("cpu_throughput");
        assert_eq!(x.verdict, Verdict::NotVerifiable);
        assert!(x.why.contains("no neighbour ran"), "{x:?}");
    }

    #[test]
    fn the_shared_pool_stays_within_its_ratio() {
        let mut c = Case::shared();
        // 2 + 4 V vCPUs on 2 CPUs at 5 per core.
        assert_eq!(
            c.check("shared_ratio").measured,
            "6 V vCPUs on 2 host CPUs (0,1)"
        );
        assert_eq!(
            c.check("shared_ratio").threshold,
            "at most 5 per core (10 vCPUs)"
        );
        c.others.push(guest(
            "m",
            "SCS-4V-8",
            (0..4).map(|i| vcpu(i, &[1], &[1])).collect(),
        ));
        assert_eq!(c.verdict("shared_ratio"), Verdict::Kept);
        c.others
            .push(guest("o", "SCS-1V-2", vec![vcpu(0, &[0], &[0])]));
        assert_eq!(c.verdict("shared_ratio"), Verdict::Violated);
        // With SMT, 3 per thread: 6 is the most two threads take.
        let mut c = Case::shared();
        c.smt = true;
        assert_eq!(c.verdict("shared_ratio"), Verdict::Kept);
        c.others
            .push(guest("o", "SCS-1V-2", vec![vcpu(0, &[0], &[0])]));
        assert_eq!(c.verdict("shared_ratio"), Verdict::Violated);
        // Guests outside the pool, L and dedicated guests do not count; unobserved V guests do.
        let mut c = Case::shared();
        c.others = vec![
            guest(
                "far",
                "SCS-8V-8",
                (0..8).map(|i| vcpu(i, &[4], &[4])).collect(),
            ),
            guest(
                "l",
                "SCS-8L-8",
                (0..8).map(|i| vcpu(i, &[0], &[0])).collect(),
            ),
            guest(
                "c",
                "SCS-8C-8",
                (0..8).map(|i| vcpu(i, &[0], &[0])).collect(),
            ),
        ];
        assert_eq!(
            c.check("shared_ratio").measured,
            "2 V vCPUs on 2 host CPUs (0,1)"
        );
        c.others.push(guest(
            "lost",
            "SCS-9V-8",
            (0..9).map(|i| vcpu(i, &[], &[])).collect(),
        ));
        assert_eq!(c.verdict("shared_ratio"), Verdict::Violated);
        // No observed pool at all.
        let mut c = Case::shared();
        c.agent.vcpus.clear();
        assert_eq!(c.verdict("shared_ratio"), Verdict::Violated);
    }

    #[test]
    fn every_shared_vcpu_gets_a_fifth_of_a_core_in_every_window() {
        let mut c = Case::shared();
        // Alone 100 and 102 per vCPU (median 101), beside the neighbours 30.
        assert_eq!(
            c.check("cpu_share").measured,
            "lowest 30 % by steal over 2 windows; throughput beside the neighbours down to 30 % of alone"
        );
        c.with[1].steal_ratio[1] = 0.8;
        assert_eq!(c.verdict("cpu_share"), Verdict::Kept);
        c.with[1].steal_ratio[1] = 0.81;
        assert_eq!(c.verdict("cpu_share"), Verdict::Violated);
        c.emulated = true;
        assert_eq!(c.verdict("cpu_share"), Verdict::NotVerifiable);
        c.emulated = false;
        c.with[0].throughput[0] = None;
        assert_eq!(c.check("cpu_share").measured, "not every vCPU measured");
        // Without neighbours the windows alone count; without any sample, nothing does.
        let mut c = Case::shared();
        c.with.clear();
        assert_eq!(
            c.check("cpu_share").measured,
            "lowest 100 % by steal over 2 windows"
        );
        c.alone.clear();
        assert_eq!(c.verdict("cpu_share"), Verdict::NotVerifiable);
    }

    #[test]
    fn entropy_as_scs_0101_checks_it() {
        let mut c = Case::dedicated();
        c.probe.fips.failed_blocks = 5;
        assert_eq!(c.verdict("entropy"), Verdict::Kept);
        c.probe.fips.failed_blocks = 6;
        assert_eq!(c.verdict("entropy"), Verdict::Violated);
        // Scaled: 10 in 2000 is 5 per 1000.
        c.probe.fips = Summary {
            blocks: 2000,
            failed_blocks: 10,
            ..Summary::default()
        };
        assert_eq!(c.verdict("entropy"), Verdict::Kept);
        c.probe.entropy_avail = Some(4096);
        assert_eq!(c.verdict("entropy"), Verdict::Kept);
        c.probe.entropy_avail = Some(255);
        assert_eq!(c.verdict("entropy"), Verdict::Violated);
        c.probe.entropy_avail = None;
        assert_eq!(
            c.check("entropy").measured,
            "entropy_avail unknown, 10 of 2000 blocks failed"
        );
        c.probe.fips.blocks = 999;
        assert_eq!(c.verdict("entropy"), Verdict::NotVerifiable);
    }

    #[test]
    fn cpu_flags_and_what_emulation_cannot_show() {
        let mut c = Case::dedicated();
        c.spec = spec("SCS-2C-4-10s_hwv");
        c.probe.cpu = Cpu::default();
        for p in ["rdrand", "rdseed", "hwv"] {
            assert_eq!(c.verdict(p), Verdict::Violated, "{p}");
        }
        // TCG emulates rdrand and svm, not rdseed.
        c.emulated = true;
        assert_eq!(c.verdict("rdrand"), Verdict::Violated);
        assert_eq!(c.verdict("hwv"), Verdict::Violated);
        let r = c.check("rdseed");
        assert_eq!(r.verdict, Verdict::NotVerifiable);
        assert!(r.why.contains("TCG cannot emulate rdseed"), "{r:?}");
    }

    #[test]
    fn memory_placement_comes_from_the_agent() {
        let mut c = Case::dedicated();
        c.agent.promises = vec![
            pb::Promise {
                name: "numa_locality".into(),
                promised: "node 0".into(),
                observed: "node 0: 10 MiB, node 1: 2 MiB".into(),
                verdict: pb::Verdict::Violated as i32,
                why: "17 % elsewhere".into(),
            },
            pb::Promise {
                name: "hugepages".into(),
                verdict: pb::Verdict::Kept as i32,
                ..Default::default()
            },
            pb::Promise {
                name: "steal".into(),
                verdict: pb::Verdict::Kept as i32,
                ..Default::default()
            },
        ];
        let n = c.check("numa_locality");
        assert_eq!(n.verdict, Verdict::Violated);
        assert_eq!(n.measured, "node 0: 10 MiB, node 1: 2 MiB");
        assert!(n.why.ends_with("numa_maps): 17 % elsewhere"), "{n:?}");
        assert_eq!(c.verdict("hugepages"), Verdict::Kept);
        // The agent's other verdicts are its own; verify measures those itself.
        assert!(!promises(&c.judge()).contains(&"steal"));
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
        let alone = [sample(0, 10.0, 0.0)];
        let with = [sample(0, 5.0, 0.0)];
        assert_eq!(throughput_ratios(&alone, &with), vec![Some(0.5), Some(0.5)]);
        assert_eq!(
            throughput_ratios(&[sample(0, 0.0, 0.0)], &with),
            vec![None, None]
        );
        let mut later = sample(1, 2.5, 0.0);
        later.throughput[1] = None;
        assert_eq!(
            relative_throughput(&alone, &[with[0].clone(), later]),
            vec![vec![Some(0.5), Some(0.5)], vec![Some(0.25), None]]
        );
    }
}
