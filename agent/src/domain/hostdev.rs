//! The `<hostdev>` elements of a guest's passed-through PCI devices (its claim's GPUs and
//! InfiniBand HCAs): VFIO, `managed='yes'` so libvirt binds each device to vfio-pci when the
//! guest starts and gives it back to the host driver when it stops.

use serde::Serialize;

use super::XmlError;
use crate::placement::Claim;

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename = "hostdev")]
pub(super) struct Hostdev {
    #[serde(rename = "@mode")]
    mode: &'static str,
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@managed")]
    managed: &'static str,
    source: Source,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct Source {
    address: PciAddress,
}

/// A host PCI address in libvirt's form: hex numbers with `0x`.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct PciAddress {
    #[serde(rename = "@domain")]
    domain: String,
    #[serde(rename = "@bus")]
    bus: String,
    #[serde(rename = "@slot")]
    slot: String,
    #[serde(rename = "@function")]
    function: String,
}

/// Largest slot (device) number on a PCI bus.
const MAX_SLOT: u32 = 0x1f;
/// Largest function number of a PCI device.
const MAX_FUNCTION: u32 = 7;

impl PciAddress {
    /// Parses sysfs's `DDDD:BB:SS.F` (`0000:3b:00.0`).
    fn parse(address: &str) -> Result<PciAddress, XmlError> {
        let bad = |why: &str| {
            XmlError(format!(
                "bad PCI address {address:?}: {why} (want DDDD:BB:SS.F, e.g. 0000:3b:00.0)"
            ))
        };
        let hex = |s: &str, digits: usize, what: &str| {
            if s.len() == digits && s.chars().all(|c| c.is_ascii_hexdigit()) {
                u32::from_str_radix(s, 16).map_err(|_| bad(what))
            } else {
                Err(bad(&format!("the {what} must be {digits} hex digits")))
            }
        };
        let mut parts = address.split(':');
        let (Some(domain), Some(bus), Some(device), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three parts separated by ':'"));
        };
        let (slot, function) = device
            .split_once('.')
            .ok_or_else(|| bad("no '.' before the function"))?;
        let domain = hex(domain, 4, "domain")?;
        let bus = hex(bus, 2, "bus")?;
        let slot = hex(slot, 2, "slot")?;
        let function = hex(function, 1, "function")?;
        if slot > MAX_SLOT {
            return Err(bad("slot above 0x1f"));
        }
        if function > MAX_FUNCTION {
            return Err(bad("function above 7"));
        }
        Ok(PciAddress {
            domain: format!("{domain:#06x}"),
            bus: format!("{bus:#04x}"),
            slot: format!("{slot:#04x}"),
            function: format!("{function:#x}"),
        })
    }
}

/// One `<hostdev>` per PCI address the claim holds, GPUs first.
pub(super) fn from_claim(claim: &Claim) -> Result<Vec<Hostdev>, XmlError> {
    claim
        .gpus
        .iter()
        .chain(&claim.infiniband)
        .map(|address| {
            Ok(Hostdev {
                mode: "subsystem",
                kind: "pci",
                managed: "yes",
                source: Source {
                    address: PciAddress::parse(address)?,
                },
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "hostdev/tests.rs"]
mod tests;

#[cfg(test)]
#[path = "hostdev/release_tests.rs"]
mod release_tests;
