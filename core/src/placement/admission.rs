//! Promises a node either can or can never keep, whatever is free: ECC, security, disk class,
//! nested virtualization, CPU brand, hypervisor, GPU kind, InfiniBand (scs-flavors.md §5).
//! A refusal here is `FAILED_PRECONDITION`: retrying on this node is pointless.

use super::claim::Refusal;
use super::topology::Topology;
use crate::flavor::{DiskType, FlavorSpec, GpuKind, Hypervisor};
use crate::host::Passthrough;

pub fn check(spec: &FlavorSpec, topo: &Topology) -> Result<(), Refusal> {
    let facts = &topo.facts;
    let refuse = |what: &str, msg: String| Err(Refusal::precondition(what, msg));
    if spec.ecc && !facts.ecc.holds {
        return refuse(
            "ECC",
            format!(
                "flavor promises ECC memory (no `u` in the name) but this node cannot: {}",
                facts.ecc.reason
            ),
        );
    }
    if !spec.insecure && !facts.secure.holds {
        return refuse(
            "security",
            format!(
                "flavor promises timely security mitigations (no `i` in the name) but this node \
                 serves only `i` flavors: {}",
                facts.secure.reason
            ),
        );
    }
    if let Some(disk) = &spec.disk
        && let Some(kind) = disk.kind
    {
        if kind == DiskType::Network {
            return refuse(
                "disk class",
                "flavor asks for network-backed disks (`n`) but no network storage pool is configured on this node".into(),
            );
        }
        if !facts.disk_classes.contains(&kind.letter()) {
            return refuse(
                "disk class",
                format!(
                    "flavor asks for {} disks (`{}`) but the local disks are [{}]",
                    kind.key(),
                    kind.letter(),
                    facts
                        .disk_classes
                        .iter()
                        .map(char::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    match spec.hypervisor {
        None => {}
        Some(Hypervisor::Kvm) if facts.kvm.holds => {}
        Some(Hypervisor::Kvm) => {
            return refuse(
                "hypervisor",
                format!(
                    "flavor names the KVM hypervisor (`_kvm`) but KVM does not work here: {}",
                    facts.kvm.reason
                ),
            );
        }
        Some(other) => {
            return refuse(
                "hypervisor",
                format!(
                    "flavor names the `{}` hypervisor; this node runs KVM/QEMU",
                    other.code()
                ),
            );
        }
    }
    if spec.hwv && !facts.hwv.holds {
        return refuse(
            "hwv",
            format!(
                "flavor promises nested virtualization (`_hwv`) but: {}",
                facts.hwv.reason
            ),
        );
    }
    if let Some(want) = &spec.cpu_brand {
        let Some(have) = &facts.brand else {
            return refuse(
                "CPU brand",
                "flavor names a CPU brand but this node's CPU brand is unknown".into(),
            );
        };
        if have.vendor != want.vendor.letter() {
            return refuse(
                "CPU brand",
                format!(
                    "flavor asks for CPU vendor {} (`{}`), this node has `{}`",
                    want.vendor.word(),
                    want.vendor.letter(),
                    have.code()
                ),
            );
        }
        if let Some(g) = want.generation
            && have.generation != Some(g)
        {
            return refuse(
                "CPU brand",
                format!(
                    "flavor asks for CPU generation {g} ({}), this node has `{}`",
                    want.vendor
                        .generations()
                        .get(usize::from(g))
                        .copied()
                        .unwrap_or("?"),
                    have.code()
                ),
            );
        }
        if want.frequency_level > have.frequency_level.unwrap_or(0) {
            return refuse(
                "CPU brand",
                format!(
                    "flavor asks for frequency level {} (`{}`), this node can promise {}",
                    want.frequency_level,
                    "h".repeat(usize::from(want.frequency_level)),
                    match have.frequency_level {
                        Some(l) => format!("level {l}"),
                        None => "none (its all-core clock is unknown)".into(),
                    }
                ),
            );
        }
    }
    if let Some(gpu) = &spec.gpu {
        if gpu.kind == GpuKind::Virtual {
            return refuse(
                "GPU",
                "flavor asks for a virtual GPU (`g`); this node passes through whole GPUs only"
                    .into(),
            );
        }
        if gpu.generation.is_some() || gpu.compute_units.is_some() || gpu.vram_gib.is_some() {
            return refuse(
                "GPU",
                "flavor names a GPU generation, compute units or VRAM, which this node cannot verify from PCI ids".into(),
            );
        }
        let vendor = gpu.vendor.letter();
        let of_vendor: Vec<_> = facts.gpus.iter().filter(|g| g.vendor == vendor).collect();
        if of_vendor.is_empty() {
            return refuse(
                "GPU",
                format!(
                    "flavor asks for a GPU of vendor {}; this node has none",
                    gpu.vendor.word()
                ),
            );
        }
        if facts.ready_gpus(vendor).next().is_none() {
            return refuse(
                "GPU",
                format!(
                    "flavor asks for a GPU of vendor {}; none of this node's can be passed \
                     through: {}",
                    gpu.vendor.word(),
                    why_not(of_vendor.iter().map(|g| (&g.pci_address, &g.passthrough)))
                ),
            );
        }
    }
    if spec.ib {
        if facts.infiniband.is_empty() {
            return refuse(
                "InfiniBand",
                "flavor asks for InfiniBand (`_ib`); this node has no InfiniBand device".into(),
            );
        }
        if !facts.serves_infiniband() {
            return refuse(
                "InfiniBand",
                format!(
                    "flavor asks for InfiniBand (`_ib`); no InfiniBand HCA of this node can be \
                     passed through: {}",
                    why_not(
                        facts
                            .infiniband
                            .iter()
                            .map(|d| (&d.pci_address, &d.passthrough))
                    )
                ),
            );
        }
    }
    Ok(())
}

/// `<address>: <reason>` for each device, `; ` between them.
fn why_not<'a>(devices: impl Iterator<Item = (&'a String, &'a Passthrough)>) -> String {
    devices
        .map(|(address, p)| format!("{address}: {}", p.reason()))
        .collect::<Vec<_>>()
        .join("; ")
}
