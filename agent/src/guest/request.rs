//! What a create asks for, and the checks that run before anything is looked up or taken:
//! every field of the request, and the flavor against the image's needs.

use std::collections::BTreeMap;

use super::GIB;
use super::error::GuestError;
use crate::flavor::{self, FlavorSpec};
use crate::net::nic;
use crate::net::spec::HostAddress;
use crate::placement::allocator::{check_request_id, is_uuid};
use crate::storage::ImageRecord;
use crate::storage::images::check_name;

pub const MAX_USER_DATA: usize = 64 * 1024;
pub const MAX_SSH_KEYS: usize = 32;
pub const MAX_METADATA: usize = 64;
/// 100 Gbit/s: the highest per-NIC rate limit accepted.
pub const MAX_RATE_KBPS: u32 = 100_000_000;

#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub uuid: String,
    pub name: String,
    pub flavor: String,
    pub image: String,
    pub networks: Vec<String>,
    /// Per network (optional, in order): the guest's ADDRESS/PREFIX for the NoCloud
    /// network-config, and a MAC (else derived from the UUID and index).
    pub addresses: Vec<String>,
    pub macs: Vec<String>,
    /// Per network (optional, in order): rate limits in kbit/s into and out of the guest.
    pub ingress_kbps: Vec<u32>,
    pub egress_kbps: Vec<u32>,
    pub user_data: Vec<u8>,
    pub ssh_keys: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub reservation: String,
    /// For a flavor without a disk: the volume to boot from (else one is made from `image`).
    pub boot_volume: String,
}

/// Root disk size: the flavor's, else the image's `min_disk`, else its virtual size (whole
/// GiB). Refuses a flavor disk smaller than the image needs.
pub fn root_disk_bytes(spec: &FlavorSpec, image: &ImageRecord) -> Result<u64, GuestError> {
    // A min_disk or virtual size past what u64 bytes can hold is an image no disk fits.
    let too_big = || {
        GuestError::Precondition(format!(
            "image {:?} needs a root disk larger than any this node can make (min_disk {} GB, virtual size {} bytes)",
            image.name,
            image.min_disk_gb(),
            image.virtual_size_bytes
        ))
    };
    let min_disk_bytes = image.min_disk_gb().checked_mul(GIB).ok_or_else(too_big)?;
    let image_bytes = image
        .virtual_size_bytes
        .max(min_disk_bytes)
        .div_ceil(GIB)
        .checked_mul(GIB)
        .ok_or_else(too_big)?;
    match spec.disk.and_then(|d| d.size_gb) {
        Some(gb) => {
            let bytes = u64::from(gb) * GIB;
            if bytes < image_bytes {
                return Err(GuestError::Precondition(format!(
                    "flavor {} has a {gb} GB root disk; image {:?} needs at least {} GB (min_disk {}, virtual size {} bytes)",
                    spec.name(),
                    image.name,
                    image_bytes / GIB,
                    image.min_disk_gb(),
                    image.virtual_size_bytes
                )));
            }
            Ok(bytes)
        }
        None => Ok(image_bytes),
    }
}

pub(super) fn check_ram(spec: &FlavorSpec, image: &ImageRecord) -> Result<(), GuestError> {
    let ram_mib = u64::from(spec.ram_half_gib) * 512;
    if ram_mib < image.min_ram_mib() {
        return Err(GuestError::Precondition(format!(
            "flavor {} has {ram_mib} MiB of RAM; image {:?} needs at least {} MiB (min_ram)",
            spec.name(),
            image.name,
            image.min_ram_mib()
        )));
    }
    Ok(())
}

/// One NIC as Create (per network) and AttachInterface take it; "" and 0: not given.
pub(super) struct NicFields<'a> {
    pub network: &'a str,
    pub address: &'a str,
    pub mac: &'a str,
    pub ingress_kbps: u32,
    pub egress_kbps: u32,
}

/// The rules for one NIC's fields. Errors name a field by `label` of its Create list's name
/// (`networks`, `addresses`, `macs`, `ingress_kbps`, `egress_kbps`): `networks[2]` at Create,
/// `network` at AttachInterface.
pub(super) fn check_nic(
    nic: &NicFields<'_>,
    label: &dyn Fn(&str) -> String,
) -> Result<(), GuestError> {
    // A managed network's name or a host bridge's (an interface name).
    let valid = (1..=15).contains(&nic.network.len())
        && nic
            .network
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !valid {
        return Err(GuestError::Invalid(format!(
            "{}: must be an interface name of 1-15 characters of A-Z a-z 0-9 _ . -",
            label("networks")
        )));
    }
    for (field, rate) in [
        ("ingress_kbps", nic.ingress_kbps),
        ("egress_kbps", nic.egress_kbps),
    ] {
        if rate > MAX_RATE_KBPS {
            return Err(GuestError::Invalid(format!(
                "{}: at most {MAX_RATE_KBPS} (100 Gbit/s)",
                label(field)
            )));
        }
    }
    if !nic.address.is_empty() {
        nic.address
            .parse::<HostAddress>()
            .map_err(|e| GuestError::Invalid(format!("{}: {e}", label("addresses"))))?;
    }
    if !nic.mac.is_empty() {
        nic::parse_mac(nic.mac)
            .map_err(|e| GuestError::Invalid(format!("{}: {e}", label("macs"))))?;
    }
    Ok(())
}

