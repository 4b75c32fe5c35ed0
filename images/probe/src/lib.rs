//! The guest side of `hvctl verify`: what the probe is asked to do ([`plan`]), what it prints
//! ([`report`]) and the pure parts of measuring it ([`facts`], [`fips`]). The binary
//! (`main.rs`) runs in the guest; `hvctl` uses this library to ask for a plan and read the
//! console back.

pub mod facts;
pub mod fips;
pub mod plan;
pub mod report;
