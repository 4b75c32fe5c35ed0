//! The wall clock as the agent records it: seconds or milliseconds since the Unix epoch, 0 for
//! a clock set before 1970 (never an error: a timestamp is information, not a decision).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch: records, intents, claims and certificate checks.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch: events, audit records and samples.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
