//! The desired networks on disk: one JSON file per network under `[storage] root`/networks.
//! A spec is written to a temporary file, flushed, renamed over the old one and the directory
//! flushed, so that a crash or power loss leaves the old spec or the new one, never a torn or
//! lost one. A file that cannot be read is reported and its network left alone: the agent
//! does not know what that network is, so it neither repairs nor removes its devices.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::spec::NetworkSpec;

#[derive(Clone)]
pub struct SpecStore {
    dir: PathBuf,
}

/// What the directory holds: the specs by name, and the networks whose file cannot be read,
/// with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub specs: BTreeMap<String, NetworkSpec>,
    pub unreadable: BTreeMap<String, String>,
}

impl SpecStore {
    pub fn new(dir: PathBuf) -> SpecStore {
        SpecStore { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Every stored spec; a missing directory holds none. A file counts as unreadable when
    /// it cannot be read or parsed, breaks a spec rule, or names another network than its
    /// file name.
    pub fn load(&self) -> std::io::Result<Stored> {
        let mut stored = Stored::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(stored),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match read(&path, name) {
                Ok(spec) => {
                    stored.specs.insert(name.to_string(), spec);
                }
                Err(why) => {
                    tracing::error!(file = %path.display(), error = %why, "unreadable network spec: its network is left alone");
                    stored.unreadable.insert(name.to_string(), why);
                }
            }
        }
        Ok(stored)
    }

    /// Stores `spec` durably (see the module's comment).
    pub fn put(&self, spec: &NetworkSpec) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let json = serde_json::to_vec_pretty(spec)?;
        let tmp = self.dir.join(format!(".{}.json.tmp", spec.name));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.file(&spec.name))?;
        sync_dir(&self.dir)
    }

    /// Removes the spec of `name` durably; one that is not there is fine.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.file(name)) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn read(path: &Path, name: &str) -> Result<NetworkSpec, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let spec: NetworkSpec = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    spec.validate().map_err(|e| e.to_string())?;
    if spec.name != name {
        return Err(format!("names network {:?}, not {name:?}", spec.name));
    }
    Ok(spec)
}

/// Flushes a directory's entries (a rename or removal in it) to disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::spec::Kind;

    fn bridge(name: &str, mtu: Option<u32>) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            kind: Kind::Bridge { uplink: None },
            mtu,
            address: None,
        }
    }

    #[test]
    fn specs_are_replaced_whole_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SpecStore::new(dir.path().join("networks"));
        assert_eq!(store.load().unwrap(), Stored::default(), "no directory yet");
        store.put(&bridge("a", None)).unwrap();
        store.put(&bridge("b", None)).unwrap();
        store.put(&bridge("a", Some(1400))).unwrap();
        let stored = store.load().unwrap();
        assert_eq!(stored.specs["a"], bridge("a", Some(1400)));
        assert_eq!(stored.specs.len(), 2);
        assert!(stored.unreadable.is_empty());
        // No temporary file is left beside them.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("networks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        assert_eq!(
            store.load().unwrap().specs.keys().collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn unreadable_specs_are_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SpecStore::new(dir.path().to_path_buf());
        store.put(&bridge("good", None)).unwrap();
        std::fs::write(store.file("torn"), b"{\"name\": \"torn\", \"ki").unwrap();
        let mut renamed = serde_json::to_vec(&bridge("other", None)).unwrap();
        std::fs::write(store.file("moved"), &renamed).unwrap();
        renamed = serde_json::to_vec(&bridge("bad", Some(10))).unwrap();
        std::fs::write(store.file("bad"), &renamed).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not a spec").unwrap();
        let stored = store.load().unwrap();
        assert_eq!(stored.specs.keys().collect::<Vec<_>>(), ["good"]);
        assert_eq!(
            stored.unreadable.keys().collect::<Vec<_>>(),
            ["bad", "moved", "torn"]
        );
        assert_eq!(
            stored.unreadable["moved"],
            "names network \"other\", not \"moved\""
        );
        assert!(stored.unreadable["bad"].starts_with("mtu: "), "{stored:?}");
        // The unreadable file is kept as it was, for the operator to look at.
        assert!(store.file("torn").exists());
    }
}
