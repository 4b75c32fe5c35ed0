//! The verdicts: what a flavor name promises, against what the probe measured in the guest
//! and what the agent observed on the host. Pure: everything it needs comes in [`Evidence`].

use std::collections::BTreeSet;

use hvagent_core::flavor::{CpuType, DiskType, FlavorSpec};
use hvagent_probe::report::{Report, Sample};
use hvagent_proto::v1 as pb;

use super::{Check, Verdict};

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
mod tests;
