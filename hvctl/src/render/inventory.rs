//! `hvctl node inventory`: the hardware as sections of lines and tables.

use hvagent_proto::v1 as pb;

use super::{Table, bytes, hugepages, ids, opt, or_dash, section, yes_no};

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
    let firmware = hv.firmware.clone().unwrap_or_default();
    facts.row(vec![
        "firmware".into(),
        format!(
            "uefi {}, secure boot {}, vtpm {}{}",
            yes_no(firmware.uefi),
            yes_no(firmware.secure_boot),
            yes_no(firmware.vtpm),
            if firmware.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", firmware.reason)
            }
        ),
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
    facts.row(vec![
        "scs gpu".into(),
        format!(
            "{} ({})",
            if scs.serves_gpu {
                "serves _G flavors"
            } else {
                "no _G flavors"
            },
            scs.serves_gpu_reason
        ),
    ]);
    facts.row(vec![
        "scs ib".into(),
        format!(
            "{} ({})",
            if scs.serves_ib {
                "serves _ib"
            } else {
                "no _ib"
            },
            scs.serves_ib_reason
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
        let mut gpus = Table::new(&[
            "GPU",
            "VENDOR",
            "DEVICE",
            "SCS",
            "NUMA",
            "DRIVER",
            "PASSTHROUGH",
        ]);
        for g in &inv.gpus {
            gpus.row(vec![
                g.pci_address.clone(),
                g.vendor_id.clone(),
                g.device_id.clone(),
                or_dash(&g.scs_vendor).into(),
                opt(g.numa_node),
                or_dash(&g.driver).into(),
                or_dash(&g.passthrough).into(),
            ]);
        }
        section(&mut out, &gpus);
    }
    if !inv.infiniband.is_empty() {
        let mut ib = Table::new(&["INFINIBAND", "PCI", "PASSTHROUGH"]);
        for d in &inv.infiniband {
            ib.row(vec![
                d.name.clone(),
                or_dash(&d.pci_address).into(),
                or_dash(&d.passthrough).into(),
            ]);
        }
        section(&mut out, &ib);
    }
    if !inv.mdev_types.is_empty() {
        let mut mdev = Table::new(&["MDEV TYPE", "PARENT", "NAME", "AVAILABLE"]);
        for t in &inv.mdev_types {
            mdev.row(vec![
                t.type_id.clone(),
                t.parent.clone(),
                or_dash(&t.name).into(),
                t.available_instances.to_string(),
            ]);
        }
        section(&mut out, &mdev);
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