/// Every field of `req`; the flavor it names.
pub(super) fn validate(req: &CreateRequest) -> Result<FlavorSpec, GuestError> {
    let invalid = |m: &str| Err(GuestError::Invalid(m.to_string()));
    if !is_uuid(&req.uuid) {
        return invalid("uuid: must be a UUID (8-4-4-4-12 hex digits)");
    }
    check_name("name", &req.name)?;
    if req.flavor.is_empty() {
        return invalid("flavor: must not be empty");
    }
    let spec = flavor::parse(&req.flavor)
        .map_err(|e| GuestError::Invalid(format!("flavor: {e}")))?
        .spec;
    if req.boot_volume.is_empty() {
        check_name("image", &req.image)?;
    } else {
        check_name("boot_volume", &req.boot_volume)?;
        if spec.disk.is_some() {
            return Err(GuestError::Invalid(format!(
                "boot_volume: flavor {} has a local root disk; a boot volume is for flavors without a disk",
                spec.name()
            )));
        }
        if !req.image.is_empty() {
            return invalid(
                "image: a guest that boots from a volume has no image (the volume holds its system): give image or boot_volume, not both",
            );
        }
    }
    if req.networks.len() > nic::MAX_NICS {
        return invalid("networks: at most 16");
    }
    let n = req.networks.len();
    if req.addresses.len() > n
        || req.macs.len() > n
        || req.ingress_kbps.len() > n
        || req.egress_kbps.len() > n
    {
        return invalid(
            "addresses, macs, ingress_kbps, egress_kbps: at most one per network, in the networks' order",
        );
    }
    for (i, network) in req.networks.iter().enumerate() {
        let nic = NicFields {
            network,
            address: req.addresses.get(i).map_or("", String::as_str),
            mac: req.macs.get(i).map_or("", String::as_str),
            ingress_kbps: req.ingress_kbps.get(i).copied().unwrap_or(0),
            egress_kbps: req.egress_kbps.get(i).copied().unwrap_or(0),
        };
        check_nic(&nic, &|field| format!("{field}[{i}]"))?;
    }
    if req.user_data.len() > MAX_USER_DATA {
        return invalid("user_data: at most 65536 bytes");
    }
    if req.ssh_keys.len() > MAX_SSH_KEYS
        || req
            .ssh_keys
            .iter()
            .any(|k| k.is_empty() || k.len() > 8192 || k.contains(['\n', '\r']))
    {
        return invalid("ssh_keys: at most 32 keys, each one line of 1-8192 characters");
    }
    if req.metadata.len() > MAX_METADATA
        || req
            .metadata
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 255 || v.len() > 1024)
    {
        return invalid("metadata: at most 64 entries, keys 1-255 and values 0-1024 characters");
    }
    if !req.reservation.is_empty() {
        check_request_id("reservation", &req.reservation)
            .map_err(|r| GuestError::Invalid(r.message))?;
    }
    Ok(spec)
}

