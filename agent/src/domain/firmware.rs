//! A guest's machine type and firmware: BIOS or UEFI (OVMF), Secure Boot, and a TPM 2.0
//! (swtpm). Chosen by image properties under the names SCS image metadata (scs-0102) and
//! Glance give them, checked here once for every image (at import) and once more against the
//! node (at Create). Pure: the node's facts come in as [`FirmwareFacts`].
//!
//! | property | values | default |
//! |---|---|---|
//! | `hw_firmware_type` | `bios`, `uefi` | `bios` |
//! | `hw_machine_type` | `pc`, `q35` | `pc` for BIOS (as every guest before), `q35` for UEFI |
//! | `os_secure_boot` | `required`, `optional`, `disabled` | `disabled` |
//! | `hw_tpm_version` | `2.0` | no TPM |
//! | `hw_tpm_model` | `tpm-tis`, `tpm-crb` | `tpm-tis` (Nova's default) |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use hvagent_core::host::FirmwareFacts;

/// QEMU's machine type. The unversioned names only: libvirt makes them this node's newest
/// version (`pc-i440fx-7.2`, `pc-q35-7.2`); a versioned name would tie an image to one QEMU
/// release that other nodes may not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Machine {
    /// i440FX: what every guest had before firmware could be chosen.
    #[default]
    Pc,
    Q35,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        }
    }
}

/// What the guest boots with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boot {
    /// SeaBIOS.
    #[default]
    Bios,
    /// OVMF with a per-guest NVRAM; `secure_boot`: the Secure Boot build (SMM on) with the
    /// Microsoft and distribution keys enrolled, Secure Boot enforcing.
    Uefi { secure_boot: bool },
}

/// The TPM's interface to the guest (both TPM 2.0, emulated by swtpm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TpmModel {
    /// TPM Interface Specification (I/O at 0xfed40000): TPM 1.2 and 2.0 guests, Nova's default.
    Tis,
    /// Command Response Buffer: the TPM 2.0 interface.
    Crb,
}

impl TpmModel {
    /// libvirt's `<tpm model=...>`.
    pub fn libvirt_model(self) -> &'static str {
        match self {
            TpmModel::Tis => "tpm-tis",
            TpmModel::Crb => "tpm-crb",
        }
    }
}

/// What a guest gets: kept in its intent, so that a resize or a restart of the agent
/// defines it with the same firmware whatever happens to its image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    pub machine: Machine,
    pub boot: Boot,
    /// A TPM 2.0 of this model; `None`: no TPM.
    pub tpm: Option<TpmModel>,
}

impl Firmware {
    /// A guest as every guest was before firmware could be chosen: `pc`, BIOS, no TPM. Its
    /// domain XML is what it always was.
    pub fn is_default(&self) -> bool {
        *self == Firmware::default()
    }

    pub fn secure_boot(&self) -> bool {
        matches!(self.boot, Boot::Uefi { secure_boot: true })
    }
}

/// `os_secure_boot`, in Glance's words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecureBoot {
    /// On, or the guest is not created.
    Required,
    /// On where the node has the Secure Boot firmware and the machine can have it (`q35`).
    Optional,
    #[default]
    Disabled,
}

/// What an image asks for, checked against the rules; [`ImageFirmware::on`] makes it a
/// guest's [`Firmware`] on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageFirmware {
    pub machine: Machine,
    pub uefi: bool,
    pub secure_boot: SecureBoot,
    pub tpm: Option<TpmModel>,
}

/// An image property that breaks a rule: `property` names it, `rule` says what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{property}: {rule}")]
pub struct PropertyError {
    pub property: &'static str,
    pub rule: String,
}

fn refuse(property: &'static str, rule: impl Into<String>) -> PropertyError {
    PropertyError {
        property,
        rule: rule.into(),
    }
}

/// The node lacks firmware the image needs: what and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Missing(pub String);

