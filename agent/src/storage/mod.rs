//! Files on the node: the image store and each guest's disks, seed and console log, all below
//! `[storage] root`.

pub mod disks;
pub mod fetch;
pub mod images;

pub use disks::GuestFiles;
pub use images::{ImageRecord, ImageStore, StoreError};

/// Creates `dir` (and missing parents) and makes it mode 0711: QEMU runs as another user and
/// must traverse the directories on the way to the files libvirt hands it, but not list them.
/// Set explicitly, as the agent's umask would make a new directory private.
pub fn traversable_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}
