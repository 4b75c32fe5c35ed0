//! The node as OpenStack Placement should see it, and a flavor as Placement should be asked
//! for it. One derivation, from the allocator's own topology and policy, so that **whatever
//! Placement's arithmetic accepts (inventory − reserved − allocations, ratio, max_unit,
//! traits), the allocator's `claim` accepts too**. Where Placement's model is coarser than
//! the allocator's (SMT siblings, the shared pool carved by dedicated guests, the `L` ratio),
//! the view is conservative, never optimistic; `provider::tests` measures what that costs.
//!
//! The model, one resource provider per node (NUMA nodes are *not* nested providers: the
//! allocator chooses NUMA nodes itself, and a spanning guest's split cannot be asked for in a
//! node-independent request):
//!
//! | class | unit | total | reserved | ratio |
//! |---|---|---|---|---|
//! | `PCPU` | a whole core for a dedicated vCPU (`C` or `T`) | cores every thread of which may hold a dedicated vCPU; with a dynamic pool, of those also in the pool as many as let as many dedicated as `V` vCPUs fit | 0 | 1 |
//! | `VCPU` | one `V` vCPU's share of a thread | pool threads left when every `PCPU` takes its core out of the pool, plus the host's reserved threads | the host's reserved threads | 3 (SMT) or 5 (scs-0100) |
//! | `MEMORY_MB` | MiB of normal pages | MemTotal minus the hugepage pools | the host reserve; with several NUMA nodes and dedicated cores, all beyond the smallest such node (see `CpuSplit::numa_bound`) | 1 |
//! | `CUSTOM_HUGEPAGES_<size>` | one page | the pools | 0; bounded like `MEMORY_MB` when `C` or `T` use the size | 1 |
//! | `DISK_GB` | GiB (disks are made in GiB) | the store's filesystem | 0 | 1 |
//! | `CUSTOM_PGPU_<VENDOR>` | one passed-through GPU | the node's GPUs of that vendor | 0 | 1 |
//!
//! A `T` vCPU takes one `PCPU` (a core) although it pins only a thread: after releases a
//! node's `T` threads may sit one per core, and each such core is lost to `C`; counting a core
//! per dedicated vCPU is the bound that holds for every mix. QEMU's overhead is in the
//! request (its model is a function of the flavor and the policy), not in the totals, and so
//! is the rounding of a dedicated guest's RAM to whole units per vCPU (`memory_units`).
//!
//! For the reporter: send `provider_inventory` as the provider's inventories and traits (it
//! changes only with the node or its policy), and keep each consumer's allocation on the
//! provider equal to `allocation(alloc, claim)`; a scheduler that allocated
//! `placement_request(flavor, policy).resources` under the same policy wrote exactly that.
//! Release the claim before the allocation goes: the other order lets Placement offer what
//! the allocator still holds.

use std::collections::{BTreeMap, BTreeSet};

use super::allocator::Allocator;
use super::claim::Claim;
use super::ledger::Need;
use super::policy::{Policy, Pools};
use super::topology::Topology;
use crate::flavor::{CpuType, FlavorSpec, GpuKind, GpuVendor, Hypervisor};
use crate::host::Inventory;
use crate::host::scheduler::{
    ResourceInventory, SCS_TRAITS_VERSION, SHARED_RATIO_NO_SMT, cpu_flag_traits, page_size_label,
};

pub const PCPU: &str = "PCPU";
pub const VCPU: &str = "VCPU";
pub const MEMORY_MB: &str = "MEMORY_MB";
pub const DISK_GB: &str = "DISK_GB";

/// Set when the node cannot run guests at all (Nova's scheduler forbids it in every request).
pub const COMPUTE_STATUS_DISABLED: &str = "COMPUTE_STATUS_DISABLED";

/// Image formats the image store takes (`storage::images`): raw and qcow2.
const IMAGE_TYPE_TRAITS: [&str; 2] = ["COMPUTE_IMAGE_TYPE_QCOW2", "COMPUTE_IMAGE_TYPE_RAW"];

/// What a guest sees of the CPU under TCG: QEMU's `qemu64` model, whatever the host has.
const QEMU64_CPU_TRAITS: [&str; 4] = [
    "HW_CPU_X86_MMX",
    "HW_CPU_X86_SSE",
    "HW_CPU_X86_SSE2",
    "HW_CPU_X86_SSE3",
];

