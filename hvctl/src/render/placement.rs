//! Claims, capacity and offline plans.

use hvagent_proto::v1 as pb;

use super::{Table, ids, section};

/// `node:MiB` per share, with the page size when huge: `0:2048 1:1024@1G`.
fn shares(memory: &[pb::MemoryShare]) -> String {
    memory
        .iter()
        .map(|m| {
            let page = if m.page_size_kib == hvagent_core::placement::claim::NORMAL_PAGE_KIB {
                String::new()
            } else {
                format!(
                    "@{}",
                    hvagent_core::host::scheduler::page_size_label(m.page_size_kib)
                )
            };
            format!("{}:{}{page}", m.numa_node, m.mib)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Claims as a table: pinned CPUs (or `pool`), memory per node, guest topology, state.
pub fn claims(list: &[pb::Claim], shared_pool: &[u32]) -> String {
    let mut t = Table::new(&[
        "VM",
        "FLAVOR",
        "VCPU CPUS",
        "IDLE",
        "EMULATOR",
        "MEMORY (node:MiB)",
        "GUEST S/C/T",
        "STATE",
    ]);
    for c in list {
        let pinned: Vec<u32> = c
            .vcpus
            .iter()
            .filter(|v| v.cpus.len() == 1 && (c.cpu_type == "C" || c.cpu_type == "T"))
            .flat_map(|v| v.cpus.clone())
            .collect();
        let topo = c.guest_topology.unwrap_or_default();
        t.row(vec![
            c.vm_uuid.clone(),
            c.flavor.clone(),
            if pinned.is_empty() {
                format!("pool ({} vCPUs)", c.vcpus.len())
            } else {
                pinned
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            ids(&c.idle_cpus),
            ids(&c.emulator_cpus),
            shares(&c.memory),
            format!("{}/{}/{}", topo.sockets, topo.cores, topo.threads),
            if c.reservation {
                format!("reserved, {} s left", c.expires_in_ms.div_ceil(1000))
            } else {
                "bound".into()
            },
        ]);
    }
    let mut out = t.render();
    if !shared_pool.is_empty() || list.is_empty() {
        out.push_str(&format!("\nshared pool: {}\n", ids(shared_pool)));
    }
    out
}

/// Capacity per flavor.
pub fn capacity(c: &pb::GetCapacityResponse) -> String {
    let mut t = Table::new(&["FLAVOR", "MORE", "PER NUMA NODE", "LIMITED BY", "WHY"]);
    for f in &c.flavors {
        t.row(vec![
            f.flavor.clone(),
            f.more.to_string(),
            f.per_numa_node
                .iter()
                .map(|n| format!("{}:{}", n.numa_node, n.more))
                .collect::<Vec<_>>()
                .join(" "),
            f.limited_by.clone(),
            f.reason.clone(),
        ]);
    }
    t.render()
}

/// An offline plan: claims, refusals, what still fits.
pub fn plan(p: &hvagent_core::placement::plan::Plan) -> String {
    let mut claims = Table::new(&[
        "FLAVOR",
        "#",
        "VCPU CPUS",
        "IDLE",
        "EMULATOR",
        "MEMORY (node:MiB)",
        "GUEST S/C/T",
    ]);
    for c in &p.claims {
        let pins: Vec<String> = c
            .vcpus
            .iter()
            .map(|v| {
                if v.cpus.len() == 1 {
                    v.cpus[0].to_string()
                } else {
                    "pool".into()
                }
            })
            .collect();
        let mut pins_text = pins.join(",");
        if pins.iter().all(|p| p == "pool") {
            pins_text = format!("pool ({} vCPUs)", pins.len());
        }
        let memory: Vec<pb::MemoryShare> = c
            .memory
            .iter()
            .map(|m| pb::MemoryShare {
                numa_node: m.numa_node,
                mib: m.mib,
                page_size_kib: m.page_size_kib,
            })
            .collect();
        claims.row(vec![
            c.flavor.clone(),
            c.index.to_string(),
            pins_text,
            ids(&c.idle_cpus),
            ids(&c.emulator_cpus),
            shares(&memory),
            format!(
                "{}/{}/{}",
                c.guest_topology.sockets, c.guest_topology.cores, c.guest_topology.threads
            ),
        ]);
    }
    let mut out = claims.render();
    if !p.rejected.is_empty() {
        let mut rejected = Table::new(&["REJECTED", "#", "LIMITED BY", "WHY"]);
        for r in &p.rejected {
            rejected.row(vec![
                r.flavor.clone(),
                r.index.to_string(),
                r.limited_by.clone(),
                r.reason.clone(),
            ]);
        }
        section(&mut out, &rejected);
    }
    let mut capacity = Table::new(&["STILL FITS", "MORE", "PER NUMA NODE", "LIMITED BY"]);
    for c in &p.capacity {
        capacity.row(vec![
            c.flavor.clone(),
            c.more.to_string(),
            c.per_numa_node
                .iter()
                .map(|n| format!("{}:{}", n.numa_node, n.more))
                .collect::<Vec<_>>()
                .join(" "),
            c.limited_by.clone(),
        ]);
    }
    section(&mut out, &capacity);
    out
}
