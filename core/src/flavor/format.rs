//! Spec → name. The inverse of the parser on canonical names.

use std::fmt::Write;

use super::FlavorSpec;

#[derive(Clone, Copy)]
pub struct Separators {
    main: char,
    ext: char,
}

impl Separators {
    pub const V3: Separators = Separators {
        main: '-',
        ext: '_',
    };
    pub const V1: Separators = Separators {
        main: ':',
        ext: '-',
    };
}

pub fn name(spec: &FlavorSpec, sep: Separators) -> String {
    let Separators { main, ext } = sep;
    let mut s = format!("SCS-{}{}", spec.cpus, spec.cpu_type.letter());
    // Writing into a String cannot fail.
    let _ = write!(
        s,
        "{}{main}{}",
        if spec.insecure { "i" } else { "" },
        ram(spec.ram_half_gib)
    );
    if !spec.ecc {
        s.push('u');
    }
    if spec.ram_oversubscribed {
        s.push('o');
    }
    if let Some(disk) = &spec.disk {
        s.push(main);
        if disk.count != 1 {
            let _ = write!(s, "{}x", disk.count);
        }
        if let Some(size) = disk.size_gb {
            let _ = write!(s, "{size}");
        }
        if let Some(kind) = disk.kind {
            s.push(kind.letter());
        }
    }
    if let Some(h) = spec.hypervisor {
        let _ = write!(s, "{ext}{}", h.code());
    }
    if spec.hwv {
        let _ = write!(s, "{ext}hwv");
    }
    if let Some(b) = &spec.cpu_brand {
        let _ = write!(s, "{ext}{}", b.vendor.letter());
        if let Some(g) = b.generation {
            let _ = write!(s, "{g}");
        }
        s.push_str(&"h".repeat(usize::from(b.frequency_level)));
    }
    if let Some(g) = &spec.gpu {
        let kind = match g.kind {
            super::GpuKind::Passthrough => 'G',
            super::GpuKind::Virtual => 'g',
        };
        let _ = write!(
            s,
            "{ext}{kind}{}{}",
            g.vendor.letter(),
            g.generation.unwrap_or("")
        );
        if let Some(cu) = g.compute_units {
            let _ = write!(
                s,
                "{main}{cu}{}",
                "h".repeat(usize::from(g.high_freq_level))
            );
            if let Some(vram) = g.vram_gib {
                let _ = write!(s, "{main}{vram}{}", "h".repeat(usize::from(g.hbm_level)));
            }
        }
    }
    if spec.ib {
        let _ = write!(s, "{ext}ib");
    }
    s
}

fn ram(half_gib: u32) -> String {
    if half_gib.is_multiple_of(2) {
        (half_gib / 2).to_string()
    } else {
        format!("{}.5", half_gib / 2)
    }
}
