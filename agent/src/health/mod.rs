//! Node health: one sampler reads the host (procfs/sysfs), the guests (one bulk libvirt stats
//! call), and every running guest's pins each interval — and at once when libvirt reports a
//! tuning change — then judges the node's conditions and publishes one snapshot. The gRPC
//! API, the Prometheus endpoint and the guarantee report all read that snapshot, so a scrape
//! never waits for libvirt and one stuck guest never blanks the others.

pub mod conditions;
pub mod exposition;
pub mod guests;
pub mod host;
pub mod pinning;
pub mod prometheus;
pub mod report;

use hvagent_core::now_unix_ms as unix_ms;
use hvagent_core::sync::lock;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::domain::stats::{StatsConnection, all_domain_stats};
use crate::domain::{DomainState, EventKind, Libvirt};
use crate::guest::{Guest, Guests};
use crate::host::sysfs::SysRoot;
use crate::placement::PlacementState;

use conditions::{Condition, Thresholds};
use guests::{GuestView, Tracker};
use host::HostSample;
use hvagent_core::counts::KindCounts;
use pinning::{Expected, Observed, Violation};

/// Where libvirt's QEMU driver keeps each running domain's pid file (`NAME.pid`), by default.
pub const QEMU_PID_DIR: &str = "/run/libvirt/qemu";

/// At most this many stats calls may be stuck in libvirt at once; beyond, calls are skipped
/// (and the guests' figures age) until one returns.
const MAX_STUCK_CALLS: usize = 2;

/// `[health]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub interval: Duration,
    pub min_watch_interval: Duration,
    pub window: Duration,
    pub libvirt_timeout: Duration,
    pub repair: bool,
    pub thresholds: Thresholds,
    /// Where the guests' QEMU pid files are (`[libvirt] qemu_pid_dir`): the vCPU threads'
    /// affinity and the memory's NUMA placement are read from `/proc/PID`.
    pub qemu_pid_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_secs(10),
            min_watch_interval: Duration::from_millis(1000),
            window: Duration::from_secs(60),
            libvirt_timeout: Duration::from_millis(2000),
            repair: false,
            thresholds: Thresholds::default(),
            qemu_pid_dir: PathBuf::from(QEMU_PID_DIR),
        }
    }
}

/// A guest as the snapshot shows it.
#[derive(Debug, Clone)]
pub struct GuestRow {
    pub guest: Guest,
    pub view: Option<GuestView>,
}

/// An open violation and when it was first seen.
#[derive(Debug, Clone)]
pub struct OpenViolation {
    pub violation: Violation,
    pub since_ms: u64,
}

/// Everything known about the node's health at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub taken_unix_ms: u64,
    pub interval: Duration,
    pub host: HostSample,
    /// (cpu, busy, steal) over the last interval.
    pub cpu_usage: Vec<(u32, f64, f64)>,
    pub memory_reserved_bytes: u64,
    pub memory_claimed_bytes: u64,
    pub guests: Vec<GuestRow>,
    pub violations: Vec<OpenViolation>,
    pub conditions: Vec<Condition>,
    pub pinning_repairs: BTreeMap<String, u64>,
    /// Running guests whose threads were read in the last pin check.
    pub observed: BTreeMap<String, Observed>,
    pub expected: BTreeMap<String, Expected>,
    /// The sampler's own figures (`hvagent_health_*`).
    pub sample_seconds: f64,
    pub stuck_stats_calls: usize,
    /// The Placement reporter's figures; `None`: not reporting.
    pub placement_api: Option<crate::placement_api::status::Figures>,
}

impl Snapshot {
    pub fn ready(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status)
    }
}

/// What the sampler carries from one round to the next.
struct Carry {
    /// The guests as last listed (kept while libvirt cannot list them).
    guests: Vec<Guest>,
    previous_cpus: Vec<host::CpuTimes>,
    conditions: Vec<Condition>,
    violations: Vec<OpenViolation>,
    observed: BTreeMap<String, Observed>,
    expected: BTreeMap<String, Expected>,
}