/// How guests run on this node: the daemon's emulation choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guests {
    /// KVM, the host CPU passed through.
    Kvm,
    /// TCG: an emulated `qemu64` CPU.
    Emulated,
    /// Neither (KVM broken and emulation forbidden): the provider is `COMPUTE_STATUS_DISABLED`.
    Unavailable,
}

/// What Placement should hold for this node's resource provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderInventory {
    /// Classes with a total of at least 1 (Placement refuses 0), by class name.
    pub inventories: Vec<ResourceInventory>,
    /// Sorted, no duplicates.
    pub traits: Vec<String>,
}

/// What Placement should hold for this node: from the allocator's own topology and policy,
/// independent of the claims held (so it changes only when the node or its policy does).
/// `host` gives the CPU flags and the store's size in bytes. `reserved` equals `total` where
/// the host keeps everything of a class: reporting that needs Placement microversion 1.26.
pub fn provider_inventory(
    alloc: &Allocator,
    host: &Inventory,
    guests: Guests,
) -> ProviderInventory {
    let topo = alloc.topology();
    let pools = alloc.pools();
    let split = CpuSplit::new(topo, pools);
    let mut out = Vec::new();
    let mut push = |inv: ResourceInventory| {
        if inv.total >= 1 {
            out.push(inv);
        }
    };
    push(ResourceInventory::new(PCPU, split.pcpu_cores, 1.0));
    let vcpu_total = split.pool_threads + split.host_threads;
    push(ResourceInventory {
        reserved: split.host_threads,
        // One guest may have more vCPUs than the pool has threads: only the ratio binds.
        max_unit: (split.pool_threads * pools.v_ratio).max(1),
        ..ResourceInventory::new(VCPU, vcpu_total, pools.v_ratio as f64)
    });
    let memory_total: u64 = topo.nodes.iter().map(|n| n.memory_mib).sum();
    // Per node, as the ledger starts: a node's share of the reserve beyond its memory is lost.
    let usable: Vec<u64> = topo
        .nodes
        .iter()
        .zip(&pools.reserved_mib)
        .map(|(n, r)| n.memory_mib.saturating_sub(*r))
        .collect();
    let memory_usable = usable
        .iter()
        .sum::<u64>()
        .min(split.numa_bound(&usable).unwrap_or(u64::MAX));
    push(ResourceInventory {
        reserved: memory_total - memory_usable,
        max_unit: memory_usable.max(1),
        ..ResourceInventory::new(MEMORY_MB, memory_total, 1.0)
    });
    let sizes: BTreeSet<u64> = topo
        .nodes
        .iter()
        .flat_map(|n| n.hugepages.keys().copied())
        .collect();
    for kib in sizes {
        let per_node: Vec<u64> = topo
            .nodes
            .iter()
            .map(|n| n.hugepages.get(&kib).copied().unwrap_or(0))
            .collect();
        let total: u64 = per_node.iter().sum();
        // Only dedicated guests' pages are bound to their CPUs' nodes.
        let dedicated_pages = [CpuType::DedicatedCore, CpuType::DedicatedThread]
            .into_iter()
            .any(|t| alloc.policy().hugepage_kib(t) == Some(kib));
        let usable = if dedicated_pages {
            total.min(split.numa_bound(&per_node).unwrap_or(u64::MAX))
        } else {
            total
        };
        push(ResourceInventory {
            reserved: total - usable,
            max_unit: usable.max(1),
            ..ResourceInventory::new(&hugepage_class(kib), total, 1.0)
        });
    }
    if let Some(bytes) = host.storage_disk_bytes {
        // GiB, the unit disks are made in; never more than the allocator counts (10^9 bytes).
        let gib = (bytes >> 30).min(topo.facts.disk_gb.unwrap_or(u64::MAX));
        push(ResourceInventory::new(DISK_GB, gib, 1.0));
    }
    let mut gpus: BTreeMap<String, u64> = BTreeMap::new();
    // Only GPUs that can be passed through: the rest cannot be delivered.
    for gpu in topo.facts.gpus.iter().filter(|g| g.passthrough.ready()) {
        if let Some(class) = gpu_class(gpu.vendor) {
            *gpus.entry(class).or_default() += 1;
        }
    }
    for (class, n) in gpus {
        push(ResourceInventory::new(&class, n, 1.0));
    }
    out.sort_by(|a, b| a.resource_class.cmp(&b.resource_class));
    ProviderInventory {
        inventories: out,
        traits: traits(alloc, host, guests),
    }
}

