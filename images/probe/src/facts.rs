//! What the guest sees of itself, from /proc text: pure parsers, so that they are tested on
//! captured text and the probe's report says exactly what the guest kernel said. The
//! `/proc/stat` parser is the agent's too (its host CPU figures).

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

/// Jiffies per logical CPU, as `/proc/stat` counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub cpu: u32,
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// (mode, jiffies) in the order node_exporter and `top` use.
    pub fn modes(&self) -> [(&'static str, u64); 8] {
        [
            ("user", self.user),
            ("nice", self.nice),
            ("system", self.system),
            ("idle", self.idle),
            ("iowait", self.iowait),
            ("irq", self.irq),
            ("softirq", self.softirq),
            ("steal", self.steal),
        ]
    }

    fn total(&self) -> u64 {
        self.modes().iter().map(|(_, v)| v).sum()
    }

    /// Busy and steal shares of the time between `before` and `self` (0 when none passed).
    pub fn usage_since(&self, before: &CpuTimes) -> (f64, f64) {
        let total = self.total().saturating_sub(before.total());
        if total == 0 {
            return (0.0, 0.0);
        }
        let idle = (self.idle + self.iowait).saturating_sub(before.idle + before.iowait);
        let steal = self.steal.saturating_sub(before.steal);
        let busy = total.saturating_sub(idle).saturating_sub(steal);
        (busy as f64 / total as f64, steal as f64 / total as f64)
    }
}

/// Per-CPU lines of `/proc/stat` (`cpuN user nice system idle iowait irq softirq steal ...`).
pub fn parse_stat(text: &str) -> Vec<CpuTimes> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let cpu = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = fields.take(8).map(|f| f.parse().unwrap_or(0)).collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            Some(CpuTimes {
                cpu,
                user: at(0),
                nice: at(1),
                system: at(2),
                idle: at(3),
                iowait: at(4),
                irq: at(5),
                softirq: at(6),
                steal: at(7),
            })
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
        let before = parse_stat(
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 100 0 50 800 10 0 0 40 0 0\ncpu1 10 0 0 990 0 0 0 0 0 0\nintr 5\n",
        );
        let after = parse_stat("cpu0 150 0 50 850 10 0 0 140 0 0\ncpu1 10 0 0 1090 0 0 0 0 0 0\n");
        let steal: Vec<f64> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.usage_since(b).1)
            .collect();
        assert!((steal[0] - 100.0 / 200.0).abs() < 1e-9, "{steal:?}");
        assert_eq!(steal[1], 0.0);
        assert_eq!(before[0].usage_since(&before[0]), (0.0, 0.0));
    }

    #[test]
    fn stat_lines() {
        let cpus = parse_stat(
            "cpu  10 0 5 100 1 0 0 2 0 0\ncpu0 4 1 2 50 1 0 0 2 0 0\ncpu1 6 0 3 50 0 0 0 0 0 0\n\
             intr 123\nctxt 5\n",
        );
        assert_eq!(cpus.len(), 2, "the summary line is not a CPU");
        assert_eq!((cpus[0].cpu, cpus[0].user, cpus[0].steal), (0, 4, 2));
        assert_eq!((cpus[1].cpu, cpus[1].idle), (1, 50));
    }

    #[test]
    fn usage_between_samples() {
        let a = CpuTimes {
            user: 100,
            idle: 100,
            steal: 0,
            ..Default::default()
        };
        let b = CpuTimes {
            user: 150,
            idle: 130,
            iowait: 10,
            steal: 10,
            ..Default::default()
        };
        let (busy, steal) = b.usage_since(&a);
        assert!((busy - 0.5).abs() < 1e-9, "{busy}");
        assert!((steal - 0.1).abs() < 1e-9, "{steal}");
        assert_eq!(a.usage_since(&a), (0.0, 0.0));
    }
}
