//! The allocator as the daemon shares it: behind a mutex (every decision takes microseconds)
//! with the agent's monotonic clock. The only part of placement that is not a pure function.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::{Allocator, Claim};

pub struct PlacementState {
    alloc: Mutex<Allocator>,
    epoch: Instant,
    /// Whether the allocator holds the running guests' stored claims yet. Until then it knows
    /// only the host: every answer about capacity or claims would be a promise of CPUs that
    /// running guests may already have.
    rebuilt: AtomicBool,
}

impl PlacementState {
    pub fn new(alloc: Allocator) -> Self {
        Self {
            alloc: Mutex::new(alloc),
            epoch: Instant::now(),
            rebuilt: AtomicBool::new(false),
        }
    }

    /// Whether the running guests' stored claims are in the allocator.
    pub fn is_rebuilt(&self) -> bool {
        self.rebuilt.load(Ordering::Acquire)
    }

    /// Records that the allocator now holds the guests' stored claims.
    pub fn mark_rebuilt(&self) {
        self.rebuilt.store(true, Ordering::Release);
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
