//! Reading sysfs/procfs below a root directory, so every reader works the same on `/` and on a
//! captured fixture tree. Missing files are `None`, never errors: hardware that is absent simply
//! has no file, and the readers decide what absence means.

use std::path::PathBuf;

/// A root directory holding `sys/` and `proc/` (the real `/`, or a captured tree).
#[derive(Debug, Clone)]
pub struct SysRoot {
    root: PathBuf,
}

impl SysRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The absolute path of `rel` (written without a leading slash) below the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// The trimmed content of a file, or `None` when it is missing or unreadable.
    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// A file holding one unsigned integer (decimal, or hex with `0x`).
    pub fn read_u64(&self, rel: &str) -> Option<u64> {
        self.read(rel).and_then(|s| parse_u64(&s))
    }

    /// A file holding a cpulist such as `0-3,8,10-11`.
    pub fn read_cpulist(&self, rel: &str) -> Option<Vec<u32>> {
        self.read(rel).and_then(|s| parse_cpulist(&s).ok())
    }

    /// Entry names of a directory whose name starts with `prefix`, sorted naturally (so `cpu10`
    /// follows `cpu9`). Missing directory: empty.
    pub fn entries(&self, rel: &str, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default();
        names.sort_by_key(|n| natural_key(n));
        names
    }

    /// Entries `<prefix><N>` of a directory, as the numbers N in ascending order.
    pub fn numbered_entries(&self, rel: &str, prefix: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .entries(rel, prefix)
            .iter()
            .filter_map(|n| n[prefix.len()..].parse().ok())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The last path component of a symlink's target (a driver link names the driver).
    pub fn link_name(&self, rel: &str) -> Option<String> {
        std::fs::read_link(self.path(rel))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }
}

fn natural_key(name: &str) -> (String, u64) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, num) = name.split_at(name.len() - digits);
    (stem.to_string(), num.parse().unwrap_or(0))
}

/// Parses `42` or `0x2a`.
pub fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A cpulist that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad cpulist {list:?}: {why}")]
pub struct CpulistError {
    pub list: String,
    pub why: &'static str,
}

/// Largest CPU id accepted; Linux's own limit (`NR_CPUS`) is 8192.
const MAX_CPU_ID: u32 = 8191;

/// Parses the kernel's cpulist format (`0-3,8,10-11`; empty means no CPU) into sorted ids.
pub fn parse_cpulist(list: &str) -> Result<Vec<u32>, CpulistError> {
    let err = |why| CpulistError {
        list: list.to_string(),
        why,
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: u32 = lo.trim().parse().map_err(|_| err("not a number"))?;
        let hi: u32 = hi.trim().parse().map_err(|_| err("not a number"))?;
        if lo > hi {
            return Err(err("range end before start"));
        }
        if hi > MAX_CPU_ID {
            return Err(err("CPU id above 8191"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats ids as a compact cpulist (`0-3,8`), the inverse of [`parse_cpulist`].
pub fn format_cpulist(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpulist_forms() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpulist("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpulist("\n").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpulist("5").unwrap(), vec![5]);
        assert_eq!(parse_cpulist("3,1,1").unwrap(), vec![1, 3]);
        assert_eq!(
            parse_cpulist("3-1").unwrap_err().why,
            "range end before start"
        );
        assert_eq!(parse_cpulist("a").unwrap_err().why, "not a number");
        assert_eq!(
            parse_cpulist("0-99999").unwrap_err().why,
            "CPU id above 8191"
        );
        assert_eq!(format_cpulist(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpulist(&[]), "");
    }

    #[test]
    fn hex_and_decimal() {
        assert_eq!(parse_u64("0x2a"), Some(42));
        assert_eq!(parse_u64("42\n"), Some(42));
        assert_eq!(parse_u64("x"), None);
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["cpu10", "cpu9", "cpu1", "cpufreq"];
        v.sort_by_key(|n| natural_key(n));
        assert_eq!(v, vec!["cpu1", "cpu9", "cpu10", "cpufreq"]);
    }

    proptest! {
        #[test]
        fn cpulist_round_trips(cpus in proptest::collection::btree_set(0u32..512, 0..64)) {
            let cpus: Vec<u32> = cpus.into_iter().collect();
            prop_assert_eq!(parse_cpulist(&format_cpulist(&cpus)).unwrap(), cpus);
        }

        #[test]
        fn cpulist_never_panics(s in ".{0,40}") {
            let _ = parse_cpulist(&s);
        }
    }
}
