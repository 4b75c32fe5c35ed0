//! The daemon's TOML configuration. Every key has a documented default (docs/operations.md), so
//! the daemon runs with no file at all. Loading is strict: an unknown key, a wrong type or a bad
//! value is an error that names the file, the key and the rule, and the daemon exits with 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub api: ApiConfig,
    pub libvirt: LibvirtConfig,
    pub storage: StorageConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub host: HostConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Unix socket for local clients; created with mode 0660, its directory created if missing.
    pub unix_socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LibvirtConfig {
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Where images, disks and seeds live; created with mode 0700 if missing.
    pub root: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Address of the Prometheus `/metrics` endpoint.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `hvagent=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// Root of the sysfs/procfs tree the inventory reads (`/`; a captured tree in tests).
    pub sysfs_root: PathBuf,
    /// The KVM device the trial guest runs on.
    pub kvm_device: PathBuf,
    /// How long the KVM trial guest may take before KVM counts as broken.
    pub kvm_trial_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api: ApiConfig {
                unix_socket: PathBuf::from("/run/hvagent/hvagent.sock"),
            },
            libvirt: LibvirtConfig {
                uri: "qemu:///system".into(),
            },
            storage: StorageConfig {
                root: PathBuf::from("/var/lib/hvagent"),
            },
            metrics: MetricsConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            },
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            host: HostConfig {
                sysfs_root: PathBuf::from("/"),
                kvm_device: PathBuf::from("/dev/kvm"),
                kvm_trial_timeout_ms: 2000,
            },
        }
    }
}

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

impl Config {
    /// Loads `path`, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            file: file.clone(),
            problem: e.to_string(),
        })?;
        Config::parse(&file, &text)
    }

    /// Parses config text; `file` only names the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                problem: e.message().trim().to_string(),
            }
        })?;
        let mut config = Config::default();
        let key_err = |key: &str, problem: String| ConfigError::Key {
            file: file.to_string(),
            key: key.to_string(),
            problem,
        };
        for (section, value) in &table {
            let toml::Value::Table(entries) = value else {
                return Err(key_err(section, "must be a [section]".into()));
            };
            for (key, value) in entries {
                let full = format!("{section}.{key}");
                config
                    .set(section, key, value)
                    .map_err(|problem| key_err(&full, problem))?;
            }
        }
        Ok(config)
    }

    /// Sets one key; the error is the rule the value breaks.
    fn set(&mut self, section: &str, key: &str, value: &toml::Value) -> Result<(), String> {
        match (section, key) {
            ("api", "unix_socket") => {
                let path = absolute_path(value)?;
                // sockaddr_un holds 108 bytes including the terminating NUL.
                if path.as_os_str().len() > 107 {
                    return Err("socket path longer than 107 bytes".into());
                }
                self.api.unix_socket = path;
            }
            ("libvirt", "uri") => {
                let uri = string(value)?;
                if !uri.contains(':') || uri.starts_with(':') {
                    return Err(format!(
                        "{uri:?} is not a libvirt URI (expected e.g. qemu:///system)"
                    ));
                }
                self.libvirt.uri = uri;
            }
            ("storage", "root") => self.storage.root = absolute_path(value)?,
            ("metrics", "listen") => {
                let s = string(value)?;
                self.metrics.listen = s
                    .parse()
                    .map_err(|_| format!("{s:?} is not an address:port such as 127.0.0.1:9465"))?;
            }
            ("log", "format") => {
                self.log.format = match string(value)?.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => return Err(format!("{other:?} is not one of \"text\", \"json\"")),
                }
            }
            ("log", "level") => {
                let level = string(value)?;
                check_log_filter(&level)?;
                self.log.level = level;
            }
            ("host", "sysfs_root") => self.host.sysfs_root = absolute_path(value)?,
            ("host", "kvm_device") => self.host.kvm_device = absolute_path(value)?,
            ("host", "kvm_trial_timeout_ms") => {
                let ms = value
                    .as_integer()
                    .ok_or_else(|| format!("must be an integer, got {}", value.type_str()))?;
                if !(1..=60_000).contains(&ms) {
                    return Err(format!("must be between 1 and 60000, got {ms}"));
                }
                self.host.kvm_trial_timeout_ms = ms as u64;
            }
            (_, _) if !KNOWN_SECTIONS.contains(&section) => {
                return Err(format!(
                    "unknown section [{section}] (known: {})",
                    KNOWN_SECTIONS.join(", ")
                ));
            }
            (_, _) => return Err("unknown key".into()),
        }
        Ok(())
    }
}

const KNOWN_SECTIONS: &[&str] = &["api", "libvirt", "storage", "metrics", "log", "host"];

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A tracing filter (`info`, `hvagent=debug,warn`). tracing itself takes a bare word as a target
/// name, so a typo such as `inof` would silently turn logging off: bare words must be levels.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    for directive in filter.split(',').map(str::trim) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{filter:?} is not a log filter: {directive:?} needs a level ({})",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?} is not a log filter: {e}"))
}

fn string(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
        toml::Value::String(_) => Err("must not be empty".into()),
        other => Err(format!("must be a string, got {}", other.type_str())),
    }
}

fn absolute_path(value: &toml::Value) -> Result<PathBuf, String> {
    let s = string(value)?;
    let path = PathBuf::from(&s);
    if !path.is_absolute() {
        return Err(format!("{s:?} must be an absolute path"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse("/etc/x.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("f", "").unwrap(), Config::default());
    }

    #[test]
    fn every_key_parses() {
        let c = Config::parse(
            "f",
            r#"
            [api]
            unix_socket = "/tmp/a.sock"
            [libvirt]
            uri = "test:///default"
            [storage]
            root = "/srv/hv"
            [metrics]
            listen = "[::1]:9000"
            [log]
            format = "json"
            level = "hvagent=debug,info"
            [host]
            sysfs_root = "/fixtures/x"
            kvm_device = "/dev/null"
            kvm_trial_timeout_ms = 50
            "#,
        )
        .unwrap();
        assert_eq!(c.api.unix_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.libvirt.uri, "test:///default");
        assert_eq!(c.storage.root, PathBuf::from("/srv/hv"));
        assert_eq!(c.metrics.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "hvagent=debug,info");
        assert_eq!(c.host.sysfs_root, PathBuf::from("/fixtures/x"));
        assert_eq!(c.host.kvm_trial_timeout_ms, 50);
    }

    #[test]
    fn errors_name_file_key_and_rule() {
        assert_eq!(
            err("[api]\nunix_sockets = \"/x\"\n"),
            "/etc/x.toml: api.unix_sockets: unknown key"
        );
        assert_eq!(
            err("[apii]\nx = 1\n"),
            "/etc/x.toml: apii.x: unknown section [apii] (known: api, libvirt, storage, metrics, log, host)"
        );
        assert_eq!(
            err("[api]\nunix_socket = \"rel.sock\"\n"),
            "/etc/x.toml: api.unix_socket: \"rel.sock\" must be an absolute path"
        );
        assert_eq!(
            err("[api]\nunix_socket = 5\n"),
            "/etc/x.toml: api.unix_socket: must be a string, got integer"
        );
        assert_eq!(
            err("[metrics]\nlisten = \"localhost\"\n"),
            "/etc/x.toml: metrics.listen: \"localhost\" is not an address:port such as 127.0.0.1:9465"
        );
        assert_eq!(
            err("[log]\nformat = \"xml\"\n"),
            "/etc/x.toml: log.format: \"xml\" is not one of \"text\", \"json\""
        );
        assert_eq!(
            err("[libvirt]\nuri = \"nonsense\"\n"),
            "/etc/x.toml: libvirt.uri: \"nonsense\" is not a libvirt URI (expected e.g. qemu:///system)"
        );
        assert_eq!(
            err("[host]\nkvm_trial_timeout_ms = 0\n"),
            "/etc/x.toml: host.kvm_trial_timeout_ms: must be between 1 and 60000, got 0"
        );
        assert_eq!(err("api = 1\n"), "/etc/x.toml: api: must be a [section]");
        let long = format!("[api]\nunix_socket = \"/{}\"\n", "a".repeat(120));
        assert!(err(&long).ends_with("socket path longer than 107 bytes"));
        assert!(
            err("[log]\nlevel = \"=bad=\"\n")
                .starts_with("/etc/x.toml: log.level: \"=bad=\" is not a log filter")
        );
        assert!(err("[log]\nlevel = \"inof\"\n").contains("\"inof\" needs a level"));
        assert!(Config::parse("f", "[log]\nlevel = \"hvagent=debug,WARN\"\n").is_ok());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = err("[api]\nunix_socket = \n");
        assert!(e.starts_with("/etc/x.toml: line 2: not valid TOML:"), "{e}");
        let e = err("[api]\n\n=oops\n");
        assert!(e.starts_with("/etc/x.toml: line 3: not valid TOML:"), "{e}");
    }

    #[test]
    fn unreadable_file() {
        let e = Config::load(Some(Path::new("/nonexistent/hv.toml")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/nonexistent/hv.toml: cannot read: No such file or directory (os error 2)"
        );
    }
}
