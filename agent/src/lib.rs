//! hvagent: the node agent of Sovereign Cloud Stack compute nodes.
//!
//! Each concern has its own module (see `docs/architecture.md`); the two binaries, `hvagent`
//! (daemon) and `hvctl` (operator CLI), are thin shells around them.

pub mod access;
pub mod api;
pub mod ctl;
pub mod daemon;
pub mod domain;
pub mod flavor;
pub mod guest;
pub mod health;
pub mod host;
pub mod net;
pub mod placement;
pub mod storage;
pub mod tls;
