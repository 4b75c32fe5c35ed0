//! The image store under `[storage] root`/images: one directory per image holding the file and
//! its record. Names are confined to `[a-z0-9][a-z0-9._-]{0,63}`, so no name can leave the
//! store; the format comes from the file's content, never its name; a qcow2 image that names
//! a backing file is refused (it could make QEMU read any file on the host).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
    #[error("image {name:?} is being imported from {source_desc}")]
    Importing { name: String, source_desc: String },
    /// A download that failed; `retryable` when the network or the server may recover.
    #[error("source_url: {url}: {reason}")]
    Fetch {
        url: String,
        reason: String,
        retryable: bool,
    },
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
        /// The header's incompatible-feature bits (0 for a version 2 header, which has none).
        incompatible: u64,
    },
    Raw,
    /// A known container format hvagent does not run (VMDK, VHD(X), VDI, ...).
    Other(&'static str),
}

/// qcow2 incompatible-feature bits (the qcow2 specification in QEMU's docs/interop/qcow2.rst).
const QCOW2_CORRUPT: u64 = 1 << 1;
const QCOW2_EXTERNAL_DATA_FILE: u64 = 1 << 2;
/// Dirty, corrupt, external data file, compression type, extended L2 entries.
const QCOW2_KNOWN_INCOMPATIBLE: u64 = 0b1_1111;

/// Why a qcow2 image cannot be a guest's base, if it cannot. Its data must be inside the file
/// the agent checked: a backing file or an external data file names a host path that QEMU would
/// open for the guest (any file the QEMU user can read, other guests' disks included; the class
/// of OpenStack's OSSA-2024-001), and a feature bit this agent does not know may change how the
/// file is read.
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

