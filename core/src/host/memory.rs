//! Memory: node-wide totals from /proc/meminfo, NUMA nodes with their CPUs, memory, distances
//! and hugepages from sysfs, and ECC presence from EDAC.

use std::collections::BTreeMap;

use super::sysfs::SysRoot;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryInfo {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// MemFree: what per-node figures report, so the one-node fallback can match them.
    pub free_bytes: u64,
    pub ecc: Ecc,
    pub ecc_reason: String,
    pub hugepages: Vec<HugepagePool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ecc {
    #[default]
    Unknown,
    Present,
    Absent,
}

impl Ecc {
    pub fn as_str(self) -> &'static str {
        match self {
            Ecc::Unknown => "unknown",
            Ecc::Present => "present",
            Ecc::Absent => "absent",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HugepagePool {
    pub page_size_kib: u64,
    pub total: u64,
    pub free: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NumaNode {
    pub id: u32,
    pub cpus: Vec<u32>,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub distances: Vec<u32>,
    pub hugepages: Vec<HugepagePool>,
}

const NODE: &str = "sys/devices/system/node";

pub fn read(sys: &SysRoot) -> MemoryInfo {
    let meminfo = sys
        .read("proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default();
    let (ecc, ecc_reason) = read_ecc(sys);
    MemoryInfo {
        total_bytes: meminfo.get("MemTotal").copied().unwrap_or(0),
        available_bytes: meminfo.get("MemAvailable").copied().unwrap_or(0),
        free_bytes: meminfo.get("MemFree").copied().unwrap_or(0),
        ecc,
        ecc_reason,
        hugepages: read_hugepages(sys, "sys/kernel/mm/hugepages"),
    }
}

/// NUMA nodes from sysfs. A kernel without NUMA support has no node directory: then the whole
/// machine is node 0, which is what the kernel itself assumes.
pub fn read_numa(sys: &SysRoot, memory: &MemoryInfo, online_cpus: &[u32]) -> Vec<NumaNode> {
    let ids = sys.numbered_entries(NODE, "node");
    if ids.is_empty() {
        return vec![NumaNode {
            id: 0,
            cpus: online_cpus.to_vec(),
            memory_total_bytes: memory.total_bytes,
            memory_free_bytes: memory.free_bytes,
            distances: vec![10],
            hugepages: memory.hugepages.clone(),
        }];
    }
    ids.into_iter()
        .map(|id| {
            let base = format!("{NODE}/node{id}");
            // Node meminfo lines read "Node 0 MemTotal:  123 kB".
            let meminfo = sys
                .read(&format!("{base}/meminfo"))
                .map(|t| {
                    let stripped: String = t
                        .lines()
                        .filter_map(|l| l.splitn(3, ' ').nth(2))
                        .collect::<Vec<_>>()
                        .join("\n");
                    parse_meminfo(&stripped)
                })
                .unwrap_or_default();
            NumaNode {
                id,
                cpus: sys
                    .read_cpulist(&format!("{base}/cpulist"))
                    .unwrap_or_default(),
                memory_total_bytes: meminfo.get("MemTotal").copied().unwrap_or(0),
                memory_free_bytes: meminfo.get("MemFree").copied().unwrap_or(0),
                distances: sys
                    .read(&format!("{base}/distance"))
                    .map(|d| {
                        d.split_whitespace()
                            .filter_map(|x| x.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default(),
                hugepages: read_hugepages(sys, &format!("{base}/hugepages")),
            }
        })
        .collect()
}

/// Map of CPU id → NUMA node.
pub fn cpu_to_node(nodes: &[NumaNode]) -> BTreeMap<u32, u32> {
    nodes
        .iter()
        .flat_map(|n| n.cpus.iter().map(move |c| (*c, n.id)))
        .collect()
}

/// Every `hugepages-<size>kB` directory below `dir`, sorted by page size.
fn read_hugepages(sys: &SysRoot, dir: &str) -> Vec<HugepagePool> {
    let mut pools: Vec<HugepagePool> = sys
        .entries(dir, "hugepages-")
        .into_iter()
        .filter_map(|name| {
            let size = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(HugepagePool {
                page_size_kib: size,
                total: sys
                    .read_u64(&format!("{dir}/{name}/nr_hugepages"))
                    .unwrap_or(0),
                free: sys
                    .read_u64(&format!("{dir}/{name}/free_hugepages"))
                    .unwrap_or(0),
            })
        })
        .collect();
    pools.sort_by_key(|p| p.page_size_kib);
    pools
}

/// ECC from EDAC: any DIMM (or controller) with an EDAC mode other than `None`/`Unknown` means
/// ECC is there. Without a registered memory controller nothing can be said, so "unknown".
fn read_ecc(sys: &SysRoot) -> (Ecc, String) {
    let mc_dir = "sys/devices/system/edac/mc";
    let controllers = sys.entries(mc_dir, "mc");
    if controllers.is_empty() {
        return (
            Ecc::Unknown,
            format!("no EDAC memory controller registered under /{mc_dir}"),
        );
    }
    let mut modes = Vec::new();
    for mc in &controllers {
        for dimm in sys.entries(&format!("{mc_dir}/{mc}"), "dimm") {
            if let Some(mode) = sys.read(&format!("{mc_dir}/{mc}/{dimm}/dimm_edac_mode")) {
                modes.push(mode);
            }
        }
    }
    let ecc_modes: Vec<&String> = modes
        .iter()
        .filter(|m| !matches!(m.as_str(), "None" | "Unknown" | "Unknown EDAC mode"))
        .collect();
    if let Some(mode) = ecc_modes.first() {
        (
            Ecc::Present,
            format!(
                "EDAC reports {} controller(s), DIMM mode {mode}",
                controllers.len()
            ),
        )
    } else if !modes.is_empty() {
        (
            Ecc::Absent,
            format!(
                "EDAC reports DIMMs without an ECC mode ({})",
                modes.join(", ")
            ),
        )
    } else {
        (
            Ecc::Present,
            format!(
                "EDAC registered {} memory controller(s), which it does only for ECC memory",
                controllers.len()
            ),
        )
    }
}

/// `Key: value kB` lines into bytes (values without a unit are kept as they are: counts).
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            let value = match parts.next() {
                Some("kB") => value * 1024,
                _ => value,
            };
            Some((key.trim().to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_units() {
        let m = parse_meminfo("MemTotal:       16384 kB\nHugePages_Total:      4\nBad line\n");
        assert_eq!(m["MemTotal"], 16384 * 1024);
        assert_eq!(m["HugePages_Total"], 4);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn ecc_from_edac_tree() {
        let dir = tempfile::tempdir().unwrap();
        let sys = SysRoot::new(dir.path());
        assert_eq!(read_ecc(&sys).0, Ecc::Unknown);
        let dimm = dir.path().join("sys/devices/system/edac/mc/mc0/dimm0");
        std::fs::create_dir_all(&dimm).unwrap();
        std::fs::write(dimm.join("dimm_edac_mode"), "None\n").unwrap();
        assert_eq!(read_ecc(&sys).0, Ecc::Absent);
        std::fs::write(dimm.join("dimm_edac_mode"), "SECDED\n").unwrap();
        let (ecc, reason) = read_ecc(&sys);
        assert_eq!(ecc, Ecc::Present);
        assert!(reason.contains("SECDED"), "{reason}");
    }
}
