//! The guest agent's side of a guest: what it reports (`GetGuestInfo`) and the freeze of its
//! file systems that a snapshot of a running guest takes when the agent answers.
//!
//! Every guest the agent defines has the agent's virtio-serial channel; whether anything
//! answers on it is the guest's business (qemu-guest-agent installed and running). A guest
//! defined before the channel was added has none, and says so.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::GuestError;
use super::request::checked_uuid;
use super::{Guests, now_unix};
use crate::domain::guest_agent::{AgentError, GuestReport};
use crate::domain::{DomainState, Hypervisor};
use crate::storage::GuestFiles;

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

/// The file a snapshot keeps in the guest's directory while it may hold the guest's file
/// systems frozen: an agent killed meanwhile finds it at its next start and thaws them (a
/// guest agent never thaws on its own).
const FROZEN_MARKER: &str = "snapshot-frozen";

fn frozen_marker(files: &GuestFiles) -> PathBuf {
    files.dir.join(FROZEN_MARKER)
}

/// A running guest's file systems frozen through its agent: thawed by `end`, or when dropped
/// on a failure's way out. Blocking calls: made on the lifecycle's blocking threads.
pub(super) struct Freeze {
    hypervisor: Arc<dyn Hypervisor>,
    uuid: String,
    marker: PathBuf,
    thawed: bool,
}

