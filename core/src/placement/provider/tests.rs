//! The provider view on the captured hosts, the flavor → request mapping, and the property
//! that matters to a scheduler: whatever Placement's arithmetic offers, `claim` accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::*;
use crate::flavor::parse;
use crate::host::{self, ExternalFacts, KvmState, KvmVerdict, LibvirtFacts};
use crate::placement::policy::{Overhead, ReservedCpus};
use crate::placement::topology::Shape;
use crate::placement::{ClaimRequest, RefusalKind};

const FIXTURES: [&str; 5] = [
    "qemu-2s4c2t-numa",
    "qemu-1s8c-nosmt",
    "hardened-1s8c-ecc",
    "qemu-offline-cpus",
    "host-firecracker",
];

/// A captured host as the daemon reads it, with a 100 GiB store.
fn host(name: &str) -> Inventory {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures")
        .join(name);
    host::read(
        &root,
        ExternalFacts {
            libvirt: LibvirtFacts::default(),
            kvm: KvmVerdict {
                state: KvmState::Absent,
                reason: "fixture".into(),
            },
            storage_disk_bytes: Some(100 << 30),
        },
    )
}

fn allocator(name: &str, policy: Policy) -> (Allocator, Inventory) {
    let inv = host(name);
    let alloc = Allocator::new(Topology::from_inventory(&inv), policy).expect("policy fits");
    (alloc, inv)
}

fn spec(name: &str) -> FlavorSpec {
    parse(name).expect(name).spec
}

fn classes(p: &ProviderInventory) -> Vec<(&str, u64, u64, f64)> {
    p.inventories
        .iter()
        .map(|r| {
            (
                r.resource_class.as_str(),
                r.total,
                r.reserved,
                r.allocation_ratio,
            )
        })
        .collect()
}

#[test]
fn numa_fixture_inventory() {
    let policy = Policy {
        reserved_memory_mib: 256,
        ..Policy::default()
    };
    let (alloc, inv) = allocator("qemu-2s4c2t-numa", policy);
    let p = provider_inventory(&alloc, &inv, Guests::Emulated);
    // 8 cores, core 0 (CPUs 0-1) the host's: 7 serve either kind; so that as many dedicated as
    // V vCPUs fit (a V vCPU is 1/6 of a core with SMT) 6 become PCPU, and the pool keeps
    // 14 − 6×2 = 2 threads for VCPU (ratio 3 with SMT), beside the 2 reserved.
    // Memory: 2925 + 3021 MiB minus the 2 MiB and 1 GiB pools = 2797 + 1933, less the reserve
    // (256, split 152 + 104) = 2645 + 1829: both nodes have dedicated cores, so Placement may
    // hand out only what the smaller node alone holds (1829; 2901 reserved).
    assert_eq!(
        classes(&p),
        vec![
            ("CUSTOM_HUGEPAGES_1G", 1, 0, 1.0),
            ("CUSTOM_HUGEPAGES_2M", 96, 0, 1.0),
            ("DISK_GB", 100, 0, 1.0),
            ("MEMORY_MB", 4730, 2901, 1.0),
            ("PCPU", 6, 0, 1.0),
            ("VCPU", 4, 2, 3.0),
        ]
    );
    let t = &p.traits;
    // TCG: the guest sees qemu64, not the host's AVX-512.
    assert!(t.contains(&"HW_CPU_X86_SSE2".to_string()), "{t:?}");
    assert!(!t.iter().any(|t| t.starts_with("HW_CPU_X86_AVX")), "{t:?}");
    assert!(!t.contains(&"HW_CPU_HYPERTHREADING".to_string()));
    for want in [
        "COMPUTE_IMAGE_TYPE_QCOW2",
        "COMPUTE_IMAGE_TYPE_RAW",
        "COMPUTE_NODE",
        "CUSTOM_SCS_CPU_I",
        "CUSTOM_SCS_CPU_I1",
        "CUSTOM_SCS_EMULATION_ONLY",
        "CUSTOM_SCS_TRAITS_V1",
        "CUSTOM_HVAGENT_PAGES_C_4K",
        "CUSTOM_HVAGENT_OVERHEAD_128M_8M_10PM",
        "CUSTOM_HVAGENT_L_RATIO_8",
    ] {
        assert!(t.contains(&want.to_string()), "{want} missing from {t:?}");
    }
    // MDS open with SMT on, no EDAC: neither promise.
    for absent in [
        "CUSTOM_SCS_SECURE",
        "CUSTOM_SCS_ECC",
        COMPUTE_STATUS_DISABLED,
    ] {
        assert!(!t.contains(&absent.to_string()), "{absent} in {t:?}");
    }
    let kvm = provider_inventory(&alloc, &inv, Guests::Kvm);
    assert!(kvm.traits.contains(&"HW_CPU_X86_AVX2".to_string()));
    let off = provider_inventory(&alloc, &inv, Guests::Unavailable);
    assert!(off.traits.contains(&COMPUTE_STATUS_DISABLED.to_string()));
    // A draining node is disabled for the scheduler, once, and enabled again after.
    let mut draining = alloc.clone();
    draining.set_draining(true);
    let drained = provider_inventory(&draining, &inv, Guests::Emulated).traits;
    assert_eq!(
        drained
            .iter()
            .filter(|x| *x == COMPUTE_STATUS_DISABLED)
            .count(),
        1
    );
    assert_eq!(
        drained
            .iter()
            .filter(|x| *x != COMPUTE_STATUS_DISABLED)
            .collect::<Vec<_>>(),
        t.iter().collect::<Vec<_>>()
    );
    draining.set_draining(false);
    assert_eq!(
        &provider_inventory(&draining, &inv, Guests::Emulated).traits,
        t
    );
}

