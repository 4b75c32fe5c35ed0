//! hvagent: the node agent of Sovereign Cloud Stack compute nodes.
//!
//! The library holds every concern in its own module (see `docs/architecture.md`); the two
//! binaries, `hvagent` (daemon) and `hvctl` (operator CLI), are thin shells around it.

pub mod host;
