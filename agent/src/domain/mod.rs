//! libvirt: the connection and what libvirt says about the hypervisor.

pub mod connection;
pub mod console;
pub mod events;
#[cfg(test)]
pub mod fake;
pub mod firmware;
pub mod guest_agent;
pub mod guests;
pub mod hypervisor;
pub mod stats;
pub mod volume_disk;
pub mod xml;

pub use connection::Libvirt;
pub use events::{DomainEvent, EventKind};
pub use hypervisor::{DomainState, Hypervisor};
