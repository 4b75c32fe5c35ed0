//! `hvctl node health`: conditions, key figures, violations, guests.

use hvagent_proto::v1 as pb;

use super::{Table, bytes, hugepages, ids, or_dash, percent, section};

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

/// What a drain did: the guests that moved and where, then those that stayed and why.
pub fn drained(d: &pb::DrainResponse) -> String {
    let mut t = Table::new(&["GUEST", "RESULT", "WHERE / WHY"]);
    for m in &d.moved {
        t.row(vec![
            m.uuid.clone(),
            "moved".into(),
            format!("{} ({:.1} s)", m.target, m.elapsed_ms as f64 / 1000.0),
        ]);
    }
    for s in &d.stayed {
        t.row(vec![s.uuid.clone(), "stayed".into(), s.reason.clone()]);
    }
    format!(
        "node draining: it admits no new guests until `hvctl node undrain`; {} moved, {} stayed\n{}",
        d.moved.len(),
        d.stayed.len(),
        if d.moved.is_empty() && d.stayed.is_empty() {
            String::new()
        } else {
            t.render()
        }
    )
}
