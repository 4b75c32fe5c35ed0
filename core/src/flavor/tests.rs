//! Parser tests: every example of docs/flavors.md and scs-flavors.md, every table entry, every
//! rejection rule with its position, and property tests.

use proptest::prelude::*;

use super::*;

fn spec(name: &str) -> FlavorSpec {
    match parse(name) {
        Ok(p) => p.spec,
        Err(e) => panic!("{name}: {e}"),
    }
}

fn rejection(name: &str) -> String {
    match parse(name) {
        Ok(p) => panic!("{name} must be rejected, parsed as {:?}", p.spec),
        Err(e) => e.to_string(),
    }
}

#[test]
fn valid_examples_round_trip() {
    for name in [
        "SCS-2V-4-20s",
        "SCS-1L-1",
        "SCS-1V-0.5",
        "SCS-2C-3.5-10n",
        "SCS-2Li-4-10n",
        "SCS-2C-4uo-10n",
        "SCS-2C-4",
        "SCS-2C-4-",
        "SCS-2C-4-3x10",
        "SCS-8Ti-32-50p_i1",
        "SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64_ib",
        "SCS-4V-16_GA3.1-96-48",
        "SCS-2C-4-10s_bms_z3",
        "SCS-2C-4-n",
        "SCS-2C-4-_bms_z3h_GNa-64_ib",
        "SCS-2C-4-_ib",
        "SCS-2C-4_bms_z3",
        "SCS-2C-4-10_kvm_hwv",
        "SCS-2C-4-10_hwv",
        "SCS-1L-1u-5",
        "SCS-16T-64-200s_GNa-64_ib",
        "SCS-4C-16-2x200p_a1",
        "SCS-16V-64-500s_GNa-14h",
        "SCS-2C-4-10n_bms_z3hh",
        "SCS-4C-16-50s",
    ] {
        let parsed = parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.syntax, Syntax::V3, "{name}");
        assert!(parsed.warnings.is_empty());
        assert_eq!(parsed.spec.name(), name, "canonical round trip");
    }
}

#[test]
fn fields_of_a_long_name() {
    let s = spec("SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64_ib");
    assert_eq!(
        (s.cpus, s.cpu_type, s.insecure),
        (16, CpuType::DedicatedThread, false)
    );
    assert_eq!(
        (s.ram_gib(), s.ecc, s.ram_oversubscribed),
        (64.0, true, false)
    );
    assert_eq!(
        s.disk,
        Some(Disk {
            count: 3,
            size_gb: Some(10),
            kind: Some(DiskType::Ssd)
        })
    );
    assert_eq!(s.hypervisor, Some(Hypervisor::Kvm));
    assert!(s.hwv && s.ib);
    assert_eq!(
        s.cpu_brand,
        Some(CpuBrand {
            vendor: CpuVendor::Amd,
            generation: Some(3),
            frequency_level: 1
        })
    );
    let g = s.gpu.clone().unwrap();
    assert_eq!(
        (g.kind, g.vendor, g.generation),
        (GpuKind::Passthrough, GpuVendor::Nvidia, Some("a"))
    );
    assert_eq!(
        (g.compute_units, g.high_freq_level, g.vram_gib, g.hbm_level),
        (Some(64), 0, None, 0)
    );
    assert_eq!(s.short().name(), "SCS-16T-64-3x10s_GNa-64_ib");
    let g = spec("SCS-4V-16_GA3.1-96-48").gpu.unwrap();
    assert_eq!(
        (g.generation, g.compute_units, g.vram_gib),
        (Some("3.1"), Some(96), Some(48))
    );
    let g = spec("SCS-4V-16_gI0.95-24h-16hh").gpu.unwrap();
    assert_eq!(
        (g.kind, g.high_freq_level, g.hbm_level),
        (GpuKind::Virtual, 1, 2)
    );
}

#[test]
fn disk_forms() {
    assert_eq!(spec("SCS-2C-4").disk, None);
    let auto_size = Disk {
        count: 1,
        size_gb: None,
        kind: None,
    };
    assert_eq!(spec("SCS-2C-4-").disk, Some(auto_size));
    assert_eq!(
        spec("SCS-2C-4-n").disk,
        Some(Disk {
            kind: Some(DiskType::Network),
            ..auto_size
        })
    );
    assert_eq!(
        spec("SCS-2C-4-3x10").disk,
        Some(Disk {
            count: 3,
            size_gb: Some(10),
            kind: None
        })
    );
    for (letter, kind) in [
        ('n', DiskType::Network),
        ('h', DiskType::Hdd),
        ('s', DiskType::Ssd),
        ('p', DiskType::Nvme),
    ] {
        assert_eq!(
            spec(&format!("SCS-1V-1-5{letter}")).disk.unwrap().kind,
            Some(kind)
        );
    }
}

