//! What the guest sees of itself, from /proc text: pure parsers, so that they are tested on
//! captured text and the probe's report says exactly what the guest kernel said.

/// CPU facts from /proc/cpuinfo: logical CPUs, the first one's model and flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cpu {
    pub vcpus: u32,
    pub model: String,
    pub rdrand: bool,
    pub rdseed: bool,
    /// Hardware virtualization for nested guests (Intel VMX or AMD SVM).
    pub hwv: bool,
    pub flags: Vec<String>,
}

pub fn cpu(cpuinfo: &str) -> Cpu {
    let mut out = Cpu::default();
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => out.vcpus += 1,
            "model name" if out.model.is_empty() => out.model = value.trim().to_string(),
            "flags" if out.flags.is_empty() => {
                out.flags = value.split_whitespace().map(str::to_string).collect();
            }
            _ => {}
        }
    }
    let has = |f: &str| out.flags.iter().any(|x| x == f);
    out.rdrand = has("rdrand");
    out.rdseed = has("rdseed");
    out.hwv = has("vmx") || has("svm");
    out
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// The guest's physical memory as its kernel found it: the sum of every zone's `present`
/// pages in /proc/zoneinfo (RAM the firmware handed over, before the kernel's own
/// reservations, which MemTotal leaves out), in bytes of `page_bytes` pages.
pub fn mem_present_bytes(zoneinfo: &str, page_bytes: u64) -> Option<u64> {
    let pages: Vec<u64> = zoneinfo
        .lines()
        .filter_map(|l| l.trim().strip_prefix("present")?.trim().parse().ok())
        .collect();
    (!pages.is_empty()).then(|| pages.iter().sum::<u64>() * page_bytes)
}

/// One CPU's times from /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    /// Everything but idle and iowait (steal included).
    pub busy: u64,
    pub steal: u64,
    pub total: u64,
}

/// Per-CPU times (`cpuN` lines, in N order) from /proc/stat.
pub fn cpu_times(stat: &str) -> Vec<Times> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal (guest times are inside user).
            let total: u64 = (0..8).map(at).sum();
            Times {
                busy: total - at(3) - at(4),
                steal: at(7),
                total,
            }
        })
        .collect()
}

/// The share of each CPU's time stolen by the host between two readings (0 when no time
/// passed).
pub fn steal_ratios(before: &[Times], after: &[Times]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.total.saturating_sub(b.total);
            if total == 0 {
                0.0
            } else {
                a.steal.saturating_sub(b.steal) as f64 / total as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU Virtual CPU version 2.5+\nflags\t\t: fpu vme de pse tsc msr rdrand hypervisor svm\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\nflags\t\t: fpu vme\n";

    #[test]
    fn cpuinfo_gives_count_model_and_promised_flags() {
        let c = cpu(CPUINFO);
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.model, "QEMU Virtual CPU version 2.5+");
        assert!(c.rdrand && !c.rdseed && c.hwv);
        assert_eq!(c.flags.len(), 9);
        let none = cpu("processor : 0\nflags : fpu rdseed\n");
        assert!(!none.rdrand && none.rdseed && !none.hwv);
        assert_eq!(cpu(""), Cpu::default());
    }

    #[test]
    fn meminfo_total() {
        assert_eq!(
            mem_total_bytes("MemFree:  10 kB\nMemTotal:        2035480 kB\n"),
            Some(2035480 * 1024)
        );
        assert_eq!(mem_total_bytes("MemFree: 10 kB\n"), None);
    }

    #[test]
    fn zoneinfo_present_pages() {
        let z = "Node 0, zone      DMA\n  pages free     3840\n        present  3998\n        managed  3840\nNode 0, zone    DMA32\n  pages free     100\n        present  126976\n        managed  120000\n";
        assert_eq!(mem_present_bytes(z, 4096), Some((3998 + 126976) * 4096));
        assert_eq!(mem_present_bytes("Node 0, zone DMA\n", 4096), None);
    }

    #[test]
    fn steal_over_a_window() {
        let before = cpu_times(
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 100 0 50 800 10 0 0 40 0 0\ncpu1 10 0 0 990 0 0 0 0 0 0\nintr 5\n",
        );
        assert_eq!(
            before,
            vec![
                Times {
                    busy: 190,
                    steal: 40,
                    total: 1000
                },
                Times {
                    busy: 10,
                    steal: 0,
                    total: 1000
                }
            ]
        );
        let after = cpu_times("cpu0 150 0 50 850 10 0 0 140 0 0\ncpu1 10 0 0 1090 0 0 0 0 0 0\n");
        let r = steal_ratios(&before, &after);
        assert!((r[0] - 100.0 / 200.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r[1], 0.0);
        assert_eq!(steal_ratios(&before, &before), vec![0.0, 0.0]);
    }
}
