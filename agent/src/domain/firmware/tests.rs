use super::*;

fn props(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string())))
        .collect()
}

fn parse(pairs: &[(&str, &str)]) -> Result<ImageFirmware, PropertyError> {
    ImageFirmware::from_properties(
        &pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Every combination of every value each property may have (absent, each valid value, one
/// invalid), against the rules as the docs state them: the first broken rule is the one
/// reported, and a valid image gets the documented defaults.
#[test]
fn every_combination_follows_the_rules() {
    let firmware = [None, Some("bios"), Some("uefi"), Some("efi")];
    let machine = [None, Some("pc"), Some("q35"), Some("pc-q35-7.2")];
    let secure = [
        None,
        Some("required"),
        Some("optional"),
        Some("disabled"),
        Some("on"),
    ];
    let version = [None, Some("2.0"), Some("1.2"), Some("2")];
    let model = [None, Some("tpm-tis"), Some("tpm-crb"), Some("tpm-spapr")];
    let mut seen_ok = 0;
    for f in firmware {
        for m in machine {
            for s in secure {
                for v in version {
                    for tm in model {
                        let p = props(&[
                            ("hw_firmware_type", f),
                            ("hw_machine_type", m),
                            ("os_secure_boot", s),
                            ("hw_tpm_version", v),
                            ("hw_tpm_model", tm),
                        ]);
                        let uefi = f == Some("uefi");
                        let effective_machine = match m {
                            Some("q35") => Machine::Q35,
                            Some("pc") => Machine::Pc,
                            _ if uefi => Machine::Q35,
                            _ => Machine::Pc,
                        };
                        let expected_error = if f == Some("efi") {
                            Some("hw_firmware_type")
                        } else if m == Some("pc-q35-7.2") {
                            Some("hw_machine_type")
                        } else if s == Some("on")
                            || (s == Some("required")
                                && (!uefi || effective_machine == Machine::Pc))
                        {
                            Some("os_secure_boot")
                        } else if v.is_none() && tm.is_some() {
                            Some("hw_tpm_model")
                        } else if matches!(v, Some("1.2") | Some("2")) {
                            Some("hw_tpm_version")
                        } else if tm == Some("tpm-spapr") {
                            Some("hw_tpm_model")
                        } else {
                            None
                        };
                        let got = ImageFirmware::from_properties(&p);
                        match (expected_error, got) {
                            (Some(property), Err(e)) => {
                                assert_eq!(e.property, property, "{p:?}: {e}");
                                assert!(e.to_string().starts_with(property), "{e}");
                            }
                            (None, Ok(image)) => {
                                seen_ok += 1;
                                let want = ImageFirmware {
                                    machine: effective_machine,
                                    uefi,
                                    secure_boot: match s {
                                        Some("required") => SecureBoot::Required,
                                        Some("optional") => SecureBoot::Optional,
                                        _ => SecureBoot::Disabled,
                                    },
                                    tpm: match (v, tm) {
                                        (None, _) => None,
                                        (_, Some("tpm-crb")) => Some(TpmModel::Crb),
                                        _ => Some(TpmModel::Tis),
                                    },
                                };
                                assert_eq!(image, want, "{p:?}");
                            }
                            (want, got) => panic!("{p:?}: expected {want:?}, got {got:?}"),
                        }
                    }
                }
            }
        }
    }
    assert!(seen_ok > 50, "only {seen_ok} valid combinations");
}

/// The messages a caller sees name the property and say why.
#[test]
fn refusals_say_why() {
    let msg = |pairs: &[(&str, &str)]| parse(pairs).unwrap_err().to_string();
    assert_eq!(
        msg(&[("os_secure_boot", "required")]),
        "os_secure_boot: required needs hw_firmware_type uefi: Secure Boot is a UEFI feature"
    );
    assert_eq!(
        msg(&[("hw_firmware_type", "bios"), ("os_secure_boot", "required")]),
        "os_secure_boot: required needs hw_firmware_type uefi: Secure Boot is a UEFI feature"
    );
    assert!(
        msg(&[
            ("hw_firmware_type", "uefi"),
            ("hw_machine_type", "pc"),
            ("os_secure_boot", "required")
        ])
        .starts_with("os_secure_boot: required needs hw_machine_type q35: "),
    );
    assert!(msg(&[("hw_tpm_version", "1.2")]).contains("1.2 is not offered"));
    assert_eq!(
        msg(&[("hw_tpm_model", "tpm-crb")]),
        "hw_tpm_model: needs hw_tpm_version 2.0: a TPM model without a version asks for no TPM"
    );
    assert_eq!(
        msg(&[("hw_machine_type", "pc-i440fx-7.2")]),
        "hw_machine_type: must be pc or q35 (libvirt picks this node's newest version of either), got \"pc-i440fx-7.2\""
    );
}

/// No properties: exactly the guest every guest was before (pc, BIOS, no TPM).
#[test]
fn an_image_without_properties_is_a_bios_guest_on_pc() {
    let all = FirmwareFacts {
        uefi: true,
        secure_boot: true,
        vtpm: true,
        reason: String::new(),
    };
    let fw = parse(&[]).unwrap().on(&all).unwrap();
    assert!(fw.is_default());
    assert_eq!(
        fw,
        Firmware {
            machine: Machine::Pc,
            boot: Boot::Bios,
            tpm: None
        }
    );
    // Nor does a node without OVMF and swtpm matter to it.
    assert_eq!(parse(&[]).unwrap().on(&FirmwareFacts::default()), Ok(fw));
}

/// Against every combination of what a node has: required parts missing are refused with the
/// node's reason, optional Secure Boot follows the node and the machine.
#[test]
fn the_node_decides_optional_and_refuses_what_it_lacks() {
    let images = [
        vec![("hw_firmware_type", "uefi"), ("os_secure_boot", "required")],
        vec![("hw_firmware_type", "uefi"), ("os_secure_boot", "optional")],
        vec![
            ("hw_firmware_type", "uefi"),
            ("hw_machine_type", "pc"),
            ("os_secure_boot", "optional"),
        ],
        vec![("hw_firmware_type", "uefi")],
        vec![("hw_tpm_version", "2.0"), ("hw_tpm_model", "tpm-crb")],
        vec![
            ("hw_firmware_type", "uefi"),
            ("os_secure_boot", "required"),
            ("hw_tpm_version", "2.0"),
        ],
    ];
    for bits in 0..8u8 {
        let node = FirmwareFacts {
            uefi: bits & 1 != 0,
            // Secure Boot firmware is UEFI firmware.
            secure_boot: bits & 3 == 3,
            vtpm: bits & 4 != 0,
            reason: "REASON".into(),
        };
        for image in &images {
            let wanted = parse(image).unwrap();
            let got = wanted.on(&node);
            let lacks_uefi = wanted.uefi && !node.uefi;
            let lacks_sb = wanted.secure_boot == SecureBoot::Required && !node.secure_boot;
            let lacks_tpm = wanted.tpm.is_some() && !node.vtpm;
            if lacks_uefi || lacks_sb || lacks_tpm {
                let Err(Missing(m)) = got else {
                    panic!("{image:?} on {node:?}: {got:?}")
                };
                assert!(
                    m.starts_with("this node cannot give ") && m.ends_with(": REASON"),
                    "{m}"
                );
                continue;
            }
            let fw = got.unwrap();
            assert_eq!(fw.machine, wanted.machine);
            assert_eq!(fw.tpm, wanted.tpm);
            assert_eq!(matches!(fw.boot, Boot::Uefi { .. }), wanted.uefi);
            let sb = match wanted.secure_boot {
                SecureBoot::Required => true,
                SecureBoot::Optional => node.secure_boot && wanted.machine == Machine::Q35,
                SecureBoot::Disabled => false,
            };
            assert_eq!(fw.secure_boot(), sb, "{image:?} on {node:?}");
        }
    }
}

/// The firmware kept in a guest's intent reads back; a BIOS guest's is the default, which
/// the intent leaves out.
#[test]
fn firmware_round_trips_through_json() {
    let fw = Firmware {
        machine: Machine::Q35,
        boot: Boot::Uefi { secure_boot: true },
        tpm: Some(TpmModel::Crb),
    };
    let json = serde_json::to_string(&fw).unwrap();
    assert_eq!(
        json,
        r#"{"machine":"q35","boot":{"uefi":{"secure_boot":true}},"tpm":"crb"}"#
    );
    assert_eq!(serde_json::from_str::<Firmware>(&json).unwrap(), fw);
}
