//! `hvagent-probe`: runs inside a guest, started by the test guest image's init when the
//! NoCloud user-data holds a `hvagent-probe:` line (see [`hvagent_probe::plan`]). In `report`
//! mode it prints one JSON report of what the guest really gets (CPU model and flags, MemTotal,
//! disks, NoCloud identity, entropy, FIPS 140-2 over /dev/random, root disk write IOPS), then,
//! as in `burn` mode, runs the fixed workload on every vCPU and prints one sample per window
//! until the guest is stopped. `hvctl verify` reads both from the serial console log.
//!
//! Usage: `hvagent-probe SEED_DIR` (the directory holding the seed's user-data and meta-data).

mod iops;
mod workload;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use hvagent_probe::plan::{Mode, Plan};
use hvagent_probe::report::{self, Disk, Report, Sample};
use hvagent_probe::{facts, fips};

fn read(path: &Path, errors: &mut Vec<String>) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        errors.push(format!("{}: {e}", path.display()));
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

/// Virtio disks (`vd*`) and their sizes, in name order.
fn disks(errors: &mut Vec<String>) -> Vec<Disk> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir("/sys/block") {
        Ok(e) => e,
        Err(e) => {
            errors.push(format!("/sys/block: {e}"));
            return out;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        let sectors = read(&entry.path().join("size"), errors);
        match sectors.trim().parse::<u64>() {
            // The size file counts 512-byte sectors whatever the device's block size.
            Ok(s) => out.push(Disk {
                name,
                bytes: s * 512,
            }),
            Err(e) => errors.push(format!("/sys/block/{name}/size: {e}")),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn report(plan: &Plan, seed: &Path) -> Report {
    let mut errors = Vec::new();
    let fips = fips_over(plan.fips_blocks, &mut errors);
    let disks = disks(&mut errors);
    let iops = match disks.iter().find(|d| d.name == "vda") {
        _ if plan.iops_ms == 0 => None,
        None => {
            errors.push("iops: no root disk vda".into());
            None
        }
        Some(root) => iops::measure("/dev/vda", root.bytes, Duration::from_millis(plan.iops_ms))
            .map_err(|e| errors.push(format!("iops: {e}")))
            .ok(),
    };
    Report {
        identity: report::identity(&read(&seed.join("meta-data"), &mut errors)),
        cpu: facts::cpu(&read(Path::new("/proc/cpuinfo"), &mut errors)),
        mem_total_bytes: facts::mem_total_bytes(&read(Path::new("/proc/meminfo"), &mut errors)),
        // x86 pages are 4 KiB; the probe is built for x86-64 only.
        mem_present_bytes: facts::mem_present_bytes(
            &read(Path::new("/proc/zoneinfo"), &mut errors),
            4096,
        ),
        disks,
        entropy_avail: read(
            Path::new("/proc/sys/kernel/random/entropy_avail"),
            &mut errors,
        )
        .trim()
        .parse()
        .ok(),
        fips,
        iops,
        errors,
    }
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    // The console is all there is to tell; a failed write has nowhere else to go.
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// Runs the workload on every vCPU and prints a sample per window, for ever.
fn sample_forever(window: Duration) -> ! {
    let mut unused = Vec::new();
    let vcpus = facts::parse_stat(&read(Path::new("/proc/stat"), &mut unused)).len();
    let cpus: Vec<usize> = (0..vcpus.max(1)).collect();
    let load = workload::Workload::start(&cpus);
    let started = Instant::now();
    let mut at = Instant::now();
    let mut chunks = load.chunks();
    let mut times = facts::parse_stat(&read(Path::new("/proc/stat"), &mut unused));
    loop {
        std::thread::sleep(window);
        let (now, now_chunks) = (Instant::now(), load.chunks());
        let now_times = facts::parse_stat(&read(Path::new("/proc/stat"), &mut unused));
        let sample = Sample {
            t_ms: now.duration_since(started).as_millis() as u64,
            throughput: workload::rates(&chunks, &now_chunks, now.duration_since(at).as_secs_f64()),
            steal_ratio: now_times
                .iter()
                .zip(&times)
                .map(|(now, then)| now.usage_since(then).1)
                .collect(),
        };
        for e in load.take_errors() {
            print(&format!("hvagent-probe: {e}"));
        }
        if let Ok(json) = serde_json::to_string(&sample) {
            print(&format!("{}{json}", report::SAMPLE));
        }
        (at, chunks, times) = (now, now_chunks, now_times);
    }
}

fn main() {
    let seed = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp".into()));
    let plan = match Plan::from_user_data(&read(&seed.join("user-data"), &mut Vec::new())) {
        Some(Ok(plan)) => plan,
        Some(Err(e)) => {
            print(&format!("hvagent-probe: {e}"));
            std::process::exit(2);
        }
        None => {
            print("hvagent-probe: the user-data holds no hvagent-probe: line; nothing to do");
            std::process::exit(2);
        }
    };
    if plan.mode == Mode::Report {
        match serde_json::to_string(&report(&plan, &seed)) {
            Ok(json) => print(&format!("{}\n{json}\n{}", report::BEGIN, report::END)),
            Err(e) => print(&format!("hvagent-probe: cannot encode the report: {e}")),
        }
    }
    sample_forever(Duration::from_millis(plan.window_ms))
}
