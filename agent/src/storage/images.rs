//! The image store under `[storage] root`/images: one directory per image holding the file and
//! its record. Names are confined to `[a-z0-9][a-z0-9._-]{0,63}`, so no name can leave the
//! store; the format comes from the file's content, never its name; a qcow2 image that names
//! a backing file is refused (it could make QEMU read any file on the host).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Image properties the agent understands (SCS image metadata); others are kept as given.
pub const KNOWN_PROPERTIES: &[&str] = &[
    "architecture",
    "min_disk",
    "min_ram",
    "hw_disk_bus",
    "hw_scsi_model",
    "hw_rng_model",
    "hw_firmware_type",
    "os_distro",
    "os_version",
];

pub const MAX_PROPERTIES: usize = 64;
pub const MAX_PROPERTY_CHARS: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    /// `qcow2` or `raw`, from the content.
    pub format: String,
    pub virtual_size_bytes: u64,
    pub file_bytes: u64,
    pub sha256: String,
    pub properties: BTreeMap<String, String>,
    pub created_unix: u64,
}

impl ImageRecord {
    fn property_u64(&self, key: &str) -> u64 {
        self.properties
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// `min_disk` in GB (0: none).
    pub fn min_disk_gb(&self) -> u64 {
        self.property_u64("min_disk")
    }

    /// `min_ram` in MiB (0: none).
    pub fn min_ram_mib(&self) -> u64 {
        self.property_u64("min_ram")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("image {0:?} does not exist")]
    NotFound(String),
    #[error("image {name:?} already exists with sha256 {sha256}")]
    Exists { name: String, sha256: String },
    #[error("image {name:?} is used by {users}")]
    InUse { name: String, users: String },
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        path,
        action,
        source,
    }
}

fn invalid(field: &'static str, rule: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        rule: rule.into(),
    }
}

/// Image and guest names: lower-case letters, digits, `.`, `_`, `-`; starts with a letter or
/// digit; at most 64 characters. Nothing that could be a path or need escaping.
pub fn check_name(field: &'static str, name: &str) -> Result<(), StoreError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            "must be 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit",
        ))
    }
}

