//! Domain XML from typed structs (serialised with quick-xml's serde support, never string
//! templates, so every name and path is escaped by construction), and the agent's intent
//! stored in `<metadata>` under its own XML namespace, read back at start-up.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::firmware::{Boot as FirmwareBoot, Firmware};
use super::volume_disk::{Disk, DiskSource};
use crate::placement::Claim;
use hvagent_core::host::sysfs::format_cpulist;

#[path = "hostdev.rs"]
mod hostdev;

/// The agent's XML namespace in `<metadata>`.
pub const NAMESPACE: &str = "https://scs.community/ns/hvagent/vm/1";
/// The prefix libvirt stores the metadata element under.
pub const PREFIX: &str = "hvagent";

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emulation {
    Kvm,
    /// QEMU's TCG: no hardware virtualization.
    Tcg,
}

impl Emulation {
    /// `kvm` or `tcg`, as the API and reports name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Emulation::Kvm => "kvm",
            Emulation::Tcg => "tcg",
        }
    }

    fn domain_type(self) -> &'static str {
        match self {
            Emulation::Kvm => "kvm",
            Emulation::Tcg => "qemu",
        }
    }
}

/// What the agent meant when it created the guest: enough to rebuild placement and to find
/// every file that belongs to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The `[storage] root` of the agent that made the guest: an agent only manages the
    /// guests of its own store (tests run several agents on one libvirtd).
    pub store: PathBuf,
    pub name: String,
    pub flavor: String,
    pub request_id: String,
    /// Empty for a guest booted from a volume given at Create.
    pub image: String,
    /// The volume the guest boots from (flavors without a disk); `None`: its local root disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_volume: Option<BootVolume>,
    pub networks: Vec<String>,
    /// Per network, in order: the NIC's MAC and the guest address given to it (if any).
    #[serde(default)]
    pub nics: Vec<NicIntent>,
    /// The caller's metadata, kept with the guest.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    pub claim: Claim,
    pub emulation: Emulation,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// A resize waiting for its confirm or revert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizeIntent>,
    /// Machine type, BIOS or UEFI, TPM: decided from the image at Create and kept here, so a
    /// resize or a rebuild defines the guest the same way. Left out for the default (pc,
    /// BIOS, no TPM), so such guests' metadata is what it was before firmware was chosen.
    #[serde(default, skip_serializing_if = "Firmware::is_default")]
    pub firmware: Firmware,
}

/// The volume a guest boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootVolume {
    pub name: String,
    /// Made from the image for this guest at Create, and deleted with it.
    pub made: bool,
}

/// A pending resize: the guest's old claim, kept under a holder UUID of its own until the
/// resize is confirmed (released) or reverted (given back to the guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeIntent {
    pub holder: String,
    pub old_flavor: String,
    /// The old claim as placement holds it: `vm_uuid` is `holder`.
    pub old_claim: Claim,
    /// Whether the guest ran before the resize (and so runs again after it or its revert).
    pub was_running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NicIntent {
    pub mac: String,
    /// ADDRESS/PREFIX put into the NoCloud network-config; empty: none.
    #[serde(default)]
    pub address: String,
    /// Rate limits in kbit/s into and out of the guest; 0: none.
    #[serde(default)]
    pub ingress_kbps: u32,
    #[serde(default)]
    pub egress_kbps: u32,
    /// The index in the NIC's tap name and derived MAC when it is not the NIC's position in
    /// the list: NICs hot-attached or moved up by a detach (`guest::nic`). None: the position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
}

impl NicIntent {
    /// The index in the tap name of the NIC at `position` of the guest's list.
    pub fn slot_at(&self, position: usize) -> usize {
        self.slot.unwrap_or(position)
    }
}

/// How a NIC reaches its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicAttach {
    /// A tap the agent made and put into a managed network's bridge (`managed='no'`).
    Tap(String),
    /// A host bridge libvirt attaches a tap of its own to, named `tap` (so that the agent
    /// finds it to apply the NIC's rate limits).
    Bridge { bridge: String, tap: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub attach: NicAttach,
    pub mac: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Scsi,
    Sata,
}

impl DiskBus {
    pub fn parse(s: &str) -> Option<DiskBus> {
        match s {
            "virtio" => Some(DiskBus::Virtio),
            "scsi" => Some(DiskBus::Scsi),
            "sata" => Some(DiskBus::Sata),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Scsi => "scsi",
            DiskBus::Sata => "sata",
        }
    }

    fn device_prefix(self) -> &'static str {
        match self {
            DiskBus::Virtio => "vd",
            DiskBus::Scsi | DiskBus::Sata => "sd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// A file of the guest's, or a boot volume's source.
    pub source: DiskSource,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    pub readonly: bool,
}

/// Everything the domain XML is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestSpec {
    pub uuid: String,
    pub intent: Intent,
    /// Host CPUs per vCPU (one for dedicated, the pool for floating).
    pub vcpu_cpus: Vec<Vec<u32>>,
    pub emulator_cpus: Vec<u32>,
    /// CPU flags to require in the guest (`rdrand`, `rdseed`, `vmx`/`svm`).
    pub cpu_features: Vec<String>,
    /// Root disk first, then extra disks, then the NoCloud seed.
    pub disks: Vec<DiskSpec>,
    pub disk_bus: DiskBus,
    /// Virtio NICs, in order.
    pub nics: Vec<NicSpec>,
    pub console_log: PathBuf,
    /// The guest's UEFI variable store (a copy of OVMF's template libvirt makes at the first
    /// start); unused for BIOS guests.
    pub nvram: PathBuf,
    pub rng: bool,
    /// TCG translation cache; bounded so the memory overhead model holds under emulation.
    pub tcg_cache_mib: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build domain XML: {0}")]
pub struct XmlError(String);

#[derive(Serialize)]
#[serde(rename = "domain")]
struct Domain {
    #[serde(rename = "@type")]
    kind: &'static str,
    name: String,
    uuid: String,
    metadata: Metadata,
    memory: Sized,
    #[serde(rename = "currentMemory")]
    current_memory: Sized,
    #[serde(rename = "memoryBacking", skip_serializing_if = "Option::is_none")]
    memory_backing: Option<MemoryBacking>,
    vcpu: Text<usize>,
    cputune: CpuTune,
    #[serde(skip_serializing_if = "Option::is_none")]
    numatune: Option<NumaTune>,
    os: Os,
    features: Features,
    cpu: Cpu,
    on_poweroff: &'static str,
    on_reboot: &'static str,
    on_crash: &'static str,
    devices: Devices,
}

#[derive(Serialize)]
struct Text<T> {
    #[serde(rename = "$text")]
    value: T,
}

#[derive(Serialize)]
struct Sized {
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "$text")]
    value: u64,
}

