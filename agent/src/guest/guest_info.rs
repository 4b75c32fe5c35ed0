//! The guest agent's side of a guest: what it reports (`GetGuestInfo`) and the freeze of its
//! file systems that a snapshot of a running guest takes when the agent answers.
//!
//! Every guest the agent defines has the agent's virtio-serial channel; whether anything
//! answers on it is the guest's business (qemu-guest-agent installed and running). A guest
//! defined before the channel was added has none, and says so.

use std::sync::Arc;

use super::error::GuestError;
use super::request::checked_uuid;
use super::{Guests, now_unix};
use crate::domain::guest_agent::{AgentError, GuestReport};
use crate::domain::{DomainState, Hypervisor};

/// The image property a snapshot records how consistent its copy is in.
pub const CONSISTENCY_PROPERTY: &str = "hvagent_snapshot_consistency";

/// How consistent a snapshot's copy of a disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The guest's file systems were frozen through its agent: each is clean.
    Filesystem,
    /// A running (paused for the copy) or paused guest whose agent did not answer: what a
    /// power cut would leave.
    Crash,
    /// The guest was shut off.
    Stopped,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Filesystem => "filesystem",
            Consistency::Crash => "crash",
            Consistency::Stopped => "stopped",
        }
    }
}

/// One answer of a guest's agent and when it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInfo {
    pub report: GuestReport,
    pub sampled_unix_ms: u64,
}

/// The error a caller sees for a guest agent's failure on guest `uuid`.
fn agent_failed(uuid: &str, e: AgentError) -> GuestError {
    match e {
        AgentError::NoChannel | AgentError::NotRunning(_) => {
            GuestError::Precondition(format!("uuid: guest {uuid}: {e}"))
        }
        AgentError::NotAnswering(_) => GuestError::Unavailable(format!("uuid: guest {uuid}: {e}")),
        AgentError::Domain(d) => d.into(),
    }
}

impl Guests {
    /// What the agent of running guest `uuid` reports. Reads only: nothing changes.
    pub async fn guest_info(&self, uuid: &str) -> Result<GuestInfo, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let guest = self.get(&uuid).await?;
        if !matches!(guest.state, DomainState::Running | DomainState::Blocked) {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} is {}; only a running guest's agent can answer",
                guest.state
            )));
        }
        let hypervisor = self.hypervisor.clone();
        let u = uuid.clone();
        let report = self
            .blocking(move || hypervisor.guest_info(&u).map_err(|e| agent_failed(&u, e)))
            .await?;
        Ok(GuestInfo {
            report,
            sampled_unix_ms: now_unix_ms(),
        })
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(now_unix() * 1000, |d| d.as_millis() as u64)
}

/// A running guest's file systems frozen through its agent: thawed by `end`, or when dropped
/// on a failure's way out. Blocking calls: made on the lifecycle's blocking threads.
pub(super) struct Freeze {
    hypervisor: Arc<dyn Hypervisor>,
    uuid: String,
    thawed: bool,
}

impl Freeze {
    /// Freezes the guest's file systems; `None` (logged) when its agent does not answer or
    /// the freeze fails: the caller goes on crash-consistent.
    pub(super) fn start(hypervisor: Arc<dyn Hypervisor>, uuid: &str) -> Option<Freeze> {
        match hypervisor.fs_freeze(uuid) {
            Ok(n) => {
                tracing::info!(vm = %uuid, filesystems = n, "snapshot: file systems frozen through the guest agent");
                Some(Freeze {
                    hypervisor,
                    uuid: uuid.to_string(),
                    thawed: false,
                })
            }
            Err(e) => {
                tracing::warn!(vm = %uuid, error = %e, "snapshot: no freeze through the guest agent; the copy is crash-consistent");
                None
            }
        }
    }

    /// Thaws the file systems. A failed thaw is logged: the copy is whole either way, and
    /// the guest's agent thaws when asked again (`virsh domfsthaw`).
    pub(super) fn end(mut self) {
        self.thaw();
    }

    fn thaw(&mut self) {
        self.thawed = true;
        match self.hypervisor.fs_thaw(&self.uuid) {
            Ok(()) => tracing::info!(vm = %self.uuid, "snapshot: file systems thawed"),
            Err(e) => {
                tracing::error!(vm = %self.uuid, error = %e, "snapshot: the guest's file systems cannot be thawed: they stay frozen until thawed by hand (virsh domfsthaw)")
            }
        }
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        if !self.thawed {
            self.thaw();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fake::{FakeHypervisor, Op};

    const UUID: &str = "00000000-0000-4000-8000-0000000000a1";

    fn running() -> Arc<FakeHypervisor> {
        let h = Arc::new(FakeHypervisor::default());
        h.define_and_start(&format!(
            "<domain><uuid>{UUID}</uuid><name>a</name></domain>"
        ))
        .unwrap();
        h
    }

    #[test]
    fn a_freeze_is_thawed_by_end_and_when_dropped() {
        let h = running();
        h.set_agent(Some(GuestReport::default()));
        let f = Freeze::start(h.clone(), UUID).unwrap();
        assert_eq!(h.calls(Op::Freeze), [UUID]);
        assert!(h.calls(Op::Thaw).is_empty());
        f.end();
        assert_eq!(h.calls(Op::Thaw), [UUID], "thawed once");
        // Dropped on a failure's way out: thawed too.
        drop(Freeze::start(h.clone(), UUID).unwrap());
        assert_eq!(h.calls(Op::Thaw).len(), 2);
    }

    #[test]
    fn no_answering_agent_means_no_freeze_and_no_thaw() {
        let h = running();
        assert!(Freeze::start(h.clone(), UUID).is_none());
        assert_eq!(h.calls(Op::Freeze), [UUID]);
        assert!(h.calls(Op::Thaw).is_empty());
    }

    #[test]
    fn agent_failures_name_the_guest_and_get_their_code() {
        let e = agent_failed(UUID, AgentError::NoChannel);
        assert!(
            matches!(&e, GuestError::Precondition(m) if m.contains(UUID) && m.contains("no guest agent channel")),
            "{e:?}"
        );
        let e = agent_failed(UUID, AgentError::NotAnswering("not connected".into()));
        assert!(
            matches!(&e, GuestError::Unavailable(m) if m.contains("does not answer (is qemu-guest-agent running in the guest?)")),
            "{e:?}"
        );
        let e = agent_failed(UUID, AgentError::NotRunning("domain is not running".into()));
        assert!(matches!(e, GuestError::Precondition(_)));
    }
}
