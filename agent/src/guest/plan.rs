//! What a new guest looks like, decided from the request, its image, its claim and the host:
//! its NICs, extra disks, NoCloud metadata, taps and domain spec. Pure: `create` takes and
//! makes what these say, and undoes it.

use std::path::{Path, PathBuf};

use super::GIB;
use super::GuestError;
use super::TCG_CACHE_MIB;
use super::request::CreateRequest;
use crate::domain::firmware::{Firmware, FirmwareFacts, ImageFirmware};
use crate::domain::volume_disk::DiskSource;
use crate::domain::xml::{
    BootVolume, DiskBus, DiskSpec, Emulation, GuestSpec, Intent, NicAttach, NicIntent, NicSpec,
};
use crate::flavor::FlavorSpec;
use crate::net::spec::NetworkSpec;
use crate::net::{GuestTap, nic};
use crate::placement::Claim;
use crate::storage::disks::MetaData;
use crate::storage::{GuestFiles, ImageRecord};

/// A validated create request and what was decided for it before anything is taken.
#[derive(Clone, Copy)]
pub(super) struct CreatePlan<'a> {
    pub req: &'a CreateRequest,
    pub uuid: &'a str,
    pub spec: &'a FlavorSpec,
    /// `None` for a guest that boots from a volume given at Create.
    pub image: Option<&'a ImageRecord>,
    pub boot: &'a Boot,
    pub emulation: Emulation,
    /// Machine type, BIOS or UEFI, TPM: from the image, on this node ([`firmware`]).
    pub firmware: Firmware,
    /// Per network: how the NIC attaches, the managed network's spec, MAC and address.
    pub nics: &'a [PlannedNic],
}

/// What a guest boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Boot {
    /// Its local root disk of this many bytes (`root.qcow2`, an overlay on the image): the
    /// flavors with a disk.
    Local { bytes: u64 },
    /// A volume: the flavors without a disk. Given at Create, or made from the image for this
    /// guest (`made`: an overlay in the volume store, deleted with the guest).
    Volume {
        name: String,
        source: DiskSource,
        format: &'static str,
        bytes: u64,
        made: bool,
    },
}

/// The name of the volume the agent makes for guest `uuid` when its flavor has no disk and
/// the Create names no volume.
pub(super) fn made_volume_name(uuid: &str) -> String {
    format!("root-{uuid}")
}

pub(super) struct PlannedNic {
    pub attach: NicAttach,
    pub network: Option<NetworkSpec>,
    pub intent: NicIntent,
}

/// What placement gave the guest: its claim and where its vCPUs and emulator run.
pub(super) struct Placed {
    pub claim: Claim,
    pub vcpu_cpus: Vec<Vec<u32>>,
    pub emulator_cpus: Vec<u32>,
}

/// The firmware a guest of `image` gets on a node that offers `node`: the image's properties
/// were checked at import, so what can fail here is the node lacking OVMF or swtpm. A guest
/// booted from a volume given at Create has no image and is a BIOS guest on `pc`.
pub(super) fn firmware(
    image: Option<&ImageRecord>,
    node: &FirmwareFacts,
) -> Result<Firmware, GuestError> {
    let Some(image) = image else {
        return Ok(Firmware::default());
    };
    let wanted = ImageFirmware::from_properties(&image.properties).map_err(|e| {
        GuestError::Precondition(format!("image: {:?} has properties {e}", image.name))
    })?;
    wanted
        .on(node)
        .map_err(|e| GuestError::Precondition(format!("image: {:?}: {e}", image.name)))
}

/// NIC `index` of the request: the MAC given (else derived from the UUID and index), the
/// address and the rate limits.
pub(super) fn nic_intent(req: &CreateRequest, uuid: &str, index: usize) -> NicIntent {
    let given = |v: &[String]| v.get(index).filter(|s| !s.is_empty()).cloned();
    NicIntent {
        mac: given(&req.macs)
            .map(|m| m.to_ascii_lowercase())
            .unwrap_or_else(|| nic::format_mac(&nic::derived_mac(uuid, index))),
        address: given(&req.addresses).unwrap_or_default(),
        ingress_kbps: req.ingress_kbps.get(index).copied().unwrap_or(0),
        egress_kbps: req.egress_kbps.get(index).copied().unwrap_or(0),
        slot: None,
    }
}