#[derive(Serialize)]
struct Metadata {
    #[serde(rename = "hvagent:vm")]
    vm: MetadataVm,
}

impl Metadata {
    fn of(intent: &Intent) -> Result<Metadata, XmlError> {
        Ok(Metadata {
            vm: MetadataVm {
                xmlns: NAMESPACE,
                intent: serde_json::to_string(intent).map_err(|e| XmlError(e.to_string()))?,
            },
        })
    }
}

/// The `<metadata>` element the agent writes into a domain for `intent`: what
/// [`read_intent`] reads back.
pub fn metadata_xml(intent: &Intent) -> Result<String, XmlError> {
    quick_xml::se::to_string_with_root("metadata", &Metadata::of(intent)?)
        .map_err(|e| XmlError(e.to_string()))
}

/// The agent's metadata element alone, as libvirt's SetMetadata takes it: without a namespace
/// (libvirt puts it and its children into the one given with the call, under [`PREFIX`]; an
/// element that declares the prefix itself is refused).
pub fn intent_element(intent: &Intent) -> Result<String, XmlError> {
    #[derive(Serialize)]
    struct Vm {
        intent: String,
    }
    let vm = Vm {
        intent: Metadata::of(intent)?.vm.intent,
    };
    quick_xml::se::to_string_with_root("vm", &vm).map_err(|e| XmlError(e.to_string()))
}

#[derive(Serialize)]
struct MetadataVm {
    #[serde(rename = "@xmlns:hvagent")]
    xmlns: &'static str,
    #[serde(rename = "hvagent:intent")]
    intent: String,
}

#[derive(Serialize)]
struct MemoryBacking {
    hugepages: HugePages,
}

#[derive(Serialize)]
struct HugePages {
    page: Vec<Page>,
}

#[derive(Serialize)]
struct Page {
    #[serde(rename = "@size")]
    size: u64,
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "@nodeset")]
    nodeset: String,
}

#[derive(Serialize)]
struct CpuTune {
    vcpupin: Vec<VcpuPin>,
    emulatorpin: CpuSet,
}

#[derive(Serialize)]
struct VcpuPin {
    #[serde(rename = "@vcpu")]
    vcpu: u32,
    #[serde(rename = "@cpuset")]
    cpuset: String,
}

#[derive(Serialize)]
struct CpuSet {
    #[serde(rename = "@cpuset")]
    cpuset: String,
}

#[derive(Serialize)]
struct NumaTune {
    memory: NumaMemory,
    memnode: Vec<MemNode>,
}

#[derive(Serialize)]
struct NumaMemory {
    #[serde(rename = "@mode")]
    mode: &'static str,
    #[serde(rename = "@nodeset")]
    nodeset: String,
}

#[derive(Serialize)]
struct MemNode {
    #[serde(rename = "@cellid")]
    cellid: u32,
    #[serde(rename = "@mode")]
    mode: &'static str,
    #[serde(rename = "@nodeset")]
    nodeset: String,
}

#[derive(Serialize)]
struct Os {
    /// `efi`: libvirt picks OVMF from the QEMU firmware descriptors that have `<firmware>`'s
    /// features, for the machine type (libvirt 9.0's firmware autoselection).
    #[serde(rename = "@firmware", skip_serializing_if = "Option::is_none")]
    firmware: Option<&'static str>,
    #[serde(rename = "type")]
    kind: OsType,
    #[serde(rename = "firmware", skip_serializing_if = "Option::is_none")]
    features: Option<FirmwareFeatures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loader: Option<Loader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nvram: Option<Text<String>>,
    boot: Boot,
}

impl Os {
    fn of(firmware: &Firmware, nvram: &std::path::Path) -> Os {
        let secure_boot = match firmware.boot {
            FirmwareBoot::Bios => None,
            FirmwareBoot::Uefi { secure_boot } => Some(secure_boot),
        };
        let yes_no = |on: bool| if on { "yes" } else { "no" };
        Os {
            firmware: secure_boot.map(|_| "efi"),
            kind: OsType {
                arch: "x86_64",
                machine: firmware.machine.as_str(),
                value: "hvm",
            },
            // Secure Boot on means the keys must be enrolled too (the `ms` variable template:
            // Microsoft's and the distributions' keys), else nothing signed would boot; off
            // means the plain build, without enrolled keys.
            features: secure_boot.map(|on| FirmwareFeatures {
                feature: vec![
                    FirmwareFeature {
                        enabled: yes_no(on),
                        name: "enrolled-keys",
                    },
                    FirmwareFeature {
                        enabled: yes_no(on),
                        name: "secure-boot",
                    },
                ],
            }),
            // `secure`: the variable store is writable only from SMM, so the guest OS cannot
            // change the Secure Boot keys behind the firmware's back.
            loader: secure_boot
                .filter(|on| *on)
                .map(|_| Loader { secure: "yes" }),
            nvram: secure_boot.map(|_| Text {
                value: nvram.display().to_string(),
            }),
            boot: Boot { dev: "hd" },
        }
    }
}

#[derive(Serialize)]
struct FirmwareFeatures {
    feature: Vec<FirmwareFeature>,
}

#[derive(Serialize)]
struct FirmwareFeature {
    #[serde(rename = "@enabled")]
    enabled: &'static str,
    #[serde(rename = "@name")]
    name: &'static str,
}

#[derive(Serialize)]
struct Loader {
    #[serde(rename = "@secure")]
    secure: &'static str,
}

#[derive(Serialize)]
struct State {
    #[serde(rename = "@state")]
    state: &'static str,
}