impl ImageFirmware {
    /// The firmware `properties` ask for, or the first rule they break.
    pub fn from_properties(
        properties: &BTreeMap<String, String>,
    ) -> Result<ImageFirmware, PropertyError> {
        let get = |k: &str| properties.get(k).map(String::as_str);
        let uefi = match get("hw_firmware_type") {
            None | Some("bios") => false,
            Some("uefi") => true,
            Some(v) => {
                return Err(refuse(
                    "hw_firmware_type",
                    format!("must be bios or uefi, got {v:?}"),
                ));
            }
        };
        let machine = match get("hw_machine_type") {
            None if uefi => Machine::Q35,
            None | Some("pc") => Machine::Pc,
            Some("q35") => Machine::Q35,
            Some(v) => {
                return Err(refuse(
                    "hw_machine_type",
                    format!(
                        "must be pc or q35 (libvirt picks this node's newest version of either), got {v:?}"
                    ),
                ));
            }
        };
        let secure_boot = match get("os_secure_boot") {
            None | Some("disabled") => SecureBoot::Disabled,
            Some("optional") => SecureBoot::Optional,
            Some("required") => SecureBoot::Required,
            Some(v) => {
                return Err(refuse(
                    "os_secure_boot",
                    format!("must be required, optional or disabled, got {v:?}"),
                ));
            }
        };
        if secure_boot == SecureBoot::Required && !uefi {
            return Err(refuse(
                "os_secure_boot",
                "required needs hw_firmware_type uefi: Secure Boot is a UEFI feature",
            ));
        }
        if secure_boot == SecureBoot::Required && machine == Machine::Pc {
            return Err(refuse(
                "os_secure_boot",
                "required needs hw_machine_type q35: OVMF's Secure Boot build keeps its variables safe with SMM, which QEMU gives only to q35 guests",
            ));
        }
        let tpm = match (get("hw_tpm_version"), get("hw_tpm_model")) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(refuse(
                    "hw_tpm_model",
                    "needs hw_tpm_version 2.0: a TPM model without a version asks for no TPM",
                ));
            }
            (Some("2.0"), model) => Some(match model {
                None | Some("tpm-tis") => TpmModel::Tis,
                Some("tpm-crb") => TpmModel::Crb,
                Some(v) => {
                    return Err(refuse(
                        "hw_tpm_model",
                        format!("must be tpm-tis or tpm-crb, got {v:?}"),
                    ));
                }
            }),
            (Some("1.2"), _) => {
                return Err(refuse(
                    "hw_tpm_version",
                    "1.2 is not offered: TPM 1.2 knows only SHA-1, and measured boot in OVMF and current guests (Windows 11, systemd) need 2.0",
                ));
            }
            (Some(v), _) => {
                return Err(refuse("hw_tpm_version", format!("must be 2.0, got {v:?}")));
            }
        };
        Ok(ImageFirmware {
            machine,
            uefi,
            secure_boot,
            tpm,
        })
    }

    /// The guest's firmware on a node that offers `node`, or what the node lacks. Optional
    /// Secure Boot is on where the node has the firmware for it and the machine is q35.
    pub fn on(&self, node: &FirmwareFacts) -> Result<Firmware, Missing> {
        // The node's reason names what is missing and the package to install.
        let install =
            |what: &str| Missing(format!("this node cannot give {what}: {}", node.reason));
        let boot = if self.uefi {
            if !node.uefi {
                return Err(install("hw_firmware_type uefi"));
            }
            let secure_boot = match self.secure_boot {
                SecureBoot::Required if !node.secure_boot => {
                    return Err(install("os_secure_boot required"));
                }
                SecureBoot::Required => true,
                SecureBoot::Optional => node.secure_boot && self.machine == Machine::Q35,
                SecureBoot::Disabled => false,
            };
            Boot::Uefi { secure_boot }
        } else {
            Boot::Bios
        };
        if self.tpm.is_some() && !node.vtpm {
            return Err(install("hw_tpm_version 2.0"));
        }
        Ok(Firmware {
            machine: self.machine,
            boot,
            tpm: self.tpm,
        })
    }
}

#[cfg(test)]
mod tests;
