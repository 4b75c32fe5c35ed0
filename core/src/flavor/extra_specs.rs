//! Flavor properties (scs-0103): `scs:name-vN`, `scs:cpu-type`, `scs:diskN-type`, and the check
//! that a flavor's name and its extra_specs agree.

use std::collections::BTreeMap;

use super::{DiskType, FlavorSpec};

/// Every way to write the name, as the SCS certification tool numbers them: the distinct
/// names among {full, short} × {v1 syntax, v3 syntax}, longest first, v1 syntax first on ties.
pub fn name_variants(spec: &FlavorSpec) -> Vec<String> {
    let short = spec.short();
    let mut names = vec![
        (spec.name_v1(), 0),
        (spec.name(), 1),
        (short.name_v1(), 0),
        (short.name(), 1),
    ];
    names.sort_by(|a, b| {
        b.0.len()
            .cmp(&a.0.len())
            .then(a.1.cmp(&b.1))
            .then(a.0.cmp(&b.0))
    });
    names.dedup_by(|a, b| a.0 == b.0);
    names.into_iter().map(|(n, _)| n).collect()
}

/// The extra_specs a flavor with this name carries.
pub fn for_spec(spec: &FlavorSpec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (i, name) in name_variants(spec).into_iter().enumerate() {
        out.insert(format!("scs:name-v{}", i + 1), name);
    }
    out.insert("scs:cpu-type".into(), spec.cpu_type.key().into());
    if let Some(disk) = &spec.disk {
        // A disk of unspecified type counts as network storage, as the certification test does.
        let kind = disk.kind.unwrap_or(DiskType::Network).key();
        for i in 0..disk.count {
            out.insert(format!("scs:disk{i}-type"), kind.into());
        }
    }
    out
}

/// One disagreement between a name and its extra_specs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contradiction {
    pub key: String,
    pub found: String,
    /// What the name implies; empty when the key has no meaning for this name.
    pub expected: String,
}

impl std::fmt::Display for Contradiction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.expected.is_empty() {
            write!(
                f,
                "{} = {:?} does not apply to this flavor",
                self.key, self.found
            )
        } else {
            write!(
                f,
                "{} = {:?}, but the name says {:?}",
                self.key, self.found, self.expected
            )
        }
    }
}

/// Checks the `scs:` keys of `extra_specs` against the name; other keys are not ours.
pub fn check(spec: &FlavorSpec, extra_specs: &BTreeMap<String, String>) -> Vec<Contradiction> {
    let expected = for_spec(spec);
    let variants = name_variants(spec);
    extra_specs
        .iter()
        .filter(|(k, _)| k.starts_with("scs:"))
        .filter_map(|(key, found)| {
            let contradiction = |expected: &str| Contradiction {
                key: key.clone(),
                found: found.clone(),
                expected: expected.to_string(),
            };
            if key.starts_with("scs:name-v") {
                // Any variant of this flavor's name may stand under any version key.
                return (!variants.contains(found)).then(|| contradiction(&spec.name()));
            }
            match expected.get(key) {
                Some(want) if want == found => None,
                Some(want) => Some(contradiction(want)),
                None => Some(contradiction("")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavor::parse;

    fn specs(name: &str) -> BTreeMap<String, String> {
        for_spec(&parse(name).unwrap().spec)
    }

    #[test]
    fn standard_flavor_properties() {
        let e = specs("SCS-2V-4-20s");
        assert_eq!(e["scs:name-v1"], "SCS-2V:4:20s");
        assert_eq!(e["scs:name-v2"], "SCS-2V-4-20s");
        assert_eq!(e["scs:cpu-type"], "shared-core");
        assert_eq!(e["scs:disk0-type"], "ssd");
        assert_eq!(e.len(), 4);
        let e = specs("SCS-1L-1");
        assert_eq!(e["scs:name-v1"], "SCS-1L:1");
        assert_eq!(e["scs:cpu-type"], "crowded-core");
        assert!(!e.contains_key("scs:disk0-type"));
        assert_eq!(specs("SCS-1L-1-5")["scs:disk0-type"], "network");
    }

    #[test]
    fn long_names_have_four_variants() {
        let e = specs("SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64h_ib");
        assert_eq!(e["scs:name-v1"], "SCS-16T:64:3x10s-kvm-hwv-z3h-GNa:64h-ib");
        assert_eq!(e["scs:name-v2"], "SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64h_ib");
        assert_eq!(e["scs:name-v3"], "SCS-16T:64:3x10s-GNa:64-ib");
        assert_eq!(e["scs:name-v4"], "SCS-16T-64-3x10s_GNa-64_ib");
        for i in 0..3 {
            assert_eq!(e[&format!("scs:disk{i}-type")], "ssd");
        }
        assert!(!e.contains_key("scs:disk3-type"));
        assert_eq!(e["scs:cpu-type"], "dedicated-thread");
    }

    #[test]
    fn contradictions_are_named() {
        let spec = parse("SCS-2V-4-20s").unwrap().spec;
        let mut e = for_spec(&spec);
        assert!(check(&spec, &e).is_empty());
        e.insert("hw:cpu_policy".into(), "shared".into());
        assert!(check(&spec, &e).is_empty(), "non-scs keys are not ours");
        e.insert("scs:cpu-type".into(), "dedicated-core".into());
        e.insert("scs:disk0-type".into(), "hdd".into());
        e.insert("scs:disk1-type".into(), "ssd".into());
        e.insert("scs:name-v2".into(), "SCS-2V-4-20".into());
        let found: Vec<String> = check(&spec, &e).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            found,
            vec![
                "scs:cpu-type = \"dedicated-core\", but the name says \"shared-core\"",
                "scs:disk0-type = \"hdd\", but the name says \"ssd\"",
                "scs:disk1-type = \"ssd\" does not apply to this flavor",
                "scs:name-v2 = \"SCS-2V-4-20\", but the name says \"SCS-2V-4-20s\"",
            ]
        );
    }
}