#[test]
fn every_table_entry_parses() {
    for t in CpuType::ALL {
        assert_eq!(spec(&format!("SCS-2{}-4", t.letter())).cpu_type, t);
    }
    for h in Hypervisor::ALL {
        assert_eq!(spec(&format!("SCS-2V-4_{}", h.code())).hypervisor, Some(h));
    }
    for v in CpuVendor::ALL {
        assert_eq!(
            spec(&format!("SCS-2V-4_{}", v.letter()))
                .cpu_brand
                .unwrap()
                .generation,
            None
        );
        for g in 0..v.generations().len() {
            for h in 0..=3 {
                let name = format!("SCS-2V-4_{}{g}{}", v.letter(), "h".repeat(h));
                let b = spec(&name).cpu_brand.unwrap();
                assert_eq!(
                    (b.vendor, b.generation, b.frequency_level),
                    (v, Some(g as u8), h as u8),
                    "{name}"
                );
                assert_eq!(spec(&name).name(), name);
            }
        }
        let next = v.generations().len();
        let e = rejection(&format!("SCS-2V-4_{}{next}", v.letter()));
        assert!(
            e.starts_with("position 10:") && e.contains("generation must be 0-"),
            "{e}"
        );
    }
    for v in GpuVendor::ALL {
        for (code, _) in v.generations() {
            for kind in ['G', 'g'] {
                for (cu_h, vram_h) in [(0, 0), (1, 0), (2, 1), (0, 2)] {
                    let name = format!(
                        "SCS-2V-4_{kind}{}{code}-8{}-16{}",
                        v.letter(),
                        "h".repeat(cu_h),
                        "h".repeat(vram_h)
                    );
                    let g = spec(&name).gpu.unwrap();
                    assert_eq!((g.vendor, g.generation), (v, Some(*code)), "{name}");
                    assert_eq!(
                        (g.high_freq_level, g.hbm_level),
                        (cu_h as u8, vram_h as u8),
                        "{name}"
                    );
                    assert_eq!(spec(&name).name(), name);
                }
            }
        }
        assert_eq!(
            spec(&format!("SCS-2V-4_G{}", v.letter()))
                .gpu
                .unwrap()
                .generation,
            None
        );
    }
}

