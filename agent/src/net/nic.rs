//! Guest NIC identities: the tap's name and the MAC address, both derived from the guest's
//! UUID and the NIC's index so that a restarted agent finds the same ones again.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

/// Taps the agent makes start with this; a tap with it and no guest is a leftover.
pub const TAP_PREFIX: &str = "hv";
/// One hex digit of NIC index in the tap name.
pub const MAX_NICS: usize = 16;

/// `hv` + 11 hex digits of the UUID's SHA-256 + the index in hex: 14 characters, within
/// Linux's 15. Hashed, so that UUIDs sharing a prefix (sequential ones) still differ.
pub fn tap_name(uuid: &str, index: usize) -> String {
    let digest = Sha256::digest(uuid.to_ascii_lowercase().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{TAP_PREFIX}{}{index:x}", &hex[..11])
}

/// The part of a tap's name that names its guest: every tap of guest `uuid` starts with it.
fn owner_prefix(uuid: &str) -> String {
    let mut name = tap_name(uuid, 0);
    name.pop();
    name
}

/// The guests that may own taps, as they were when listed: the agent's guests, those with a
/// create or delete in flight, and domains whose metadata cannot be read. Every tap of any of
/// them is theirs, whatever its index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapOwners {
    prefixes: BTreeSet<String>,
}

impl TapOwners {
    pub fn new<'a>(uuids: impl IntoIterator<Item = &'a str>) -> TapOwners {
        TapOwners {
            prefixes: uuids.into_iter().map(owner_prefix).collect(),
        }
    }

    /// Whether `tap` belongs to one of these guests.
    pub fn owns(&self, tap: &str) -> bool {
        is_tap_name(tap) && self.prefixes.contains(&tap[..tap.len() - 1])
    }
}

/// Whether `name` is shaped like one of the agent's taps.
pub fn is_tap_name(name: &str) -> bool {
    name.len() == 14
        && name.starts_with(TAP_PREFIX)
        && name[TAP_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A locally administered unicast MAC from the UUID and index: stable, and unlike QEMU's
/// `52:54:00` prefix, not in anyone's vendor space.
pub fn derived_mac(uuid: &str, index: usize) -> [u8; 6] {
    let digest = Sha256::new()
        .chain_update(uuid.to_ascii_lowercase().as_bytes())
        .chain_update((index as u32).to_be_bytes())
        .finalize();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A caller's MAC: six colon-separated hex bytes, unicast (multicast bit clear), not zero.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!(
            "{text:?} must be six hex bytes like 02:00:00:00:00:01"
        ));
    }
    for (i, p) in parts.iter().enumerate() {
        // Two hex digits: from_str_radix alone takes a leading '+' ("+f").
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{text:?} must be six hex bytes like 02:00:00:00:00:01"
            ));
        }
        mac[i] = u8::from_str_radix(p, 16)
            .map_err(|_| format!("{text:?} must be six hex bytes like 02:00:00:00:00:01"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("{text} is a multicast address"));
    }
    if mac == [0; 6] {
        return Err("00:00:00:00:00:00 is not an address".into());
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0F1e2d3c-4b5a-4697-8877-665544332211";

    #[test]
    fn tap_names_fit_and_are_recognised() {
        let t = tap_name(UUID, 0);
        assert_eq!(t.len(), 14);
        assert_eq!(t, tap_name(&UUID.to_ascii_lowercase(), 0));
        assert_eq!(t[..13], tap_name(UUID, 15)[..13]);
        assert!(tap_name(UUID, 15).ends_with('f'));
        assert!(is_tap_name(&t));
        // Sequential UUIDs still get different taps.
        let a = tap_name("00000000-0000-4000-8000-000000000001", 0);
        let b = tap_name("00000000-0000-4000-8000-000000000002", 0);
        assert_ne!(a, b);
        for other in [
            "eth0",
            "hv0f1e2d3c4b5",
            "hv0f1e2d3c4b5g",
            "br-x",
            "hvXf1e2d3c4b50",
        ] {
            assert!(!is_tap_name(other), "{other}");
        }
    }

    #[test]
    fn owners_own_every_tap_of_their_guests_and_no_other() {
        let other = "00000000-0000-4000-8000-000000000002";
        let owners = TapOwners::new([UUID]);
        assert!(owners.owns(&tap_name(UUID, 0)));
        assert!(owners.owns(&tap_name(&UUID.to_ascii_lowercase(), 15)));
        assert!(!owners.owns(&tap_name(other, 0)));
        for foreign in ["vnet7", "br-ops", "hvtap0", ""] {
            assert!(!owners.owns(foreign), "{foreign}");
        }
        assert!(!TapOwners::default().owns(&tap_name(UUID, 0)));
    }

    #[test]
    fn macs_are_stable_local_unicast() {
        let a = derived_mac(UUID, 0);
        assert_eq!(a, derived_mac(&UUID.to_ascii_lowercase(), 0));
        assert_ne!(a, derived_mac(UUID, 1));
        for i in 0..MAX_NICS {
            let m = derived_mac(UUID, i);
            assert_eq!(m[0] & 0b11, 0b10, "locally administered, unicast");
        }
        let text = format_mac(&a);
        assert_eq!(parse_mac(&text).unwrap(), a);
    }

    #[test]
    fn caller_macs_are_checked() {
        assert!(parse_mac("02:00:00:00:00:01").is_ok());
        assert!(
            parse_mac("01:00:5e:00:00:01")
                .unwrap_err()
                .contains("multicast")
        );
        assert!(parse_mac("00:00:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:0g").is_err());
        assert!(parse_mac("002:00:00:00:00:01").is_err());
        // Rust's hex parser would read "+2" as 2.
        assert!(parse_mac("+2:00:00:00:00:01").is_err());
        assert!(parse_mac("02:00:00:00:00:+1").is_err());
    }
}