/// A TPM 2.0 emulated by swtpm, which libvirt starts beside QEMU; its state lives in libvirt's
/// `/var/lib/libvirt/swtpm/<uuid>/` (libvirt 9.0 has no element to move it).
#[derive(Serialize)]
struct Tpm {
    #[serde(rename = "@model")]
    model: &'static str,
    backend: TpmBackend,
}

#[derive(Serialize)]
struct TpmBackend {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@version")]
    version: &'static str,
}

#[derive(Serialize)]
struct OsType {
    #[serde(rename = "@arch")]
    arch: &'static str,
    #[serde(rename = "@machine")]
    machine: &'static str,
    #[serde(rename = "$text")]
    value: &'static str,
}

#[derive(Serialize)]
struct Boot {
    #[serde(rename = "@dev")]
    dev: &'static str,
}

#[derive(Serialize)]
struct Features {
    acpi: (),
    apic: (),
    /// System Management Mode: OVMF's Secure Boot build needs it (q35 only), under TCG too.
    #[serde(skip_serializing_if = "Option::is_none")]
    smm: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcg: Option<Tcg>,
}

#[derive(Serialize)]
struct Tcg {
    #[serde(rename = "tb-cache")]
    tb_cache: Sized,
}

#[derive(Serialize)]
struct Cpu {
    #[serde(rename = "@mode")]
    mode: &'static str,
    #[serde(rename = "@match", skip_serializing_if = "Option::is_none")]
    matching: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<Model>,
    topology: Topology,
    feature: Vec<Feature>,
    numa: Numa,
}

#[derive(Serialize)]
struct Model {
    #[serde(rename = "@fallback")]
    fallback: &'static str,
    #[serde(rename = "$text")]
    value: &'static str,
}

#[derive(Serialize)]
struct Topology {
    #[serde(rename = "@sockets")]
    sockets: u32,
    #[serde(rename = "@dies")]
    dies: u32,
    #[serde(rename = "@cores")]
    cores: u32,
    #[serde(rename = "@threads")]
    threads: u32,
}

#[derive(Serialize)]
struct Feature {
    #[serde(rename = "@policy")]
    policy: &'static str,
    #[serde(rename = "@name")]
    name: String,
}

#[derive(Serialize)]
struct Numa {
    cell: Vec<Cell>,
}

#[derive(Serialize)]
struct Cell {
    #[serde(rename = "@id")]
    id: u32,
    #[serde(rename = "@cpus")]
    cpus: String,
    #[serde(rename = "@memory")]
    memory: u64,
    #[serde(rename = "@unit")]
    unit: &'static str,
}

#[derive(Serialize)]
struct Devices {
    disk: Vec<Disk>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    controller: Vec<Controller>,
    interface: Vec<Interface>,
    serial: Serial,
    console: Console,
    channel: Channel,
    #[serde(skip_serializing_if = "Option::is_none")]
    rng: Option<Rng>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tpm: Option<Tpm>,
    /// The claim's passed-through PCI devices.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hostdev: Vec<hostdev::Hostdev>,
}

#[derive(Serialize)]
struct Controller {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@model")]
    model: &'static str,
}

#[derive(Serialize)]
#[serde(rename = "interface")]
struct Interface {
    #[serde(rename = "@type")]
    kind: &'static str,
    mac: MacAddress,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<BridgeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<TapTarget>,
    model: TypeAttr,
}

impl Interface {
    fn of(n: &NicSpec) -> Interface {
        let mac = MacAddress {
            address: n.mac.clone(),
        };
        let model = TypeAttr { kind: "virtio" };
        match &n.attach {
            NicAttach::Bridge { bridge, tap } => Interface {
                kind: "bridge",
                mac,
                source: Some(BridgeSource {
                    bridge: bridge.clone(),
                }),
                target: Some(TapTarget {
                    dev: tap.clone(),
                    managed: None,
                }),
                model,
            },
            NicAttach::Tap(t) => Interface {
                kind: "ethernet",
                mac,
                source: None,
                target: Some(TapTarget {
                    dev: t.clone(),
                    managed: Some("no"),
                }),
                model,
            },
        }
    }
}

/// One `<interface>` element, as a domain the agent defines has it: what a NIC hot-plug
/// gives libvirt (which finds the NIC to detach by its MAC).
pub fn interface_xml(nic: &NicSpec) -> Result<String, XmlError> {
    quick_xml::se::to_string(&Interface::of(nic)).map_err(|e| XmlError(e.to_string()))
}

#[derive(Serialize)]
struct MacAddress {
    #[serde(rename = "@address")]
    address: String,
}

#[derive(Serialize)]
struct TapTarget {
    #[serde(rename = "@dev")]
    dev: String,
    /// `no`: the agent made the tap, libvirt opens it and leaves it alone. None: libvirt
    /// makes it (in a bridge), under this name.
    #[serde(rename = "@managed", skip_serializing_if = "Option::is_none")]
    managed: Option<&'static str>,
}

#[derive(Serialize)]
struct BridgeSource {
    #[serde(rename = "@bridge")]
    bridge: String,
}

#[derive(Serialize)]
struct TypeAttr {
    #[serde(rename = "@type")]
    kind: &'static str,
}

/// A pty serial console whose output virtlogd writes to a file: virtlogd rotates it at its
/// `max_size` (2 MiB by default, 3 backups), so a chatty guest cannot fill the disk.
#[derive(Serialize)]
struct Serial {
    #[serde(rename = "@type")]
    kind: &'static str,
    target: SerialTarget,
    log: Log,
}

#[derive(Serialize)]
struct Log {
    #[serde(rename = "@file")]
    file: String,
    #[serde(rename = "@append")]
    append: &'static str,
}

#[derive(Serialize)]
struct SerialTarget {
    #[serde(rename = "@port")]
    port: u32,
}

#[derive(Serialize)]
struct Console {
    #[serde(rename = "@type")]
    kind: &'static str,
    target: ConsoleTarget,
}

#[derive(Serialize)]
struct ConsoleTarget {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@port")]
    port: u32,
}

