//! The qemu guest agent through libvirt: what the guest reports (`virDomainGetGuestInfo`) and
//! the freeze and thaw of its file systems (`virDomainFSFreeze` / `virDomainFSThaw`). The
//! `virt` crate wraps none of them, so these are thin FFI edges that copy libvirt's answer out
//! before freeing it. Every call blocks.
//!
//! Each call first sets the domain's agent response timeout to [`AGENT_TIMEOUT_SECS`]: libvirt
//! holds an agent job on the domain while it waits, and its default wait (also the one `virsh`
//! sets for the domain) would let a guest whose agent hangs hold that job for far longer.

use std::collections::BTreeMap;
use std::ffi::{c_int, c_uint};

use virt::domain::Domain;
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::sys;

use super::connection::Libvirt;
use super::guests::DomainError;
use super::stats::{Param, copy_params};

/// How long libvirt waits for one answer of the guest agent.
pub const AGENT_TIMEOUT_SECS: c_int = 5;

/// Why the guest agent gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The domain's definition has no `org.qemu.guest_agent.0` channel.
    #[error(
        "the guest has no guest agent channel (defined before the agent added one: recreate it to get one)"
    )]
    NoChannel,
    /// The channel is there, but nothing in the guest answers on it (or not in time).
    #[error("the guest agent does not answer (is qemu-guest-agent running in the guest?): {0}")]
    NotAnswering(String),
    /// libvirt refused because the domain is not running.
    #[error("the guest is not running: {0}")]
    NotRunning(String),
    #[error(transparent)]
    Domain(#[from] DomainError),
}

impl AgentError {
    /// Whether the guest may have carried out the command though the call failed: an answer
    /// lost or late (a timeout) or any other failure may follow the command's effect. A guest
    /// with no channel, not running, or whose agent is not connected (libvirt sent nothing:
    /// "QEMU guest agent is not connected") did nothing.
    pub fn may_have_acted(&self) -> bool {
        match self {
            AgentError::NoChannel | AgentError::NotRunning(_) => false,
            AgentError::NotAnswering(m) => !m.contains("agent is not connected"),
            AgentError::Domain(_) => true,
        }
    }
}

/// What the guest reported about its OS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestOs {
    pub id: String,
    pub name: String,
    pub version: String,
    pub kernel_release: String,
}

/// A network interface as the guest sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestInterface {
    pub name: String,
    pub mac: String,
    /// `ADDRESS/PREFIX`, as the guest listed them.
    pub addresses: Vec<String>,
}

/// A mounted file system as the guest sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestFilesystem {
    pub mountpoint: String,
    pub fstype: String,
    /// Absent when the guest agent does not report sizes (older agents).
    pub total_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
}

/// One answer of the guest agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    pub os: GuestOs,
    pub hostname: String,
    pub interfaces: Vec<GuestInterface>,
    pub filesystems: Vec<GuestFilesystem>,
}

/// libvirt's guest-info parameters (`os.id`, `if.0.addr.1.prefix`, ...) as a report. Keys it
/// does not know are skipped; a missing key leaves its field empty (an agent that lacks a
/// command is not an error: libvirt leaves its group out).
pub fn report_of(params: &[(String, Param)]) -> GuestReport {
    let map: BTreeMap<&str, &Param> = params.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let text = |key: &str| {
        map.get(key)
            .and_then(|p| p.as_text())
            .unwrap_or_default()
            .to_string()
    };
    let number = |key: &str| map.get(key).and_then(|p| p.as_u64());
    let count = |key: &str| number(key).unwrap_or(0);
    let interfaces = (0..count("if.count"))
        .map(|i| GuestInterface {
            name: text(&format!("if.{i}.name")),
            mac: text(&format!("if.{i}.hwaddr")).to_ascii_lowercase(),
            addresses: (0..count(&format!("if.{i}.addr.count")))
                .map(|a| {
                    let addr = text(&format!("if.{i}.addr.{a}.addr"));
                    match number(&format!("if.{i}.addr.{a}.prefix")) {
                        Some(prefix) => format!("{addr}/{prefix}"),
                        None => addr,
                    }
                })
                .collect(),
        })
        .collect();
    let filesystems = (0..count("fs.count"))
        .map(|i| GuestFilesystem {
            mountpoint: text(&format!("fs.{i}.mountpoint")),
            fstype: text(&format!("fs.{i}.fstype")),
            total_bytes: number(&format!("fs.{i}.total-bytes")),
            used_bytes: number(&format!("fs.{i}.used-bytes")),
        })
        .collect();
    GuestReport {
        os: GuestOs {
            id: text("os.id"),
            name: text("os.name"),
            version: text("os.version-id"),
            kernel_release: text("os.kernel-release"),
        },
        hostname: text("hostname"),
        interfaces,
        filesystems,
    }
}

/// libvirt's last error, as the guest agent's callers need to tell it apart: no channel
/// ("QEMU guest agent is not configured"), no answer ("not connected", a timeout), not
/// running, or anything else.
fn agent_error(e: virt::error::Error) -> AgentError {
    match e.code() {
        Enum::Known(ErrorNumber::ArgumentUnsupported) => AgentError::NoChannel,
        Enum::Known(ErrorNumber::AgentUnresponsive | ErrorNumber::AgentUnsynced) => {
            AgentError::NotAnswering(e.message().to_string())
        }
        Enum::Known(ErrorNumber::OperationInvalid) => {
            AgentError::NotRunning(e.message().to_string())
        }
        _ => AgentError::Domain(super::guests::failed(e)),
    }
}