impl Freeze {
    /// Leaves the marker, then freezes the guest's file systems; `None` (logged) when the
    /// marker cannot be written, its agent does not answer or the freeze fails: the caller
    /// goes on crash-consistent.
    pub(super) fn start(
        hypervisor: Arc<dyn Hypervisor>,
        uuid: &str,
        files: &GuestFiles,
    ) -> Option<Freeze> {
        let marker = frozen_marker(files);
        if let Err(e) = std::fs::write(&marker, b"") {
            tracing::warn!(vm = %uuid, error = %e, path = %marker.display(), "snapshot: no freeze without its marker; the copy is crash-consistent");
            return None;
        }
        match hypervisor.fs_freeze(uuid) {
            Ok(n) => {
                tracing::info!(vm = %uuid, filesystems = n, "snapshot: file systems frozen through the guest agent");
                Some(Freeze {
                    hypervisor,
                    uuid: uuid.to_string(),
                    marker,
                    thawed: false,
                })
            }
            Err(e) if e.may_have_acted() => {
                // A freeze whose answer was lost (the agent's timeout) may have frozen the
                // file systems, and a guest agent never thaws on its own: thaw now (harmless
                // when nothing is frozen); a thaw that fails keeps the marker for the next
                // start.
                tracing::warn!(vm = %uuid, error = %e, "snapshot: the freeze through the guest agent failed and may have frozen file systems: thawing; the copy is crash-consistent");
                Freeze {
                    hypervisor,
                    uuid: uuid.to_string(),
                    marker,
                    thawed: false,
                }
                .end();
                None
            }
            Err(e) => {
                let _ = std::fs::remove_file(&marker);
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
            Ok(()) => {
                let _ = std::fs::remove_file(&self.marker);
                tracing::info!(vm = %self.uuid, "snapshot: file systems thawed")
            }
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

impl Guests {
    /// Thaws the guests whose file systems a snapshot froze and did not live to thaw (the
    /// agent was killed meanwhile), as the marker it left says. Runs once at start-up, after
    /// the guests a snapshot paused are resumed (a paused guest's agent cannot answer). A
    /// guest that does not run is not frozen any more; one whose agent does not answer keeps
    /// its marker for the next start.
    pub(super) async fn thaw_frozen_by_snapshots(&self) {
        let Ok(domains) = self.domains().await else {
            return;
        };
        for d in domains {
            let marker = frozen_marker(&GuestFiles::new(&self.storage_root, &d.uuid));
            if !marker.exists() {
                continue;
            }
            let hypervisor = self.hypervisor.clone();
            let uuid = d.uuid.clone();
            let running = matches!(d.state, DomainState::Running | DomainState::Blocked);
            let thawed = self
                .blocking(move || {
                    if running {
                        hypervisor
                            .fs_thaw(&uuid)
                            .map_err(|e| agent_failed(&uuid, e))?;
                    }
                    let _ = std::fs::remove_file(&marker);
                    Ok(())
                })
                .await;
            match thawed {
                Ok(()) if running => {
                    tracing::warn!(vm = %d.uuid, "thawed: a snapshot froze its file systems and the agent stopped before thawing them")
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(vm = %d.uuid, error = %e, "a snapshot froze this guest's file systems and they cannot be thawed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fake::{FakeHypervisor, Op};

    const UUID: &str = "00000000-0000-4000-8000-0000000000a1";

    fn files() -> (tempfile::TempDir, GuestFiles) {
        let root = tempfile::tempdir().unwrap();
        let files = GuestFiles::new(root.path(), UUID);
        std::fs::create_dir_all(&files.dir).unwrap();
        (root, files)
    }

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
        let (_root, files) = files();
        h.set_agent(Some(GuestReport::default()));
        let f = Freeze::start(h.clone(), UUID, &files).unwrap();
        assert_eq!(h.calls(Op::Freeze), [UUID]);
        assert!(h.calls(Op::Thaw).is_empty());
        assert!(frozen_marker(&files).exists(), "marked while frozen");
        f.end();
        assert_eq!(h.calls(Op::Thaw), [UUID], "thawed once");
        assert!(!frozen_marker(&files).exists());
        // Dropped on a failure's way out: thawed too.
        drop(Freeze::start(h.clone(), UUID, &files).unwrap());
        assert_eq!(h.calls(Op::Thaw).len(), 2);
        // A thaw that fails keeps the marker: the next start tries again.
        h.fail_once(Op::Thaw);
        Freeze::start(h.clone(), UUID, &files).unwrap().end();
        assert!(frozen_marker(&files).exists());
    }

    #[test]
    fn no_answering_agent_means_no_freeze_and_no_thaw() {
        let h = running();
        let (_root, files) = files();
        assert!(Freeze::start(h.clone(), UUID, &files).is_none());
        assert_eq!(h.calls(Op::Freeze), [UUID]);
        assert!(h.calls(Op::Thaw).is_empty());
        assert!(!frozen_marker(&files).exists());
    }

    /// A freeze that failed after it may have frozen (the agent's answer lost) is thawed at
    /// once; when that thaw fails too, the marker stays for the start-up pass.
    #[test]
    fn a_failed_freeze_is_thawed_anyway() {
        let h = running();
        let (_root, files) = files();
        h.set_agent(Some(GuestReport::default()));
        h.fail_once(Op::Freeze);
        assert!(Freeze::start(h.clone(), UUID, &files).is_none());
        assert_eq!(h.calls(Op::Thaw), [UUID]);
        assert!(!frozen_marker(&files).exists());
        h.fail_once(Op::Freeze);
        h.fail_once(Op::Thaw);
        assert!(Freeze::start(h.clone(), UUID, &files).is_none());
        assert_eq!(h.calls(Op::Thaw).len(), 2);
        assert!(frozen_marker(&files).exists(), "kept for the next start");
    }

    #[test]
    fn agent_failures_say_whether_the_guest_may_have_acted() {
        assert!(!AgentError::NoChannel.may_have_acted());
        assert!(!AgentError::NotRunning("domain is not running".into()).may_have_acted());
        assert!(
            !AgentError::NotAnswering(
                "Guest agent is not responding: QEMU guest agent is not connected".into()
            )
            .may_have_acted()
        );
        assert!(
            AgentError::NotAnswering(
                "Guest agent is not responding: Guest agent not available for now".into()
            )
            .may_have_acted()
        );
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
