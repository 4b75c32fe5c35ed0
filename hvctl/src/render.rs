//! Human-readable tables for `hvctl`. JSON output does not come through here: it is the proto
//! message serialized as it is, so its keys are the proto field names.

use hvagent_proto::v1 as pb;

/// A plain text table: a header row and left-aligned columns separated by two spaces.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if i + 1 == cells.len() {
                    s.push_str(cell);
                } else {
                    s.push_str(&format!("{cell:<w$}  "));
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.headers);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Appends a table as its own block, after a blank line.
fn section(out: &mut String, table: &Table) {
    out.push('\n');
    out.push_str(&table.render());
}

/// Bytes in binary units with one decimal: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn ids(list: &[u32]) -> String {
    or_dash(&hvagent_core::host::sysfs::format_cpulist(list)).to_string()
}

fn opt(n: Option<u32>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

fn hugepages(pools: &[pb::HugepagePool]) -> String {
    if pools.is_empty() {
        return "-".into();
    }
    pools
        .iter()
        .map(|p| {
            format!(
                "{}: {}/{} free",
                hvagent_core::host::scheduler::page_size_label(p.page_size_kib),
                p.free,
                p.total
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A parsed flavor: its parts, one per line.
pub fn flavor(f: &hvagent_core::flavor::view::FlavorView) -> String {
    let mut t = Table::new(&["FLAVOR", ""]);
    t.row(vec![
        "name".into(),
        format!("{} (syntax {})", f.name, f.syntax),
    ]);
    t.row(vec!["short name".into(), f.short_name.clone()]);
    t.row(vec![
        "cpu".into(),
        format!(
            "{} {}{}",
            f.cpu.count,
            f.cpu.kind,
            if f.cpu.insecure { ", insecure" } else { "" }
        ),
    ]);
    t.row(vec![
        "ram".into(),
        format!(
            "{} GiB, {}{}",
            f.ram.gib,
            if f.ram.ecc { "ECC" } else { "no ECC" },
            if f.ram.oversubscribed {
                ", oversubscribed"
            } else {
                ""
            }
        ),
    ]);
    t.row(vec![
        "disk".into(),
        match &f.disk {
            None => "none (boot from volume)".into(),
            Some(d) => format!(
                "{} x {} {}",
                d.count,
                d.size_gb
                    .map(|s| format!("{s} GB"))
                    .unwrap_or_else(|| "min_disk-sized".into()),
                d.kind.unwrap_or("(type chosen by the cloud)")
            ),
        },
    ]);
    t.row(vec![
        "hypervisor".into(),
        f.hypervisor.unwrap_or("- (kvm assumed)").into(),
    ]);
    t.row(vec!["hwv".into(), yes_no(f.hwv).into()]);
    t.row(vec![
        "cpu brand".into(),
        match &f.cpu_brand {
            None => "-".into(),
            Some(b) => format!(
                "{}{}, frequency level {}",
                b.vendor,
                b.generation
                    .map(|g| format!(" generation {g}"))
                    .unwrap_or_default(),
                b.frequency_level
            ),
        },
    ]);
    t.row(vec![
        "gpu".into(),
        match &f.gpu {
            None => "-".into(),
            Some(g) => format!(
                "{} {}{}{}{}",
                g.kind,
                g.vendor,
                g.generation
                    .map(|x| format!(" generation {x}"))
                    .unwrap_or_default(),
                g.compute_units
                    .map(|c| format!(", {c} compute units (h level {})", g.high_freq_level))
                    .unwrap_or_default(),
                g.vram_gib
                    .map(|v| format!(", {v} GiB VRAM (h level {})", g.hbm_level))
                    .unwrap_or_default()
            ),
        },
    ]);
    t.row(vec!["ib".into(), yes_no(f.ib).into()]);
    for (k, v) in &f.extra_specs {
        t.row(vec![k.clone(), v.clone()]);
    }
    t.render()
}

/// What `hvctl flavor explain` prints (and, as JSON, serializes).
#[derive(Debug, serde::Serialize)]
pub struct Explained {
    pub name: String,
    pub promises: Vec<hvagent_core::flavor::explain::Promise>,
}

pub fn explained(e: &Explained) -> String {
    let mut out = format!(
        "{}
",
        e.name
    );
    for p in &e.promises {
        out.push_str(&format!(
            "\n{}: {}\n  on this node: {}\n",
            p.part, p.promise, p.enforcement
        ));
    }
    out
}

/// The standard flavors as a table.
pub fn standard_flavors(list: &[pb::StandardFlavor]) -> String {
    let mut t = Table::new(&["NAME", "STATUS", "VCPUS", "CPU TYPE", "RAM", "DISK"]);
    for s in list {
        let f = s.flavor.clone().unwrap_or_default();
        let cpu = f.cpu.unwrap_or_default();
        t.row(vec![
            s.name.clone(),
            if s.mandatory {
                "mandatory"
            } else {
                "recommended"
            }
            .into(),
            cpu.count.to_string(),
            cpu.r#type,
            format!("{} GiB", f.ram.map(|r| r.gib).unwrap_or_default()),
            f.disk
                .map(|d| {
                    format!(
                        "{} GB {}",
                        d.size_gb.unwrap_or_default(),
                        f.extra_specs
                            .get("scs:disk0-type")
                            .cloned()
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

/// The whole inventory as sections of `key  value` lines and tables.
pub fn inventory(inv: &pb::Inventory) -> String {
    let mut out = String::new();
    let mut facts = Table::new(&["NODE", ""]);
    let cpu = inv.cpu.clone().unwrap_or_default();
    let mem = inv.memory.clone().unwrap_or_default();
    let hv = inv.hypervisor.clone().unwrap_or_default();
    let scs = inv.scs.clone().unwrap_or_default();
    facts.row(vec![
        "host".into(),
        format!(
            "{} (kernel {})",
            or_dash(&inv.hostname),
            or_dash(&inv.kernel_release)
        ),
    ]);
    facts.row(vec![
        "cpu".into(),
        format!(
            "{} ({} family {:#x} model {:#x} stepping {}, microcode {})",
            or_dash(&cpu.model_name),
            or_dash(&cpu.vendor),
            cpu.family,
            cpu.model,
            cpu.stepping,
            or_dash(&cpu.microcode)
        ),
    ]);
    facts.row(vec![
        "topology".into(),
        format!(
            "{} socket(s), {} die(s), {} core(s), {} thread(s), SMT {} (control {})",
            cpu.sockets,
            cpu.dies,
            cpu.cores,
            cpu.threads,
            if cpu.smt_active { "on" } else { "off" },
            or_dash(&cpu.smt_control)
        ),
    ]);
    facts.row(vec![
        "cpus".into(),
        format!(
            "online {}, offline {}, isolated {}",
            or_dash(&cpu.online),
            or_dash(&cpu.offline),
            or_dash(&cpu.isolated)
        ),
    ]);
    facts.row(vec![
        "memory".into(),
        format!(
            "{} total, {} available, ECC {} ({})",
            bytes(mem.total_bytes),
            bytes(mem.available_bytes),
            mem.ecc,
            mem.ecc_reason
        ),
    ]);
    facts.row(vec!["hugepages".into(), hugepages(&mem.hugepages)]);
    facts.row(vec![
        "libvirt".into(),
        if hv.libvirt_connected {
            format!(
                "{} with QEMU {} at {} (domain types: {})",
                hv.libvirt_version,
                hv.qemu_version,
                hv.libvirt_uri,
                hv.domain_types.join(", ")
            )
        } else {
            format!("not connected: {}", hv.libvirt_error)
        },
    ]);
    facts.row(vec![
        "kvm".into(),
        format!("{} ({})", hv.kvm, hv.kvm_reason),
    ]);
    facts.row(vec![
        "nested".into(),
        format!(
            "{} ({})",
            yes_no(hv.nested_virtualization),
            hv.nested_reason
        ),
    ]);
    facts.row(vec![
        "entropy".into(),
        format!("rdrand {}, rdseed {}", yes_no(hv.rdrand), yes_no(hv.rdseed)),
    ]);
    facts.row(vec![
        "scs brand".into(),
        format!("{} ({})", or_dash(&scs.cpu_brand), scs.cpu_brand_reason),
    ]);
    facts.row(vec![
        "scs secure".into(),
        format!(
            "{} ({})",
            if scs.serves_secure {
                "serves flavors without i"
            } else {
                "only i flavors"
            },
            scs.serves_secure_reason
        ),
    ]);
    facts.row(vec![
        "scs ecc".into(),
        format!(
            "{} ({})",
            if scs.serves_ecc {
                "serves flavors without u"
            } else {
                "only u flavors"
            },
            scs.serves_ecc_reason
        ),
    ]);
    facts.row(vec![
        "scs disks".into(),
        format!(
            "local classes {}, hwv {}",
            or_dash(&scs.local_disk_classes.join("")),
            yes_no(scs.serves_hwv)
        ),
    ]);
    out.push_str(&facts.render());

    let mut numa = Table::new(&["NUMA", "CPUS", "MEMORY", "FREE", "DISTANCES", "HUGEPAGES"]);
    for n in &inv.numa_nodes {
        numa.row(vec![
            n.id.to_string(),
            ids(&n.cpus),
            bytes(n.memory_total_bytes),
            bytes(n.memory_free_bytes),
            n.distances
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            hugepages(&n.hugepages),
        ]);
    }
    section(&mut out, &numa);

    let mut cpus = Table::new(&[
        "CPU", "ONLINE", "SOCKET", "DIE", "CORE", "SIBLINGS", "NUMA", "ISOLATED",
    ]);
    for c in &cpu.cpus {
        cpus.row(vec![
            c.id.to_string(),
            yes_no(c.online).into(),
            opt(c.socket),
            opt(c.die),
            opt(c.core),
            ids(&c.siblings),
            opt(c.numa_node),
            yes_no(c.isolated).into(),
        ]);
    }
    section(&mut out, &cpus);

    let mut caches = Table::new(&["CACHE", "TYPE", "SIZE", "WAYS", "LINE", "CPUS"]);
    for c in &cpu.caches {
        caches.row(vec![
            format!("L{}", c.level),
            c.r#type.clone(),
            bytes(c.size_bytes),
            c.ways.to_string(),
            c.line_size_bytes.to_string(),
            ids(&c.cpus),
        ]);
    }
    section(&mut out, &caches);

    if !inv.block_devices.is_empty() {
        let mut disks = Table::new(&["DISK", "SIZE", "MODEL", "ROTATIONAL", "NVME", "SCS CLASS"]);
        for d in &inv.block_devices {
            disks.row(vec![
                d.name.clone(),
                bytes(d.size_bytes),
                or_dash(&d.model).into(),
                yes_no(d.rotational).into(),
                yes_no(d.nvme).into(),
                d.scs_disk_class.clone(),
            ]);
        }
        section(&mut out, &disks);
    }
    if !inv.nics.is_empty() {
        let mut nics = Table::new(&[
            "NIC", "DRIVER", "MAC", "MTU", "SPEED", "LINK", "NUMA", "VFS",
        ]);
        for n in &inv.nics {
            nics.row(vec![
                n.name.clone(),
                or_dash(&n.driver).into(),
                n.mac.clone(),
                n.mtu.to_string(),
                n.speed_mbps
                    .map(|s| format!("{s} Mb/s"))
                    .unwrap_or_else(|| "-".into()),
                if n.link_up { "up" } else { "down" }.into(),
                opt(n.numa_node),
                format!("{}/{}", n.sriov_num_vfs, n.sriov_total_vfs),
            ]);
        }
        section(&mut out, &nics);
    }
    if !inv.gpus.is_empty() {
        let mut gpus = Table::new(&["GPU", "VENDOR", "DEVICE", "SCS", "NUMA", "DRIVER"]);
        for g in &inv.gpus {
            gpus.row(vec![
                g.pci_address.clone(),
                g.vendor_id.clone(),
                g.device_id.clone(),
                or_dash(&g.scs_vendor).into(),
                opt(g.numa_node),
                or_dash(&g.driver).into(),
            ]);
        }
        section(&mut out, &gpus);
    }
    if !inv.infiniband_devices.is_empty() {
        out.push_str(&format!(
            "\ninfiniband  {}\n",
            inv.infiniband_devices.join(", ")
        ));
    }
    if let Some(sched) = &inv.scheduler {
        let mut res = Table::new(&[
            "RESOURCE", "TOTAL", "RESERVED", "RATIO", "MIN", "MAX", "STEP",
        ]);
        for r in &sched.inventories {
            res.row(vec![
                r.resource_class.clone(),
                r.total.to_string(),
                r.reserved.to_string(),
                format!("{:.1}", r.allocation_ratio),
                r.min_unit.to_string(),
                r.max_unit.to_string(),
                r.step_size.to_string(),
            ]);
        }
        section(&mut out, &res);
        out.push_str(&format!("\ntraits  {}\n", sched.traits.join(" ")));
    }
    for w in &inv.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

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

/// Images as a table.
/// An import's bytes so far, of how many, and the share done when the total is known.
pub fn progress(i: &pb::Image) -> String {
    if i.bytes_total == 0 {
        return format!("{} received", bytes(i.bytes_received));
    }
    format!(
        "{} of {} ({}%)",
        bytes(i.bytes_received),
        bytes(i.bytes_total),
        i.bytes_received * 100 / i.bytes_total
    )
}

pub fn images(list: &[pb::Image]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "FORMAT",
        "VIRTUAL SIZE",
        "FILE",
        "SHA256",
        "USED BY",
    ]);
    for i in list {
        let state = if i.state == "importing" {
            format!("importing: {}", progress(i))
        } else {
            i.state.clone()
        };
        t.row(vec![
            i.name.clone(),
            state,
            or_dash(&i.format).to_string(),
            bytes(i.virtual_size_bytes),
            bytes(i.file_bytes),
            i.sha256.chars().take(16).collect(),
            or_dash(&i.used_by.join(",")).to_string(),
        ]);
    }
    t.render()
}

/// Networks as a table, with what is being repaired under each.
pub fn networks(list: &[pb::NetworkStatus]) -> String {
    let mut t = Table::new(&["NAME", "KIND", "BRIDGE", "MTU", "STATE", "NICS", "RX", "TX"]);
    let mut problems = String::new();
    for n in list {
        let spec = n.spec.clone().unwrap_or_default();
        let kind = match spec.kind.as_str() {
            "vxlan" => format!("vxlan {}", spec.vni),
            "vlan" => format!("vlan {} on {}", spec.vlan_id, spec.uplink),
            _ if !spec.uplink.is_empty() => format!("bridge on {}", spec.uplink),
            other => other.to_string(),
        };
        let c = n.counters.unwrap_or_default();
        t.row(vec![
            spec.name.clone(),
            kind,
            n.bridge.clone(),
            n.mtu.to_string(),
            n.state.clone(),
            or_dash(&n.nics.join(",")).to_string(),
            bytes(c.rx_bytes),
            bytes(c.tx_bytes),
        ]);
        for p in &n.problems {
            problems.push_str(&format!("{}: {p}\n", spec.name));
        }
    }
    t.render() + &problems
}

/// Guests as a table.
pub fn vms(list: &[pb::Vm]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "UUID",
        "STATE",
        "FLAVOR",
        "IMAGE",
        "EMULATION",
        "VCPU CPUS",
        "ROOT DISK",
    ]);
    for v in list {
        let claim = v.claim.clone().unwrap_or_default();
        let dedicated = claim.cpu_type == "C" || claim.cpu_type == "T";
        t.row(vec![
            v.name.clone(),
            v.uuid.clone(),
            v.state.clone(),
            v.flavor.clone(),
            v.image.clone(),
            v.emulation.clone(),
            if dedicated {
                claim
                    .vcpus
                    .iter()
                    .flat_map(|c| c.cpus.iter().map(u32::to_string))
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                format!("pool ({} vCPUs)", claim.vcpus.len())
            },
            format!("{} GiB", v.root_disk_gb),
        ]);
    }
    t.render()
}

/// One event line: `<unix ms> <uuid> <name> <kind>/<detail>`.
pub fn event(e: &pb::VmEvent) -> String {
    format!(
        "{} {} {} {}/{}",
        e.unix_ms, e.uuid, e.name, e.kind, e.detail
    )
}

/// `hvctl vm list`: the guests, then any domain whose metadata cannot be read.
pub fn vm_list(l: &pb::ListVmsResponse) -> String {
    let mut out = vms(&l.vms);
    for u in &l.unreadable {
        out.push_str(&format!("unreadable metadata (left alone): {u}\n"));
    }
    out
}

fn percent(ratio: f64) -> String {
    format!("{:.1} %", ratio * 100.0)
}

/// `hvctl node health`: conditions, key figures, open violations, guests.
pub fn health(h: &pb::Health) -> String {
    let mut out = format!(
        "node {} (sampled every {} s)\n",
        if h.ready { "READY" } else { "NOT READY" },
        h.interval_ms as f64 / 1000.0
    );
    let mut t = Table::new(&["CONDITION", "STATUS", "REASON", "SINCE (UNIX S)", "MESSAGE"]);
    for c in &h.conditions {
        t.row(vec![
            c.r#type.clone(),
            if c.status { "True" } else { "False" }.into(),
            c.reason.clone(),
            (c.since_unix_ms / 1000).to_string(),
            c.message.clone(),
        ]);
    }
    section(&mut out, &t);
    let host = h.host.clone().unwrap_or_default();
    let mut t = Table::new(&["FIGURE", "VALUE"]);
    let busy: Vec<String> = host
        .cpus
        .iter()
        .map(|c| format!("{}:{:.0}%", c.cpu, c.busy_ratio * 100.0))
        .collect();
    t.row(vec!["cpu busy".into(), or_dash(&busy.join(" ")).into()]);
    let steal = host.cpus.iter().map(|c| c.steal_ratio).fold(0.0, f64::max);
    t.row(vec!["cpu steal (max)".into(), percent(steal)]);
    t.row(vec![
        "load".into(),
        format!("{:.2} {:.2} {:.2}", host.load1, host.load5, host.load15),
    ]);
    for p in &host.pressure {
        t.row(vec![
            format!("pressure {} {}", p.resource, p.kind),
            format!("{:.1} % (avg10)", p.avg10),
        ]);
    }
    t.row(vec![
        "memory".into(),
        format!(
            "{} available of {}; {} reserved for the host, {} claimed by guests",
            bytes(host.memory_available_bytes),
            bytes(host.memory_total_bytes),
            bytes(host.memory_reserved_bytes),
            bytes(host.memory_claimed_bytes)
        ),
    ]);
    for n in &host.numa_nodes {
        let pools: Vec<pb::HugepagePool> = n
            .hugepages
            .iter()
            .filter(|p| p.total > 0)
            .map(|p| pb::HugepagePool {
                page_size_kib: p.page_size_kib,
                total: p.total,
                free: p.free,
            })
            .collect();
        t.row(vec![
            format!("numa node {}", n.numa_node),
            format!(
                "{} free of {}; hugepages {}",
                bytes(n.memory_free_bytes),
                bytes(n.memory_total_bytes),
                hugepages(&pools)
            ),
        ]);
    }
    if let Some(s) = &host.store {
        t.row(vec![
            "image store".into(),
            format!(
                "{}: {} free of {}",
                s.path,
                bytes(s.free_bytes),
                bytes(s.size_bytes)
            ),
        ]);
    }
    for m in &host.memory_errors {
        t.row(vec![
            format!("memory errors {}", m.controller),
            format!("{} corrected, {} uncorrected", m.corrected, m.uncorrected),
        ]);
    }
    for temp in &host.temperatures {
        t.row(vec![
            format!("temperature {} {}", temp.chip, temp.sensor),
            format!("{:.1} °C", temp.celsius),
        ]);
    }
    if let Some(a) = &host.agent {
        t.row(vec![
            "agent".into(),
            format!(
                "{} resident, {:.1} s CPU, {} threads",
                bytes(a.rss_bytes),
                a.cpu_seconds,
                a.threads
            ),
        ]);
    }
    section(&mut out, &t);
    if !h.violations.is_empty() {
        let mut t = Table::new(&["GUEST", "KIND", "VCPU", "EXPECTED", "ACTUAL", "DETAIL"]);
        for v in &h.violations {
            t.row(vec![
                v.vm_name.clone(),
                v.kind.clone(),
                if v.vcpu < 0 {
                    "emulator".into()
                } else {
                    v.vcpu.to_string()
                },
                ids(&v.expected),
                ids(&v.actual),
                v.detail.clone(),
            ]);
        }
        section(&mut out, &t);
    }
    if !h.guests.is_empty() {
        let mut t = Table::new(&["GUEST", "STATE", "FLAVOR", "CPU", "MAX STEAL", "RSS", "AGE"]);
        for g in &h.guests {
            let steal = g.vcpus.iter().map(|v| v.steal_ratio).fold(0.0, f64::max);
            t.row(vec![
                g.name.clone(),
                g.state.clone(),
                g.flavor.clone(),
                format!("{:.1} s", g.cpu_seconds),
                percent(steal),
                bytes(g.rss_bytes),
                if g.quarantined {
                    format!(
                        "{:.0} s (quarantined: {})",
                        g.age_seconds, g.quarantine_reason
                    )
                } else {
                    format!("{:.0} s", g.age_seconds)
                },
            ]);
        }
        section(&mut out, &t);
    }
    out
}

/// `hvctl vm guarantees`: one line per promise, then the observed pins and memory.
pub fn guarantees(r: &pb::GuaranteeReport) -> String {
    let mut out = format!(
        "{} ({}) {} under {}\n",
        r.vm_name, r.vm_uuid, r.flavor, r.emulation
    );
    let mut t = Table::new(&["PROMISE", "VERDICT", "PROMISED", "OBSERVED", "WHY"]);
    for p in &r.promises {
        let verdict = match pb::Verdict::try_from(p.verdict) {
            Ok(pb::Verdict::Kept) => "kept",
            Ok(pb::Verdict::Violated) => "VIOLATED",
            Ok(pb::Verdict::NotVerifiable) => "not verifiable",
            _ => "unknown",
        };
        t.row(vec![
            p.name.clone(),
            verdict.into(),
            p.promised.clone(),
            p.observed.clone(),
            p.why.clone(),
        ]);
    }
    section(&mut out, &t);
    let mut t = Table::new(&["VCPU", "CLAIMED CPUS", "THREAD AFFINITY", "RUN", "STEAL"]);
    for v in &r.vcpus {
        t.row(vec![
            v.vcpu.to_string(),
            ids(&v.claimed),
            ids(&v.actual),
            percent(v.run_ratio),
            percent(v.steal_ratio),
        ]);
    }
    t.row(vec![
        "emulator".into(),
        ids(&r.emulator_claimed),
        ids(&r.emulator_actual),
        "-".into(),
        "-".into(),
    ]);
    section(&mut out, &t);
    let mut t = Table::new(&["NUMA NODE", "CLAIMED", "RESIDENT", "ON HUGEPAGES"]);
    for m in &r.memory {
        t.row(vec![
            m.numa_node.to_string(),
            bytes(m.claimed_bytes),
            bytes(m.resident_bytes),
            bytes(m.huge_bytes),
        ]);
    }
    section(&mut out, &t);
    if !r.idle_siblings.is_empty() {
        out.push_str(&format!("idle siblings: {}\n", ids(&r.idle_siblings)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xyz".into(), "1".into()]);
        assert_eq!(t.render(), "A    LONGER\nxyz  1\n");
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn inventory_table_shows_topology() {
        let inv = pb::Inventory {
            cpu: Some(pb::Cpu {
                sockets: 2,
                cores: 8,
                threads: 16,
                smt_active: true,
                online: "0-15".into(),
                ..Default::default()
            }),
            numa_nodes: vec![pb::NumaNode {
                id: 1,
                cpus: vec![8, 9, 10],
                hugepages: vec![pb::HugepagePool {
                    page_size_kib: 2048,
                    total: 32,
                    free: 30,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = inventory(&inv);
        assert!(
            text.contains("2 socket(s), 0 die(s), 8 core(s), 16 thread(s), SMT on"),
            "{text}"
        );
        assert!(text.contains("1     8-10"), "{text}");
        assert!(text.contains("2M: 30/32 free"), "{text}");
    }
}
