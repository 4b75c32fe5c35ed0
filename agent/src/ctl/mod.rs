//! The client side used by `hvctl`: connecting to the agent's socket with errors that say what is
//! wrong, and rendering answers as tables for people or JSON for programs.

pub mod client;
pub mod render;
pub mod verify;