#[test]
fn rejections_name_position_and_rule() {
    let cases = [
        (
            "SCS-2-4-10n",
            "position 5: CPU type must be one of L (crowded-core), V (shared-core), T (dedicated-thread), C (dedicated-core), got '-'",
        ),
        (
            "SCS-2iT-4-10n",
            "position 5: the CPU type letter comes before the insecure suffix i (e.g. 2Ti)",
        ),
        (
            "SCS-2C-4ou-10n",
            "position 9: RAM suffixes come in the order u, o (\"uo\")",
        ),
        (
            "SCS-2v-4",
            "position 5: CPU type letters are upper case: L, V, T, C, got 'v'",
        ),
        (
            "SCS-2V-4.3",
            "position 7: RAM must be a positive multiple of 0.5, got \"4.3\"",
        ),
        (
            "SCS-2V-4.0",
            "position 7: RAM must be a positive multiple of 0.5, got \"4.0\"",
        ),
        ("SCS-0V-4", "position 4: CPU count must be positive, got 0"),
        (
            "SCS-2C-4-1.5n",
            "position 9: disk size must be a whole number of GB",
        ),
        (
            "SCS-2C-4-10_hwv_xen",
            "position 15: extensions must appear in the order hypervisor, hwv, CPU brand, GPU, ib; hypervisor cannot follow hwv",
        ),
        (
            "SCS-2T-4_ic",
            "position 8: unknown extension \"_ic\" (known: hypervisor kvm/chy/xen/vmw/hyv/bms, hwv, CPU brand i/z/a/r, GPU G/g, ib)",
        ),
        (
            "SCS-2C-4-10n_i7",
            "position 14: Intel generation must be 0-6 without leading zeros, got \"7\"",
        ),
        (
            "SCS-2V-4-20s_r1",
            "position 14: RISC-V generation must be 0-0 without leading zeros, got \"1\"",
        ),
        (
            "SCS-1V-4-10 ",
            "position 11: unexpected ' '; extensions start with '_'",
        ),
        (
            "SCS-02V-4",
            "position 4: CPU count must be written without leading zeros, got \"02\"",
        ),
        (
            "SCS-2V-04",
            "position 7: RAM must be a positive multiple of 0.5, got \"04\"",
        ),
        (
            "SCS-2V-4-1x10",
            "position 9: one disk is written without \"1x\"",
        ),
        (
            "SCS-2V-4-0",
            "position 9: disk size (GB) must be positive, got 0",
        ),
        (
            "SCS-99999999999V-4",
            "position 4: CPU count 99999999999 is too large (at most 4294967295)",
        ),
        (
            "SCS-2V-4_GX",
            "position 10: GPU vendor must be N (Nvidia), A (AMD) or I (Intel), got 'X'",
        ),
        (
            "SCS-2V-4_GNz",
            "position 11: unknown nvidia GPU generation \"z\" (known: f, k, m, p, v, t, a, l, g, b, u)",
        ),
        (
            "SCS-2V-4_GNah",
            "position 12: GPU h levels follow the compute unit count (e.g. GNa-64h)",
        ),
        ("SCS-2V-4_GNa-8hhh", "position 16: GPU h levels are h or hh"),
        (
            "SCS-2V-4_GNa-8hhh-16",
            "position 16: GPU h levels are h or hh",
        ),
        (
            "SCS-2V-4_GNa-8-16hhh",
            "position 19: GPU h levels are h or hh",
        ),
        (
            "SCS-1V-1-4294967295x1",
            "position 9: disk count must be at most 64, got 4294967295",
        ),
        (
            "SCS-1V-1-65x1",
            "position 9: disk count must be at most 64, got 65",
        ),
        (
            "SCS-2V-4_z3hhhh",
            "position 11: CPU frequency level is h, hh or hhh, got \"hhhh\"",
        ),
        (
            "SCS-2V-4_kvm_kvm",
            "position 12: extensions must appear in the order hypervisor, hwv, CPU brand, GPU, ib; hypervisor cannot follow hypervisor",
        ),
        (
            "SCS-2V-4-10-20",
            "position 11: unexpected '-': the main part has at most CPU, RAM and disk",
        ),
        (
            "SCS-2V",
            "position 6: expected '-' and the RAM after the CPU part",
        ),
        ("SCS-", "position 4: CPU count must be a positive integer"),
        (
            "scs-2V-4",
            "position 0: SCS flavor names start with \"SCS-\"",
        ),
        (
            "SCS-2V-٤",
            "position 7: unexpected character '٤': flavor names are ASCII",
        ),
        ("", "position 0: SCS flavor names start with \"SCS-\""),
    ];
    for (name, expected) in cases {
        assert_eq!(rejection(name), expected, "{name}");
    }
}

#[test]
fn v1_syntax_is_recognised_and_deprecated() {
    let p = parse("SCS-4C:32:100s-kvm-hwv-i3h-GNa:64").unwrap();
    assert_eq!(p.syntax, Syntax::V1);
    assert_eq!(p.spec.name(), "SCS-4C-32-100s_kvm_hwv_i3h_GNa-64");
    assert_eq!(p.spec.name_v1(), "SCS-4C:32:100s-kvm-hwv-i3h-GNa:64");
    assert_eq!(p.warnings.len(), 1);
    assert!(
        p.warnings[0].contains("the v3 name is SCS-4C-32-100s_kvm_hwv_i3h_GNa-64"),
        "{:?}",
        p.warnings
    );
    assert_eq!(parse("SCS-2V:4").unwrap().spec, spec("SCS-2V-4"));
    assert_eq!(
        parse("SCS-2V:4:20s-ib").unwrap().spec,
        spec("SCS-2V-4-20s_ib")
    );
}

