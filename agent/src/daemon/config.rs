//! The daemon's TOML configuration. Every key has a documented default (docs/operations.md), so
//! the daemon runs with no file at all. Loading is strict: an unknown key, a wrong type or a bad
//! value is an error that names the file, the key and the rule, and the daemon exits with 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use hvagent_core::config::ConfigError;
use hvagent_core::config::{for_each_key, integer, key_error, set_placement, string};

use crate::guest::{EmulationPolicy, ResumeSettings};
use crate::placement::Policy;
use crate::storage::images::{ImportLimits, MAX_VIRTUAL_SIZE};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub api: ApiConfig,
    pub libvirt: LibvirtConfig,
    pub storage: StorageConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub host: HostConfig,
    pub placement: Policy,
    pub network: NetworkConfig,
    pub health: crate::health::Settings,
    /// `[guests]`: guests after a host reboot.
    pub guests: ResumeSettings,
    pub access: AccessConfig,
    /// `[placement_api]`: reporting to OpenStack Placement; `None` (no `url`): off.
    pub placement_api: Option<crate::placement_api::Settings>,
    pub migration: MigrationConfig,
}

/// `[migration]`: how guests move to other nodes' agents and come from them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrationConfig {
    /// The certificate, key and CA bundle this node shows and checks when it calls another
    /// node's agent; all three or none (then `VmService.Migrate` is refused).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub server_ca: Option<PathBuf>,
    /// How other nodes' libvirtd reach this node's; `None`: this node takes no guests.
    pub libvirt_uri: Option<String>,
    /// Where this node's QEMU listens for arriving guests (an IP address: host names may
    /// resolve elsewhere, e.g. to another node on the same host).
    pub address: Option<std::net::IpAddr>,
}

impl MigrationConfig {
    /// The files of the identity shown to target agents, if configured.
    pub fn client_files(&self) -> Option<crate::tls::Files> {
        Some(crate::tls::Files {
            cert: ("migration.tls_cert", self.tls_cert.clone()?),
            key: ("migration.tls_key", self.tls_key.clone()?),
            ca: ("migration.server_ca", self.server_ca.clone()?),
        })
    }

    /// How the guest lifecycle takes guests from other nodes.
    pub fn settings(&self, partition: Option<String>) -> crate::guest::MigrationSettings {
        crate::guest::MigrationSettings {
            libvirt_uri: self.libvirt_uri.clone(),
            address: self.address.map(|a| match a {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            }),
            partition,
        }
    }

    /// The three TLS files go together.
    fn check(&self) -> Result<(), String> {
        let set = [
            ("migration.tls_cert", self.tls_cert.is_some()),
            ("migration.tls_key", self.tls_key.is_some()),
            ("migration.server_ca", self.server_ca.is_some()),
        ];
        if set.iter().all(|(_, s)| *s) || set.iter().all(|(_, s)| !*s) {
            return Ok(());
        }
        let missing: Vec<&str> = set.iter().filter(|(_, s)| !*s).map(|(k, _)| *k).collect();
        Err(format!(
            "needs all three TLS files: set {}",
            missing.join(", ")
        ))
    }
}

/// `[access]`: who may call what on the Unix socket, and where the audit log goes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessConfig {
    /// Local user name → role (root is always `controller`).
    pub unix_users: std::collections::BTreeMap<String, crate::access::Role>,
    /// Local group name → role; a caller gets the highest of its user's and groups' roles.
    pub unix_groups: std::collections::BTreeMap<String, crate::access::Role>,
    /// Group that owns the socket (mode 0660), so that its members can connect at all.
    pub socket_group: Option<String>,
    /// File the audit records are appended to; `None`: the log (target `hvagent::audit`).
    pub audit_log: Option<PathBuf>,
    /// Client certificate identity (URI SAN, else DNS SAN, else CN) → role, for TCP callers.
    pub tls_identities: std::collections::BTreeMap<String, crate::access::Role>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The network namespace the agent's bridges, VXLAN devices and taps live in: a file
    /// such as `/run/netns/NAME`; `None` is the agent's own.
    pub namespace: Option<PathBuf>,
    /// How often every network is checked and repaired.
    pub reconcile_seconds: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Unix socket for local clients; created with mode 0660, its directory created if missing.
    pub unix_socket: PathBuf,
    /// Mutating calls (guest lifecycle, network changes) running at once; more are refused.
    pub max_concurrent_mutations: usize,
    /// The TCP listener (mutual TLS); `None`: off, the Unix socket only.
    pub tcp: Option<TcpConfig>,
}

