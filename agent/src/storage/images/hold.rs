//! Holds on images by creates in flight, and deletes that exclude them: a create that checked
//! an image must find its file when it makes the guest's overlay and defines the domain, so a
//! Delete waits for no one and refuses instead; and a create cannot start on an image that is
//! being deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::StoreError;

#[derive(Debug, Default)]
struct State {
    /// Image name → the holders (guest UUIDs) of its holds, one entry per hold.
    held: BTreeMap<String, Vec<String>>,
    deleting: BTreeSet<String>,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Holds(Arc<Mutex<State>>);

impl Holds {
    fn lock(&self) -> MutexGuard<'_, State> {
        hvagent_core::sync::lock(&self.0)
    }

    pub(super) fn hold(&self, name: &str, holder: &str) -> Result<ImageHold, StoreError> {
        let mut state = self.lock();
        if state.deleting.contains(name) {
            return Err(StoreError::Deleting(name.to_string()));
        }
        state
            .held
            .entry(name.to_string())
            .or_default()
            .push(holder.to_string());
        Ok(ImageHold {
            holds: self.clone(),
            name: name.to_string(),
            holder: holder.to_string(),
        })
    }

    pub(super) fn begin_delete(&self, name: &str, dir: PathBuf) -> Result<Deletion, StoreError> {
        let mut state = self.lock();
        if let Some(holders) = state.held.get(name) {
            return Err(StoreError::InUse {
                name: name.to_string(),
                users: format!("a create in flight for {}", holders.join(", ")),
            });
        }
        if !state.deleting.insert(name.to_string()) {
            return Err(StoreError::Deleting(name.to_string()));
        }
        Ok(Deletion {
            holds: self.clone(),
            name: name.to_string(),
            dir,
        })
    }
}

/// A create's hold on an image; released when dropped.
#[derive(Debug)]
pub struct ImageHold {
    holds: Holds,
    name: String,
    holder: String,
}

impl Drop for ImageHold {
    fn drop(&mut self) {
        let mut state = self.holds.lock();
        if let Some(holders) = state.held.get_mut(&self.name) {
            if let Some(at) = holders.iter().position(|h| *h == self.holder) {
                holders.swap_remove(at);
            }
            if holders.is_empty() {
                state.held.remove(&self.name);
            }
        }
    }
}

/// A delete under way: no create may hold the image until it is dropped.
#[derive(Debug)]
pub struct Deletion {
    holds: Holds,
    name: String,
    dir: PathBuf,
}

impl Deletion {
    /// Removes the image unless `users` (guests defined on it) is non-empty.
    pub fn remove(self, users: &[String]) -> Result<(), StoreError> {
        if !users.is_empty() {
            return Err(StoreError::InUse {
                name: self.name.clone(),
                users: users.join(", "),
            });
        }
        let io = |action: &'static str| {
            let path = self.dir.clone();
            move |source| StoreError::Io {
                path,
                action,
                source,
            }
        };
        // The record first: a half-deleted image is an interrupted import, never listed.
        std::fs::remove_file(self.dir.join("record.json")).map_err(io("remove record"))?;
        std::fs::remove_dir_all(&self.dir).map_err(io("remove"))
    }
}

impl Drop for Deletion {
    fn drop(&mut self) {
        self.holds.lock().deleting.remove(&self.name);
    }
}
