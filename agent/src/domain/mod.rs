//! libvirt: the connection and what libvirt says about the hypervisor.

pub mod connection;

pub use connection::Libvirt;