/// Verdicts of the SCS reference tool on v1 names: flavor-name-check.py (with its module
/// flavor_names.py) from Tests/iaas/scs_0100_flavor_naming/ of SovereignCloudStack/standards,
/// commit 077174d9, run on each name (true: it accepts the name). hvagent must agree.
const REFERENCE_V1_VERDICTS: &[(&str, bool)] = &[
    // Canonical v1 names.
    ("SCS-2V:4:20s", true),
    ("SCS-4C:32:100s-kvm-hwv-i3h-GNa:64", true),
    ("SCS-16T:64:3x10s-kvm-hwv-z3h-GNa:64h:48hh-ib", true),
    // The disk count before "x" is optional (default 1), and "1x" is taken.
    ("SCS-2V:4:1x20s", true),
    ("SCS-2V:4:x10", true),
    ("SCS-2V:4:1x", true),
    ("SCS-2V:4:x", true),
    ("SCS-2V:4:xs", true),
    ("SCS-2V:4:", true),
    ("SCS-2V:4:0x10", false),
    ("SCS-2V:4:0", false),
    // Numbers are read with Python's int(): leading zeros are taken, 0 is not.
    ("SCS-02V:4", true),
    ("SCS-0V:4", false),
    ("SCS-V:4", false),
    ("SCS-2V:4:02x10", true),
    ("SCS-2V:4:010s", true),
    ("SCS-2V:4-i03", true),
    ("SCS-2V:4-z00h", true),
    ("SCS-2V:4-i7", false),
    ("SCS-2V:4-GNa:064", true),
    ("SCS-2V:4-GNa:64:016h", true),
    ("SCS-2V:4-GNa:0", false),
    // RAM is read with Python's float(): a positive multiple of 0.5.
    ("SCS-2V:04", true),
    ("SCS-2V:4.", true),
    ("SCS-2V:.5", true),
    ("SCS-2V:4.0", true),
    ("SCS-2V:4.50", true),
    ("SCS-2V:4.9999999999999999999", true),
    ("SCS-2V:4.25", false),
    ("SCS-2V:0", false),
    ("SCS-2V:.", false),
    ("SCS-2V:", false),
    // The v1 hypervisors are kvm, xen, vmw, hyv and bms: no chy.
    ("SCS-2V:4-xen-ib", true),
    ("SCS-2V:4-chy", false),
    ("SCS-4C:8-chy", false),
    ("SCS-2V:4-chy-ib", false),
    ("SCS-2V:4-kvm-chy", false),
    ("SCS-16T:64-chy-GI4:15:2", false),
    // A v1 GPU generation runs up to the next ':' or 'h', so nothing can follow a GPU
    // without compute units...
    ("SCS-2V:4-GNa-ib", false),
    ("SCS-2V:4:10s-GNa-ib", false),
    ("SCS-2V:4-GN-ib", false),
    ("SCS-2V:4-GA3.1-ib", false),
    ("SCS-2V:4-GNz-ib", false),
    ("SCS-2V:4-GNa:64-ib", true),
    ("SCS-2V:4-i3-ib", true),
    // ... and h levels and VRAM need no compute units before them.
    ("SCS-2V:4-GNah", true),
    ("SCS-2V:4-GNah-ib", true),
    ("SCS-2V:4-GNah:16", true),
    ("SCS-2V:4-GNahh:16hh-ib", true),
    ("SCS-2V:4-GNahhh", false),
    ("SCS-2V:4-GNa:64hhh", false),
    ("SCS-2V:4-GNa:", false),
    ("SCS-2V:4-GNa:64:16:8", false),
    // Order and separators.
    ("SCS-2V:4-ib-GNa", false),
    ("SCS-2V-4:10", false),
    ("SCS-2V:4-10s", false),
];

#[test]
fn v1_verdicts_are_the_reference_verdicts() {
    for (name, accepted) in REFERENCE_V1_VERDICTS {
        let got = parse(name);
        assert_eq!(got.is_ok(), *accepted, "{name}: {got:?}");
        if let Ok(p) = got {
            assert_eq!(p.syntax, Syntax::V1, "{name}");
        }
    }
}