pub struct Health {
    settings: Settings,
    sys: SysRoot,
    store: PathBuf,
    libvirt: Arc<Libvirt>,
    guests: Arc<Guests>,
    placement: Arc<PlacementState>,
    carry: Mutex<Carry>,
    /// Fed by every stats call that returns, also one that returns late.
    tracker: Arc<Mutex<Tracker>>,
    latest: watch::Sender<Arc<Snapshot>>,
    repairs: KindCounts,
    stuck: Arc<AtomicUsize>,
    /// A pin read is running.
    reading_pins: Arc<AtomicBool>,
    stats_conn: Arc<StatsConnection>,
    /// Set by libvirt tuning events: check pins now.
    tuned: Arc<Notify>,
    epoch: Instant,
    cgroups: (Option<PathBuf>, Option<PathBuf>),
    /// The Placement reporter's status, when `[placement_api]` is set.
    placement_api: OnceLock<Arc<crate::placement_api::Status>>,
}

impl Health {
    pub fn new(
        settings: Settings,
        sys: SysRoot,
        store: &Path,
        libvirt: Arc<Libvirt>,
        guests: Arc<Guests>,
        placement: Arc<PlacementState>,
    ) -> Health {
        let window_ms = settings.window.as_millis() as u64;
        let uri = libvirt.uri().to_string();
        // Two rounds without complete figures: the guest does not answer.
        let quarantine_ms = 2 * settings.interval.as_millis() as u64;
        let cgroups = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| pinning::cgroup_mounts(&m))
            .unwrap_or_default();
        Health {
            settings,
            sys,
            store: store.to_path_buf(),
            libvirt,
            guests,
            placement,
            tracker: Arc::new(Mutex::new(Tracker::new(window_ms, quarantine_ms))),
            carry: Mutex::new(Carry {
                guests: Vec::new(),
                previous_cpus: Vec::new(),
                conditions: Vec::new(),
                violations: Vec::new(),
                observed: BTreeMap::new(),
                expected: BTreeMap::new(),
            }),
            latest: watch::channel(Arc::new(Snapshot::default())).0,
            repairs: KindCounts::default(),
            stuck: Arc::default(),
            reading_pins: Arc::default(),
            stats_conn: Arc::new(StatsConnection::new(&uri)),
            tuned: Arc::default(),
            epoch: Instant::now(),
            cgroups,
            placement_api: OnceLock::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Takes the Placement reporter's status into every sample from now on (`PlacementSync`,
    /// `hvagent_placement_api_*`).
    pub fn watch_placement_api(&self, status: Arc<crate::placement_api::Status>) {
        let _ = self.placement_api.set(status);
    }

    /// The newest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.latest.borrow().clone()
    }