/// The qemu guest agent's virtio-serial port: libvirt picks the host socket's path and adds
/// the virtio-serial controller itself.
#[derive(Serialize)]
struct Channel {
    #[serde(rename = "@type")]
    kind: &'static str,
    target: ChannelTarget,
}

#[derive(Serialize)]
struct ChannelTarget {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@name")]
    name: &'static str,
}

/// The port name the guest agent (`qemu-ga`) opens in the guest.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

#[derive(Serialize)]
struct Rng {
    #[serde(rename = "@model")]
    model: &'static str,
    backend: RngBackend,
}

#[derive(Serialize)]
struct RngBackend {
    #[serde(rename = "@model")]
    model: &'static str,
    #[serde(rename = "$text")]
    path: &'static str,
}

/// The domain XML for `spec`.
pub fn domain_xml(spec: &GuestSpec) -> Result<String, XmlError> {
    let claim = &spec.intent.claim;
    let ram_kib: u64 = claim.memory.iter().map(|m| m.mib * 1024).sum();
    let dedicated = claim.vcpus.iter().any(|v| v.cpu.is_some());
    let huge: Vec<Page> = claim
        .memory
        .iter()
        .filter(|m| m.huge())
        .map(|m| Page {
            size: m.page_size_kib,
            unit: "KiB",
            nodeset: m.numa_node.to_string(),
        })
        .collect();
    let host_nodes: Vec<u32> = claim.memory.iter().map(|m| m.numa_node).collect();
    // Dedicated guests' memory strictly on the claimed nodes, cell by cell; floating guests'
    // memory strictly where it was counted.
    let numatune = Some(NumaTune {
        memory: NumaMemory {
            mode: "strict",
            nodeset: format_cpulist(&host_nodes),
        },
        memnode: claim
            .guest_numa
            .iter()
            .map(|c| MemNode {
                cellid: c.id,
                mode: "strict",
                nodeset: c.host_node.to_string(),
            })
            .collect(),
    })
    .filter(|_| dedicated || host_nodes.len() == 1);
    let tcg = spec.intent.emulation == Emulation::Tcg;
    let bus = spec.disk_bus;
    let domain = Domain {
        kind: spec.intent.emulation.domain_type(),
        name: spec.intent.name.clone(),
        uuid: spec.uuid.clone(),
        metadata: Metadata::of(&spec.intent)?,
        memory: Sized {
            unit: "KiB",
            value: ram_kib,
        },
        current_memory: Sized {
            unit: "KiB",
            value: ram_kib,
        },
        memory_backing: (!huge.is_empty()).then_some(MemoryBacking {
            hugepages: HugePages { page: huge },
        }),
        vcpu: Text {
            value: claim.vcpus.len(),
        },
        cputune: CpuTune {
            vcpupin: claim
                .vcpus
                .iter()
                .zip(&spec.vcpu_cpus)
                .map(|(v, cpus)| VcpuPin {
                    vcpu: v.vcpu,
                    cpuset: format_cpulist(cpus),
                })
                .collect(),
            emulatorpin: CpuSet {
                cpuset: format_cpulist(&spec.emulator_cpus),
            },
        },
        numatune,
        os: Os::of(&spec.intent.firmware, &spec.nvram),
        features: Features {
            acpi: (),
            apic: (),
            smm: spec
                .intent
                .firmware
                .secure_boot()
                .then_some(State { state: "on" }),
            tcg: tcg.then_some(Tcg {
                tb_cache: Sized {
                    unit: "MiB",
                    value: spec.tcg_cache_mib,
                },
            }),
        },
        cpu: Cpu {
            // Under TCG there is no host CPU to pass through: a fixed model plus the features
            // the flavor promises; with KVM the host's CPU as it is.
            mode: if tcg { "custom" } else { "host-passthrough" },
            matching: tcg.then_some("exact"),
            model: tcg.then_some(Model {
                fallback: "forbid",
                value: "qemu64",
            }),
            topology: Topology {
                sockets: claim.guest_topology.sockets,
                dies: 1,
                cores: claim.guest_topology.cores,
                threads: claim.guest_topology.threads,
            },
            feature: spec
                .cpu_features
                .iter()
                .map(|f| Feature {
                    policy: "require",
                    name: f.clone(),
                })
                .collect(),
            numa: Numa {
                cell: claim
                    .guest_numa
                    .iter()
                    .map(|c| Cell {
                        id: c.id,
                        cpus: format_cpulist(&c.vcpus),
                        memory: c.mib * 1024,
                        unit: "KiB",
                    })
                    .collect(),
            },
        },
        on_poweroff: "destroy",
        on_reboot: "restart",
        on_crash: "destroy",
        devices: Devices {
            disk: spec
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let dev = format!("{}{}", bus.device_prefix(), disk_letter(i));
                    Disk::new(&d.source, d.format, dev, bus.name()).readonly(d.readonly)
                })
                .collect(),
            controller: if bus == DiskBus::Scsi {
                vec![Controller {
                    kind: "scsi",
                    model: "virtio-scsi",
                }]
            } else {
                Vec::new()
            },
            interface: spec.nics.iter().map(Interface::of).collect(),
            serial: Serial {
                kind: "pty",
                target: SerialTarget { port: 0 },
                log: Log {
                    file: spec.console_log.display().to_string(),
                    append: "on",
                },
            },
            console: Console {
                kind: "pty",
                target: ConsoleTarget {
                    kind: "serial",
                    port: 0,
                },
            },
            channel: Channel {
                kind: "unix",
                target: ChannelTarget {
                    kind: "virtio",
                    name: GUEST_AGENT_PORT,
                },
            },
            rng: spec.rng.then_some(Rng {
                model: "virtio",
                backend: RngBackend {
                    model: "random",
                    path: "/dev/urandom",
                },
            }),
            tpm: spec.intent.firmware.tpm.map(|model| Tpm {
                model: model.libvirt_model(),
                backend: TpmBackend {
                    kind: "emulator",
                    version: "2.0",
                },
            }),
            hostdev: hostdev::from_claim(claim)?,
        },
    };
    quick_xml::se::to_string(&domain).map_err(|e| XmlError(e.to_string()))
}

