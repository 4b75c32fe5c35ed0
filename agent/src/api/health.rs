//! Health snapshots and guarantee reports as proto messages (served by NodeService and
//! VmService).

use hvagent_proto::v1 as pb;

use crate::health::report::{Report, Verdict};
use crate::health::{OpenViolation, Snapshot};

fn violation(v: &OpenViolation) -> pb::PinningViolation {
    let x = &v.violation;
    pb::PinningViolation {
        vm_uuid: x.uuid.clone(),
        vm_name: x.name.clone(),
        kind: x.kind.as_str().into(),
        vcpu: x.vcpu.map_or(-1, |c| c as i32),
        expected: x.expected.clone(),
        actual: x.actual.clone(),
        detail: x.detail.clone(),
        since_unix_ms: v.since_ms,
    }
}

fn nic(interface: &str, up: bool, c: &crate::net::link::Counters) -> pb::NicCounters {
    pb::NicCounters {
        interface: interface.to_string(),
        up,
        counters: Some(super::network::counters_to_proto(c)),
    }
}

pub fn health_to_proto(s: &Snapshot) -> pb::Health {
    let h = &s.host;
    let host = pb::HostHealth {
        cpus: s
            .cpu_usage
            .iter()
            .map(|(cpu, busy, steal)| pb::CpuUsage {
                cpu: *cpu,
                busy_ratio: *busy,
                steal_ratio: *steal,
            })
            .collect(),
        load1: h.load[0],
        load5: h.load[1],
        load15: h.load[2],
        pressure: h
            .pressure
            .iter()
            .map(|p| pb::Pressure {
                resource: p.resource.into(),
                kind: p.kind.clone(),
                avg10: p.avg10,
                avg60: p.avg60,
                total_seconds: p.total_us as f64 / 1e6,
            })
            .collect(),
        memory_total_bytes: h.memory.total_bytes,
        memory_available_bytes: h.memory.available_bytes,
        memory_reserved_bytes: s.memory_reserved_bytes,
        memory_claimed_bytes: s.memory_claimed_bytes,
        numa_nodes: h
            .numa
            .iter()
            .map(|n| pb::NumaHealth {
                numa_node: n.id,
                memory_total_bytes: n.memory_total_bytes,
                memory_free_bytes: n.memory_free_bytes,
                hugepages: n
                    .hugepages
                    .iter()
                    .map(|p| pb::HugepageUse {
                        page_size_kib: p.page_size_kib,
                        total: p.total,
                        free: p.free,
                    })
                    .collect(),
            })
            .collect(),
        store: Some(pb::StoreHealth {
            path: h.store.path.display().to_string(),
            size_bytes: h.store.size_bytes,
            free_bytes: h.store.free_bytes,
            device: h.store.device.clone(),
            read_bytes: h.store.disk.map_or(0, |d| d.read_bytes),
            written_bytes: h.store.disk.map_or(0, |d| d.written_bytes),
            reads: h.store.disk.map_or(0, |d| d.reads),
            writes: h.store.disk.map_or(0, |d| d.writes),
        }),
        nics: h
            .nics
            .iter()
            .map(|n| nic(&n.interface, n.up, &n.counters))
            .collect(),
        temperatures: h
            .temperatures
            .iter()
            .map(|t| pb::Temperature {
                chip: t.chip.clone(),
                sensor: t.sensor.clone(),
                celsius: t.celsius,
            })
            .collect(),
        memory_errors: h
            .memory_errors
            .iter()
            .map(|m| pb::MemoryErrors {
                controller: m.controller.clone(),
                corrected: m.corrected,
                uncorrected: m.uncorrected,
            })
            .collect(),
        agent: Some(pb::AgentProcess {
            rss_bytes: h.agent.rss_bytes,
            cpu_seconds: h.agent.cpu_seconds,
            threads: h.agent.threads,
        }),
    };
    pb::Health {
        sampled_unix_ms: s.taken_unix_ms,
        interval_ms: s.interval.as_millis() as u32,
        ready: s.ready(),
        conditions: s
            .conditions
            .iter()
            .map(|c| pb::Condition {
                r#type: c.kind.into(),
                status: c.status,
                reason: c.reason.into(),
                message: c.message.clone(),
                since_unix_ms: c.since_ms,
            })
            .collect(),
        host: Some(host),
        guests: s
            .guests
            .iter()
            .map(|r| {
                let mut g = pb::GuestHealth {
                    uuid: r.guest.uuid.clone(),
                    name: r.guest.intent.name.clone(),
                    flavor: r.guest.intent.flavor.clone(),
                    state: r.guest.state.as_str().into(),
                    ..Default::default()
                };
                if let Some(v) = &r.view {
                    g.age_seconds = v.age_ms as f64 / 1000.0;
                    g.quarantined = v.quarantined.is_some();
                    g.quarantine_reason = v.quarantined.clone().unwrap_or_default();
                    g.cpu_seconds = v.stats.cpu_ns as f64 / 1e9;
                    g.vcpus = v
                        .stats
                        .vcpus
                        .iter()
                        .enumerate()
                        .map(|(i, t)| {
                            let (run, steal) = v.ratios.get(i).copied().unwrap_or_default();
                            pb::VcpuHealth {
                                vcpu: i as u32,
                                seconds: t.time_ns as f64 / 1e9,
                                delay_seconds: t.delay_ns as f64 / 1e9,
                                steal_ratio: steal,
                                run_ratio: run,
                            }
                        })
                        .collect();
                    g.balloon_bytes = v.stats.balloon_kib * 1024;
                    g.rss_bytes = v.stats.rss_kib * 1024;
                    g.disks = v
                        .stats
                        .disks
                        .iter()
                        .map(|d| pb::BlockCounters {
                            device: d.device.clone(),
                            read_bytes: d.read_bytes,
                            written_bytes: d.written_bytes,
                            reads: d.reads,
                            writes: d.writes,
                        })
                        .collect();
                    g.nics = v
                        .stats
                        .nics
                        .iter()
                        .map(|n| nic(&n.interface, true, &n.counters))
                        .collect();
                }
                g
            })
            .collect(),
        violations: s.violations.iter().map(violation).collect(),
        pinning_repairs: s.pinning_repairs.clone(),
    }
}

