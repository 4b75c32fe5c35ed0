//! `GuestError`: what a lifecycle call answers when it fails, one variant per gRPC code
//! (`api/guest.rs` maps them), and how the errors of the edges it calls become one.

use crate::domain::guests::DomainError;
use crate::domain::xml::XmlError;
use crate::net::NetworksError;
use crate::placement::{Refusal, RefusalKind};
use crate::storage::StoreError;
use crate::storage::disks::DiskError;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// libvirt failed a call it was able to answer (its message says why).
    #[error("{0}")]
    Libvirt(#[source] DomainError),
    /// A guest file (disk, seed) could not be made.
    #[error("disk: {0}")]
    Disk(#[source] DiskError),
    /// A deleted guest's files could not be removed.
    #[error("{0}")]
    Files(#[source] DiskError),
    /// The domain XML could not be written.
    #[error("{0}")]
    Xml(#[source] XmlError),
    /// Reading the serial console log failed.
    #[error("{}: {source}", path.display())]
    ConsoleLog {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl From<DomainError> for GuestError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound(uuid) => GuestError::NotFound(format!("no guest {uuid}")),
            DomainError::Unreachable(m) => GuestError::Unavailable(format!("libvirt: {m}")),
            e @ DomainError::Libvirt(_) => GuestError::Libvirt(e),
        }
    }
}

impl From<NetworksError> for GuestError {
    fn from(e: NetworksError) -> Self {
        match e {
            NetworksError::Invalid(e) => GuestError::Invalid(e.to_string()),
            NetworksError::NotFound(m) => GuestError::NotFound(m),
            NetworksError::AlreadyExists(m) => GuestError::AlreadyExists(m),
            NetworksError::Precondition(m) => GuestError::Precondition(m),
            NetworksError::Failed(m) => GuestError::Internal(format!("network: {m}")),
        }
    }
}

impl From<StoreError> for GuestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid { .. } => GuestError::Invalid(e.to_string()),
            StoreError::NotFound(_) => GuestError::NotFound(format!("image: {e}")),
            StoreError::Exists { .. } => GuestError::AlreadyExists(e.to_string()),
            StoreError::InUse { .. } => GuestError::Precondition(e.to_string()),
            StoreError::Importing { .. } => GuestError::Precondition(e.to_string()),
            StoreError::Deleting(_) | StoreError::Unreadable { .. } | StoreError::Limit { .. } => {
                GuestError::Precondition(e.to_string())
            }
            StoreError::Fetch {
                retryable: true, ..
            } => GuestError::Unavailable(e.to_string()),
            StoreError::Fetch { .. } => GuestError::Precondition(e.to_string()),
            StoreError::Io { .. } => GuestError::Internal(e.to_string()),
        }
    }
}

/// A placement refusal: the kinds that are plain request errors get their own code.
pub(super) fn refused(r: Refusal) -> GuestError {
    match r.kind {
        RefusalKind::Invalid => GuestError::Invalid(r.message),
        RefusalKind::NotFound => GuestError::NotFound(r.message),
        RefusalKind::AlreadyExists => GuestError::AlreadyExists(r.message),
        _ => GuestError::Refused(r),
    }
}
