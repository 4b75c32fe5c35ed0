//! The scs-0103 standard flavors, as the SCS certification test lists them: mandatory first,
//! then recommended. Their extra_specs (with the disk types the test expects) come from
//! [`super::extra_specs::for_spec`].

use super::{FlavorSpec, parse};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardFlavor {
    pub name: &'static str,
    pub mandatory: bool,
}

const MANDATORY: &[&str] = &[
    "SCS-1V-4",
    "SCS-2V-8",
    "SCS-4V-16",
    "SCS-8V-32",
    "SCS-1V-2",
    "SCS-2V-4",
    "SCS-4V-8",
    "SCS-8V-16",
    "SCS-16V-32",
    "SCS-1V-8",
    "SCS-2V-16",
    "SCS-4V-32",
    "SCS-1L-1",
    "SCS-2V-4-20s",
    "SCS-4V-16-100s",
];

const RECOMMENDED: &[&str] = &[
    "SCS-1V-4-10",
    "SCS-2V-8-20",
    "SCS-4V-16-50",
    "SCS-8V-32-100",
    "SCS-1V-2-5",
    "SCS-2V-4-10",
    "SCS-4V-8-20",
    "SCS-8V-16-50",
    "SCS-16V-32-100",
    "SCS-1V-8-20",
    "SCS-2V-16-50",
    "SCS-4V-32-100",
    "SCS-1L-1-5",
];

/// Every standard flavor, mandatory ones first.
pub fn standard() -> impl Iterator<Item = StandardFlavor> {
    MANDATORY
        .iter()
        .map(|name| StandardFlavor {
            name,
            mandatory: true,
        })
        .chain(RECOMMENDED.iter().map(|name| StandardFlavor {
            name,
            mandatory: false,
        }))
}

impl StandardFlavor {
    /// The parsed spec; every catalog name is valid (a unit test holds it to that).
    pub fn spec(&self) -> Option<FlavorSpec> {
        parse(self.name).ok().map(|p| p.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_canonical_and_complete() {
        let all: Vec<StandardFlavor> = standard().collect();
        assert_eq!(all.iter().filter(|f| f.mandatory).count(), 15);
        assert_eq!(all.len(), 28);
        for f in &all {
            let spec = f.spec().unwrap_or_else(|| panic!("{} must parse", f.name));
            assert_eq!(spec.name(), f.name, "catalog names are canonical");
            assert_eq!(spec.short(), spec, "standard flavors are short names");
        }
        let ssd: Vec<&str> = all
            .iter()
            .filter(|f| {
                super::super::extra_specs::for_spec(&f.spec().unwrap())
                    .get("scs:disk0-type")
                    .map(String::as_str)
                    == Some("ssd")
            })
            .map(|f| f.name)
            .collect();
        assert_eq!(ssd, vec!["SCS-2V-4-20s", "SCS-4V-16-100s"]);
    }
}
