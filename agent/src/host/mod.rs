//! The node's hardware inventory: the readers and the inventory types live in hvagent-core
//! (hvctl reads captured trees with them too); the daemon adds the effectful edges, the KVM
//! trial and `Node`, which wires in libvirt's facts.

pub use hvagent_core::host::*;

pub mod kvm;
pub mod node;