/// The static split of the CPUs Placement sees. The allocator carves dedicated CPUs out of the
/// shared pool on demand (with no static `dedicated_cpus`/`shared_cpus`); Placement adds
/// `PCPU` and `VCPU` up, so they must be disjoint: of the cores that could serve either, so
/// many become `PCPU` that as many dedicated as `V` vCPUs fit (5 or 6 of 7 cores), and `VCPU`
/// is what the pool keeps when every `PCPU` in use has taken the cores with the most pool
/// threads. Set a static split in `[placement]` to choose it yourself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CpuSplit {
    pcpu_cores: u64,
    pool_threads: u64,
    host_threads: u64,
    /// Node indexes with a core that may hold a dedicated vCPU.
    dedicated_nodes: BTreeSet<usize>,
    nodes: usize,
}

impl CpuSplit {
    fn new(topo: &Topology, pools: &Pools) -> CpuSplit {
        let ded = |t: &u32| pools.dedicated_ok[*t as usize];
        let shared = |t: &u32| pools.shared_ok[*t as usize];
        // A `C` vCPU needs every thread of its core; a `T` vCPU may take a lone thread beside
        // the host's, but a core is the unit both can always get.
        let (mut own, mut both) = (0u64, 0u64);
        let mut dedicated_nodes = BTreeSet::new();
        for core in &topo.cores {
            if !core.threads.is_empty() && core.threads.iter().all(ded) {
                dedicated_nodes.insert(core.node);
                if core.threads.iter().any(shared) {
                    both += 1;
                } else {
                    own += 1;
                }
            }
        }
        // Split the cores that serve either kind so that as many dedicated as `V` vCPUs fit: a
        // dedicated vCPU takes a core, a `V` vCPU 1/k of one (k = V vCPUs per thread × threads
        // per core: 6 with SMT, 5 without). Keep a core for each kind while there are two.
        let threads = topo
            .cores
            .iter()
            .map(|c| c.threads.iter().filter(|t| shared(t)).count() as u64)
            .max()
            .unwrap_or(1)
            .max(1);
        let k = pools.v_ratio * threads;
        // Rounded to the nearest core.
        let mut split = (both * k + k.div_ceil(2)) / (k + 1);
        if both >= 2 {
            split = split.clamp(1, both - 1);
        }
        let pcpu_cores = own + split;
        // What one dedicated vCPU's core may take out of the pool, largest first.
        let mut carve: Vec<u64> = topo
            .cores
            .iter()
            .map(|c| c.threads.iter().filter(|t| ded(t) && shared(t)).count() as u64)
            .filter(|&n| n > 0)
            .collect();
        carve.sort_unstable_by(|a, b| b.cmp(a));
        let carved: u64 = carve.iter().take(pcpu_cores as usize).sum();
        let pool: u64 = pools.shared_ok.iter().filter(|&&ok| ok).count() as u64;
        CpuSplit {
            pcpu_cores,
            pool_threads: pool.saturating_sub(carved),
            host_threads: pools.reserved.len() as u64,
            dedicated_nodes,
            nodes: topo.nodes.len(),
        }
    }

    /// What Placement may hand out of a per-node quantity (`per_node`, by node index) when
    /// dedicated guests take it: their memory must come from the nodes of their CPUs, while
    /// floating guests' memory goes to whichever node has most free, so in the worst case
    /// every allocation so far sits on the one node whose cores are still free. Bounding the
    /// total by the smallest node that can hold dedicated CPUs makes each such node able to
    /// take any guest Placement still offers. `None`: one NUMA node, or no dedicated cores.
    fn numa_bound(&self, per_node: &[u64]) -> Option<u64> {
        if self.nodes < 2 || self.pcpu_cores == 0 {
            return None;
        }
        self.dedicated_nodes.iter().map(|&i| per_node[i]).min()
    }
}

