//! The health snapshot as Prometheus metrics (names, units and labels in docs/health.md).

use super::Snapshot;
use super::exposition::{Exposition, Type};
use super::pinning::Kind;
use crate::net::link::Counters;

const NS_PER_S: f64 = 1e9;

/// Appends every health family of `s` to `e`.
pub fn render(s: &Snapshot, e: &mut Exposition) {
    host(s, e);
    guests(s, e);
    pinning(s, e);
    conditions(s, e);
    if let Some(figures) = &s.placement_api {
        placement_api(figures, e);
    }
    e.family(
        "hvagent_health_sample_timestamp_seconds",
        Type::Gauge,
        "When the figures below were sampled, in Unix seconds",
    )
    .sample(&[], s.taken_unix_ms as f64 / 1000.0);
    e.family(
        "hvagent_health_sample_duration_seconds",
        Type::Gauge,
        "How long the last sample took",
    )
    .sample(&[], s.sample_seconds);
    e.family(
        "hvagent_health_stuck_stats_calls",
        Type::Gauge,
        "libvirt stats calls that have not returned (a guest's QEMU does not answer)",
    )
    .sample(&[], s.stuck_stats_calls as f64);
}

fn host(s: &Snapshot, e: &mut Exposition) {
    let h = &s.host;
    let tick = h.ticks_per_second.max(1) as f64;
    e.family(
        "hvagent_host_cpu_seconds_total",
        Type::Counter,
        "Time each logical CPU spent in each mode",
    );
    for c in &h.cpus {
        let cpu = c.cpu.to_string();
        for (mode, jiffies) in c.modes() {
            e.sample(&[("cpu", &cpu), ("mode", mode)], jiffies as f64 / tick);
        }
    }
    for (name, v) in [
        ("load1", h.load[0]),
        ("load5", h.load[1]),
        ("load15", h.load[2]),
    ] {
        e.family(&format!("hvagent_host_{name}"), Type::Gauge, "Load average")
            .sample(&[], v);
    }
    e.family(
        "hvagent_host_pressure_seconds_total",
        Type::Counter,
        "Time some or all tasks stalled on a resource (PSI)",
    );
    for p in &h.pressure {
        e.sample(
            &[("resource", p.resource), ("kind", &p.kind)],
            p.total_us as f64 / 1e6,
        );
    }
    e.family(
        "hvagent_host_pressure_avg10_ratio",
        Type::Gauge,
        "Share of the last 10 s some or all tasks stalled on a resource (PSI avg10)",
    );
    for p in &h.pressure {
        e.sample(
            &[("resource", p.resource), ("kind", &p.kind)],
            p.avg10 / 100.0,
        );
    }
    for (name, help, v) in [
        ("memory_total_bytes", "MemTotal", h.memory.total_bytes),
        (
            "memory_available_bytes",
            "MemAvailable",
            h.memory.available_bytes,
        ),
        (
            "memory_reserved_bytes",
            "Memory kept for the host ([placement] reserved_memory_mib)",
            s.memory_reserved_bytes,
        ),
        (
            "memory_claimed_bytes",
            "Memory held by guests' and reservations' claims, QEMU overhead included",
            s.memory_claimed_bytes,
        ),
    ] {
        e.family(&format!("hvagent_host_{name}"), Type::Gauge, help)
            .sample(&[], v as f64);
    }
    e.family(
        "hvagent_host_numa_memory_total_bytes",
        Type::Gauge,
        "Memory of each NUMA node",
    );
    for n in &h.numa {
        e.sample(
            &[("numa_node", &n.id.to_string())],
            n.memory_total_bytes as f64,
        );
    }
    e.family(
        "hvagent_host_numa_memory_free_bytes",
        Type::Gauge,
        "Free memory of each NUMA node",
    );
    for n in &h.numa {
        e.sample(
            &[("numa_node", &n.id.to_string())],
            n.memory_free_bytes as f64,
        );
    }
    for (name, help, free) in [
        (
            "hvagent_host_hugepages",
            "Hugepages of each size on each NUMA node",
            false,
        ),
        (
            "hvagent_host_hugepages_free",
            "Free hugepages of each size on each NUMA node",
            true,
        ),
    ] {
        e.family(name, Type::Gauge, help);
        for n in &h.numa {
            for p in &n.hugepages {
                e.sample(
                    &[
                        ("numa_node", &n.id.to_string()),
                        ("page_size_bytes", &(p.page_size_kib * 1024).to_string()),
                    ],
                    if free { p.free } else { p.total } as f64,
                );
            }
        }
    }
    let path = h.store.path.display().to_string();
    let store = [("path", path.as_str())];
    e.family(
        "hvagent_store_size_bytes",
        Type::Gauge,
        "Size of the image store's filesystem",
    )
    .sample(&store, h.store.size_bytes as f64);
    e.family(
        "hvagent_store_free_bytes",
        Type::Gauge,
        "Space the agent may still use in the image store's filesystem",
    )
    .sample(&store, h.store.free_bytes as f64);
    if let Some(d) = &h.store.disk {
        let labels = [("path", path.as_str()), ("device", h.store.device.as_str())];
        for (name, help, v) in [
            (
                "hvagent_store_disk_reads_total",
                "Reads completed by the disk below the image store",
                d.reads as f64,
            ),
            (
                "hvagent_store_disk_read_bytes_total",
                "Bytes read from the disk below the image store",
                d.read_bytes as f64,
            ),
            (
                "hvagent_store_disk_writes_total",
                "Writes completed by the disk below the image store",
                d.writes as f64,
            ),
            (
                "hvagent_store_disk_written_bytes_total",
                "Bytes written to the disk below the image store",
                d.written_bytes as f64,
            ),
            (
                "hvagent_store_disk_io_seconds_total",
                "Time the disk below the image store was busy",
                d.io_ms as f64 / 1000.0,
            ),
        ] {
            e.family(name, Type::Counter, help).sample(&labels, v);
        }
    }
    let nics: Vec<([(&str, &str); 1], Counters)> = h
        .nics
        .iter()
        .map(|n| ([("interface", n.interface.as_str())], n.counters))
        .collect();
    counter_families(e, "hvagent_host_network", "by each host interface", &nics);
    e.family(
        "hvagent_host_network_up",
        Type::Gauge,
        "1 when the interface's link is up",
    );
    for n in &h.nics {
        e.sample(&[("interface", &n.interface)], f64::from(u8::from(n.up)));
    }
    e.family(
        "hvagent_host_temperature_celsius",
        Type::Gauge,
        "Temperature of each hwmon sensor",
    );
    for t in &h.temperatures {
        e.sample(&[("chip", &t.chip), ("sensor", &t.sensor)], t.celsius);
    }
    e.family(
        "hvagent_host_memory_errors_corrected_total",
        Type::Counter,
        "Corrected memory errors by EDAC memory controller",
    );
    for m in &h.memory_errors {
        e.sample(&[("controller", &m.controller)], m.corrected as f64);
    }
    e.family(
        "hvagent_host_memory_errors_uncorrected_total",
        Type::Counter,
        "Uncorrected memory errors by EDAC memory controller",
    );
    for m in &h.memory_errors {
        e.sample(&[("controller", &m.controller)], m.uncorrected as f64);
    }
    e.family(
        "hvagent_process_resident_memory_bytes",
        Type::Gauge,
        "The agent's resident memory",
    )
    .sample(&[], h.agent.rss_bytes as f64);
    e.family(
        "hvagent_process_cpu_seconds_total",
        Type::Counter,
        "CPU time the agent used",
    )
    .sample(&[], h.agent.cpu_seconds);
    e.family(
        "hvagent_process_threads",
        Type::Gauge,
        "The agent's threads",
    )
    .sample(&[], f64::from(h.agent.threads));
}