/// `[api] tcp_listen` and the TLS files it needs (all PEM).
#[derive(Debug, Clone, PartialEq)]
pub struct TcpConfig {
    pub listen: SocketAddr,
    /// The agent's certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA bundle client certificates must chain to.
    pub client_ca: PathBuf,
}

impl TcpConfig {
    /// The files as the TLS layer wants them, named by their config keys for errors.
    pub fn files(&self) -> crate::tls::Files {
        crate::tls::Files {
            cert: ("api.tls_cert", self.cert.clone()),
            key: ("api.tls_key", self.key.clone()),
            ca: ("api.tls_client_ca", self.client_ca.clone()),
        }
    }
}

/// The TCP keys as read, before they are checked to go together.
#[derive(Debug, Clone, Default, PartialEq)]
struct TcpKeys {
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

impl TcpKeys {
    /// A listener needs all three files; files without a listener are a mistake too (the
    /// operator meant to open the API and did not).
    fn check(self) -> Result<Option<TcpConfig>, (&'static str, String)> {
        match self {
            TcpKeys {
                listen: None,
                cert: None,
                key: None,
                client_ca: None,
            } => Ok(None),
            TcpKeys {
                listen: Some(listen),
                cert: Some(cert),
                key: Some(key),
                client_ca: Some(client_ca),
            } => Ok(Some(TcpConfig {
                listen,
                cert,
                key,
                client_ca,
            })),
            TcpKeys { listen: None, .. } => Err((
                "api.tcp_listen",
                "missing: api.tls_cert, api.tls_key and api.tls_client_ca are only used by the TCP listener".into(),
            )),
            keys => {
                let missing: Vec<&str> = [
                    ("api.tls_cert", keys.cert.is_none()),
                    ("api.tls_key", keys.key.is_none()),
                    ("api.tls_client_ca", keys.client_ca.is_none()),
                ]
                .into_iter()
                .filter_map(|(k, m)| m.then_some(k))
                .collect();
                Err((
                    "api.tcp_listen",
                    format!("needs mutual TLS: set {}", missing.join(", ")),
                ))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LibvirtConfig {
    pub uri: String,
    /// Whether guests may run under TCG where KVM does not work.
    pub emulation: EmulationPolicy,
    /// The cgroup partition of guests that arrive by migration; `None`: libvirt's `/machine`.
    pub partition: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Where images, disks and seeds live; created with mode 0711 if missing.
    pub root: PathBuf,
    /// Guest files without a domain older than this are removed at start-up.
    pub orphan_grace_seconds: u64,
    /// Bounds on every image import: size, time, free space left.
    pub imports: ImportLimits,
    /// Image imports running at once; more are refused.
    pub max_imports: usize,
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
    /// The file holding the kernel's id of this boot; a different one than at the agent's
    /// last start means the host rebooted (guests wanted running are started again).
    pub boot_id_path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api: ApiConfig {
                unix_socket: PathBuf::from("/run/hvagent/hvagent.sock"),
                max_concurrent_mutations: 16,
                tcp: None,
            },
            libvirt: LibvirtConfig {
                uri: "qemu:///system".into(),
                emulation: EmulationPolicy::Allow,
                partition: None,
            },
            storage: StorageConfig {
                root: PathBuf::from("/var/lib/hvagent"),
                orphan_grace_seconds: 600,
                imports: ImportLimits::default(),
                max_imports: 2,
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
                boot_id_path: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            },
            placement: Policy::default(),
            network: NetworkConfig {
                namespace: None,
                reconcile_seconds: 30,
            },
            health: crate::health::Settings::default(),
            guests: ResumeSettings::default(),
            access: AccessConfig::default(),
            placement_api: None,
            migration: MigrationConfig::default(),
        }
    }
}

impl Config {
    /// Loads `path`, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        Config::parse(
            &path.display().to_string(),
            &hvagent_core::config::read(path)?,
        )
    }