/// Secure Boot and a vTPM are offered as os-traits' COMPUTE_SECURITY_* where the node has the
/// firmware, and not where it lacks it.
#[test]
fn firmware_traits_follow_the_node() {
    let (alloc, mut inv) = allocator("qemu-2s4c2t-numa", Policy::default());
    let names = [
        "COMPUTE_SECURITY_UEFI_SECURE_BOOT",
        "COMPUTE_SECURITY_TPM_2_0",
        "COMPUTE_SECURITY_TPM_TIS",
        "COMPUTE_SECURITY_TPM_CRB",
    ];
    let traits = |inv: &Inventory| provider_inventory(&alloc, inv, Guests::Emulated).traits;
    let none = traits(&inv);
    assert!(
        !none.iter().any(|t| names.contains(&t.as_str())),
        "{none:?}"
    );
    inv.hypervisor.firmware = crate::host::FirmwareFacts {
        uefi: true,
        secure_boot: true,
        vtpm: false,
        reason: "no swtpm".into(),
    };
    let secure = traits(&inv);
    assert!(secure.contains(&names[0].to_string()), "{secure:?}");
    assert!(
        !secure.iter().any(|t| t.starts_with("COMPUTE_SECURITY_TPM")),
        "{secure:?}"
    );
    inv.hypervisor.firmware.vtpm = true;
    let all = traits(&inv);
    for name in names {
        assert!(
            all.contains(&name.to_string()),
            "{name} missing from {all:?}"
        );
    }
}

#[test]
fn static_split_is_reported_as_configured() {
    // CPUs 2-7 dedicated (cores 1-3), 8-15 shared: PCPU 3 cores, VCPU 8 threads + 2 reserved.
    let policy = Policy {
        reserved_memory_mib: 256,
        dedicated_cpus: Some((2..8).collect()),
        shared_cpus: Some((8..16).collect()),
        ..Policy::default()
    };
    let (alloc, inv) = allocator("qemu-2s4c2t-numa", policy);
    let p = provider_inventory(&alloc, &inv, Guests::Kvm);
    let c = classes(&p);
    assert!(c.contains(&("PCPU", 3, 0, 1.0)), "{c:?}");
    assert!(c.contains(&("VCPU", 10, 2, 3.0)), "{c:?}");
}

