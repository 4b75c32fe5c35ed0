//! hvagent-core: what the daemon (`hvagent`) and the operator CLI (`hvctl`) share, and nothing
//! that talks to libvirt or netlink: the SCS flavor language, placement, the inventory readers,
//! TLS (its files, and dialing an agent's API, the one place this crate touches the network),
//! and the `[placement]` part of the config file. The daemon
//! re-exports these modules under the same names (`hvagent::flavor`, ...).

pub mod clock;
pub mod config;
pub mod counts;
pub mod flavor;
pub mod host;
pub mod placement;
pub mod sync;
pub mod tls;

pub use clock::{now_unix, now_unix_ms};
