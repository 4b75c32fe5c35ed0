//! Guests back after a host reboot. Each guest's wanted state (running or stopped, as its
//! owner last asked) is a file in its directory; the host's boot id, stored under the storage
//! root, tells a start after a reboot from a restart of the agent alone. After a reboot,
//! once placement is rebuilt, every guest that is wanted running and is shut off is started
//! through the normal start (which makes its taps again), a bounded number at a time.
//!
//! Crash-only: both records are files written whole (temporary file, fsync, rename), and the
//! boot id is stored only after the resume pass, so an agent killed in the middle of one
//! finds the host still "rebooted" at its next start and starts the rest.

use std::io::Write;
use std::path::Path;

use futures_util::StreamExt;

use super::Guests;
use super::error::GuestError;
use crate::domain::hypervisor::DomainState;
use crate::storage::GuestFiles;
use hvagent_core::counts::KindCounts;

/// The name of the wanted-state file in a guest's directory.
const WANTED_FILE: &str = "wanted";
/// The name of the stored boot id under the storage root.
const BOOT_ID_FILE: &str = "boot_id";

/// The state a guest's owner last asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// After Create, Start and Reboot; also when no record exists (a guest made before
    /// wanted states were recorded: a guest is created running).
    Running,
    /// After the owner's Stop. A guest that stops on its own keeps `Running`.
    Stopped,
}

impl Wanted {
    fn as_str(self) -> &'static str {
        match self {
            Wanted::Running => "running",
            Wanted::Stopped => "stopped",
        }
    }

    /// The record's text; `Err` names what was found (the guest is then left alone).
    fn parse(text: &str) -> Result<Wanted, String> {
        match text.trim() {
            "running" => Ok(Wanted::Running),
            "stopped" => Ok(Wanted::Stopped),
            other => Err(format!("{other:?} is not \"running\" or \"stopped\"")),
        }
    }
}

/// `[guests]`: what happens to guests when the agent starts on a rebooted host.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeSettings {
    /// Whether guests wanted running are started after a host reboot.
    pub on_boot: bool,
    /// Starts running at once.
    pub concurrency: usize,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        Self {
            on_boot: true,
            concurrency: 2,
        }
    }
}

/// How this start relates to the agent's last one on this store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// No boot id stored: the first start on this store (or of an agent that records them).
    /// Which shut-off guests were stopped by their owner is not known: none is started.
    First,
    /// The host has not rebooted since: the agent alone restarted.
    Same,
    /// The host rebooted since the agent's last start.
    Rebooted,
}

/// Compares the stored boot id with this boot's.
pub fn boot_change(stored: Option<&str>, current: &str) -> Boot {
    match stored.map(str::trim) {
        None => Boot::First,
        Some(s) if s == current.trim() => Boot::Same,
        Some(_) => Boot::Rebooted,
    }
}

/// The guests to start after a reboot: those wanted running and shut off (or crashed). One
/// whose record cannot be read is left alone (its owner may have stopped it); `unreadable`
/// gets its UUID and why.
pub fn to_resume(
    guests: impl IntoIterator<Item = (String, DomainState, Result<Wanted, String>)>,
    unreadable: &mut Vec<(String, String)>,
) -> Vec<String> {
    let mut start = Vec::new();
    for (uuid, state, wanted) in guests {
        let down = matches!(state, DomainState::ShutOff | DomainState::Crashed);
        match wanted {
            Ok(Wanted::Running) if down => start.push(uuid),
            Ok(_) => {}
            Err(why) => unreadable.push((uuid, why)),
        }
    }
    start
}

/// What a resume pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resumed {
    pub started: Vec<String>,
    pub failed: Vec<String>,
}

/// `text` written whole to `path`: a temporary file beside it, synced, renamed over it, and
/// the directory synced, so a crash leaves the old record or the new one.
pub(super) fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    // A name of its own per write: calls about one guest run side by side (four stops of
    // it, say), and a shared temporary name let one rename away another's file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The contents of `path`; `None` when it does not exist.
