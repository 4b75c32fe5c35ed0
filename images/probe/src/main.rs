//! `hvagent-probe`: runs inside a guest (started by the test guest image) and prints one JSON
//! report of what the guest really gets between two marker lines on its console, for
//! `hvctl verify` to read from the serial log. This first part reports the CPU (count, model,
//! rdrand, rdseed, hardware virtualization), MemTotal, the kernel's entropy estimate, the FIPS
//! 140-2 tests over blocks of /dev/random, and over a window, with the fixed workload running on
//! every vCPU, each vCPU's throughput and the share the host stole.

mod facts;
mod fips;
mod workload;

use std::io::Read;
use std::time::Duration;

/// The report is the one line between these two.
const BEGIN: &str = "HVAGENT-PROBE-REPORT-BEGIN";
const END: &str = "HVAGENT-PROBE-REPORT-END";

#[derive(serde::Serialize)]
struct Report {
    cpu: facts::Cpu,
    mem_total_bytes: Option<u64>,
    entropy_avail: Option<u32>,
    fips: fips::Summary,
    /// Per vCPU, workload chunks per second over `window_ms` (all vCPUs busy at once).
    throughput: Vec<Option<f64>>,
    /// Per vCPU, the share of its time the host stole over `window_ms`.
    steal_ratio: Vec<f64>,
    window_ms: u64,
    /// What could not be read, and why.
    errors: Vec<String>,
}

fn read(path: &str, errors: &mut Vec<String>) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        errors.push(format!("{path}: {e}"));
        String::new()
    })
}

/// `blocks` FIPS blocks from /dev/random (which blocks only until the pool is initialized).
fn fips_over(blocks: u32, errors: &mut Vec<String>) -> fips::Summary {
    let mut summary = fips::Summary::default();
    let mut random = match std::fs::File::open("/dev/random") {
        Ok(f) => f,
        Err(e) => {
            errors.push(format!("/dev/random: {e}"));
            return summary;
        }
    };
    let mut block = [0u8; fips::BLOCK_BYTES];
    for _ in 0..blocks {
        if let Err(e) = random.read_exact(&mut block) {
            errors.push(format!("/dev/random: {e}"));
            break;
        }
        summary.add(fips::check(&block));
    }
    summary
}

fn main() {
    // Arguments: FIPS blocks (default 1000), steal window in ms (default 2000).
    let mut args = std::env::args().skip(1);
    let blocks = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let window_ms = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mut errors = Vec::new();
    let fips = fips_over(blocks, &mut errors);
    let cpu = facts::cpu(&read("/proc/cpuinfo", &mut errors));
    let before = facts::cpu_times(&read("/proc/stat", &mut errors));
    let cpus: Vec<usize> = (0..before.len()).collect();
    let throughput = workload::throughput(&cpus, Duration::from_millis(window_ms))
        .into_iter()
        .map(|r| r.map_err(|e| errors.push(e)).ok())
        .collect();
    let after = facts::cpu_times(&read("/proc/stat", &mut errors));
    let report = Report {
        cpu,
        mem_total_bytes: facts::mem_total_bytes(&read("/proc/meminfo", &mut errors)),
        entropy_avail: read("/proc/sys/kernel/random/entropy_avail", &mut errors)
            .trim()
            .parse()
            .ok(),
        fips,
        throughput,
        steal_ratio: facts::steal_ratios(&before, &after),
        window_ms,
        errors,
    };
    match serde_json::to_string(&report) {
        Ok(json) => println!("{BEGIN}\n{json}\n{END}"),
        Err(e) => {
            eprintln!("hvagent-probe: cannot encode the report: {e}");
            std::process::exit(1);
        }
    }
}
