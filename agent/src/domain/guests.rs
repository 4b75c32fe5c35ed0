//! Guest domains in libvirt: `Libvirt` as the lifecycle's `Hypervisor` (define, start, stop,
//! reboot, undefine, re-pin, state, and the agent's domains with their intent). Every call
//! blocks: callers run them on the blocking pool.

use std::ffi::c_int;
use std::time::Duration;

use tokio::sync::broadcast;
use virt::domain::Domain;
use virt::enumutil::Enum;
use virt::sys;

use super::connection::Libvirt;
use super::events::{DomainEvent, Progress};
use super::guest_agent::{AgentError, GuestReport};
use super::hypervisor::{DomainState, GuestDomain, Hypervisor, MigrationTarget};
use super::stats::{Param, copy_params};
use super::xml::{Intent, NAMESPACE, PREFIX, intent_element, read_intent};

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("no domain with UUID {0}")]
    NotFound(String),
    /// libvirt could not be reached: the caller answers UNAVAILABLE.
    #[error("libvirt unreachable: {0}")]
    Unreachable(String),
    #[error("libvirt: {0}")]
    Libvirt(String),
}

/// A libvirt error: the connection's own failures (RPC layer: a closed connection, a keepalive
/// timeout; no connection) mean libvirt is unreachable, not that it refused the call.
pub(super) fn failed(e: virt::error::Error) -> DomainError {
    use virt::enumutil::Enum;
    use virt::error::{ErrorDomain, ErrorNumber};
    match (e.domain(), e.code()) {
        (Enum::Known(ErrorDomain::Rpc), _) | (_, Enum::Known(ErrorNumber::NoConnect)) => {
            DomainError::Unreachable(e.message().to_string())
        }
        _ => DomainError::Libvirt(e.message().to_string()),
    }
}

/// Whether a failed metadata read means "not one of ours" (the domain has no hvagent element)
/// or "gone" (undefined between the listing and the read), rather than "not known".
fn foreign_or_gone(e: &virt::error::Error) -> bool {
    use virt::error::ErrorNumber;
    matches!(
        e.code(),
        Enum::Known(ErrorNumber::NoDomainMetadata | ErrorNumber::NoDomain)
    )
}

fn state_of(state: &Enum<virt::domain::DomainState, sys::virDomainState>) -> DomainState {
    use virt::domain::DomainState as Libvirt;
    match state {
        Enum::Known(Libvirt::NoState) => DomainState::NoState,
        Enum::Known(Libvirt::Running) => DomainState::Running,
        Enum::Known(Libvirt::Blocked) => DomainState::Blocked,
        Enum::Known(Libvirt::Paused) => DomainState::Paused,
        Enum::Known(Libvirt::Shutdown) => DomainState::ShuttingDown,
        Enum::Known(Libvirt::Shutoff) => DomainState::ShutOff,
        Enum::Known(Libvirt::Crashed) => DomainState::Crashed,
        Enum::Known(Libvirt::PMSuspended) => DomainState::Suspended,
        Enum::Unknown(_) => DomainState::Unknown,
    }
}

/// Domain `d`'s job statistics (`flags`: 0 for the job under way, `COMPLETED` for the last
/// one): the job's type and its fields. Not the virt crate's `job_stats`, which makes a Vec
/// of the array libvirt answers, and that is a null pointer for a job without statistics (one
/// that just ended): undefined behaviour, an abort in a debug build.
fn job_stats(d: &Domain, flags: u32) -> Result<(i32, Vec<(String, Param)>), DomainError> {
    let (mut kind, mut n): (c_int, c_int) = (0, 0);
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    // SAFETY: a live domain handle and out pointers that libvirt fills with an array it
    // allocates (freed below), or leaves null with no parameters.
    let ret =
        unsafe { sys::virDomainGetJobStats(d.as_ptr(), &mut kind, &mut params, &mut n, flags) };
    if ret < 0 {
        return Err(failed(virt::error::Error::last_error()));
    }
    // SAFETY: libvirt returned `n` initialised parameters at `params` (none when it is null).
    let copied = unsafe { copy_params(params, n) };
    // SAFETY: the array libvirt allocated above (null is fine), freed once; nothing borrowed
    // from it is kept.
    unsafe { sys::virTypedParamsFree(params, n) };
    Ok((kind, copied))
}

