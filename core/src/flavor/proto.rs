//! Flavors as the API's proto messages: what the agent's FlavorService answers and what
//! `hvctl flavor standard --output json` prints.

use hvagent_proto::v1 as pb;

use super::{catalog, parse, view::FlavorView};

pub fn to_proto(view: FlavorView) -> pb::Flavor {
    pb::Flavor {
        name: view.name,
        syntax: view.syntax.into(),
        cpu: Some(pb::FlavorCpu {
            count: view.cpu.count,
            r#type: view.cpu.kind.into(),
            insecure: view.cpu.insecure,
        }),
        ram: Some(pb::FlavorRam {
            gib: view.ram.gib,
            ecc: view.ram.ecc,
            oversubscribed: view.ram.oversubscribed,
        }),
        disk: view.disk.map(|d| pb::FlavorDisk {
            count: d.count,
            size_gb: d.size_gb,
            r#type: d.kind.map(String::from),
        }),
        hypervisor: view.hypervisor.map(String::from),
        hwv: view.hwv,
        cpu_brand: view.cpu_brand.map(|b| pb::FlavorCpuBrand {
            vendor: b.vendor.into(),
            generation: b.generation.map(u32::from),
            frequency_level: u32::from(b.frequency_level),
        }),
        gpu: view.gpu.map(|g| pb::FlavorGpu {
            kind: g.kind.into(),
            vendor: g.vendor.into(),
            generation: g.generation.map(String::from),
            compute_units: g.compute_units,
            high_freq_level: u32::from(g.high_freq_level),
            vram_gib: g.vram_gib,
            hbm_level: u32::from(g.hbm_level),
        }),
        ib: view.ib,
        short_name: view.short_name,
        extra_specs: view.extra_specs,
    }
}

/// The catalog as proto messages (also what `hvctl flavor standard --output json` prints).
pub fn standard_flavors() -> Vec<pb::StandardFlavor> {
    catalog::standard()
        .filter_map(|f| {
            let parsed = parse(f.name).ok()?;
            Some(pb::StandardFlavor {
                name: f.name.into(),
                mandatory: f.mandatory,
                flavor: Some(to_proto(FlavorView::new(&parsed))),
            })
        })
        .collect()
}
