//! The JSON shape of a parsed flavor, as `hvctl flavor parse --output json` prints it and as the
//! API documents it. Field order and names are part of the contract.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{GpuKind, Parsed, extra_specs};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlavorView {
    pub name: String,
    pub syntax: &'static str,
    pub cpu: CpuView,
    pub ram: RamView,
    pub disk: Option<DiskView>,
    pub hypervisor: Option<&'static str>,
    pub hwv: bool,
    pub cpu_brand: Option<BrandView>,
    pub gpu: Option<GpuView>,
    pub ib: bool,
    pub short_name: String,
    pub extra_specs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuView {
    pub count: u32,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RamView {
    pub gib: f64,
    pub ecc: bool,
    pub oversubscribed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskView {
    pub count: u32,
    pub size_gb: Option<u32>,
    #[serde(rename = "type")]
    pub kind: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrandView {
    pub vendor: &'static str,
    pub generation: Option<u8>,
    pub frequency_level: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuView {
    pub kind: &'static str,
    pub vendor: &'static str,
    pub generation: Option<&'static str>,
    pub compute_units: Option<u32>,
    pub high_freq_level: u8,
    pub vram_gib: Option<u32>,
    pub hbm_level: u8,
}

impl FlavorView {
    pub fn new(parsed: &Parsed) -> Self {
        let s = &parsed.spec;
        FlavorView {
            name: s.name(),
            syntax: parsed.syntax.as_str(),
            cpu: CpuView {
                count: s.cpus,
                kind: s.cpu_type.key(),
                insecure: s.insecure,
            },
            ram: RamView {
                gib: s.ram_gib(),
                ecc: s.ecc,
                oversubscribed: s.ram_oversubscribed,
            },
            disk: s.disk.map(|d| DiskView {
                count: d.count,
                size_gb: d.size_gb,
                kind: d.kind.map(|k| k.key()),
            }),
            hypervisor: s.hypervisor.map(|h| h.code()),
            hwv: s.hwv,
            cpu_brand: s.cpu_brand.map(|b| BrandView {
                vendor: b.vendor.word(),
                generation: b.generation,
                frequency_level: b.frequency_level,
            }),
            gpu: s.gpu.as_ref().map(|g| GpuView {
                kind: match g.kind {
                    GpuKind::Passthrough => "passthrough",
                    GpuKind::Virtual => "virtual",
                },
                vendor: g.vendor.word(),
                generation: g.generation,
                compute_units: g.compute_units,
                high_freq_level: g.high_freq_level,
                vram_gib: g.vram_gib,
                hbm_level: g.hbm_level,
            }),
            ib: s.ib,
            short_name: s.short().name(),
            extra_specs: extra_specs::for_spec(s),
        }
    }
}