/// `a`..`z`, then `aa`, `ab`, ... as Linux names disks.
pub(super) fn disk_letter(i: usize) -> String {
    let mut n = i;
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// The domain of `spec` with the `<devices>` of the defined domain `old_xml` (as libvirt
/// holds it: its disks, NICs and MACs, attached volumes and the addresses libvirt gave them)
/// plus the disks `added` (on `spec`'s disk bus, after every target name in use). What a
/// resize defines: the new claim's CPUs, memory and NUMA with the guest's devices unchanged.
pub fn resized_xml(
    spec: &GuestSpec,
    old_xml: &str,
    added: &[DiskSpec],
) -> Result<String, XmlError> {
    let new_xml = domain_xml(spec)?;
    let (start, end) = devices_span(&new_xml)?;
    let (old_start, old_end) = devices_span(old_xml)?;
    let old_devices = &old_xml[old_start..old_end];
    let close = "</devices>";
    let inner_end = old_devices
        .strip_suffix(close)
        .map(str::len)
        .ok_or_else(|| XmlError("the old domain's <devices> has no closing tag".into()))?;
    let used: Vec<String> = super::volume_disk::disks(old_devices)
        .map_err(XmlError)?
        .into_iter()
        .map(|d| d.target)
        .collect();
    let bus = spec.disk_bus;
    let mut disks = String::new();
    let mut letters = (0..).map(disk_letter).filter(|l| {
        !used
            .iter()
            .any(|u| u.strip_prefix(bus.device_prefix()) == Some(l.as_str()))
    });
    for d in added {
        let dev = format!(
            "{}{}",
            bus.device_prefix(),
            letters.next().unwrap_or_default()
        );
        let disk = Disk::new(&d.source, d.format, dev, bus.name()).readonly(d.readonly);
        disks.push_str(
            &quick_xml::se::to_string_with_root("disk", &disk)
                .map_err(|e| XmlError(e.to_string()))?,
        );
    }
    Ok(format!(
        "{}{}{disks}{close}{}",
        &new_xml[..start],
        &old_devices[..inner_end],
        &new_xml[end..]
    ))
}

/// The byte range of the `<devices>` element (a child of `<domain>`) in `xml`.
fn devices_span(xml: &str) -> Result<(usize, usize), XmlError> {
    child_span(xml, "devices")?.ok_or_else(|| XmlError("the domain has no <devices>".into()))
}

/// The byte range of the first `<tag>` element that is a child of `<domain>` in `xml`, if any.
fn child_span(xml: &str, tag: &str) -> Result<Option<(usize, usize)>, XmlError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut start = None;
    loop {
        let before = reader.buffer_position() as usize;
        match reader.read_event().map_err(|e| XmlError(e.to_string()))? {
            Event::Start(e) => {
                if depth == 1 && e.local_name().as_ref() == tag {
                    start = Some(before);
                }
                depth += 1;
            }
            Event::Empty(e) if depth == 1 && e.local_name().as_ref() == tag => {
                return Ok(Some((before, reader.buffer_position() as usize)));
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                if depth == 1
                    && e.local_name().as_ref() == tag
                    && let Some(s) = start
                {
                    return Ok(Some((s, reader.buffer_position() as usize)));
                }
            }
            Event::Eof => return Ok(None),
            _ => {}
        }
    }
}

/// `xml` with its `<tag>` child of `<domain>` replaced by `element` (added before
/// `</domain>` when it has none; removed when `element` is empty).
fn with_child(xml: &str, tag: &str, element: &str) -> Result<String, XmlError> {
    let mut out = xml.to_string();
    match child_span(xml, tag)? {
        Some((start, end)) => out.replace_range(start..end, element),
        None => {
            let at = out
                .rfind("</domain>")
                .ok_or_else(|| XmlError("the domain has no closing tag".into()))?;
            out.insert_str(at, element);
        }
    }
    Ok(out)
}

/// The children of `<domain>` that a guest's claim decides: a migration takes them from the
/// target's claim, everything else from the running guest.
const CLAIMED_CHILDREN: [&str; 5] = ["metadata", "memoryBacking", "vcpu", "cputune", "numatune"];

