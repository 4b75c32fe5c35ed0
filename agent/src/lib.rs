//! hvagent: the node agent of Sovereign Cloud Stack compute nodes.
//!
//! Each concern has its own module (see `docs/architecture.md`); the daemon binary, `hvagent`,
//! is a thin shell around them. What the operator CLI (`hvctl`, its own crate) shares with the
//! daemon lives in hvagent-core and is re-exported here under the same names, so that
//! `crate::flavor::...` reads the same everywhere in the agent.

pub use hvagent_core::{flavor, tls};

pub mod access;
pub mod api;
pub mod daemon;
pub mod domain;
pub mod guest;
pub mod health;
pub mod host;
pub mod net;
pub mod storage;

/// Placement lives in hvagent-core; the guest unit tests place on its captured-host fixtures
/// under the name the scenario tests once had in this crate (`crate::placement::tests`).
pub mod placement {
    #[cfg(test)]
    pub(crate) use hvagent_core::placement::testing as tests;
    pub use hvagent_core::placement::*;
}
