use super::*;
use crate::placement_api::client::{Consumer, ProviderPart};

fn res(pairs: &[(&str, u64)]) -> Resources {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn inv(total: u64, ratio: f64) -> Inventory {
    Inventory {
        total,
        reserved: 0,
        min_unit: 1,
        max_unit: total,
        step_size: 1,
        allocation_ratio: ratio,
    }
}

#[test]
fn a_matching_allocation_is_left_alone_and_the_others_are_written() {
    let desired = BTreeMap::from([
        ("a".to_string(), res(&[("PCPU", 2), ("MEMORY_MB", 1024)])),
        ("b".to_string(), res(&[("VCPU", 1)])),
        ("c".to_string(), res(&[("VCPU", 4)])),
    ]);
    let actual = BTreeMap::from([
        // As a scheduler wrote it: exactly the claim.
        ("a".to_string(), res(&[("PCPU", 2), ("MEMORY_MB", 1024)])),
        // The scheduler asked for VCPU where the claim is 4.
        ("c".to_string(), res(&[("VCPU", 2)])),
    ]);
    let writes = allocation_writes(&desired, &actual, &BTreeSet::new(), &BTreeSet::new());
    assert_eq!(
        writes,
        vec![
            Write::Set {
                consumer: "b".into(),
                resources: res(&[("VCPU", 1)]),
                drift: Drift::AllocationMissing,
            },
            Write::Set {
                consumer: "c".into(),
                resources: res(&[("VCPU", 4)]),
                drift: Drift::AllocationDifferent,
            },
        ]
    );
}

#[test]
fn a_released_claim_loses_its_allocation_an_unclaimed_one_only_when_asked() {
    let desired = BTreeMap::new();
    let actual = BTreeMap::from([
        ("released".to_string(), res(&[("VCPU", 1)])),
        ("foreign".to_string(), res(&[("VCPU", 1)])),
    ]);
    let kept = set(&["released"]);
    assert_eq!(
        allocation_writes(&desired, &actual, &kept, &BTreeSet::new()),
        vec![Write::Remove {
            consumer: "released".into()
        }]
    );
    let writes = allocation_writes(&desired, &actual, &kept, &set(&["foreign"]));
    let removed: Vec<&str> = writes.iter().map(Write::consumer).collect();
    assert_eq!(removed, ["foreign", "released"]);
    // Kept but already gone from Placement: nothing to do.
    assert!(allocation_writes(&desired, &BTreeMap::new(), &kept, &BTreeSet::new()).is_empty());
}

#[test]
fn an_unclaimed_allocation_is_reported_once_after_its_grace() {
    let mut u = Unclaimed::default();
    assert!(u.update(&set(&["x"]), 1_000, 30_000).is_empty());
    assert!(u.update(&set(&["x", "y"]), 20_000, 30_000).is_empty());
    assert_eq!(u.update(&set(&["x", "y"]), 31_000, 30_000), ["x"]);
    assert_eq!(u.reported(), &set(&["x"]));
    // Reported once, not again every round.
    assert!(u.update(&set(&["x", "y"]), 40_000, 30_000).is_empty());
    // Its Reserve arrived: y is claimed now, gone from the set; x is still there.
    assert!(u.update(&set(&["x"]), 60_000, 30_000).is_empty());
    assert_eq!(u.reported(), &set(&["x"]));
    // x removed; back later, it waits its grace again.
    assert!(u.update(&set(&[]), 61_000, 30_000).is_empty());
    assert!(u.reported().is_empty());
    assert!(u.update(&set(&["x"]), 62_000, 30_000).is_empty());
}

#[test]
fn the_consumer_body_keeps_other_providers_and_the_generation() {
    let current = Consumer {
        allocations: BTreeMap::from([
            (
                "mine".to_string(),
                ProviderPart {
                    resources: res(&[("VCPU", 2)]),
                },
            ),
            (
                "sharing-disk".to_string(),
                ProviderPart {
                    resources: res(&[("DISK_GB", 20)]),
                },
            ),
        ]),
        consumer_generation: Some(3),
        project_id: Some("p".into()),
        user_id: Some("u".into()),
        consumer_type: Some("MIGRATION".into()),
    };
    let body = consumer_body("mine", Some(&res(&[("VCPU", 4)])), &current);
    assert_eq!(
        body,
        serde_json::json!({
            "allocations": {
                "mine": {"resources": {"VCPU": 4}},
                "sharing-disk": {"resources": {"DISK_GB": 20}},
            },
            "consumer_generation": 3,
            "project_id": "p",
            "user_id": "u",
            "consumer_type": "MIGRATION",
        })
    );
    let removed = consumer_body("mine", None, &current);
    assert_eq!(
        removed["allocations"],
        serde_json::json!({"sharing-disk": {"resources": {"DISK_GB": 20}}})
    );
    // A consumer Placement does not know yet: generation null, the agent's own project.
    let new = consumer_body("mine", Some(&res(&[("VCPU", 1)])), &Consumer::default());
    assert_eq!(new["consumer_generation"], serde_json::Value::Null);
    assert_eq!(new["project_id"], OWN_PROJECT);
    assert_eq!(new["consumer_type"], CONSUMER_TYPE);
}

#[test]
fn inventories_compare_ratios_as_floats_are_stored() {
    let a = BTreeMap::from([("VCPU".to_string(), inv(8, 3.0))]);
    let b = BTreeMap::from([("VCPU".to_string(), inv(8, 3.000_000_1))]);
    assert!(inventories_equal(&a, &b));
    let c = BTreeMap::from([("VCPU".to_string(), inv(8, 2.0))]);
    assert!(!inventories_equal(&a, &c));
    let mut d = b.clone();
    d.insert("PCPU".into(), inv(2, 1.0));
    assert!(!inventories_equal(&a, &d));
    let mut e = a.clone();
    e.get_mut("VCPU").unwrap().reserved = 1;
    assert!(!inventories_equal(&a, &e));
}

#[test]
fn only_custom_names_are_created() {
    let names = set(&["CUSTOM_HUGEPAGES_2M", "MEMORY_MB", "CUSTOM_SCS_V1"]);
    assert_eq!(custom(&names), ["CUSTOM_HUGEPAGES_2M", "CUSTOM_SCS_V1"]);
}

#[test]
fn the_provider_uuid_is_stable_per_name_and_well_formed() {
    let a = provider_uuid("node-1");
    assert_eq!(a, provider_uuid("node-1"));
    assert_ne!(a, provider_uuid("node-2"));
    assert_eq!(a.len(), 36);
    assert!(crate::placement::allocator::is_uuid(&a), "{a}");
    assert_eq!(&a[14..15], "8", "version 8: {a}");
}
