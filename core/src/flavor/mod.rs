//! SCS flavor names (scs-0100-v3) as typed specs: parsing with positioned errors, the canonical
//! and short names, extra_specs (scs-0103), the standard catalog and plain-language promises.
//! Pure: no I/O anywhere in this module.

pub mod catalog;
pub mod explain;
pub mod extra_specs;
mod format;
mod parse;
pub mod proto;
pub mod view;

#[cfg(test)]
mod tests;

pub use parse::{ParseError, Parsed, Syntax, parse};

/// What the vCPUs are (the letter after the count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuType {
    /// `L`: heavily oversubscribed.
    Crowded,
    /// `V`: at least 20 % of a core.
    Shared,
    /// `T`: a dedicated hardware thread.
    DedicatedThread,
    /// `C`: a dedicated physical core.
    DedicatedCore,
}

impl CpuType {
    pub const ALL: [CpuType; 4] = [
        CpuType::Crowded,
        CpuType::Shared,
        CpuType::DedicatedThread,
        CpuType::DedicatedCore,
    ];

    pub fn letter(self) -> char {
        match self {
            CpuType::Crowded => 'L',
            CpuType::Shared => 'V',
            CpuType::DedicatedThread => 'T',
            CpuType::DedicatedCore => 'C',
        }
    }

    fn from_letter(c: char) -> Option<CpuType> {
        CpuType::ALL.into_iter().find(|t| t.letter() == c)
    }

