//! SCS facts derived from the inventory: which CPU brand code the node can put in a flavor
//! name, and whether it may serve flavors that promise ECC (no `u`) or security (no `i`).

use super::cpu::CpuInfo;
use super::memory::{Ecc, MemoryInfo};

/// A CPU brand as it appears in an SCS name: vendor letter, generation, frequency level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuBrand {
    pub vendor: char,
    pub generation: Option<u8>,
    /// Number of `h` suffixes (0-3), only when the all-core clock is known.
    pub frequency_level: Option<u8>,
}

impl CpuBrand {
    /// The name part, e.g. `z3`, `i2h`; the generation is left out when unknown.
    pub fn code(&self) -> String {
        let mut s = self.vendor.to_string();
        if let Some(g) = self.generation {
            s.push_str(&g.to_string());
        }
        for _ in 0..self.frequency_level.unwrap_or(0) {
            s.push('h');
        }
        s
    }
}

/// Brand from vendor, family and model. Generations follow scs-0100-v3: Intel 0 pre-Skylake …
/// 6 Granite Rapids; AMD 0 pre-Zen, 1 Naples … 5 Turin.
pub fn cpu_brand(cpu: &CpuInfo) -> (Option<CpuBrand>, String) {
    let (vendor, generation) = match cpu.vendor.as_str() {
        "GenuineIntel" => ('i', intel_generation(cpu.family, cpu.model, cpu.stepping)),
        "AuthenticAMD" => ('z', amd_generation(cpu.family, cpu.model)),
        "" if cpu.flags.is_empty() => return (None, "no x86 CPU identity in /proc/cpuinfo".into()),
        other => {
            return (
                None,
                format!("CPU vendor {other:?} has no SCS brand letter we can derive"),
            );
        }
    };
    let (frequency_level, freq_reason) = frequency_level(cpu.base_frequency_khz);
    let brand = CpuBrand {
        vendor,
        generation,
        frequency_level,
    };
    let gen_reason = match generation {
        Some(g) => format!(
            "family {:#x} model {:#x} stepping {} is generation {g}",
            cpu.family, cpu.model, cpu.stepping
        ),
        None => format!(
            "family {:#x} model {:#x} is not in the generation table",
            cpu.family, cpu.model
        ),
    };
    (Some(brand), format!("{gen_reason}; {freq_reason}"))
}

fn intel_generation(family: u32, model: u32, stepping: u32) -> Option<u8> {
    if family != 6 {
        return None;
    }
    Some(match model {
        // Skylake-SP shares model 0x55 with Cascade Lake (stepping 5-7) and Cooper Lake (10-11).
        0x55 if stepping >= 5 => 2,
        0x55 => 1,
        0x4e | 0x5e | 0x8e | 0x9e | 0xa5 | 0xa6 => 1,
        0x6a | 0x6c | 0x7d | 0x7e | 0x8c | 0x8d => 3,
        0x8f | 0xcf => 4,
        0xaf => 5,
        0xad | 0xae => 6,
        // Broadwell (0x47, 0x4f, 0x56) and everything numbered below Skylake client (0x4e).
        0x47 | 0x4f | 0x56 => 0,
        m if m < 0x4e => 0,
        _ => return None,
    })
}

fn amd_generation(family: u32, model: u32) -> Option<u8> {
    Some(match family {
        f if f < 0x17 => 0,
        0x17 if model < 0x30 => 1,
        0x17 => 2,
        0x19 if matches!(model, 0x10..=0x1f | 0x60..=0x7f | 0xa0..=0xaf) => 4,
        0x19 => 3,
        0x1a => 5,
        _ => return None,
    })
}

/// The standard's levels are about the all-core clock, which sysfs does not expose. The base
/// frequency is a lower bound of it, so a level derived from it is never too high.
fn frequency_level(base_khz: u64) -> (Option<u8>, String) {
    if base_khz == 0 {
        return (
            None,
            "all-core clock unknown (no cpufreq base_frequency), no h level claimed".into(),
        );
    }
    let ghz = base_khz as f64 / 1e6;
    let level = match ghz {
        g if g > 3.75 => 3,
        g if g > 3.25 => 2,
        g if g > 2.75 => 1,
        _ => 0,
    };
    (
        Some(level),
        format!("base clock {ghz:.2} GHz gives h level {level}"),
    )
}

/// May the node serve flavors without `i`? Not when a mitigation is off (the kernel says
/// "Vulnerable") or an SMT-exploitable issue (L1TF, MDS) stays open with SMT on.
pub fn serves_secure(cpu: &CpuInfo) -> (bool, String) {
    if let Some(v) = cpu.vulnerabilities.iter().find(|v| v.is_vulnerable()) {
        return (false, format!("{}: {}", v.name, v.status));
    }
    if cpu.smt_active
        && let Some(v) = cpu.vulnerabilities.iter().find(|v| v.smt_vulnerable())
    {
        return (false, format!("SMT on and {}: {}", v.name, v.status));
    }
    if cpu.vulnerabilities.is_empty() {
        return (
            false,
            "the kernel reports no vulnerability states, so mitigations cannot be confirmed".into(),
        );
    }
    (
        true,
        format!(
            "all {} vulnerability entries are mitigated or not affected",
            cpu.vulnerabilities.len()
        ),
    )
}

