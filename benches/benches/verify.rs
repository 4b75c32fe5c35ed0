//! `hvctl verify` on this machine: the run whose report is committed in docs/verify-report/.
//!
//! Starts the release `hvagent` on a private store with both CPUs for guests
//! (`reserved_cpus = ""`, so that a `C` guest and the shared pool fit side by side on two
//! cores), imports `images/out/testguest.qcow2` as the probe image, runs the release `hvctl
//! verify` over `FLAVORS` with its defaults (5 windows of 2 s alone and beside up to 4
//! neighbours, 1000 FIPS blocks, 3 s of writes) and writes the report to `REPORT` (default
//! `target/verify-report`). Prints, per flavor, the figures docs/benchmarks.md quotes: wall
//! time, verdict counts, FIPS failures, write IOPS, the worst throughput ratio beside the
//! neighbours and the lowest share of a core.
//!
//!     cargo build --release --bins
//!     REPORT=docs/verify-report cargo bench -p hvagent-benches --bench verify

mod common;

use std::process::Command;
use std::time::Instant;

const FLAVORS: &str = "SCS-1C-1u,SCS-1V-2u-5,SCS-2V-4u-10,SCS-1L-1u,SCS-2V-4-20s";

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut agent, socket) = common::start_agent(
        dir.path(),
        "[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 512\n",
    );
    let hvctl = common::bin("hvctl");
    let image =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/out/testguest.qcow2");
    let out = Command::new(&hvctl)
        .arg("--socket")
        .arg(&socket)
        .args(["image", "import"])
        .arg(&image)
        .args(["--name", "hvagent-probe"])
        .output()
        .expect("hvctl image import");
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flavors = std::env::var("FLAVORS").unwrap_or_else(|_| FLAVORS.into());
    // Relative to the repository root (cargo runs benches in their package directory).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let report =
        root.join(std::env::var("REPORT").unwrap_or_else(|_| "target/verify-report".into()));
    std::fs::create_dir_all(&report).expect("report directory");
    let report = report
        .canonicalize()
        .unwrap_or(report)
        .to_str()
        .expect("UTF-8 path")
        .to_string();
    let mut cmd = Command::new(&hvctl);
    cmd.arg("--socket")
        .arg(&socket)
        .args(["--output", "json", "verify", "--report", &report]);
    for f in flavors.split(',') {
        cmd.args(["--flavor", f]);
    }
    let started = Instant::now();
    // Progress goes straight to the terminal; the report comes back on stdout.
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("hvctl verify");
    let wall = started.elapsed();
    let _ = agent.kill();
    let _ = agent.wait();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify prints JSON");
    println!(
        "\nhvctl verify exit {:?}, {:.0} s wall, report in {report}\n",
        out.status.code(),
        wall.as_secs_f64()
    );
    println!(
        "| flavor | outcome | s | kept / violated / n.v. | FIPS failed | write IOPS | worst throughput beside neighbours | lowest share of a core |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for f in r["flavors"].as_array().into_iter().flatten() {
        let count = |v: &str| {
            f["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["verdict"] == v)
                .count()
        };
        let measured = |p: &str| {
            f["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["promise"] == p)
                .and_then(|c| c["measured"].as_str())
                .unwrap_or("-")
                .to_string()
        };
        let probe = &f["probe"];
        println!(
            "| {} | {} | {:.0} | {} / {} / {} | {} | {} | {} | {} |",
            f["flavor"].as_str().unwrap_or(""),
            f["outcome"].as_str().unwrap_or(""),
            f["seconds"].as_f64().unwrap_or(0.0),
            count("kept"),
            count("violated"),
            count("not_verifiable"),
            probe["fips"]["failed_blocks"]
                .as_u64()
                .map_or("-".into(), |n| format!("{n} / {}", probe["fips"]["blocks"])),
            probe["iops"]["iops"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}")),
            measured("cpu_throughput"),
            measured("cpu_share"),
        );
    }
}
