//! hvctl, the operator's command line for hvagent: the command line (`cli`), one module per
//! noun (`commands`), the connection to the agent (`client`), the tables (`render`) and
//! `hvctl verify` (`verify`). It shares flavors, placement and the host readers with the daemon
//! through hvagent-core, and compiles none of the daemon's libvirt, netlink or HTTP code.

pub mod cli;
pub mod client;
pub mod commands;
pub mod render;
pub mod verify;

/// A random UUID for a guest the client creates (the kernel makes it: version 4).
pub fn new_uuid() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").map(|s| s.trim().to_string())
}