/// `CUSTOM_HUGEPAGES_2M`, `CUSTOM_HUGEPAGES_1G`: the allocator's refusal names too.
fn hugepage_class(kib: u64) -> String {
    format!("CUSTOM_HUGEPAGES_{}", page_size_label(kib))
}

/// `CUSTOM_PGPU_NVIDIA` for SCS GPU vendor letter `N`: one class per vendor because the
/// allocator passes through any free GPU of the vendor a `G` flavor names.
fn gpu_class(vendor: char) -> Option<String> {
    GpuVendor::ALL
        .into_iter()
        .find(|v| v.letter() == vendor)
        .map(|v| format!("CUSTOM_PGPU_{}", v.word().to_ascii_uppercase()))
}

/// Traits telling which policy the node applies, so a request computed for one policy only
/// lands where the same arithmetic holds: the page size behind each CPU type's RAM, the
/// overhead model and the `L` ratio.
fn policy_traits(policy: &Policy) -> Vec<String> {
    let mut out: Vec<String> = CpuType::ALL
        .into_iter()
        .map(|t| pages_trait(policy, t))
        .collect();
    out.push(overhead_trait(policy));
    out.push(crowded_trait(policy));
    out
}

/// `CUSTOM_HVAGENT_PAGES_C_1G`, `CUSTOM_HVAGENT_PAGES_V_4K`.
fn pages_trait(policy: &Policy, cpu_type: CpuType) -> String {
    let kib = policy.hugepage_kib(cpu_type).unwrap_or(4);
    format!(
        "CUSTOM_HVAGENT_PAGES_{}_{}",
        cpu_type.letter(),
        page_size_label(kib)
    )
}

/// `CUSTOM_HVAGENT_OVERHEAD_128M_8M_10PM`: fixed MiB, MiB per vCPU, per mille of RAM.
fn overhead_trait(policy: &Policy) -> String {
    let o = policy.overhead;
    format!(
        "CUSTOM_HVAGENT_OVERHEAD_{}M_{}M_{}PM",
        o.fixed_mib, o.per_vcpu_mib, o.ram_permille
    )
}

/// `CUSTOM_HVAGENT_L_RATIO_8`: `L` vCPUs per thread.
fn crowded_trait(policy: &Policy) -> String {
    format!("CUSTOM_HVAGENT_L_RATIO_{}", policy.crowded_ratio.max(1))
}

/// The firmware guests can get here, in os-traits' names as Nova reports them, so that an image
/// asking for Secure Boot or a TPM is sent where Create can give it. A vTPM is swtpm's TPM 2.0
/// behind either interface.
fn firmware_traits(firmware: &crate::host::FirmwareFacts) -> Vec<String> {
    let mut out = Vec::new();
    if firmware.secure_boot {
        out.push("COMPUTE_SECURITY_UEFI_SECURE_BOOT".to_string());
    }
    if firmware.vtpm {
        out.extend(
            [
                "COMPUTE_SECURITY_TPM_2_0",
                "COMPUTE_SECURITY_TPM_TIS",
                "COMPUTE_SECURITY_TPM_CRB",
            ]
            .map(String::from),
        );
    }
    out
}

/// The SCS brand traits of a node: every code a flavor it serves may name. Vendor `i`,
/// generation 1, level 2 gives `CUSTOM_SCS_CPU_I`, `_IH`, `_IHH`, `_I1`, `_I1H`, `_I1HH`.
fn brand_traits(brand: &crate::host::CpuBrand) -> Vec<String> {
    let vendor = brand.vendor.to_ascii_uppercase();
    let mut out = Vec::new();
    for level in 0..=brand.frequency_level.unwrap_or(0) {
        let h = "H".repeat(usize::from(level));
        out.push(format!("CUSTOM_SCS_CPU_{vendor}{h}"));
        if let Some(g) = brand.generation {
            out.push(format!("CUSTOM_SCS_CPU_{vendor}{g}{h}"));
        }
    }
    out
}

