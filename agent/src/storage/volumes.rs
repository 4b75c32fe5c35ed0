//! The volume store under `[storage] root`/volumes: per volume a JSON record `<name>.json` and,
//! for a store volume, its data file `<name>.qcow2` or `<name>.raw`. A volume is either
//! - a store volume: a blank disk of `size_gb`, or a standalone copy of a store image grown to
//!   at least `size_gb`, in qcow2 (default) or raw; or
//! - an external one: a host block device (an absolute path) or an NBD export
//!   (`nbd://HOST[:PORT]/EXPORT`), which the agent only remembers: Delete forgets it and never
//!   touches its data.
//!
//! Which guests use a volume is not recorded here: libvirt's domain XML is the one truth
//! (`guest::volume`), so a crash cannot leave a record and a domain disagreeing. Records are
//! written to a temporary file, synced and renamed into place; a record that exists but cannot
//! be read is reported, never overwritten or removed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::disks::{self, DiskError};
use super::images::check_name;
use crate::domain::volume_disk::{DiskSource, NBD_PORT};

/// The largest store volume, in GB (GiB): 16 TiB, well below qcow2's and ext4's limits.
pub const MAX_SIZE_GB: u64 = 16384;
const GIB: u64 = 1 << 30;

/// Where a volume's data is, as libvirt is given it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VolumeSource {
    /// A file in the store (`<name>.<format>`), made and deleted by the agent.
    Store,
    /// A host block device, by absolute path.
    Block { path: PathBuf },
    /// An export of an NBD server.
    Nbd {
        host: String,
        port: u16,
        export: String,
    },
}