    /// Parses config text; `file` only names the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let table = hvagent_core::config::parse(file, text)?;
        let mut config = Config::default();
        let mut tcp = TcpKeys::default();
        let mut placement_api = crate::placement_api::settings::Keys::default();
        for_each_key(file, &table, |section, key, value| match section {
            "placement_api" => placement_api.set(key, value),
            _ => config.set(&mut tcp, section, key, value),
        })?;
        config.api.tcp = tcp
            .check()
            .map_err(|(key, problem)| key_error(file, key, problem))?;
        config.placement_api = placement_api
            .check()
            .map_err(|(key, problem)| key_error(file, key, problem))?;
        config
            .migration
            .check()
            .map_err(|problem| key_error(file, "migration.tls_cert", problem))?;
        Ok(config)
    }

    /// Sets one key (the TCP ones into `tcp`, checked together later); the error is the rule
    /// the value breaks.
    fn set(
        &mut self,
        tcp: &mut TcpKeys,
        section: &str,
        key: &str,
        value: &toml::Value,
    ) -> Result<(), String> {
        match (section, key) {
            ("api", "unix_socket") => {
                let path = absolute_path(value)?;
                // sockaddr_un holds 108 bytes including the terminating NUL.
                if path.as_os_str().len() > 107 {
                    return Err("socket path longer than 107 bytes".into());
                }
                self.api.unix_socket = path;
            }
            ("api", "max_concurrent_mutations") => {
                self.api.max_concurrent_mutations = integer(value, 1, 1024)? as usize;
            }
            ("api", "tcp_listen") => {
                let s = string(value)?;
                tcp.listen = Some(s.parse().map_err(|_| {
                    format!("{s:?} is not an address:port such as 0.0.0.0:9464 or [::]:9464")
                })?);
            }
            ("api", "tls_cert") => tcp.cert = Some(absolute_path(value)?),
            ("api", "tls_key") => tcp.key = Some(absolute_path(value)?),
            ("api", "tls_client_ca") => tcp.client_ca = Some(absolute_path(value)?),
            ("libvirt", "uri") => self.libvirt.uri = libvirt_uri(value)?,
            ("libvirt", "qemu_pid_dir") => self.health.qemu_pid_dir = absolute_path(value)?,
            ("libvirt", "partition") => {
                let partition = string(value)?;
                if !partition.starts_with('/') || partition.len() < 2 || partition.contains('\0') {
                    return Err(format!(
                        "{partition:?} is not a cgroup partition (expected e.g. /machine)"
                    ));
                }
                self.libvirt.partition = Some(partition);
            }
            ("migration", "tls_cert") => self.migration.tls_cert = Some(absolute_path(value)?),
            ("migration", "tls_key") => self.migration.tls_key = Some(absolute_path(value)?),
            ("migration", "server_ca") => self.migration.server_ca = Some(absolute_path(value)?),
            ("migration", "libvirt_uri") => self.migration.libvirt_uri = Some(libvirt_uri(value)?),
            ("migration", "address") => {
                let s = string(value)?;
                self.migration.address = Some(s.parse().map_err(|_| {
                    format!("{s:?} is not an IP address such as 10.0.0.2 or fd00::2")
                })?);
            }
            ("libvirt", "emulation") => {
                self.libvirt.emulation = match string(value)?.as_str() {
                    "allow" => EmulationPolicy::Allow,
                    "forbid" => EmulationPolicy::Forbid,
                    other => {
                        return Err(format!("{other:?} is not one of \"allow\", \"forbid\""));
                    }
                }
            }
            ("storage", "root") => self.storage.root = absolute_path(value)?,
            ("storage", "orphan_grace_seconds") => {
                self.storage.orphan_grace_seconds = integer(value, 0, 7 * 24 * 3600)?;
            }
            ("storage", "import_max_bytes") => {
                self.storage.imports.max_bytes = integer(value, 1 << 20, MAX_VIRTUAL_SIZE)?;
            }
            ("storage", "import_deadline_secs") => {
                self.storage.imports.deadline =
                    Duration::from_secs(integer(value, 1, 7 * 24 * 3600)?);
            }
            ("storage", "import_min_free_bytes") => {
                self.storage.imports.min_free_bytes = integer(value, 0, MAX_VIRTUAL_SIZE)?;
            }
            ("storage", "max_imports") => {
                self.storage.max_imports = integer(value, 1, 64)? as usize;
            }
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
                self.host.kvm_trial_timeout_ms = integer(value, 1, 60_000)?;
            }
            ("host", "boot_id_path") => self.host.boot_id_path = absolute_path(value)?,
            ("guests", "resume_on_boot") => {
                self.guests.on_boot = value
                    .as_bool()
                    .ok_or_else(|| format!("must be true or false, got {}", value.type_str()))?;
            }
            ("guests", "resume_concurrency") => {
                self.guests.concurrency = integer(value, 1, 64)? as usize;
            }
            ("placement", key) => set_placement(&mut self.placement, key, value)?,
            ("network", "namespace") => {
                let s = string(value)?;
                self.network.namespace = if s.is_empty() {
                    None
                } else {
                    Some(absolute_path(value)?)
                };
            }
            ("network", "reconcile_seconds") => {
                self.network.reconcile_seconds = integer(value, 1, 3600)?;
            }
            ("access", "unix_users") => self.access.unix_users = roles(value)?,
            ("access", "unix_groups") => self.access.unix_groups = roles(value)?,
            ("access", "socket_group") => {
                let group = string(value)?;
                self.access.socket_group = Some(group);
            }
            ("access", "tls_identities") => self.access.tls_identities = roles(value)?,
            ("access", "audit_log") => self.access.audit_log = Some(absolute_path(value)?),
            ("health", "interval_seconds") => {
                self.health.interval = Duration::from_secs(integer(value, 1, 3600)?);
            }
            ("health", "min_watch_interval_ms") => {
                self.health.min_watch_interval =
                    Duration::from_millis(integer(value, 100, 3_600_000)?);
            }
            ("health", "window_seconds") => {
                self.health.window = Duration::from_secs(integer(value, 1, 3600)?);
            }
            ("health", "libvirt_timeout_ms") => {
                self.health.libvirt_timeout = Duration::from_millis(integer(value, 100, 60_000)?);
            }
            ("health", "repair") => {
                self.health.repair = value
                    .as_bool()
                    .ok_or_else(|| format!("must be true or false, got {}", value.type_str()))?;
            }
            ("health", "memory_available_min_percent") => {
                self.health.thresholds.memory_available_min_percent = percent(value)?;
            }
            ("health", "memory_psi_full_max_percent") => {
                self.health.thresholds.memory_psi_full_max = percent(value)?;
            }
            ("health", "cpu_psi_some_max_percent") => {
                self.health.thresholds.cpu_psi_some_max = percent(value)?;
            }
            ("health", "disk_free_min_percent") => {
                self.health.thresholds.disk_free_min_percent = percent(value)?;
            }
            ("health", "io_psi_full_max_percent") => {
                self.health.thresholds.io_psi_full_max = percent(value)?;
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

const KNOWN_SECTIONS: &[&str] = &[
    "api",
    "libvirt",
    "storage",
    "metrics",
    "log",
    "host",
    "placement",
    "network",
    "health",
    "guests",
    "access",
    "placement_api",
    "migration",
];

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

/// A table of local user or group names to roles: `{ ops = "operator" }`.
fn roles(
    value: &toml::Value,
) -> Result<std::collections::BTreeMap<String, crate::access::Role>, String> {
    let toml::Value::Table(t) = value else {
        return Err(format!(
            "must be a table such as {{ ops = \"operator\" }}, got {}",
            value.type_str()
        ));
    };
    t.iter()
        .map(|(name, role)| {
            let role = string(role)?;
            crate::access::Role::parse(&role)
                .map(|r| (name.clone(), r))
                .ok_or_else(|| {
                    format!(
                        "{name}: {role:?} is not one of \"reader\", \"operator\", \"controller\""
                    )
                })
        })
        .collect()
}

/// A libvirt connection URI.
fn libvirt_uri(value: &toml::Value) -> Result<String, String> {
    let uri = string(value)?;
    if uri.contains('\0') {
        return Err("must not contain NUL".into());
    }
    if !uri.contains(':') || uri.starts_with(':') {
        return Err(format!(
            "{uri:?} is not a libvirt URI (expected e.g. qemu:///system)"
        ));
    }
    Ok(uri)
}

/// A percentage, 0 to 100, written as an integer or a float.
fn percent(value: &toml::Value) -> Result<f64, String> {
    let v = match value {
        toml::Value::Integer(i) => *i as f64,
        toml::Value::Float(f) => *f,
        other => return Err(format!("must be a number, got {}", other.type_str())),
    };
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be a percentage between 0 and 100, got {v}"))
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
mod tests;
