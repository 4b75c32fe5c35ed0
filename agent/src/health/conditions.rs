//! Node conditions: what the control plane asks before it schedules onto this node. Each is
//! evaluated from one sample against the `[health]` thresholds; `since` moves only when a
//! condition's status changes. Pure.

use super::host::HostSample;

/// The `[health]` thresholds (defaults in docs/operations.md).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// MemoryPressure below this share of MemAvailable/MemTotal, in percent.
    pub memory_available_min_percent: f64,
    /// MemoryPressure above this PSI `memory full avg10`, in percent.
    pub memory_psi_full_max: f64,
    /// CpuPressure above this PSI `cpu some avg10`, in percent.
    pub cpu_psi_some_max: f64,
    /// DiskPressure below this share of free space in the image store, in percent.
    pub disk_free_min_percent: f64,
    /// DiskPressure above this PSI `io full avg10`, in percent.
    pub io_psi_full_max: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            memory_available_min_percent: 5.0,
            memory_psi_full_max: 10.0,
            cpu_psi_some_max: 90.0,
            disk_free_min_percent: 10.0,
            io_psi_full_max: 50.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    pub since_ms: u64,
}

/// What the conditions are judged from, besides the host sample.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// `Err`: why libvirt cannot be reached.
    pub libvirt: Result<(), String>,
    /// `Err`: why this node cannot run guests at all (no KVM, emulation forbidden).
    pub emulation: Result<bool, String>,
    /// One line per open pinning violation.
    pub violations: Vec<String>,
    /// The reporter's view of Placement; `None`: not reporting (`[placement_api]` unset).
    pub placement_api: Option<crate::placement_api::status::Sync>,
    /// The node drains (NodeService.Drain): it admits no new guest.
    pub draining: bool,
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs {
            libvirt: Ok(()),
            emulation: Ok(false),
            violations: Vec::new(),
            placement_api: None,
            draining: false,
        }
    }
}

fn cond(kind: &'static str, status: bool, reason: &'static str, message: String) -> Condition {
    Condition {
        kind,
        status,
        reason,
        message,
        since_ms: 0,
    }
}

