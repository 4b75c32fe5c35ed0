//! The image store under `[storage] root`/images: one directory per image holding the file and
//! its record. Names are confined to `[a-z0-9][a-z0-9._-]{0,63}`, so no name can leave the
//! store; the format comes from the file's content, never its name, and only raw and
//! self-contained qcow2 images are taken (`format`); every import is bounded in size, time and
//! the free space it leaves (`ImportLimits`, from `[storage]`).

mod format;
mod hold;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use format::{Format, HEAD_BYTES, MAX_VIRTUAL_SIZE, accept, detect, qcow2_refusal};
pub use hold::{Deletion, ImageHold};

/// Image properties the agent understands (SCS image metadata); others are kept as given.
pub const KNOWN_PROPERTIES: &[&str] = &[
    "architecture",
    "min_disk",
    "min_ram",
    "hw_disk_bus",
    "hw_scsi_model",
    "hw_rng_model",
    "hw_firmware_type",
    "hw_machine_type",
    "os_secure_boot",
    "hw_tpm_version",
    "hw_tpm_model",
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
    /// An import that reached one of the `[storage]` limits.
    #[error("{field}: {rule} ([storage] {key})")]
    Limit {
        field: &'static str,
        /// The config key whose limit was reached.
        key: &'static str,
        kind: LimitKind,
        rule: String,
    },
    /// The image's record exists but cannot be read: the image is left as it is.
    #[error("image {name:?} cannot be replaced: {reason}")]
    Unreadable { name: String, reason: String },
    /// A delete of the image is under way: nothing may start using it.
    #[error("image {0:?} is being deleted")]
    Deleting(String),
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

/// Which `[storage]` limit an import reached; each has its own gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// `import_max_bytes`.
    TooLarge,
    /// `import_deadline_secs`.
    Deadline,
    /// `import_min_free_bytes`.
    NoSpace,
}

impl LimitKind {
    pub fn key(self) -> &'static str {
        match self {
            LimitKind::TooLarge => "import_max_bytes",
            LimitKind::Deadline => "import_deadline_secs",
            LimitKind::NoSpace => "import_min_free_bytes",
        }
    }
}

fn limit(field: &'static str, kind: LimitKind, rule: String) -> StoreError {
    StoreError::Limit {
        field,
        key: kind.key(),
        kind,
        rule,
    }
}

/// The error of an import that ran out of time.
pub fn past_deadline(field: &'static str, limits: &ImportLimits) -> StoreError {
    limit(
        field,
        LimitKind::Deadline,
        format!(
            "the import took longer than {} s",
            limits.deadline.as_secs()
        ),
    )
}

/// `[storage]` bounds on every import (docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// The most bytes one import may bring.
    pub max_bytes: u64,
    /// How long one import may take, from its request to its record.
    pub deadline: Duration,
    /// Free space an import leaves on the store's file system for guests' disks.
    pub min_free_bytes: u64,
}

impl Default for ImportLimits {
    /// 64 GiB holds any cloud image and a whole raw disk of a common flavor; an hour brings
    /// that much over a 200 Mbit/s link; 2 GiB free keeps room for guests' overlays to grow
    /// while an operator reacts to the store filling (docs/operations.md).
    fn default() -> Self {
        ImportLimits {
            max_bytes: 64 << 30,
            deadline: Duration::from_secs(3600),
            min_free_bytes: 2 << 30,
        }
    }
}

/// The limits of one import and the moment it must be done by.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub limits: ImportLimits,
    pub deadline: Instant,
}

impl Bounds {
    /// Bounds for an import that starts now.
    pub fn starting_now(limits: ImportLimits) -> Bounds {
        Bounds {
            limits,
            deadline: Instant::now() + limits.deadline,
        }
    }
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
            _ => {}
        }
    }
    // The firmware properties depend on each other (Secure Boot needs UEFI and q35, a TPM
    // model needs a TPM version): checked together, the first broken rule named.
    crate::domain::firmware::ImageFirmware::from_properties(properties)
        .map_err(|e| invalid("properties", e.to_string()))?;
    Ok(())
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
    holds: hold::Holds,
    limits: Mutex<ImportLimits>,
}

impl ImageStore {
    pub fn new(storage_root: &Path) -> ImageStore {
        ImageStore {
            dir: storage_root.join("images"),
            importing: Registry::default(),
            holds: hold::Holds::default(),
            limits: Mutex::new(ImportLimits::default()),
        }
    }

