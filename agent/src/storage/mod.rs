//! Files on the node: the image store and each guest's disks, seed and console log, all below
//! `[storage] root`.

pub mod disks;
pub mod fetch;
pub mod images;

pub use disks::GuestFiles;
pub use images::{ImageRecord, ImageStore, StoreError};
