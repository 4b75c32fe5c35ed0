//! The guest firmware this node can give: UEFI (OVMF), UEFI with Secure Boot and keys enrolled,
//! and a vTPM (swtpm). Read the way libvirt finds them, so that what the inventory says is what
//! a `<os firmware='efi'>` or `<tpm>` definition gets: OVMF from the QEMU firmware descriptors
//! (`/etc/qemu/firmware`, `/usr/share/qemu/firmware`, JSON as QEMU's `firmware.json` specifies
//! them) whose executable is really there, swtpm from its two programs on the standard `PATH`.

use serde::Deserialize;

use super::sysfs::SysRoot;

/// The directories libvirt reads firmware descriptors from (the system ones; `$XDG_CONFIG_HOME`
/// belongs to unprivileged sessions, which the agent does not use).
pub const DESCRIPTOR_DIRS: [&str; 2] = ["etc/qemu/firmware", "usr/share/qemu/firmware"];

/// Where libvirtd, started with the system's default `PATH`, finds `swtpm` and `swtpm_setup`.
const PROGRAM_DIRS: [&str; 4] = ["usr/sbin", "usr/bin", "sbin", "bin"];

/// The programs libvirt runs for an emulated TPM: `swtpm` (the emulator, Debian's `swtpm`) and
/// `swtpm_setup` (makes its first state, Debian's `swtpm-tools`).
const SWTPM_PROGRAMS: [&str; 2] = ["swtpm", "swtpm_setup"];

/// What guest firmware the node offers, with what is missing in words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirmwareFacts {
    /// Some x86_64 UEFI firmware (OVMF) is installed and described.
    pub uefi: bool,
    /// Some x86_64 UEFI firmware with Secure Boot on and keys enrolled (Debian's `ms` build
    /// with the Microsoft and distribution keys) is installed and described.
    pub secure_boot: bool,
    /// swtpm and swtpm_setup are installed: guests can have a TPM 2.0.
    pub vtpm: bool,
    /// What is missing and how to get it; empty when all three are there.
    pub reason: String,
}

/// A QEMU firmware descriptor, only the parts that decide what it offers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Descriptor {
    #[serde(default)]
    interface_types: Vec<String>,
    mapping: Mapping,
    #[serde(default)]
    targets: Vec<Target>,
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Mapping {
    /// Absent for firmware that is not a flash image (e.g. `memory` mappings of SeaBIOS).
    executable: Option<Executable>,
}

#[derive(Debug, Deserialize)]
struct Executable {
    filename: String,
}

#[derive(Debug, Deserialize)]
struct Target {
    architecture: String,
}

