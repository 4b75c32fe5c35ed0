//! CPU identity and topology: /proc/cpuinfo for identity and flags, sysfs for topology, caches,
//! isolation and vulnerabilities. Topology comes only from sysfs: an offline CPU has no topology
//! there, so its socket stays unknown instead of becoming 0.

use std::collections::{BTreeMap, BTreeSet};

use super::sysfs::SysRoot;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuInfo {
    pub vendor: String,
    pub model_name: String,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub microcode: String,
    pub flags: Vec<String>,
    pub sockets: u32,
    pub dies: u32,
    pub cores: u32,
    pub threads: u32,
    pub smt_active: bool,
    pub smt_control: String,
    pub online: Vec<u32>,
    pub offline: Vec<u32>,
    pub isolated: Vec<u32>,
    pub cpus: Vec<LogicalCpu>,
    pub caches: Vec<Cache>,
    pub vulnerabilities: Vec<Vulnerability>,
    pub max_frequency_khz: u64,
    pub base_frequency_khz: u64,
}

impl CpuInfo {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// SMT sibling sets of online CPUs, each listed once.
    pub fn sibling_sets(&self) -> Vec<Vec<u32>> {
        let sets: BTreeSet<Vec<u32>> = self
            .cpus
            .iter()
            .filter(|c| c.online)
            .map(|c| c.siblings.clone())
            .collect();
        sets.into_iter().collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogicalCpu {
    pub id: u32,
    pub online: bool,
    pub isolated: bool,
    pub socket: Option<u32>,
    pub die: Option<u32>,
    pub core: Option<u32>,
    pub siblings: Vec<u32>,
    pub numa_node: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cache {
    pub level: u32,
    pub kind: String,
    pub size_bytes: u64,
    pub ways: u32,
    pub line_size_bytes: u32,
    pub cpus: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vulnerability {
    pub name: String,
    pub status: String,
}

impl Vulnerability {
    /// The kernel says the CPU is exposed (mitigation off or impossible), or cannot tell.
    pub fn is_vulnerable(&self) -> bool {
        self.status.starts_with("Vulnerable") || self.status.starts_with("Unknown")
    }

    /// The kernel says the issue stays open while SMT is on (L1TF, MDS, MMIO stale data).
    pub fn smt_vulnerable(&self) -> bool {
        self.status.contains("SMT vulnerable") || self.status.contains("SMT Host state unknown")
    }
}

const CPU: &str = "sys/devices/system/cpu";

/// The online CPUs, from the kernel's `online` cpulist.
pub fn read_online(sys: &SysRoot) -> Vec<u32> {
    sys.read_cpulist(&format!("{CPU}/online"))
        .unwrap_or_default()
}

/// Reads everything about the CPUs; `online` comes from [`read_online`], `cpu_to_node` maps
/// CPU id → NUMA node.
pub fn read(sys: &SysRoot, online: &[u32], cpu_to_node: &BTreeMap<u32, u32>) -> CpuInfo {
    let mut info = sys
        .read("proc/cpuinfo")
        .map(|text| parse_cpuinfo(&text))
        .unwrap_or_default();

    let possible = sys
        .read_cpulist(&format!("{CPU}/possible"))
        .unwrap_or_default();
    let present = sys
        .read_cpulist(&format!("{CPU}/present"))
        .unwrap_or_else(|| possible.clone());
    let online: BTreeSet<u32> = online.iter().copied().collect();
    let isolated: BTreeSet<u32> = sys
        .read_cpulist(&format!("{CPU}/isolated"))
        .unwrap_or_default()
        .into_iter()
        .collect();
    // Offline = possible but not online, as the kernel's own `offline` file counts it.
    let mut all: BTreeSet<u32> = possible.iter().chain(&present).copied().collect();
    all.extend(&online);

    for id in all {
        let is_online = online.contains(&id);
        let topo = format!("{CPU}/cpu{id}/topology");
        // Sysfs removes topology of offline CPUs; only trust it for online ones.
        let known = is_online && sys.exists(&topo);
        let field = |name: &str| {
            if known {
                sys.read_u64(&format!("{topo}/{name}")).map(|v| v as u32)
            } else {
                None
            }
        };
        let siblings = if known {
            sys.read_cpulist(&format!("{topo}/thread_siblings_list"))
                .unwrap_or_else(|| vec![id])
        } else {
            Vec::new()
        };
        info.cpus.push(LogicalCpu {
            id,
            online: is_online,
            isolated: isolated.contains(&id),
            socket: field("physical_package_id"),
            die: field("die_id"),
            core: field("core_id"),
            siblings,
            numa_node: cpu_to_node.get(&id).copied(),
        });
    }
    info.online = online.iter().copied().collect();
    info.offline = info
        .cpus
        .iter()
        .filter(|c| !c.online)
        .map(|c| c.id)
        .collect();
    info.isolated = isolated.into_iter().collect();

    let online_cpus: Vec<&LogicalCpu> = info.cpus.iter().filter(|c| c.online).collect();
    let sockets: BTreeSet<u32> = online_cpus.iter().filter_map(|c| c.socket).collect();
    let dies: BTreeSet<(u32, u32)> = online_cpus
        .iter()
        .filter_map(|c| Some((c.socket?, c.die.unwrap_or(0))))
        .collect();
    info.sockets = sockets.len() as u32;
    info.dies = dies.len() as u32;
    info.threads = online_cpus.len() as u32;
    let sibling_sets = info.sibling_sets();
    info.cores = sibling_sets.len() as u32;
    info.smt_active = sibling_sets.iter().any(|s| s.len() > 1);
    info.smt_control = sys.read(&format!("{CPU}/smt/control")).unwrap_or_default();

    info.caches = read_caches(sys, &info.online);
    info.vulnerabilities = sys
        .entries(&format!("{CPU}/vulnerabilities"), "")
        .into_iter()
        .filter_map(|name| {
            let status = sys.read(&format!("{CPU}/vulnerabilities/{name}"))?;
            Some(Vulnerability { name, status })
        })
        .collect();
    let freq = |file: &str| {
        info.online
            .iter()
            .filter_map(|id| sys.read_u64(&format!("{CPU}/cpu{id}/cpufreq/{file}")))
            .max()
            .unwrap_or(0)
    };
    info.max_frequency_khz = freq("cpuinfo_max_freq");
    info.base_frequency_khz = freq("base_frequency");
    info
}

/// One entry per distinct cache instance (level, type and sharing CPUs), sorted.
fn read_caches(sys: &SysRoot, online: &[u32]) -> Vec<Cache> {
    let mut caches = BTreeSet::new();
    for id in online {
        let dir = format!("{CPU}/cpu{id}/cache");
        for index in sys.entries(&dir, "index") {
            let base = format!("{dir}/{index}");
            let Some(level) = sys.read_u64(&format!("{base}/level")) else {
                continue;
            };
            caches.insert(Cache {
                level: level as u32,
                kind: sys.read(&format!("{base}/type")).unwrap_or_default(),
                size_bytes: sys
                    .read(&format!("{base}/size"))
                    .and_then(|s| parse_size(&s))
                    .unwrap_or(0),
                ways: sys
                    .read_u64(&format!("{base}/ways_of_associativity"))
                    .unwrap_or(0) as u32,
                line_size_bytes: sys
                    .read_u64(&format!("{base}/coherency_line_size"))
                    .unwrap_or(0) as u32,
                cpus: sys
                    .read_cpulist(&format!("{base}/shared_cpu_list"))
                    .unwrap_or_else(|| vec![*id]),
            });
        }
    }
    caches.into_iter().collect()
}

/// Cache sizes as sysfs prints them: `32K`, `1024K`, `32M`.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1024),
        'M' => (&s[..s.len() - 1], 1024 * 1024),
        'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// Identity and flags from the first processor block of /proc/cpuinfo (x86 layout; other
/// architectures leave the x86-only fields at their defaults).
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let first_block = text.split("\n\n").next().unwrap_or("");
    for line in first_block.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "vendor_id" => info.vendor = value.to_string(),
            "model name" => info.model_name = value.to_string(),
            "cpu family" => info.family = value.parse().unwrap_or(0),
            "model" => info.model = value.parse().unwrap_or(0),
            "stepping" => info.stepping = value.parse().unwrap_or(0),
            "microcode" => info.microcode = value.to_string(),
            "flags" => info.flags = value.split_whitespace().map(str::to_string).collect(),
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_first_block() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n\
                    model name\t: Intel(R) Xeon(R) Gold 6248\nstepping\t: 7\nmicrocode\t: 0x5003604\n\
                    flags\t\t: fpu vmx avx2 rdrand\n\nprocessor\t: 1\nvendor_id\t: Other\n";
        let info = parse_cpuinfo(text);
        assert_eq!(info.vendor, "GenuineIntel");
        assert_eq!((info.family, info.model, info.stepping), (6, 85, 7));
        assert_eq!(info.microcode, "0x5003604");
        assert_eq!(info.flags, vec!["fpu", "vmx", "avx2", "rdrand"]);
        assert!(info.has_flag("rdrand"));
        assert!(!info.has_flag("rdseed"));
    }

    #[test]
    fn cache_sizes() {
        assert_eq!(parse_size("32K"), Some(32 * 1024));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn vulnerability_states() {
        let v = |s: &str| Vulnerability {
            name: "x".into(),
            status: s.into(),
        };
        assert!(v("Vulnerable: Clear CPU buffers attempted, no microcode").is_vulnerable());
        assert!(
            !v("Mitigation: PTE Inversion; VMX: conditional cache flushes, SMT vulnerable")
                .is_vulnerable()
        );
        assert!(
            v("Mitigation: PTE Inversion; VMX: conditional cache flushes, SMT vulnerable")
                .smt_vulnerable()
        );
        assert!(!v("Not affected").smt_vulnerable());
        assert!(v("Unknown: No mitigations").is_vulnerable());
        assert!(v("Mitigation: Clear CPU buffers; SMT Host state unknown").smt_vulnerable());
    }
}
