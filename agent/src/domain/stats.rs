//! Guest statistics in one bulk call (`virConnectGetAllDomainStats`) and the pins libvirt
//! holds for a running domain. The `virt` crate wraps neither, so these are thin FFI edges that
//! copy everything out of libvirt's memory before freeing it. Every call blocks.

use std::ffi::{CStr, c_int, c_uint};

use virt::sys;

use super::connection::Libvirt;
use super::guests::DomainError;

/// A typed parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl Param {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Param::Uint(v) => Some(*v),
            Param::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Param::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// One domain's record of a bulk stats call.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainStats {
    pub uuid: String,
    pub name: String,
    pub params: Vec<(String, Param)>,
}

/// Copies the typed parameters at `params` out of libvirt's memory.
///
/// # Safety
/// `params` points to `n` initialised parameters (as libvirt hands them out).
pub(super) unsafe fn copy_params(
    params: *const sys::virTypedParameter,
    n: c_int,
) -> Vec<(String, Param)> {
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for i in 0..n.max(0) as usize {
        // SAFETY: i < n, as the caller promises.
        let p = unsafe { &*params.add(i) };
        // SAFETY: libvirt NUL-terminates the field name within its 80 bytes.
        let field = unsafe { CStr::from_ptr(p.field.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: the union member read is the one `type_` names.
        let value = unsafe {
            match p.type_ as u32 {
                sys::VIR_TYPED_PARAM_INT => Param::Int(p.value.i.into()),
                sys::VIR_TYPED_PARAM_UINT => Param::Uint(p.value.ui.into()),
                sys::VIR_TYPED_PARAM_LLONG => Param::Int(p.value.l),
                sys::VIR_TYPED_PARAM_ULLONG => Param::Uint(p.value.ul),
                sys::VIR_TYPED_PARAM_DOUBLE => Param::Float(p.value.d),
                sys::VIR_TYPED_PARAM_BOOLEAN => Param::Bool(p.value.b != 0),
                sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                    Param::Text(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                }
                _ => continue,
            }
        };
        out.push((field, value));
    }
    out
}

/// libvirt's CPU bitmap as a list of CPUs.
pub fn cpus_of_map(map: &[u8]) -> Vec<u32> {
    map.iter()
        .enumerate()
        .flat_map(|(byte, bits)| {
            (0..8u32)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| byte as u32 * 8 + b)
        })
        .collect()
}

/// A connection of its own for bulk stats calls. A call stuck on a QEMU that does not answer
/// also holds up other calls on its connection, so it must not share the lifecycle's; a
/// connection with a stuck call is left to it and a new one opened.
pub struct StatsConnection {
    uri: String,
    conn: std::sync::Mutex<Option<virt::connect::Connect>>,
}

impl StatsConnection {
    pub fn new(uri: &str) -> StatsConnection {
        StatsConnection {
            uri: uri.to_string(),
            conn: std::sync::Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<virt::connect::Connect>> {
        hvagent_core::sync::lock(&self.conn)
    }

    /// The connection, opened if there is none (or it died). The open is bounded in time and
    /// made without the lock held, so `abandon` never waits for it.
    pub fn get(&self) -> Result<virt::connect::Connect, DomainError> {
        if let Some(c) = self.lock().as_ref()
            && c.is_alive().unwrap_or(false)
        {
            return Ok(c.clone());
        }
        let c =
            super::connection::open_within(&self.uri).map_err(|e| DomainError::Unreachable(e.0))?;
        let old = self.lock().replace(c.clone());
        close_elsewhere(old);
        Ok(c)
    }

    /// Leaves the current connection to a call that did not return.
    pub fn abandon(&self) {
        let old = self.lock().take();
        close_elsewhere(old);
    }
}

/// Drops a connection on a thread of its own: closing the last reference is a call to
/// libvirtd, which may not answer, and callers run on the async runtime.
fn close_elsewhere(conn: Option<virt::connect::Connect>) {
    if let Some(conn) = conn {
        let spawned = std::thread::Builder::new()
            .name("libvirt-close".into())
            .spawn(move || drop(conn));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to close a libvirt connection");
        }
    }
}

/// State, CPU, balloon, vCPU, interface and block figures of every domain, with NOWAIT: a
/// domain whose QEMU is busy in another job (e.g. a stats call stuck on a stopped QEMU) comes
/// back without the figures that need its monitor instead of holding the call.
pub fn all_domain_stats(conn: &virt::connect::Connect) -> Result<Vec<DomainStats>, DomainError> {
    let groups = sys::VIR_DOMAIN_STATS_STATE
        | sys::VIR_DOMAIN_STATS_CPU_TOTAL
        | sys::VIR_DOMAIN_STATS_BALLOON
        | sys::VIR_DOMAIN_STATS_VCPU
        | sys::VIR_DOMAIN_STATS_INTERFACE
        | sys::VIR_DOMAIN_STATS_BLOCK;
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: a live connection and an out pointer libvirt fills with an owned list.
    let n = unsafe {
        sys::virConnectGetAllDomainStats(
            conn.as_ptr(),
            groups as c_uint,
            &mut records,
            sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT as c_uint,
        )
    };
    if n < 0 {
        return Err(DomainError::Libvirt(
            virt::error::Error::last_error().message().to_string(),
        ));
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: libvirt returned `n` records, each with a domain and its parameters.
        let record = unsafe { &**records.add(i) };
        // SAFETY: the record's domain lives until the list is freed below.
        let (uuid, name) = unsafe { super::events::identity(record.dom) };
        if uuid.is_empty() {
            continue;
        }
        out.push(DomainStats {
            uuid,
            name,
            // SAFETY: the record's own parameter array and count.
            params: unsafe { copy_params(record.params, record.nparams) },
        });
    }
    // SAFETY: the list libvirt allocated above, freed once, nothing borrowed from it kept.
    unsafe { sys::virDomainStatsRecordListFree(records) };
    Ok(out)
}

impl Libvirt {
    /// The CPUs libvirt has each vCPU and the emulator pinned to on the running domain
    /// `uuid`; `host_cpus` is one more than the highest host CPU.
    pub fn live_pins(
        &self,
        uuid: &str,
        vcpus: usize,
        host_cpus: u32,
    ) -> Result<(Vec<Vec<u32>>, Vec<u32>), DomainError> {
        let conn = self.conn().map_err(|e| DomainError::Unreachable(e.0))?;
        let dom = conn
            .lookup_domain_by_uuid_string(uuid)
            .map_err(|_| DomainError::NotFound(uuid.to_string()))?;
        let maplen = host_cpus.div_ceil(8).max(1) as usize;
        let mut maps = vec![0u8; maplen * vcpus.max(1)];
        let flags = sys::VIR_DOMAIN_AFFECT_LIVE as c_uint;
        // SAFETY: `maps` holds `vcpus` maps of `maplen` bytes each.
        let got = unsafe {
            sys::virDomainGetVcpuPinInfo(
                dom.as_ptr(),
                vcpus as c_int,
                maps.as_mut_ptr(),
                maplen as c_int,
                flags,
            )
        };
        if got < 0 {
            return Err(DomainError::Libvirt(
                virt::error::Error::last_error().message().to_string(),
            ));
        }
        let vcpu_pins = maps
            .chunks(maplen)
            .take((got as usize).min(vcpus))
            .map(cpus_of_map)
            .collect();
        let mut emulator = vec![0u8; maplen];
        // SAFETY: one map of `maplen` bytes.
        let rc = unsafe {
            sys::virDomainGetEmulatorPinInfo(
                dom.as_ptr(),
                emulator.as_mut_ptr(),
                maplen as c_int,
                flags,
            )
        };
        if rc < 0 {
            return Err(DomainError::Libvirt(
                virt::error::Error::last_error().message().to_string(),
            ));
        }
        Ok((vcpu_pins, cpus_of_map(&emulator)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_char;

    #[test]
    fn maps_to_cpus() {
        assert_eq!(cpus_of_map(&[0b101, 0b10]), vec![0, 2, 9]);
        assert!(cpus_of_map(&[0, 0]).is_empty());
    }

    #[test]
    fn params_copy_out() {
        // SAFETY: virTypedParameter is plain C data; all zeroes is a valid (empty) value.
        let mut p: [sys::virTypedParameter; 3] = unsafe { std::mem::zeroed() };
        let text = std::ffi::CString::new("vda").unwrap();
        for (slot, (name, ty)) in p.iter_mut().zip([
            ("state.state", sys::VIR_TYPED_PARAM_INT),
            ("cpu.time", sys::VIR_TYPED_PARAM_ULLONG),
            ("block.0.name", sys::VIR_TYPED_PARAM_STRING),
        ]) {
            for (d, s) in slot.field.iter_mut().zip(name.bytes()) {
                *d = s as c_char;
            }
            slot.type_ = ty as c_int;
        }
        p[0].value.i = 1;
        p[1].value.ul = 1 << 40;
        p[2].value.s = text.as_ptr() as *mut c_char;
        // SAFETY: three initialised parameters, the string one pointing at `text`, alive here.
        let got = unsafe { copy_params(p.as_ptr(), 3) };
        assert_eq!(
            got,
            vec![
                ("state.state".into(), Param::Int(1)),
                ("cpu.time".into(), Param::Uint(1 << 40)),
                ("block.0.name".into(), Param::Text("vda".into())),
            ]
        );
    }
}
