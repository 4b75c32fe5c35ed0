//! The inventory of this machine, served by the real agent, agrees with independent tools:
//! `lscpu -J`, `numactl -H`, `/proc/meminfo`, `virsh capabilities` and `virsh version`.

mod common;

use std::collections::BTreeMap;

use common::{Agent, tool};
use serde_json::Value;

/// lscpu -J nests fields ("children"); flatten them into "Field:" → data.
/// libvirtd on these machines re-probes QEMU (about 8 s) for every capabilities call and does
/// one at a time: four agents asking at once would wait longer than the agent's libvirt
/// timeout. One test at a time asks.
static LIBVIRT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    LIBVIRT.lock().unwrap_or_else(|p| p.into_inner())
}

fn lscpu() -> BTreeMap<String, String> {
    fn walk(items: &[Value], out: &mut BTreeMap<String, String>) {
        for item in items {
            if let (Some(f), Some(d)) = (item["field"].as_str(), item["data"].as_str()) {
                out.insert(f.trim_end_matches(':').to_string(), d.to_string());
            }
            if let Some(children) = item["children"].as_array() {
                walk(children, out);
            }
        }
    }
    let json: Value = serde_json::from_str(&tool("lscpu", &["-J"])).unwrap();
    let mut out = BTreeMap::new();
    walk(json["lscpu"].as_array().unwrap(), &mut out);
    out
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn parse_ids(list: &str) -> Vec<u64> {
    hvagent::host::sysfs::parse_cpulist(list)
        .unwrap()
        .into_iter()
        .map(u64::from)
        .collect()
}

/// Value of attribute `name` in an XML element written on one line.
fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}='"))? + name.len() + 3;
    let end = line[start..].find('\'')?;
    Some(&line[start..start + end])
}

#[test]
fn cpu_agrees_with_lscpu() {
    let _turn = one_at_a_time();
    let agent = Agent::start("");
    let inv = agent.inventory_json();
    let cpu = &inv["cpu"];
    let l = lscpu();
    assert_eq!(cpu["vendor"], l["Vendor ID"]);
    assert_eq!(cpu["model_name"], l["Model name"]);
    assert_eq!(cpu["family"].to_string(), l["CPU family"]);
    assert_eq!(cpu["model"].to_string(), l["Model"]);
    if let Some(stepping) = l.get("Stepping") {
        assert_eq!(&cpu["stepping"].to_string(), stepping);
    }
    assert_eq!(
        parse_ids(cpu["online"].as_str().unwrap()),
        parse_ids(&l["On-line CPU(s) list"])
    );
    let sockets: u64 = l["Socket(s)"].parse().unwrap();
    let cores_per_socket: u64 = l["Core(s) per socket"].parse().unwrap();
    let threads_per_core: u64 = l["Thread(s) per core"].parse().unwrap();
    assert_eq!(cpu["sockets"].as_u64(), Some(sockets));
    assert_eq!(cpu["cores"].as_u64(), Some(sockets * cores_per_socket));
    assert_eq!(
        cpu["threads"].as_u64(),
        Some(sockets * cores_per_socket * threads_per_core)
    );
    assert_eq!(cpu["smt_active"].as_bool(), Some(threads_per_core > 1));
    let mut ours: Vec<&str> = cpu["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let mut theirs: Vec<&str> = l["Flags"].split_whitespace().collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    if let Some(nodes) = l.get("NUMA node(s)") {
        assert_eq!(
            inv["numa_nodes"].as_array().unwrap().len().to_string(),
            *nodes
        );
    }
}

#[test]
fn numa_agrees_with_numactl_and_meminfo() {
    let _turn = one_at_a_time();
    let agent = Agent::start("");
    // Some kernels (this development VM among them) initialise node memory lazily, so node
    // sizes may grow between two reads: ours must lie between numactl's before and after.
    let before = tool("numactl", &["-H"]);
    let inv = agent.inventory_json();
    let after = tool("numactl", &["-H"]);
    let size_mb = |text: &str, node: u64| -> u64 {
        let prefix = format!("node {node} size: ");
        let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap();
        line[prefix.len()..]
            .trim_end_matches(" MB")
            .parse()
            .unwrap()
    };
    let nodes = inv["numa_nodes"].as_array().unwrap();
    assert!(
        before.starts_with(&format!("available: {} nodes", nodes.len())),
        "{before}"
    );
    for node in nodes {
        let id = node["id"].as_u64().unwrap();
        let cpus_line = format!("node {id} cpus:");
        let theirs: Vec<u64> = before.lines().find(|l| l.starts_with(&cpus_line)).unwrap()
            [cpus_line.len()..]
            .split_whitespace()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(u64s(&node["cpus"]), theirs, "node {id} cpus");
        let ours_mb = node["memory_total_bytes"].as_u64().unwrap() >> 20;
        let (lo, hi) = (size_mb(&before, id), size_mb(&after, id));
        assert!(
            lo <= ours_mb && ours_mb <= hi,
            "node {id}: {ours_mb} MB not within numactl's {lo}..{hi}"
        );
    }
    // numactl prints the distance matrix rows as "  0:  10  21".
    for node in nodes {
        let id = node["id"].as_u64().unwrap();
        let row = before
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id}:")))
            .unwrap();
        let theirs: Vec<u64> = row
            .split_whitespace()
            .skip(1)
            .map(|d| d.parse().unwrap())
            .collect();
        assert_eq!(u64s(&node["distances"]), theirs, "node {id} distances");
    }

    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb = |key: &str| -> u64 {
        let line = meminfo
            .lines()
            .find(|l| l.starts_with(&format!("{key}:")))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(
        inv["memory"]["total_bytes"].as_u64(),
        Some(kb("MemTotal") * 1024)
    );
    let default_size = kb("Hugepagesize");
    let pools = inv["memory"]["hugepages"].as_array().unwrap();
    let default_pool = pools
        .iter()
        .find(|p| p["page_size_kib"].as_u64() == Some(default_size))
        .expect("the default hugepage size is reported");
    assert_eq!(default_pool["total"].as_u64(), Some(kb("HugePages_Total")));
    assert_eq!(default_pool["free"].as_u64(), Some(kb("HugePages_Free")));
}