impl VolumeSource {
    /// `store`, `block` or `nbd`.
    pub fn kind(&self) -> &'static str {
        match self {
            VolumeSource::Store => "store",
            VolumeSource::Block { .. } => "block",
            VolumeSource::Nbd { .. } => "nbd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// `qcow2` or `raw`: how QEMU reads the data (external volumes are raw).
    pub format: String,
    /// The virtual size: what the guest sees.
    pub size_bytes: u64,
    /// May be attached to several guests at once (raw only).
    pub shareable: bool,
    pub source: VolumeSource,
    /// The store image it was copied from, if any.
    #[serde(default)]
    pub image: String,
    pub created_unix: u64,
    /// The guest this volume was made for, as its boot disk: a qcow2 overlay on `image`,
    /// deleted with the guest. Empty for every volume made by `Create`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub made_for: String,
    /// The guest whose migration to this node brought it, until that guest has arrived:
    /// an arrival an agent restart cut short leaves it to the orphan sweep.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arriving_for: String,
}

/// A Create request, as checked by [`VolumeStore::create`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    /// 0 with `source` or `image` (then the image's size); otherwise 1..=[`MAX_SIZE_GB`].
    pub size_gb: u64,
    /// `qcow2` (also when empty) or `raw`.
    pub format: String,
    pub shareable: bool,
    /// A store image to copy: its file and format, with its name.
    pub image: Option<(String, PathBuf, String)>,
    /// An external source: an absolute block device path or `nbd://HOST[:PORT]/EXPORT`.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("volume {0:?} does not exist")]
    NotFound(String),
    #[error("volume {name:?} already exists ({what})")]
    Exists { name: String, what: String },
    /// Delete of an attached volume, or an attach of one in use: names the guests.
    #[error("{0}")]
    InUse(String),
    /// The record exists but cannot be read: the volume is left as it is.
    #[error("volume {name:?}: its record cannot be read ({reason}); it is left as it is")]
    Unreadable { name: String, reason: String },
    #[error("{0}")]
    Disk(#[from] DiskError),
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

fn invalid(field: &'static str, rule: impl Into<String>) -> VolumeError {
    VolumeError::Invalid {
        field,
        rule: rule.into(),
    }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        path,
        action,
        source,
    }
}

/// Parses `nbd://HOST[:PORT]/EXPORT` (HOST a name or an IPv4 address, or `[IPv6]`; EXPORT
/// non-empty, printable, no spaces).
pub fn parse_nbd(uri: &str) -> Result<VolumeSource, VolumeError> {
    let bad = |why: &str| invalid("source", format!("{uri:?}: {why}"));
    let rest = uri
        .strip_prefix("nbd://")
        .ok_or_else(|| bad("an NBD source is nbd://HOST[:PORT]/EXPORT"))?;
    let (authority, export) = rest
        .split_once('/')
        .ok_or_else(|| bad("no /EXPORT after the host"))?;
    if export.is_empty() || export.len() > 255 || !export.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "the export name must be 1-255 printable characters without spaces",
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 host ends with ]"))?;
        (h, tail.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
    if !host_ok {
        return Err(bad("the host must be a DNS name or an IP address"));
    }
    let port = match port {
        None => NBD_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be 1-65535"))?,
    };
    Ok(VolumeSource::Nbd {
        host: host.to_string(),
        port,
        export: export.to_string(),
    })
}

/// Checks the request fields that need no file system: name, size, format, shareable, and
/// which kind of volume it asks for.
fn check(spec: &VolumeSpec) -> Result<(), VolumeError> {
    check_name("name", &spec.name).map_err(|_| {
        invalid(
            "name",
            "must be 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit",
        )
    })?;
    if !matches!(spec.format.as_str(), "" | "qcow2" | "raw") {
        return Err(invalid(
            "format",
            format!("must be qcow2 or raw, got {:?}", spec.format),
        ));
    }
    let external = !spec.source.is_empty();
    if external && (spec.image.is_some() || spec.size_gb != 0) {
        return Err(invalid(
            "source",
            "an external volume takes its size from the device or export: give no size_gb or image with it",
        ));
    }
    if external && spec.format == "qcow2" {
        return Err(invalid("format", "external volumes are read as raw"));
    }
    if !external && spec.image.is_none() && !(1..=MAX_SIZE_GB).contains(&spec.size_gb) {
        return Err(invalid(
            "size_gb",
            format!(
                "must be 1-{MAX_SIZE_GB}, got {} (or give an image or a source)",
                spec.size_gb
            ),
        ));
    }
    if spec.size_gb > MAX_SIZE_GB {
        return Err(invalid(
            "size_gb",
            format!("must be at most {MAX_SIZE_GB}, got {}", spec.size_gb),
        ));
    }
    if spec.shareable && !external && spec.format != "raw" {
        return Err(invalid(
            "shareable",
            "a shareable volume must be raw (format raw): qcow2's metadata cannot be written by two guests at once",
        ));
    }
    Ok(())
}

/// The size of the host block device `path`, opened without following a symbolic link and
/// exclusively (which the kernel refuses for a mounted device or one another driver holds),
/// then closed again.
fn block_device_size(path: &Path) -> Result<u64, VolumeError> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(invalid(
            "source",
            format!("{shown} is not an absolute path"),
        ));
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_EXCL | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::ELOOP) => format!("{shown} is a symbolic link (give the device)"),
                Some(libc::EBUSY) => format!("{shown} is in use on the host (mounted or held)"),
                _ => format!("cannot open {shown}: {e}"),
            };
            invalid("source", why)
        })?;
    let meta = f.metadata().map_err(io(path, "stat"))?;
    if !meta.file_type().is_block_device() {
        return Err(invalid("source", format!("{shown} is not a block device")));
    }
    f.seek(SeekFrom::End(0)).map_err(io(path, "size"))
}

/// How long `qemu-img info` may wait for an NBD server before the export counts as not
/// answering (an unreachable host would otherwise hold the call for TCP's minutes).
const PROBE_SECS: &str = "15";

/// Runs `qemu-img` with `args`, bounded by [`PROBE_SECS`] when `bounded`.
fn qemu_img(args: &[&str], bounded: bool) -> Result<Vec<u8>, DiskError> {
    let os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    if bounded {
        let mut all = vec![std::ffi::OsStr::new(PROBE_SECS), "qemu-img".as_ref()];
        all.extend(os);
        disks::output("timeout", &all)
    } else {
        disks::output("qemu-img", &os)
    }
}