impl Libvirt {
    /// The domain `uuid`, its agent response timeout set (see the module's comment).
    fn agent_domain(&self, uuid: &str) -> Result<Domain, AgentError> {
        let d = self.waiting_domain(uuid)?;
        // SAFETY: a live domain handle; the call takes no pointers.
        let set =
            unsafe { sys::virDomainAgentSetResponseTimeout(d.as_ptr(), AGENT_TIMEOUT_SECS, 0) };
        if set < 0 {
            return Err(agent_error(virt::error::Error::last_error()));
        }
        Ok(d)
    }

    /// Asks the guest agent of running domain `uuid` for its OS, host name, interfaces and
    /// file systems, in one libvirt call.
    pub(super) fn agent_guest_info(&self, uuid: &str) -> Result<GuestReport, AgentError> {
        let d = self.agent_domain(uuid)?;
        let types = sys::VIR_DOMAIN_GUEST_INFO_OS
            | sys::VIR_DOMAIN_GUEST_INFO_HOSTNAME
            | sys::VIR_DOMAIN_GUEST_INFO_FILESYSTEM
            | sys::VIR_DOMAIN_GUEST_INFO_INTERFACES;
        let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: a live domain handle and out pointers that libvirt fills with an array it
        // allocates (freed below).
        let ret = unsafe {
            sys::virDomainGetGuestInfo(d.as_ptr(), types as c_uint, &mut params, &mut n, 0)
        };
        if ret < 0 {
            return Err(agent_error(virt::error::Error::last_error()));
        }
        // SAFETY: libvirt returned `n` initialised parameters at `params`.
        let copied = unsafe { copy_params(params, n) };
        // SAFETY: the array libvirt allocated above, freed once; nothing borrowed from it kept.
        unsafe { sys::virTypedParamsFree(params, n) };
        Ok(report_of(&copied))
    }

    /// Freezes every file system of the guest that its agent can freeze; the count frozen.
    pub(super) fn agent_freeze(&self, uuid: &str) -> Result<u32, AgentError> {
        let d = self.agent_domain(uuid)?;
        // SAFETY: a live domain handle; no mount point list (NULL, 0): all of them.
        let n = unsafe { sys::virDomainFSFreeze(d.as_ptr(), std::ptr::null_mut(), 0, 0) };
        if n < 0 {
            return Err(agent_error(virt::error::Error::last_error()));
        }
        Ok(n as u32)
    }

    /// Thaws what a freeze froze.
    pub(super) fn agent_thaw(&self, uuid: &str) -> Result<(), AgentError> {
        let d = self.agent_domain(uuid)?;
        // SAFETY: as for the freeze.
        let n = unsafe { sys::virDomainFSThaw(d.as_ptr(), std::ptr::null_mut(), 0, 0) };
        if n < 0 {
            return Err(agent_error(virt::error::Error::last_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(k: &str, v: &str) -> (String, Param) {
        (k.to_string(), Param::Text(v.to_string()))
    }

    fn uint(k: &str, v: u64) -> (String, Param) {
        (k.to_string(), Param::Uint(v))
    }

    #[test]
    fn libvirts_parameters_become_the_report() {
        // As libvirt 9.0 answered for the test guest (plus an os-release and a file system).
        let params = vec![
            text("os.id", "hvagent-testguest"),
            text("os.name", "hvagent test guest"),
            text("os.version-id", "1"),
            text("os.kernel-release", "6.1.0-57-cloud-amd64"),
            text("os.machine", "x86_64"),
            text("hostname", "vm-a"),
            uint("if.count", 2),
            text("if.0.name", "lo"),
            text("if.0.hwaddr", "00:00:00:00:00:00"),
            uint("if.0.addr.count", 1),
            text("if.0.addr.0.type", "ipv4"),
            text("if.0.addr.0.addr", "127.0.0.1"),
            (String::from("if.0.addr.0.prefix"), Param::Int(8)),
            text("if.1.name", "eth0"),
            text("if.1.hwaddr", "52:54:00:AB:CD:EF"),
            uint("if.1.addr.count", 2),
            text("if.1.addr.0.addr", "10.0.0.5"),
            uint("if.1.addr.0.prefix", 24),
            text("if.1.addr.1.addr", "fe80::1"),
            uint("if.1.addr.1.prefix", 64),
            uint("fs.count", 1),
            text("fs.0.mountpoint", "/"),
            text("fs.0.fstype", "ext4"),
            uint("fs.0.total-bytes", 1000),
            uint("fs.0.used-bytes", 250),
        ];
        let r = report_of(&params);
        assert_eq!(
            r.os,
            GuestOs {
                id: "hvagent-testguest".into(),
                name: "hvagent test guest".into(),
                version: "1".into(),
                kernel_release: "6.1.0-57-cloud-amd64".into(),
            }
        );
        assert_eq!(r.hostname, "vm-a");
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.interfaces[0].addresses, ["127.0.0.1/8"]);
        assert_eq!(
            r.interfaces[1],
            GuestInterface {
                name: "eth0".into(),
                mac: "52:54:00:ab:cd:ef".into(),
                addresses: vec!["10.0.0.5/24".into(), "fe80::1/64".into()],
            }
        );
        assert_eq!(
            r.filesystems,
            [GuestFilesystem {
                mountpoint: "/".into(),
                fstype: "ext4".into(),
                total_bytes: Some(1000),
                used_bytes: Some(250),
            }]
        );
    }

    #[test]
    fn groups_the_agent_left_out_are_empty() {
        let r = report_of(&[text("os.kernel-release", "6.1"), uint("fs.count", 1)]);
        assert_eq!(r.os.kernel_release, "6.1");
        assert_eq!(r.os.id, "");
        assert_eq!(r.hostname, "");
        assert!(r.interfaces.is_empty());
        // Counted but without its keys: there, with empty fields and no sizes.
        assert_eq!(r.filesystems, [GuestFilesystem::default()]);
    }
}
