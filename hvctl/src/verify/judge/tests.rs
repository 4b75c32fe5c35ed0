//! The verdicts of every check on made-up evidence: kept, violated and not verifiable.

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