fn traits(alloc: &Allocator, host: &Inventory, guests: Guests) -> Vec<String> {
    let facts = &alloc.topology().facts;
    let mut out: Vec<String> = match guests {
        Guests::Emulated => QEMU64_CPU_TRAITS.iter().map(|t| t.to_string()).collect(),
        Guests::Kvm => cpu_flag_traits(&host.cpu),
        Guests::Unavailable => vec![COMPUTE_STATUS_DISABLED.into()],
    };
    // No HW_CPU_HYPERTHREADING: Nova turns `hw:cpu_thread_policy=isolate` into a forbidden
    // HW_CPU_HYPERTHREADING, but here every dedicated vCPU counts a whole core and a `C` guest
    // never shares one, so an SMT node keeps `isolate` and must not be excluded for it.
    out.extend(IMAGE_TYPE_TRAITS.iter().map(|t| t.to_string()));
    out.push("COMPUTE_NODE".into());
    out.push(SCS_TRAITS_VERSION.into());
    // The facts admission checks, exactly: a trait here is a promise `claim` keeps.
    for (holds, name) in [
        (facts.secure.holds, "CUSTOM_SCS_SECURE"),
        (facts.ecc.holds, "CUSTOM_SCS_ECC"),
        (facts.hwv.holds, "CUSTOM_SCS_HWV"),
        (facts.serves_infiniband(), "CUSTOM_SCS_IB"),
    ] {
        if holds {
            out.push(name.into());
        }
    }
    out.push(if facts.kvm.holds {
        "CUSTOM_SCS_HYPERVISOR_KVM".into()
    } else {
        "CUSTOM_SCS_EMULATION_ONLY".into()
    });
    if let Some(brand) = &facts.brand {
        out.extend(brand_traits(brand));
    }
    for class in &facts.disk_classes {
        out.push(format!("CUSTOM_SCS_DISK_{}", class.to_ascii_uppercase()));
    }
    for gpu in facts.gpus.iter().filter(|g| g.passthrough.ready()) {
        out.push(format!("CUSTOM_SCS_GPU_{}", gpu.vendor));
    }
    out.extend(firmware_traits(&host.hypervisor.firmware));
    out.extend(policy_traits(alloc.policy()));
    // Nova's trait for a disabled compute service: the scheduler's pre-filter leaves the
    // node out while it drains.
    if alloc.is_draining() {
        out.push(COMPUTE_STATUS_DISABLED.into());
    }
    out.sort();
    out.dedup();
    out
}

/// The CPU resources of `vcpus` vCPUs of `cpu_type`: a whole core (`PCPU`) per dedicated vCPU;
/// a `V` vCPU's share (`VCPU`) per `V` vCPU; per `L` vCPU the share of the node that carries
/// the most `V` vCPUs per thread (5, scs-0100 without SMT) divided by the `L` ratio, rounded
/// up over the guest: never less than what the allocator's pool counts on any node.
fn cpu_resources(cpu_type: CpuType, vcpus: u32, crowded_ratio: u32) -> (&'static str, u64) {
    let n = u64::from(vcpus);
    match cpu_type {
        CpuType::DedicatedCore | CpuType::DedicatedThread => (PCPU, n),
        CpuType::Shared => (VCPU, n),
        CpuType::Crowded => (
            VCPU,
            (n * SHARED_RATIO_NO_SMT as u64).div_ceil(u64::from(crowded_ratio.max(1))),
        ),
    }
}

/// Guest RAM as Placement counts it (MiB, or pages of a hugepage class). A dedicated guest
/// that spans NUMA nodes gets memory in proportion to its vCPUs on each, and the allocator
/// sizes a node's part as `ceil(units / vCPUs)` per vCPU there: counting `vCPUs ×
/// ceil(units / vCPUs)` (at most `vCPUs − 1` more: a few MiB, or pages where a flavor has fewer
/// pages than vCPUs) keeps Placement from offering a split the allocator cannot make.
fn memory_units(dedicated: bool, vcpus: u32, units: u64) -> u64 {
    let n = u64::from(vcpus.max(1));
    if dedicated {
        units.div_ceil(n) * n
    } else {
        units
    }
}

