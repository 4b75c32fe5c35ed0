//! Host figures read from procfs and sysfs below the inventory's root (so tests can point it at
//! a fixture tree): CPU times, load, pressure (PSI), memory, NUMA nodes with hugepages, the image
//! store's filesystem and disk, NIC counters, hwmon temperatures, EDAC error counts, and the
//! agent's own process. Absent files are absent figures, never errors. The parsers are pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use hvagent_probe::facts::{CpuTimes, parse_stat};

use crate::host::memory::{self, MemoryInfo, NumaNode};
use crate::host::sysfs::SysRoot;
use crate::net::link::Counters;

#[derive(Debug, Clone, PartialEq)]
pub struct Pressure {
    pub resource: &'static str,
    /// `some` or `full`.
    pub kind: String,
    pub avg10: f64,
    pub avg60: f64,
    pub total_us: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Store {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub free_bytes: u64,
    /// `MAJ:MIN` of the block device below the store, when it has one.
    pub device: String,
    pub disk: Option<DiskStat>,
}

/// From `/sys/dev/block/MAJ:MIN/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStat {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub written_bytes: u64,
    pub io_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NicStat {
    pub interface: String,
    pub up: bool,
    pub counters: Counters,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Temperature {
    pub chip: String,
    pub sensor: String,
    pub celsius: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryErrors {
    pub controller: String,
    pub corrected: u64,
    pub uncorrected: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStat {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSample {
    pub cpus: Vec<CpuTimes>,
    /// Jiffies per second (`sysconf(_SC_CLK_TCK)`).
    pub ticks_per_second: u64,
    pub load: [f64; 3],
    pub pressure: Vec<Pressure>,
    pub memory: MemoryInfo,
    pub numa: Vec<NumaNode>,
    pub store: Store,
    pub nics: Vec<NicStat>,
    pub temperatures: Vec<Temperature>,
    pub memory_errors: Vec<MemoryErrors>,
    pub agent: ProcessStat,
}

impl HostSample {
    /// Reads everything: `sys` is the inventory's root, `store` the image store, `own` the
    /// agent's `/proc/<pid>` directory.
    pub fn read(sys: &SysRoot, store: &Path, own: &Path) -> HostSample {
        let ticks = ticks_per_second();
        let memory = memory::read(sys);
        let online = crate::host::cpu::read_online(sys);
        let numa = memory::read_numa(sys, &memory, &online);
        HostSample {
            cpus: sys
                .read("proc/stat")
                .map(|t| parse_stat(&t))
                .unwrap_or_default(),
            ticks_per_second: ticks,
            load: sys
                .read("proc/loadavg")
                .and_then(|t| parse_loadavg(&t))
                .unwrap_or_default(),
            pressure: ["cpu", "memory", "io"]
                .into_iter()
                .flat_map(|r| {
                    sys.read(&format!("proc/pressure/{r}"))
                        .map(|t| parse_pressure(r, &t))
                        .unwrap_or_default()
                })
                .collect(),
            memory,
            numa,
            store: read_store(sys, store),
            nics: read_nics(sys),
            temperatures: read_temperatures(sys),
            memory_errors: read_memory_errors(sys),
            agent: read_process(own, ticks),
        }
    }

    pub fn pressure(&self, resource: &str, kind: &str) -> Option<&Pressure> {
        self.pressure
            .iter()
            .find(|p| p.resource == resource && p.kind == kind)
    }
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut f = text.split_whitespace().map(|x| x.parse::<f64>());
    Some([f.next()?.ok()?, f.next()?.ok()?, f.next()?.ok()?])
}

/// `/proc/pressure/<resource>`: `some avg10=0.12 avg60=0.05 avg300=0.01 total=12345`.
pub fn parse_pressure(resource: &'static str, text: &str) -> Vec<Pressure> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let kind = fields.next()?.to_string();
            let kv: BTreeMap<&str, &str> = fields.filter_map(|f| f.split_once('=')).collect();
            Some(Pressure {
                resource,
                kind,
                avg10: kv.get("avg10")?.parse().ok()?,
                avg60: kv.get("avg60")?.parse().ok()?,
                total_us: kv.get("total")?.parse().ok()?,
            })
        })
        .collect()
}

/// `/sys/dev/block/MAJ:MIN/stat`: reads, merges, sectors, ms, writes, merges, sectors, ms,
/// in flight, io ms, ... Sectors are 512 bytes whatever the device's block size.
pub fn parse_disk_stat(text: &str) -> Option<DiskStat> {
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 10 {
        return None;
    }
    Some(DiskStat {
        reads: v[0],
        read_bytes: v[2] * 512,
        writes: v[4],
        written_bytes: v[6] * 512,
        io_ms: v[9],
    })
}

fn read_store(sys: &SysRoot, store: &Path) -> Store {
    use std::os::unix::fs::MetadataExt;
    let mut out = Store {
        path: store.to_path_buf(),
        ..Store::default()
    };
    if let Ok(fs) = nix::sys::statvfs::statvfs(store) {
        let frag = fs.fragment_size();
        out.size_bytes = fs.blocks() * frag;
        out.free_bytes = fs.blocks_available() * frag;
    }
    if let Ok(meta) = std::fs::metadata(store) {
        let dev = meta.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        // Major 0 is an anonymous device (tmpfs, overlay): no disk below.
        if major != 0 {
            out.device = format!("{major}:{minor}");
            out.disk = sys
                .read(&format!("sys/dev/block/{major}:{minor}/stat"))
                .and_then(|t| parse_disk_stat(&t));
        }
    }
    out
}

/// Every interface but loopback and taps (a guest's NIC counters are the guest's figures).
fn read_nics(sys: &SysRoot) -> Vec<NicStat> {
    sys.entries("sys/class/net", "")
        .into_iter()
        .filter(|n| n != "lo" && sys.read(&format!("sys/class/net/{n}/tun_flags")).is_none())
        .map(|n| NicStat {
            up: sys
                .read(&format!("sys/class/net/{n}/operstate"))
                .is_some_and(|s| s == "up" || s == "unknown"),
            counters: Counters::from_fn(|s| {
                sys.read_u64(&format!("sys/class/net/{n}/statistics/{s}"))
                    .unwrap_or(0)
            }),
            interface: n,
        })
        .collect()
}

fn read_temperatures(sys: &SysRoot) -> Vec<Temperature> {
    let mut out = Vec::new();
    for hw in sys.entries("sys/class/hwmon", "hwmon") {
        let base = format!("sys/class/hwmon/{hw}");
        // hwmon names repeat (one coretemp per socket, one nvme per drive): the device
        // number keeps each sensor's series apart.
        let chip = match sys.read(&format!("{base}/name")) {
            Some(name) => format!("{hw}/{name}"),
            None => hw.clone(),
        };
        for input in sys.entries(&base, "temp") {
            let Some(index) = input.strip_suffix("_input") else {
                continue;
            };
            let Some(milli) = sys
                .read(&format!("{base}/{input}"))
                .and_then(|v| v.parse::<i64>().ok())
            else {
                continue;
            };
            out.push(Temperature {
                chip: chip.clone(),
                sensor: sys
                    .read(&format!("{base}/{index}_label"))
                    .unwrap_or_else(|| index.to_string()),
                celsius: milli as f64 / 1000.0,
            });
        }
    }
    out
}

fn read_memory_errors(sys: &SysRoot) -> Vec<MemoryErrors> {
    const MC: &str = "sys/devices/system/edac/mc";
    sys.entries(MC, "mc")
        .into_iter()
        .filter(|mc| mc.len() > 2 && mc[2..].chars().all(|c| c.is_ascii_digit()))
        .map(|mc| MemoryErrors {
            corrected: sys.read_u64(&format!("{MC}/{mc}/ce_count")).unwrap_or(0),
            uncorrected: sys.read_u64(&format!("{MC}/{mc}/ue_count")).unwrap_or(0),
            controller: mc,
        })
        .collect()
}

/// RSS and threads from `status`, CPU time from `stat` of a `/proc/<pid>` directory.
pub fn read_process(dir: &Path, ticks: u64) -> ProcessStat {
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
    parse_process(&status, &stat, ticks)
}

pub fn parse_process(status: &str, stat: &str, ticks: u64) -> ProcessStat {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let cpu_ticks = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            at(11) + at(12)
        })
        .unwrap_or(0);
    ProcessStat {
        rss_bytes: field("VmRSS:") * 1024,
        cpu_seconds: cpu_ticks as f64 / ticks.max(1) as f64,
        threads: field("Threads:") as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_and_load() {
        let p = parse_pressure(
            "memory",
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        );
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].kind.as_str(), p[0].avg10, p[0].total_us),
            ("some", 1.5, 12345)
        );
        assert_eq!((p[1].kind.as_str(), p[1].total_us), ("full", 7));
        assert_eq!(
            parse_loadavg("0.5 1.25 2.00 1/234 567"),
            Some([0.5, 1.25, 2.0])
        );
        assert_eq!(parse_loadavg("x"), None);
    }

    #[test]
    fn disk_stat() {
        let d = parse_disk_stat("  100 0 800 5 20 0 160 3 0 9 8 0 0 0 0").unwrap();
        assert_eq!(d.reads, 100);
        assert_eq!(d.read_bytes, 800 * 512);
        assert_eq!((d.writes, d.written_bytes, d.io_ms), (20, 160 * 512, 9));
        assert_eq!(parse_disk_stat("1 2 3"), None);
    }

    #[test]
    fn process_figures() {
        let status = "Name:\thvagent\nVmRSS:\t   2048 kB\nThreads:\t7\n";
        let stat = "42 (hv agent) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 7 0";
        let p = parse_process(status, stat, 100);
        assert_eq!(p.rss_bytes, 2048 * 1024);
        assert_eq!(p.threads, 7);
        assert!((p.cpu_seconds - 3.0).abs() < 1e-9, "{}", p.cpu_seconds);
    }

    #[test]
    fn reads_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w("proc/stat", "cpu 1 1 1 1 1 1 1 1\ncpu0 1 2 3 4 5 6 7 8\n");
        w("proc/loadavg", "1.00 2.00 3.00 1/1 1\n");
        w(
            "proc/meminfo",
            "MemTotal: 1024 kB\nMemAvailable: 512 kB\nMemFree: 256 kB\n",
        );
        w(
            "proc/pressure/cpu",
            "some avg10=5.00 avg60=1.00 avg300=0.00 total=10\n",
        );
        w("sys/devices/system/cpu/online", "0\n");
        w("sys/class/net/eth0/operstate", "up\n");
        w("sys/class/net/eth0/statistics/rx_bytes", "1000\n");
        w("sys/class/net/lo/operstate", "unknown\n");
        w("sys/class/net/hv0/tun_flags", "0x1002\n");
        w("sys/class/hwmon/hwmon0/name", "coretemp\n");
        w("sys/class/hwmon/hwmon0/temp1_input", "45500\n");
        w("sys/class/hwmon/hwmon0/temp1_label", "Package id 0\n");
        w("sys/devices/system/edac/mc/mc0/ce_count", "3\n");
        w("sys/devices/system/edac/mc/mc0/ue_count", "1\n");
        w("self/status", "VmRSS: 100 kB\nThreads: 3\n");
        let s = HostSample::read(
            &SysRoot::new(dir.path()),
            dir.path(),
            &dir.path().join("self"),
        );
        assert_eq!(s.cpus.len(), 1);
        assert_eq!(s.cpus[0].steal, 8);
        assert_eq!(s.load, [1.0, 2.0, 3.0]);
        assert_eq!(s.memory.total_bytes, 1024 * 1024);
        assert_eq!(s.pressure("cpu", "some").map(|p| p.avg10), Some(5.0));
        assert_eq!(s.nics.len(), 1, "no loopback, no taps: {:?}", s.nics);
        assert_eq!(
            (s.nics[0].interface.as_str(), s.nics[0].counters.rx_bytes),
            ("eth0", 1000)
        );
        assert!(s.nics[0].up);
        assert_eq!(
            s.temperatures,
            vec![Temperature {
                chip: "hwmon0/coretemp".into(),
                sensor: "Package id 0".into(),
                celsius: 45.5
            }]
        );
        assert_eq!(
            s.memory_errors,
            vec![MemoryErrors {
                controller: "mc0".into(),
                corrected: 3,
                uncorrected: 1
            }]
        );
        assert_eq!((s.agent.rss_bytes, s.agent.threads), (100 * 1024, 3));
        assert!(s.store.size_bytes > 0, "statvfs of the store");
    }
}