/// The virtual size qemu-img reports for `target` (a file, or an `nbd://` URI).
fn virtual_size(target: &str) -> Result<u64, DiskError> {
    let out = qemu_img(&["info", "--output=json", target], true)?;
    let unreadable = |why: String| DiskError::Tool {
        tool: "qemu-img",
        message: format!("info {target}: {why}"),
    };
    let v: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| unreadable(e.to_string()))?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| unreadable("no virtual-size".into()))
}

/// Makes an empty disk of `bytes` in `format` at `to`; answers its size.
fn blank(to: &str, format: &str, bytes: u64) -> Result<u64, VolumeError> {
    qemu_img(
        &["create", "-q", "-f", format, to, &bytes.to_string()],
        false,
    )?;
    Ok(bytes)
}

fn path_str(path: &Path) -> Result<&str, DiskError> {
    path.to_str().ok_or_else(|| DiskError::Tool {
        tool: "qemu-img",
        message: format!("{} is not UTF-8", path.display()),
    })
}

pub struct VolumeStore {
    dir: PathBuf,
    /// Names with a Create in flight: a second Create of one is refused, not run twice.
    creating: Mutex<BTreeSet<String>>,
    /// Held across an attach's in-use check and its attach, and across a Delete's check and
    /// removal, so that two attaches of one volume cannot both win and a volume cannot be
    /// deleted while it is being attached.
    pub attach: tokio::sync::Mutex<()>,
}

/// Frees a name taken by a Create when the Create ends.
struct Creating<'a> {
    store: &'a VolumeStore,
    name: String,
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        hvagent_core::sync::lock(&self.store.creating).remove(&self.name);
    }
}

impl VolumeStore {
    pub fn new(storage_root: &Path) -> VolumeStore {
        VolumeStore {
            dir: storage_root.join("volumes"),
            creating: Mutex::default(),
            attach: tokio::sync::Mutex::new(()),
        }
    }

    /// The store's directory, under which every store volume's data file is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Holds `name` for a Create in flight until dropped; a second is refused.
    fn take_name(&self, name: &str) -> Result<Creating<'_>, VolumeError> {
        if !hvagent_core::sync::lock(&self.creating).insert(name.to_string()) {
            return Err(VolumeError::Exists {
                name: name.to_string(),
                what: "a Create of it is in flight".into(),
            });
        }
        Ok(Creating {
            store: self,
            name: name.to_string(),
        })
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The data file of a store volume.
    pub fn file(&self, name: &str, format: &str) -> PathBuf {
        self.dir.join(format!("{name}.{format}"))
    }

    /// What libvirt is given for `record`.
    pub fn disk_source(&self, record: &VolumeRecord) -> DiskSource {
        match &record.source {
            VolumeSource::Store => DiskSource::File(self.file(&record.name, &record.format)),
            VolumeSource::Block { path } => DiskSource::Block(path.clone()),
            VolumeSource::Nbd { host, port, export } => DiskSource::Nbd {
                host: host.clone(),
                port: *port,
                export: export.clone(),
            },
        }
    }