/// May the node serve flavors without `u`? Only when ECC is confirmed.
pub fn serves_ecc(memory: &MemoryInfo) -> (bool, String) {
    match memory.ecc {
        Ecc::Present => (true, memory.ecc_reason.clone()),
        Ecc::Absent => (false, format!("no ECC: {}", memory.ecc_reason)),
        Ecc::Unknown => (
            false,
            format!("ECC cannot be confirmed: {}", memory.ecc_reason),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu::Vulnerability;
    use super::*;

    fn cpu(vendor: &str, family: u32, model: u32, stepping: u32) -> CpuInfo {
        CpuInfo {
            vendor: vendor.into(),
            family,
            model,
            stepping,
            flags: vec!["fpu".into()],
            ..Default::default()
        }
    }

    #[test]
    fn brand_codes() {
        let code = |c: &CpuInfo| cpu_brand(c).0.map(|b| b.code());
        assert_eq!(
            code(&cpu("GenuineIntel", 6, 0x55, 4)).as_deref(),
            Some("i1")
        );
        assert_eq!(
            code(&cpu("GenuineIntel", 6, 0x55, 7)).as_deref(),
            Some("i2")
        );
        assert_eq!(
            code(&cpu("GenuineIntel", 6, 0x6a, 6)).as_deref(),
            Some("i3")
        );
        assert_eq!(
            code(&cpu("GenuineIntel", 6, 0x8f, 8)).as_deref(),
            Some("i4")
        );
        assert_eq!(
            code(&cpu("GenuineIntel", 6, 0xaf, 3)).as_deref(),
            Some("i5")
        );
        assert_eq!(
            code(&cpu("GenuineIntel", 6, 0xad, 1)).as_deref(),
            Some("i6")
        );
        assert_eq!(
            code(&cpu("GenuineIntel", 6, 0x4f, 1)).as_deref(),
            Some("i0")
        );
        assert_eq!(code(&cpu("GenuineIntel", 6, 0xb7, 1)).as_deref(), Some("i"));
        assert_eq!(
            code(&cpu("AuthenticAMD", 0x17, 0x01, 2)).as_deref(),
            Some("z1")
        );
        assert_eq!(
            code(&cpu("AuthenticAMD", 0x17, 0x31, 0)).as_deref(),
            Some("z2")
        );
        assert_eq!(
            code(&cpu("AuthenticAMD", 0x19, 0x01, 1)).as_deref(),
            Some("z3")
        );
        assert_eq!(
            code(&cpu("AuthenticAMD", 0x19, 0x11, 1)).as_deref(),
            Some("z4")
        );
        assert_eq!(
            code(&cpu("AuthenticAMD", 0x1a, 0x02, 1)).as_deref(),
            Some("z5")
        );
        assert_eq!(
            code(&cpu("AuthenticAMD", 0x15, 0x02, 1)).as_deref(),
            Some("z0")
        );
        assert_eq!(code(&cpu("HygonGenuine", 0x18, 0, 0)), None);
    }

    #[test]
    fn frequency_levels_from_base_clock() {
        let mut c = cpu("GenuineIntel", 6, 0x55, 7);
        for (khz, code) in [
            (2_700_000, "i2"),
            (2_800_000, "i2h"),
            (3_300_000, "i2hh"),
            (3_800_000, "i2hhh"),
        ] {
            c.base_frequency_khz = khz;
            assert_eq!(cpu_brand(&c).0.unwrap().code(), code, "{khz}");
        }
        c.base_frequency_khz = 0;
        let (brand, reason) = cpu_brand(&c);
        assert_eq!(brand.unwrap().frequency_level, None);
        assert!(reason.contains("all-core clock unknown"), "{reason}");
    }

    #[test]
    fn security_verdicts() {
        let vuln = |name: &str, status: &str| Vulnerability {
            name: name.into(),
            status: status.into(),
        };
        let mut c = cpu("GenuineIntel", 6, 0x4f, 1);
        assert!(!serves_secure(&c).0, "no data: cannot confirm");
        c.vulnerabilities = vec![
            vuln("meltdown", "Not affected"),
            vuln("spectre_v2", "Mitigation: Retpolines"),
        ];
        assert!(serves_secure(&c).0);
        c.vulnerabilities.push(vuln(
            "l1tf",
            "Mitigation: PTE Inversion; VMX: conditional cache flushes, SMT vulnerable",
        ));
        assert!(serves_secure(&c).0, "SMT off: L1TF is closed");
        c.smt_active = true;
        let (ok, reason) = serves_secure(&c);
        assert!(!ok);
        assert!(reason.starts_with("SMT on and l1tf"), "{reason}");
        c.smt_active = false;
        c.vulnerabilities.push(vuln(
            "mds",
            "Vulnerable: Clear CPU buffers attempted, no microcode",
        ));
        let (ok, reason) = serves_secure(&c);
        assert!(!ok);
        assert!(reason.starts_with("mds: Vulnerable"), "{reason}");
    }

    #[test]
    fn ecc_verdicts() {
        let m = |ecc| MemoryInfo {
            ecc,
            ecc_reason: "r".into(),
            ..Default::default()
        };
        assert!(serves_ecc(&m(Ecc::Present)).0);
        assert!(!serves_ecc(&m(Ecc::Absent)).0);
        assert!(
            serves_ecc(&m(Ecc::Unknown))
                .1
                .contains("cannot be confirmed")
        );
    }
}
