//! Guest figures from libvirt's bulk stats records, and what is kept between calls: the last
//! complete figures of each guest with their age, a quarantine for guests whose QEMU did not
//! answer, and a short history of vCPU run and delay times for steal over a window. Pure: the
//! caller passes the records and the time.

use std::collections::{BTreeMap, VecDeque};

use crate::domain::stats::{DomainStats, Param};
use crate::net::link::Counters;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuTimes {
    pub time_ns: u64,
    /// Runnable but waiting for a host CPU (libvirt's `vcpu.N.delay`; the guest's steal).
    pub delay_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockStat {
    pub device: String,
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub written_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStat {
    pub interface: String,
    pub counters: Counters,
}

/// libvirt's name (`net.N.<name>`) of each of [`Counters::NAMES`].
fn libvirt_counter(name: &str) -> &'static str {
    match name {
        "rx_bytes" => "rx.bytes",
        "tx_bytes" => "tx.bytes",
        "rx_packets" => "rx.pkts",
        "tx_packets" => "tx.pkts",
        "rx_errors" => "rx.errs",
        "tx_errors" => "tx.errs",
        "rx_dropped" => "rx.drop",
        _ => "tx.drop",
    }
}

/// What one record says about a guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// libvirt's `state.state` (1 running, 3 paused, 5 shut off, ...).
    pub state: i64,
    pub cpu_ns: u64,
    pub vcpus: Vec<VcpuTimes>,
    pub balloon_kib: u64,
    pub rss_kib: u64,
    pub disks: Vec<BlockStat>,
    pub nics: Vec<NetStat>,
    /// Every figure came back. A running guest whose QEMU monitor did not answer comes back
    /// without block counters and RSS (libvirt's NOWAIT skips what needs the monitor).
    pub complete: bool,
}

impl GuestStats {
    pub fn running(&self) -> bool {
        self.state == 1
    }
}

/// Reads one record.
pub fn parse(record: &DomainStats) -> GuestStats {
    let map: BTreeMap<&str, &Param> = record.params.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let num = |k: &str| map.get(k).and_then(|v| v.as_u64());
    let text = |k: &str| map.get(k).and_then(|v| v.as_text()).map(str::to_string);
    let state = map
        .get("state.state")
        .and_then(|v| match v {
            Param::Int(i) => Some(*i),
            Param::Uint(u) => i64::try_from(*u).ok(),
            _ => None,
        })
        .unwrap_or(0);
    let vcpus = (0..num("vcpu.current").unwrap_or(0))
        .map(|i| VcpuTimes {
            time_ns: num(&format!("vcpu.{i}.time")).unwrap_or(0),
            delay_ns: num(&format!("vcpu.{i}.delay")).unwrap_or(0),
        })
        .collect();
    let mut complete = true;
    let mut disks = Vec::new();
    for i in 0..num("block.count").unwrap_or(0) {
        let Some(device) = text(&format!("block.{i}.name")) else {
            continue;
        };
        let Some(reads) = num(&format!("block.{i}.rd.reqs")) else {
            complete = false;
            continue;
        };
        disks.push(BlockStat {
            device,
            reads,
            read_bytes: num(&format!("block.{i}.rd.bytes")).unwrap_or(0),
            writes: num(&format!("block.{i}.wr.reqs")).unwrap_or(0),
            written_bytes: num(&format!("block.{i}.wr.bytes")).unwrap_or(0),
        });
    }
    let nics = (0..num("net.count").unwrap_or(0))
        .filter_map(|i| {
            Some(NetStat {
                interface: text(&format!("net.{i}.name"))?,
                counters: Counters::from_fn(|c| {
                    num(&format!("net.{i}.{}", libvirt_counter(c))).unwrap_or(0)
                }),
            })
        })
        .collect();
    let rss = num("balloon.rss");
    if state == 1 && rss.is_none() {
        complete = false;
    }
    GuestStats {
        state,
        cpu_ns: num("cpu.time").unwrap_or(0),
        vcpus,
        balloon_kib: num("balloon.current").unwrap_or(0),
        rss_kib: rss.unwrap_or(0),
        disks,
        nics,
        complete,
    }
}

/// A guest's figures as shown: the newest complete ones (or what the last call had), their
/// age, and steal over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestView {
    pub uuid: String,
    pub name: String,
    pub stats: GuestStats,
    pub age_ms: u64,
    pub quarantined: Option<String>,
    /// Per vCPU: (run, delay) seconds per wall second over the window.
    pub ratios: Vec<(f64, f64)>,
}

