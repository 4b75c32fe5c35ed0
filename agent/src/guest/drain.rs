//! Draining the node before maintenance: it admits no new guest (the allocator refuses every
//! new claim, so Create, Reserve, Resize and arriving migrations all stop at one place;
//! Placement sees COMPUTE_STATUS_DISABLED; GetHealth shows Draining) and its running guests
//! move live, one at a time, to the first target that takes each. The state is a file in the
//! store: an agent restarted during or after a drain still admits nothing until Undrain.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::migrate::MigrationPeer;
use super::{GuestError, Guests};
use crate::domain::hypervisor::DomainState;

/// The marker file in the store while the node drains.
pub const DRAINING_FILE: &str = "draining";

/// The most targets one Drain names.
pub const MAX_TARGETS: usize = 16;

/// A guest that moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub uuid: String,
    pub target: String,
    pub elapsed: Duration,
}

/// A guest still here, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stayed {
    pub uuid: String,
    pub reason: String,
}

/// What a drain did, each list in UUID order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub moved: Vec<Moved>,
    pub stayed: Vec<Stayed>,
}

/// The targets as given, or why they are not acceptable.
fn checked_targets(targets: &[String]) -> Result<(), GuestError> {
    if targets.is_empty() {
        return Err(GuestError::Invalid(
            "targets: name at least one target agent (HOST:PORT)".into(),
        ));
    }
    if targets.len() > MAX_TARGETS {
        return Err(GuestError::Invalid(format!(
            "targets: at most {MAX_TARGETS}, got {}",
            targets.len()
        )));
    }
    for (i, t) in targets.iter().enumerate() {
        if t.trim().is_empty() {
            return Err(GuestError::Invalid(format!("targets[{i}]: empty")));
        }
        if targets[..i].contains(t) {
            return Err(GuestError::Invalid(format!(
                "targets[{i}]: {t:?} is named twice"
            )));
        }
    }
    Ok(())
}

impl Guests {
    fn draining_file(&self) -> PathBuf {
        self.storage_root.join(DRAINING_FILE)
    }

    /// Whether the node admits no new guests.
    pub fn draining(&self) -> bool {
        self.placement.lock().is_draining()
    }

    /// Takes up the drain a previous run of the agent left (its marker file), at start.
    pub fn restore_draining(&self) {
        if self.draining_file().exists() {
            tracing::warn!(
                "the node is draining (a Drain before this start): it admits no new guests until Undrain"
            );
            self.placement.lock().set_draining(true);
        }
    }

    /// Admits new guests again; refused while a drain runs (it would go on moving guests
    /// away from a node that takes new ones).
    pub async fn undrain(&self) -> Result<(), GuestError> {
        let _idle = self.drain_running.try_lock().map_err(|_| {
            GuestError::Precondition(
                "a drain is under way on this node: undrain after it answers".into(),
            )
        })?;
        self.set_draining(false).await
    }