#[test]
fn loose_v1_spellings_are_their_canonical_flavor() {
    for (v1, v3) in [
        ("SCS-2V:4:1x20s", "SCS-2V-4-20s"),
        ("SCS-2V:4:x10", "SCS-2V-4-10"),
        ("SCS-2V:4:x", "SCS-2V-4-"),
        ("SCS-2V:4:1xs", "SCS-2V-4-s"),
        ("SCS-2V:.5", "SCS-2V-0.5"),
        ("SCS-2V:4.", "SCS-2V-4"),
        ("SCS-2V:3.50u", "SCS-2V-3.5u"),
        // Python's float() rounds to the nearest double, as Rust's f64 parser does.
        ("SCS-2V:4.9999999999999999999", "SCS-2V-5"),
        (
            "SCS-02V:04.0:02x010s-i03-GNa:064:016h",
            "SCS-2V-4-2x10s_i3_GNa-64-16h",
        ),
    ] {
        let p = parse(v1).unwrap_or_else(|e| panic!("{v1}: {e}"));
        assert_eq!(p.spec, spec(v3), "{v1}");
        assert_eq!(p.warnings.len(), 1, "{v1}: {:?}", p.warnings);
    }
    // GPU h levels and VRAM without compute units are accepted, and dropped with a warning.
    for (name, v3) in [
        ("SCS-2V:4-GNah:16hh-ib", "SCS-2V-4_GNa_ib"),
        ("SCS-2V:4-GNahh-ib", "SCS-2V-4_GNa_ib"),
        ("SCS-2V:4-gA3.1h:16", "SCS-2V-4_gA3.1"),
    ] {
        let p = parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.spec, spec(v3), "{name}");
        assert_eq!(p.warnings.len(), 2, "{name}: {:?}", p.warnings);
        assert!(
            p.warnings[1].contains("carry no meaning"),
            "{:?}",
            p.warnings
        );
    }
    assert!(
        parse("SCS-2V:4-GNah:16hh-ib").unwrap().warnings[1]
            .ends_with("\"GNah:16hh\" is read as \"GNa\""),
    );
}

#[test]
fn v1_rejections_name_position_and_rule() {
    let cases = [
        (
            "SCS-2V:4-chy",
            "position 8: hypervisor \"-chy\" does not exist in v1 syntax (it came with scs-0100 v3.3); use the v3 name",
        ),
        (
            "SCS-2V:4:10s-GNa-ib",
            "position 16: in v1 syntax an extension cannot follow a GPU without compute units: \"-ib\" would be read as part of its generation; give the compute units (e.g. GNa:64-ib)",
        ),
        (
            "SCS-2V:4-GN-ib",
            "position 11: in v1 syntax an extension cannot follow a GPU without compute units: \"-ib\" would be read as part of its generation; give the compute units (e.g. GNa:64-ib)",
        ),
        (
            "SCS-2V:4-GNz-ib",
            "position 11: unknown nvidia GPU generation \"z\" (known: f, k, m, p, v, t, a, l, g, b, u)",
        ),
        (
            "SCS-2V:4-i7",
            "position 10: Intel generation must be 0-6, got \"7\"",
        ),
        (
            "SCS-2V:4:0x10",
            "position 9: disk count must be positive, got 0",
        ),
        // hvagent's own bound, for v1 as for v3; the reference takes any disk count.
        (
            "SCS-2V:4:65x10",
            "position 9: disk count must be at most 64, got 65",
        ),
        ("SCS-00V:4", "position 4: CPU count must be positive, got 0"),
        (
            "SCS-2V:4.25",
            "position 7: RAM must be a positive multiple of 0.5, got \"4.25\"",
        ),
        ("SCS-2V:4-GNahhh", "position 14: GPU h levels are h or hh"),
        (
            "SCS-2V:4-vm",
            "position 8: unknown extension \"-vm\" (known: hypervisor kvm/xen/vmw/hyv/bms, hwv, CPU brand i/z/a/r, GPU G/g, ib)",
        ),
    ];
    for (name, expected) in cases {
        assert_eq!(rejection(name), expected, "{name}");
    }
}

#[test]
fn short_names() {
    for (name, short) in [
        (
            "SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64h-48hh_ib",
            "SCS-16T-64-3x10s_GNa-64-48_ib",
        ),
        ("SCS-4C-16-2x200p_a1h", "SCS-4C-16-2x200p_a"),
        ("SCS-2V-4_r0", "SCS-2V-4_r"),
        ("SCS-8Ti-32-50p_i1", "SCS-8Ti-32-50p"),
        ("SCS-2V-4", "SCS-2V-4"),
    ] {
        assert_eq!(spec(name).short().name(), short, "{name}");
    }
}

/// Whether the reference's v1 grammar can write this flavor: it has no Cloud Hypervisor, and it
/// reads whatever follows a GPU without compute units as part of the GPU generation.
fn has_v1_spelling(s: &FlavorSpec) -> bool {
    s.hypervisor != Some(Hypervisor::CloudHypervisor)
        && !(s.ib && s.gpu.as_ref().is_some_and(|g| g.compute_units.is_none()))
}

