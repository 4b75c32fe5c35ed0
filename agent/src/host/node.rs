//! The effectful edge of the inventory: gathers the sysfs tree, libvirt's facts, the KVM trial
//! and the storage filesystem size, off the async workers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use super::{ExternalFacts, Inventory, KvmState, KvmVerdict, LibvirtFacts, kvm};
use crate::domain::Libvirt;

/// How long one inventory call waits for libvirt. On some hosts libvirtd re-probes QEMU on
/// every capabilities call (about 8-12 s on the development machines) and does one at a time,
/// so with a few clients asking at once an answer can take half a minute.
pub const LIBVIRT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Node {
    pub sysfs_root: PathBuf,
    pub storage_root: PathBuf,
    pub kvm_device: PathBuf,
    /// The binary that runs the KVM trial (the `hvagent` executable itself).
    pub trial_exe: PathBuf,
    pub kvm_trial_timeout: Duration,
    pub libvirt: Arc<Libvirt>,
    kvm: OnceCell<KvmVerdict>,
}

impl Node {
    pub fn new(
        sysfs_root: PathBuf,
        storage_root: PathBuf,
        kvm_device: PathBuf,
        trial_exe: PathBuf,
        kvm_trial_timeout: Duration,
        libvirt: Arc<Libvirt>,
    ) -> Self {
        Self {
            sysfs_root,
            storage_root,
            kvm_device,
            trial_exe,
            kvm_trial_timeout,
            libvirt,
            kvm: OnceCell::new(),
        }
    }

    /// The KVM verdict, running the trial on first use only: whether KVM works does not change
    /// while the agent runs.
    pub async fn kvm(&self) -> KvmVerdict {
        self.kvm
            .get_or_init(|| {
                let (dev, exe, timeout) = (
                    self.kvm_device.clone(),
                    self.trial_exe.clone(),
                    self.kvm_trial_timeout,
                );
                async move {
                    tokio::task::spawn_blocking(move || kvm::probe(&dev, &exe, timeout))
                        .await
                        .unwrap_or_else(|e| KvmVerdict {
                            state: KvmState::Broken,
                            reason: format!("KVM trial task failed: {e}"),
                        })
                }
            })
            .await
            .clone()
    }

    /// libvirt's facts, or why they are missing; a hung libvirtd costs a caller at most
    /// [`LIBVIRT_TIMEOUT`], never the whole inventory.
    async fn libvirt_facts(&self) -> LibvirtFacts {
        let libvirt = self.libvirt.clone();
        let asked = tokio::time::timeout(
            LIBVIRT_TIMEOUT,
            tokio::task::spawn_blocking(move || libvirt.facts()),
        )
        .await;
        let error = match asked {
            Ok(Ok(facts)) => return facts,
            Ok(Err(e)) => format!("libvirt task failed: {e}"),
            Err(_) => format!(
                "{} did not answer within {} s",
                self.libvirt.uri(),
                LIBVIRT_TIMEOUT.as_secs()
            ),
        };
        LibvirtFacts {
            uri: self.libvirt.uri().to_string(),
            error,
            ..Default::default()
        }
    }

    pub async fn inventory(&self) -> Result<Inventory, InventoryError> {
        let (kvm, libvirt) = tokio::join!(self.kvm(), self.libvirt_facts());
        self.read(kvm, libvirt).await
    }

    /// The inventory without asking libvirt: what placement needs (topology, memory, KVM,
    /// storage), available even while libvirtd is down or slow.
    pub async fn local_inventory(&self) -> Result<Inventory, InventoryError> {
        let kvm = self.kvm().await;
        let libvirt = LibvirtFacts {
            uri: self.libvirt.uri().to_string(),
            error: "not asked".into(),
            ..Default::default()
        };
        self.read(kvm, libvirt).await
    }

    async fn read(
        &self,
        kvm: KvmVerdict,
        libvirt: LibvirtFacts,
    ) -> Result<Inventory, InventoryError> {
        let root = self.sysfs_root.clone();
        let storage = self.storage_root.clone();
        let gathered = tokio::task::spawn_blocking(move || {
            let external = ExternalFacts {
                libvirt,
                kvm,
                storage_disk_bytes: nix::sys::statvfs::statvfs(&storage)
                    .ok()
                    .map(|s| s.blocks() * s.fragment_size()),
            };
            super::read(&root, external)
        })
        .await;
        gathered.map_err(|e| InventoryError(e.to_string()))
    }
}

/// Only a panicking reader gets here: a bug, reported to the caller instead of killing the agent.
#[derive(Debug, thiserror::Error)]
#[error("inventory reader failed: {0}")]
pub struct InventoryError(String);