    /// Sets the `[storage]` import limits (the daemon does, once at start-up; until then, and
    /// in tests, the defaults).
    pub fn set_limits(&self, limits: ImportLimits) {
        *hvagent_core::sync::lock(&self.limits) = limits;
    }

    pub fn limits(&self) -> ImportLimits {
        *hvagent_core::sync::lock(&self.limits)
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
    /// The file is opened without following a symbolic link and without blocking, and must be
    /// a regular file: a FIFO or a device would hold the import's thread for ever, and a link
    /// could lead anywhere.
    pub fn import_local(
        &self,
        name: &str,
        source: &Path,
        sha256: Option<&str>,
        properties: BTreeMap<String, String>,
        now_unix: u64,
    ) -> Result<ImageRecord, StoreError> {
        let bounds = Bounds::starting_now(self.limits());
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
        let input = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(source)
            .map_err(|e| {
                let shown = source.display();
                let why = if e.raw_os_error() == Some(libc::ELOOP) {
                    format!("{shown} is a symbolic link (give the file it points to)")
                } else {
                    format!("cannot open {shown}: {e}")
                };
                invalid("source_path", why)
            })?;
        let meta = input.metadata().map_err(io(source, "stat"))?;
        if !meta.is_file() {
            return Err(invalid(
                "source_path",
                format!("{} is not a regular file", source.display()),
            ));
        }
        ticket.progress.total.store(meta.len(), Ordering::Relaxed);
        self.import(&ticket, input, io(source, "read"), &bounds, now_unix)
    }

    /// Refuses, before anything is read, an import of `bytes` bytes that is over the size cap
    /// or would leave less than the kept free space on the store's file system.
    fn check_room(&self, ticket: &ImportTicket, bounds: &Bounds) -> Result<(), StoreError> {
        let bytes = ticket.progress.total.load(Ordering::Relaxed);
        let limits = &bounds.limits;
        if bytes > limits.max_bytes {
            return Err(limit(
                ticket.source_field,
                LimitKind::TooLarge,
                format!(
                    "the content is {bytes} bytes, more than the {} an import may bring",
                    limits.max_bytes
                ),
            ));
        }
        super::traversable_dir(&self.dir).map_err(io(&self.dir, "create image store"))?;
        let free = self.free_bytes()?;
        if free.saturating_sub(limits.min_free_bytes) < bytes {
            return Err(limit(
                ticket.source_field,
                LimitKind::NoSpace,
                format!(
                    "{bytes} bytes would leave less than {} bytes free on the store's file system ({free} free)",
                    limits.min_free_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Free bytes on the store's file system, for unprivileged users (what guests' overlays
    /// may grow into).
    fn free_bytes(&self) -> Result<u64, StoreError> {
        let fs = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| io(&self.dir, "statvfs")(std::io::Error::from(e)))?;
        Ok(fs.blocks_available().saturating_mul(fs.fragment_size()))
    }

    /// Copies `input` into the store under the ticket's name, hashing it and detecting its
    /// format, and checks the ticket's `sha256`. Importing the same content under the same
    /// name again is a no-op; other content under a taken name is refused. The copy stops at
    /// the bounds' size cap, deadline and kept free space. A failed import leaves nothing
    /// behind. Blocks: run it on a thread of its own.
    pub fn import<R: Read, E: FnOnce(std::io::Error) -> StoreError>(
        &self,
        ticket: &ImportTicket,
        input: R,
        read_error: E,
        bounds: &Bounds,
        now_unix: u64,
    ) -> Result<ImageRecord, StoreError> {
        self.check_room(ticket, bounds)?;
        let tmp = self.staging(ticket);
        let copied = File::create(&tmp)
            .map_err(io(&tmp, "create"))
            .and_then(|mut out| {
                let copied = self.copy(ticket, input, read_error, bounds, &mut out, &tmp)?;
                out.sync_all().map_err(io(&tmp, "sync"))?;
                Ok(copied)
            });
        match copied {
            Ok(copied) => self.finish(ticket, &tmp, copied, now_unix),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Where the ticket's content is staged until it is placed: a name `sweep` removes
    /// after a crash.
    fn staging(&self, ticket: &ImportTicket) -> PathBuf {
        self.dir
            .join(format!(".import-{}-{}", ticket.name, std::process::id()))
    }

    /// Makes content the agent writes itself (a guest's snapshot) the ticket's image, as an
    /// import of it would: `estimate` bytes (the length announced, as a download's) are held
    /// to the size cap and the kept free space first; then `make` writes the file at the
    /// staging path it is given, which is read back through the import's copy (hash, format
    /// checks, bounds) and placed. A failure, `make`'s included, leaves nothing behind.
    /// Blocks: run it on a thread of its own.
    pub fn produce<E: From<StoreError>>(
        &self,
        ticket: &ImportTicket,
        estimate: u64,
        bounds: &Bounds,
        make: impl FnOnce(&Path) -> Result<(), E>,
        now_unix: u64,
    ) -> Result<ImageRecord, E> {
        ticket.progress.total.store(estimate, Ordering::Relaxed);
        self.check_room(ticket, bounds)?;
        let tmp = self.staging(ticket);
        let made = make(&tmp).and_then(|()| {
            let file = File::open(&tmp).map_err(io(&tmp, "open"))?;
            // fsync of a read-only descriptor: the content reaches the disk before the
            // rename that makes it the image.
            file.sync_all().map_err(io(&tmp, "sync"))?;
            Ok(self.copy(
                ticket,
                file,
                io(&tmp, "read"),
                bounds,
                &mut std::io::sink(),
                &tmp,
            )?)
        });
        match made {
            Ok(copied) => Ok(self.finish(ticket, &tmp, copied, now_unix)?),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Checks the staged `tmp` (its first bytes, length and sha256 as `copy` gave them)
    /// against the ticket and the store, and places it; `tmp` is gone afterwards.
    fn finish(
        &self,
        ticket: &ImportTicket,
        tmp: &Path,
        (head, total, digest): (Vec<u8>, u64, String),
        now_unix: u64,
    ) -> Result<ImageRecord, StoreError> {
        let name = ticket.name.as_str();
        let refuse = |e: StoreError| {
            let _ = std::fs::remove_file(tmp);
            Err(e)
        };
        if let Some(want) = ticket.sha256.as_deref()
            && !want.eq_ignore_ascii_case(&digest)
        {
            return refuse(invalid(
                "sha256",
                format!("the content's sha256 is {digest}, not {want}"),
            ));
        }
        let (format, virtual_size) = match accept(detect(&head), total) {
            Ok(taken) => taken,
            Err(why) => return refuse(invalid(ticket.source_field, why)),
        };
        match self.get(name) {
            Ok(existing) => {
                let _ = std::fs::remove_file(tmp);
                return if existing.sha256 == digest {
                    Ok(existing)
                } else {
                    Err(StoreError::Exists {
                        name: name.to_string(),
                        sha256: existing.sha256,
                    })
                };
            }
            Err(StoreError::NotFound(_)) => {}
            // An image whose record cannot be read may be the base of running guests: it is
            // never replaced or removed by an import.
            Err(e) => {
                return refuse(StoreError::Unreadable {
                    name: name.to_string(),
                    reason: e.to_string(),
                });
            }
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
        let placed = self.place(&record, tmp);
        let _ = std::fs::remove_file(tmp);
        placed.map(|()| record)
    }

    /// Copies `input` to `out` (the file `tmp`, or a sink when `input` is `tmp` itself)
    /// within the bounds; gives the first bytes, the length and the sha256.
    fn copy<R: Read, W: Write, E: FnOnce(std::io::Error) -> StoreError>(
        &self,
        ticket: &ImportTicket,
        mut input: R,
        read_error: E,
        bounds: &Bounds,
        out: &mut W,
        tmp: &Path,
    ) -> Result<(Vec<u8>, u64, String), StoreError> {
        let field = ticket.source_field;
        let limits = &bounds.limits;
        let late = || past_deadline(field, limits);
        let mut hasher = Sha256::new();
        let mut head = Vec::with_capacity(HEAD_BYTES);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let mut space_checked_at = 0u64;
        loop {
            if Instant::now() >= bounds.deadline {
                return Err(late());
            }
            let n = match input.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A download ended by its deadline reads as an error: name the limit.
                Err(_) if Instant::now() >= bounds.deadline => return Err(late()),
                Err(e) => return Err(read_error(e)),
            };
            if n == 0 {
                break;
            }
            if total + n as u64 > limits.max_bytes {
                return Err(limit(
                    field,
                    LimitKind::TooLarge,
                    format!(
                        "the content is longer than the {} bytes an import may bring",
                        limits.max_bytes
                    ),
                ));
            }
            if head.len() < HEAD_BYTES {
                head.extend_from_slice(&buf[..n.min(HEAD_BYTES - head.len())]);
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io(tmp, "write"))?;
            total += n as u64;
            ticket.progress.received.store(total, Ordering::Relaxed);
            if total - space_checked_at >= SPACE_CHECK_BYTES {
                space_checked_at = total;
                let free = self.free_bytes()?;
                if free < limits.min_free_bytes {
                    return Err(limit(
                        field,
                        LimitKind::NoSpace,
                        format!(
                            "the store's file system has {free} bytes free, less than the {} kept free",
                            limits.min_free_bytes
                        ),
                    ));
                }
            }
        }
        Ok((head, total, hex(&hasher.finalize())))
    }

    /// Moves the checked file `tmp` into a new image directory with its record, durably: the
    /// record is written to a temporary file, synced, renamed into place last (an image
    /// directory without it is an interrupted import), and the directories are synced so that
    /// a crash leaves either no image or the whole of it.
    fn place(&self, record: &ImageRecord, tmp: &Path) -> Result<(), StoreError> {
        let dir = self.image_dir(&record.name);
        // A directory without a record (the caller saw it missing) that holds only what an
        // import places is what an interrupted import or delete left: start afresh. One with
        // anything else is someone else's and stays.
        if dir.symlink_metadata().is_ok() {
            if !holds_only_import_files(&dir) {
                return Err(StoreError::Unreadable {
                    name: record.name.clone(),
                    reason: format!(
                        "{} holds files that are not an image's; they are left as they are",
                        dir.display()
                    ),
                });
            }
            std::fs::remove_dir_all(&dir).map_err(io(&dir, "remove unrecorded leftovers"))?;
        }
        std::fs::create_dir(&dir).map_err(io(&dir, "create"))?;
        let placed = (|| {
            // QEMU reads the image as a backing file: the directory must be traversable.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
                .map_err(io(&dir, "set mode 0711"))?;
            let json = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Io {
                path: dir.join("record.json"),
                action: "encode",
                source: std::io::Error::other(e),
            })?;
            let record_tmp = dir.join("record.json.tmp");
            let mut f = File::create(&record_tmp).map_err(io(&record_tmp, "create"))?;
            f.write_all(&json).map_err(io(&record_tmp, "write"))?;
            f.sync_all().map_err(io(&record_tmp, "sync"))?;
            std::fs::rename(tmp, self.file(&record.name))
                .map_err(io(tmp, "move into the store"))?;
            std::fs::rename(&record_tmp, dir.join("record.json"))
                .map_err(io(&dir, "commit record"))?;
            sync_dir(&dir)?;
            sync_dir(&self.dir)
        })();
        if placed.is_err() {
            // Only this call's new directory: nothing else has used it yet.
            let _ = std::fs::remove_dir_all(&dir);
        }
        placed
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

    /// Keeps `name` from being deleted until the hold is dropped: a create takes it from its
    /// checks until its domain is defined or undone (after that, the domain itself makes the
    /// image used). `holder` (the guest's UUID) is named to a Delete refused meanwhile.
    pub fn hold(&self, name: &str, holder: &str) -> Result<ImageHold, StoreError> {
        self.holds.hold(name, holder)
    }

    /// Starts deleting `name`: refused while it is imported, held by a create in flight or
    /// already being deleted, or when it does not exist. Until the returned deletion is
    /// dropped no hold is given on it.
    pub fn begin_delete(&self, name: &str) -> Result<Deletion, StoreError> {
        if let Some(p) = lock(&self.importing).get(name) {
            return Err(StoreError::Importing {
                name: name.to_string(),
                source_desc: p.source.clone(),
            });
        }
        self.get(name)?;
        self.holds.begin_delete(name, self.image_dir(name))
    }
}

impl ImageStore {
    /// Removes what imports cut short by a crash left: partial files and image directories
    /// whose record is missing. A record that exists but cannot be read is not missing: that
    /// image stays (it may be the base of running guests). Call it at start-up, before any
    /// import.
    pub fn sweep(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            let partial = e.file_name().to_string_lossy().starts_with(".import-");
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            let unrecorded = is_dir
                && matches!(
                    path.join("record.json").symlink_metadata(),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound
                )
                && holds_only_import_files(&path);
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

/// Whether `dir` holds nothing but what an import places there before its record (the image
/// and the record being written): a directory with anything else in it is not an interrupted
/// import but someone's (an operator's backup, say), and stays.
fn holds_only_import_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.into_iter().all(|e| {
            e.is_ok_and(|e| matches!(e.file_name().to_str(), Some("image" | "record.json.tmp")))
        })
    })
}

/// Below this much written between two looks at the free space, an import cannot eat much of
/// what `import_min_free_bytes` keeps.
const SPACE_CHECK_BYTES: u64 = 16 << 20;

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "sync directory"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