/// A v1 name of `s` in one of the spellings flavor-name-check.py takes besides the canonical
/// one: `zeros` before every number, RAM as "4", "4." (or "4.5"), "4.0" (or "4.50"), or with
/// no whole part when under 1 GiB (".5"), and "1x" or a bare "x" for one disk.
fn loose_v1_name(s: &FlavorSpec, zeros: &str, ram_style: u8, one_x: bool) -> String {
    let (whole, half) = (s.ram_half_gib / 2, s.ram_half_gib % 2 == 1);
    let ram = match (ram_style, half) {
        (0, false) => format!("{zeros}{whole}"),
        (0, true) => format!("{zeros}{whole}.5"),
        (1, false) => format!("{whole}."),
        (1, true) => format!("{whole}.5"),
        (2, false) => format!("{zeros}{whole}.0"),
        (2, true) => format!("{zeros}{whole}.50"),
        (_, true) if whole == 0 => ".5".to_string(),
        (_, _) => format!("{whole}{}", if half { ".5" } else { "" }),
    };
    let mut n = format!(
        "SCS-{zeros}{}{}{}:{ram}{}{}",
        s.cpus,
        s.cpu_type.letter(),
        if s.insecure { "i" } else { "" },
        if s.ecc { "" } else { "u" },
        if s.ram_oversubscribed { "o" } else { "" },
    );
    if let Some(d) = &s.disk {
        n.push(':');
        match (d.count, one_x) {
            (1, true) => n.push_str("1x"),
            (1, false) => n.push('x'),
            (count, _) => n.push_str(&format!("{zeros}{count}x")),
        }
        if let Some(size) = d.size_gb {
            n.push_str(&format!("{zeros}{size}"));
        }
        if let Some(kind) = d.kind {
            n.push(kind.letter());
        }
    }
    if let Some(h) = s.hypervisor {
        n.push_str(&format!("-{}", h.code()));
    }
    if s.hwv {
        n.push_str("-hwv");
    }
    if let Some(b) = &s.cpu_brand {
        n.push_str(&format!("-{}", b.vendor.letter()));
        if let Some(g) = b.generation {
            n.push_str(&format!("{zeros}{g}"));
        }
        n.push_str(&"h".repeat(usize::from(b.frequency_level)));
    }
    if let Some(g) = &s.gpu {
        let kind = if g.kind == GpuKind::Passthrough {
            'G'
        } else {
            'g'
        };
        n.push_str(&format!(
            "-{kind}{}{}",
            g.vendor.letter(),
            g.generation.unwrap_or("")
        ));
        if let Some(cu) = g.compute_units {
            n.push_str(&format!(
                ":{zeros}{cu}{}",
                "h".repeat(usize::from(g.high_freq_level))
            ));
            if let Some(vram) = g.vram_gib {
                n.push_str(&format!(
                    ":{zeros}{vram}{}",
                    "h".repeat(usize::from(g.hbm_level))
                ));
            }
        }
    }
    if s.ib {
        n.push_str("-ib");
    }
    n
}