fn check_properties(properties: &BTreeMap<String, String>) -> Result<(), StoreError> {
    if properties.len() > MAX_PROPERTIES {
        return Err(invalid(
            "properties",
            format!("at most {MAX_PROPERTIES} properties"),
        ));
    }
    for (k, v) in properties {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_PROPERTY_CHARS
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b));
        if !key_ok {
            return Err(invalid(
                "properties",
                format!("key {k:?} must be 1-255 characters of A-Z a-z 0-9 _ : . -"),
            ));
        }
        if v.chars().count() > MAX_PROPERTY_CHARS || v.chars().any(char::is_control) {
            return Err(invalid(
                "properties",
                format!("{k}: at most 255 characters, no control characters"),
            ));
        }
        let number = |v: &str| v.parse::<u64>().is_ok();
        match k.as_str() {
            "min_disk" | "min_ram" if !number(v) => {
                return Err(invalid(
                    "properties",
                    format!("{k}: must be a whole number, got {v:?}"),
                ));
            }
            "hw_disk_bus" if !matches!(v.as_str(), "virtio" | "scsi" | "sata") => {
                return Err(invalid(
                    "properties",
                    format!("hw_disk_bus: must be virtio, scsi or sata, got {v:?}"),
                ));
            }
            "architecture" if v != "x86_64" => {
                return Err(invalid(
                    "properties",
                    format!("architecture: this node runs x86_64 guests, got {v:?}"),
                ));
            }
            "hw_firmware_type" if v != "bios" => {
                return Err(invalid(
                    "properties",
                    format!("hw_firmware_type: only bios is supported here, got {v:?}"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What the first bytes of an image say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2 {
        virtual_size: u64,
        backing_file: bool,
    },
    Raw,
    /// A known container format hvagent does not run (VMDK, VHD(X), VDI, ...).
    Other(&'static str),
}

/// Detects the format from a file's first 512 bytes.
pub fn detect(head: &[u8]) -> Format {
    let be64 = |at: usize| {
        head.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    if head.starts_with(b"QFI\xfb") {
        return Format::Qcow2 {
            virtual_size: be64(24),
            backing_file: be64(8) != 0,
        };
    }
    for (magic, name) in [
        (&b"KDMV"[..], "vmdk"),
        (b"vhdxfile", "vhdx"),
        (b"conectix", "vpc"),
        (b"QEVM", "qed"),
    ] {
        if head.starts_with(magic) {
            return Format::Other(name);
        }
    }
    if head.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe][..]) {
        return Format::Other("vdi");
    }
    Format::Raw
}

pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    pub fn new(storage_root: &Path) -> ImageStore {
        ImageStore {
            dir: storage_root.join("images"),
        }
    }

    fn image_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The image file of `name` (for overlays).
    pub fn file(&self, name: &str) -> PathBuf {
        self.image_dir(name).join("image")
    }

    /// Copies `source` into the store as `name`, checking `sha256` when given. Importing the
    /// same content under the same name again is a no-op; other content under a taken name
    /// is refused. A failed import leaves nothing behind.
    pub fn import_local(
        &self,
        name: &str,
        source: &Path,
        sha256: Option<&str>,
        properties: BTreeMap<String, String>,
        now_unix: u64,
    ) -> Result<ImageRecord, StoreError> {
        check_name("name", name)?;
        check_properties(&properties)?;
        if let Some(want) = sha256
            && !(want.len() == 64 && want.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid("sha256", "must be 64 hexadecimal digits"));
        }
        if !source.is_absolute() {
            return Err(invalid("source", "must be an absolute path"));
        }
        let mut input = File::open(source)
            .map_err(|e| invalid("source", format!("cannot open {}: {e}", source.display())))?;
        let meta = input.metadata().map_err(io(source, "stat"))?;
        if !meta.is_file() {
            return Err(invalid(
                "source",
                format!("{} is not a regular file", source.display()),
            ));
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir, "create image store"))?;
        let tmp = self
            .dir
            .join(format!(".import-{name}-{}", std::process::id()));
        let copied = (|| {
            let mut out = File::create(&tmp).map_err(io(&tmp, "create"))?;
            let mut hasher = Sha256::new();
            let mut head = Vec::with_capacity(512);
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = input.read(&mut buf).map_err(io(source, "read"))?;
                if n == 0 {
                    break;
                }
                if head.len() < 512 {
                    head.extend_from_slice(&buf[..n.min(512 - head.len())]);
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io(&tmp, "write"))?;
                total += n as u64;
            }
            out.sync_all().map_err(io(&tmp, "sync"))?;
            Ok::<_, StoreError>((head, total, hex(&hasher.finalize())))
        })();
        let (head, total, digest) = match copied {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let refuse = |e: StoreError| {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        };
        if let Some(want) = sha256
            && !want.eq_ignore_ascii_case(&digest)
        {
            return refuse(invalid(
                "sha256",
                format!("the file's sha256 is {digest}, not {want}"),
            ));
        }
        let (format, virtual_size) = match detect(&head) {
            Format::Qcow2 {
                backing_file: true, ..
            } => {
                return refuse(invalid(
                    "source",
                    "qcow2 images with a backing file are refused (it could point anywhere on the host)",
                ));
            }
            Format::Qcow2 { virtual_size, .. } => ("qcow2", virtual_size),
            Format::Raw if total == 0 => return refuse(invalid("source", "the file is empty")),
            Format::Raw => ("raw", total),
            Format::Other(kind) => {
                return refuse(invalid(
                    "source",
                    format!("{kind} images are not supported: convert to qcow2 or raw"),
                ));
            }
        };
        if let Ok(existing) = self.get(name) {
            let _ = std::fs::remove_file(&tmp);
            return if existing.sha256 == digest {
                Ok(existing)
            } else {
                Err(StoreError::Exists {
                    name: name.to_string(),
                    sha256: existing.sha256,
                })
            };
        }
        let record = ImageRecord {
            name: name.to_string(),
            format: format.to_string(),
            virtual_size_bytes: virtual_size,
            file_bytes: total,
            sha256: digest,
            properties,
            created_unix: now_unix,
        };
        let dir = self.image_dir(name);
        let placed = (|| {
            std::fs::create_dir(&dir).map_err(io(&dir, "create"))?;
            let json = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Io {
                path: dir.join("record.json"),
                action: "encode",
                source: std::io::Error::other(e),
            })?;
            std::fs::write(dir.join("record.json.tmp"), json)
                .map_err(io(&dir.join("record.json.tmp"), "write"))?;
            std::fs::rename(&tmp, self.file(name)).map_err(io(&tmp, "move into the store"))?;
            // The record last: an image directory without it is an interrupted import.
            std::fs::rename(dir.join("record.json.tmp"), dir.join("record.json"))
                .map_err(io(&dir, "commit record"))
        })();
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(record)
    }

    pub fn get(&self, name: &str) -> Result<ImageRecord, StoreError> {
        check_name("name", name)?;
        let path = self.image_dir(name).join("record.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name.to_string()));
            }
            Err(e) => return Err(io(&path, "read")(e)),
        };
        serde_json::from_slice(&text).map_err(|e| StoreError::Io {
            path,
            action: "decode",
            source: std::io::Error::other(e),
        })
    }

    /// Every complete image, by name; interrupted imports (no record) are not listed.
    pub fn list(&self) -> Vec<ImageRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<ImageRecord> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| self.get(&n).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Deletes `name` unless `users` (guests using it) is non-empty.
    pub fn delete(&self, name: &str, users: &[String]) -> Result<(), StoreError> {
        self.get(name)?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                name: name.to_string(),
                users: users.join(", "),
            });
        }
        let dir = self.image_dir(name);
        // The record first: a half-deleted image is an interrupted import, never listed.
        std::fs::remove_file(dir.join("record.json")).map_err(io(&dir, "remove record"))?;
        std::fs::remove_dir_all(&dir).map_err(io(&dir, "remove"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_header(size: u64, backing: bool) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        if backing {
            h[8..16].copy_from_slice(&512u64.to_be_bytes());
        }
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h
    }

    #[test]
    fn formats_come_from_content() {
        assert_eq!(
            detect(&qcow2_header(1 << 30, false)),
            Format::Qcow2 {
                virtual_size: 1 << 30,
                backing_file: false
            }
        );
        assert_eq!(detect(b"KDMV...."), Format::Other("vmdk"));
        assert_eq!(detect(b"vhdxfile"), Format::Other("vhdx"));
        assert_eq!(detect(&[0u8; 512]), Format::Raw);
        let mut vdi = vec![0u8; 512];
        vdi[64..68].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(detect(&vdi), Format::Other("vdi"));
    }

    #[test]
    fn names_cannot_leave_the_store() {
        for bad in [
            "",
            "../etc",
            "a/b",
            ".hidden",
            "A",
            "x y",
            "-x",
            &"a".repeat(65),
        ] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
        }
        for good in ["debian-12", "a", "img_1.2", &"a".repeat(64)] {
            assert!(check_name("name", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn import_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let src = dir.path().join("src.qcow2");
        std::fs::write(&src, qcow2_header(2 << 30, false)).unwrap();
        let props = BTreeMap::from([("min_disk".to_string(), "5".to_string())]);
        let r = store
            .import_local("deb", &src, None, props.clone(), 7)
            .unwrap();
        assert_eq!(r.format, "qcow2");
        assert_eq!(r.virtual_size_bytes, 2 << 30);
        assert_eq!(r.min_disk_gb(), 5);
        assert_eq!(store.get("deb").unwrap(), r);
        // Same content again: the same record; other content under the name: refused.
        assert_eq!(store.import_local("deb", &src, None, props, 8).unwrap(), r);
        let other = dir.path().join("other.img");
        std::fs::write(&other, b"raw bytes").unwrap();
        assert!(matches!(
            store.import_local("deb", &other, None, BTreeMap::new(), 9),
            Err(StoreError::Exists { .. })
        ));
        let raw = store
            .import_local("raw", &other, Some(&r.sha256), BTreeMap::new(), 9)
            .unwrap_err();
        assert!(
            raw.to_string().starts_with("sha256: the file's sha256 is "),
            "{raw}"
        );
        assert_eq!(
            store
                .list()
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>(),
            ["deb"]
        );
        let e = store.delete("deb", &["vm1".to_string()]).unwrap_err();
        assert_eq!(e.to_string(), "image \"deb\" is used by vm1");
        store.delete("deb", &[]).unwrap();
        assert!(matches!(store.get("deb"), Err(StoreError::NotFound(_))));
        // Nothing left behind, not even temporary files.
        assert_eq!(
            std::fs::read_dir(dir.path().join("images"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn hostile_images_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let backed = dir.path().join("backed.qcow2");
        std::fs::write(&backed, qcow2_header(1 << 30, true)).unwrap();
        let e = store
            .import_local("b", &backed, None, BTreeMap::new(), 0)
            .unwrap_err();
        assert!(e.to_string().contains("backing file"), "{e}");
        let vmdk = dir.path().join("x.qcow2");
        std::fs::write(&vmdk, b"KDMV0000").unwrap();
        let e = store
            .import_local("v", &vmdk, None, BTreeMap::new(), 0)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "source: vmdk images are not supported: convert to qcow2 or raw"
        );
        let e = store
            .import_local("d", dir.path(), None, BTreeMap::new(), 0)
            .unwrap_err();
        assert!(e.to_string().ends_with("is not a regular file"), "{e}");
        let props = BTreeMap::from([("hw_disk_bus".to_string(), "ide".to_string())]);
        let e = store.import_local("p", &vmdk, None, props, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "properties: hw_disk_bus: must be virtio, scsi or sata, got \"ide\""
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("images"))
                .unwrap()
                .count(),
            0
        );
    }
}