/// Detects the format from a file's first 512 bytes.
pub fn detect(head: &[u8]) -> Format {
    let be64 = |at: usize| {
        head.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    if head.starts_with(b"QFI\xfb") {
        let version = head
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_be_bytes);
        return Format::Qcow2 {
            virtual_size: be64(24),
            backing_file: be64(8) != 0,
            incompatible: if version >= 3 { be64(72) } else { 0 },
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

/// An import under way, shown by Get and List until it ends.
#[derive(Debug)]
pub struct ImportProgress {
    /// The path or (redacted) URL.
    pub source: String,
    pub received: AtomicU64,
    /// Bytes expected; 0 while not known.
    pub total: AtomicU64,
    pub started_unix: u64,
}

type Registry = Arc<Mutex<BTreeMap<String, Arc<ImportProgress>>>>;

fn lock(registry: &Registry) -> MutexGuard<'_, BTreeMap<String, Arc<ImportProgress>>> {
    hvagent_core::sync::lock(registry)
}

/// Holds an image name for one import; the import stops being shown when it is dropped.
pub struct ImportTicket {
    registry: Registry,
    name: String,
    /// `source_path` or `source_url`: named in errors about the content.
    source_field: &'static str,
    sha256: Option<String>,
    properties: BTreeMap<String, String>,
    pub progress: Arc<ImportProgress>,
}

impl Drop for ImportTicket {
    fn drop(&mut self) {
        lock(&self.registry).remove(&self.name);
    }
}

/// What `begin` found: the image already there with the wanted content, or a new import.
pub enum Begun {
    Existing(ImageRecord),
    Started(ImportTicket),
}

pub struct ImageStore {
    dir: PathBuf,
    importing: Registry,
}

impl ImageStore {
    pub fn new(storage_root: &Path) -> ImageStore {
        ImageStore {
            dir: storage_root.join("images"),
            importing: Registry::default(),
        }
    }

    fn image_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The image file of `name` (for overlays).
    pub fn file(&self, name: &str) -> PathBuf {
        self.image_dir(name).join("image")
    }

    /// Checks an import request and takes its name, before any byte is read: invalid
    /// fields, a name being imported, or a `sha256` that differs from the image already
    /// there are refused here; the same `sha256` as the image there is that image.
    pub fn begin(
        &self,
        name: &str,
        sha256: Option<&str>,
        properties: BTreeMap<String, String>,
        source_field: &'static str,
        source: String,
        now_unix: u64,
    ) -> Result<Begun, StoreError> {
        check_name("name", name)?;
        check_properties(&properties)?;
        if let Some(want) = sha256
            && !(want.len() == 64 && want.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid("sha256", "must be 64 hexadecimal digits"));
        }
        let mut importing = lock(&self.importing);
        if let Some(other) = importing.get(name) {
            return Err(StoreError::Importing {
                name: name.to_string(),
                source_desc: other.source.clone(),
            });
        }
        if let (Some(want), Ok(existing)) = (sha256, self.get(name)) {
            return if want.eq_ignore_ascii_case(&existing.sha256) {
                Ok(Begun::Existing(existing))
            } else {
                Err(StoreError::Exists {
                    name: name.to_string(),
                    sha256: existing.sha256,
                })
            };
        }
        let progress = Arc::new(ImportProgress {
            source,
            received: AtomicU64::new(0),
            total: AtomicU64::new(0),
            started_unix: now_unix,
        });
        importing.insert(name.to_string(), progress.clone());
        Ok(Begun::Started(ImportTicket {
            registry: self.importing.clone(),
            name: name.to_string(),
            source_field,
            sha256: sha256.map(str::to_ascii_lowercase),
            properties,
            progress,
        }))
    }

    /// Imports in progress, by name.
    pub fn importing(&self) -> Vec<(String, Arc<ImportProgress>)> {
        lock(&self.importing)
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    /// Copies the local file `source` into the store as `name` (see `begin` and `import`).
    pub fn import_local(
        &self,
        name: &str,
        source: &Path,
        sha256: Option<&str>,
        properties: BTreeMap<String, String>,
        now_unix: u64,
    ) -> Result<ImageRecord, StoreError> {
        let ticket = match self.begin(
            name,
            sha256,
            properties,
            "source_path",
            source.display().to_string(),
            now_unix,
        )? {
            Begun::Existing(record) => return Ok(record),
            Begun::Started(ticket) => ticket,
        };
        if !source.is_absolute() {
            return Err(invalid("source_path", "must be an absolute path"));
        }
        let input = File::open(source).map_err(|e| {
            invalid(
                "source_path",
                format!("cannot open {}: {e}", source.display()),
            )
        })?;
        let meta = input.metadata().map_err(io(source, "stat"))?;
        if !meta.is_file() {
            return Err(invalid(
                "source_path",
                format!("{} is not a regular file", source.display()),
            ));
        }
        ticket.progress.total.store(meta.len(), Ordering::Relaxed);
        self.import(&ticket, input, io(source, "read"), now_unix)
    }

    /// Copies `input` into the store under the ticket's name, hashing it and detecting its
    /// format, and checks the ticket's `sha256`. Importing the same content under the same
    /// name again is a no-op; other content under a taken name is refused. A failed import
    /// leaves nothing behind. Blocks: run it on a blocking thread.
    pub fn import<R: Read, E: FnOnce(std::io::Error) -> StoreError>(
        &self,
        ticket: &ImportTicket,
        mut input: R,
        read_error: E,
        now_unix: u64,
    ) -> Result<ImageRecord, StoreError> {
        let name = ticket.name.as_str();
        let sha256 = ticket.sha256.as_deref();
        // QEMU reads images as backing files of guest disks: the way there is traversable.
        super::traversable_dir(&self.dir).map_err(io(&self.dir, "create image store"))?;
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
                let n = match input.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_error(e)),
                };
                if n == 0 {
                    break;
                }
                if head.len() < 512 {
                    head.extend_from_slice(&buf[..n.min(512 - head.len())]);
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io(&tmp, "write"))?;
                total += n as u64;
                ticket.progress.received.store(total, Ordering::Relaxed);
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
                format!("the content's sha256 is {digest}, not {want}"),
            ));
        }
        let (format, virtual_size) = match detect(&head) {
            Format::Qcow2 {
                virtual_size,
                backing_file,
                incompatible,
            } => match qcow2_refusal(backing_file, incompatible) {
                Some(why) => return refuse(invalid(ticket.source_field, why)),
                None => ("qcow2", virtual_size),
            },
            Format::Raw if total == 0 => {
                return refuse(invalid(ticket.source_field, "the content is empty"));
            }
            Format::Raw => ("raw", total),
            Format::Other(kind) => {
                return refuse(invalid(
                    ticket.source_field,
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
            properties: ticket.properties.clone(),
            created_unix: now_unix,
        };
        let dir = self.image_dir(name);
        let placed = (|| {
            std::fs::create_dir(&dir).map_err(io(&dir, "create"))?;
            // QEMU reads the image as a backing file: the directory must be traversable.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
                .map_err(io(&dir, "set mode 0711"))?;
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
    /// Whether `name` can be deleted but for its users: it exists and is not being imported.
    pub fn deletable(&self, name: &str) -> Result<(), StoreError> {
        if let Some(p) = lock(&self.importing).get(name) {
            return Err(StoreError::Importing {
                name: name.to_string(),
                source_desc: p.source.clone(),
            });
        }
        self.get(name).map(drop)
    }

    pub fn delete(&self, name: &str, users: &[String]) -> Result<(), StoreError> {
        self.deletable(name)?;
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

impl ImageStore {
    /// Removes what imports cut short by a crash left: partial files and image directories
    /// without a record. Call it at start-up, before any import.
    pub fn sweep(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            let partial = e.file_name().to_string_lossy().starts_with(".import-");
            let unrecorded = path.is_dir() && !path.join("record.json").exists();
            let gone = if partial {
                std::fs::remove_file(&path)
            } else if unrecorded {
                std::fs::remove_dir_all(&path)
            } else {
                continue;
            };
            match gone {
                Ok(()) => removed.push(path),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot remove a partial import")
                }
            }
        }
        removed
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
