//! What the reporter last found, shared with the health sampler: the `PlacementSync`
//! condition and the `hvagent_placement_api_*` metrics (docs/health.md).

use std::collections::BTreeMap;
use std::sync::Mutex;

use hvagent_core::counts::KindCounts;
use hvagent_core::sync::lock;

/// The `PlacementSync` condition as the reporter sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Sync {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The metrics' figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Unix ms of the last round that found (or made) Placement right.
    pub last_success_unix_ms: Option<u64>,
    pub failures: u64,
    pub calls: BTreeMap<String, u64>,
    pub drift: BTreeMap<String, u64>,
    pub unclaimed: u64,
}

#[derive(Debug, Default)]
struct Inner {
    sync: Option<Sync>,
    last_success_unix_ms: Option<u64>,
    failures: u64,
    unclaimed: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<Inner>,
    pub calls: KindCounts,
    pub drift: KindCounts,
}

impl Status {
    /// The condition: `Pending` until the first round ends.
    pub fn sync(&self) -> Sync {
        lock(&self.inner).sync.clone().unwrap_or(Sync {
            status: false,
            reason: "Pending",
            message: "not synchronised with Placement yet".into(),
        })
    }

    pub fn figures(&self) -> Figures {
        let inner = lock(&self.inner);
        Figures {
            last_success_unix_ms: inner.last_success_unix_ms,
            failures: inner.failures,
            calls: self.calls.get(),
            drift: self.drift.get(),
            unclaimed: inner.unclaimed.len() as u64,
        }
    }

    /// A round ended with Placement right; `unclaimed` are the allocations without a claim
    /// past their grace (kept unless `remove_unclaimed`).
    pub fn succeeded(&self, provider: &str, unclaimed: Vec<String>, remove_unclaimed: bool) {
        let mut inner = lock(&self.inner);
        let mut message =
            format!("provider {provider}: inventories, traits and allocations match the claims");
        if let Some(first) = unclaimed.first() {
            let more = match unclaimed.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            message.push_str(&format!(
                "; allocations without a claim here: {first}{more} ({})",
                if remove_unclaimed {
                    "being removed: remove_unclaimed = true"
                } else {
                    "kept: set [placement_api] remove_unclaimed = true to remove them"
                }
            ));
        }
        inner.sync = Some(Sync {
            status: true,
            reason: if unclaimed.is_empty() {
                "Synced"
            } else {
                "UnclaimedAllocations"
            },
            message,
        });
        inner.last_success_unix_ms = Some(hvagent_core::now_unix_ms());
        inner.unclaimed = unclaimed;
    }

    pub fn failed(&self, reason: &'static str, message: String) {
        let mut inner = lock(&self.inner);
        inner.failures += 1;
        inner.sync = Some(Sync {
            status: false,
            reason,
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_then_failed_then_synced_with_unclaimed() {
        let s = Status::default();
        assert_eq!((s.sync().status, s.sync().reason), (false, "Pending"));
        assert_eq!(s.figures().last_success_unix_ms, None);
        s.failed("Unreachable", "GET /resource_providers: no answer".into());
        assert_eq!(s.sync().message, "GET /resource_providers: no answer");
        assert_eq!(s.figures().failures, 1);
        s.succeeded("n (u)", vec!["a".into(), "b".into()], false);
        let sync = s.sync();
        assert_eq!((sync.status, sync.reason), (true, "UnclaimedAllocations"));
        assert!(sync.message.contains("a and 1 more"), "{}", sync.message);
        assert!(
            sync.message.contains("remove_unclaimed = true to remove"),
            "{}",
            sync.message
        );
        assert_eq!(s.figures().unclaimed, 2);
        assert!(s.figures().last_success_unix_ms.is_some());
        s.succeeded("n (u)", Vec::new(), false);
        assert_eq!(s.sync().reason, "Synced");
        assert_eq!(s.figures().failures, 1, "failures are a counter");
    }
}