fn guests(s: &Snapshot, e: &mut Exposition) {
    let rows: Vec<(&super::GuestRow, [(&str, &str); 3])> = s
        .guests
        .iter()
        .map(|r| {
            (
                r,
                [
                    ("uuid", r.guest.uuid.as_str()),
                    ("name", r.guest.intent.name.as_str()),
                    ("flavor", r.guest.intent.flavor.as_str()),
                ],
            )
        })
        .collect();
    e.family(
        "hvagent_guest_info",
        Type::Gauge,
        "1 for each guest, with its state",
    );
    for (r, l) in &rows {
        e.sample(&[l[0], l[1], l[2], ("state", r.guest.state.as_str())], 1.0);
    }
    e.family(
        "hvagent_guest_sample_age_seconds",
        Type::Gauge,
        "Age of the guest's figures: time since libvirt last returned all of them",
    );
    for (r, l) in &rows {
        if let Some(v) = &r.view {
            e.sample(l, v.age_ms as f64 / 1000.0);
        }
    }
    e.family(
        "hvagent_guest_quarantined",
        Type::Gauge,
        "1 while the guest's QEMU does not answer: its figures are the last ones read",
    );
    for (r, l) in &rows {
        if let Some(v) = &r.view {
            e.sample(l, f64::from(u8::from(v.quarantined.is_some())));
        }
    }
    let views = || {
        rows.iter()
            .filter_map(|(r, l)| r.view.as_ref().map(|v| (v, l)))
    };
    e.family(
        "hvagent_guest_cpu_seconds_total",
        Type::Counter,
        "CPU time of the guest's QEMU process",
    );
    for (v, l) in views() {
        e.sample(l, v.stats.cpu_ns as f64 / NS_PER_S);
    }
    type VcpuValue = fn(&super::guests::GuestView, usize) -> f64;
    let per_vcpu: [(&str, Type, &str, VcpuValue); 4] = [
        (
            "hvagent_guest_vcpu_seconds_total",
            Type::Counter,
            "Time each vCPU ran",
            |v, i| v.stats.vcpus[i].time_ns as f64 / NS_PER_S,
        ),
        (
            "hvagent_guest_vcpu_delay_seconds_total",
            Type::Counter,
            "Time each vCPU was runnable but waited for a host CPU (the guest's steal)",
            |v, i| v.stats.vcpus[i].delay_ns as f64 / NS_PER_S,
        ),
        (
            "hvagent_guest_vcpu_steal_ratio",
            Type::Gauge,
            "Share of wall time each vCPU waited for a host CPU over [health] window_seconds",
            |v, i| v.ratios.get(i).map_or(0.0, |r| r.1),
        ),
        (
            "hvagent_guest_vcpu_run_ratio",
            Type::Gauge,
            "Share of wall time each vCPU ran over [health] window_seconds",
            |v, i| v.ratios.get(i).map_or(0.0, |r| r.0),
        ),
    ];
    for (name, kind, help, get) in per_vcpu {
        e.family(name, kind, help);
        for (v, l) in views() {
            for i in 0..v.stats.vcpus.len() {
                e.sample(&[l[0], l[1], l[2], ("vcpu", &i.to_string())], get(v, i));
            }
        }
    }
    e.family(
        "hvagent_guest_memory_balloon_bytes",
        Type::Gauge,
        "The guest's current memory size",
    );
    for (v, l) in views() {
        e.sample(l, (v.stats.balloon_kib * 1024) as f64);
    }
    e.family(
        "hvagent_guest_memory_rss_bytes",
        Type::Gauge,
        "Resident memory of the guest's QEMU process",
    );
    for (v, l) in views() {
        e.sample(l, (v.stats.rss_kib * 1024) as f64);
    }
    type DiskField = fn(&super::guests::BlockStat) -> u64;
    let disk: [(&str, &str, DiskField); 4] = [
        ("reads", "Read requests", |d| d.reads),
        ("read_bytes", "Bytes read", |d| d.read_bytes),
        ("writes", "Write requests", |d| d.writes),
        ("written_bytes", "Bytes written", |d| d.written_bytes),
    ];
    for (name, help, get) in disk {
        e.family(
            &format!("hvagent_guest_disk_{name}_total"),
            Type::Counter,
            &format!("{help} by each guest disk"),
        );
        for (v, l) in views() {
            for d in &v.stats.disks {
                e.sample(&[l[0], l[1], l[2], ("device", &d.device)], get(d) as f64);
            }
        }
    }
    let nics: Vec<([(&str, &str); 4], Counters)> = views()
        .flat_map(|(v, l)| {
            v.stats.nics.iter().map(|n| {
                (
                    [l[0], l[1], l[2], ("interface", n.interface.as_str())],
                    n.counters,
                )
            })
        })
        .collect();
    counter_families(
        e,
        "hvagent_guest_network",
        "by guest NIC (host-side tap)",
        &nics,
    );
    e.family(
        "hvagent_guest_pinning_violations",
        Type::Gauge,
        "Open pinning violations of each running guest",
    );
    for (r, l) in &rows {
        if s.observed.contains_key(&r.guest.uuid) {
            let n = s
                .violations
                .iter()
                .filter(|v| v.violation.uuid == r.guest.uuid)
                .count();
            e.sample(l, n as f64);
        }
    }
}

