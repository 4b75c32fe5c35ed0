//! The config file as both binaries read it: TOML with strict keys, errors that name the file,
//! the key and the rule. The daemon's `Config` (`hvagent::daemon::config`) reads every section
//! through [`parse`] and [`for_each_key`]; `hvctl plan --config` needs only the `[placement]`
//! policy ([`load_placement`]), which is read by the same [`set_placement`] as the daemon's.

use std::path::Path;

use crate::host::sysfs::parse_cpulist;
use crate::placement::Policy;
use crate::placement::policy::{MAX_CROWDED_RATIO, ReservedCpus, parse_page_size};

/// What is wrong with a config file; `Display` is the one line the daemon prints.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{file}: cannot read: {problem}")]
    Unreadable { file: String, problem: String },
    #[error("{file}: line {line}: not valid TOML: {problem}")]
    Syntax {
        file: String,
        line: usize,
        problem: String,
    },
    #[error("{file}: {key}: {problem}")]
    Key {
        file: String,
        key: String,
        problem: String,
    },
}

/// The text of the config file at `path`.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
        file: path.display().to_string(),
        problem: e.to_string(),
    })
}

/// Parses config text into its table; `file` only names the source in errors.
pub fn parse(file: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(1);
        ConfigError::Syntax {
            file: file.to_string(),
            line,
            problem: e.message().trim().to_string(),
        }
    })
}

/// Calls `set` with every key of every section; every top-level entry must be a section. The
/// error `set` returns is the rule the value breaks, and becomes a [`ConfigError::Key`].
pub fn for_each_key(
    file: &str,
    table: &toml::Table,
    mut set: impl FnMut(&str, &str, &toml::Value) -> Result<(), String>,
) -> Result<(), ConfigError> {
    for (section, value) in table {
        let toml::Value::Table(entries) = value else {
            return Err(key_error(file, section, "must be a [section]".into()));
        };
        for (key, value) in entries {
            set(section, key, value)
                .map_err(|problem| key_error(file, &format!("{section}.{key}"), problem))?;
        }
    }
    Ok(())
}

pub fn key_error(file: &str, key: &str, problem: String) -> ConfigError {
    ConfigError::Key {
        file: file.to_string(),
        key: key.to_string(),
        problem,
    }
}

/// The `[placement]` policy of the config file at `path`, or the defaults when `path` is
/// `None`. Only that section's keys are checked: the others are the daemon's business.
pub fn load_placement(path: Option<&Path>) -> Result<Policy, ConfigError> {
    let mut policy = Policy::default();
    let Some(path) = path else {
        return Ok(policy);
    };
    let file = path.display().to_string();
    let table = parse(&file, &read(path)?)?;
    for_each_key(&file, &table, |section, key, value| match section {
        "placement" => set_placement(&mut policy, key, value),
        _ => Ok(()),
    })?;
    Ok(policy)
}

/// Sets one `[placement]` key; the error is the rule the value breaks.
pub fn set_placement(policy: &mut Policy, key: &str, value: &toml::Value) -> Result<(), String> {
    match key {
        "reserved_cpus" => {
            let toml::Value::String(s) = value else {
                return Err(format!("must be a string, got {}", value.type_str()));
            };
            policy.reserved_cpus = match s.as_str() {
                "auto" => ReservedCpus::Auto,
                list => ReservedCpus::List(cpulist(list)?),
            };
        }
        "reserved_memory_mib" => {
            policy.reserved_memory_mib = integer(value, 0, 1 << 30)?;
        }
        "dedicated_cpus" => {
            policy.dedicated_cpus = Some(nonempty_cpulist(value)?);
        }
        "shared_cpus" => {
            policy.shared_cpus = Some(nonempty_cpulist(value)?);
        }
        "crowded_ratio" => {
            policy.crowded_ratio = integer(value, 1, u64::from(MAX_CROWDED_RATIO))? as u32;
        }
        "hugepages" => {
            let toml::Value::Table(types) = value else {
                return Err(format!(
                    "must be a table such as {{ C = \"1G\", T = \"2M\" }}, got {}",
                    value.type_str()
                ));
            };
            policy.hugepages.clear();
            for (letter, size) in types {
                let cpu_type = match letter.as_str() {
                    "L" | "V" | "T" | "C" => letter.as_bytes()[0] as char,
                    other => {
                        return Err(format!("{other:?} is not a CPU type letter (L, V, T, C)"));
                    }
                };
                if let Some(kib) =
                    parse_page_size(&string(size)?).map_err(|e| format!("{letter}: {e}"))?
                {
                    policy.hugepages.insert(cpu_type, kib);
                }
            }
        }
        "overhead_fixed_mib" => {
            policy.overhead.fixed_mib = integer(value, 0, 65_536)?;
        }
        "overhead_per_vcpu_mib" => {
            policy.overhead.per_vcpu_mib = integer(value, 0, 1024)?;
        }
        "overhead_ram_permille" => {
            policy.overhead.ram_permille = integer(value, 0, 1000)?;
        }
        _ => return Err("unknown key".into()),
    }
    Ok(())
}

/// A non-empty string.
pub fn string(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
        toml::Value::String(_) => Err("must not be empty".into()),
        other => Err(format!("must be a string, got {}", other.type_str())),
    }
}

/// An integer from `min` to `max`.
pub fn integer(value: &toml::Value, min: u64, max: u64) -> Result<u64, String> {
    let n = value
        .as_integer()
        .ok_or_else(|| format!("must be an integer, got {}", value.type_str()))?;
    u64::try_from(n)
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("must be between {min} and {max}, got {n}"))
}

/// A cpulist such as `"0,16"` or `"2-15,18-31"`; `""` is no CPU.
fn cpulist(s: &str) -> Result<Vec<u32>, String> {
    parse_cpulist(s).map_err(|e| e.to_string())
}

fn nonempty_cpulist(value: &toml::Value) -> Result<Vec<u32>, String> {
    let list = cpulist(&string(value)?)?;
    if list.is_empty() {
        return Err("must name at least one CPU".into());
    }
    Ok(list)
}
