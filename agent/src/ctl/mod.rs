//! The client side used by `hvctl`: connecting to the agent's socket with errors that say what is
//! wrong, and rendering answers as tables for people or JSON for programs.

pub mod client;
pub mod render;
pub mod verify;

/// A random UUID for a guest the client creates (the kernel makes it: version 4).
pub fn new_uuid() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").map(|s| s.trim().to_string())
}
