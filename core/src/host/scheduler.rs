//! The vocabulary of the scheduler's view of the node, shaped like OpenStack Placement: the
//! resource inventory record, hugepage class labels, the `V` ratios of scs-0100 and the
//! os-traits names of CPU flags. What the node reports is derived in
//! `crate::placement::provider`, from the allocator's own topology and policy.

use super::CpuInfo;

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
    /// `total` of `class`, nothing reserved, any amount from 1 to `total` in steps of 1.
    pub fn new(class: &str, total: u64, allocation_ratio: f64) -> Self {
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

/// The os-traits `HW_CPU_X86_*` names of the host CPU's flags: what a guest sees through
/// `host-passthrough`.
pub fn cpu_flag_traits(cpu: &CpuInfo) -> Vec<String> {
    X86_FLAG_TRAITS
        .iter()
        .filter(|(flag, _)| cpu.has_flag(flag))
        .map(|(_, name)| format!("HW_CPU_X86_{name}"))
        .collect()
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