/// The eight traffic counter families `<prefix>_{receive,transmit}_{bytes,packets,errors,
/// drops}_total`, one sample per labelled row.
fn counter_families<const N: usize>(
    e: &mut Exposition,
    prefix: &str,
    whose: &str,
    rows: &[([(&str, &str); N], Counters)],
) {
    for (i, name) in Counters::NAMES.iter().enumerate() {
        let (direction, what) = name.split_once('_').unwrap_or(("rx", "bytes"));
        let (direction, verb) = if direction == "rx" {
            ("receive", "Received")
        } else {
            ("transmit", "Sent")
        };
        let what = if what == "dropped" { "drops" } else { what };
        e.family(
            &format!("{prefix}_{direction}_{what}_total"),
            Type::Counter,
            &format!("{verb} {what} {whose}"),
        );
        for (labels, counters) in rows {
            e.sample(labels, counters.values()[i].1 as f64);
        }
    }
}

const KINDS: [Kind; 8] = [
    Kind::LibvirtVcpuPin,
    Kind::LibvirtEmulatorPin,
    Kind::VcpuAffinity,
    Kind::EmulatorAffinity,
    Kind::VcpuCpuset,
    Kind::EmulatorCpuset,
    Kind::DedicatedCpuShared,
    Kind::Unaccounted,
];

