//! The scheduler's view of the node, shaped like OpenStack Placement: resource inventories and
//! a compact trait set (os-traits names plus versioned `CUSTOM_SCS_*` traits).

use super::Inventory;

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInventory {
    pub resource_class: String,
    pub total: u64,
    pub reserved: u64,
    pub allocation_ratio: f64,
    pub min_unit: u64,
    pub max_unit: u64,
    pub step_size: u64,
}

impl ResourceInventory {
    fn new(class: &str, total: u64, allocation_ratio: f64) -> Self {
        Self {
            resource_class: class.to_string(),
            total,
            reserved: 0,
            allocation_ratio,
            min_unit: 1,
            max_unit: total,
            step_size: 1,
        }
    }
}

/// scs-0100-v3 for `V`: at most 3 vCPUs per hardware thread with SMT on, 5 per core without.
pub const SHARED_RATIO_SMT: f64 = 3.0;
pub const SHARED_RATIO_NO_SMT: f64 = 5.0;

/// Inventories. VCPU and PCPU are both drawn from the online, non-isolated CPUs until a
/// placement policy splits them: a scheduler must treat them as alternatives, not a sum.
pub fn inventories(inv: &Inventory) -> Vec<ResourceInventory> {
    let cpus = inv
        .cpu
        .cpus
        .iter()
        .filter(|c| c.online && !c.isolated)
        .count() as u64;
    let ratio = if inv.cpu.smt_active {
        SHARED_RATIO_SMT
    } else {
        SHARED_RATIO_NO_SMT
    };
    let mut out = vec![
        ResourceInventory {
            // A single VM may not have more vCPUs than the node has threads.
            max_unit: cpus,
            ..ResourceInventory::new("VCPU", cpus, ratio)
        },
        ResourceInventory::new("PCPU", cpus, 1.0),
        ResourceInventory::new("MEMORY_MB", inv.memory.total_bytes >> 20, 1.0),
    ];
    if let Some(disk) = inv.storage_disk_bytes {
        out.push(ResourceInventory::new("DISK_GB", disk / 1_000_000_000, 1.0));
    }
    for pool in inv.memory.hugepages.iter().filter(|p| p.total > 0) {
        out.push(ResourceInventory::new(
            &format!("CUSTOM_HUGEPAGES_{}", page_size_label(pool.page_size_kib)),
            pool.total,
            1.0,
        ));
    }
    out
}

/// `2048` → `2M`, `1048576` → `1G`.
pub fn page_size_label(kib: u64) -> String {
    if kib >= 1 << 20 && kib.is_multiple_of(1 << 20) {
        format!("{}G", kib >> 20)
    } else if kib >= 1 << 10 && kib.is_multiple_of(1 << 10) {
        format!("{}M", kib >> 10)
    } else {
        format!("{kib}K")
    }
}

/// /proc/cpuinfo flag → os-traits `HW_CPU_X86_*` suffix.
const X86_FLAG_TRAITS: &[(&str, &str)] = &[
    ("mmx", "MMX"),
    ("sse", "SSE"),
    ("sse2", "SSE2"),
    ("pni", "SSE3"),
    ("ssse3", "SSSE3"),
    ("sse4_1", "SSE41"),
    ("sse4_2", "SSE42"),
    ("sse4a", "SSE4A"),
    ("avx", "AVX"),
    ("avx2", "AVX2"),
    ("avx512f", "AVX512F"),
    ("avx512cd", "AVX512CD"),
    ("avx512bw", "AVX512BW"),
    ("avx512dq", "AVX512DQ"),
    ("avx512vl", "AVX512VL"),
    ("avx512_vnni", "AVX512VNNI"),
    ("avx512vbmi", "AVX512VBMI"),
    ("avx512ifma", "AVX512IFMA"),
    ("avx512_vbmi2", "AVX512VBMI2"),
    ("avx512_bitalg", "AVX512BITALG"),
    ("avx512_vpopcntdq", "AVX512VPOPCNTDQ"),
    ("gfni", "AVX512GFNI"),
    ("vaes", "AVX512VAES"),
    ("vpclmulqdq", "AVX512VPCLMULQDQ"),
    ("fma", "FMA3"),
    ("fma4", "FMA4"),
    ("f16c", "F16C"),
    ("pclmulqdq", "CLMUL"),
    ("abm", "ABM"),
    ("bmi1", "BMI"),
    ("bmi2", "BMI2"),
    ("tbm", "TBM"),
    ("aes", "AESNI"),
    ("sha_ni", "SHA"),
    ("xop", "XOP"),
    ("rtm", "RTM"),
    ("sgx", "SGX"),
    ("vmx", "VMX"),
    ("svm", "SVM"),
    ("pdpe1gb", "PDPE1GB"),
    ("stibp", "STIBP"),
    ("ssbd", "SSBD"),
];

/// Marks the version of the `CUSTOM_SCS_*` trait vocabulary below.
pub const SCS_TRAITS_VERSION: &str = "CUSTOM_SCS_TRAITS_V1";

pub fn traits(inv: &Inventory) -> Vec<String> {
    let mut out: Vec<String> = X86_FLAG_TRAITS
        .iter()
        .filter(|(flag, _)| inv.cpu.has_flag(flag))
        .map(|(_, name)| format!("HW_CPU_X86_{name}"))
        .collect();
    if inv.cpu.smt_active {
        out.push("HW_CPU_HYPERTHREADING".into());
    }
    out.push(SCS_TRAITS_VERSION.into());
    if let Some(brand) = &inv.scs.cpu_brand {
        out.push(format!(
            "CUSTOM_SCS_CPU_{}",
            brand.vendor.to_ascii_uppercase()
        ));
        if brand.generation.is_some() {
            out.push(format!(
                "CUSTOM_SCS_CPU_{}",
                brand.code().to_ascii_uppercase()
            ));
        }
    }
    if inv.scs.serves_secure {
        out.push("CUSTOM_SCS_SECURE".into());
    }
    if inv.scs.serves_ecc {
        out.push("CUSTOM_SCS_ECC".into());
    }
    if inv.scs.serves_hwv {
        out.push("CUSTOM_SCS_HWV".into());
    }
    out.push(
        if inv.hypervisor.kvm.state == super::kvm::KvmState::Usable {
            "CUSTOM_SCS_HYPERVISOR_KVM".into()
        } else {
            "CUSTOM_SCS_EMULATION_ONLY".into()
        },
    );
    for class in &inv.scs.local_disk_classes {
        out.push(format!("CUSTOM_SCS_DISK_{}", class.to_ascii_uppercase()));
    }
    for vendor in inv.gpus.iter().filter_map(|g| g.scs_vendor()) {
        out.push(format!("CUSTOM_SCS_GPU_{vendor}"));
    }
    if !inv.infiniband.is_empty() {
        out.push("CUSTOM_SCS_IB".into());
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_labels() {
        assert_eq!(page_size_label(2048), "2M");
        assert_eq!(page_size_label(1 << 20), "1G");
        assert_eq!(page_size_label(64), "64K");
        assert_eq!(page_size_label(1536), "1536K");
    }

    #[test]
    fn flag_table_has_no_duplicates() {
        let mut flags: Vec<_> = X86_FLAG_TRAITS.iter().map(|(f, _)| *f).collect();
        let mut names: Vec<_> = X86_FLAG_TRAITS.iter().map(|(_, n)| *n).collect();
        flags.sort();
        names.sort();
        let (nf, nn) = (flags.len(), names.len());
        flags.dedup();
        names.dedup();
        assert_eq!((flags.len(), names.len()), (nf, nn));
    }
}