    /// Snapshots as they are published.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.latest.subscribe()
    }

    /// Samples every interval, and soon after a libvirt tuning event, until dropped.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.libvirt.subscribe();
        let tuned = self.tuned.clone();
        // Pin changes (vcpupin, emulatorpin, the agent's own re-pins) wake the sampler; the
        // event stream is otherwise the guests API's business. Stopped with the sampler.
        let _listener = crate::task::AbortOnDrop(tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) if e.kind == EventKind::Tuned && e.detail == "cputune" => {
                        tuned.notify_one()
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        }));
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.tuned.notified() => {
                    // Let a burst of pin changes (one event per vCPU) settle first.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            self.sample().await;
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// One round: read, judge, publish.
    pub async fn sample(&self) {
        let started = Instant::now();
        // The snapshot's time is when the host figures were read.
        let taken = unix_ms();
        let sys = self.sys.clone();
        let store = self.store.clone();
        let host = tokio::task::spawn_blocking(move || {
            HostSample::read(&sys, &store, Path::new("/proc/self"))
        })
        .await
        .unwrap_or_default();

        let timeout = self.settings.libvirt_timeout;
        let listed = tokio::time::timeout(timeout, self.guests.list()).await;
        let (own, libvirt): (Vec<Guest>, Result<(), String>) = match listed {
            Ok(Ok((guests, _))) => (guests, Ok(())),
            Ok(Err(e)) => (self.last_guests(), Err(e.to_string())),
            Err(_) => (
                self.last_guests(),
                Err(format!(
                    "libvirt did not list the guests within {} ms",
                    timeout.as_millis()
                )),
            ),
        };
        let names: BTreeMap<String, String> = own
            .iter()
            .map(|g| (g.uuid.clone(), g.intent.name.clone()))
            .collect();
        lock(&self.tracker).retain(&names);
        match &libvirt {
            Ok(()) => self.domain_stats(&names).await,
            Err(why) => lock(&self.tracker).missed(why),
        }
        let stats_done = started.elapsed();
        // Pins are compared only while nothing moves them (and again after reading, in case
        // a create or re-pin started meanwhile).
        let checked = if libvirt.is_ok() && self.guests.settled() {
            self.observe(&own).await.filter(|_| self.guests.settled())
        } else {
            None
        };
        tracing::debug!(
            stats_ms = stats_done.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "health sample"
        );

        let now = self.now_ms();
        let mut carry = lock(&self.carry);
        carry.guests = own.clone();
        if let Some((expected, observed)) = &checked {
            let pairs: Vec<(Expected, Observed)> = expected
                .values()
                .filter_map(|e| observed.get(&e.uuid).map(|o| (e.clone(), o.clone())))
                .collect();
            let before = std::mem::take(&mut carry.violations);
            // A running guest whose threads could not be read this time keeps its violations.
            let kept = before.iter().filter(|b| {
                expected.contains_key(&b.violation.uuid)
                    && !observed.contains_key(&b.violation.uuid)
            });
            let mut open: Vec<OpenViolation> = kept.cloned().collect();
            for v in pinning::check(&pairs) {
                match before.iter().find(|b| b.violation.key() == v.key()) {
                    Some(b) => open.push(OpenViolation {
                        since_ms: b.since_ms,
                        violation: v,
                    }),
                    None => {
                        tracing::warn!(
                            vm = %v.uuid, name = %v.name, kind = v.kind.as_str(), vcpu = ?v.vcpu,
                            "pinning violation: {}", v.detail
                        );
                        open.push(OpenViolation {
                            since_ms: taken,
                            violation: v,
                        });
                    }
                }
            }
            carry.violations = open;
            carry.expected = expected.clone();
            carry.observed = observed.clone();
            if self.settings.repair {
                self.repair(&carry.violations, observed);
            }
        } else if libvirt.is_err() {
            carry.observed.clear();
        }

        let cpu_usage = host
            .cpus
            .iter()
            .map(|c| {
                let before = carry.previous_cpus.iter().find(|p| p.cpu == c.cpu);
                let (busy, steal) = before.map_or((0.0, 0.0), |b| c.usage_since(b));
                (c.cpu, busy, steal)
            })
            .collect();
        carry.previous_cpus = host.cpus.clone();
        let inputs = conditions::Inputs {
            libvirt,
            emulation: self
                .guests
                .emulation()
                .map(|e| e == crate::domain::xml::Emulation::Tcg),
            violations: carry
                .violations
                .iter()
                .map(|v| v.violation.line())
                .collect(),
            placement_api: self.placement_api.get().map(|s| s.sync()),
            draining: self.placement.lock().is_draining(),
        };
        let evaluated = conditions::evaluate(&host, &inputs, &self.settings.thresholds);
        carry.conditions = conditions::carry_since(&carry.conditions, evaluated, taken);
        let (reserved, claimed) = {
            let alloc = self.placement.lock();
            let claimed: u64 = alloc
                .claims()
                .map(|c| c.memory.iter().map(|m| m.mib).sum::<u64>() + c.overhead.mib)
                .sum();
            (alloc.policy().reserved_memory_mib << 20, claimed << 20)
        };
        let views = lock(&self.tracker).views(now);
        let guests = own
            .into_iter()
            .map(|g| GuestRow {
                view: views.iter().find(|v| v.uuid == g.uuid).cloned(),
                guest: g,
            })
            .collect();
        let snapshot = Snapshot {
            taken_unix_ms: taken,
            interval: self.settings.interval,
            host,
            cpu_usage,
            memory_reserved_bytes: reserved,
            memory_claimed_bytes: claimed,
            guests,
            violations: carry.violations.clone(),
            conditions: carry.conditions.clone(),
            pinning_repairs: self.repairs.get(),
            observed: carry.observed.clone(),
            expected: carry.expected.clone(),
            sample_seconds: started.elapsed().as_secs_f64(),
            stuck_stats_calls: self.stuck.load(Ordering::Relaxed),
            placement_api: self.placement_api.get().map(|s| s.figures()),
        };
        drop(carry);
        self.latest.send_replace(Arc::new(snapshot));
    }

    /// One bulk stats call, whose records go to the tracker whenever it returns. If it does
    /// not return in time (a QEMU that does not answer holds it, and with it every other call
    /// on its connection), one more on a new connection: NOWAIT makes that one skip the
    /// guest whose job the first holds. A failed call marks every guest's figures as missed.
    async fn domain_stats(&self, own: &BTreeMap<String, String>) {
        let timeout = self.settings.libvirt_timeout;
        for _ in 0..2 {
            if self.stuck.load(Ordering::SeqCst) >= MAX_STUCK_CALLS {
                tracing::debug!(
                    "{MAX_STUCK_CALLS} libvirt stats calls pending; not asking again yet"
                );
                return;
            }
            self.stuck.fetch_add(1, Ordering::SeqCst);
            let connection = self.stats_conn.clone();
            let stuck = self.stuck.clone();
            let tracker = self.tracker.clone();
            let own = own.clone();
            let at = self.now_ms();
            let call = tokio::task::spawn_blocking(move || {
                let result = connection.get().and_then(|c| all_domain_stats(&c));
                stuck.fetch_sub(1, Ordering::SeqCst);
                let mut tracker = lock(&tracker);
                match result {
                    Ok(records) => tracker.update(at, &records, &own),
                    Err(e) => tracker.missed(&format!("libvirt stats call failed: {e}")),
                }
            });
            if tokio::time::timeout(timeout, call).await.is_ok() {
                return;
            }
            self.stats_conn.abandon();
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "libvirt stats call did not return in time (a guest's QEMU does not answer?); asking again on a new connection"
            );
        }
    }

    fn last_guests(&self) -> Vec<Guest> {
        lock(&self.carry).guests.clone()
    }

    /// Where each running guest's threads should be and are; `None` when they could not be
    /// read (in time).
    async fn observe(
        &self,
        own: &[Guest],
    ) -> Option<(BTreeMap<String, Expected>, BTreeMap<String, Observed>)> {
        // Before placement holds the guests' claims every pin would look like drift.
        if !self.placement.is_rebuilt() {
            return None;
        }
        let expected: BTreeMap<String, Expected> = {
            let alloc = self.placement.lock();
            // CPUs that reservations took from the pool: floating guests keep them until the
            // dedicated guest is created (they are re-pinned then).
            let reserved: Vec<u32> = alloc
                .claims()
                .filter(|c| c.is_reservation())
                .flat_map(|c| c.dedicated_cpus().chain(c.idle_cpus.iter().copied()))
                .collect();
            own.iter()
                .filter(|g| g.state == DomainState::Running)
                .map(|g| {
                    let Some(claim) = alloc.get(&g.uuid) else {
                        // Running, but not counted: its threads are read all the same (they
                        // may sit on CPUs promised to others), with no pins of its own.
                        return (
                            g.uuid.clone(),
                            Expected {
                                uuid: g.uuid.clone(),
                                name: g.intent.name.clone(),
                                vcpus: vec![Vec::new(); g.intent.claim.vcpus.len()],
                                emulator: Vec::new(),
                                exclusive: Vec::new(),
                                slack: Vec::new(),
                                accounted: false,
                            },
                        );
                    };
                    let mut exclusive: Vec<u32> = claim.dedicated_cpus().collect();
                    exclusive.extend(&claim.idle_cpus);
                    let floating = |yes: bool| if yes { reserved.clone() } else { Vec::new() };
                    let mut slack: Vec<Vec<u32>> = claim
                        .vcpus
                        .iter()
                        .map(|v| floating(v.cpu.is_none()))
                        .collect();
                    slack.push(floating(
                        claim.emulator == crate::placement::claim::Emulator::Pool,
                    ));
                    (
                        g.uuid.clone(),
                        Expected {
                            uuid: g.uuid.clone(),
                            name: g.intent.name.clone(),
                            vcpus: alloc.vcpu_cpus(claim),
                            emulator: alloc.emulator_cpus(claim),
                            exclusive,
                            slack,
                            accounted: true,
                        },
                    )
                })
                .collect()
        };
        let host_cpus = self
            .placement
            .lock()
            .topology()
            .cpus
            .iter()
            .map(|c| c.id + 1)
            .max()
            .unwrap_or(1);
        // One pin read at a time: one that outlives its timeout is not joined by more.
        if self.reading_pins.swap(true, Ordering::SeqCst) {
            return None;
        }
        let reading = self.reading_pins.clone();
        let libvirt = self.libvirt.clone();
        let cgroups = self.cgroups.clone();
        let pid_dir = self.settings.qemu_pid_dir.clone();
        let wanted: Vec<(String, String, usize)> = expected
            .values()
            .map(|e| (e.uuid.clone(), e.name.clone(), e.vcpus.len()))
            .collect();
        let read = tokio::task::spawn_blocking(move || {
            let _done = ClearOnDrop(reading);
            let mut observed = BTreeMap::new();
            for (uuid, name, vcpus) in wanted {
                let Some(pid) = qemu_pid(&pid_dir, &name) else {
                    continue;
                };
                let Ok((libvirt_vcpus, libvirt_emulator)) =
                    libvirt.live_pins(&uuid, vcpus, host_cpus)
                else {
                    continue;
                };
                let (vcpu_threads, emulator_threads) =
                    pinning::read_threads(Path::new("/proc"), pid, &cgroups);
                observed.insert(
                    uuid,
                    Observed {
                        libvirt_vcpus,
                        libvirt_emulator,
                        vcpu_threads,
                        emulator_threads,
                    },
                );
            }
            observed
        });
        let observed = tokio::time::timeout(self.settings.libvirt_timeout, read)
            .await
            .ok()?
            .ok()?;
        Some((expected, observed))
    }

    /// Restores the claimed pins of the guests observed this round with violations of their
    /// own; each kind is counted once the pins are back.
    fn repair(&self, open: &[OpenViolation], observed: &BTreeMap<String, Observed>) {
        let mine: Vec<&Violation> = open
            .iter()
            .map(|v| &v.violation)
            .filter(|v| v.kind.own() && observed.contains_key(&v.uuid))
            .collect();
        let mut uuids: Vec<String> = mine.iter().map(|v| v.uuid.clone()).collect();
        uuids.dedup();
        if uuids.is_empty() {
            return;
        }
        let kinds: Vec<&'static str> = mine.iter().map(|v| v.kind.as_str()).collect();
        let guests = self.guests.clone();
        let repairs = self.repairs.clone();
        let tuned = self.tuned.clone();
        tokio::spawn(async move {
            match guests.restore_pins(uuids.clone()).await {
                Ok(()) => {
                    for kind in kinds {
                        repairs.inc(kind);
                    }
                    tracing::info!(vms = ?uuids, "pinning repaired: claimed pins restored");
                    // Check again soon rather than a whole interval later.
                    tuned.notify_one();
                }
                Err(e) => tracing::warn!(vms = ?uuids, error = %e, "cannot restore pins"),
            }
        });
    }

    /// A guest's guarantee report from the latest snapshot.
    pub async fn report(&self, uuid: &str) -> Result<report::Report, crate::guest::GuestError> {
        let guest = self.guests.get(uuid).await?;
        let snapshot = self.latest();
        let claim = self
            .placement
            .lock()
            .get(&guest.uuid)
            .cloned()
            .unwrap_or_else(|| guest.intent.claim.clone());
        let spec = crate::flavor::parse(&guest.intent.flavor)
            .map_err(|e| crate::guest::GuestError::Internal(format!("stored flavor: {e}")))?
            .spec;
        let running = guest.state == DomainState::Running;
        let numa = if running {
            let (name, pid_dir) = (
                guest.intent.name.clone(),
                self.settings.qemu_pid_dir.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let pid = qemu_pid(&pid_dir, &name)?;
                std::fs::read_to_string(format!("/proc/{pid}/numa_maps"))
                    .ok()
                    .map(|t| report::parse_numa_maps(&t))
            })
            .await
            .ok()
            .flatten()
        } else {
            None
        };
        let view = snapshot
            .guests
            .iter()
            .find(|r| r.guest.uuid == guest.uuid)
            .and_then(|r| r.view.clone());
        let open: Vec<OpenViolation> = snapshot
            .violations
            .iter()
            .filter(|v| v.violation.uuid == guest.uuid)
            .cloned()
            .collect();
        let violations: Vec<Violation> = open.iter().map(|v| v.violation.clone()).collect();
        let emulation = guest.intent.emulation;
        let host_ecc = crate::host::memory::read(&self.sys).ecc;
        let promises = report::judge(&report::Subject {
            spec: &spec,
            claim: &claim,
            emulation,
            running,
            root_disk_gb: guest.root_disk_gb,
            host_ecc,
            stats: view.as_ref(),
            numa: numa.as_ref(),
            violations: &violations,
            pins_observed: snapshot.observed.contains_key(&guest.uuid),
        });
        Ok(report::Report {
            promises,
            observed: snapshot.observed.get(&guest.uuid).cloned(),
            expected: snapshot.expected.get(&guest.uuid).cloned(),
            view,
            numa: numa.unwrap_or_default(),
            violations: open,
            claim,
            guest,
            sampled_unix_ms: snapshot.taken_unix_ms,
            window: self.settings.window,
        })
    }
}

/// Clears a flag when dropped, also if the holder panics.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The pid of QEMU for domain `name`, from libvirt's pid file.
fn qemu_pid(dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}