/// The flavor's disks after the root disk: their paths and sizes.
pub(super) fn extra_disks(spec: &FlavorSpec, files: &GuestFiles) -> Vec<(PathBuf, u64)> {
    spec.disk
        .map(|d| {
            (1..d.count)
                .map(|i| (files.extra_disk(i), u64::from(d.size_gb.unwrap_or(1)) * GIB))
                .collect()
        })
        .unwrap_or_default()
}

/// The NoCloud meta-data of the guest.
pub(super) fn meta_data(plan: &CreatePlan<'_>) -> MetaData {
    MetaData {
        instance_id: plan.uuid.to_string(),
        local_hostname: plan.req.name.clone(),
        public_keys: plan.req.ssh_keys.clone(),
    }
}

/// The taps of guest `uuid` in managed networks, from its NICs in order (each with its
/// managed network, if it is in one).
pub(super) fn guest_taps(
    uuid: &str,
    nics: impl Iterator<Item = (Option<NetworkSpec>, NicIntent)>,
) -> Vec<GuestTap> {
    nics.enumerate()
        .filter_map(|(i, (network, nic))| {
            network.map(|network| GuestTap {
                name: nic::tap_name(uuid, nic.slot_at(i)),
                network,
                ingress_kbps: nic.ingress_kbps,
                egress_kbps: nic.egress_kbps,
            })
        })
        .collect()
}

/// A NIC's tap in a host bridge (libvirt makes it, under the agent's tap name) and its rate
/// limits, which the agent applies once the guest runs.
pub(super) struct HostTap {
    pub name: String,
    pub ingress_kbps: u32,
    pub egress_kbps: u32,
}

/// The taps of guest `uuid` in host bridges that have a rate limit, from its NICs in order
/// (each with whether it is in a managed network).
pub(super) fn host_taps<'a>(
    uuid: &str,
    nics: impl Iterator<Item = (bool, &'a NicIntent)>,
) -> Vec<HostTap> {
    nics.enumerate()
        .filter(|(_, (managed, nic))| !managed && (nic.ingress_kbps > 0 || nic.egress_kbps > 0))
        .map(|(i, (_, nic))| HostTap {
            name: nic::tap_name(uuid, nic.slot_at(i)),
            ingress_kbps: nic.ingress_kbps,
            egress_kbps: nic.egress_kbps,
        })
        .collect()
}

/// The CPU flags a guest of `spec` requires: the host CPU's (`host_flags`) random number
/// instructions, and its virtualization extensions for a `_hwv` flavor.
pub(super) fn cpu_features(spec: &FlavorSpec, host_flags: &[String]) -> Vec<String> {
    let host_has = |f: &&str| host_flags.iter().any(|h| h == f);
    let mut cpu_features: Vec<String> = ["rdrand", "rdseed"]
        .into_iter()
        .filter(host_has)
        .map(String::from)
        .collect();
    if spec.hwv {
        cpu_features.extend(
            ["vmx", "svm"]
                .into_iter()
                .filter(host_has)
                .map(String::from),
        );
    }
    cpu_features
}