#[test]
fn topology_and_versions_agree_with_libvirt() {
    let _turn = one_at_a_time();
    let agent = Agent::start("");
    let inv = agent.inventory_json();
    let caps = tool("virsh", &["-c", "qemu:///system", "capabilities"]);
    let host = &caps[caps.find("<host>").unwrap()..caps.find("</host>").unwrap()];

    // Every online CPU's socket, core and siblings as libvirt sees them.
    let cpus = inv["cpu"]["cpus"].as_array().unwrap();
    let mut seen = 0;
    for line in host
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("<cpu id="))
    {
        let id: u64 = attr(line, "id").unwrap().parse().unwrap();
        let ours = cpus.iter().find(|c| c["id"].as_u64() == Some(id)).unwrap();
        assert_eq!(
            ours["socket"].to_string(),
            attr(line, "socket_id").unwrap(),
            "cpu{id}"
        );
        assert_eq!(
            ours["core"].to_string(),
            attr(line, "core_id").unwrap(),
            "cpu{id}"
        );
        assert_eq!(
            u64s(&ours["siblings"]),
            parse_ids(attr(line, "siblings").unwrap()),
            "cpu{id}"
        );
        seen += 1;
    }
    assert_eq!(seen, inv["cpu"]["threads"].as_u64().unwrap());

    // Cells: count, memory is node memory (may grow lazily, see numactl test), hugepages.
    let cells: Vec<&str> = host.split("<cell id=").skip(1).collect();
    let nodes = inv["numa_nodes"].as_array().unwrap();
    assert_eq!(cells.len(), nodes.len());
    for (cell, node) in cells.iter().zip(nodes) {
        for line in cell
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("<pages unit='KiB'"))
        {
            let size: u64 = attr(line, "size").unwrap().parse().unwrap();
            if size == 4 {
                continue;
            }
            let count: u64 = line[line.find('>').unwrap() + 1..line.find("</").unwrap()]
                .parse()
                .unwrap();
            let ours = node["hugepages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["page_size_kib"].as_u64() == Some(size))
                .unwrap_or_else(|| panic!("page size {size} KiB missing on node {}", node["id"]));
            assert_eq!(ours["total"].as_u64(), Some(count), "{size} KiB pages");
        }
    }
    // Every page size libvirt knows (besides 4 KiB) is in our node-wide list.
    let cpu_block = &host[host.find("<cpu>").unwrap()..host.find("</cpu>").unwrap()];
    let sizes: Vec<u64> = cpu_block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("<pages"))
        .filter_map(|l| attr(l, "size")?.parse().ok())
        .filter(|s| *s != 4)
        .collect();
    let ours: Vec<u64> = inv["memory"]["hugepages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["page_size_kib"].as_u64().unwrap())
        .collect();
    assert_eq!(ours, sizes);

    let version = tool("virsh", &["-c", "qemu:///system", "version"]);
    let hv = &inv["hypervisor"];
    assert_eq!(hv["libvirt_connected"], true, "{}", hv["libvirt_error"]);
    let libvirt = hv["libvirt_version"].as_str().unwrap();
    let qemu = hv["qemu_version"].as_str().unwrap();
    assert!(
        version.contains(&format!("Using library: libvirt {libvirt}")),
        "{version}"
    );
    assert!(
        version.contains(&format!("Running hypervisor: QEMU {qemu}")),
        "{version}"
    );
    let types: Vec<&str> = hv["domain_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(types.contains(&"qemu"), "{types:?}");
    for t in &types {
        assert!(caps.contains(&format!("<domain type='{t}'")), "{t}");
    }
}

#[test]
fn kvm_verdict_matches_a_real_trial() {
    // The agent's verdict must match what actually happens: a usable verdict only where a KVM
    // guest really runs fast; where /dev/kvm is missing, "absent".
    let _turn = one_at_a_time();
    let agent = Agent::start("");
    let hv = agent.inventory_json()["hypervisor"].clone();
    let kvm = hv["kvm"].as_str().unwrap();
    if !std::path::Path::new("/dev/kvm").exists() {
        assert_eq!(kvm, "absent");
        return;
    }
    let trial = std::process::Command::new(common::bin("hvagent"))
        .args(["--kvm-trial", "/dev/kvm"])
        .output()
        .unwrap();
    let expected = if trial.status.success() {
        "usable"
    } else {
        "broken"
    };
    assert_eq!(kvm, expected, "{}", hv["kvm_reason"]);
    println!("KVM here: {kvm} ({})", hv["kvm_reason"]);
}
