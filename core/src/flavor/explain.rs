//! Every promise of a flavor name in plain words, with what hvagent does on this node to keep it
//! (the enforcement table of docs/flavors.md).

use super::{CpuType, DiskType, FlavorSpec, GpuKind, Hypervisor};

/// One promise of the name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Promise {
    /// The part of the name it comes from, e.g. `4C`, `16`, `_hwv`.
    pub part: String,
    pub promise: String,
    pub enforcement: String,
}

fn promise(
    part: impl Into<String>,
    promise: impl Into<String>,
    enforcement: impl Into<String>,
) -> Promise {
    Promise {
        part: part.into(),
        promise: promise.into(),
        enforcement: enforcement.into(),
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn explain(spec: &FlavorSpec) -> Vec<Promise> {
    let n = spec.cpus;
    let vcpus = plural(n, "vCPU", "vCPUs");
    let cpu_part = format!(
        "{n}{}{}",
        spec.cpu_type.letter(),
        if spec.insecure { "i" } else { "" }
    );
    let mut out = vec![match spec.cpu_type {
        CpuType::DedicatedCore => promise(
            &cpu_part,
            format!("{vcpus}, each on a dedicated physical core"),
            format!(
                "{vcpus}, each pinned to its own physical core that no other guest and no shared pool uses; the core's SMT siblings stay idle or belong to this guest, and the guest sees a matching topology"
            ),
        ),
        CpuType::DedicatedThread => promise(
            &cpu_part,
            format!("{vcpus}, each on a dedicated hardware thread"),
            format!(
                "{vcpus}, each pinned 1:1 to its own hardware thread; sibling threads go to the same guest where possible (the guest then sees threads=2), and a sibling is shared with another guest only on hosts not affected by L1TF/MDS{}",
                if spec.insecure {
                    " or, as this flavor is insecure (i), anyway"
                } else {
                    ""
                }
            ),
        ),
        CpuType::Shared => promise(
            &cpu_part,
            format!("{vcpus}, each getting at least 20 % of a core more than 99 % of the time"),
            format!(
                "{vcpus} floating over the shared pool, admitted only while the pool holds at most 5 vCPUs per core (SMT off) or 3 per hardware thread (SMT on), counting every guest in the pool; carving out dedicated CPUs never pushes the pool past that ratio"
            ),
        ),
        CpuType::Crowded => promise(
            &cpu_part,
            format!("{vcpus}, heavily oversubscribed (no minimum share)"),
            format!(
                "{vcpus} in the crowded pool, bounded by the node's configured ratio and never counted against a V pool beyond what keeps V's ratio"
            ),
        ),
    }];
    out.push(promise(
        &cpu_part,
        "guest vCPU threads are not disturbed by the emulator",
        "QEMU emulator and I/O threads are pinned to the host's reserved CPUs, never onto another guest's dedicated CPUs",
    ));
    out.push(if spec.insecure {
        promise(
            "i",
            "insecure: the provider does not promise timely microcode and kernel fixes, or runs SMT on L1TF-affected CPUs without core scheduling",
            "may run on any node, including nodes whose security state requires i",
        )
    } else {
        promise(
            &cpu_part,
            "secure: microcode and kernel mitigations applied within a month, no SMT on L1TF-affected CPUs without core scheduling",
            "admitted only on nodes whose vulnerability states are all mitigated or not affected (inventory: scs.serves_secure)",
        )
    });

    let ram = format!("{} GiB", trim(spec.ram_gib()));
    let ram_part = format!(
        "{}{}{}",
        trim(spec.ram_gib()),
        if spec.ecc { "" } else { "u" },
        if spec.ram_oversubscribed { "o" } else { "" }
    );
    out.push(if spec.ram_oversubscribed {
        promise(&ram_part, format!("{ram} of RAM, which may be oversubscribed (o)"), "guest RAM plus QEMU overhead may exceed what the node reserves for it")
    } else {
        let numa = if matches!(spec.cpu_type, CpuType::DedicatedCore | CpuType::DedicatedThread) {
            ", strictly from the NUMA node(s) of its CPUs"
        } else {
            ""
        };
        promise(
            &ram_part,
            format!("{ram} of RAM, not oversubscribed"),
            format!("{ram} plus the QEMU overhead reserved from node memory minus the host reserve{numa}; hugepages when the node policy asks"),
        )
    });
    out.push(if spec.ecc {
        promise(
            &ram_part,
            "ECC memory",
            "admitted only on nodes where EDAC confirms ECC (inventory: scs.serves_ecc)",
        )
    } else {
        promise(&ram_part, "memory may lack ECC (u)", "may run on any node")
    });

    match &spec.disk {
        None => out.push(promise(
            "(no disk)",
            "no local root disk: the guest boots from a volume",
            "no local disk is created or claimed (DISK_GB 0); the guest boots from the volume named at create (boot_volume), or else from a volume the agent makes from the image (root-<uuid>, in the volume store, deleted with the guest)",
        )),
        Some(d) => {
            let part = format!(
                "-{}{}{}",
                if d.count == 1 {
                    String::new()
                } else {
                    format!("{}x", d.count)
                },
                d.size_gb.map(|s| s.to_string()).unwrap_or_default(),
                d.kind.map(|k| k.letter().to_string()).unwrap_or_default()
            );
            let size = match d.size_gb {
                Some(s) => format!("{s} GB"),
                None => "at least the image's min_disk".into(),
            };
            let disks = if d.count == 1 {
                format!("a root disk of {size}")
            } else {
                format!("{} independent disks of {size} each", d.count)
            };
            let (kind, enforcement) = match d.kind {
                None => (
                    "of a type the cloud chooses",
                    "treated as network storage, as its extra_specs say (scs:diskN-type = network, what the SCS certification test expects)".to_string(),
                ),
                Some(DiskType::Network) => (
                    "on network storage that survives a single disk and a single node failure",
                    "needs a configured network-backed pool".to_string(),
                ),
                Some(DiskType::Hdd) => (
                    "on a local HDD",
                    "placed on local storage the inventory classifies as h (or better)".to_string(),
                ),
                Some(DiskType::Ssd) => (
                    "on a local SSD with more than 1000 sequential IOPS and power-loss protection",
                    "placed on local storage the inventory classifies as s or p".to_string(),
                ),
                Some(DiskType::Nvme) => (
                    "on local NVMe with more than 1000 sequential IOPS and power-loss protection",
                    "placed on local storage the inventory classifies as p".to_string(),
                ),
            };
            out.push(promise(part, format!("{disks} {kind}"), enforcement));
        }
    }

    let hyp = spec.hypervisor.unwrap_or(Hypervisor::Kvm);
    let hyp_name = match hyp {
        Hypervisor::Kvm => "KVM",
        Hypervisor::CloudHypervisor => "Cloud Hypervisor",
        Hypervisor::Xen => "Xen",
        Hypervisor::Vmware => "VMware",
        Hypervisor::HyperV => "Hyper-V",
        Hypervisor::BareMetal => "bare metal (no hypervisor)",
    };
    out.push(promise(
        spec.hypervisor
            .map(|h| format!("_{}", h.code()))
            .unwrap_or_else(|| "(default)".into()),
        format!("runs on {hyp_name}"),
        if hyp == Hypervisor::Kvm {
            "hvagent runs guests with KVM where KVM really works (inventory: hypervisor.kvm)"
                .to_string()
        } else {
            format!("hvagent manages KVM guests only: a {hyp_name} flavor is refused on this node")
        },
    ));
    if spec.hwv {
        out.push(promise("_hwv", "the guest sees hardware virtualization (vmx/svm)", "admitted only where KVM works and nesting is on (inventory: scs.serves_hwv); the guest CPU exposes vmx/svm"));
    }
    if let Some(b) = &spec.cpu_brand {
        let generation = match b.generation {
            Some(g) => format!(
                " generation {g} ({})",
                b.vendor
                    .generations()
                    .get(usize::from(g))
                    .copied()
                    .unwrap_or("?")
            ),
            None => String::new(),
        };
        let freq = match b.frequency_level {
            0 => String::new(),
            1 => ", all-core clock above 2.75 GHz".into(),
            2 => ", all-core clock above 3.25 GHz".into(),
            _ => ", all-core clock above 3.75 GHz".into(),
        };
        out.push(promise(
            format!("_{}{}{}", b.vendor.letter(), b.generation.map(|g| g.to_string()).unwrap_or_default(), "h".repeat(usize::from(b.frequency_level))),
            format!("{} CPU{generation}{freq}", b.vendor.word()),
            "admitted only where the node's CPU brand (inventory: scs.cpu_brand) has this vendor, generation and frequency level",
        ));
    }
    if let Some(g) = &spec.gpu {
        let kind = match g.kind {
            GpuKind::Passthrough => "a pass-through",
            GpuKind::Virtual => "a virtual",
        };
        let generation = g
            .generation
            .and_then(|code| g.vendor.generations().iter().find(|(c, _)| *c == code))
            .map(|(_, arch)| format!(" {arch}"))
            .unwrap_or_default();
        let mut what = format!("{kind} {}{generation} GPU", g.vendor.word());
        if let Some(cu) = g.compute_units {
            what.push_str(&format!(" with {cu} {}", g.vendor.unit_name()));
            if g.high_freq_level > 0 {
                what.push_str(&format!(
                    " ({} frequency)",
                    if g.high_freq_level == 1 {
                        "high"
                    } else {
                        "very high"
                    }
                ));
            }
        }
        if let Some(vram) = g.vram_gib {
            what.push_str(&format!(" and {vram} GiB VRAM"));
            if g.hbm_level > 0 {
                what.push_str(&format!(
                    " ({} bandwidth)",
                    if g.hbm_level == 1 {
                        "high"
                    } else {
                        "very high"
                    }
                ));
            }
        }
        out.push(promise(
            "_gpu",
            what,
            "admitted only where a matching free GPU exists on the node",
        ));
    }
    if spec.ib {
        out.push(promise(
            "_ib",
            "InfiniBand networking",
            "admitted only where an InfiniBand adapter exists on the node",
        ));
    }
    out.push(promise(
        "(entropy)",
        "the guest sees unfiltered RDRAND/RDSEED (scs-0101)",
        "the guest CPU model exposes rdrand/rdseed where the host has them; virtio-rng when the image asks",
    ));
    out
}

/// 4.0 → "4", 3.5 → "3.5".
fn trim(gib: f64) -> String {
    if gib.fract() == 0.0 {
        format!("{gib:.0}")
    } else {
        format!("{gib:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavor::parse;

    fn lines(name: &str) -> Vec<String> {
        explain(&parse(name).unwrap().spec)
            .into_iter()
            .map(|p| format!("{}: {} | {}", p.part, p.promise, p.enforcement))
            .collect()
    }

    #[test]
    fn dedicated_cores_are_explained() {
        let text = lines("SCS-4C-16-50s").join("\n");
        assert!(text.contains("4C: 4 vCPUs, each on a dedicated physical core | 4 vCPUs, each pinned to its own physical core that no other guest"), "{text}");
        assert!(text.contains("16 GiB of RAM, not oversubscribed"), "{text}");
        assert!(
            text.contains("strictly from the NUMA node(s) of its CPUs"),
            "{text}"
        );
        assert!(
            text.contains("-50s: a root disk of 50 GB on a local SSD"),
            "{text}"
        );
        assert!(text.contains("ECC memory"), "{text}");
    }

    #[test]
    fn every_part_has_a_promise() {
        let text = lines("SCS-16Ti-64.5uo-3x10p_bms_hwv_z3hh_GNa-64h-48hh_ib").join("\n");
        for needle in [
            "16 vCPUs, each on a dedicated hardware thread",
            "or, as this flavor is insecure (i), anyway",
            "64.5 GiB of RAM, which may be oversubscribed (o)",
            "memory may lack ECC (u)",
            "3 independent disks of 10 GB each on local NVMe",
            "a bms flavor is refused"
                .replace("bms", "bare metal (no hypervisor)")
                .as_str(),
            "the guest sees hardware virtualization",
            "amd CPU generation 3 (Zen 3 (Milan)), all-core clock above 3.25 GHz",
            "a pass-through nvidia Ampere GPU with 64 streaming multiprocessors (high frequency) and 48 GiB VRAM (very high bandwidth)",
            "InfiniBand networking",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let text = lines("SCS-1L-1").join("\n");
        assert!(text.contains("heavily oversubscribed"), "{text}");
        assert!(text.contains("no local root disk"), "{text}");
        assert!(
            text.contains("boot_volume") && text.contains("DISK_GB 0"),
            "{text}"
        );
        assert!(text.contains("1 vCPU,"), "{text}");
    }
}