    pub fn get(&self, name: &str) -> Result<VolumeRecord, VolumeError> {
        check_name("volume", name).map_err(|_| {
            invalid(
                "volume",
                "must be 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit",
            )
        })?;
        let path = self.record_path(name);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_string()));
            }
            Err(e) => {
                return Err(VolumeError::Unreadable {
                    name: name.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        serde_json::from_slice(&text).map_err(|e| VolumeError::Unreadable {
            name: name.to_string(),
            reason: e.to_string(),
        })
    }

    /// Every volume by name, and the names whose records cannot be read (with why).
    pub fn list(&self) -> (Vec<VolumeRecord>, Vec<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (Vec::new(), Vec::new());
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        names.sort();
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for name in names {
            match self.get(&name) {
                Ok(r) => records.push(r),
                Err(e) => unreadable.push(e.to_string()),
            }
        }
        (records, unreadable)
    }

    /// Makes the volume of `spec` (blocks: copies an image or probes a device). The same
    /// request again returns the volume; another one under a taken name is refused. A
    /// failure leaves nothing behind.
    pub fn create(&self, spec: &VolumeSpec, now_unix: u64) -> Result<VolumeRecord, VolumeError> {
        check(spec)?;
        let name = spec.name.clone();
        let _taken = self.take_name(&name)?;
        let external = if spec.source.is_empty() {
            None
        } else if spec.source.starts_with("nbd://") {
            Some(parse_nbd(&spec.source)?)
        } else {
            Some(VolumeSource::Block {
                path: PathBuf::from(&spec.source),
            })
        };
        match self.get(&name) {
            Ok(existing) => {
                return if self.same(&existing, spec, external.as_ref()) {
                    Ok(existing)
                } else {
                    Err(VolumeError::Exists {
                        name,
                        what: format!(
                            "{} {} of {} bytes",
                            existing.source.kind(),
                            existing.format,
                            existing.size_bytes
                        ),
                    })
                };
            }
            Err(VolumeError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        super::traversable_dir(&self.dir).map_err(io(&self.dir, "create volume store"))?;
        let record = match external {
            Some(source) => self.external(spec, source, now_unix)?,
            None => self.make_file(spec, now_unix)?,
        };
        if let Err(e) = self.write_record(&record) {
            if record.source == VolumeSource::Store {
                let _ = std::fs::remove_file(self.file(&record.name, &record.format));
            }
            return Err(e);
        }
        Ok(record)
    }

    /// Whether `existing` is what `spec` asks for (a repeated Create).
    fn same(
        &self,
        existing: &VolumeRecord,
        spec: &VolumeSpec,
        external: Option<&VolumeSource>,
    ) -> bool {
        let format = if spec.format.is_empty() && external.is_none() {
            "qcow2"
        } else if spec.format.is_empty() {
            "raw"
        } else {
            spec.format.as_str()
        };
        let image = spec.image.as_ref().map_or("", |(n, _, _)| n.as_str());
        existing.format == format
            && existing.shareable == spec.shareable
            && existing.image == image
            && match external {
                Some(source) => &existing.source == source,
                None if image.is_empty() => {
                    existing.source == VolumeSource::Store
                        && existing.size_bytes == spec.size_gb * GIB
                }
                // A copy of an image is at least the image's size.
                None => {
                    existing.source == VolumeSource::Store
                        && existing.size_bytes >= spec.size_gb * GIB
                }
            }
    }

    /// Checks an external source (a block device opens, an export answers) and measures it.
    fn external(
        &self,
        spec: &VolumeSpec,
        source: VolumeSource,
        now_unix: u64,
    ) -> Result<VolumeRecord, VolumeError> {
        let key = self
            .disk_source(&VolumeRecord {
                name: spec.name.clone(),
                format: "raw".into(),
                size_bytes: 0,
                shareable: false,
                source: source.clone(),
                image: String::new(),
                created_unix: 0,
                made_for: String::new(),
                arriving_for: String::new(),
            })
            .key();
        self.refuse_taken_source(&spec.name, &key)?;
        let size_bytes = match &source {
            VolumeSource::Block { path } => block_device_size(path)?,
            VolumeSource::Nbd { .. } => virtual_size(&key)
                .map_err(|e| invalid("source", format!("the NBD export does not answer: {e}")))?,
            VolumeSource::Store => 0,
        };
        Ok(VolumeRecord {
            name: spec.name.clone(),
            format: "raw".into(),
            size_bytes,
            shareable: spec.shareable,
            source,
            image: String::new(),
            created_unix: now_unix,
            made_for: String::new(),
            arriving_for: String::new(),
        })
    }

    /// Refuses volume `name` an external source (its [`DiskSource::key`]) that another volume
    /// has.
    fn refuse_taken_source(&self, name: &str, key: &str) -> Result<(), VolumeError> {
        match self
            .list()
            .0
            .into_iter()
            .find(|r| self.disk_source(r).key() == key)
        {
            Some(other) => Err(VolumeError::Exists {
                name: name.to_string(),
                what: format!("volume {:?} already has the source {key}", other.name),
            }),
            None => Ok(()),
        }
    }

    /// Takes in `record`, a volume arriving with a migrating guest, as its source had it: a
    /// store volume gets an empty data file of its format and virtual size (the migration
    /// copies the data into it), an NBD export must answer here with that size. A taken
    /// name, or an export another volume has, is refused; a block device (another host's)
    /// cannot come. A failure leaves nothing behind.
    pub fn receive(&self, record: &VolumeRecord) -> Result<(), VolumeError> {
        let name = record.name.clone();
        let _taken = self.free_name(&name)?;
        if !matches!(record.format.as_str(), "qcow2" | "raw") {
            return Err(invalid("format", "must be qcow2 or raw"));
        }
        super::traversable_dir(&self.dir).map_err(io(&self.dir, "create volume store"))?;
        match &record.source {
            VolumeSource::Store => {
                self.place(&name, &record.format, |to| {
                    blank(to, &record.format, record.size_bytes)
                })?;
            }
            VolumeSource::Nbd { .. } => {
                let key = self.disk_source(record).key();
                self.refuse_taken_source(&name, &key)?;
                let size = virtual_size(&key).map_err(|e| {
                    invalid(
                        "source",
                        format!("the NBD export {key} does not answer here: {e}"),
                    )
                })?;
                if size != record.size_bytes {
                    return Err(invalid(
                        "source",
                        format!(
                            "the NBD export {key} has {size} bytes here, {} on the source",
                            record.size_bytes
                        ),
                    ));
                }
            }
            VolumeSource::Block { path } => {
                return Err(invalid(
                    "source",
                    format!(
                        "{} is a block device of another host: it cannot come",
                        path.display()
                    ),
                ));
            }
        }
        if let Err(e) = self.write_record(record) {
            if record.source == VolumeSource::Store {
                let _ = std::fs::remove_file(self.file(&name, &record.format));
            }
            return Err(e);
        }
        Ok(())
    }

    /// How long ago `name`'s record was last written, where the file system says.
    pub fn record_age(&self, name: &str) -> Option<std::time::Duration> {
        std::fs::metadata(self.record_path(name))
            .and_then(|m| m.modified())
            .ok()?
            .elapsed()
            .ok()
    }

    /// Refuses `record` to a user while it arrives with a migrating guest: the migration
    /// copies into it, and an abort removes it.
    pub fn refuse_arriving(record: &VolumeRecord) -> Result<(), VolumeError> {
        if record.arriving_for.is_empty() {
            return Ok(());
        }
        Err(VolumeError::InUse(format!(
            "volume {:?} is arriving with guest {}, which migrates here",
            record.name, record.arriving_for
        )))
    }

    /// Marks `name` as this node's for good: the guest it arrived with has arrived.
    pub fn settle(&self, name: &str) -> Result<(), VolumeError> {
        let mut record = self.get(name)?;
        if record.arriving_for.is_empty() {
            return Ok(());
        }
        record.arriving_for.clear();
        self.write_record(&record)
    }

    /// Makes store volume `name`'s data file in `format`: `fill` writes it at the staged path
    /// it is given (a dot name, never listed) and answers its virtual size; then it is synced
    /// and renamed into place (a data file left by an interrupted call, without a record, is
    /// replaced). A failure leaves nothing behind.
    fn place(
        &self,
        name: &str,
        format: &str,
        fill: impl FnOnce(&str) -> Result<u64, VolumeError>,
    ) -> Result<u64, VolumeError> {
        let path = self.file(name, format);
        let staged = self.dir.join(format!(".{name}.{format}.part"));
        let _ = std::fs::remove_file(&staged);
        let made = (|| {
            let size = fill(path_str(&staged)?)?;
            File::open(&staged)
                .and_then(|f| f.sync_all())
                .map_err(io(&staged, "sync"))?;
            std::fs::rename(&staged, &path).map_err(io(&path, "move into place"))?;
            Ok(size)
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        made
    }

    /// Refuses `name` to a new volume while a Create of it is in flight or a volume has it;
    /// holds it until dropped.
    fn free_name(&self, name: &str) -> Result<Creating<'_>, VolumeError> {
        let taken = self.take_name(name)?;
        match self.get(name) {
            Ok(existing) => Err(VolumeError::Exists {
                name: name.to_string(),
                what: format!("{} {}", existing.source.kind(), existing.format),
            }),
            Err(VolumeError::NotFound(_)) => Ok(taken),
            Err(e) => Err(e),
        }
    }

    /// Makes a store volume's data file: staged under a dot name (never listed), synced,
    /// renamed into place.
    fn make_file(&self, spec: &VolumeSpec, now_unix: u64) -> Result<VolumeRecord, VolumeError> {
        let format = if spec.format.is_empty() {
            "qcow2"
        } else {
            spec.format.as_str()
        };
        let wanted = spec.size_gb * GIB;
        let size_bytes = self.place(&spec.name, format, |to| match &spec.image {
            Some((_, file, image_format)) => {
                let from = path_str(file)?;
                let convert = ["convert", "-q", "-f", image_format, "-O", format, from, to];
                qemu_img(&convert, false)?;
                let size = virtual_size(to)?;
                if size < wanted {
                    let grow = wanted.to_string();
                    qemu_img(&["resize", "-q", "-f", format, to, &grow], false)?;
                }
                Ok(size.max(wanted))
            }
            None => blank(to, format, wanted),
        })?;
        Ok(VolumeRecord {
            name: spec.name.clone(),
            format: format.to_string(),
            size_bytes,
            shareable: spec.shareable,
            source: VolumeSource::Store,
            image: spec
                .image
                .as_ref()
                .map_or_else(String::new, |(n, _, _)| n.clone()),
            created_unix: now_unix,
            made_for: String::new(),
            arriving_for: String::new(),
        })
    }

    /// Makes the boot volume of guest `made_for`: a qcow2 overlay of `size_bytes` on the store
    /// image `image` (its name, file and format), as the guest's local root disk would be (no
    /// copy: the guest holds its image for as long as it exists). A taken name is refused,
    /// whatever the volume there; a failure leaves nothing behind.
    pub fn create_overlay(
        &self,
        name: &str,
        image: (&str, &Path, &str),
        size_bytes: u64,
        made_for: &str,
        now_unix: u64,
    ) -> Result<VolumeRecord, VolumeError> {
        let _taken = self.free_name(name)?;
        super::traversable_dir(&self.dir).map_err(io(&self.dir, "create volume store"))?;
        let (image_name, base, base_format) = image;
        self.place(name, "qcow2", |to| {
            disks::overlay(Path::new(to), base, base_format, size_bytes)?;
            Ok(size_bytes)
        })?;
        let path = self.file(name, "qcow2");
        let record = VolumeRecord {
            name: name.to_string(),
            format: "qcow2".into(),
            size_bytes,
            shareable: false,
            source: VolumeSource::Store,
            image: image_name.to_string(),
            created_unix: now_unix,
            made_for: made_for.to_string(),
            arriving_for: String::new(),
        };
        if let Err(e) = self.write_record(&record) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(record)
    }

    /// Writes `record` durably: temporary file, fsync, rename, fsync of the directory.
    fn write_record(&self, record: &VolumeRecord) -> Result<(), VolumeError> {
        let path = self.record_path(&record.name);
        let tmp = self.dir.join(format!(".{}.json.tmp", record.name));
        let json = serde_json::to_vec_pretty(record).map_err(|e| VolumeError::Io {
            path: path.clone(),
            action: "encode",
            source: std::io::Error::other(e),
        })?;
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp, "create"))?;
            f.write_all(&json).map_err(io(&tmp, "write"))?;
            f.sync_all().map_err(io(&tmp, "sync"))?;
            std::fs::rename(&tmp, &path).map_err(io(&path, "commit record"))?;
            sync_dir(&self.dir)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Removes `name`: its record first (so a crash meanwhile leaves at worst an unlisted data
    /// file, which a later Create of the name replaces), then a store volume's data file.
    /// External volumes' data is never touched. The caller has checked that no guest uses it.
    pub fn delete(&self, name: &str) -> Result<VolumeRecord, VolumeError> {
        let record = self.get(name)?;
        let path = self.record_path(name);
        std::fs::remove_file(&path).map_err(io(&path, "remove"))?;
        sync_dir(&self.dir)?;
        if record.source == VolumeSource::Store {
            let file = self.file(name, &record.format);
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(volume = %name, path = %file.display(), error = %e, "volume forgotten but its data file stays");
                }
                _ => {}
            }
        }
        Ok(record)
    }
}

fn sync_dir(dir: &Path) -> Result<(), VolumeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "sync directory"))
}

#[cfg(test)]
mod tests;