/// The domain of the guest, with the agent's intent (what `get` and the start-up rebuild read
/// back) in its metadata. `host_flags` are the host CPU's: only features it has are passed on.
pub(super) fn guest_spec(
    plan: &CreatePlan<'_>,
    placed: Placed,
    files: &GuestFiles,
    storage_root: &Path,
    host_flags: &[String],
    created_unix: u64,
) -> GuestSpec {
    let CreatePlan {
        req,
        uuid,
        spec,
        image,
        emulation,
        nics,
        firmware,
        ..
    } = *plan;
    let cpu_features = cpu_features(spec, host_flags);
    let file = |path, format| DiskSpec {
        source: DiskSource::File(path),
        format,
        readonly: false,
    };
    let mut disks = vec![match plan.boot {
        Boot::Local { .. } => file(files.root_disk(), "qcow2"),
        Boot::Volume { source, format, .. } => DiskSpec {
            source: source.clone(),
            format,
            readonly: false,
        },
    }];
    disks.extend(
        extra_disks(spec, files)
            .into_iter()
            .map(|(path, _)| file(path, "qcow2")),
    );
    disks.push(DiskSpec {
        readonly: true,
        ..file(files.seed(), "raw")
    });
    let property = |key: &str| image.and_then(|i| i.properties.get(key));
    let intent = Intent {
        store: storage_root.to_path_buf(),
        name: req.name.clone(),
        flavor: spec.name(),
        request_id: placed.claim.request_id.clone(),
        image: image.map(|i| i.name.clone()).unwrap_or_default(),
        boot_volume: match plan.boot {
            Boot::Local { .. } => None,
            Boot::Volume { name, made, .. } => Some(BootVolume {
                name: name.clone(),
                made: *made,
            }),
        },
        networks: req.networks.clone(),
        nics: nics.iter().map(|n| n.intent.clone()).collect(),
        metadata: req.metadata.clone(),
        claim: placed.claim,
        emulation,
        created_unix,
        resize: None,
        firmware,
    };
    GuestSpec {
        uuid: uuid.to_string(),
        intent,
        vcpu_cpus: placed.vcpu_cpus,
        emulator_cpus: placed.emulator_cpus,
        cpu_features,
        disks,
        disk_bus: property("hw_disk_bus")
            .and_then(|b| DiskBus::parse(b))
            .unwrap_or(DiskBus::Virtio),
        nics: nics
            .iter()
            .map(|n| NicSpec {
                attach: n.attach.clone(),
                mac: n.intent.mac.clone(),
            })
            .collect(),
        console_log: files.console_log(),
        nvram: files.nvram(),
        rng: property("hw_rng_model").is_some_and(|m| m == "virtio"),
        tcg_cache_mib: TCG_CACHE_MIB,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{Allocator, ClaimRequest, Policy};

    fn image(properties: &[(&str, &str)]) -> ImageRecord {
        ImageRecord {
            name: "img".into(),
            format: "qcow2".into(),
            virtual_size_bytes: GIB,
            file_bytes: 1,
            sha256: String::new(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_unix: 0,
        }
    }

    /// A claim for `uuid` on a captured two-socket host (which lacks KVM, so without `_hwv`).
    fn placed(uuid: &str) -> Placed {
        let topology = crate::placement::testing::fixture("qemu-2s4c2t-numa");
        let mut alloc = Allocator::new(topology, Policy::default()).unwrap();
        let request = ClaimRequest {
            vm_uuid: uuid.into(),
            request_id: "r1".into(),
            flavor: crate::flavor::parse("SCS-2Vi-1u").unwrap().spec,
        };
        let claim = alloc.claim(&request, 0).unwrap();
        Placed {
            vcpu_cpus: alloc.vcpu_cpus(&claim),
            emulator_cpus: alloc.emulator_cpus(&claim),
            claim,
        }
    }

    /// The flavor's extra disks after the root disk and before the seed, only the CPU
    /// features the host has, the image's disk bus and RNG, and MACs given or derived.
    /// Only NICs in host bridges with a limit have a host tap to limit, each under the tap
    /// name the domain gives libvirt for that NIC.
    #[test]
    fn host_taps_are_the_limited_nics_in_host_bridges() {
        let uuid = "00000000-0000-4000-8000-000000000001";
        let limited = NicIntent {
            ingress_kbps: 8000,
            ..NicIntent::default()
        };
        let sending = NicIntent {
            egress_kbps: 4000,
            ..NicIntent::default()
        };
        let nics = [
            (true, &limited),
            (false, &limited),
            (false, &NicIntent::default()),
            (false, &sending),
        ];
        let taps: Vec<_> = host_taps(uuid, nics.into_iter())
            .into_iter()
            .map(|t| (t.name, t.ingress_kbps, t.egress_kbps))
            .collect();
        assert_eq!(
            taps,
            [
                (nic::tap_name(uuid, 1), 8000, 0),
                (nic::tap_name(uuid, 3), 0, 4000)
            ]
        );
    }

    #[test]
    fn the_domain_follows_flavor_image_host_and_request() {
        let uuid = "00000000-0000-4000-8000-000000000001";
        let req = CreateRequest {
            uuid: uuid.into(),
            name: "web".into(),
            networks: vec!["br0".into(), "br1".into()],
            macs: vec!["02:00:00:00:00:AA".into()],
            ..Default::default()
        };
        let spec = crate::flavor::parse("SCS-2Vi-1u-3x10_hwv").unwrap().spec;
        let image = image(&[("hw_disk_bus", "sata"), ("hw_rng_model", "virtio")]);
        let nics: Vec<PlannedNic> = (0..2)
            .map(|i| PlannedNic {
                attach: NicAttach::Bridge {
                    bridge: format!("br{i}"),
                    tap: nic::tap_name(uuid, i),
                },
                network: None,
                intent: nic_intent(&req, uuid, i),
            })
            .collect();
        let plan = CreatePlan {
            req: &req,
            uuid,
            spec: &spec,
            image: Some(&image),
            boot: &Boot::Local { bytes: 10 * GIB },
            emulation: Emulation::Tcg,
            nics: &nics,
            firmware: Firmware::default(),
        };
        let root = Path::new("/srv");
        let files = GuestFiles::new(root, uuid);
        let host = ["rdseed".to_string(), "svm".to_string()];
        let placed = placed(uuid);
        let pins = placed.vcpu_cpus.clone();
        let g = guest_spec(&plan, placed, &files, root, &host, 7);
        assert_eq!(g.cpu_features, ["rdseed", "svm"]);
        let disks: Vec<_> = g
            .disks
            .iter()
            .map(|d| (d.source.clone(), d.readonly))
            .collect();
        assert_eq!(
            disks,
            [
                (DiskSource::File(files.root_disk()), false),
                (DiskSource::File(files.extra_disk(1)), false),
                (DiskSource::File(files.extra_disk(2)), false),
                (DiskSource::File(files.seed()), true),
            ]
        );
        assert_eq!(g.intent.boot_volume, None);
        assert_eq!(
            extra_disks(&spec, &files)
                .iter()
                .map(|(_, bytes)| bytes / GIB)
                .collect::<Vec<_>>(),
            [10, 10]
        );
        assert_eq!(g.disk_bus, DiskBus::parse("sata").unwrap());
        assert!(g.rng);
        assert_eq!(g.nics[0].mac, "02:00:00:00:00:aa");
        assert_eq!(g.nics[1].mac, nic::format_mac(&nic::derived_mac(uuid, 1)));
        assert_eq!(g.intent.store, root);
        assert_eq!(g.intent.created_unix, 7);
        assert_eq!(g.intent.request_id, "r1");
        assert_eq!(g.vcpu_cpus, pins);
    }

    /// A guest that boots from a volume: the volume is its first disk (any source, in its
    /// format), there is no root.qcow2, the intent names the volume, and without an image
    /// the disk bus and RNG are the defaults.
    #[test]
    fn a_boot_volume_is_the_first_disk_and_is_named_in_the_intent() {
        let uuid = "00000000-0000-4000-8000-000000000002";
        let req = CreateRequest {
            uuid: uuid.into(),
            name: "bfv".into(),
            boot_volume: "data".into(),
            ..Default::default()
        };
        let spec = crate::flavor::parse("SCS-2Vi-1u").unwrap().spec;
        let source = DiskSource::Nbd {
            host: "10.0.0.1".into(),
            port: 10809,
            export: "data".into(),
        };
        for made in [false, true] {
            let boot = Boot::Volume {
                name: "data".into(),
                source: source.clone(),
                format: "raw",
                bytes: 5 * GIB,
                made,
            };
            let plan = CreatePlan {
                req: &req,
                uuid,
                spec: &spec,
                image: None,
                boot: &boot,
                emulation: Emulation::Tcg,
                nics: &[],
                firmware: Firmware::default(),
            };
            let root = Path::new("/srv");
            let files = GuestFiles::new(root, uuid);
            let g = guest_spec(&plan, placed(uuid), &files, root, &[], 1);
            assert_eq!(g.disks.len(), 2, "the volume and the seed");
            assert_eq!((&g.disks[0].source, g.disks[0].format), (&source, "raw"));
            assert!(!g.disks[0].readonly);
            assert_eq!(g.disks[1].source, DiskSource::File(files.seed()));
            assert_eq!(
                g.intent.boot_volume,
                Some(BootVolume {
                    name: "data".into(),
                    made
                })
            );
            assert_eq!(g.intent.image, "");
            assert_eq!((g.disk_bus, g.rng), (DiskBus::Virtio, false));
            let xml = crate::domain::xml::domain_xml(&g).unwrap();
            assert!(
                xml.contains("<disk type=\"network\" device=\"disk\">")
                    && !xml.contains("root.qcow2"),
                "{xml}"
            );
        }
    }
}
