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
        let v1 = parse(&s.name_v1()).map_err(|e| TestCaseError::fail(format!("{}: {e}", s.name_v1())))?;
        prop_assert_eq!(v1.spec, s);
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