#[test]
fn no_smt_host_and_no_reserve() {
    let policy = Policy {
        reserved_cpus: ReservedCpus::List(vec![]),
        reserved_memory_mib: 0,
        ..Policy::default()
    };
    let (alloc, inv) = allocator("qemu-1s8c-nosmt", policy);
    let p = provider_inventory(&alloc, &inv, Guests::Kvm);
    let c = classes(&p);
    // 8 cores of one thread: 7 PCPU, 1 pool thread at 5 V vCPUs; no hugepage pools.
    assert!(c.contains(&("PCPU", 7, 0, 1.0)), "{c:?}");
    assert!(c.contains(&("VCPU", 1, 0, 5.0)), "{c:?}");
    assert!(c.contains(&("MEMORY_MB", 971, 0, 1.0)), "{c:?}");
    assert!(
        !c.iter().any(|r| r.0.starts_with("CUSTOM_HUGEPAGES")),
        "{c:?}"
    );
    let hardened = provider_inventory(
        &allocator("hardened-1s8c-ecc", Policy::default()).0,
        &host("hardened-1s8c-ecc"),
        Guests::Kvm,
    );
    for want in ["CUSTOM_SCS_SECURE", "CUSTOM_SCS_ECC"] {
        assert!(hardened.traits.contains(&want.to_string()), "{want}");
    }
}

#[test]
fn requests_by_cpu_type_and_pages() {
    let policy = Policy::default();
    let r = placement_request(&spec("SCS-2C-4"), &policy);
    // 4096 MiB + 128 + 2×8 + 41 (1 % of RAM, rounded up).
    assert_eq!(
        r.resources,
        BTreeMap::from([("MEMORY_MB".into(), 4281), ("PCPU".into(), 2)])
    );
    assert_eq!(
        r.required,
        vec![
            "CUSTOM_HVAGENT_OVERHEAD_128M_8M_10PM",
            "CUSTOM_HVAGENT_PAGES_C_4K",
            "CUSTOM_SCS_ECC",
            "CUSTOM_SCS_SECURE",
        ]
    );
    assert_eq!(r.forbidden, vec![COMPUTE_STATUS_DISABLED]);
    assert_eq!(
        r.query,
        "resources=MEMORY_MB:4281,PCPU:2&required=CUSTOM_HVAGENT_OVERHEAD_128M_8M_10PM,\
         CUSTOM_HVAGENT_PAGES_C_4K,CUSTOM_SCS_ECC,CUSTOM_SCS_SECURE,!COMPUTE_STATUS_DISABLED"
    );
    let e = &r.extra_specs;
    assert_eq!(e["resources:PCPU"], "2");
    assert_eq!(e["hw:cpu_policy"], "dedicated");
    assert_eq!(e["hw:cpu_thread_policy"], "isolate");
    assert_eq!(e["trait:CUSTOM_SCS_SECURE"], "required");
    assert_eq!(e["trait:COMPUTE_STATUS_DISABLED"], "forbidden");
    assert!(!e.contains_key("hw:mem_page_size"));

    let t = placement_request(&spec("SCS-4Ti-8u"), &policy);
    assert_eq!(t.resources["PCPU"], 4);
    assert_eq!(t.extra_specs["hw:cpu_thread_policy"], "prefer");
    assert!(!t.required.contains(&"CUSTOM_SCS_SECURE".to_string()));

    let v = placement_request(&spec("SCS-4V-8"), &policy);
    assert_eq!(v.resources["VCPU"], 4);
    assert_eq!(v.extra_specs["hw:cpu_policy"], "shared");
    assert!(!v.extra_specs.contains_key("hw:cpu_thread_policy"));

    // L: 5 V shares per thread at most, 8 L per thread: 3 L vCPUs cost ceil(15/8) = 2 VCPU.
    let l = placement_request(&spec("SCS-3L-1"), &policy);
    assert_eq!(l.resources["VCPU"], 2);
    assert!(l.required.contains(&"CUSTOM_HVAGENT_L_RATIO_8".to_string()));

    let huge = Policy {
        hugepages: BTreeMap::from([('C', 1 << 20)]),
        ..Policy::default()
    };
    let h = placement_request(&spec("SCS-2C-4-20s_kvm_hwv_z3h"), &huge);
    assert_eq!(
        h.resources,
        BTreeMap::from([
            ("CUSTOM_HUGEPAGES_1G".into(), 4),
            ("DISK_GB".into(), 20),
            ("MEMORY_MB".into(), 185),
            ("PCPU".into(), 2),
        ])
    );
    assert_eq!(h.extra_specs["hw:mem_page_size"], "1GB");
    for want in [
        "CUSTOM_HVAGENT_PAGES_C_1G",
        "CUSTOM_SCS_DISK_S",
        "CUSTOM_SCS_HYPERVISOR_KVM",
        "CUSTOM_SCS_HWV",
        "CUSTOM_SCS_CPU_Z3H",
    ] {
        assert!(h.required.contains(&want.to_string()), "{want}: {h:?}");
    }
}