/// The unsigned statistic `name` of a job's fields.
fn stat(stats: &[(String, Param)], name: &str) -> Option<u64> {
    stats
        .iter()
        .find(|(field, _)| field == name)
        .and_then(|(_, value)| value.as_u64())
}

/// libvirt's CPU bitmap: bit `n % 8` of byte `n / 8` for CPU `n`.
fn cpumap(cpus: &[u32]) -> Vec<u8> {
    let len = cpus.iter().max().map_or(1, |m| *m as usize / 8 + 1);
    let mut map = vec![0u8; len];
    for &c in cpus {
        map[c as usize / 8] |= 1 << (c % 8);
    }
    map
}

/// A device change on the definition, and on the running domain when it runs. A domain that
/// starts or stops between the look and the call fails the call with libvirt's complaint
/// about its state: looked at and tried once more.
fn device_call(
    d: &Domain,
    call: impl Fn(u32) -> Result<(), virt::error::Error>,
) -> Result<(), DomainError> {
    let flags = |active: bool| {
        if active {
            sys::VIR_DOMAIN_AFFECT_CONFIG | sys::VIR_DOMAIN_AFFECT_LIVE
        } else {
            sys::VIR_DOMAIN_AFFECT_CONFIG
        }
    };
    let active = d.is_active().map_err(failed)?;
    match call(flags(active)) {
        Ok(_) => Ok(()),
        Err(e) if d.is_active().map_err(failed)? != active => {
            tracing::debug!(error = %e, "device change: the domain changed state meanwhile; retried");
            call(flags(!active)).map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

/// Domain `uuid` on `conn`; `NotFound` when libvirt has no such domain.
fn lookup(conn: &virt::connect::Connect, uuid: &str) -> Result<Domain, DomainError> {
    conn.lookup_domain_by_uuid_string(uuid).map_err(|e| {
        if e.code() == Enum::Known(virt::error::ErrorNumber::NoDomain) {
            DomainError::NotFound(uuid.to_string())
        } else {
            failed(e)
        }
    })
}

impl Libvirt {
    pub(super) fn domain(&self, uuid: &str) -> Result<Domain, DomainError> {
        lookup(
            &self.conn().map_err(|e| DomainError::Unreachable(e.0))?,
            uuid,
        )
    }

    /// Domain `uuid` on a connection of its own, closed when the handle is dropped: for calls
    /// that wait on the guest's QEMU (its monitor, its guest agent, a device it must release,
    /// a migration, its exit) or on the domain's job, which such a call holds (live pins and
    /// metadata). libvirt's client has one thread at a time do a connection's I/O for
    /// every call on it, and one such call held by a QEMU that does not answer delayed every
    /// other call on the shared connection by seconds (tests/tests/starvation.rs: ListVms and
    /// GetVm beside stops of a frozen guest took 2-3 s, 5-12 ms on their own connection).
    /// Opening one costs a few milliseconds.
    pub(super) fn waiting_domain(&self, uuid: &str) -> Result<Domain, DomainError> {
        lookup(
            &super::connection::open_within(self.uri())
                .map_err(|e| DomainError::Unreachable(e.0))?,
            uuid,
        )
    }
}

impl Hypervisor for Libvirt {
    fn define_and_start(&self, xml: &str) -> Result<(), DomainError> {
        let conn = self.conn().map_err(|e| DomainError::Unreachable(e.0))?;
        let domain = conn.define_domain_xml(xml).map_err(failed)?;
        domain.create().map_err(failed)
    }

    fn start(&self, uuid: &str) -> Result<(), DomainError> {
        let d = self.domain(uuid)?;
        if d.is_active().map_err(failed)? {
            return Ok(());
        }
        d.create().map_err(failed)
    }

    fn shutdown(&self, uuid: &str) -> Result<(), DomainError> {
        self.waiting_domain(uuid)?.shutdown().map_err(failed)
    }

    fn destroy(&self, uuid: &str) -> Result<(), DomainError> {
        // libvirt waits up to 10 s for a QEMU that ignores SIGTERM (frozen) before SIGKILL.
        let d = self.waiting_domain(uuid)?;
        if !d.is_active().map_err(failed)? {
            return Ok(());
        }
        match d.destroy() {
            Err(_) if !d.is_active().map_err(failed)? => Ok(()),
            other => other.map_err(failed),
        }
    }

    fn reboot(&self, uuid: &str, hard: bool) -> Result<(), DomainError> {
        let d = self.waiting_domain(uuid)?;
        if hard {
            d.reset().map_err(failed)
        } else {
            d.reboot(sys::VIR_DOMAIN_REBOOT_DEFAULT).map_err(failed)
        }
    }

    fn suspend(&self, uuid: &str) -> Result<(), DomainError> {
        self.waiting_domain(uuid)?.suspend().map_err(failed)
    }

    fn resume(&self, uuid: &str) -> Result<(), DomainError> {
        self.waiting_domain(uuid)?.resume().map_err(failed)
    }

    fn remove(&self, uuid: &str) -> Result<bool, DomainError> {
        let d = match self.waiting_domain(uuid) {
            Ok(d) => d,
            Err(DomainError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if d.is_active().map_err(failed)? {
            d.destroy().map_err(failed)?;
        }
        // With the definition go the UEFI variable store and the TPM's state directory
        // (/var/lib/libvirt/swtpm/<uuid>/); libvirt keeps both otherwise. swtpm's log stays,
        // as QEMU's does (docs/guests.md: the agent may not write libvirt's log directories).
        d.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM | sys::VIR_DOMAIN_UNDEFINE_TPM)
            .map_err(failed)?;
        Ok(true)
    }

    fn repin(
        &self,
        uuid: &str,
        vcpus: &[Vec<u32>],
        emulator: Option<&[u32]>,
    ) -> Result<(), DomainError> {
        // A live change waits for the domain's job, which a call stuck on its QEMU holds.
        let d = self.waiting_domain(uuid)?;
        let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
        if d.is_active().map_err(failed)? {
            flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        for (vcpu, cpus) in vcpus.iter().enumerate() {
            d.pin_vcpu_flags(vcpu as u32, &cpumap(cpus), flags)
                .map_err(failed)?;
        }
        if let Some(cpus) = emulator {
            d.pin_emulator(&cpumap(cpus), flags).map_err(failed)?;
        }
        Ok(())
    }

    fn state(&self, uuid: &str) -> Result<DomainState, DomainError> {
        let (state, _) = self.domain(uuid)?.state().map_err(failed)?;
        Ok(state_of(&state))
    }

    fn define(&self, xml: &str) -> Result<(), DomainError> {
        let conn = self.conn().map_err(|e| DomainError::Unreachable(e.0))?;
        conn.define_domain_xml(xml).map_err(failed).map(drop)
    }

    fn inactive_xml(&self, uuid: &str) -> Result<String, DomainError> {
        self.domain(uuid)?
            .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(failed)
    }

    fn set_intent(&self, uuid: &str, intent: &Intent) -> Result<(), DomainError> {
        // As repin: a live metadata change waits for the domain's job.
        let d = self.waiting_domain(uuid)?;
        let element = intent_element(intent).map_err(|e| DomainError::Libvirt(e.to_string()))?;
        let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
        if d.is_active().map_err(failed)? {
            flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        d.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(&element),
            Some(PREFIX),
            Some(NAMESPACE),
            flags,
        )
        .map_err(failed)
    }

    fn live_xml(&self, uuid: &str) -> Result<String, DomainError> {
        self.domain(uuid)?.xml_desc(0).map_err(failed)
    }

    fn migratable_xml(&self, uuid: &str) -> Result<String, DomainError> {
        self.domain(uuid)?
            .xml_desc(sys::VIR_DOMAIN_XML_MIGRATABLE)
            .map_err(failed)
    }

    fn migrate(&self, uuid: &str, target: &MigrationTarget) -> Result<(), DomainError> {
        let d = self.waiting_domain(uuid)?;
        let params = virt::domain::MigrateParameters {
            dest_xml: Some(target.dest_xml.clone()),
            uri: Some(target.migrate_uri.clone()),
            migrate_disks: target.disks.clone(),
            ..Default::default()
        };
        // Incremental copy: the target made each writable disk as an overlay on its own copy
        // of the image, so only what the guest wrote moves. PERSIST_DEST with UNDEFINE_SOURCE
        // leaves the definition on the target alone, where the target agent owns it.
        let flags = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PEER2PEER
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE
            | sys::VIR_MIGRATE_NON_SHARED_INC;
        d.migrate_to_uri3(Some(&target.libvirt_uri), params, flags)
            .map_err(failed)
    }

    fn migration_progress(&self, uuid: &str) -> Result<Option<Progress>, DomainError> {
        // On a connection of its own: libvirt asks the migrating QEMU (query-migrate).
        let (kind, stats) = job_stats(&self.waiting_domain(uuid)?, 0)?;
        if kind != sys::VIR_DOMAIN_JOB_UNBOUNDED as i32 {
            return Ok(None);
        }
        let field = |name: &str| stat(&stats, name).unwrap_or(0);
        Ok(Some(Progress {
            processed_bytes: field("data_processed"),
            remaining_bytes: field("data_remaining"),
            total_bytes: field("data_total"),
        }))
    }

    fn migration_downtime(&self, uuid: &str) -> Result<Option<Duration>, DomainError> {
        let (_, stats) = job_stats(&self.domain(uuid)?, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)?;
        Ok(stat(&stats, "downtime").map(Duration::from_millis))
    }

    fn attach_device(&self, uuid: &str, xml: &str) -> Result<(), DomainError> {
        let d = self.waiting_domain(uuid)?;
        device_call(&d, |flags| d.attach_device_flags(xml, flags))
    }

    fn detach_device(&self, uuid: &str, xml: &str) -> Result<(), DomainError> {
        let d = self.waiting_domain(uuid)?;
        device_call(&d, |flags| d.detach_device_flags(xml, flags))
    }

    fn detach_live(&self, uuid: &str, xml: &str) -> Result<(), DomainError> {
        self.waiting_domain(uuid)?
            .detach_device_flags(xml, sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(failed)
    }

    fn guests(&self) -> Result<Vec<GuestDomain>, DomainError> {
        let conn = self.conn().map_err(|e| DomainError::Unreachable(e.0))?;
        let domains = conn
            .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
            .map_err(failed)?;
        let mut out = Vec::new();
        for d in domains {
            let metadata =
                match d.metadata(sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(NAMESPACE), 0) {
                    Ok(m) => m,
                    // Not ours (no hvagent element), or undefined since the listing.
                    Err(e) if foreign_or_gone(&e) => continue,
                    // Anything else (a connection that broke mid-listing, a timeout) leaves the
                    // listing incomplete: a guest missing from it would look like one that does
                    // not exist, and its files, claim and taps like orphans.
                    Err(e) => return Err(failed(e)),
                };
            out.push(GuestDomain {
                uuid: d.uuid_string().map_err(failed)?,
                name: d.name().map_err(failed)?,
                // GetState, not GetInfo: GetInfo may ask QEMU for the balloon and so wait
                // for a guest's running job (a stop stuck on a frozen QEMU holds one), which
                // would stall every listing.
                state: d
                    .state()
                    .map_or(DomainState::Unknown, |(s, _)| state_of(&s)),
                intent: read_intent(&metadata),
            });
        }
        out.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        Ok(out)
    }

    fn subscribe(&self) -> broadcast::Receiver<DomainEvent> {
        Libvirt::subscribe(self)
    }

    fn publish(&self, event: DomainEvent) {
        Libvirt::publish(self, event)
    }

    fn console(
        &self,
        uuid: &str,
        force: bool,
    ) -> Result<Box<dyn super::console::ConsoleStream>, DomainError> {
        self.open_console(uuid, force)
    }

    fn guest_info(&self, uuid: &str) -> Result<GuestReport, AgentError> {
        self.agent_guest_info(uuid)
    }

    fn fs_freeze(&self, uuid: &str) -> Result<u32, AgentError> {
        self.agent_freeze(uuid)
    }

    fn fs_thaw(&self, uuid: &str) -> Result<(), AgentError> {
        self.agent_thaw(uuid)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpumaps() {
        assert_eq!(super::cpumap(&[0, 1, 9]), vec![0b11, 0b10]);
        assert_eq!(super::cpumap(&[]), vec![0]);
    }
}