fn pinning(s: &Snapshot, e: &mut Exposition) {
    e.family(
        "hvagent_pinning_violations",
        Type::Gauge,
        "Open pinning violations on the node, by kind",
    );
    for kind in KINDS {
        let n = s
            .violations
            .iter()
            .filter(|v| v.violation.kind == kind)
            .count();
        e.sample(&[("kind", kind.as_str())], n as f64);
    }
    e.family(
        "hvagent_pinning_repairs_total",
        Type::Counter,
        "Pinning violations repaired by restoring the claimed pins ([health] repair), by kind",
    );
    for kind in KINDS.iter().filter(|k| k.own()) {
        let n = s.pinning_repairs.get(kind.as_str()).copied().unwrap_or(0);
        e.sample(&[("kind", kind.as_str())], n as f64);
    }
}

/// The Placement reporter's figures (only while `[placement_api]` is set).
fn placement_api(f: &crate::placement_api::status::Figures, e: &mut Exposition) {
    if let Some(ms) = f.last_success_unix_ms {
        e.family(
            "hvagent_placement_api_last_sync_timestamp_seconds",
            Type::Gauge,
            "When a round last found or made Placement equal to this node, in Unix seconds",
        )
        .sample(&[], ms as f64 / 1000.0);
    }
    e.family(
        "hvagent_placement_api_sync_failures_total",
        Type::Counter,
        "Rounds that failed (Placement unreachable, refusing, or the token refused)",
    )
    .sample(&[], f.failures as f64);
    e.family(
        "hvagent_placement_api_calls_total",
        Type::Counter,
        "Calls made to Placement by HTTP method, and Keystone token requests",
    );
    for (method, n) in &f.calls {
        e.sample(&[("method", method)], *n as f64);
    }
    e.family(
        "hvagent_placement_api_drift_total",
        Type::Counter,
        "Differences found between Placement and this node, by kind",
    );
    for (kind, n) in &f.drift {
        e.sample(&[("kind", kind)], *n as f64);
    }
    e.family(
        "hvagent_placement_api_unclaimed_allocations",
        Type::Gauge,
        "Allocations on this node's provider whose consumer has no claim here",
    )
    .sample(&[], f.unclaimed as f64);
}

