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
        infiniband: vec![],
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
                detail: "vCPU 0 thread 9 may run on other CPUs: expected CPUs 1, found 0".into(),
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