#[test]
fn dedicated_memory_counts_whole_units_per_vcpu() {
    // A spanning dedicated guest gets ceil(RAM / vCPUs) per vCPU on each node: 3 × 1366 MiB.
    let r = placement_request(&spec("SCS-3C-4"), &Policy::default());
    assert_eq!(r.resources["MEMORY_MB"], 3 * 1366 + 128 + 3 * 8 + 41);
    let floating = placement_request(&spec("SCS-3V-4"), &Policy::default());
    assert_eq!(floating.resources["MEMORY_MB"], 4096 + 128 + 3 * 8 + 41);
    // One 1 GiB page cannot be split over ten vCPUs on several nodes: ten are counted.
    let huge = Policy {
        hugepages: BTreeMap::from([('C', 1 << 20)]),
        ..Policy::default()
    };
    let r = placement_request(&spec("SCS-10C-1"), &huge);
    assert_eq!(r.resources["CUSTOM_HUGEPAGES_1G"], 10);
}

#[test]
fn unservable_flavors_require_what_no_node_reports() {
    let p = Policy::default();
    for (name, trait_) in [
        ("SCS-2V-4-10n", "CUSTOM_SCS_DISK_N"),
        ("SCS-2V-4_xen", "CUSTOM_SCS_HYPERVISOR_XEN"),
        ("SCS-2V-4_gN", "CUSTOM_SCS_VGPU_N"),
        ("SCS-2V-4_GNa", "CUSTOM_SCS_GPU_N_MODEL"),
    ] {
        let r = placement_request(&spec(name), &p);
        assert!(r.required.contains(&trait_.to_string()), "{name}: {r:?}");
    }
    let g = placement_request(&spec("SCS-2V-4_GN"), &p);
    assert_eq!(g.resources["CUSTOM_PGPU_NVIDIA"], 1);
    assert!(g.required.contains(&"CUSTOM_SCS_GPU_N".to_string()));
}

#[test]
fn brand_traits_cover_every_lower_level() {
    let brand = crate::host::CpuBrand {
        vendor: 'i',
        generation: Some(3),
        frequency_level: Some(2),
    };
    assert_eq!(
        brand_traits(&brand),
        vec![
            "CUSTOM_SCS_CPU_I",
            "CUSTOM_SCS_CPU_I3",
            "CUSTOM_SCS_CPU_IH",
            "CUSTOM_SCS_CPU_I3H",
            "CUSTOM_SCS_CPU_IHH",
            "CUSTOM_SCS_CPU_I3HH",
        ]
    );
}

/// Placement's own arithmetic over one provider: capacity `int((total − reserved) × ratio)`,
/// `min_unit ≤ amount ≤ max_unit`, `amount % step_size == 0`, required and forbidden traits.
struct PlacementSim {
    inventories: BTreeMap<String, ResourceInventory>,
    traits: BTreeSet<String>,
    used: BTreeMap<String, u64>,
}

impl PlacementSim {
    fn new(p: &ProviderInventory) -> Self {
        PlacementSim {
            inventories: p
                .inventories
                .iter()
                .map(|r| (r.resource_class.clone(), r.clone()))
                .collect(),
            traits: p.traits.iter().cloned().collect(),
            used: BTreeMap::new(),
        }
    }

    fn offers(&self, r: &PlacementRequest) -> bool {
        r.required.iter().all(|t| self.traits.contains(t))
            && !r.forbidden.iter().any(|t| self.traits.contains(t))
            && r.resources.iter().all(|(class, &n)| {
                self.inventories.get(class).is_some_and(|inv| {
                    let capacity =
                        ((inv.total - inv.reserved) as f64 * inv.allocation_ratio) as u64;
                    n >= inv.min_unit
                        && n <= inv.max_unit
                        && n % inv.step_size == 0
                        && self.used.get(class).copied().unwrap_or(0) + n <= capacity
                })
            })
    }

    fn add(&mut self, resources: &BTreeMap<String, u64>) {
        for (c, n) in resources {
            *self.used.entry(c.clone()).or_default() += n;
        }
    }

