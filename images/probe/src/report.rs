//! What the probe prints on the serial console, and how a reader finds it again in the
//! console log: the report once, as the one line between [`BEGIN`] and [`END`], then one
//! [`SAMPLE`] line per workload window.

use crate::facts::Cpu;
use crate::fips::Summary;

pub const BEGIN: &str = "HVAGENT-PROBE-REPORT-BEGIN";
pub const END: &str = "HVAGENT-PROBE-REPORT-END";
pub const SAMPLE: &str = "HVAGENT-PROBE-SAMPLE ";

/// The guest's facts, read once.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub identity: Identity,
    pub cpu: Cpu,
    pub mem_total_bytes: Option<u64>,
    /// Physical memory the guest kernel was given (zones' present pages).
    pub mem_present_bytes: Option<u64>,
    /// Every virtio disk, in name order (`vda` is the root disk).
    pub disks: Vec<Disk>,
    pub entropy_avail: Option<u32>,
    pub fips: Summary,
    /// Sequential synchronous writes to the root disk; `None` when not asked for or failed.
    pub iops: Option<Iops>,
    /// What could not be read or done, and why.
    pub errors: Vec<String>,
}

/// The NoCloud meta-data the guest was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub instance_id: String,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Disk {
    pub name: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Iops {
    pub block_bytes: u64,
    pub writes: u64,
    pub seconds: f64,
    /// writes / seconds.
    pub iops: f64,
}

/// One workload window: every vCPU busy with the fixed workload at once.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// End of the window, milliseconds since the workload started.
    pub t_ms: u64,
    /// Per vCPU, workload chunks per second (`None`: the thread could not run there).
    pub throughput: Vec<Option<f64>>,
    /// Per vCPU, the share of the window the host stole (the guest's /proc/stat).
    pub steal_ratio: Vec<f64>,
}

/// `key: value` lines of NoCloud meta-data (the subset of YAML the agent writes).
pub fn identity(meta_data: &str) -> Identity {
    let field = |key: &str| {
        meta_data
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    Identity {
        instance_id: field("instance-id"),
        hostname: field("local-hostname"),
    }
}

/// The last report in a console log: `None` when none was printed whole yet, an error when
/// the line between the markers is not a report.
pub fn find_report(console: &str) -> Option<Result<Report, String>> {
    let start = console.rfind(BEGIN)? + BEGIN.len();
    let rest = &console[start..];
    let end = rest.find(END)?;
    Some(
        serde_json::from_str(rest[..end].trim())
            .map_err(|e| format!("the probe's report does not parse: {e}")),
    )
}

/// Every whole sample line in a console log, in order; lines cut off or garbled (a kernel
/// message in the middle) are skipped.
pub fn samples(console: &str) -> Vec<Sample> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(SAMPLE))
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_meta_data() {
        let id = identity("instance-id: 5b3c\nlocal-hostname: probe-1\npublic-keys: []\n");
        assert_eq!(id.instance_id, "5b3c");
        assert_eq!(id.hostname, "probe-1");
        assert_eq!(identity(""), Identity::default());
    }

    #[test]
    fn report_and_samples_found_in_a_console_log() {
        let report = Report {
            disks: vec![Disk {
                name: "vda".into(),
                bytes: 5 << 30,
            }],
            entropy_avail: Some(256),
            ..Report::default()
        };
        let sample = Sample {
            t_ms: 2000,
            throughput: vec![Some(10.5), None],
            steal_ratio: vec![0.25, 0.0],
        };
        let log = format!(
            "[    0.1] boot\r\n{BEGIN}\r\n{}\r\n{END}\r\n{SAMPLE}{}\r\n{SAMPLE}{{\"t_ms\": 40\r\n[ 9.0] oops\n",
            serde_json::to_string(&report).unwrap(),
            serde_json::to_string(&sample).unwrap()
        );
        assert_eq!(find_report(&log), Some(Ok(report)));
        assert_eq!(samples(&log), vec![sample]);
        // Not yet whole, or not a report.
        assert_eq!(find_report(&format!("{BEGIN}\n{{\"cpu\"")), None);
        assert_eq!(find_report("nothing"), None);
        let bad = find_report(&format!("{BEGIN}\nnot json\n{END}")).unwrap();
        assert!(bad.unwrap_err().contains("does not parse"));
    }
}
