//! Files on the node: the image store and each guest's disks, seed and console log, all below
//! `[storage] root`.

pub mod disks;
pub mod fetch;
pub mod images;
pub mod volumes;

pub use disks::GuestFiles;
pub use images::{ImageRecord, ImageStore, StoreError};
pub use volumes::{VolumeError, VolumeRecord, VolumeStore};

/// Creates `dir` and its missing parents with mode 0711: QEMU runs as another user and must
/// traverse the directories on the way to the files libvirt hands it, but not list them. Set
/// explicitly, as the agent's umask would make a new directory private. Directories that exist
/// keep their mode and owner (an operator's choice).
pub fn traversable_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let missing: Vec<&std::path::Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for created in missing {
        std::fs::set_permissions(created, std::fs::Permissions::from_mode(0o711))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_directories_are_traversable_and_existing_ones_keep_their_mode() {
        let root = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let deep = root.path().join("a/b/c");
        super::traversable_dir(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&root.path().join(d)), 0o711, "{d}");
        }
        assert_eq!(mode(root.path()), 0o750);
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o700)).unwrap();
        super::traversable_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700, "an existing directory keeps its mode");
    }
}
