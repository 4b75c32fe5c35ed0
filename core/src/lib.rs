//! hvagent-core: what the daemon (`hvagent`) and the operator CLI (`hvctl`) share, and nothing
//! that talks to libvirt, netlink or the network: the SCS flavor language, placement, the
//! inventory readers, the TLS files, and the `[placement]` part of the config file. The daemon
//! re-exports these modules under the same names (`hvagent::flavor`, ...).

pub mod config;
pub mod flavor;
pub mod host;
pub mod placement;
pub mod tls;

/// Seconds since the Unix epoch, as records and intents store creation times.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