fn arb_spec() -> impl Strategy<Value = FlavorSpec> {
    let cpu = (1u32..=512, 0usize..4, any::<bool>());
    let ram = (1u32..=2048, any::<bool>(), any::<bool>());
    let disk = proptest::option::of((
        prop_oneof![Just(1u32), 2u32..=64],
        proptest::option::of(1u32..=5000),
        proptest::option::of(0usize..4),
    ));
    let hyp = proptest::option::of(0usize..6);
    let brand = proptest::option::of((0usize..4, any::<u8>(), 0u8..=3, any::<bool>()));
    let gpu = proptest::option::of((
        any::<bool>(),
        0usize..3,
        any::<u8>(),
        any::<bool>(),
        proptest::option::of((
            1u32..=200,
            0u8..=2,
            proptest::option::of((1u32..=256, 0u8..=2)),
        )),
    ));
    (
        cpu,
        ram,
        disk,
        hyp,
        any::<bool>(),
        brand,
        gpu,
        any::<bool>(),
    )
        .prop_map(
            |((cpus, t, insecure), (ram, ecc, over), disk, hyp, hwv, brand, gpu, ib)| FlavorSpec {
                cpus,
                cpu_type: CpuType::ALL[t],
                insecure,
                ram_half_gib: ram,
                ecc,
                ram_oversubscribed: over,
                disk: disk.map(|(count, size_gb, kind)| Disk {
                    count,
                    size_gb,
                    kind: kind.map(|k| DiskType::ALL[k]),
                }),
                hypervisor: hyp.map(|h| Hypervisor::ALL[h]),
                hwv,
                cpu_brand: brand.map(|(v, g, h, has_gen)| {
                    let vendor = CpuVendor::ALL[v];
                    CpuBrand {
                        vendor,
                        generation: has_gen.then(|| g % vendor.generations().len() as u8),
                        frequency_level: h,
                    }
                }),
                gpu: gpu.map(|(pass, v, g, has_gen, units)| {
                    let vendor = GpuVendor::ALL[v];
                    let gens = vendor.generations();
                    Gpu {
                        kind: if pass {
                            GpuKind::Passthrough
                        } else {
                            GpuKind::Virtual
                        },
                        vendor,
                        generation: has_gen.then(|| gens[usize::from(g) % gens.len()].0),
                        compute_units: units.map(|u| u.0),
                        high_freq_level: units.map(|u| u.1).unwrap_or(0),
                        vram_gib: units.and_then(|u| u.2.map(|v| v.0)),
                        hbm_level: units.and_then(|u| u.2.map(|v| v.1)).unwrap_or(0),
                    }
                }),
                ib,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn generated_names_round_trip(s in arb_spec()) {
        let name = s.name();
        let parsed = parse(&name).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        prop_assert_eq!(&parsed.spec, &s, "{}", name);
        prop_assert_eq!(parsed.spec.name(), name);
        let v1_name = s.name_v1();
        match parse(&v1_name) {
            Ok(v1) => {
                prop_assert!(has_v1_spelling(&s), "{} must be rejected", v1_name);
                prop_assert_eq!(v1.spec, s);
            }
            Err(e) => prop_assert!(!has_v1_spelling(&s), "{}: {}", v1_name, e),
        }
    }

    #[test]
    fn loose_v1_spellings_parse_to_their_flavor(
        s in arb_spec(),
        zeros in prop::sample::select(vec!["", "0", "00"]),
        ram_style in 0u8..4,
        one_x in any::<bool>(),
    ) {
        // Only flavors the reference's v1 grammar can write (see has_v1_spelling).
        let mut s = s;
        if s.hypervisor == Some(Hypervisor::CloudHypervisor) {
            s.hypervisor = Some(Hypervisor::Kvm);
        }
        s.ib &= has_v1_spelling(&s);
        let name = loose_v1_name(&s, zeros, ram_style, one_x);
        let parsed = parse(&name).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        prop_assert_eq!(parsed.syntax, Syntax::V1);
        prop_assert_eq!(parsed.spec, s, "{}", name);
    }

    #[test]
    fn single_character_mutations_change_or_fail(s in arb_spec(), at in any::<prop::sample::Index>(), op in 0u8..3, c in prop::sample::select(b"0123456789LVTCiuoxnhsp-_.:GgNAIzarbkvmw ".to_vec())) {
        let name = s.name();
        let mut bytes = name.clone().into_bytes();
        let i = at.index(bytes.len() + 1);
        match op {
            0 if i < bytes.len() => { bytes[i] = c; }
            1 if i < bytes.len() => { bytes.remove(i); }
            _ => bytes.insert(i, c),
        }
        let mutated = String::from_utf8(bytes).unwrap_or_default();
        // A v1 spelling (one '-' turned into ':') is by definition the same flavor in the
        // deprecated syntax; within the v3 syntax every spelling is unique.
        if mutated != name
            && let Ok(p) = parse(&mutated)
            && p.syntax == Syntax::V3
        {
            prop_assert_ne!(p.spec, s, "{} → {} parses to the same flavor", name, mutated);
        }
    }

    #[test]
    fn never_panics_on_strings(name in ".{0,64}") {
        let _ = parse(&name);
    }

    #[test]
    fn never_panics_on_near_names(tail in "[0-9LVTCiuoxnhsp._:GgNAIzar-]{0,40}") {
        if let Ok(p) = parse(&format!("SCS-{tail}")) {
            prop_assert_eq!(parse(&p.spec.name()).map(|q| q.spec), Ok(p.spec));
        }
    }

    #[test]
    fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse(&String::from_utf8_lossy(&bytes));
    }
}
