//! Guest domains in libvirt: define, start, stop, reboot, undefine, state, and the agent's
//! domains with their intent. Every call blocks: callers run them on the blocking pool.

use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::sys;

use super::connection::Libvirt;
use super::xml::{Intent, IntentError, NAMESPACE, read_intent};

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
fn failed(e: virt::error::Error) -> DomainError {
    use virt::enumutil::Enum;
    use virt::error::{ErrorDomain, ErrorNumber};
    match (e.domain(), e.code()) {
        (Enum::Known(ErrorDomain::Rpc), _) | (_, Enum::Known(ErrorNumber::NoConnect)) => {
            DomainError::Unreachable(e.message().to_string())
        }
        _ => DomainError::Libvirt(e.message().to_string()),
    }
}

/// A domain as the lifecycle sees it.
#[derive(Debug, Clone)]
pub struct GuestDomain {
    pub uuid: String,
    pub name: String,
    pub state: &'static str,
    pub intent: Result<Intent, IntentError>,
}

pub fn state_name(state: &Enum<DomainState, sys::virDomainState>) -> &'static str {
    match state {
        Enum::Known(DomainState::NoState) => "no state",
        Enum::Known(DomainState::Running) => "running",
        Enum::Known(DomainState::Blocked) => "blocked",
        Enum::Known(DomainState::Paused) => "paused",
        Enum::Known(DomainState::Shutdown) => "shutting down",
        Enum::Known(DomainState::Shutoff) => "shut off",
        Enum::Known(DomainState::Crashed) => "crashed",
        Enum::Known(DomainState::PMSuspended) => "suspended",
        Enum::Unknown(_) => "unknown",
    }
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

impl Libvirt {
    fn domain(&self, uuid: &str) -> Result<Domain, DomainError> {
        let conn = self.conn().map_err(|e| DomainError::Unreachable(e.0))?;
        conn.lookup_domain_by_uuid_string(uuid).map_err(|e| {
            if e.code() == Enum::Known(virt::error::ErrorNumber::NoDomain) {
                DomainError::NotFound(uuid.to_string())
            } else {
                failed(e)
            }
        })
    }

    /// Defines (persistently) and starts the domain of `xml`.
    pub fn define_and_start(&self, xml: &str) -> Result<(), DomainError> {
        let conn = self.conn().map_err(|e| DomainError::Unreachable(e.0))?;
        let domain = conn.define_domain_xml(xml).map_err(failed)?;
        domain.create().map_err(failed)
    }

    pub fn start(&self, uuid: &str) -> Result<(), DomainError> {
        let d = self.domain(uuid)?;
        if d.is_active().map_err(failed)? {
            return Ok(());
        }
        d.create().map_err(failed)
    }

    /// ACPI power button.
    pub fn shutdown(&self, uuid: &str) -> Result<(), DomainError> {
        self.domain(uuid)?.shutdown().map_err(failed)
    }

    /// Pulls the plug; a domain that is not running is fine, also one that stops on its
    /// own between the check and the destroy.
    pub fn destroy(&self, uuid: &str) -> Result<(), DomainError> {
        let d = self.domain(uuid)?;
        if !d.is_active().map_err(failed)? {
            return Ok(());
        }
        match d.destroy() {
            Err(_) if !d.is_active().map_err(failed)? => Ok(()),
            other => other.map_err(failed),
        }
    }

    pub fn reboot(&self, uuid: &str, hard: bool) -> Result<(), DomainError> {
        let d = self.domain(uuid)?;
        if hard {
            d.reset().map_err(failed)
        } else {
            d.reboot(sys::VIR_DOMAIN_REBOOT_DEFAULT).map_err(failed)
        }
    }

    /// Destroys and undefines; a domain that does not exist is fine (`Ok(false)`).
    pub fn remove(&self, uuid: &str) -> Result<bool, DomainError> {
        let d = match self.domain(uuid) {
            Ok(d) => d,
            Err(DomainError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if d.is_active().map_err(failed)? {
            d.destroy().map_err(failed)?;
        }
        d.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM)
            .map_err(failed)?;
        Ok(true)
    }

    /// Re-pins vCPUs (and the emulator threads, when given) of a domain, live when it runs
    /// and in its definition for the next start.
    pub fn repin(
        &self,
        uuid: &str,
        vcpus: &[Vec<u32>],
        emulator: Option<&[u32]>,
    ) -> Result<(), DomainError> {
        let d = self.domain(uuid)?;
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

    pub fn state(&self, uuid: &str) -> Result<&'static str, DomainError> {
        let info = self.domain(uuid)?.info().map_err(failed)?;
        Ok(state_name(&info.state))
    }

    /// Every persistent domain carrying the agent's metadata, and what it says.
    pub fn guests(&self) -> Result<Vec<GuestDomain>, DomainError> {
        let conn = self.conn().map_err(|e| DomainError::Unreachable(e.0))?;
        let domains = conn
            .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
            .map_err(failed)?;
        let mut out = Vec::new();
        for d in domains {
            let metadata = d.metadata(sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(NAMESPACE), 0);
            let Ok(metadata) = metadata else {
                // Not ours: no hvagent metadata element.
                continue;
            };
            out.push(GuestDomain {
                uuid: d.uuid_string().map_err(failed)?,
                name: d.name().map_err(failed)?,
                state: d.info().map(|i| state_name(&i.state)).unwrap_or("unknown"),
                intent: read_intent(&metadata),
            });
        }
        out.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        Ok(out)
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
