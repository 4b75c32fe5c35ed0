//! Per-guest files under `[storage] root`/vms/<uuid>/: the root disk as a qcow2 overlay on its
//! image, blank extra disks, the NoCloud seed (a vfat volume labelled `cidata`) and the serial
//! console log. Made with `qemu-img` and mtools, no mounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{tool}: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError::Io {
        path,
        action,
        source,
    }
}

fn run(tool: &'static str, args: &[&std::ffi::OsStr]) -> Result<(), DiskError> {
    output(tool, args).map(drop)
}

/// Runs `tool`; its standard output when it succeeds, its standard error as the error if not.
pub(super) fn output(tool: &'static str, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, DiskError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| DiskError::Tool {
            tool,
            message: format!("cannot run: {e}"),
        })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(DiskError::Tool {
            tool,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Where one guest's files live.
#[derive(Debug, Clone)]
pub struct GuestFiles {
    pub dir: PathBuf,
}

impl GuestFiles {
    pub fn new(storage_root: &Path, uuid: &str) -> GuestFiles {
        GuestFiles {
            dir: storage_root.join("vms").join(uuid),
        }
    }

    pub fn root_disk(&self) -> PathBuf {
        self.dir.join("root.qcow2")
    }

    pub fn extra_disk(&self, index: u32) -> PathBuf {
        self.dir.join(format!("disk{index}.qcow2"))
    }

    pub fn seed(&self) -> PathBuf {
        self.dir.join("seed.img")
    }

    /// A UEFI guest's variable store (Secure Boot keys, boot entries, what the guest wrote):
    /// libvirt copies OVMF's template here at the first start, keeps it across stop and start,
    /// and removes it when the guest is undefined with its NVRAM.
    pub fn nvram(&self) -> PathBuf {
        self.dir.join("nvram.fd")
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Creates the directory. QEMU runs as another user: the directories on the way must be
    /// traversable (mode 0711: no listing), and libvirt hands the files themselves to QEMU.
    pub fn create(&self) -> Result<(), DiskError> {
        for dir in [self.dir.parent().unwrap_or(&self.dir), self.dir.as_path()] {
            super::traversable_dir(dir).map_err(io(dir, "create with mode 0711"))?;
        }
        Ok(())
    }

    /// Removes everything of the guest; absent files are fine (idempotent).
    pub fn remove(&self) -> Result<(), DiskError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&self.dir, "remove")(e)),
            _ => Ok(()),
        }
    }
}

/// A qcow2 overlay on `base` (of `base_format`) with `size_bytes` of virtual size.
pub fn overlay(
    path: &Path,
    base: &Path,
    base_format: &str,
    size_bytes: u64,
) -> Result<(), DiskError> {
    qcow2(path, Some((base, base_format)), size_bytes)
}

/// An empty qcow2 disk of `size_bytes`.
pub fn blank(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    qcow2(path, None, size_bytes)
}

/// Grows the qcow2 disk `path` to `size_bytes` of virtual size (QEMU must not hold it open).
pub fn grow(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let size = size_bytes.to_string();
    run(
        "qemu-img",
        &[
            "resize".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    )
}

/// A copy of `from` at `to` that a crash cannot leave half made: copied (sharing blocks where
/// the filesystem can, holes kept) to a temporary name beside `to`, flushed, then renamed.
pub fn copy_whole(from: &Path, to: &Path) -> Result<(), DiskError> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    run(
        "cp",
        &[
            "--reflink=auto".as_ref(),
            "--sparse=always".as_ref(),
            from.as_os_str(),
            tmp.as_os_str(),
        ],
    )?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp, "flush"))?;
    std::fs::rename(&tmp, to).map_err(io(to, "rename into place"))
}

fn qcow2(path: &Path, backing: Option<(&Path, &str)>, size_bytes: u64) -> Result<(), DiskError> {
    let size = size_bytes.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
    ];
    if let Some((base, format)) = backing {
        args.extend([
            "-b".as_ref(),
            base.as_os_str(),
            "-F".as_ref(),
            format.as_ref(),
        ]);
    }
    args.extend([path.as_os_str(), size.as_ref()]);
    run("qemu-img", &args)
}

