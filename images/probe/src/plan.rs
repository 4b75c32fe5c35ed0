//! What the probe is asked to do: one line of the guest's NoCloud user-data,
//! `hvagent-probe: MODE [KEY=VALUE]...`, so that one image serves every check. `hvctl verify`
//! writes the line with [`Plan::user_data`]; the probe reads it back with [`Plan::from_user_data`].

use std::fmt;

/// The user-data key the probe looks for.
pub const KEY: &str = "hvagent-probe:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Report the guest's facts once, then run the workload and print a sample per window.
    Report,
    /// Only run the workload and print samples: a noisy neighbour.
    Burn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    /// Blocks of /dev/random for the FIPS 140-2 tests (the SCS entropy check uses 1000).
    pub fips_blocks: u32,
    /// Length of one workload sample.
    pub window_ms: u64,
    /// How long to write to the root disk for the IOPS figure (0: skip).
    pub iops_ms: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            mode: Mode::Report,
            fips_blocks: 1000,
            window_ms: 2000,
            iops_ms: 3000,
        }
    }
}

/// Bounds that keep a mistyped plan from running for hours.
const MAX_FIPS_BLOCKS: u32 = 100_000;
const MAX_MS: u64 = 600_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError(pub String);

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn number<T: std::str::FromStr + PartialOrd + fmt::Display>(
    key: &str,
    value: &str,
    min: T,
    max: T,
) -> Result<T, PlanError> {
    match value.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(PlanError(format!(
            "{KEY} {key}={value}: must be a whole number from {min} to {max}"
        ))),
    }
}

impl Plan {
    /// The plan in a user-data document: `None` when no line asks for the probe.
    pub fn from_user_data(user_data: &str) -> Option<Result<Plan, PlanError>> {
        let line = user_data
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(KEY))?;
        Some(Self::parse(line))
    }

    fn parse(line: &str) -> Result<Plan, PlanError> {
        let mut words = line.split_whitespace();
        let mut plan = Plan {
            mode: match words.next() {
                Some("report") => Mode::Report,
                Some("burn") => Mode::Burn,
                other => {
                    return Err(PlanError(format!(
                        "{KEY} mode {:?}: must be report or burn",
                        other.unwrap_or("")
                    )));
                }
            },
            ..Plan::default()
        };
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(PlanError(format!("{KEY} {word:?}: expected KEY=VALUE")));
            };
            match key {
                "fips_blocks" => plan.fips_blocks = number(key, value, 0, MAX_FIPS_BLOCKS)?,
                "window_ms" => plan.window_ms = number(key, value, 100, MAX_MS)?,
                "iops_ms" => plan.iops_ms = number(key, value, 0, MAX_MS)?,
                _ => {
                    return Err(PlanError(format!(
                        "{KEY} unknown key {key:?} (fips_blocks, window_ms, iops_ms)"
                    )));
                }
            }
        }
        Ok(plan)
    }

    /// The user-data line that asks for this plan.
    pub fn user_data(&self) -> String {
        let mode = match self.mode {
            Mode::Report => "report",
            Mode::Burn => "burn",
        };
        format!(
            "{KEY} {mode} fips_blocks={} window_ms={} iops_ms={}\n",
            self.fips_blocks, self.window_ms, self.iops_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_user_data() {
        for plan in [
            Plan::default(),
            Plan {
                mode: Mode::Burn,
                fips_blocks: 0,
                window_ms: 100,
                iops_ms: 0,
            },
        ] {
            let doc = format!("#cloud-config\nhostname: x\n{}", plan.user_data());
            assert_eq!(Plan::from_user_data(&doc), Some(Ok(plan)));
        }
    }

    #[test]
    fn absent_defaults_and_errors() {
        assert_eq!(Plan::from_user_data("#cloud-config\n"), None);
        assert_eq!(
            Plan::from_user_data("hvagent-probe: report window_ms=500"),
            Some(Ok(Plan {
                window_ms: 500,
                ..Plan::default()
            }))
        );
        for (line, says) in [
            ("hvagent-probe:", "mode \"\""),
            ("hvagent-probe: sing", "mode \"sing\""),
            ("hvagent-probe: report window_ms", "expected KEY=VALUE"),
            ("hvagent-probe: report window_ms=99", "from 100 to 600000"),
            ("hvagent-probe: report window_ms=-1", "from 100 to 600000"),
            (
                "hvagent-probe: report fips_blocks=100001",
                "from 0 to 100000",
            ),
            ("hvagent-probe: burn colour=red", "unknown key \"colour\""),
        ] {
            let err = Plan::from_user_data(line)
                .expect("a probe line")
                .unwrap_err();
            assert!(err.0.contains(says), "{line}: {err}");
        }
    }
}
