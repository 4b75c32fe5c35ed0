//! UEFI, Secure Boot and vTPM end to end, with real TCG guests through the real agent and the
//! test images `images/build.sh` makes (their init reports what it sees on the console:
//! `hvagent.firmware`, `hvagent.secureboot`, `hvagent.tpm`, `hvagent.efivar`):
//! - a UEFI guest with Secure Boot and a TPM 2.0 boots Debian's signed shim, GRUB and kernel and
//!   reports Secure Boot enabled and the TPM;
//! - the same image with the kernel's signature stripped never reaches its init: GRUB refuses
//!   the kernel and says so on the console;
//! - an EFI variable the guest writes is still there after a stop and a start (its NVRAM
//!   file and its swtpm state are kept), and a delete removes NVRAM and TPM state;
//! - a BIOS guest is defined as before (machine pc, no loader, NVRAM or TPM);
//! - invalid property combinations are refused at import and store nothing.
//!
//! Skipped, with the reason, on a node without OVMF or swtpm (the inventory says which).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Agent, Cleanup, console, import_built, import_testguest, runtime, state};
use hvagent_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

type Vms = pb::vm_service_client::VmServiceClient<Channel>;

const SECURE: &str = "00000000-0000-4000-8000-0000000f0001";
const UNSIGNED: &str = "00000000-0000-4000-8000-0000000f0002";
const BIOS: &str = "00000000-0000-4000-8000-0000000f0003";
/// Small enough for TCG, large enough for OVMF and the test image.
const FLAVOR: &str = "SCS-1Vi-0.5u";
/// What the Secure Boot guest writes into its NVRAM at its first boot.
const EFIVAR: &str = "kept-in-nvram";
/// UEFI under TCG: OVMF, shim, GRUB and the kernel take about a minute on the development
/// machines; a loaded CI machine gets three times that.
const BOOT: Duration = Duration::from_secs(300);

/// libvirt's swtpm state directory of a guest.
fn swtpm_state(uuid: &str) -> PathBuf {
    Path::new("/var/lib/libvirt/swtpm").join(uuid)
}

