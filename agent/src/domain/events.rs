//! Domain lifecycle events from libvirt's callbacks (the `virt` crate has no safe wrapper for
//! them), fanned out on a broadcast channel. A reset is its own `rebooted` event, never a stop.

use hvagent_core::now_unix_ms as now_ms;
use std::ffi::{CStr, c_char, c_int, c_void};

use tokio::sync::broadcast;
use virt::connect::Connect;
use virt::sys;

/// Events kept for slow watchers before they miss some (they are told).
pub const CAPACITY: usize = 1024;

/// What happened to a domain: libvirt's lifecycle event kinds, its reboot and tunable
/// callbacks, and the agent's own `Lost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    /// A reset (the guest keeps running).
    Rebooted,
    /// Pins or other tunables changed (detail `cputune` for pins).
    Tuned,
    /// No domain: the connection to libvirtd was reopened and events may be missing.
    Lost,
    /// The agent's own: a live migration's phase (detail), on the source and the target.
    Migration,
    /// A lifecycle event number this agent does not know.
    Unknown,
}

impl EventKind {
    /// The word WatchEvents and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Defined => "defined",
            EventKind::Undefined => "undefined",
            EventKind::Started => "started",
            EventKind::Suspended => "suspended",
            EventKind::Resumed => "resumed",
            EventKind::Stopped => "stopped",
            EventKind::Shutdown => "shutdown",
            EventKind::PmSuspended => "pmsuspended",
            EventKind::Crashed => "crashed",
            EventKind::Rebooted => "rebooted",
            EventKind::Tuned => "tuned",
            EventKind::Lost => "lost",
            EventKind::Migration => "migration",
            EventKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub uuid: String,
    pub name: String,
    pub kind: EventKind,
    /// libvirt's detail for the kind, e.g. `booted`, `destroyed`, `shutdown`.
    pub detail: &'static str,
    pub unix_ms: u64,
    /// How far a migration's copy is (`Migration` events while libvirt copies).
    pub progress: Option<Progress>,
}

/// A live migration's copy as libvirt's job statistics count it: memory and disks together.
/// `total_bytes` grows while the guest dirties memory already sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub processed_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
}

impl DomainEvent {
    /// The connection to libvirtd was reopened: events while it was down are missing.
    pub fn reconnected() -> Self {
        DomainEvent {
            uuid: String::new(),
            name: String::new(),
            kind: EventKind::Lost,
            detail: "libvirt reconnected",
            unix_ms: now_ms(),
            progress: None,
        }
    }
}

/// libvirt's lifecycle event and detail numbers as words.
pub fn describe(event: i32, detail: i32) -> (EventKind, &'static str) {
    let pick = |names: &[&'static str]| {
        usize::try_from(detail)
            .ok()
            .and_then(|d| names.get(d).copied())
            .unwrap_or("unknown")
    };
    match event {
        0 => (
            EventKind::Defined,
            pick(&["added", "updated", "renamed", "from_snapshot"]),
        ),
        1 => (EventKind::Undefined, pick(&["removed", "renamed"])),
        2 => (
            EventKind::Started,
            pick(&[
                "booted",
                "migrated",
                "restored",
                "from_snapshot",
                "wakeup",
                "recreated",
            ]),
        ),
        3 => (
            EventKind::Suspended,
            pick(&[
                "paused",
                "migrated",
                "ioerror",
                "watchdog",
                "restored",
                "from_snapshot",
                "api_error",
                "postcopy",
                "postcopy_failed",
            ]),
        ),
        4 => (
            EventKind::Resumed,
            pick(&[
                "unpaused",
                "migrated",
                "from_snapshot",
                "postcopy",
                "postcopy_failed",
            ]),
        ),
        5 => (
            EventKind::Stopped,
            pick(&[
                "shutdown",
                "destroyed",
                "crashed",
                "migrated",
                "saved",
                "failed",
                "from_snapshot",
            ]),
        ),
        6 => (EventKind::Shutdown, pick(&["finished", "guest", "host"])),
        7 => (EventKind::PmSuspended, pick(&["memory", "disk"])),
        8 => (EventKind::Crashed, pick(&["panicked", "crashloaded"])),
        _ => (EventKind::Unknown, "unknown"),
    }
}