#[derive(Debug, Default)]
struct Tracked {
    name: String,
    good: GuestStats,
    good_at_ms: u64,
    /// When the newest call that answered for this guest was made.
    answered_at_ms: u64,
    /// Why the last call did not return all figures (cleared by a complete record).
    problem: Option<String>,
    history: VecDeque<(u64, Vec<VcpuTimes>)>,
}

/// What the agent remembers of its guests between stats calls.
#[derive(Debug, Default)]
pub struct Tracker {
    guests: BTreeMap<String, Tracked>,
    window_ms: u64,
    quarantine_after_ms: u64,
}

impl Tracker {
    /// `quarantine_after_ms`: how long a guest may go without complete figures before it is
    /// quarantined. One incomplete record is no sign of trouble: libvirt's NOWAIT also skips
    /// a guest that is merely busy in another job (a define, another caller's stats) just then.
    pub fn new(window_ms: u64, quarantine_after_ms: u64) -> Tracker {
        Tracker {
            guests: BTreeMap::new(),
            window_ms,
            quarantine_after_ms,
        }
    }

    /// Forgets the guests not in `own` (UUID → name).
    pub fn retain(&mut self, own: &BTreeMap<String, String>) {
        self.guests.retain(|uuid, _| own.contains_key(uuid));
    }

    /// Takes the records of a call made at `now_ms` for the guests `own` (UUID → name). A
    /// call that returns after a newer one is ignored for the guests that one answered. A
    /// running guest's incomplete record keeps its last figures but for vCPU and state, which
    /// are fresh; its age grows until it answers again.
    pub fn update(&mut self, now_ms: u64, records: &[DomainStats], own: &BTreeMap<String, String>) {
        for record in records {
            let Some(name) = own.get(&record.uuid) else {
                continue;
            };
            let fresh = parse(record);
            let t = self.guests.entry(record.uuid.clone()).or_default();
            if t.answered_at_ms > now_ms {
                continue;
            }
            t.answered_at_ms = now_ms;
            t.name = name.clone();
            if fresh.vcpus.iter().any(|v| v.time_ns > 0) {
                // A restarted guest (or one with other vCPUs now) starts a new window: its
                // times begin again at zero.
                if t.history.back().is_some_and(|(_, last)| {
                    last.len() != fresh.vcpus.len()
                        || last
                            .iter()
                            .zip(&fresh.vcpus)
                            .any(|(a, b)| b.time_ns < a.time_ns || b.delay_ns < a.delay_ns)
                }) {
                    t.history.clear();
                }
                t.history.push_back((now_ms, fresh.vcpus.clone()));
                while t
                    .history
                    .front()
                    .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > self.window_ms)
                    && t.history.len() > 2
                {
                    t.history.pop_front();
                }
            }
            if fresh.complete {
                t.good = fresh;
                t.good_at_ms = now_ms;
                t.problem = None;
            } else {
                t.good.state = fresh.state;
                t.good.vcpus = fresh.vcpus;
                t.good.cpu_ns = fresh.cpu_ns;
                t.problem = Some(
                    "QEMU did not answer libvirt's monitor (stopped or hung): block and memory \
                     figures are the last ones read"
                        .into(),
                );
            }
        }
    }

    /// Marks the guests not answered for in a call that failed or did not return.
    pub fn missed(&mut self, why: &str) {
        for t in self.guests.values_mut() {
            t.problem.get_or_insert_with(|| why.to_string());
        }
    }

    pub fn views(&self, now_ms: u64) -> Vec<GuestView> {
        self.guests
            .iter()
            .map(|(uuid, t)| {
                let age_ms = now_ms.saturating_sub(t.good_at_ms);
                let quarantined = (age_ms >= self.quarantine_after_ms).then(|| {
                    t.problem.clone().unwrap_or_else(|| {
                        "libvirt's stats call has not returned: figures are the last ones read"
                            .into()
                    })
                });
                GuestView {
                    uuid: uuid.clone(),
                    name: t.name.clone(),
                    stats: t.good.clone(),
                    age_ms,
                    quarantined,
                    ratios: ratios(&t.history),
                }
            })
            .collect()
    }
}