/// Waits until the console holds `line`; returns the console.
async fn console_line(vms: &mut Vms, uuid: &str, line: &str) -> String {
    let deadline = Instant::now() + BOOT;
    loop {
        let text = console(vms, uuid).await;
        if text.contains(line) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{uuid}: no {line:?} on the console within {BOOT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn create(vms: &mut Vms, uuid: &str, name: &str, image: &str, user_data: &str) {
    vms.create(pb::CreateVmRequest {
        uuid: uuid.into(),
        name: name.into(),
        flavor: FLAVOR.into(),
        image: image.into(),
        user_data: user_data.as_bytes().to_vec(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create {name}: {e:?}"));
}

#[test]
fn uefi_secure_boot_and_tpm_guests() {
    let agent = Agent::configure_tcg("", "").spawn();
    let _cleanup = Cleanup(vec![SECURE.into(), UNSIGNED.into(), BIOS.into()]);
    let store = agent.dir.path().join("store");
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let firmware = pb::node_service_client::NodeServiceClient::new(channel.clone())
            .get_inventory(pb::GetInventoryRequest {})
            .await
            .unwrap()
            .into_inner()
            .hypervisor
            .and_then(|h| h.firmware)
            .unwrap_or_default();
        if !(firmware.uefi && firmware.secure_boot && firmware.vtpm) {
            eprintln!(
                "skipped: this node cannot give UEFI with Secure Boot and a TPM: {}",
                firmware.reason
            );
            return;
        }
        assert!(firmware.reason.is_empty(), "{firmware:?}");

        // Invalid combinations are refused at import, naming the property, and store nothing.
        let mut images = pb::image_service_client::ImageServiceClient::new(channel.clone());
        let uefi_file = common::repo_root().join("images/out/testguest-uefi.qcow2");
        for (properties, property) in [
            (
                &[("hw_firmware_type", "bios"), ("os_secure_boot", "required")][..],
                "os_secure_boot",
            ),
            (
                &[
                    ("hw_firmware_type", "uefi"),
                    ("hw_machine_type", "pc"),
                    ("os_secure_boot", "required"),
                ][..],
                "os_secure_boot",
            ),
            (&[("hw_tpm_version", "1.2")][..], "hw_tpm_version"),
            (&[("hw_tpm_model", "tpm-crb")][..], "hw_tpm_model"),
        ] {
            let e = images
                .import(common::import_request("refused", &uefi_file, properties))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{properties:?}: {e:?}");
            assert!(
                e.message().contains(&format!("properties: {property}: ")),
                "{properties:?}: {}",
                e.message()
            );
            assert!(
                !store.join("images/refused").exists(),
                "{properties:?} left an image"
            );
        }

        let secure_boot = [
            ("hw_firmware_type", "uefi"),
            ("os_secure_boot", "required"),
        ];
        let with_tpm = [
            secure_boot[0],
            secure_boot[1],
            ("hw_tpm_version", "2.0"),
            ("hw_tpm_model", "tpm-crb"),
        ];
        import_built(channel.clone(), "uefi-sb", "testguest-uefi.qcow2", &with_tpm).await;
        import_built(
            channel.clone(),
            "uefi-unsigned",
            "testguest-uefi-unsigned.qcow2",
            &secure_boot,
        )
        .await;
        import_testguest(channel.clone()).await;

        // Three guests booting side by side.
        let mut vms = Vms::new(channel.clone());
        create(
            &mut vms,
            SECURE,
            "fw-secure",
            "uefi-sb",
            &format!("hvagent-efivar: {EFIVAR}\n"),
        )
        .await;
        create(&mut vms, UNSIGNED, "fw-unsigned", "uefi-unsigned", "").await;
        create(&mut vms, BIOS, "fw-bios", "testguest", "").await;

        // The BIOS guest: as every guest before, machine pc with no firmware, NVRAM or TPM.
        let xml = common::virsh(&["dumpxml", BIOS]);
        assert!(xml.contains("machine='pc-i440fx-"), "{xml}");
        for absent in ["<loader", "<nvram", "<tpm", "firmware=", "<smm"] {
            assert!(!xml.contains(absent), "{absent} in the BIOS guest:\n{xml}");
        }
        // The Secure Boot guest: q35, OVMF's Secure Boot build with the keys enrolled, its
        // NVRAM in its directory, SMM, a TPM 2.0 (CRB) from swtpm.
        let nvram = store.join("vms").join(SECURE).join("nvram.fd");
        let xml = common::virsh(&["dumpxml", SECURE]);
        for part in [
            "machine='pc-q35-",
            "<loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>",
            &format!(
                "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>{}</nvram>",
                nvram.display()
            ),
            "<smm state='on'/>",
            "<tpm model='tpm-crb'>",
            "<backend type='emulator' version='2.0'/>",
        ] {
            assert!(xml.contains(part), "{part} not in the Secure Boot guest:\n{xml}");
        }

        let (mut a, mut b, mut c) = (vms.clone(), vms.clone(), vms.clone());
        let (secure, bios, unsigned) = tokio::join!(
            console_line(&mut a, SECURE, "HVAGENT-GUEST-READY"),
            console_line(&mut b, BIOS, "HVAGENT-GUEST-READY"),
            console_line(&mut c, UNSIGNED, "hvagent.boot=refused"),
        );
        for line in [
            "hvagent.firmware=uefi",
            "hvagent.secureboot=enabled",
            "hvagent.tpm=present",
            "hvagent.tpm_version=2",
            &format!("hvagent.efivar_set={EFIVAR}"),
            &format!("hvagent.efivar={EFIVAR}"),
        ] {
            assert!(secure.contains(line), "no {line} from the Secure Boot guest:\n{secure}");
        }
        for line in [
            "hvagent.firmware=bios",
            "hvagent.secureboot=disabled",
            "hvagent.tpm=absent",
        ] {
            assert!(bios.contains(line), "no {line} from the BIOS guest:\n{bios}");
        }
        // Refused by shim's verifier in GRUB: the init never ran.
        assert!(
            unsigned.contains("bad shim signature"),
            "GRUB's reason is not on the console:\n{unsigned}"
        );
        assert!(
            !unsigned.contains("hvagent.firmware="),
            "the unsigned kernel ran:\n{unsigned}"
        );

        // Stop and start: the NVRAM (with the guest's variable) and the TPM state stay.
        let tpm_dir = swtpm_state(SECURE);
        assert!(nvram.is_file(), "no NVRAM at {}", nvram.display());
        assert!(tpm_dir.join("tpm2").is_dir(), "no swtpm state in {}", tpm_dir.display());
        let tpm_inode = std::fs::metadata(&tpm_dir).unwrap().ino();
        vms.stop(pb::StopVmRequest {
            uuid: SECURE.into(),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
        assert_eq!(state(&mut vms, SECURE).await, "shut off");
        assert!(nvram.is_file(), "NVRAM gone after the stop");
        assert_eq!(
            std::fs::metadata(&tpm_dir).map(|m| m.ino()).ok(),
            Some(tpm_inode),
            "TPM state gone or remade after the stop"
        );
        // The second boot's lines, from the whole log file (two UEFI boots can be more than
        // the last 64 KiB the agent serves).
        let log = store.join("vms").join(SECURE).join("console.log");
        let first_boot = std::fs::metadata(&log).unwrap().len() as usize;
        vms.start(pb::StartVmRequest {
            uuid: SECURE.into(),
        })
        .await
        .unwrap();
        let second_boot = common::wait_for(BOOT, "the second boot's HVAGENT-GUEST-READY", || {
            let text = std::fs::read(&log).ok()?;
            let after = String::from_utf8_lossy(text.get(first_boot..)?).into_owned();
            after.contains("HVAGENT-GUEST-READY").then_some(after)
        });
        assert!(
            second_boot.contains(&format!("hvagent.efivar={EFIVAR}"))
                && !second_boot.contains("hvagent.efivar_set="),
            "the variable did not come back from the NVRAM:\n{second_boot}"
        );
        assert!(
            second_boot.contains("hvagent.tpm=present"),
            "{second_boot}"
        );
        assert_eq!(
            std::fs::metadata(&tpm_dir).map(|m| m.ino()).ok(),
            Some(tpm_inode),
            "TPM state remade at the start"
        );

        // Delete: NVRAM and TPM state go with the guest.
        for uuid in [SECURE, UNSIGNED, BIOS] {
            assert!(
                vms.delete(pb::DeleteVmRequest { uuid: uuid.into() })
                    .await
                    .unwrap()
                    .into_inner()
                    .deleted
            );
            assert!(!common::domain_exists(uuid), "{uuid} still defined");
            assert!(!store.join("vms").join(uuid).exists(), "{uuid}'s files left");
        }
        assert!(!nvram.exists(), "NVRAM left");
        assert!(!tpm_dir.exists(), "TPM state left in {}", tpm_dir.display());
    });
}