/// The domain a live migration defines on the target node. `source_xml` is the running
/// domain as libvirt carries it (`MIGRATABLE`): its machine type, CPU model, devices and
/// their addresses stay as they are, since the guest runs on unchanged. What the target's
/// claim decides comes from `target` (the guest's domain on the target, built from that
/// claim): the intent in `<metadata>`, hugepages, vCPU and emulator pins and the NUMA memory
/// policy, so that no pin of the source (CPUs another guest may own on the target) survives.
/// The files in each directory of `moves` go to its pair (the guest's directory, the volume
/// store), and the guest's cgroup goes into `partition` (libvirt's default, `/machine`, when
/// `None`).
pub fn migrated_xml(
    source_xml: &str,
    target: &GuestSpec,
    moves: &[(&Path, &Path)],
    partition: Option<&str>,
) -> Result<String, XmlError> {
    let target_xml = domain_xml(target)?;
    // Every file path of the guest (disks, seed, console log, NVRAM) is under its directory,
    // every volume's under the store's; the trailing slash keeps a directory that prefixes
    // another's name from matching.
    let mut xml = source_xml.to_string();
    for (from, to) in moves {
        xml = xml.replace(
            &format!("{}/", from.display()),
            &format!("{}/", to.display()),
        );
    }
    for tag in CLAIMED_CHILDREN {
        let element = match child_span(&target_xml, tag)? {
            Some((start, end)) => &target_xml[start..end],
            None => "",
        };
        xml = with_child(&xml, tag, element)?;
    }
    let resource = match partition {
        Some(p) => format!(
            "<resource><partition>{}</partition></resource>",
            quick_xml::escape::escape(p)
        ),
        None => String::new(),
    };
    // Replaced, never added: libvirt refuses a second <resource>.
    with_child(&xml, "resource", &resource)
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IntentError {
    #[error("no hvagent metadata")]
    Missing,
    #[error("hvagent metadata is not readable: {0}")]
    Unreadable(String),
}

/// The intent from a domain's XML (or from the metadata element alone).
pub fn read_intent(xml: &str) -> Result<Intent, IntentError> {
    use quick_xml::events::Event;
    let unreadable = |e: &dyn std::fmt::Display| IntentError::Unreadable(e.to_string());
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut inside = false;
    let mut text = String::new();
    loop {
        match reader.read_event().map_err(|e| unreadable(&e))? {
            Event::Start(e) if e.local_name().as_ref() == "intent" => inside = true,
            Event::Text(t) if inside => text.push_str(&t.xml10_content()),
            // Entities (`&quot;` in the JSON) arrive as events of their own.
            Event::GeneralRef(r) if inside => {
                let resolved = r.resolve_char_ref().map_err(|e| unreadable(&e))?;
                let name = r.into_inner();
                match resolved {
                    Some(c) => text.push(c),
                    None => text.push_str(
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| unreadable(&format!("unknown entity &{name};")))?,
                    ),
                }
            }
            Event::End(e) if inside && e.local_name().as_ref() == "intent" => {
                return serde_json::from_str(&text).map_err(|e| unreadable(&e));
            }
            Event::Eof => return Err(IntentError::Missing),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::firmware::{Machine, TpmModel};
    use crate::placement::claim::{
        Emulator, GuestCell, GuestTopology, MemoryShare, VcpuPin as Pin,
    };

    fn claim(dedicated: bool, huge: bool) -> Claim {
        Claim {
            vm_uuid: "00000000-0000-4000-8000-000000000001".into(),
            request_id: "r1".into(),
            flavor: "SCS-2C-4".into(),
            cpu_type: if dedicated { 'C' } else { 'V' },
            insecure: false,
            vcpus: (0..2)
                .map(|v| Pin {
                    vcpu: v,
                    cpu: dedicated.then_some(2 + 2 * v),
                })
                .collect(),
            idle_cpus: vec![],
            emulator: Emulator::Reserved(vec![0, 1]),
            memory: vec![MemoryShare {
                numa_node: 1,
                mib: 4096,
                page_size_kib: if huge { 2048 } else { 4 },
            }],
            overhead: MemoryShare {
                numa_node: 1,
                mib: 185,
                page_size_kib: 4,
            },
            guest_topology: GuestTopology {
                sockets: 1,
                cores: 2,
                threads: 1,
            },
            guest_numa: vec![GuestCell {
                id: 0,
                vcpus: vec![0, 1],
                mib: 4096,
                host_node: 1,
            }],
            gpus: vec![],
            infiniband: vec![],
            disk_gb: 10,
            generation: 3,
            expires_at_ms: None,
        }
    }

    fn spec(dedicated: bool, huge: bool, emulation: Emulation) -> GuestSpec {
        GuestSpec {
            uuid: "00000000-0000-4000-8000-000000000001".into(),
            intent: Intent {
                store: "/var/lib/hvagent".into(),
                name: "web<1>&\"x\"".into(),
                flavor: "SCS-2C-4".into(),
                request_id: "r1".into(),
                image: "debian".into(),
                boot_volume: None,
                networks: vec![],
                nics: vec![],
                metadata: [("team".to_string(), "a&b".to_string())].into(),
                claim: claim(dedicated, huge),
                emulation,
                created_unix: 1_700_000_000,
                resize: None,
                firmware: Firmware::default(),
            },
            vcpu_cpus: if dedicated {
                vec![vec![2], vec![4]]
            } else {
                vec![vec![2, 3, 4, 5], vec![2, 3, 4, 5]]
            },
            emulator_cpus: vec![0, 1],
            cpu_features: vec!["rdrand".into()],
            disks: vec![
                DiskSpec {
                    source: DiskSource::File("/var/lib/hvagent/vms/x/root.qcow2".into()),
                    format: "qcow2",
                    readonly: false,
                },
                DiskSpec {
                    source: DiskSource::File("/var/lib/hvagent/vms/x/seed.img".into()),
                    format: "raw",
                    readonly: true,
                },
            ],
            disk_bus: DiskBus::Virtio,
            nics: vec![
                NicSpec {
                    attach: NicAttach::Bridge {
                        bridge: "br0".into(),
                        tap: "hv0123456789a0".into(),
                    },
                    mac: "02:00:00:00:00:01".into(),
                },
                NicSpec {
                    attach: NicAttach::Tap("hv0123456789a1".into()),
                    mac: "02:00:00:00:00:02".into(),
                },
            ],
            console_log: "/var/lib/hvagent/vms/x/console.log".into(),
            nvram: "/var/lib/hvagent/vms/x/nvram.fd".into(),
            rng: true,
            tcg_cache_mib: 64,
        }
    }

    #[test]
    fn dedicated_guest_under_tcg() {
        let xml = domain_xml(&spec(true, false, Emulation::Tcg)).unwrap();
        for part in [
            "<domain type=\"qemu\">",
            "<name>web&lt;1&gt;&amp;\"x\"</name>",
            "<memory unit=\"KiB\">4194304</memory>",
            "<vcpu>2</vcpu>",
            "<vcpupin vcpu=\"0\" cpuset=\"2\"/><vcpupin vcpu=\"1\" cpuset=\"4\"/><emulatorpin cpuset=\"0-1\"/>",
            "<numatune><memory mode=\"strict\" nodeset=\"1\"/><memnode cellid=\"0\" mode=\"strict\" nodeset=\"1\"/></numatune>",
            "<tcg><tb-cache unit=\"MiB\">64</tb-cache></tcg>",
            "<cpu mode=\"custom\" match=\"exact\"><model fallback=\"forbid\">qemu64</model><topology sockets=\"1\" dies=\"1\" cores=\"2\" threads=\"1\"/><feature policy=\"require\" name=\"rdrand\"/><numa><cell id=\"0\" cpus=\"0-1\" memory=\"4194304\" unit=\"KiB\"/></numa></cpu>",
            "<target dev=\"vda\" bus=\"virtio\"/>",
            "<target dev=\"vdb\" bus=\"virtio\"/><readonly/>",
            "<interface type=\"bridge\"><mac address=\"02:00:00:00:00:01\"/><source bridge=\"br0\"/><target dev=\"hv0123456789a0\"/><model type=\"virtio\"/></interface>",
            "<interface type=\"ethernet\"><mac address=\"02:00:00:00:00:02\"/><target dev=\"hv0123456789a1\" managed=\"no\"/><model type=\"virtio\"/></interface>",
            "<serial type=\"pty\"><target port=\"0\"/><log file=\"/var/lib/hvagent/vms/x/console.log\" append=\"on\"/></serial><console type=\"pty\"><target type=\"serial\" port=\"0\"/></console>",
            "<rng model=\"virtio\"><backend model=\"random\">/dev/urandom</backend></rng>",
            "<hvagent:vm xmlns:hvagent=\"https://scs.community/ns/hvagent/vm/1\"><hvagent:intent>",
        ] {
            assert!(xml.contains(part), "missing {part}\nin {xml}");
        }
        assert!(!xml.contains("memoryBacking"));
        assert_eq!(
            read_intent(&xml).unwrap(),
            spec(true, false, Emulation::Tcg).intent
        );
    }

    /// A migration's domain keeps the running guest's machine, devices and addresses, takes
    /// pins, NUMA policy, hugepages and intent from the target's claim (none of the source's
    /// pins is left), moves the guest's files to the target's directory and replaces the
    /// cgroup partition (libvirt refuses two).
    #[test]
    fn a_migrated_domain_has_the_targets_claim_and_the_sources_devices() {
        let source = domain_xml(&spec(true, false, Emulation::Tcg))
            .unwrap()
            .replace(
                "<os>",
                "<resource><partition>/machine</partition></resource><os>",
            )
            .replace(
                "<target dev=\"vda\" bus=\"virtio\"/>",
                "<target dev=\"vda\" bus=\"virtio\"/><address type=\"pci\" slot=\"0x07\"/>",
            );
        let mut target = spec(true, true, Emulation::Tcg);
        target.intent.store = "/srv/node2".into();
        target.intent.claim.memory[0].numa_node = 0;
        target.intent.claim.guest_numa[0].host_node = 0;
        target.vcpu_cpus = vec![vec![6], vec![7]];
        target.emulator_cpus = vec![3];
        let source = source.replace(
            "</devices>",
            "<disk type=\"file\" device=\"disk\"><source file=\"/var/lib/hvagent/volumes/data.qcow2\"/><target dev=\"vdc\" bus=\"virtio\"/></disk></devices>",
        );
        let xml = migrated_xml(
            &source,
            &target,
            &[
                (
                    Path::new("/var/lib/hvagent/vms/x"),
                    Path::new("/srv/node2/vms/x"),
                ),
                (
                    Path::new("/var/lib/hvagent/volumes"),
                    Path::new("/srv/node2/volumes"),
                ),
            ],
            Some("/node2"),
        )
        .unwrap();
        for part in [
            "<vcpupin vcpu=\"0\" cpuset=\"6\"/><vcpupin vcpu=\"1\" cpuset=\"7\"/><emulatorpin cpuset=\"3\"/>",
            "<numatune><memory mode=\"strict\" nodeset=\"0\"/><memnode cellid=\"0\" mode=\"strict\" nodeset=\"0\"/></numatune>",
            "<memoryBacking><hugepages><page size=\"2048\" unit=\"KiB\" nodeset=\"0\"/></hugepages></memoryBacking>",
            "<source file=\"/srv/node2/vms/x/root.qcow2\"/>",
            "<source file=\"/srv/node2/volumes/data.qcow2\"/>",
            "<address type=\"pci\" slot=\"0x07\"/>",
            "<log file=\"/srv/node2/vms/x/console.log\" append=\"on\"/>",
            "<resource><partition>/node2</partition></resource>",
        ] {
            assert!(xml.contains(part), "missing {part}\nin {xml}");
        }
        for gone in ["cpuset=\"2\"", "cpuset=\"0-1\"", "/var/lib/hvagent/"] {
            assert!(!xml.contains(gone), "{gone} left in {xml}");
        }
        assert_eq!(xml.matches("<resource>").count(), 1, "{xml}");
        assert_eq!(read_intent(&xml).unwrap(), target.intent);
        // Without a partition the guest goes into libvirt's default one.
        let default = migrated_xml(
            &source,
            &target,
            &[(Path::new("/a"), Path::new("/b"))],
            None,
        )
        .unwrap();
        assert!(!default.contains("<resource>"), "{default}");
    }

    /// A BIOS guest (no firmware properties) is defined as before firmware could be chosen:
    /// machine pc, no firmware attribute, loader, NVRAM, SMM or TPM, nothing in the intent.
    #[test]
    fn a_bios_guest_is_unchanged() {
        let s = spec(true, false, Emulation::Tcg);
        let xml = domain_xml(&s).unwrap();
        assert!(
            xml.contains("<os><type arch=\"x86_64\" machine=\"pc\">hvm</type><boot dev=\"hd\"/></os><features><acpi/><apic/><tcg>"),
            "{xml}"
        );
        for absent in ["firmware", "loader", "nvram", "smm", "<tpm", "q35"] {
            assert!(!xml.contains(absent), "{absent} in {xml}");
        }
    }

    fn with_firmware(boot: FirmwareBoot, machine: Machine, tpm: Option<TpmModel>) -> String {
        let mut s = spec(false, false, Emulation::Tcg);
        s.intent.firmware = Firmware { machine, boot, tpm };
        let xml = domain_xml(&s).unwrap();
        assert_eq!(read_intent(&xml).unwrap().firmware, s.intent.firmware);
        xml
    }

    /// UEFI with Secure Boot: libvirt picks the enrolled-keys Secure Boot build of OVMF on q35,
    /// with a secure loader, the guest's own NVRAM and SMM.
    #[test]
    fn a_secure_boot_guest() {
        let xml = with_firmware(FirmwareBoot::Uefi { secure_boot: true }, Machine::Q35, None);
        assert!(
            xml.contains("<os firmware=\"efi\"><type arch=\"x86_64\" machine=\"q35\">hvm</type><firmware><feature enabled=\"yes\" name=\"enrolled-keys\"/><feature enabled=\"yes\" name=\"secure-boot\"/></firmware><loader secure=\"yes\"/><nvram>/var/lib/hvagent/vms/x/nvram.fd</nvram><boot dev=\"hd\"/></os><features><acpi/><apic/><smm state=\"on\"/><tcg>"),
            "{xml}"
        );
        assert!(!xml.contains("<tpm"), "{xml}");
    }

    /// UEFI without Secure Boot (on q35 or pc): the plain OVMF, no secure loader, no SMM, but
    /// an NVRAM of its own all the same.
    #[test]
    fn a_uefi_guest_without_secure_boot() {
        for machine in [Machine::Q35, Machine::Pc] {
            let xml = with_firmware(FirmwareBoot::Uefi { secure_boot: false }, machine, None);
            assert!(
                xml.contains(&format!("<os firmware=\"efi\"><type arch=\"x86_64\" machine=\"{}\">hvm</type><firmware><feature enabled=\"no\" name=\"enrolled-keys\"/><feature enabled=\"no\" name=\"secure-boot\"/></firmware><nvram>/var/lib/hvagent/vms/x/nvram.fd</nvram><boot dev=\"hd\"/></os><features><acpi/><apic/><tcg>", machine.as_str())),
                "{xml}"
            );
            assert!(!xml.contains("<loader") && !xml.contains("smm"), "{xml}");
        }
    }

    /// A TPM 2.0 of either model, emulated by swtpm, on a BIOS or a UEFI guest.
    #[test]
    fn a_tpm_guest() {
        for (model, name) in [(TpmModel::Tis, "tpm-tis"), (TpmModel::Crb, "tpm-crb")] {
            for boot in [FirmwareBoot::Bios, FirmwareBoot::Uefi { secure_boot: true }] {
                let xml = with_firmware(boot, Machine::Q35, Some(model));
                assert!(
                    xml.contains(&format!(
                        "<tpm model=\"{name}\"><backend type=\"emulator\" version=\"2.0\"/></tpm>"
                    )),
                    "{xml}"
                );
            }
        }
    }

    #[test]
    fn every_guest_has_a_guest_agent_channel() {
        for s in [
            spec(true, false, Emulation::Tcg),
            spec(false, true, Emulation::Kvm),
        ] {
            let xml = domain_xml(&s).unwrap();
            assert!(
                xml.contains("<channel type=\"unix\"><target type=\"virtio\" name=\"org.qemu.guest_agent.0\"/></channel>"),
                "no guest agent channel in {xml}"
            );
        }
    }

    #[test]
    fn floating_guest_with_hugepages_under_kvm() {
        let xml = domain_xml(&spec(false, true, Emulation::Kvm)).unwrap();
        assert!(xml.starts_with("<domain type=\"kvm\">"), "{xml}");
        assert!(xml.contains("<vcpupin vcpu=\"0\" cpuset=\"2-5\"/>"));
        assert!(xml.contains("<memoryBacking><hugepages><page size=\"2048\" unit=\"KiB\" nodeset=\"1\"/></hugepages></memoryBacking>"), "{xml}");
        assert!(
            xml.contains("<cpu mode=\"host-passthrough\"><topology"),
            "{xml}"
        );
        assert!(!xml.contains("<tcg>"));
    }

    #[test]
    fn the_intent_element_reads_back() {
        let intent = spec(true, false, Emulation::Tcg).intent;
        let element = intent_element(&intent).unwrap();
        assert!(element.starts_with("<vm><intent>{"), "{element}");
        assert_eq!(read_intent(&element).unwrap(), intent);
    }

    #[test]
    fn intent_errors() {
        assert_eq!(
            read_intent("<domain><name>x</name></domain>"),
            Err(IntentError::Missing)
        );
        assert!(matches!(
            read_intent(
                "<metadata><hvagent:vm xmlns:hvagent=\"x\"><hvagent:intent>{not json</hvagent:intent></hvagent:vm></metadata>"
            ),
            Err(IntentError::Unreadable(_))
        ));
    }

    /// A resize keeps the old definition's devices (volumes, addresses) and takes CPUs,
    /// memory and intent from the new spec; added disks get the first free target names.
    #[test]
    fn a_resized_domain_keeps_its_devices() {
        let old = domain_xml(&spec(false, false, Emulation::Tcg))
            .unwrap()
            .replace(
                "</devices>",
                "<disk type=\"block\" device=\"disk\"><source dev=\"/dev/vol\"/><target dev=\"vdc\" bus=\"virtio\"/></disk></devices>",
            );
        let mut new = spec(true, true, Emulation::Tcg);
        new.intent.flavor = "SCS-4C-8".into();
        new.disks.clear();
        new.nics.clear();
        let added = [DiskSpec {
            source: DiskSource::File("/var/lib/hvagent/vms/x/disk1.qcow2".into()),
            format: "qcow2",
            readonly: false,
        }];
        let xml = resized_xml(&new, &old, &added).unwrap();
        let devices = |x: &str| {
            let (s, e) = devices_span(x).unwrap();
            x[s..e].to_string()
        };
        assert_eq!(
            devices(&xml),
            devices(&old).replace(
                "</devices>",
                "<disk type=\"file\" device=\"disk\"><driver name=\"qemu\" type=\"qcow2\"/><source file=\"/var/lib/hvagent/vms/x/disk1.qcow2\"/><target dev=\"vdd\" bus=\"virtio\"/></disk></devices>"
            )
        );
        assert!(xml.contains("<memoryBacking>"), "{xml}");
        assert!(xml.contains("<vcpupin vcpu=\"0\" cpuset=\"2\"/>"), "{xml}");
        assert_eq!(read_intent(&xml).unwrap().flavor, "SCS-4C-8");
        assert_eq!(
            super::super::volume_disk::disks(&devices(&xml))
                .unwrap()
                .into_iter()
                .map(|d| d.target)
                .collect::<Vec<_>>(),
            ["vda", "vdb", "vdc", "vdd"]
        );
    }

    #[test]
    fn disk_letters() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52]
            .iter()
            .map(|&i| disk_letter(i))
            .collect();
        assert_eq!(names, ["a", "b", "z", "aa", "ab", "az", "ba"]);
    }
}