/// What the firmware descriptors and programs below `root` offer.
pub fn read(root: &SysRoot) -> FirmwareFacts {
    let descriptors: Vec<Descriptor> = DESCRIPTOR_DIRS
        .iter()
        .flat_map(|dir| {
            root.entries(dir, "")
                .into_iter()
                .filter(|name| name.ends_with(".json"))
                .filter_map(move |name| root.read(&format!("{dir}/{name}")))
        })
        .filter_map(|text| serde_json::from_str(&text).ok())
        .filter(|d: &Descriptor| {
            d.interface_types.iter().any(|t| t == "uefi")
                && d.targets.iter().any(|t| t.architecture == "x86_64")
                && d.mapping
                    .executable
                    .as_ref()
                    .is_some_and(|e| root.exists(&e.filename))
        })
        .collect();
    let has = |d: &Descriptor, f: &str| d.features.iter().any(|x| x == f);
    let uefi = !descriptors.is_empty();
    let secure_boot = descriptors
        .iter()
        .any(|d| has(d, "secure-boot") && has(d, "enrolled-keys") && has(d, "requires-smm"));
    let missing_programs: Vec<&str> = SWTPM_PROGRAMS
        .into_iter()
        .filter(|p| {
            !PROGRAM_DIRS
                .iter()
                .any(|d| root.exists(&format!("{d}/{p}")))
        })
        .collect();
    let vtpm = missing_programs.is_empty();
    let mut reasons = Vec::new();
    if !uefi {
        reasons.push(
            "no x86_64 UEFI firmware: no descriptor in /etc/qemu/firmware or /usr/share/qemu/firmware names an installed one (install ovmf)"
                .to_string(),
        );
    } else if !secure_boot {
        reasons.push(
            "no UEFI firmware with Secure Boot, SMM and keys enrolled is described (ovmf's OVMF_CODE_4M.ms.fd)"
                .to_string(),
        );
    }
    if !vtpm {
        reasons.push(format!(
            "{} not found in /usr/sbin, /usr/bin, /sbin or /bin (install swtpm and swtpm-tools)",
            missing_programs.join(" and ")
        ));
    }
    FirmwareFacts {
        uefi,
        secure_boot,
        vtpm,
        reason: reasons.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECURE: &str = r#"{"interface-types":["uefi"],"mapping":{"device":"flash","executable":{"filename":"/usr/share/OVMF/OVMF_CODE_4M.ms.fd","format":"raw"},"nvram-template":{"filename":"/usr/share/OVMF/OVMF_VARS_4M.ms.fd","format":"raw"}},"targets":[{"architecture":"x86_64","machines":["pc-q35-*"]}],"features":["acpi-s3","enrolled-keys","requires-smm","secure-boot","verbose-dynamic"],"tags":[]}"#;
    const PLAIN: &str = r#"{"interface-types":["uefi"],"mapping":{"device":"flash","executable":{"filename":"/usr/share/OVMF/OVMF_CODE_4M.fd","format":"raw"}},"targets":[{"architecture":"x86_64","machines":["pc-i440fx-*","pc-q35-*"]}],"features":["acpi-s3","verbose-dynamic"]}"#;
    const ARM: &str = r#"{"interface-types":["uefi"],"mapping":{"device":"flash","executable":{"filename":"/usr/share/AAVMF/AAVMF_CODE.fd"}},"targets":[{"architecture":"aarch64"}],"features":["secure-boot","enrolled-keys","requires-smm"]}"#;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    fn facts(files: &[(&str, &str)]) -> FirmwareFacts {
        let dir = tree(files);
        read(&SysRoot::new(dir.path()))
    }

    const OVMF_FILES: [(&str, &str); 2] = [
        ("usr/share/OVMF/OVMF_CODE_4M.ms.fd", "x"),
        ("usr/share/OVMF/OVMF_CODE_4M.fd", "x"),
    ];

    /// Debian with ovmf, swtpm and swtpm-tools: everything, no reason.
    #[test]
    fn debian_with_ovmf_and_swtpm_offers_all() {
        let mut files = vec![
            (
                "usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json",
                SECURE,
            ),
            ("usr/share/qemu/firmware/60-edk2-x86_64.json", PLAIN),
            ("usr/bin/swtpm", ""),
            ("usr/bin/swtpm_setup", ""),
        ];
        files.extend(OVMF_FILES);
        let f = facts(&files);
        assert_eq!(
            f,
            FirmwareFacts {
                uefi: true,
                secure_boot: true,
                vtpm: true,
                reason: String::new()
            }
        );
    }

    /// Nothing installed: each part says what to install.
    #[test]
    fn an_empty_node_says_what_to_install() {
        let f = facts(&[]);
        assert!(!f.uefi && !f.secure_boot && !f.vtpm);
        assert!(f.reason.contains("install ovmf"), "{}", f.reason);
        assert!(
            f.reason
                .contains("swtpm and swtpm_setup not found in /usr/sbin, /usr/bin, /sbin or /bin"),
            "{}",
            f.reason
        );
    }

    /// A descriptor whose firmware file is gone, another architecture's, or a Secure Boot one
    /// without enrolled keys does not count; swtpm without swtpm_setup is no vTPM.
    #[test]
    fn only_installed_x86_64_firmware_counts() {
        let f = facts(&[
            (
                "usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json",
                SECURE,
            ),
            ("etc/qemu/firmware/50-aarch64.json", ARM),
            ("usr/share/AAVMF/AAVMF_CODE.fd", "x"),
            ("usr/bin/swtpm", ""),
        ]);
        assert!(!f.uefi && !f.secure_boot && !f.vtpm, "{f:?}");
        assert!(f.reason.contains("swtpm_setup not found"), "{}", f.reason);
        let unenrolled = SECURE.replace("\"enrolled-keys\",", "");
        let mut files = vec![
            ("etc/qemu/firmware/40-secure.json", unenrolled.as_str()),
            ("usr/share/qemu/firmware/60-edk2-x86_64.json", PLAIN),
            ("usr/share/qemu/firmware/broken.json", "{not json"),
            ("sbin/swtpm", ""),
            ("bin/swtpm_setup", ""),
        ];
        files.extend(OVMF_FILES);
        let f = facts(&files);
        assert!(f.uefi && !f.secure_boot && f.vtpm, "{f:?}");
        assert!(f.reason.contains("Secure Boot"), "{}", f.reason);
    }
}