/// What Placement should hold for one consumer (the VM UUID) given the agent's claim:
/// resource class → amount. Equal to [`placement_request`]'s `resources` for the claim's
/// flavor under the policy it was made with, so a scheduler's allocation that matches is left
/// alone.
pub fn allocation(alloc: &Allocator, claim: &Claim) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let (class, n) = cpu_resources(
        claim.cpu_type(),
        claim.vcpus.len() as u32,
        alloc.policy().crowded_ratio,
    );
    out.insert(class.to_string(), n);
    let dedicated = claim.vcpus.iter().any(|v| v.cpu.is_some());
    let n = claim.vcpus.len() as u32;
    let mut normal = 0;
    let mut huge: BTreeMap<u64, u64> = BTreeMap::new();
    for share in &claim.memory {
        if share.huge() {
            *huge.entry(share.page_size_kib).or_default() += share.pages();
        } else {
            normal += share.mib;
        }
    }
    for (kib, pages) in huge {
        out.insert(hugepage_class(kib), memory_units(dedicated, n, pages));
    }
    out.insert(
        MEMORY_MB.into(),
        memory_units(dedicated, n, normal) + claim.overhead.mib,
    );
    if claim.disk_gb > 0 {
        out.insert(DISK_GB.into(), claim.disk_gb);
    }
    let facts = &alloc.topology().facts;
    for address in &claim.gpus {
        if let Some(class) = facts
            .gpus
            .iter()
            .find(|g| &g.pci_address == address)
            .and_then(|g| gpu_class(g.vendor))
        {
            *out.entry(class).or_default() += 1;
        }
    }
    out
}

/// A flavor as a Placement request (and as the Nova extra_specs asking for the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest {
    pub resources: BTreeMap<String, u64>,
    /// Sorted.
    pub required: Vec<String>,
    /// Sorted.
    pub forbidden: Vec<String>,
    /// `resources=A:1,B:2&required=T1,T2,!F1`, to append to `/allocation_candidates?`
    /// (forbidden traits as `!T` need Placement microversion 1.22 or later).
    pub query: String,
    /// Nova flavor extra_specs asking for the same: `resources:<CLASS>`, `hw:cpu_policy`,
    /// `hw:cpu_thread_policy`, `hw:mem_page_size`, `trait:<T>=required|forbidden`.
    pub extra_specs: BTreeMap<String, String>,
}

