//! The guests with a create or delete in flight. A create or delete marks its guest busy
//! (under `Guests::lock`) for as long as it runs, so that no other call creates or deletes
//! that guest, or takes its name, while its disks and domain are made or removed without the
//! lock held; calls that find the guest busy wait until it is not.

use hvagent_core::sync::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The busy guests, by UUID.
#[derive(Default)]
pub(super) struct Busy {
    guests: Arc<Mutex<BTreeMap<String, InFlight>>>,
}

/// A guest with a create or delete in flight: its name, and a channel that closes when the
/// call ends.
struct InFlight {
    name: String,
    done: watch::Receiver<()>,
}

/// Marks a guest busy while it lives; dropping it wakes the calls waiting for that guest.
pub(super) struct BusyGuard {
    guests: Arc<Mutex<BTreeMap<String, InFlight>>>,
    uuid: String,
    _done: watch::Sender<()>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        // The entry goes first, then the sender (a field, dropped after this body) wakes
        // the waiters, who then find the guest no longer busy.
        lock(&self.guests).remove(&self.uuid);
    }
}

impl Busy {
    /// The call in flight for `uuid`, if any: a receiver that completes when it ends.
    pub(super) fn in_flight(&self, uuid: &str) -> Option<watch::Receiver<()>> {
        lock(&self.guests).get(uuid).map(|f| f.done.clone())
    }

    /// The busy guest named `name`, if any.
    pub(super) fn named(&self, name: &str) -> Option<String> {
        lock(&self.guests)
            .iter()
            .find(|(_, f)| f.name == name)
            .map(|(u, _)| u.clone())
    }

    /// Marks `uuid` (named `name`) busy until the guard is dropped.
    pub(super) fn mark(&self, uuid: &str, name: &str) -> BusyGuard {
        let (tx, rx) = watch::channel(());
        lock(&self.guests).insert(
            uuid.to_string(),
            InFlight {
                name: name.to_string(),
                done: rx,
            },
        );
        BusyGuard {
            guests: self.guests.clone(),
            uuid: uuid.to_string(),
            _done: tx,
        }
    }

    /// The busy guests' UUIDs.
    pub(super) fn uuids(&self) -> Vec<String> {
        lock(&self.guests).keys().cloned().collect()
    }

    /// Whether no guest is busy.
    pub(super) fn is_empty(&self) -> bool {
        lock(&self.guests).is_empty()
    }
}