/// A guest UUID from a request, lowercased as libvirt reports it.
pub(crate) fn checked_uuid(uuid: &str) -> Result<String, GuestError> {
    if is_uuid(uuid) {
        Ok(uuid.to_ascii_lowercase())
    } else {
        Err(GuestError::Invalid(
            "uuid: must be a UUID (8-4-4-4-12 hex digits)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(virtual_gib: u64, min_disk: &str, min_ram: &str) -> ImageRecord {
        ImageRecord {
            name: "img".into(),
            format: "qcow2".into(),
            virtual_size_bytes: virtual_gib * GIB + 1,
            file_bytes: 1,
            sha256: String::new(),
            properties: [
                ("min_disk".to_string(), min_disk.to_string()),
                ("min_ram".to_string(), min_ram.to_string()),
            ]
            .into(),
            created_unix: 0,
        }
    }

    fn spec(name: &str) -> FlavorSpec {
        flavor::parse(name).unwrap().spec
    }

    #[test]
    fn root_disk_comes_from_the_flavor_or_the_image() {
        // 2 GiB + 1 byte of virtual size rounds up to 3 GiB.
        assert_eq!(
            root_disk_bytes(&spec("SCS-1V-1-10"), &image(2, "0", "0")).unwrap(),
            10 * GIB
        );
        assert_eq!(
            root_disk_bytes(&spec("SCS-1V-1"), &image(2, "0", "0")).unwrap(),
            3 * GIB
        );
        assert_eq!(
            root_disk_bytes(&spec("SCS-1V-1"), &image(0, "5", "0")).unwrap(),
            5 * GIB
        );
        let e = root_disk_bytes(&spec("SCS-1V-1-2"), &image(0, "5", "0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flavor SCS-1V-1-2 has a 2 GB root disk; image \"img\" needs at least 5 GB (min_disk 5, virtual size 1 bytes)"
        );
        assert!(matches!(
            root_disk_bytes(&spec("SCS-1V-1-2"), &image(2, "0", "0")),
            Err(GuestError::Precondition(_))
        ));
    }

    /// A min_disk no disk can have is refused, not an arithmetic overflow.
    #[test]
    fn an_impossible_min_disk_is_refused() {
        for min_disk in [u64::MAX.to_string(), (u64::MAX / GIB + 1).to_string()] {
            let e = root_disk_bytes(&spec("SCS-1V-1"), &image(1, &min_disk, "0")).unwrap_err();
            assert!(matches!(e, GuestError::Precondition(_)), "{e}");
            assert!(
                e.to_string()
                    .contains("needs a root disk larger than any this node can make"),
                "{e}"
            );
        }
    }

    #[test]
    fn ram_must_cover_min_ram() {
        assert!(check_ram(&spec("SCS-1V-1"), &image(1, "0", "1024")).is_ok());
        let e = check_ram(&spec("SCS-1V-0.5"), &image(1, "0", "1024")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flavor SCS-1V-0.5 has 512 MiB of RAM; image \"img\" needs at least 1024 MiB (min_ram)"
        );
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        let ok = CreateRequest {
            uuid: "00000000-0000-4000-8000-000000000001".into(),
            name: "web".into(),
            flavor: "SCS-1V-1".into(),
            image: "img".into(),
            ..Default::default()
        };
        assert!(validate(&ok).is_ok());
        let err = |r: CreateRequest| validate(&r).unwrap_err().to_string();
        assert_eq!(
            err(CreateRequest {
                ssh_keys: vec!["a\nb".into()],
                ..ok.clone()
            }),
            "ssh_keys: at most 32 keys, each one line of 1-8192 characters"
        );
        assert_eq!(
            err(CreateRequest {
                networks: vec!["x; rm".into()],
                ..ok.clone()
            }),
            "networks[0]: must be an interface name of 1-15 characters of A-Z a-z 0-9 _ . -"
        );
        assert_eq!(
            err(CreateRequest {
                reservation: "a b".into(),
                ..ok.clone()
            }),
            "reservation: must be 1-128 characters of A-Z a-z 0-9 . _ : -"
        );
        assert_eq!(
            err(CreateRequest {
                image: "../etc".into(),
                ..ok.clone()
            }),
            "image: must be 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit"
        );
        assert_eq!(
            err(CreateRequest {
                metadata: [("".to_string(), "v".to_string())].into(),
                ..ok.clone()
            }),
            "metadata: at most 64 entries, keys 1-255 and values 0-1024 characters"
        );
        let net = |f: &dyn Fn(&mut CreateRequest)| {
            let mut r = CreateRequest {
                networks: vec!["seg".into()],
                ..ok.clone()
            };
            f(&mut r);
            validate(&r).map(drop).map_err(|e| e.to_string())
        };
        assert!(
            net(&|r| {
                r.addresses = vec!["10.0.0.2/24".into()];
                r.macs = vec!["02:00:00:00:00:09".into()];
                r.ingress_kbps = vec![1000];
            })
            .is_ok()
        );
        for (case, message) in [
            (
                &(|r: &mut CreateRequest| r.addresses = vec!["10.0.0.2".into()])
                    as &dyn Fn(&mut CreateRequest),
                "addresses[0]: \"10.0.0.2\" must be ADDRESS/PREFIX",
            ),
            (
                &|r: &mut CreateRequest| r.addresses = vec!["".into(), "10.0.0.3/24".into()],
                "addresses, macs, ingress_kbps, egress_kbps: at most one per network",
            ),
            (
                &|r: &mut CreateRequest| r.macs = vec!["01:00:5e:00:00:01".into()],
                "macs[0]: 01:00:5e:00:00:01 is a multicast address",
            ),
            (
                &|r: &mut CreateRequest| r.egress_kbps = vec![MAX_RATE_KBPS + 1],
                "egress_kbps[0]: at most 100000000 (100 Gbit/s)",
            ),
            (
                &|r: &mut CreateRequest| r.networks = vec!["n".into(); 17],
                "networks: at most 16",
            ),
        ] {
            let got = net(case).unwrap_err();
            assert!(got.starts_with(message), "{got}");
        }
    }
}