    /// The `scs:cpu-type` value.
    pub fn key(self) -> &'static str {
        match self {
            CpuType::Crowded => "crowded-core",
            CpuType::Shared => "shared-core",
            CpuType::DedicatedThread => "dedicated-thread",
            CpuType::DedicatedCore => "dedicated-core",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskType {
    Network,
    Hdd,
    Ssd,
    Nvme,
}

impl DiskType {
    pub const ALL: [DiskType; 4] = [
        DiskType::Network,
        DiskType::Hdd,
        DiskType::Ssd,
        DiskType::Nvme,
    ];

    pub fn letter(self) -> char {
        match self {
            DiskType::Network => 'n',
            DiskType::Hdd => 'h',
            DiskType::Ssd => 's',
            DiskType::Nvme => 'p',
        }
    }

    fn from_letter(c: char) -> Option<DiskType> {
        DiskType::ALL.into_iter().find(|t| t.letter() == c)
    }

    /// The `scs:diskN-type` value.
    pub fn key(self) -> &'static str {
        match self {
            DiskType::Network => "network",
            DiskType::Hdd => "hdd",
            DiskType::Ssd => "ssd",
            DiskType::Nvme => "nvme",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hypervisor {
    Kvm,
    CloudHypervisor,
    Xen,
    Vmware,
    HyperV,
    BareMetal,
}

impl Hypervisor {
    pub const ALL: [Hypervisor; 6] = [
        Hypervisor::Kvm,
        Hypervisor::CloudHypervisor,
        Hypervisor::Xen,
        Hypervisor::Vmware,
        Hypervisor::HyperV,
        Hypervisor::BareMetal,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Hypervisor::Kvm => "kvm",
            Hypervisor::CloudHypervisor => "chy",
            Hypervisor::Xen => "xen",
            Hypervisor::Vmware => "vmw",
            Hypervisor::HyperV => "hyv",
            Hypervisor::BareMetal => "bms",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuVendor {
    Intel,
    Amd,
    Arm,
    RiscV,
}

impl CpuVendor {
    pub const ALL: [CpuVendor; 4] = [
        CpuVendor::Intel,
        CpuVendor::Amd,
        CpuVendor::Arm,
        CpuVendor::RiscV,
    ];

    pub fn letter(self) -> char {
        match self {
            CpuVendor::Intel => 'i',
            CpuVendor::Amd => 'z',
            CpuVendor::Arm => 'a',
            CpuVendor::RiscV => 'r',
        }
    }

    fn from_letter(c: char) -> Option<CpuVendor> {
        CpuVendor::ALL.into_iter().find(|v| v.letter() == c)
    }

    pub fn word(self) -> &'static str {
        match self {
            CpuVendor::Intel => "intel",
            CpuVendor::Amd => "amd",
            CpuVendor::Arm => "arm",
            CpuVendor::RiscV => "riscv",
        }
    }

    /// The generations scs-0100-v3 names, index = generation number.
    pub fn generations(self) -> &'static [&'static str] {
        match self {
            CpuVendor::Intel => &[
                "pre-Skylake",
                "Skylake",
                "Cascade Lake",
                "Ice Lake",
                "Sapphire Rapids",
                "Sierra Forest",
                "Granite Rapids",
            ],
            CpuVendor::Amd => &[
                "pre-Zen",
                "Zen 1 (Naples)",
                "Zen 2 (Rome)",
                "Zen 3 (Milan)",
                "Zen 4 (Genoa/Bergamo)",
                "Zen 5 (Turin)",
                "Zen 6 (Venice)",
            ],
            CpuVendor::Arm => &[
                "pre-A76",
                "A76/N1",
                "A78/X1/V1",
                "N2/V2",
                "AmpereOne",
                "N3/V3",
            ],
            CpuVendor::RiscV => &["unspecified"],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuBrand {
    pub vendor: CpuVendor,
    pub generation: Option<u8>,
    /// Number of `h`: all-core clock > 2.75 / 3.25 / 3.75 GHz.
    pub frequency_level: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuKind {
    /// `G`
    Passthrough,
    /// `g`
    Virtual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuVendor {
    Nvidia,
    Amd,
    Intel,
}

impl GpuVendor {
    pub const ALL: [GpuVendor; 3] = [GpuVendor::Nvidia, GpuVendor::Amd, GpuVendor::Intel];

    pub fn letter(self) -> char {
        match self {
            GpuVendor::Nvidia => 'N',
            GpuVendor::Amd => 'A',
            GpuVendor::Intel => 'I',
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            GpuVendor::Nvidia => "nvidia",
            GpuVendor::Amd => "amd",
            GpuVendor::Intel => "intel",
        }
    }

    /// What the vendor's compute units are called.
    pub fn unit_name(self) -> &'static str {
        match self {
            GpuVendor::Nvidia => "streaming multiprocessors",
            GpuVendor::Amd => "compute units",
            GpuVendor::Intel => "execution units",
        }
    }

    /// (code, architecture) of every generation the standard names.
    pub fn generations(self) -> &'static [(&'static str, &'static str)] {
        match self {
            GpuVendor::Nvidia => &[
                ("f", "Fermi"),
                ("k", "Kepler"),
                ("m", "Maxwell"),
                ("p", "Pascal"),
                ("v", "Volta"),
                ("t", "Turing"),
                ("a", "Ampere"),
                ("l", "Ada Lovelace"),
                ("g", "Grace Hopper"),
                ("b", "Blackwell"),
                ("u", "Blackwell Ultra"),
            ],
            GpuVendor::Amd => &[
                ("0.4", "GCN 4 (Polaris)"),
                ("0.5", "GCN 5 (Vega)"),
                ("1", "CDNA 1"),
                ("2", "CDNA 2"),
                ("3", "CDNA 3"),
                ("4", "CDNA 4"),
                ("1.1", "RDNA 1"),
                ("2.1", "RDNA 2"),
                ("3.1", "RDNA 3"),
                ("3.5", "RDNA 3.5"),
                ("4.1", "RDNA 4"),
                ("5.1", "RDNA 5"),
            ],
            GpuVendor::Intel => &[
                ("0.9", "Gen9"),
                ("0.95", "Gen9.5"),
                ("1", "Xe 1 (Gen12.1)"),
                ("2", "Xe 2"),
                ("3", "Xe 3"),
                ("4", "Xe 4"),
            ],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gpu {
    pub kind: GpuKind,
    pub vendor: GpuVendor,
    /// A code from [`GpuVendor::generations`].
    pub generation: Option<&'static str>,
    pub compute_units: Option<u32>,
    /// `h`/`hh` after the compute units: high frequency.
    pub high_freq_level: u8,
    pub vram_gib: Option<u32>,
    /// `h`/`hh` after the VRAM: high bandwidth memory.
    pub hbm_level: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Disk {
    /// `M` of `MxN`; 1 when absent.
    pub count: u32,
    /// `None`: the cloud sizes the root disk (`-` or `-n`).
    pub size_gb: Option<u32>,
    pub kind: Option<DiskType>,
}

/// Everything an SCS flavor name says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlavorSpec {
    pub cpus: u32,
    pub cpu_type: CpuType,
    /// `i`: the provider does not promise timely mitigations.
    pub insecure: bool,
    /// RAM in units of 0.5 GiB (the standard allows halves).
    pub ram_half_gib: u32,
    /// No `u`: ECC memory.
    pub ecc: bool,
    /// `o`: memory may be oversubscribed.
    pub ram_oversubscribed: bool,
    /// `None`: no root disk, boot from volume.
    pub disk: Option<Disk>,
    pub hypervisor: Option<Hypervisor>,
    pub hwv: bool,
    pub cpu_brand: Option<CpuBrand>,
    pub gpu: Option<Gpu>,
    pub ib: bool,
}

impl FlavorSpec {
    pub fn ram_gib(&self) -> f64 {
        f64::from(self.ram_half_gib) / 2.0
    }

    /// The canonical v3 name.
    pub fn name(&self) -> String {
        format::name(self, format::Separators::V3)
    }

    /// The name in the deprecated v1 syntax (`:` inside the main part, `-` before extensions).
    pub fn name_v1(&self) -> String {
        format::name(self, format::Separators::V1)
    }

    /// The short form: without hypervisor, `hwv`, an x86 CPU brand (an ARM/RISC-V brand keeps
    /// only its vendor, which fixes the architecture) and GPU `h` modifiers.
    pub fn short(&self) -> FlavorSpec {
        FlavorSpec {
            hypervisor: None,
            hwv: false,
            cpu_brand: self.cpu_brand.and_then(|b| match b.vendor {
                CpuVendor::Intel | CpuVendor::Amd => None,
                vendor => Some(CpuBrand {
                    vendor,
                    generation: None,
                    frequency_level: 0,
                }),
            }),
            gpu: self.gpu.clone().map(|g| Gpu {
                high_freq_level: 0,
                hbm_level: 0,
                ..g
            }),
            ..self.clone()
        }
    }
}