    fn remove(&mut self, resources: &BTreeMap<String, u64>) {
        for (c, n) in resources {
            *self.used.entry(c.clone()).or_default() -= n;
        }
    }
}

/// xorshift64*: a fixed seed gives the same run, so the figures below are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A random `[placement]` policy that fits `topo` (or `None` when the draw does not fit).
fn random_policy(rng: &mut Rng, topo: &Topology) -> Policy {
    let cpus: Vec<u32> = topo.cpus.iter().map(|c| c.id).collect();
    let mut policy = Policy {
        reserved_cpus: if rng.chance(70) {
            ReservedCpus::Auto
        } else {
            ReservedCpus::List(vec![])
        },
        reserved_memory_mib: [0, 64, 256, 1024][rng.below(4) as usize],
        crowded_ratio: [2, 3, 4, 8, 16][rng.below(5) as usize],
        overhead: if rng.chance(50) {
            Policy::default().overhead
        } else {
            Overhead {
                fixed_mib: 16,
                per_vcpu_mib: 2,
                ram_permille: 5,
            }
        },
        ..Policy::default()
    };
    if rng.chance(30) {
        // A static split: the upper half of the CPUs is dedicated.
        let half = cpus.len() / 2;
        let first = cpus.first().copied();
        let upper: Vec<u32> = cpus[half..]
            .iter()
            .copied()
            .filter(|&c| Some(c) != first)
            .collect();
        policy.dedicated_cpus = Some(upper);
        if rng.chance(50) {
            policy.reserved_cpus = ReservedCpus::List(vec![]);
        }
    }
    let sizes: BTreeSet<u64> = topo
        .nodes
        .iter()
        .flat_map(|n| n.hugepages.keys().copied())
        .collect();
    for letter in ['C', 'T', 'V', 'L'] {
        if !sizes.is_empty() && rng.chance(25) {
            let kib = *sizes
                .iter()
                .nth(rng.below(sizes.len() as u64) as usize)
                .expect("in range");
            policy.hugepages.insert(letter, kib);
        }
    }
    policy
}

fn random_flavor(rng: &mut Rng, max_half_gib: u64, max_cpus: u64) -> FlavorSpec {
    let n = 1 + rng.below(max_cpus);
    let t = ['L', 'V', 'T', 'C'][rng.below(4) as usize];
    let i = if rng.chance(85) { "i" } else { "" };
    let half = 1 + rng.below(max_half_gib);
    let ram = if half.is_multiple_of(2) {
        (half / 2).to_string()
    } else {
        format!("{}.5", half / 2)
    };
    let u = if rng.chance(85) { "u" } else { "" };
    let disk = if rng.chance(20) { "-5" } else { "" };
    spec(&format!("SCS-{n}{t}{i}-{ram}{u}{disk}"))
}

/// A generated host: 1-2 sockets, 1-8 cores, SMT on/off, 1-2 NUMA nodes per socket,
/// hugepage pools, some CPUs isolated.
fn random_shape(rng: &mut Rng) -> Topology {
    let mut shape = Shape::new(
        1 + rng.below(2) as u32,
        1 + rng.below(8) as u32,
        1 + rng.below(2) as u32,
    );
    shape.nodes_per_socket = 1 + rng.below(2) as u32;
    shape.memory_mib_per_node = 1024 + 512 * rng.below(16);
    if rng.chance(40) {
        shape.hugepages_per_node =
            BTreeMap::from([(2048, 64 * rng.below(8)), (1 << 20, rng.below(3))]);
    }
    if rng.chance(20) {
        shape.isolated = vec![1];
    }
    shape.sibling_leak = rng.chance(20);
    Topology::regular(&shape)
}

#[derive(Debug, Default)]
struct Figures {
    offered: u64,
    refused_after_offer: u64,
    missed: u64,
    both_refused: u64,
    missed_by: BTreeMap<String, u64>,
    first_refusal: Option<String>,
}