fn conditions(s: &Snapshot, e: &mut Exposition) {
    e.family(
        "hvagent_node_condition",
        Type::Gauge,
        "1 while the node condition holds",
    );
    for c in &s.conditions {
        e.sample(
            &[("condition", c.kind), ("reason", c.reason)],
            f64::from(u8::from(c.status)),
        );
    }
    e.family(
        "hvagent_node_condition_since_seconds",
        Type::Gauge,
        "When the condition's status last changed, in Unix seconds",
    );
    for c in &s.conditions {
        e.sample(&[("condition", c.kind)], c.since_ms as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::conditions::Condition;
    use crate::health::host::{CpuTimes, HostSample, Pressure};
    use crate::health::pinning::Violation;
    use crate::health::{OpenViolation, Snapshot};

    fn rendered(s: &Snapshot) -> String {
        let mut e = Exposition::default();
        render(s, &mut e);
        e.finish()
    }

    #[test]
    fn host_figures_in_base_units() {
        let mut host = HostSample {
            ticks_per_second: 100,
            cpus: vec![CpuTimes {
                cpu: 3,
                user: 250,
                steal: 5,
                ..Default::default()
            }],
            ..Default::default()
        };
        host.memory.total_bytes = 1 << 30;
        host.pressure.push(Pressure {
            resource: "io",
            kind: "full".into(),
            avg10: 12.5,
            avg60: 0.0,
            total_us: 1_500_000,
        });
        let text = rendered(&Snapshot {
            host,
            ..Default::default()
        });
        for line in [
            "hvagent_host_cpu_seconds_total{cpu=\"3\",mode=\"user\"} 2.5",
            "hvagent_host_cpu_seconds_total{cpu=\"3\",mode=\"steal\"} 0.05",
            "hvagent_host_memory_total_bytes 1073741824",
            "hvagent_host_pressure_seconds_total{resource=\"io\",kind=\"full\"} 1.5",
            "hvagent_host_pressure_avg10_ratio{resource=\"io\",kind=\"full\"} 0.125",
            "# TYPE hvagent_host_cpu_seconds_total counter",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn every_violation_kind_is_always_present_and_conditions_are_gauges() {
        let v = Violation {
            uuid: "u".into(),
            name: "g".into(),
            kind: Kind::VcpuAffinity,
            vcpu: Some(0),
            expected: vec![1],
            actual: vec![0],
            detail: String::new(),
        };
        let text = rendered(&Snapshot {
            violations: vec![OpenViolation {
                violation: v,
                since_ms: 1,
            }],
            conditions: vec![Condition {
                kind: "Ready",
                status: true,
                reason: "Ready",
                message: String::new(),
                since_ms: 2500,
            }],
            pinning_repairs: [("vcpu_affinity".to_string(), 4)].into(),
            ..Default::default()
        });
        assert!(text.contains("hvagent_pinning_violations{kind=\"vcpu_affinity\"} 1"));
        assert!(text.contains("hvagent_pinning_violations{kind=\"dedicated_cpu_shared\"} 0"));
        assert!(text.contains("hvagent_pinning_repairs_total{kind=\"vcpu_affinity\"} 4"));
        assert!(
            !text.contains("hvagent_pinning_repairs_total{kind=\"dedicated_cpu_shared\"}"),
            "not repaired on this guest"
        );
        assert!(text.contains("hvagent_node_condition{condition=\"Ready\",reason=\"Ready\"} 1"));
        assert!(text.contains("hvagent_node_condition_since_seconds{condition=\"Ready\"} 2.5"));
    }

    #[test]
    fn placement_api_figures_only_while_reporting() {
        assert!(!rendered(&Snapshot::default()).contains("hvagent_placement_api_"));
        let text = rendered(&Snapshot {
            placement_api: Some(crate::placement_api::status::Figures {
                last_success_unix_ms: Some(1_500),
                failures: 2,
                calls: [("GET".to_string(), 7), ("PUT".to_string(), 1)].into(),
                drift: [("allocation_missing".to_string(), 1)].into(),
                unclaimed: 1,
            }),
            ..Default::default()
        });
        for line in [
            "hvagent_placement_api_last_sync_timestamp_seconds 1.5",
            "hvagent_placement_api_sync_failures_total 2",
            "hvagent_placement_api_calls_total{method=\"GET\"} 7",
            "hvagent_placement_api_calls_total{method=\"PUT\"} 1",
            "hvagent_placement_api_drift_total{kind=\"allocation_missing\"} 1",
            "hvagent_placement_api_unclaimed_allocations 1",
            "# TYPE hvagent_placement_api_calls_total counter",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