/// The bytes a standalone qcow2 copy of the qcow2 disk `path` (its backing chain flattened)
/// takes, as `qemu-img measure` reckons it. `shared`: read it while QEMU holds it open for
/// writing (the caller keeps the guest paused meanwhile); otherwise the read takes QEMU's
/// lock and fails while a QEMU writes the disk.
pub fn measure_flat(path: &Path, format: &str, shared: bool) -> Result<u64, DiskError> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "measure".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        format.as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
    ];
    if shared {
        args.push("-U".as_ref());
    }
    args.push(path.as_os_str());
    let out = output("qemu-img", &args)?;
    let unreadable = |why: String| DiskError::Tool {
        tool: "qemu-img",
        message: format!("measure: {why}"),
    };
    let v: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| unreadable(e.to_string()))?;
    v["required"]
        .as_u64()
        .ok_or_else(|| unreadable(format!("no \"required\" in {v}")))
}

/// Writes the qcow2 disk `path` with its backing chain flattened into the new qcow2 file `to`,
/// which has no backing file. `shared` as in [`measure_flat`]: without it, a QEMU that
/// starts on the disk meanwhile is refused its lock (and QEMU writing it makes this fail).
pub fn flatten(path: &Path, format: &str, to: &Path, shared: bool) -> Result<(), DiskError> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "convert".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        format.as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
    ];
    if shared {
        args.push("-U".as_ref());
    }
    args.extend([path.as_os_str(), to.as_os_str()]);
    run("qemu-img", &args)
}

/// NoCloud `meta-data`.
#[derive(Debug, Clone, Serialize)]
pub struct MetaData {
    #[serde(rename = "instance-id")]
    pub instance_id: String,
    #[serde(rename = "local-hostname")]
    pub local_hostname: String,
    #[serde(rename = "public-keys", skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
}

impl MetaData {
    /// YAML that cloud-init reads; JSON is YAML, and every value is quoted by the encoder.
    fn to_yaml(&self) -> String {
        // One `key: value` line per scalar (the test guest reads those with sed), keys as a
        // JSON list, which is valid YAML flow syntax.
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        let mut out = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            quote(&self.instance_id),
            quote(&self.local_hostname)
        );
        if !self.public_keys.is_empty() {
            out.push_str(&format!(
                "public-keys: {}\n",
                serde_json::to_string(&self.public_keys).unwrap_or_else(|_| "[]".into())
            ));
        }
        out
    }
}

/// The NoCloud seed: a 1 MiB vfat volume labelled `cidata` with `meta-data`, `user-data`
/// and `network-config`. Mode 0600: user-data may hold secrets.
/// The NoCloud network-config (v2) for the guest's NICs: each NIC with an address is
/// matched by its MAC and given the address; NICs without one are left to the guest.
pub fn network_config(nics: &[crate::domain::xml::NicIntent]) -> String {
    let mut out = String::from("version: 2\n");
    let with_address: Vec<_> = nics
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.address.is_empty())
        .collect();
    if with_address.is_empty() {
        out.push_str("ethernets: {}\n");
        return out;
    }
    out.push_str("ethernets:\n");
    for (i, n) in with_address {
        out.push_str(&format!(
            "  nic{i}:\n    match:\n      macaddress: \"{}\"\n    addresses:\n      - {}\n",
            n.mac, n.address
        ));
    }
    out
}