/// One random run of claims and releases on `alloc`, counting both directions.
fn run(rng: &mut Rng, mut alloc: Allocator, host: &Inventory, steps: u32, f: &mut Figures) {
    let memory_mib: u64 = alloc.topology().nodes.iter().map(|n| n.memory_mib).sum();
    let max_half = (memory_mib / 512 / 3).clamp(1, 24);
    let max_cpus = (alloc.topology().cpus.len() as u64).clamp(1, 10);
    let provider = provider_inventory(&alloc, host, Guests::Kvm);
    let mut placement = PlacementSim::new(&provider);
    let mut held: Vec<(String, BTreeMap<String, u64>)> = Vec::new();
    let policy = alloc.policy().clone();
    for step in 0..steps {
        if !held.is_empty() && rng.chance(30) {
            let (vm, resources) = held.swap_remove(rng.below(held.len() as u64) as usize);
            alloc.release(&vm).expect("held");
            placement.remove(&resources);
            continue;
        }
        let flavor = random_flavor(rng, max_half, max_cpus);
        let request = placement_request(&flavor, &policy);
        let vm = format!("00000000-0000-4000-8000-{step:012x}");
        let offered = placement.offers(&request);
        let claimed = alloc.claim(
            &ClaimRequest {
                vm_uuid: vm.clone(),
                request_id: vm.clone(),
                flavor: flavor.clone(),
            },
            0,
        );
        match (offered, claimed) {
            (true, Ok(claim)) => {
                f.offered += 1;
                assert_eq!(
                    allocation(&alloc, &claim),
                    request.resources,
                    "{} under {policy:?}",
                    flavor.name()
                );
                placement.add(&request.resources);
                held.push((vm, request.resources));
            }
            (true, Err(refusal)) => {
                f.refused_after_offer += 1;
                if f.first_refusal.is_none() {
                    f.first_refusal = Some(format!(
                        "{} refused after Placement offered it: {} ({}); policy {policy:?}; \
                         Placement used {:?} of {:?}",
                        flavor.name(),
                        refusal.message,
                        refusal.limited_by,
                        placement.used,
                        provider.inventories
                    ));
                }
            }
            (false, Ok(claim)) => {
                f.missed += 1;
                // Which class (or trait) Placement stopped at.
                let why = request
                    .resources
                    .keys()
                    .find(|c| {
                        let one = PlacementRequest {
                            resources: BTreeMap::from([((*c).clone(), request.resources[*c])]),
                            required: vec![],
                            forbidden: vec![],
                            ..request.clone()
                        };
                        !placement.offers(&one)
                    })
                    .cloned()
                    .unwrap_or_else(|| "traits".into());
                *f.missed_by
                    .entry(format!("{}:{why}", claim.cpu_type))
                    .or_default() += 1;
                // The scheduler would not have sent it here.
                alloc.release(&claim.vm_uuid).expect("just claimed");
            }
            (false, Err(r)) => {
                assert_ne!(r.kind, RefusalKind::Invalid, "{}", r.message);
                f.both_refused += 1;
            }
        }
    }
}

/// The fleet test's invariant, offline: over the captured hosts and generated ones, random
/// policies and random sequences of claims and releases, every request Placement's
/// arithmetic accepts the allocator accepts too. Prints how often Placement offers nothing
/// while the node would have taken the guest, by CPU type and limiting class.
#[test]
fn placement_never_offers_what_the_allocator_refuses() {
    let mut rng = Rng(0x5eed_2026);
    // [captured fixtures, generated hosts]
    let mut figures = [Figures::default(), Figures::default()];
    for round in 0..400 {
        let (topo, host) = if round % 2 == 0 {
            let name = FIXTURES[(round / 2) % FIXTURES.len()];
            let inv = host(name);
            (Topology::from_inventory(&inv), inv)
        } else {
            (random_shape(&mut rng), host("qemu-1s8c-nosmt"))
        };
        let policy = random_policy(&mut rng, &topo);
        let Ok(alloc) = Allocator::new(topo, policy) else {
            continue;
        };
        run(&mut rng, alloc, &host, 60, &mut figures[round % 2]);
    }
    for (what, f) in ["captured hosts", "generated hosts"].iter().zip(&figures) {
        println!(
            "{what}: offered and claimed {}; refused after an offer {}; Placement offered \
             nothing while the node fit {} {:?}; both refused {}",
            f.offered, f.refused_after_offer, f.missed, f.missed_by, f.both_refused
        );
        assert_eq!(
            f.refused_after_offer,
            0,
            "{}",
            f.first_refusal.clone().unwrap_or_default()
        );
        assert!(f.offered > 500, "the run must place guests: {f:?}");
    }
}