/// The conditions one sample shows, Ready last.
pub fn evaluate(host: &HostSample, inputs: &Inputs, t: &Thresholds) -> Vec<Condition> {
    let mut out = Vec::new();
    out.push(match &inputs.libvirt {
        Ok(()) => cond(
            "LibvirtDisconnected",
            false,
            "Connected",
            "libvirt answers".into(),
        ),
        Err(e) => cond("LibvirtDisconnected", true, "Unreachable", e.clone()),
    });

    let total = host.memory.total_bytes as f64;
    let available = if total > 0.0 {
        100.0 * host.memory.available_bytes as f64 / total
    } else {
        100.0
    };
    let mem_full = host.pressure("memory", "full").map_or(0.0, |p| p.avg10);
    out.push(if available < t.memory_available_min_percent {
        cond(
            "MemoryPressure",
            true,
            "LowAvailable",
            format!(
                "MemAvailable is {available:.1} % of MemTotal (threshold {} %)",
                t.memory_available_min_percent
            ),
        )
    } else if mem_full > t.memory_psi_full_max {
        cond(
            "MemoryPressure",
            true,
            "Stalled",
            format!(
                "memory full pressure avg10 {mem_full:.1} % (threshold {} %)",
                t.memory_psi_full_max
            ),
        )
    } else {
        cond(
            "MemoryPressure",
            false,
            "Enough",
            format!("MemAvailable {available:.1} %, memory full pressure avg10 {mem_full:.1} %"),
        )
    });

    let cpu_some = host.pressure("cpu", "some").map_or(0.0, |p| p.avg10);
    out.push(if cpu_some > t.cpu_psi_some_max {
        cond(
            "CpuPressure",
            true,
            "Stalled",
            format!(
                "cpu some pressure avg10 {cpu_some:.1} % (threshold {} %)",
                t.cpu_psi_some_max
            ),
        )
    } else {
        cond(
            "CpuPressure",
            false,
            "Enough",
            format!("cpu some pressure avg10 {cpu_some:.1} %"),
        )
    });

    let store = &host.store;
    let free = if store.size_bytes > 0 {
        100.0 * store.free_bytes as f64 / store.size_bytes as f64
    } else {
        100.0
    };
    let io_full = host.pressure("io", "full").map_or(0.0, |p| p.avg10);
    out.push(if free < t.disk_free_min_percent {
        cond(
            "DiskPressure",
            true,
            "LowSpace",
            format!(
                "{} has {free:.1} % free (threshold {} %)",
                store.path.display(),
                t.disk_free_min_percent
            ),
        )
    } else if io_full > t.io_psi_full_max {
        cond(
            "DiskPressure",
            true,
            "Stalled",
            format!(
                "io full pressure avg10 {io_full:.1} % (threshold {} %)",
                t.io_psi_full_max
            ),
        )
    } else {
        cond(
            "DiskPressure",
            false,
            "Enough",
            format!(
                "{} has {free:.1} % free, io full pressure avg10 {io_full:.1} %",
                store.path.display()
            ),
        )
    });

    out.push(match inputs.violations.as_slice() {
        [] => cond(
            "PinningViolation",
            false,
            "Conforming",
            "every guest runs where its claim says".into(),
        ),
        [one] => cond("PinningViolation", true, "Drift", one.clone()),
        [first, rest @ ..] => cond(
            "PinningViolation",
            true,
            "Drift",
            format!("{first} (and {} more)", rest.len()),
        ),
    });

    out.push(match &inputs.emulation {
        Ok(true) => cond(
            "EmulationOnly",
            true,
            "NoKvm",
            "guests run under TCG emulation: correct but slow, timing promises not verifiable"
                .into(),
        ),
        Ok(false) => cond("EmulationOnly", false, "Kvm", "guests run under KVM".into()),
        Err(e) => cond("EmulationOnly", false, "NoGuests", e.clone()),
    });

    // Not blocking Ready: a planned drain is not a fault (a cordoned Kubernetes node stays
    // Ready); the control plane sees it here, in capacity and in Placement.
    out.push(if inputs.draining {
        cond(
            "Draining",
            true,
            "Draining",
            "the node drains: it admits no new guests until NodeService.Undrain".into(),
        )
    } else {
        cond(
            "Draining",
            false,
            "Admitting",
            "the node admits new guests".into(),
        )
    });

    // Not blocking: the node still takes guests; a scheduler that goes by Placement may not
    // send it any (or send what Placement wrongly offers) until it is in sync again.
    if let Some(sync) = &inputs.placement_api {
        out.push(cond(
            "PlacementSync",
            sync.status,
            sync.reason,
            sync.message.clone(),
        ));
    }

    // Ready: the node can take a new guest now.
    let blocking: Vec<&Condition> = out
        .iter()
        .filter(|c| {
            c.status
                && matches!(
                    c.kind,
                    "LibvirtDisconnected" | "MemoryPressure" | "DiskPressure"
                )
        })
        .collect();
    let ready = match (blocking.first(), &inputs.emulation) {
        (Some(c), _) => cond(
            "Ready",
            false,
            c.reason_for_ready(),
            format!("{}: {}", c.kind, c.message),
        ),
        (None, Err(e)) => cond("Ready", false, "CannotRunGuests", e.clone()),
        (None, Ok(_)) => cond("Ready", true, "Ready", "the node takes new guests".into()),
    };
    out.push(ready);
    out
}

impl Condition {
    fn reason_for_ready(&self) -> &'static str {
        match self.kind {
            "LibvirtDisconnected" => "LibvirtDisconnected",
            "MemoryPressure" => "MemoryPressure",
            _ => "DiskPressure",
        }
    }
}

