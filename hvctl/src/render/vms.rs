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

/// One event line: `<unix ms> <uuid> <name> <kind>/<detail>`, then a migration's progress.
pub fn event(e: &pb::VmEvent) -> String {
    let line = format!(
        "{} {} {} {}/{}",
        e.unix_ms, e.uuid, e.name, e.kind, e.detail
    );
    match &e.progress {
        Some(p) => format!("{line} {}", copied(p)),
        None => line,
    }
}

/// A migration's copy: `215.0 MiB sent, 297.0 MiB left (42 %)`.
fn copied(p: &pb::MigrationProgress) -> String {
    format!(
        "{} sent, {} left ({} %)",
        bytes(p.processed_bytes),
        bytes(p.remaining_bytes),
        share_done(p)
    )
}

/// The share of the copy done, 0-100: sent of sent and left (libvirt's total grows while the
/// guest dirties memory already sent, so sent may pass it).
fn share_done(p: &pb::MigrationProgress) -> u64 {
    let all = p.processed_bytes.saturating_add(p.remaining_bytes);
    if all == 0 {
        return 0;
    }
    (u128::from(p.processed_bytes) * 100 / u128::from(all)) as u64
}

/// `hvctl vm migrate`'s answer: how long it took, and the guest's pause for the switch.
pub fn migrated(m: &pb::MigrateVmResponse) -> String {
    match m.downtime_ms {
        Some(d) => format!("migrated in {} ms (downtime {d} ms)\n", m.elapsed_ms),
        None => format!("migrated in {} ms\n", m.elapsed_ms),
    }
}

/// `hvctl vm migrate`'s status line for a migration event: the phase in words, a bar while
/// libvirt copies. `None` for the end phases (the answer says how it ended).
pub fn migration(e: &pb::VmEvent) -> Option<String> {
    const WIDTH: u64 = 30;
    let what = match e.detail.as_str() {
        "preparing" => "preparing the target (claim, disks)",
        "copying" => "copying memory and disks",
        "finishing" => "finishing: the guest runs on the target",
        _ => return None,
    };
    Some(match &e.progress {
        Some(p) => {
            let done = share_done(p) * WIDTH / 100;
            format!(
                "[{}{}] {}",
                "#".repeat(done as usize),
                "-".repeat((WIDTH - done) as usize),
                copied(p)
            )
        }
        None => what.to_string(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn copying(processed: u64, remaining: u64) -> pb::VmEvent {
        pb::VmEvent {
            kind: "migration".into(),
            detail: "copying".into(),
            progress: Some(pb::MigrationProgress {
                processed_bytes: processed,
                remaining_bytes: remaining,
                total_bytes: processed + remaining,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_migrations_bar_fills_with_the_share_sent() {
        let half = migration(&copying(256 << 20, 256 << 20)).unwrap();
        assert_eq!(
            half,
            format!(
                "[{}{}] 256.0 MiB sent, 256.0 MiB left (50 %)",
                "#".repeat(15),
                "-".repeat(15)
            )
        );
        let done = migration(&copying(1 << 30, 0)).unwrap();
        assert!(done.starts_with(&format!("[{}]", "#".repeat(30))), "{done}");
        // Nothing known yet: an empty bar, no division by zero.
        let none = migration(&copying(0, 0)).unwrap();
        assert!(none.starts_with(&format!("[{}]", "-".repeat(30))), "{none}");
        assert!(none.ends_with("(0 %)"), "{none}");
    }

    #[test]
    fn phases_read_as_words_and_the_end_is_left_to_the_answer() {
        let phase = |detail: &str| {
            migration(&pb::VmEvent {
                kind: "migration".into(),
                detail: detail.into(),
                ..Default::default()
            })
        };
        assert_eq!(
            phase("preparing").as_deref(),
            Some("preparing the target (claim, disks)")
        );
        assert_eq!(
            phase("copying").as_deref(),
            Some("copying memory and disks")
        );
        assert!(phase("finishing").unwrap().starts_with("finishing"));
        assert_eq!(phase("migrated"), None);
        assert_eq!(phase("failed"), None);
    }

    #[test]
    fn an_event_line_carries_the_progress() {
        let mut e = copying(3 << 20, 1 << 20);
        e.uuid = "u".into();
        e.name = "n".into();
        e.unix_ms = 7;
        assert_eq!(
            event(&e),
            "7 u n migration/copying 3.0 MiB sent, 1.0 MiB left (75 %)"
        );
    }
}