pub fn seed(
    path: &Path,
    meta: &MetaData,
    user_data: &[u8],
    network_config: &str,
) -> Result<(), DiskError> {
    use std::os::unix::fs::OpenOptionsExt;
    let staging = path.with_extension("d");
    std::fs::create_dir_all(&staging).map_err(io(&staging, "create"))?;
    let result = (|| {
        let files = [
            ("meta-data", meta.to_yaml().into_bytes()),
            ("user-data", user_data.to_vec()),
            ("network-config", network_config.as_bytes().to_vec()),
        ];
        for (name, content) in &files {
            // user-data may hold secrets: readable by root only, also while staged.
            let p = staging.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&p)
                .and_then(|mut f| std::io::Write::write_all(&mut f, content.as_ref()))
                .map_err(io(&p, "write"))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path, "create"))?;
        file.set_len(1 << 20).map_err(io(path, "size"))?;
        drop(file);
        run(
            "mformat",
            &[
                "-i".as_ref(),
                path.as_os_str(),
                "-v".as_ref(),
                "cidata".as_ref(),
                "::".as_ref(),
            ],
        )?;
        let mut args: Vec<&std::ffi::OsStr> = vec!["-i".as_ref(), path.as_os_str()];
        let paths: Vec<PathBuf> = files.iter().map(|(n, _)| staging.join(n)).collect();
        args.extend(paths.iter().map(|p| p.as_os_str()));
        args.push("::".as_ref());
        run("mcopy", &args)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn seed_holds_the_nocloud_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let meta = MetaData {
            instance_id: "i-1".into(),
            local_hostname: "web-1".into(),
            public_keys: vec!["ssh-ed25519 AAAA x@y".into()],
        };
        seed(&path, &meta, b"#cloud-config\n", "version: 2\n").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(
            tool("mtype", &["-i", p, "::meta-data"]),
            "instance-id: \"i-1\"\nlocal-hostname: \"web-1\"\npublic-keys: [\"ssh-ed25519 AAAA x@y\"]\n"
        );
        assert_eq!(tool("mtype", &["-i", p, "::user-data"]), "#cloud-config\n");
        assert!(tool("mlabel", &["-i", p, "-s", "::"]).contains("CIDATA"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.path().join("seed.d").exists(), "staging removed");
    }

    #[test]
    fn flatten_makes_a_standalone_copy_with_the_overlay_data() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        blank(&base, 64 << 20).unwrap();
        let b = base.to_str().unwrap();
        tool("qemu-io", &["-c", "write -P 0xaa 0 1M", b]);
        let top = dir.path().join("top.qcow2");
        overlay(&top, &base, "qcow2", 256 << 20).unwrap();
        let t = top.to_str().unwrap();
        tool("qemu-io", &["-c", "write -P 0xbb 1M 1M", t]);
        let need = measure_flat(&top, "qcow2", false).unwrap();
        assert!(need >= 2 << 20, "two written MiB, measured {need}");
        let flat = dir.path().join("flat.qcow2");
        flatten(&top, "qcow2", &flat, false).unwrap();
        let f = flat.to_str().unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&tool("qemu-img", &["info", "--output=json", f])).unwrap();
        assert_eq!(info["virtual-size"], 256u64 << 20);
        assert!(info.get("backing-filename").is_none(), "{info}");
        // Both layers' data, read from the copy alone.
        tool(
            "qemu-io",
            &["-c", "read -P 0xaa 0 1M", "-c", "read -P 0xbb 1M 1M", f],
        );
        let e = flatten(&dir.path().join("missing"), "qcow2", &flat, false).unwrap_err();
        assert!(e.to_string().starts_with("qemu-img: "), "{e}");
    }

    #[test]
    fn overlay_and_blank_disks() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        blank(&base, 64 << 20).unwrap();
        let top = dir.path().join("top.qcow2");
        overlay(&top, &base, "qcow2", 2 << 30).unwrap();
        let info = tool(
            "qemu-img",
            &["info", "--output=json", "-U", top.to_str().unwrap()],
        );
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["virtual-size"], 2u64 << 30);
        assert_eq!(v["backing-filename"], base.to_str().unwrap());
        let e = overlay(
            &dir.path().join("x.qcow2"),
            &dir.path().join("missing"),
            "qcow2",
            1 << 30,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("qemu-img: "), "{e}");
    }
}
