//! The calls on an existing guest: start, stop, reboot, delete and its console log.

use std::path::Path;
use std::time::Duration;

use super::busy::BusyGuard;
use super::error::GuestError;
use super::plan::{HostTap, guest_taps, host_taps, made_volume_name};
use super::request::checked_uuid;
use super::resume::Wanted;
use super::{Guest, Guests};
use crate::domain::{DomainEvent, DomainState, EventKind};
use crate::storage::GuestFiles;

pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a stop reads the state while it waits for the guest's `stopped` event.
pub const STOP_RECHECK: Duration = Duration::from_secs(2);
/// How long a stop waits for libvirt to take the ACPI request (see `ask_shutdown`).
pub const SHUTDOWN_ASK: Duration = Duration::from_secs(5);
pub const DEFAULT_CONSOLE_BYTES: u64 = 64 * 1024;
pub const MAX_CONSOLE_BYTES: u64 = 1024 * 1024;

impl Guests {
    pub async fn start(&self, uuid: &str) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let guest = self.get(&uuid).await?;
        self.record_wanted(&uuid, Wanted::Running).await?;
        let networks: Vec<_> = guest
            .intent
            .networks
            .iter()
            .map(|name| self.networks.managed(name))
            .collect();
        let nic = |i: usize| guest.intent.nics.get(i).cloned().unwrap_or_default();
        let taps = guest_taps(
            &uuid,
            networks
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), nic(i))),
        );
        if guest.state != DomainState::Running {
            // Taps in managed networks: back where libvirtd opens them, and made again where
            // they are gone (a host reboot loses every tap; libvirt only opens them).
            self.networks.recall(&taps).await?;
            self.networks.plug(&taps).await?;
        }
        let hypervisor = self.hypervisor.clone();
        let u = uuid.clone();
        self.blocking(move || hypervisor.start(&u).map_err(GuestError::from))
            .await?;
        self.networks.join(&taps).await?;
        let intents: Vec<_> = (0..networks.len()).map(nic).collect();
        let host = host_taps(
            &uuid,
            networks.iter().map(Option::is_some).zip(intents.iter()),
        );
        self.limit_host_taps(&uuid, &host).await?;
        self.get(&uuid).await
    }

    /// Applies the rate limits of the guest's NICs in host bridges to the taps libvirt made
    /// for them (again at every start: each start makes them anew).
    pub(super) async fn limit_host_taps(
        &self,
        uuid: &str,
        taps: &[HostTap],
    ) -> Result<(), GuestError> {
        for tap in taps {
            let found = self
                .networks
                .limit_host_tap(&tap.name, tap.ingress_kbps, tap.egress_kbps)
                .await?;
            if !found {
                // Defined before NICs in host bridges got the agent's tap names: libvirt
                // named the tap itself.
                tracing::warn!(vm = %uuid, tap = %tap.name, "no such tap: the NIC's rate limits are not applied (recreate the guest to have them)");
            }
        }
        Ok(())
    }

    /// ACPI shutdown, then destroy after `timeout`; `force` destroys at once. The wait is on
    /// the guest's `stopped` event (no thread is held while the guest takes its time), with
    /// the state read again every [`STOP_RECHECK`] in case the event was missed (a lagging
    /// receiver, a libvirtd reconnect).
    pub async fn stop(
        &self,
        uuid: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        if timeout > MAX_STOP_TIMEOUT {
            return Err(GuestError::Invalid("timeout_seconds: at most 600".into()));
        }
        let guest = self.get(&uuid).await?;
        // Also for a guest already off (it stopped on its own): it stays off after a reboot.
        self.record_wanted(&uuid, Wanted::Stopped).await?;
        if guest.state == DomainState::ShutOff {
            return Ok(guest);
        }
        self.power_off(&uuid, force, timeout).await?;
        self.get(&uuid).await
    }

    /// Stops a running guest as `stop` does (ACPI, then destroy after `timeout`; `force`:
    /// destroy at once) without recording it as wanted stopped: for calls that start it again
    /// (a resize).
    pub(super) async fn power_off(
        &self,
        uuid: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<(), GuestError> {
        let uuid = uuid.to_string();
        if !force {
            // Subscribed before the shutdown: its `stopped` event cannot slip past.
            let mut events = self.hypervisor.subscribe();
            self.ask_shutdown(&uuid).await?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if self.state(&uuid).await? == DomainState::ShutOff {
                    return Ok(());
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    break;
                }
                let _ = tokio::time::timeout_at(
                    deadline.min(now + STOP_RECHECK),
                    stopped(&mut events, &uuid),
                )
                .await;
            }
            tracing::info!(vm = %uuid, "no ACPI shutdown within the timeout; destroying");
        }
        let hypervisor = self.hypervisor.clone();
        let u = uuid.clone();
        self.blocking(move || hypervisor.destroy(&u).map_err(GuestError::from))
            .await
    }

    /// Passes the ACPI power button to the guest. libvirt answers once QEMU has taken the
    /// request; a QEMU that does not answer its monitor (frozen, overloaded) holds that call,
    /// its connection (one of its own: `Libvirt::waiting_domain`) and a blocking thread for
    /// as long as it stays so. So a guest has at most one such request in flight (a second
    /// stop waits on the first's), and the stop waits for the answer [`SHUTDOWN_ASK`] at most before it
    /// goes on to wait for the guest to stop, and to destroy it at its timeout.
    async fn ask_shutdown(&self, uuid: &str) -> Result<(), GuestError> {
        let Some(asking) = Asking::start(&self.asking, uuid) else {
            return Ok(());
        };
        let hypervisor = self.hypervisor.clone();
        let u = uuid.to_string();
        let call = self.blocking(move || {
            let result = hypervisor.shutdown(&u).map_err(GuestError::from);
            drop(asking);
            result
        });
        match tokio::time::timeout(SHUTDOWN_ASK, call).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(vm = %uuid, "libvirt has not passed on the ACPI request within {} s (QEMU not answering?); waiting for the guest to stop anyway", SHUTDOWN_ASK.as_secs());
                Ok(())
            }
        }
    }

    /// Marks `uuid` busy once no create, delete or snapshot of it is in flight (placement
    /// rebuilt first).
    pub(super) async fn exclusive(&self, uuid: &str) -> Result<BusyGuard, GuestError> {
        loop {
            let held = self.lock.lock().await;
            self.ensure_rebuilt(&held).await?;
            match self.busy.in_flight(uuid) {
                Some(mut done) => {
                    drop(held);
                    let _ = done.changed().await;
                }
                None => return Ok(self.busy.mark(uuid, "")),
            }
        }
    }

    /// Whether libvirt has any domain with this UUID, the agent's or not.
    pub(super) async fn exists(&self, uuid: &str) -> Result<bool, GuestError> {
        match self.state(uuid).await {
            Ok(_) => Ok(true),
            Err(GuestError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn state(&self, uuid: &str) -> Result<DomainState, GuestError> {
        let hypervisor = self.hypervisor.clone();
        let u = uuid.to_string();
        self.blocking(move || hypervisor.state(&u).map_err(GuestError::from))
            .await
    }

    pub async fn reboot(&self, uuid: &str, hard: bool) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let guest = self.get(&uuid).await?;
        if guest.state != DomainState::Running {
            return Err(GuestError::Precondition(format!(
                "guest {uuid} is {}, not running",
                guest.state
            )));
        }
        self.record_wanted(&uuid, Wanted::Running).await?;
        let hypervisor = self.hypervisor.clone();
        let u = uuid.clone();
        self.blocking(move || hypervisor.reboot(&u, hard).map_err(GuestError::from))
            .await?;
        self.get(&uuid).await
    }

    /// Removes the domain, the files, the boot volume made for the guest and the claim;
    /// `Ok(false)` when there was nothing. Volumes attached (and a boot volume given at
    /// Create) stay, with their data.
    pub async fn delete(self: &std::sync::Arc<Self>, uuid: &str) -> Result<bool, GuestError> {
        let uuid = checked_uuid(uuid)?;
        // A create of this guest in flight: delete what it leaves.
        let _busy = self.exclusive(&uuid).await?;
        // Only the agent's own domain goes: one with this UUID that is not its guest (defined
        // by someone else, or for another store) is left as it is.
        let mut holder = None;
        let own = match self.domains().await?.into_iter().find(|d| d.uuid == uuid) {
            Some(d) => match d.intent {
                Ok(intent) => {
                    // A pending resize's old claim goes with the guest.
                    holder = intent.resize.map(|r| r.holder);
                    true
                }
                // Carries hvagent metadata that does not parse: perhaps this agent's guest,
                // perhaps another's; whose files and claim they are cannot be told.
                Err(e) => {
                    return Err(GuestError::Precondition(format!(
                        "uuid: domain {uuid} ({}) has hvagent metadata that cannot be read ({e}); left alone: repair or undefine it by hand",
                        d.name
                    )));
                }
            },
            None => false,
        };
        let foreign = !own && self.exists(&uuid).await?;
        if foreign {
            tracing::info!(vm = %uuid, "delete: a domain with this UUID is not this agent's guest; leaving it and its taps");
        }
        let hypervisor = self.hypervisor.clone();
        let files = GuestFiles::new(&self.storage_root, &uuid);
        let u = uuid.clone();
        let this = self.clone();
        let (had_domain, had_files) = self
            .blocking(move || {
                let had_domain = own && hypervisor.remove(&u)?;
                let had_files = files.dir.exists();
                files.remove().map_err(GuestError::Files)?;
                // The volume made for this guest, by its record (also one a create or delete
                // killed halfway left): a volume of that name made for another is not touched.
                let made = made_volume_name(&u);
                let had_volume = !foreign
                    && this.volumes.get(&made).is_ok_and(|r| r.made_for == u)
                    && this.volumes.delete(&made).is_ok();
                Ok((had_domain, had_files || had_volume))
            })
            .await?;
        // Taps named for this UUID in a foreign domain's hands are that domain's.
        if !foreign && let Err(e) = self.networks.unplug_guest(&uuid).await {
            tracing::warn!(vm = %uuid, error = %e, "cannot remove the guest's taps; the reconciler will");
        }
        let released = {
            let mut alloc = self.placement.lock();
            if let Some(holder) = &holder {
                let _ = alloc.release(holder);
            }
            alloc.release(&uuid).ok()
        };
        let had_claim = released.is_some();
        if released.is_some_and(|c| c.dedicated_cpus().next().is_some()) {
            // The shared pool got CPUs back: floating guests may use them again.
            self.repin_floating().await;
        }
        if had_domain || had_files || had_claim {
            tracing::info!(vm = %uuid, "deleted");
        }
        Ok(had_domain || had_files || had_claim)
    }

    /// The last `max_bytes` of the serial console log, and its whole size.
    pub async fn console_log(
        &self,
        uuid: &str,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, u64), GuestError> {
        let uuid = checked_uuid(uuid)?;
        if max_bytes > MAX_CONSOLE_BYTES {
            return Err(GuestError::Invalid("max_bytes: at most 1048576".into()));
        }
        self.get(&uuid).await?;
        let path = GuestFiles::new(&self.storage_root, &uuid).console_log();
        let want = if max_bytes == 0 {
            DEFAULT_CONSOLE_BYTES
        } else {
            max_bytes
        };
        self.blocking(move || tail(&path, want)).await
    }
}

/// Guests whose ACPI request is in libvirt's hands.
pub(super) type AskingSet = std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>;

/// A guest's place in the [`AskingSet`], left when dropped: when the call ends, or when the
/// call never ran (its closure dropped unrun).
struct Asking {
    set: AskingSet,
    uuid: String,
}

impl Asking {
    /// `None` when the guest already has a request in flight.
    fn start(set: &AskingSet, uuid: &str) -> Option<Asking> {
        hvagent_core::sync::lock(set)
            .insert(uuid.to_string())
            .then(|| Asking {
                set: set.clone(),
                uuid: uuid.to_string(),
            })
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        hvagent_core::sync::lock(&self.set).remove(&self.uuid);
    }
}

/// The last `max` bytes of the file at `path` and its whole size; a missing file is empty.
fn tail(path: &Path, max: u64) -> Result<(Vec<u8>, u64), GuestError> {
    use std::io::{Read, Seek, SeekFrom};
    let failed = |source| GuestError::ConsoleLog {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(failed(e)),
    };
    let total = file.metadata().map_err(failed)?.len();
    let start = total.saturating_sub(max);
    file.seek(SeekFrom::Start(start)).map_err(failed)?;
    let mut data = Vec::with_capacity((total - start) as usize);
    file.take(max).read_to_end(&mut data).map_err(failed)?;
    Ok((data, total))
}

/// Returns at `uuid`'s next `stopped` event, or at once when events were missed or ended (the
/// caller reads the state then).
async fn stopped(events: &mut tokio::sync::broadcast::Receiver<DomainEvent>, uuid: &str) {
    loop {
        match events.recv().await {
            Ok(e) if e.kind == EventKind::Stopped && e.uuid == uuid => return,
            Ok(e) if e.kind == EventKind::Lost => return,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
            // No more events: only the caller's timeout and state reads are left.
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tail_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        assert_eq!(tail(&path, 10).unwrap(), (vec![], 0));
        std::fs::write(&path, b"0123456789abcdef").unwrap();
        assert_eq!(tail(&path, 4).unwrap(), (b"cdef".to_vec(), 16));
        assert_eq!(
            tail(&path, 100).unwrap(),
            (b"0123456789abcdef".to_vec(), 16)
        );
    }
}
