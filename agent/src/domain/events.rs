//! Domain lifecycle events from libvirt's callbacks (the `virt` crate has no safe wrapper for
//! them), fanned out on a broadcast channel. A reset is its own `rebooted` event, never a stop.

use std::ffi::{CStr, c_char, c_int, c_void};

use tokio::sync::broadcast;
use virt::connect::Connect;
use virt::sys;

/// Events kept for slow watchers before they miss some (they are told).
pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub uuid: String,
    pub name: String,
    /// `defined`, `undefined`, `started`, `suspended`, `resumed`, `stopped`, `shutdown`,
    /// `pmsuspended`, `crashed`, or `rebooted`; `tuned` when pins or other tunables changed
    /// (detail `cputune` for pins); or `lost` (no domain) after the connection to libvirtd
    /// was reopened.
    pub kind: &'static str,
    /// libvirt's detail for the kind, e.g. `booted`, `destroyed`, `shutdown`.
    pub detail: &'static str,
    pub unix_ms: u64,
}

impl DomainEvent {
    /// The connection to libvirtd was reopened: events while it was down are missing.
    pub fn reconnected() -> Self {
        DomainEvent {
            uuid: String::new(),
            name: String::new(),
            kind: "lost",
            detail: "libvirt reconnected",
            unix_ms: now_ms(),
        }
    }
}

/// libvirt's lifecycle event and detail numbers as words.
pub fn describe(event: i32, detail: i32) -> (&'static str, &'static str) {
    let pick = |names: &[&'static str]| {
        usize::try_from(detail)
            .ok()
            .and_then(|d| names.get(d).copied())
            .unwrap_or("unknown")
    };
    match event {
        0 => (
            "defined",
            pick(&["added", "updated", "renamed", "from_snapshot"]),
        ),
        1 => ("undefined", pick(&["removed", "renamed"])),
        2 => (
            "started",
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
            "suspended",
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
            "resumed",
            pick(&[
                "unpaused",
                "migrated",
                "from_snapshot",
                "postcopy",
                "postcopy_failed",
            ]),
        ),
        5 => (
            "stopped",
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
        6 => ("shutdown", pick(&["finished", "guest", "host"])),
        7 => ("pmsuspended", pick(&["memory", "disk"])),
        8 => ("crashed", pick(&["panicked", "crashloaded"])),
        _ => ("unknown", "unknown"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A domain's UUID and name ("" where libvirt cannot say).
///
/// # Safety
/// `dom` is a live domain pointer (one libvirt hands a callback or a stats record).
pub(crate) unsafe fn identity(dom: sys::virDomainPtr) -> (String, String) {
    let mut buf = [0 as c_char; 64];
    // SAFETY: the buffer holds VIR_UUID_STRING_BUFLEN (37) bytes; libvirt NUL-terminates.
    let uuid = if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } == 0 {
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
    let (uuid, name) = unsafe { identity(dom) };
    let (kind, detail) = describe(event, detail);
    let _ = tx.send(DomainEvent {
        uuid,
        name,
        kind,
        detail,
        unix_ms: now_ms(),
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
    let (uuid, name) = unsafe { identity(dom) };
    let _ = tx.send(DomainEvent {
        uuid,
        name,
        kind: "rebooted",
        detail: "reset",
        unix_ms: now_ms(),
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
    let (uuid, name) = unsafe { identity(dom) };
    let pins = (0..nparams.max(0) as usize).any(|i| {
        // SAFETY: libvirt passes `nparams` parameters with NUL-terminated field names.
        let field = unsafe { CStr::from_ptr((*params.add(i)).field.as_ptr()) };
        field.to_bytes().starts_with(b"cputune.")
    });
    let _ = tx.send(DomainEvent {
        uuid,
        name,
        kind: "tuned",
        detail: if pins { "cputune" } else { "other" },
        unix_ms: now_ms(),
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
        assert_eq!(describe(2, 0), ("started", "booted"));
        assert_eq!(describe(5, 1), ("stopped", "destroyed"));
        assert_eq!(describe(5, 0), ("stopped", "shutdown"));
        assert_eq!(describe(1, 0), ("undefined", "removed"));
        assert_eq!(describe(5, 99), ("stopped", "unknown"));
        assert_eq!(describe(42, 0), ("unknown", "unknown"));
    }
}
