//! Guests, their events and guarantee reports.

use hvagent_proto::v1 as pb;

use super::{Table, bytes, ids, percent, section};

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
        "BOOT DISK",
    ]);
    for v in list {
        let claim = v.claim.clone().unwrap_or_default();
        let dedicated = claim.cpu_type == "C" || claim.cpu_type == "T";
        t.row(vec![
            v.name.clone(),
            v.uuid.clone(),
            v.state.clone(),
            if v.resize_pending {
                format!("{} (resize from {} pending)", v.flavor, v.old_flavor)
            } else {
                v.flavor.clone()
            },
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
            if v.boot_volume.is_empty() {
                format!("{} GiB", v.root_disk_gb)
            } else if v.boot_volume_made {
                format!("volume {} (made from the image)", v.boot_volume)
            } else {
                format!("volume {}", v.boot_volume)
            },
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

/// `hvctl vm guarantees`: one line per promise, then the observed pins and memory.
pub fn guarantees(r: &pb::GuaranteeReport) -> String {
    let mut out = format!(
        "{} ({}) {} under {}, {}\n",
        r.vm_name, r.vm_uuid, r.flavor, r.emulation, r.state
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

/// `hvctl vm guest-info`: the OS line, then the interfaces and the file systems.
pub fn guest_info(g: &pb::GuestInfo) -> String {
    let os = g.os.clone().unwrap_or_default();
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut out = format!(
        "host name {}, OS {} {} ({}), kernel {}, sampled at {} ms\n",
        dash(&g.hostname),
        dash(&os.name),
        dash(&os.version),
        dash(&os.id),
        dash(&os.kernel_release),
        g.sampled_unix_ms
    );
    let mut t = Table::new(&["INTERFACE", "MAC", "ADDRESSES"]);
    for i in &g.interfaces {
        t.row(vec![i.name.clone(), i.mac.clone(), i.addresses.join(" ")]);
    }
    section(&mut out, &t);
    let mut t = Table::new(&["MOUNTPOINT", "TYPE", "SIZE", "USED"]);
    for f in &g.filesystems {
        t.row(vec![
            f.mountpoint.clone(),
            f.r#type.clone(),
            bytes(f.total_bytes),
            bytes(f.used_bytes),
        ]);
    }
    section(&mut out, &t);
    out
}
