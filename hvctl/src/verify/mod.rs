//! `hvctl verify`: proves through the agent's own API that each flavor keeps its promises on
//! this node. Per flavor it creates a probe guest (the test image's probe, asked for by
//! user-data), reads the probe's report and workload samples from the serial console, fills
//! the node with noisy neighbours, asks the agent for its guarantee report, judges every
//! promise ([`judge`]) and deletes what it made. Reports come out as JSON, Markdown
//! ([`markdown`]) and SVG charts ([`chart`]). docs/verify.md says what each verdict means.

pub mod chart;
pub mod judge;
pub mod markdown;
mod run;

pub use run::{Created, Options, RunError, cleanup, default_neighbour, run};

use hvagent_probe::report::{Report, Sample};
use hvagent_proto::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Kept,
    Violated,
    NotVerifiable,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Kept => "kept",
            Verdict::Violated => "violated",
            Verdict::NotVerifiable => "not verifiable",
        }
    }
}

/// One promise judged.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Check {
    /// vcpus, ram, disk, disk_iops, cpu_exclusive, cpu_throughput, shared_ratio, cpu_share,
    /// entropy, rdrand, rdseed, hwv, numa_locality, hugepages
    pub promise: String,
    pub verdict: Verdict,
    pub measured: String,
    pub threshold: String,
    /// Why not verifiable, or where the figure comes from.
    pub why: String,
}

/// What became of one flavor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Probed and judged.
    Judged,
    /// Not tried: it does not fit the node.
    Skipped,
    /// Tried, but no report came (create refused, probe silent).
    Failed,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FlavorResult {
    pub flavor: String,
    pub outcome: Outcome,
    /// Why skipped or failed.
    pub reason: String,
    pub vm_uuid: String,
    pub vm_name: String,
    /// Neighbour guests that ran the workload beside the probe, by flavor.
    pub neighbours: Vec<String>,
    pub checks: Vec<Check>,
    pub probe: Option<Report>,
    pub alone: Vec<Sample>,
    pub with_neighbours: Vec<Sample>,
    pub agent: Option<pb::GuaranteeReport>,
    pub seconds: f64,
}

impl FlavorResult {
    fn new(flavor: &str, outcome: Outcome, reason: String) -> Self {
        FlavorResult {
            flavor: flavor.into(),
            outcome,
            reason,
            vm_uuid: String::new(),
            vm_name: String::new(),
            neighbours: Vec::new(),
            checks: Vec::new(),
            probe: None,
            alone: Vec::new(),
            with_neighbours: Vec::new(),
            agent: None,
            seconds: 0.0,
        }
    }

    pub fn count(&self, v: Verdict) -> usize {
        self.checks.iter().filter(|c| c.verdict == v).count()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub node: String,
    pub kernel: String,
    pub cpu_model: String,
    /// kvm or tcg, as the agent runs guests.
    pub emulation: String,
    pub started_unix: u64,
    pub seconds: f64,
    pub neighbours_asked: u32,
    pub window_ms: u64,
    pub tolerance: f64,
    pub flavors: Vec<FlavorResult>,
}

impl VerifyReport {
    pub fn count(&self, v: Verdict) -> usize {
        self.flavors.iter().map(|f| f.count(v)).sum()
    }

    pub fn failed(&self) -> usize {
        self.flavors
            .iter()
            .filter(|f| f.outcome == Outcome::Failed)
            .count()
    }
}
