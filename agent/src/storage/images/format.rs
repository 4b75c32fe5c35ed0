//! What an image is, from its first bytes (never its name), and whether the agent takes it.
//! Only raw and self-contained qcow2 images are taken: every other format QEMU would recognise
//! is refused, and so is any qcow2 whose header makes QEMU open another host file, needs a key,
//! or is not one this agent can read with confidence.

/// How many leading bytes `detect` looks at.
pub const HEAD_BYTES: usize = 512;

/// The largest virtual size taken (1 PiB): beyond any disk a node gives a guest; a larger
/// figure in a header is a corrupt or hostile file.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 50;

/// What the first bytes of an image say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2 {
        virtual_size: u64,
        /// 2 or 3 for the qcow2 this agent reads; 1 is the old qcow format.
        version: u32,
        backing_file: bool,
        /// 0: none; 1: AES; 2: LUKS.
        crypt_method: u32,
        cluster_bits: u32,
        /// The header's incompatible-feature bits (0 for a version 2 header, which has none).
        incompatible: u64,
        /// The bytes given end before the header does.
        truncated: bool,
    },
    Raw,
    /// A known format hvagent does not run (VMDK, VHD(X), VDI, LUKS, ...).
    Other(&'static str),
}

/// qcow2 incompatible-feature bits (the qcow2 specification in QEMU's docs/interop/qcow2.rst).
const QCOW2_CORRUPT: u64 = 1 << 1;
const QCOW2_EXTERNAL_DATA_FILE: u64 = 1 << 2;
/// Dirty, corrupt, external data file, compression type, extended L2 entries.
const QCOW2_KNOWN_INCOMPATIBLE: u64 = 0b1_1111;

/// Magic bytes of the formats QEMU's block drivers probe for by content (their `probe`
/// functions), with their offsets. DMG is not here: QEMU recognises it by file name only.
const MAGICS: &[(usize, &[u8], &str)] = &[
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"),
    // QED_MAGIC is "QED\0" read as a little-endian u32.
    (0, b"QED\0", "qed"),
    (64, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
];

/// Detects the format from a file's first bytes (`HEAD_BYTES` of them, or the whole file when
/// shorter).
pub fn detect(head: &[u8]) -> Format {
    let be32 = |at: usize| {
        head.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_be_bytes)
    };
    let be64 = |at: usize| {
        head.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    if head.starts_with(b"QFI\xfb") {
        let version = be32(4);
        // A version 2 header is 72 bytes; version 3 adds fields up to 104 and says its length.
        let needed = match version {
            3 => (be32(100) as usize).clamp(104, HEAD_BYTES),
            _ => 72,
        };
        return Format::Qcow2 {
            virtual_size: be64(24),
            version,
            backing_file: be64(8) != 0,
            crypt_method: be32(32),
            cluster_bits: be32(20),
            incompatible: if version >= 3 { be64(72) } else { 0 },
            truncated: head.len() < needed,
        };
    }
    for (at, magic, name) in MAGICS {
        if head.get(*at..).is_some_and(|h| h.starts_with(magic)) {
            return Format::Other(name);
        }
    }
    if vmdk_descriptor(head) {
        return Format::Other("vmdk");
    }
    Format::Raw
}

/// A VMDK descriptor file (text naming extent files by path), as QEMU's `vmdk_probe` sees it:
/// comment and blank lines, then `version=1`, `2` or `3`.
fn vmdk_descriptor(head: &[u8]) -> bool {
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"#") || line.iter().all(|&b| b == b' ') {
            continue;
        }
        return matches!(line, b"version=1" | b"version=2" | b"version=3");
    }
    false
}

/// Whether the agent takes an image of this format and `file_bytes` bytes: its format name
/// and virtual size, or why not. A qcow2 image's data must be inside the file the agent
/// checked: a backing file or an external data file names a host path that QEMU would open
/// for the guest (any file the QEMU user can read, other guests' disks included; the class of
/// OpenStack's OSSA-2024-001), an encrypted one cannot be checked and needs a key, and a
/// feature bit this agent does not know may change how the file is read.
pub fn accept(format: Format, file_bytes: u64) -> Result<(&'static str, u64), String> {
    match format {
        Format::Raw if file_bytes == 0 => Err("the content is empty".into()),
        Format::Raw => Ok(("raw", file_bytes)),
        Format::Other("luks") => Err(
            "LUKS-encrypted images are refused (their content cannot be checked, and QEMU would need their key)"
                .into(),
        ),
        Format::Other(kind) => Err(format!(
            "{kind} images are not supported: convert to qcow2 or raw"
        )),
        Format::Qcow2 {
            virtual_size,
            version,
            backing_file,
            crypt_method,
            cluster_bits,
            incompatible,
            truncated,
        } => {
            if !matches!(version, 2 | 3) {
                return Err(format!(
                    "qcow2 version {version} is not supported (only 2 and 3)"
                ));
            }
            if truncated {
                return Err("the qcow2 header is truncated".into());
            }
            if crypt_method != 0 {
                return Err(
                    "encrypted qcow2 images are refused (their content cannot be checked, and QEMU would need their key)"
                        .into(),
                );
            }
            if let Some(why) = qcow2_refusal(backing_file, incompatible) {
                return Err(why);
            }
            // QEMU's own bounds: 512 B to 2 MiB clusters.
            if !(9..=21).contains(&cluster_bits) {
                return Err(format!(
                    "the qcow2 header is invalid: cluster_bits {cluster_bits} is outside 9 to 21"
                ));
            }
            if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE {
                return Err(format!(
                    "the qcow2 virtual size {virtual_size} bytes is not between 1 byte and 1 PiB"
                ));
            }
            Ok(("qcow2", virtual_size))
        }
    }
}

/// Why a qcow2 header's backing file and incompatible-feature bits make it unfit, if they do.
pub fn qcow2_refusal(backing_file: bool, incompatible: u64) -> Option<String> {
    if backing_file {
        return Some(
            "qcow2 images with a backing file are refused (it could point anywhere on the host)"
                .into(),
        );
    }
    if incompatible & QCOW2_EXTERNAL_DATA_FILE != 0 {
        return Some(
            "qcow2 images with an external data file are refused (QEMU would open that host file for the guest)"
                .into(),
        );
    }
    if incompatible & QCOW2_CORRUPT != 0 {
        return Some("the qcow2 image is marked corrupt".into());
    }
    let unknown = incompatible & !QCOW2_KNOWN_INCOMPATIBLE;
    if unknown != 0 {
        return Some(format!(
            "the qcow2 image uses incompatible features this agent does not know (bits {unknown:#x})"
        ));
    }
    None
}
