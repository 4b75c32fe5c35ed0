//! The allocator as the daemon shares it: behind a mutex (every decision takes microseconds)
//! with the agent's monotonic clock. The only part of placement that is not a pure function.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::{Allocator, Claim};

pub struct PlacementState {
    alloc: Mutex<Allocator>,
    epoch: Instant,
}

impl PlacementState {
    pub fn new(alloc: Allocator) -> Self {
        Self {
            alloc: Mutex::new(alloc),
            epoch: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The allocator; a panic while holding it cannot leave it half-changed (every change is
    /// checked before it is made), so a poisoned lock is still safe to use.
    pub fn lock(&self) -> MutexGuard<'_, Allocator> {
        crate::sync::lock(&self.alloc)
    }

    /// Releases reservations whose time is up; the daemon calls this every second.
    pub fn expire(&self) -> Vec<Claim> {
        let now = self.now_ms();
        self.lock().expire(now)
    }
}