/// A domain's UUID and name ("" where libvirt cannot say).
///
/// # Safety
/// `dom` is a live domain pointer (one libvirt hands a callback or a stats record).
pub(crate) unsafe fn identity(dom: sys::virDomainPtr) -> (String, String) {
    let mut buf = [0 as c_char; 64];
    // SAFETY: the buffer holds VIR_UUID_STRING_BUFLEN (37) bytes; libvirt NUL-terminates.
    let uuid = if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } == 0 {
        // SAFETY: libvirt wrote a NUL-terminated string into `buf` (it returned 0).
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    // SAFETY: the name belongs to the domain object and lives while the callback runs.
    let name_ptr = unsafe { sys::virDomainGetName(dom) };
    let name = if name_ptr.is_null() {
        String::new()
    } else {
        // SAFETY: not null, and libvirt's names are NUL-terminated.
        unsafe { CStr::from_ptr(name_ptr) }
            .to_string_lossy()
            .into_owned()
    };
    (uuid, name)
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: opaque is the Sender boxed in `register`, alive until libvirt frees it.
    let tx = unsafe { &*(opaque as *const broadcast::Sender<DomainEvent>) };
    // SAFETY: libvirt passes a live domain for the length of the callback.
    let (uuid, name) = unsafe { identity(dom) };
    let (kind, detail) = describe(event, detail);
    let _ = tx.send(DomainEvent {
        uuid,
        name,
        kind,
        detail,
        unix_ms: now_ms(),
        progress: None,
    });
    0
}

unsafe extern "C" fn on_reboot(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    opaque: *mut c_void,
) {
    // SAFETY: as in `on_lifecycle`.
    let tx = unsafe { &*(opaque as *const broadcast::Sender<DomainEvent>) };
    // SAFETY: libvirt passes a live domain for the length of the callback.
    let (uuid, name) = unsafe { identity(dom) };
    let _ = tx.send(DomainEvent {
        uuid,
        name,
        kind: EventKind::Rebooted,
        detail: "reset",
        unix_ms: now_ms(),
        progress: None,
    });
}

unsafe extern "C" fn on_tunable(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    params: sys::virTypedParameterPtr,
    nparams: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: as in `on_lifecycle`.
    let tx = unsafe { &*(opaque as *const broadcast::Sender<DomainEvent>) };
    // SAFETY: libvirt passes a live domain for the length of the callback.
    let (uuid, name) = unsafe { identity(dom) };
    let pins = (0..nparams.max(0) as usize).any(|i| {
        // SAFETY: libvirt passes `nparams` parameters with NUL-terminated field names.
        let field = unsafe { CStr::from_ptr((*params.add(i)).field.as_ptr()) };
        field.to_bytes().starts_with(b"cputune.")
    });
    let _ = tx.send(DomainEvent {
        uuid,
        name,
        kind: EventKind::Tuned,
        detail: if pins { "cputune" } else { "other" },
        unix_ms: now_ms(),
        progress: None,
    });
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: the pointer came from Box::into_raw in `register`; libvirt frees it once.
    drop(unsafe { Box::from_raw(opaque as *mut broadcast::Sender<DomainEvent>) });
}

/// Registers the lifecycle, reboot and tunable callbacks of every domain on `conn`.
pub fn register(conn: &Connect, tx: &broadcast::Sender<DomainEvent>) -> Result<(), String> {
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: libvirt calls a callback with the signature of its event id; the generic
    // type is only how the C API spells the parameter.
    let lifecycle: Generic = unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                c_int,
                c_int,
                *mut c_void,
            ) -> c_int,
            Generic,
        >(on_lifecycle)
    };
    let reboot: Generic = on_reboot;
    // SAFETY: as for `lifecycle`.
    let tunable: Generic = unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                sys::virTypedParameterPtr,
                c_int,
                *mut c_void,
            ),
            Generic,
        >(on_tunable)
    };
    for (id, cb) in [
        (sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
        (sys::VIR_DOMAIN_EVENT_ID_REBOOT, reboot),
        (sys::VIR_DOMAIN_EVENT_ID_TUNABLE, tunable),
    ] {
        let opaque = Box::into_raw(Box::new(tx.clone())) as *mut c_void;
        // SAFETY: a live connection; libvirt owns `opaque` from here and frees it with
        // `free_sender` when the callback is deregistered or the connection closes.
        let rc = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                id as c_int,
                Some(cb),
                opaque,
                Some(free_sender),
            )
        };
        if rc < 0 {
            // SAFETY: not registered, so still ours to free.
            unsafe { free_sender(opaque) };
            return Err(format!("cannot register libvirt event callback {id}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_words() {
        assert_eq!(describe(2, 0), (EventKind::Started, "booted"));
        assert_eq!(describe(5, 1), (EventKind::Stopped, "destroyed"));
        assert_eq!(describe(5, 0), (EventKind::Stopped, "shutdown"));
        assert_eq!(describe(1, 0), (EventKind::Undefined, "removed"));
        assert_eq!(describe(5, 99), (EventKind::Stopped, "unknown"));
        assert_eq!(describe(42, 0), (EventKind::Unknown, "unknown"));
        // The words WatchEvents sends, one per lifecycle number.
        let words: Vec<&str> = (0..9).map(|e| describe(e, 0).0.as_str()).collect();
        assert_eq!(
            words,
            [
                "defined",
                "undefined",
                "started",
                "suspended",
                "resumed",
                "stopped",
                "shutdown",
                "pmsuspended",
                "crashed"
            ]
        );
    }
}
