//! hvagent: the node agent of Sovereign Cloud Stack compute nodes.
//!
//! Each concern has its own module (see `docs/architecture.md`); the daemon binary, `hvagent`,
//! is a thin shell around them. What the operator CLI (`hvctl`, its own crate) shares with the
//! daemon lives in hvagent-core and is re-exported here under the same names, so that
//! `crate::flavor::...` reads the same everywhere in the agent.

pub use hvagent_core::{flavor, placement, tls};

pub mod access;
pub mod api;
pub mod cli;
pub mod daemon;
pub mod domain;
pub mod guest;
pub mod health;
pub mod host;
pub mod net;
pub mod placement_api;
pub mod storage;
pub mod task;