    /// Starts (`true`) or ends the drain: the marker file first (its directory synced), so
    /// that an agent killed in between restarts in the state asked for.
    pub(super) async fn set_draining(&self, draining: bool) -> Result<(), GuestError> {
        let path = self.draining_file();
        self.blocking(move || {
            let done = if draining {
                super::resume::write_whole(&path, "draining\n")
            } else {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Ok(()) => std::fs::File::open(path.parent().unwrap_or(&path))
                        .and_then(|dir| dir.sync_all()),
                    Err(e) => Err(e),
                }
            };
            done.map_err(|e| GuestError::Internal(format!("{}: {e}", path.display())))
        })
        .await?;
        let changed = {
            let mut alloc = self.placement.lock();
            let was = alloc.is_draining();
            alloc.set_draining(draining);
            was != draining
        };
        if changed {
            tracing::info!(draining, "node admission changed");
        }
        Ok(())
    }

    /// Drains the node: admits nothing new from now on, then moves every running guest to
    /// the first of `targets` (reached with `connect`, each at most once) that takes it. The
    /// targets are checked first (the caller checks each one's form); from then on the node
    /// stays draining whatever happens, until Undrain.
    pub async fn drain<P, C, F>(
        self: &Arc<Self>,
        targets: &[String],
        connect: C,
    ) -> Result<DrainReport, GuestError>
    where
        P: MigrationPeer,
        C: Fn(String) -> F,
        F: Future<Output = Result<P, GuestError>>,
    {
        checked_targets(targets)?;
        let _running = self.drain_running.try_lock().map_err(|_| {
            GuestError::Precondition(
                "a drain is under way on this node: wait for its answer, then drain again".into(),
            )
        })?;
        self.set_draining(true).await?;
        let (mut guests, _) = self.list().await?;
        guests.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        let mut peers: BTreeMap<&str, Result<P, String>> = BTreeMap::new();
        let mut report = DrainReport::default();
        for guest in guests {
            if guest.state != DomainState::Running {
                report.stayed.push(Stayed {
                    uuid: guest.uuid,
                    reason: format!(
                        "it is {}: only a running guest moves live; it stays here",
                        guest.state
                    ),
                });
                continue;
            }
            let mut answers = Vec::new();
            let (mut moved, mut gone) = (None, false);
            for target in targets {
                if !peers.contains_key(target.as_str()) {
                    let peer = connect(target.clone()).await.map_err(|e| e.to_string());
                    peers.insert(target, peer);
                }
                let peer = match &peers[target.as_str()] {
                    Ok(p) => p,
                    Err(e) => {
                        answers.push(format!("{target}: {e}"));
                        continue;
                    }
                };
                match self.migrate(&guest.uuid, peer).await {
                    // Deleted, or moved by another call, since the listing: not this drain's.
                    Err(GuestError::NotFound(_)) => {
                        tracing::info!(vm = %guest.uuid, "drain: the guest is gone meanwhile");
                        gone = true;
                        break;
                    }
                    Ok(m) => {
                        moved = Some(Moved {
                            uuid: guest.uuid.clone(),
                            target: target.clone(),
                            elapsed: m.elapsed,
                        });
                        break;
                    }
                    // libvirt moved it, and only what followed failed: it runs there now.
                    Err(e) if self.departed(&guest.uuid).await => {
                        tracing::warn!(vm = %guest.uuid, to = %target, error = %e, "moved, with an error after the move");
                        moved = Some(Moved {
                            uuid: guest.uuid.clone(),
                            target: target.clone(),
                            elapsed: Duration::ZERO,
                        });
                        break;
                    }
                    Err(e) => answers.push(format!("{target}: {e}")),
                }
            }
            match moved {
                Some(m) => report.moved.push(m),
                None if gone => {}
                None => {
                    tracing::warn!(vm = %guest.uuid, reasons = %answers.join("; "), "drain: the guest stays");
                    report.stayed.push(Stayed {
                        uuid: guest.uuid,
                        reason: answers.join("; "),
                    });
                }
            }
        }
        tracing::info!(
            moved = report.moved.len(),
            stayed = report.stayed.len(),
            "drain done"
        );
        Ok(report)
    }

    /// Whether guest `uuid` is gone from this node (a listing that fails says no).
    async fn departed(&self, uuid: &str) -> bool {
        self.domains()
            .await
            .is_ok_and(|ds| !ds.iter().any(|d| d.uuid == uuid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn targets_are_checked_by_field_and_rule() {
        assert!(checked_targets(&targets(&["a:1", "b:2"])).is_ok());
        let many: Vec<String> = (0..=MAX_TARGETS).map(|i| format!("h{i}:1")).collect();
        for (bad, says) in [
            (targets(&[]), "at least one"),
            (many, "at most 16"),
            (targets(&["a:1", " "]), "targets[1]: empty"),
            (
                targets(&["a:1", "b:2", "a:1"]),
                "targets[2]: \"a:1\" is named twice",
            ),
        ] {
            match checked_targets(&bad) {
                Err(GuestError::Invalid(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