pub fn report_to_proto(r: &Report) -> pb::GuaranteeReport {
    let vcpus = r
        .claim
        .vcpus
        .iter()
        .map(|v| {
            let i = v.vcpu as usize;
            let (run, steal) = r
                .view
                .as_ref()
                .and_then(|g| g.ratios.get(i).copied())
                .unwrap_or_default();
            pb::ObservedVcpu {
                vcpu: v.vcpu,
                claimed: r
                    .expected
                    .as_ref()
                    .and_then(|e| e.vcpus.get(i).cloned())
                    .unwrap_or_else(|| v.cpu.into_iter().collect()),
                actual: r
                    .observed
                    .as_ref()
                    .and_then(|o| o.vcpu_threads.get(&v.vcpu))
                    .map(|t| t.affinity.clone())
                    .unwrap_or_default(),
                steal_ratio: steal,
                run_ratio: run,
            }
        })
        .collect();
    let claimed_memory = |node: u32| -> u64 {
        r.claim
            .memory
            .iter()
            .filter(|m| m.numa_node == node)
            .map(|m| m.mib << 20)
            .sum()
    };
    let mut nodes: Vec<u32> = r.claim.memory.iter().map(|m| m.numa_node).collect();
    nodes.extend(r.numa.keys());
    nodes.sort_unstable();
    nodes.dedup();
    pb::GuaranteeReport {
        vm_uuid: r.guest.uuid.clone(),
        vm_name: r.guest.intent.name.clone(),
        flavor: r.guest.intent.flavor.clone(),
        emulation: r.guest.intent.emulation.as_str().into(),
        state: r.guest.state.as_str().into(),
        sampled_unix_ms: r.sampled_unix_ms,
        window_seconds: r.window.as_secs_f64(),
        promises: r
            .promises
            .iter()
            .map(|p| pb::Promise {
                name: p.name.into(),
                promised: p.promised.clone(),
                observed: p.observed.clone(),
                verdict: match p.verdict {
                    Verdict::Kept => pb::Verdict::Kept,
                    Verdict::Violated => pb::Verdict::Violated,
                    Verdict::NotVerifiable => pb::Verdict::NotVerifiable,
                } as i32,
                why: p.why.clone(),
            })
            .collect(),
        vcpus,
        emulator_claimed: r
            .expected
            .as_ref()
            .map(|e| e.emulator.clone())
            .unwrap_or_default(),
        emulator_actual: r
            .observed
            .as_ref()
            .and_then(|o| o.emulator_threads.first())
            .map(|t| t.affinity.clone())
            .unwrap_or_default(),
        idle_siblings: r.claim.idle_cpus.clone(),
        memory: nodes
            .into_iter()
            .map(|node| {
                let used = r.numa.get(&node).copied().unwrap_or_default();
                pb::NumaMemory {
                    numa_node: node,
                    claimed_bytes: claimed_memory(node),
                    resident_bytes: used.resident_bytes,
                    huge_bytes: used.huge_bytes,
                }
            })
            .collect(),
        violations: r.violations.iter().map(violation).collect(),
    }
}