fn read_optional(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The guest's wanted state as recorded in `dir`.
fn read_wanted(dir: &Path) -> Result<Wanted, String> {
    let path = dir.join(WANTED_FILE);
    match read_optional(&path) {
        Ok(None) => Ok(Wanted::Running),
        Ok(Some(text)) => Wanted::parse(&text),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

impl Guests {
    /// Records `wanted` for `uuid` (whose directory exists: it is one of the agent's guests),
    /// before the call that acts on it: the record is the owner's last request.
    pub(super) async fn record_wanted(&self, uuid: &str, wanted: Wanted) -> Result<(), GuestError> {
        let path = GuestFiles::new(&self.storage_root, uuid)
            .dir
            .join(WANTED_FILE);
        self.blocking(move || {
            write_whole(&path, &format!("{}\n", wanted.as_str())).map_err(|e| {
                GuestError::Internal(format!(
                    "{}: cannot record the wanted state: {e}",
                    path.display()
                ))
            })
        })
        .await
    }

    /// Run at start, after placement was rebuilt: after a host reboot (the id in `boot_id`,
    /// `[host] boot_id_path`, differs from the stored one), starts the guests wanted running if `settings.on_boot`, counting each
    /// start in `counts` (`started`, `failed`); then stores this boot's id. `None`: no pass
    /// ran (same boot, first start, turned off, or the boot id or guests could not be read).
    pub async fn resume_after_boot(
        &self,
        settings: &ResumeSettings,
        boot_id: &Path,
        counts: &KindCounts,
    ) -> Option<Resumed> {
        let current = match std::fs::read_to_string(boot_id) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                tracing::warn!(path = %boot_id.display(), "cannot read this boot's id: host reboots are not detected and no guest is resumed");
                return None;
            }
        };
        let record = self.storage_root.join(BOOT_ID_FILE);
        let stored = match read_optional(&record) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(path = %record.display(), error = %e, "cannot read the stored boot id; no guest is resumed");
                return None;
            }
        };
        let resumed = match boot_change(stored.as_deref(), &current) {
            Boot::Same => None,
            Boot::First => {
                tracing::info!("first start on this store: boot id recorded, no guest resumed");
                None
            }
            Boot::Rebooted if !settings.on_boot => {
                tracing::info!(
                    "the host rebooted; [guests] resume_on_boot = false: guests stay as they are"
                );
                None
            }
            Boot::Rebooted => {
                tracing::info!("the host rebooted: starting the guests wanted running");
                // A listing that fails leaves the boot id as it was: the next start tries again.
                Some(self.resume(settings.concurrency, counts).await.ok()?)
            }
        };
        if let Err(e) = write_whole(&record, &format!("{current}\n")) {
            tracing::warn!(path = %record.display(), error = %e, "cannot store this boot's id");
        }
        resumed
    }

    /// Starts every guest wanted running that is shut off, `concurrency` at a time.
    async fn resume(&self, concurrency: usize, counts: &KindCounts) -> Result<Resumed, GuestError> {
        let domains = self.domains().await.inspect_err(|e| {
            tracing::warn!(error = %e, "cannot list the guests: none resumed (tried again at the next start)");
        })?;
        let root = self.storage_root.clone();
        let candidates: Vec<_> = domains
            .into_iter()
            .filter(|d| d.intent.is_ok())
            .map(|d| {
                let wanted = read_wanted(&GuestFiles::new(&root, &d.uuid).dir);
                (d.uuid, d.state, wanted)
            })
            .collect();
        let mut unreadable = Vec::new();
        let uuids = to_resume(candidates, &mut unreadable);
        for (uuid, why) in unreadable {
            tracing::error!(vm = %uuid, error = %why, "unreadable wanted state: guest left as it is");
        }
        let results: Vec<(String, Result<(), GuestError>)> = futures_util::stream::iter(uuids)
            .map(|uuid| async move {
                let result = self.start(&uuid).await.map(|_| ());
                (uuid, result)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut resumed = Resumed::default();
        for (uuid, result) in results {
            match result {
                Ok(()) => {
                    tracing::info!(vm = %uuid, "resumed after the host reboot");
                    counts.inc("started");
                    resumed.started.push(uuid);
                }
                Err(e) => {
                    tracing::error!(vm = %uuid, error = %e, "cannot resume after the host reboot");
                    counts.inc("failed");
                    resumed.failed.push(uuid);
                }
            }
        }
        Ok(resumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_side_by_side_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wanted");
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..16)
                .map(|_| s.spawn(|| write_whole(&path, "stopped\n")))
                .collect();
            for w in writers {
                w.join().unwrap().unwrap();
            }
        });
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "stopped\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn a_different_boot_id_is_a_reboot() {
        assert_eq!(boot_change(None, "a"), Boot::First);
        assert_eq!(boot_change(Some("a\n"), "a"), Boot::Same);
        assert_eq!(boot_change(Some("a"), "b\n"), Boot::Rebooted);
    }

    #[test]
    fn only_shut_off_guests_wanted_running_are_resumed() {
        let g = |n: &str, state, wanted| (n.to_string(), state, wanted);
        let mut unreadable = Vec::new();
        let start = to_resume(
            [
                g("off-running", DomainState::ShutOff, Ok(Wanted::Running)),
                g("crashed", DomainState::Crashed, Ok(Wanted::Running)),
                g("off-stopped", DomainState::ShutOff, Ok(Wanted::Stopped)),
                g("up", DomainState::Running, Ok(Wanted::Running)),
                g("paused", DomainState::Paused, Ok(Wanted::Running)),
                g("damaged", DomainState::ShutOff, Err("\"x\"".into())),
            ],
            &mut unreadable,
        );
        assert_eq!(start, ["off-running", "crashed"]);
        assert_eq!(unreadable, [("damaged".to_string(), "\"x\"".to_string())]);
    }

    #[test]
    fn the_wanted_record_is_read_back_and_absent_means_running() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_wanted(dir.path()), Ok(Wanted::Running));
        for wanted in [Wanted::Stopped, Wanted::Running] {
            write_whole(&dir.path().join(WANTED_FILE), wanted.as_str()).unwrap();
            assert_eq!(read_wanted(dir.path()), Ok(wanted));
        }
        std::fs::write(dir.path().join(WANTED_FILE), "maybe").unwrap();
        assert!(read_wanted(dir.path()).unwrap_err().contains("\"maybe\""));
        // Nothing but the record is left in the directory (no temporary file).
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [WANTED_FILE]);
    }
}
