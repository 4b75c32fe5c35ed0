//! Volumes as libvirt disks: the `<disk>` element that hot-plugs a volume (virtio-blk, from
//! typed structs serialised by quick-xml, so every path and name is escaped), and the disks a
//! domain XML holds, read back with quick-xml, by which a volume's users are found.

use std::path::PathBuf;

use serde::Serialize;

/// The NBD port when a source names none (IANA's).
pub const NBD_PORT: u16 = 10809;
/// virtio-blk passes at most 20 bytes of serial to the guest.
pub const MAX_SERIAL: usize = 20;

/// Where a disk's data is, as libvirt is given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    File(PathBuf),
    Block(PathBuf),
    Nbd {
        host: String,
        port: u16,
        export: String,
    },
}

impl DiskSource {
    /// One string per source (a path, or `nbd://host:port/export`), equal for equal sources:
    /// how a domain's disks are matched to volumes.
    pub fn key(&self) -> String {
        match self {
            DiskSource::File(p) | DiskSource::Block(p) => p.display().to_string(),
            DiskSource::Nbd { host, port, export } => nbd_key(host, *port, export),
        }
    }
}

fn nbd_key(host: &str, port: u16, export: &str) -> String {
    format!("nbd://{host}:{port}/{export}")
}

/// A volume's disk for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    pub source: DiskSource,
    /// `qcow2` or `raw`.
    pub format: String,
    /// `vdX`.
    pub target: String,
    /// The volume's name, cut to [`MAX_SERIAL`] bytes.
    pub serial: String,
    pub shareable: bool,
}

/// A `<disk>` element: a volume's, and every disk of a domain the agent defines.
#[derive(Serialize)]
#[serde(rename = "disk")]
pub(crate) struct Disk {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@device")]
    device: &'static str,
    driver: Driver,
    source: Source,
    target: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shareable: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    readonly: Option<()>,
}

#[derive(Serialize)]
struct Driver {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@type")]
    kind: String,
    /// `none` for an NBD export: no host cache between the guest and a disk other hosts
    /// reach, which is also what libvirt asks of a disk a migration does not copy.
    #[serde(rename = "@cache", skip_serializing_if = "Option::is_none")]
    cache: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Source {
    #[serde(rename = "@file", skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(rename = "@dev", skip_serializing_if = "Option::is_none")]
    dev: Option<String>,
    #[serde(rename = "@protocol", skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    #[serde(rename = "@name", skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<Host>,
}

#[derive(Serialize)]
struct Host {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "@port")]
    port: u16,
}

#[derive(Serialize)]
struct Target {
    #[serde(rename = "@dev")]
    dev: String,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

impl Disk {
    /// A read-write disk of `source`, in `format` (`qcow2`, `raw`), as `target` on `bus`.
    pub(crate) fn new(
        source: &DiskSource,
        format: &str,
        target: String,
        bus: &'static str,
    ) -> Disk {
        let cache = matches!(source, DiskSource::Nbd { .. }).then_some("none");
        let (kind, source) = source_element(source);
        Disk {
            kind,
            device: "disk",
            driver: Driver {
                name: "qemu",
                kind: format.to_string(),
                cache,
            },
            source,
            target: Target { dev: target, bus },
            serial: None,
            shareable: None,
            readonly: None,
        }
    }

    /// The guest may read it only.
    pub(crate) fn readonly(mut self, readonly: bool) -> Disk {
        self.readonly = readonly.then_some(());
        self
    }
}

/// The `<disk>` element of `disk`.
pub fn disk_xml(disk: &VolumeDisk) -> Result<String, String> {
    let xml = Disk {
        serial: (!disk.serial.is_empty()).then(|| disk.serial.clone()),
        shareable: disk.shareable.then_some(()),
        ..Disk::new(&disk.source, &disk.format, disk.target.clone(), "virtio")
    };
    quick_xml::se::to_string(&xml).map_err(|e| e.to_string())
}

/// The disk's `type` attribute and `<source>` element for `source`.
fn source_element(source: &DiskSource) -> (&'static str, Source) {
    match source {
        DiskSource::File(p) => (
            "file",
            Source {
                file: Some(p.display().to_string()),
                ..Source::default()
            },
        ),
        DiskSource::Block(p) => (
            "block",
            Source {
                dev: Some(p.display().to_string()),
                ..Source::default()
            },
        ),
        DiskSource::Nbd { host, port, export } => (
            "network",
            Source {
                protocol: Some("nbd"),
                name: Some(export.clone()),
                host: Some(Host {
                    name: host.clone(),
                    port: *port,
                }),
                ..Source::default()
            },
        ),
    }
}

/// `name` cut to [`MAX_SERIAL`] bytes (names are ASCII).
pub fn serial(name: &str) -> String {
    name.chars().take(MAX_SERIAL).collect()
}

/// A disk found in a domain XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDisk {
    /// `vda`, `sdb`, ...
    pub target: String,
    /// [`DiskSource::key`] of its source; `None` for a disk without one (an empty CD-ROM).
    pub key: Option<String>,
}

/// The disks of a domain XML (live or inactive), in order.
pub fn disks(xml: &str) -> Result<Vec<FoundDisk>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let mut current: Option<Partial> = None;
    // Inside a disk's `<backingStore>`: its sources are the disk's backing files, not the
    // disk's own source.
    let mut backing = 0usize;
    loop {
        let (e, empty) = match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(e) => {
                match e.local_name().as_ref() {
                    "disk" => out.extend(current.take().map(Partial::finish)),
                    "backingStore" => backing = backing.saturating_sub(1),
                    _ => {}
                }
                continue;
            }
            Event::Eof => return Ok(out),
            _ => continue,
        };
        let attr = |name: &str| -> Option<String> {
            e.try_get_attribute(name).ok().flatten().and_then(|a| {
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .ok()
                    .map(|v| v.into_owned())
            })
        };
        let name = e.local_name();
        if name.as_ref() == "disk" {
            if empty {
                out.push(Partial::default().finish());
            } else {
                current = Some(Partial::default());
            }
            continue;
        }
        if name.as_ref() == "backingStore" && !empty {
            backing += 1;
        }
        let Some(p) = current.as_mut().filter(|_| backing == 0) else {
            continue;
        };
        match name.as_ref() {
            "source" => {
                p.path = attr("file").or_else(|| attr("dev"));
                p.protocol = attr("protocol");
                p.export = attr("name");
            }
            "host" if p.host.is_none() => {
                p.host = attr("name");
                p.port = attr("port").and_then(|v| v.parse().ok());
            }
            "target" => p.target = attr("dev").unwrap_or_default(),
            _ => {}
        }
    }
}

#[derive(Default)]
struct Partial {
    target: String,
    path: Option<String>,
    protocol: Option<String>,
    export: Option<String>,
    host: Option<String>,
    port: Option<u16>,
}

impl Partial {
    fn finish(self) -> FoundDisk {
        let key = match (self.protocol.as_deref(), self.path, self.export, self.host) {
            (Some("nbd"), _, Some(export), Some(host)) => {
                Some(nbd_key(&host, self.port.unwrap_or(NBD_PORT), &export))
            }
            (None, Some(path), _, _) => Some(path),
            _ => None,
        };
        FoundDisk {
            target: self.target,
            key,
        }
    }
}

/// The first `vdX` target free in every one of `taken` (the live and the persistent disks).
pub fn free_target(taken: &[&[FoundDisk]]) -> String {
    (0..)
        .map(super::xml::disk_letter)
        .map(|l| format!("vd{l}"))
        .find(|t| !taken.iter().any(|ds| ds.iter().any(|d| &d.target == t)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
