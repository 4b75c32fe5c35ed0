//! Pure: what Placement holds against what it should hold, and the writes that make them
//! equal. The reporter reads, asks these functions, writes; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Resource class → amount, one consumer's part on one provider.
pub type Resources = BTreeMap<String, u64>;

/// One resource class's inventory as Placement holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub total: u64,
    pub reserved: u64,
    pub min_unit: u64,
    pub max_unit: u64,
    pub step_size: u64,
    pub allocation_ratio: f64,
}

/// What the last rounds found different from what Placement should hold
/// (`hvagent_placement_api_drift_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drift {
    /// The provider did not exist (first start, or deleted behind the agent's back).
    Provider,
    Inventory,
    Traits,
    /// A claim without an allocation.
    AllocationMissing,
    /// An allocation other than its claim.
    AllocationDifferent,
    /// An allocation on the provider whose consumer has no claim here.
    AllocationUnclaimed,
}

impl Drift {
    pub fn as_str(self) -> &'static str {
        match self {
            Drift::Provider => "provider",
            Drift::Inventory => "inventory",
            Drift::Traits => "traits",
            Drift::AllocationMissing => "allocation_missing",
            Drift::AllocationDifferent => "allocation_different",
            Drift::AllocationUnclaimed => "allocation_unclaimed",
        }
    }
}

/// Ratios are floats in Placement's database; equal within what a float column keeps.
pub fn inventories_equal(a: &BTreeMap<String, Inventory>, b: &BTreeMap<String, Inventory>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb
                && (
                    va.total,
                    va.reserved,
                    va.min_unit,
                    va.max_unit,
                    va.step_size,
                ) == (
                    vb.total,
                    vb.reserved,
                    vb.min_unit,
                    vb.max_unit,
                    vb.step_size,
                )
                && (va.allocation_ratio - vb.allocation_ratio).abs() < 1e-4
        })
}

/// The custom names among `names` (Placement knows only its standard ones by itself).
pub fn custom<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    names
        .into_iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("CUSTOM_"))
        .collect()
}

/// One write to a consumer's allocations.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Make the consumer's part on this provider exactly `resources`.
    Set {
        consumer: String,
        resources: Resources,
        drift: Drift,
    },
    /// Take the consumer's part on this provider away.
    Remove { consumer: String },
}

impl Write {
    pub fn consumer(&self) -> &str {
        match self {
            Write::Set { consumer, .. } | Write::Remove { consumer } => consumer,
        }
    }
}

/// The writes that make the allocations on the provider (`actual`) equal to the claims
/// (`desired`). An allocation that already matches is left alone, whoever wrote it. One whose
/// claim the reporter kept last time (`kept`) and which is gone now is removed: the guest was
/// deleted or its reservation released. Any other allocation without a claim is `unclaimed`:
/// removed only when `remove_unclaimed` (the caller reports it).
pub fn allocation_writes(
    desired: &BTreeMap<String, Resources>,
    actual: &BTreeMap<String, Resources>,
    kept: &BTreeSet<String>,
    removable_unclaimed: &BTreeSet<String>,
) -> Vec<Write> {
    let mut writes = Vec::new();
    for (consumer, resources) in desired {
        let drift = match actual.get(consumer) {
            Some(held) if held == resources => continue,
            Some(_) => Drift::AllocationDifferent,
            None => Drift::AllocationMissing,
        };
        writes.push(Write::Set {
            consumer: consumer.clone(),
            resources: resources.clone(),
            drift,
        });
    }
    for consumer in actual.keys().filter(|c| !desired.contains_key(*c)) {
        if kept.contains(consumer) || removable_unclaimed.contains(consumer) {
            writes.push(Write::Remove {
                consumer: consumer.clone(),
            });
        }
    }
    writes
}

/// Allocations without a claim, from when each was first seen: one is reported (and, if the
/// operator asks, removed) only once it has been there `grace_ms`, so the moment between a
/// scheduler's allocation and its `Reserve` on this node is not drift.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unclaimed {
    first_seen_ms: BTreeMap<String, u64>,
    reported: BTreeSet<String>,
}

impl Unclaimed {
    /// Updates from this round's unclaimed consumers; returns the ones reported for the first
    /// time now.
    pub fn update(&mut self, now: &BTreeSet<String>, now_ms: u64, grace_ms: u64) -> Vec<String> {
        self.first_seen_ms.retain(|c, _| now.contains(c));
        self.reported.retain(|c| now.contains(c));
        for c in now {
            self.first_seen_ms.entry(c.clone()).or_insert(now_ms);
        }
        let due: Vec<String> = self
            .first_seen_ms
            .iter()
            .filter(|(c, since)| {
                now_ms.saturating_sub(**since) >= grace_ms && !self.reported.contains(*c)
            })
            .map(|(c, _)| c.clone())
            .collect();
        self.reported.extend(due.iter().cloned());
        due
    }

    /// The unclaimed allocations past their grace.
    pub fn reported(&self) -> &BTreeSet<String> {
        &self.reported
    }
}

/// Who a consumer the agent writes first belongs to: Placement needs a project and a user, and
/// the agent knows neither (a scheduler's consumer keeps its own).
pub const OWN_PROJECT: &str = "hvagent";
pub const OWN_USER: &str = "hvagent";
/// Nova's consumer type for a guest (microversion 1.38).
pub const CONSUMER_TYPE: &str = "INSTANCE";

/// The body of `PUT /allocations/{consumer}`: the consumer's parts on other providers as they
/// are, this provider's part `resources` (none: removed), conditional on the generation read.
pub fn consumer_body(
    provider: &str,
    resources: Option<&Resources>,
    current: &super::client::Consumer,
) -> serde_json::Value {
    let mut allocations = serde_json::Map::new();
    for (rp, part) in current.allocations.iter().filter(|(rp, _)| *rp != provider) {
        allocations.insert(
            rp.clone(),
            serde_json::json!({ "resources": part.resources }),
        );
    }
    if let Some(resources) = resources {
        allocations.insert(
            provider.to_string(),
            serde_json::json!({ "resources": resources }),
        );
    }
    serde_json::json!({
        "allocations": allocations,
        "consumer_generation": current.consumer_generation,
        "project_id": current.project_id.as_deref().unwrap_or(OWN_PROJECT),
        "user_id": current.user_id.as_deref().unwrap_or(OWN_USER),
        "consumer_type": current.consumer_type.as_deref().unwrap_or(CONSUMER_TYPE),
    })
}

/// The provider's UUID when the agent creates it: derived from its name, so that the same
/// node gets the same provider back (also after its store is wiped).
pub fn provider_uuid(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h: [u8; 16] = Sha256::digest(format!("hvagent resource provider {name}").as_bytes())
        [..16]
        .try_into()
        .unwrap_or([0; 16]);
    // RFC 9562 version 8 (custom), variant 10.
    h[6] = (h[6] & 0x0f) | 0x80;
    h[8] = (h[8] & 0x3f) | 0x80;
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests;
