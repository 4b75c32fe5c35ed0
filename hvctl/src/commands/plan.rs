//! `hvctl plan`: what fits on a captured host, offline.

use std::path::Path;
use std::process::ExitCode;

use hvagent_core::{flavor, host, placement};

use super::{EXIT_USAGE, print};
use crate::cli::Output;
use crate::render;

/// Most guests of one flavor `hvctl plan` places.
const MAX_PLAN_COUNT: u32 = 100_000;

/// `hvctl plan`: the agent's own allocator on a captured tree, no agent involved.
pub fn run(output: Output, root: &Path, config: Option<&Path>, flavors: &[String]) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("hvctl: {msg}");
        ExitCode::from(EXIT_USAGE)
    };
    let policy = match hvagent_core::config::load_placement(config) {
        Ok(policy) => policy,
        Err(e) => return usage(e.to_string()),
    };
    let mut requests = Vec::new();
    for arg in flavors {
        let Some((name, count)) = arg.rsplit_once('=') else {
            return usage(format!(
                "--flavor {arg:?}: expected NAME=COUNT, e.g. SCS-2V-4=10"
            ));
        };
        let count = match count.parse::<u32>() {
            Ok(n) if (1..=MAX_PLAN_COUNT).contains(&n) => n,
            _ => {
                return usage(format!(
                    "--flavor {arg:?}: COUNT must be a number from 1 to {MAX_PLAN_COUNT}"
                ));
            }
        };
        match flavor::parse(name) {
            Ok(p) => requests.push((name.to_string(), p.spec, count)),
            Err(e) => {
                return usage(format!(
                    "--flavor {arg:?}: {name:?} is not a valid SCS flavor name: {e}"
                ));
            }
        }
    }
    if !root.join("sys/devices/system/cpu").is_dir() {
        return usage(format!(
            "--root {}: no sys/devices/system/cpu below it (not a captured sysfs/procfs tree)",
            root.display()
        ));
    }
    let inventory = host::read(
        root,
        host::ExternalFacts {
            libvirt: host::LibvirtFacts {
                error: "not asked by an offline plan".into(),
                ..Default::default()
            },
            kvm: host::KvmVerdict {
                state: host::KvmState::Absent,
                reason: "not probed by an offline plan".into(),
            },
            storage_disk_bytes: None,
        },
    );
    let topology = placement::Topology::from_inventory(&inventory);
    let mut alloc = match placement::Allocator::new(topology, policy) {
        Ok(a) => a,
        Err(e) => return usage(e.to_string()),
    };
    let planned = placement::plan::plan(&mut alloc, &requests);
    print(output, &planned, render::plan)
}