/// Run and delay per wall second of each vCPU between the oldest and newest sample; empty
/// until two samples some time apart exist.
fn ratios(history: &VecDeque<(u64, Vec<VcpuTimes>)>) -> Vec<(f64, f64)> {
    let (Some((t0, first)), Some((t1, last))) = (history.front(), history.back()) else {
        return Vec::new();
    };
    if t1 <= t0 {
        return Vec::new();
    }
    let wall_ns = (t1 - t0) as f64 * 1e6;
    last.iter()
        .enumerate()
        .map(|(i, v)| {
            let before = first.get(i).copied().unwrap_or_default();
            (
                v.time_ns.saturating_sub(before.time_ns) as f64 / wall_ns,
                v.delay_ns.saturating_sub(before.delay_ns) as f64 / wall_ns,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uuid: &str, params: &[(&str, Param)]) -> DomainStats {
        DomainStats {
            uuid: uuid.into(),
            name: format!("n-{uuid}"),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    fn running(uuid: &str, vcpu_ns: u64, delay_ns: u64, complete: bool) -> DomainStats {
        let mut p = vec![
            ("state.state", Param::Int(1)),
            ("cpu.time", Param::Uint(vcpu_ns + 1)),
            ("balloon.current", Param::Uint(524288)),
            ("vcpu.current", Param::Uint(1)),
            ("vcpu.0.time", Param::Uint(vcpu_ns)),
            ("vcpu.0.delay", Param::Uint(delay_ns)),
            ("block.count", Param::Uint(1)),
            ("block.0.name", Param::Text("vda".into())),
            ("net.count", Param::Uint(1)),
            ("net.0.name", Param::Text("hv0".into())),
            ("net.0.rx.bytes", Param::Uint(7)),
            ("net.0.tx.drop", Param::Uint(3)),
        ];
        if complete {
            p.push(("balloon.rss", Param::Uint(1000 + vcpu_ns / 1_000_000)));
            p.push(("block.0.rd.reqs", Param::Uint(vcpu_ns / 1_000_000)));
            p.push(("block.0.wr.bytes", Param::Uint(4096)));
        }
        record(uuid, &p)
    }

    fn own(uuids: &[&str]) -> BTreeMap<String, String> {
        uuids
            .iter()
            .map(|u| (u.to_string(), format!("n-{u}")))
            .collect()
    }

    #[test]
    fn a_complete_record() {
        let s = parse(&running("a", 5_000_000, 10, true));
        assert!(s.complete && s.running());
        assert_eq!(
            s.vcpus,
            vec![VcpuTimes {
                time_ns: 5_000_000,
                delay_ns: 10
            }]
        );
        assert_eq!((s.balloon_kib, s.rss_kib), (524288, 1005));
        assert_eq!(s.disks.len(), 1);
        assert_eq!((s.disks[0].reads, s.disks[0].written_bytes), (5, 4096));
        assert_eq!(s.nics[0].interface, "hv0");
        let c = s.nics[0].counters;
        assert_eq!((c.rx_bytes, c.tx_dropped, c.tx_bytes), (7, 3, 0));
    }

    #[test]
    fn a_record_without_monitor_figures_is_incomplete() {
        let s = parse(&running("a", 1, 0, false));
        assert!(!s.complete);
        assert!(s.disks.is_empty());
        // A shut-off guest has no monitor to ask: its record is whole.
        let off = parse(&record("b", &[("state.state", Param::Int(5))]));
        assert!(off.complete && !off.running());
    }

    #[test]
    fn a_stuck_guest_keeps_its_last_figures_and_ages_while_others_go_on() {
        let mut t = Tracker::new(60_000, 10_000);
        let mine = own(&["a", "b"]);
        t.update(
            0,
            &[
                running("a", 1_000_000_000, 0, true),
                running("b", 1_000_000_000, 0, true),
            ],
            &mine,
        );
        t.update(
            10_000,
            &[
                running("a", 2_000_000_000, 0, false),
                running("b", 3_000_000_000, 0, true),
            ],
            &mine,
        );
        let v = t.views(10_000);
        let (a, b) = (&v[0], &v[1]);
        assert_eq!(a.age_ms, 10_000);
        assert!(a.quarantined.as_deref().unwrap().contains("did not answer"));
        assert_eq!(a.stats.rss_kib, 2000, "last good RSS kept");
        assert_eq!(
            a.stats.vcpus[0].time_ns, 2_000_000_000,
            "vCPU times are fresh"
        );
        assert_eq!((b.age_ms, b.quarantined.clone()), (0, None));
        assert_eq!(b.stats.rss_kib, 4000);
        // It answers again: out of quarantine, age 0.
        t.update(20_000, &[running("a", 2_500_000_000, 0, true)], &mine);
        let a = &t.views(20_000)[0];
        assert_eq!((a.age_ms, a.quarantined.clone()), (0, None));
    }

    #[test]
    fn a_late_answer_does_not_overwrite_a_newer_one() {
        let mut t = Tracker::new(60_000, 10_000);
        let mine = own(&["a"]);
        t.update(2_000, &[running("a", 5_000_000_000, 0, true)], &mine);
        t.update(1_000, &[running("a", 1_000_000_000, 0, true)], &mine);
        assert_eq!(t.views(2_000)[0].stats.vcpus[0].time_ns, 5_000_000_000);
    }

    #[test]
    fn no_answer_at_all_quarantines_after_a_while() {
        let mut t = Tracker::new(60_000, 2_000);
        t.update(0, &[running("a", 1, 0, true)], &own(&["a"]));
        assert_eq!(t.views(1_000)[0].quarantined, None);
        assert!(
            t.views(3_000)[0]
                .quarantined
                .as_deref()
                .unwrap()
                .contains("has not returned")
        );
    }

    #[test]
    fn one_busy_moment_is_no_quarantine() {
        let mut t = Tracker::new(60_000, 2_000);
        let mine = own(&["a"]);
        t.update(0, &[running("a", 1, 0, true)], &mine);
        t.update(1_000, &[running("a", 2, 0, false)], &mine);
        let v = &t.views(1_000)[0];
        assert_eq!((v.age_ms, v.quarantined.clone()), (1_000, None));
        t.update(2_000, &[running("a", 3, 0, false)], &mine);
        assert!(
            t.views(2_000)[0].quarantined.is_some(),
            "two intervals without an answer"
        );
    }

    #[test]
    fn a_failed_call_quarantines_everyone_with_the_reason() {
        let mut t = Tracker::new(60_000, 2_000);
        t.update(0, &[running("a", 1, 0, true)], &own(&["a"]));
        t.missed("libvirt did not answer within 2000 ms");
        assert_eq!(
            t.views(1_000)[0].quarantined,
            None,
            "not yet: one missed call"
        );
        let v = t.views(5_000);
        assert_eq!(v[0].age_ms, 5_000);
        assert_eq!(
            v[0].quarantined.as_deref(),
            Some("libvirt did not answer within 2000 ms")
        );
    }

    #[test]
    fn steal_and_run_over_the_window() {
        let mut t = Tracker::new(20_000, 10_000);
        let mine = own(&["a"]);
        // 10 s apart: 5 s run and 1 s delay, then 2 s run and 3 s delay.
        t.update(0, &[running("a", 1_000_000_000, 0, true)], &mine);
        t.update(
            10_000,
            &[running("a", 6_000_000_000, 1_000_000_000, true)],
            &mine,
        );
        let r = t.views(10_000)[0].ratios.clone();
        assert!(
            (r[0].0 - 0.5).abs() < 1e-9 && (r[0].1 - 0.1).abs() < 1e-9,
            "{r:?}"
        );
        t.update(
            20_000,
            &[running("a", 8_000_000_000, 4_000_000_000, true)],
            &mine,
        );
        t.update(
            30_000,
            &[running("a", 9_000_000_000, 4_000_000_000, true)],
            &mine,
        );
        // The window is 20 s: the first sample fell out; 10 s..30 s: 3 s run, 3 s delay.
        let r = t.views(30_000)[0].ratios.clone();
        assert!(
            (r[0].0 - 0.15).abs() < 1e-9 && (r[0].1 - 0.15).abs() < 1e-9,
            "{r:?}"
        );
    }

    #[test]
    fn no_ratios_from_one_sample_nor_across_a_restart() {
        let mut t = Tracker::new(60_000, 10_000);
        let mine = own(&["a"]);
        t.update(0, &[running("a", 9_000_000_000, 0, true)], &mine);
        assert!(t.views(0)[0].ratios.is_empty(), "one sample says nothing");
        // Restarted: times begin again; the window starts over instead of reading 0.
        t.update(10_000, &[running("a", 1_000_000_000, 0, true)], &mine);
        assert!(t.views(10_000)[0].ratios.is_empty());
        t.update(
            20_000,
            &[running("a", 3_000_000_000, 1_000_000_000, true)],
            &mine,
        );
        let r = t.views(20_000)[0].ratios.clone();
        assert!(
            (r[0].0 - 0.2).abs() < 1e-9 && (r[0].1 - 0.1).abs() < 1e-9,
            "{r:?}"
        );
    }

    #[test]
    fn guests_that_are_gone_are_forgotten_and_others_ignored() {
        let mut t = Tracker::new(60_000, 10_000);
        t.update(
            0,
            &[running("a", 1, 0, true), running("x", 1, 0, true)],
            &own(&["a"]),
        );
        assert_eq!(t.views(0).len(), 1, "not ours");
        t.retain(&own(&[]));
        assert!(t.views(1).is_empty());
    }
}
