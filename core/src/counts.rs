//! Counts by kind, shared between whoever counts (network repairs, pinning repairs) and the
//! metrics endpoint that exports them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// Counts by kind (`hvagent_network_repairs_total{kind}`, `hvagent_pinning_repairs_total{kind}`).
#[derive(Debug, Clone, Default)]
pub struct KindCounts(Arc<Mutex<BTreeMap<String, u64>>>);

impl KindCounts {
    pub fn inc(&self, kind: &str) {
        *lock(&self.0).entry(kind.to_string()).or_default() += 1;
    }

    pub fn get(&self) -> BTreeMap<String, u64> {
        lock(&self.0).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let c = KindCounts::default();
        c.inc("a");
        c.clone().inc("a");
        c.inc("b");
        assert_eq!(c.get(), BTreeMap::from([("a".into(), 2), ("b".into(), 1)]));
    }
}