/// The Placement request for a flavor under `policy`, the `[placement]` policy every node of
/// the cloud applies (hugepages per CPU type, overhead model and `L` ratio enter the amounts;
/// the request requires the traits naming them, so a node with another policy is not offered).
/// Node-independent, like a Nova flavor's. A flavor no node can serve (a `g` GPU, a named GPU
/// model, network disks, another hypervisor) requires a trait no node reports.
pub fn placement_request(spec: &FlavorSpec, policy: &Policy) -> PlacementRequest {
    let need = Need::new(spec, policy);
    let mut resources = BTreeMap::new();
    let (class, n) = cpu_resources(spec.cpu_type, spec.cpus, policy.crowded_ratio);
    resources.insert(class.to_string(), n);
    let page_kib = policy.hugepage_kib(spec.cpu_type);
    let dedicated = matches!(
        spec.cpu_type,
        CpuType::DedicatedCore | CpuType::DedicatedThread
    );
    let ram = memory_units(dedicated, spec.cpus, need.ram_units());
    match page_kib {
        Some(kib) => {
            resources.insert(hugepage_class(kib), ram);
            resources.insert(MEMORY_MB.into(), need.overhead_mib);
        }
        None => {
            resources.insert(MEMORY_MB.into(), ram + need.overhead_mib);
        }
    }
    if need.disk_gb > 0 {
        resources.insert(DISK_GB.into(), need.disk_gb);
    }
    let mut required = vec![pages_trait(policy, spec.cpu_type), overhead_trait(policy)];
    if spec.cpu_type == CpuType::Crowded {
        required.push(crowded_trait(policy));
    }
    required.extend(admission_traits(spec));
    if let Some(gpu) = &spec.gpu
        && gpu.kind == GpuKind::Passthrough
        && let Some(class) = gpu_class(gpu.vendor.letter())
    {
        resources.insert(class, 1);
    }
    required.sort();
    required.dedup();
    let forbidden = vec![COMPUTE_STATUS_DISABLED.to_string()];
    let query = format!(
        "resources={}&required={}",
        resources
            .iter()
            .map(|(c, n)| format!("{c}:{n}"))
            .collect::<Vec<_>>()
            .join(","),
        required
            .iter()
            .cloned()
            .chain(forbidden.iter().map(|t| format!("!{t}")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut extra_specs: BTreeMap<String, String> = resources
        .iter()
        .map(|(c, n)| (format!("resources:{c}"), n.to_string()))
        .collect();
    extra_specs.insert(
        "hw:cpu_policy".into(),
        if dedicated { "dedicated" } else { "shared" }.into(),
    );
    if dedicated {
        extra_specs.insert(
            "hw:cpu_thread_policy".into(),
            if spec.cpu_type == CpuType::DedicatedCore {
                "isolate"
            } else {
                "prefer"
            }
            .into(),
        );
    }
    if let Some(kib) = page_kib {
        extra_specs.insert("hw:mem_page_size".into(), nova_page_size(kib));
    }
    for t in &required {
        extra_specs.insert(format!("trait:{t}"), "required".into());
    }
    for t in &forbidden {
        extra_specs.insert(format!("trait:{t}"), "forbidden".into());
    }
    PlacementRequest {
        resources,
        required,
        forbidden,
        query,
        extra_specs,
    }
}

impl PlacementRequest {
    /// As `FlavorService/PlacementRequest` answers it and `hvctl flavor placement-request`
    /// prints it, for the flavor with canonical name `name`.
    pub fn into_proto(self, name: String) -> hvagent_proto::v1::PlacementRequestResponse {
        hvagent_proto::v1::PlacementRequestResponse {
            name,
            resources: self.resources,
            required: self.required,
            forbidden: self.forbidden,
            query: self.query,
            extra_specs: self.extra_specs,
        }
    }
}

/// Nova's `hw:mem_page_size` spelling: `2MB`, `1GB`, else KiB.
fn nova_page_size(kib: u64) -> String {
    match page_size_label(kib) {
        label if label.ends_with('K') => kib.to_string(),
        label => format!("{label}B"),
    }
}

/// The traits standing for the promises admission checks (`admission::check`), one for one.
fn admission_traits(spec: &FlavorSpec) -> Vec<String> {
    let mut out = Vec::new();
    if !spec.insecure {
        out.push("CUSTOM_SCS_SECURE".into());
    }
    if spec.ecc {
        out.push("CUSTOM_SCS_ECC".into());
    }
    if let Some(kind) = spec.disk.and_then(|d| d.kind) {
        // `n` (network) is never a local class: no node reports CUSTOM_SCS_DISK_N.
        out.push(format!(
            "CUSTOM_SCS_DISK_{}",
            kind.letter().to_ascii_uppercase()
        ));
    }
    match spec.hypervisor {
        None => {}
        Some(Hypervisor::Kvm) => out.push("CUSTOM_SCS_HYPERVISOR_KVM".into()),
        Some(other) => out.push(format!(
            "CUSTOM_SCS_HYPERVISOR_{}",
            other.code().to_ascii_uppercase()
        )),
    }
    if spec.hwv {
        out.push("CUSTOM_SCS_HWV".into());
    }
    if let Some(brand) = &spec.cpu_brand {
        out.push(format!(
            "CUSTOM_SCS_CPU_{}{}{}",
            brand.vendor.letter().to_ascii_uppercase(),
            brand.generation.map(|g| g.to_string()).unwrap_or_default(),
            "H".repeat(usize::from(brand.frequency_level))
        ));
    }
    if let Some(gpu) = &spec.gpu {
        let v = gpu.vendor.letter();
        if gpu.kind == GpuKind::Virtual {
            out.push(format!("CUSTOM_SCS_VGPU_{v}"));
        } else if gpu.generation.is_some() || gpu.compute_units.is_some() || gpu.vram_gib.is_some()
        {
            // PCI ids cannot prove a GPU model: no node reports this.
            out.push(format!("CUSTOM_SCS_GPU_{v}_MODEL"));
        } else {
            out.push(format!("CUSTOM_SCS_GPU_{v}"));
        }
    }
    if spec.ib {
        out.push("CUSTOM_SCS_IB".into());
    }
    out
}

#[cfg(test)]
mod tests;