/// Keeps `since` across evaluations: unchanged status keeps the old time.
pub fn carry_since(previous: &[Condition], mut now: Vec<Condition>, now_ms: u64) -> Vec<Condition> {
    for c in &mut now {
        c.since_ms = previous
            .iter()
            .find(|p| p.kind == c.kind && p.status == c.status)
            .map_or(now_ms, |p| p.since_ms);
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::host::{Pressure, Store};

    fn host() -> HostSample {
        let mut h = HostSample::default();
        h.memory.total_bytes = 100;
        h.memory.available_bytes = 50;
        h.store = Store {
            path: "/var/lib/hvagent".into(),
            size_bytes: 100,
            free_bytes: 50,
            ..Store::default()
        };
        h
    }

    fn pressure(resource: &'static str, kind: &str, avg10: f64) -> Pressure {
        Pressure {
            resource,
            kind: kind.into(),
            avg10,
            avg60: 0.0,
            total_us: 0,
        }
    }

    fn get<'a>(cs: &'a [Condition], kind: &str) -> &'a Condition {
        cs.iter().find(|c| c.kind == kind).unwrap()
    }

    #[test]
    fn a_healthy_node_is_ready() {
        let cs = evaluate(&host(), &Inputs::default(), &Thresholds::default());
        let kinds: Vec<_> = cs.iter().map(|c| (c.kind, c.status)).collect();
        assert_eq!(
            kinds,
            [
                ("LibvirtDisconnected", false),
                ("MemoryPressure", false),
                ("CpuPressure", false),
                ("DiskPressure", false),
                ("PinningViolation", false),
                ("EmulationOnly", false),
                ("Draining", false),
                ("Ready", true),
            ]
        );
    }

    /// A draining node says so, and stays Ready: a planned drain is no fault.
    #[test]
    fn a_draining_node_says_so_and_stays_ready() {
        let inputs = Inputs {
            draining: true,
            ..Inputs::default()
        };
        let cs = evaluate(&host(), &inputs, &Thresholds::default());
        let d = get(&cs, "Draining");
        assert!(d.status);
        assert_eq!(d.reason, "Draining");
        assert!(d.message.contains("Undrain"), "{}", d.message);
        assert!(get(&cs, "Ready").status);
    }

    #[test]
    fn each_blocking_condition_makes_the_node_not_ready() {
        let t = Thresholds::default();
        let down = Inputs {
            libvirt: Err("cannot connect to qemu:///system".into()),
            ..Inputs::default()
        };
        let cs = evaluate(&host(), &down, &t);
        assert!(get(&cs, "LibvirtDisconnected").status);
        let ready = get(&cs, "Ready");
        assert_eq!((ready.status, ready.reason), (false, "LibvirtDisconnected"));
        assert!(
            ready.message.contains("qemu:///system"),
            "{}",
            ready.message
        );

        let mut low = host();
        low.memory.available_bytes = 4;
        let cs = evaluate(&low, &Inputs::default(), &t);
        assert_eq!(get(&cs, "MemoryPressure").reason, "LowAvailable");
        assert!(get(&cs, "MemoryPressure").message.contains("4.0 %"));
        assert_eq!(get(&cs, "Ready").reason, "MemoryPressure");

        let mut stalled = host();
        stalled.pressure.push(pressure("memory", "full", 10.5));
        assert_eq!(
            get(
                &evaluate(&stalled, &Inputs::default(), &t),
                "MemoryPressure"
            )
            .reason,
            "Stalled"
        );

        let mut full = host();
        full.store.free_bytes = 9;
        let cs = evaluate(&full, &Inputs::default(), &t);
        assert_eq!(get(&cs, "DiskPressure").reason, "LowSpace");
        assert!(!get(&cs, "Ready").status);

        let mut io = host();
        io.pressure.push(pressure("io", "full", 60.0));
        assert_eq!(
            get(&evaluate(&io, &Inputs::default(), &t), "DiskPressure").reason,
            "Stalled"
        );

        let no_guests = Inputs {
            emulation: Err("KVM does not work and emulation is forbidden".into()),
            ..Inputs::default()
        };
        let cs = evaluate(&host(), &no_guests, &t);
        assert_eq!(get(&cs, "Ready").reason, "CannotRunGuests");
    }

    #[test]
    fn reported_but_not_blocking() {
        let mut busy = host();
        busy.pressure.push(pressure("cpu", "some", 95.0));
        let inputs = Inputs {
            emulation: Ok(true),
            violations: vec!["a".into(), "b".into(), "c".into()],
            ..Inputs::default()
        };
        let cs = evaluate(&busy, &inputs, &Thresholds::default());
        assert!(get(&cs, "CpuPressure").status);
        assert!(get(&cs, "EmulationOnly").status);
        let p = get(&cs, "PinningViolation");
        assert_eq!((p.status, p.message.as_str()), (true, "a (and 2 more)"));
        assert!(get(&cs, "Ready").status);
    }

    #[test]
    fn placement_sync_shows_only_when_reporting_and_never_blocks() {
        let t = Thresholds::default();
        let cs = evaluate(&host(), &Inputs::default(), &t);
        assert!(cs.iter().all(|c| c.kind != "PlacementSync"));
        let away = Inputs {
            placement_api: Some(crate::placement_api::status::Sync {
                status: false,
                reason: "Unreachable",
                message: "GET /resource_providers: no answer".into(),
            }),
            ..Inputs::default()
        };
        let cs = evaluate(&host(), &away, &t);
        let p = get(&cs, "PlacementSync");
        assert_eq!((p.status, p.reason), (false, "Unreachable"));
        assert!(get(&cs, "Ready").status, "the node still takes guests");
        assert_eq!(cs.last().map(|c| c.kind), Some("Ready"));
    }

    #[test]
    fn since_moves_only_on_change() {
        let t = Thresholds::default();
        let first = carry_since(&[], evaluate(&host(), &Inputs::default(), &t), 1000);
        assert!(first.iter().all(|c| c.since_ms == 1000));
        let same = carry_since(&first, evaluate(&host(), &Inputs::default(), &t), 2000);
        assert!(same.iter().all(|c| c.since_ms == 1000));
        let down = Inputs {
            libvirt: Err("x".into()),
            ..Inputs::default()
        };
        let changed = carry_since(&same, evaluate(&host(), &down, &t), 3000);
        assert_eq!(get(&changed, "LibvirtDisconnected").since_ms, 3000);
        assert_eq!(get(&changed, "Ready").since_ms, 3000);
        assert_eq!(get(&changed, "CpuPressure").since_ms, 1000);
    }
}
