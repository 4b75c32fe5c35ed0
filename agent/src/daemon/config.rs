//! The daemon's TOML configuration. Every key has a documented default (docs/operations.md), so
//! the daemon runs with no file at all. Loading is strict: an unknown key, a wrong type or a bad
//! value is an error that names the file, the key and the rule, and the daemon exits with 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use hvagent_core::config::ConfigError;
use hvagent_core::config::{for_each_key, integer, key_error, set_placement, string};

use crate::guest::EmulationPolicy;
use crate::placement::Policy;

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
    pub access: AccessConfig,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Where images, disks and seeds live; created with mode 0711 if missing.
    pub root: PathBuf,
    /// Guest files without a domain older than this are removed at start-up.
    pub orphan_grace_seconds: u64,
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
                max_concurrent_mutations: 16,
                tcp: None,
            },
            libvirt: LibvirtConfig {
                uri: "qemu:///system".into(),
                emulation: EmulationPolicy::Allow,
            },
            storage: StorageConfig {
                root: PathBuf::from("/var/lib/hvagent"),
                orphan_grace_seconds: 600,
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
            placement: Policy::default(),
            network: NetworkConfig {
                namespace: None,
                reconcile_seconds: 30,
            },
            health: crate::health::Settings::default(),
            access: AccessConfig::default(),
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
        for_each_key(file, &table, |section, key, value| {
            config.set(&mut tcp, section, key, value)
        })?;
        config.api.tcp = tcp
            .check()
            .map_err(|(key, problem)| key_error(file, key, problem))?;
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
            ("libvirt", "uri") => {
                let uri = string(value)?;
                if uri.contains('\0') {
                    return Err("must not contain NUL".into());
                }
                if !uri.contains(':') || uri.starts_with(':') {
                    return Err(format!(
                        "{uri:?} is not a libvirt URI (expected e.g. qemu:///system)"
                    ));
                }
                self.libvirt.uri = uri;
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
    "access",
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
mod tests {
    use super::*;
    use crate::placement::policy::ReservedCpus;

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
            max_concurrent_mutations = 4
            [libvirt]
            uri = "test:///default"
            emulation = "forbid"
            [storage]
            root = "/srv/hv"
            orphan_grace_seconds = 0
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
        assert_eq!(c.api.max_concurrent_mutations, 4);
        assert_eq!(c.libvirt.uri, "test:///default");
        assert_eq!(c.libvirt.emulation, EmulationPolicy::Forbid);
        assert_eq!(c.storage.root, PathBuf::from("/srv/hv"));
        assert_eq!(c.storage.orphan_grace_seconds, 0);
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
            "/etc/x.toml: apii.x: unknown section [apii] (known: api, libvirt, storage, metrics, log, host, placement, network, health, access)"
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
    fn access_keys() {
        use crate::access::Role;
        let c = Config::parse(
            "f",
            r#"
            [access]
            unix_users = { alice = "operator" }
            unix_groups = { hvagent = "reader", ops = "controller" }
            socket_group = "hvagent"
            audit_log = "/var/log/hvagent/audit.log"
            "#,
        )
        .unwrap();
        let a = &c.access;
        assert_eq!(a.unix_users["alice"], Role::Operator);
        assert_eq!(a.unix_groups["hvagent"], Role::Reader);
        assert_eq!(a.unix_groups["ops"], Role::Controller);
        assert_eq!(a.socket_group.as_deref(), Some("hvagent"));
        assert_eq!(
            a.audit_log,
            Some(PathBuf::from("/var/log/hvagent/audit.log"))
        );
        assert_eq!(
            err("[access]\nunix_groups = { x = \"admin\" }\n"),
            "/etc/x.toml: access.unix_groups: x: \"admin\" is not one of \"reader\", \"operator\", \"controller\""
        );
        assert_eq!(
            err("[access]\naudit_log = \"audit.log\"\n"),
            "/etc/x.toml: access.audit_log: \"audit.log\" must be an absolute path"
        );
    }

    #[test]
    fn tcp_listener_needs_all_its_tls_files() {
        use crate::access::Role;
        let c = Config::parse(
            "f",
            r#"
            [api]
            tcp_listen = "[::]:9464"
            tls_cert = "/etc/hvagent/tls/agent.pem"
            tls_key = "/etc/hvagent/tls/agent.key"
            tls_client_ca = "/etc/hvagent/tls/clients-ca.pem"
            [access]
            tls_identities = { "spiffe://cloud.example/cp" = "controller", "monitor" = "reader" }
            "#,
        )
        .unwrap();
        let tcp = c.api.tcp.unwrap();
        assert_eq!(tcp.listen, "[::]:9464".parse().unwrap());
        assert_eq!(
            tcp.files().key,
            ("api.tls_key", PathBuf::from("/etc/hvagent/tls/agent.key"))
        );
        assert_eq!(
            c.access.tls_identities["spiffe://cloud.example/cp"],
            Role::Controller
        );
        assert_eq!(c.access.tls_identities["monitor"], Role::Reader);
        assert_eq!(Config::default().api.tcp, None);

        assert_eq!(
            err("[api]\ntcp_listen = \"0.0.0.0:9464\"\ntls_key = \"/k\"\n"),
            "/etc/x.toml: api.tcp_listen: needs mutual TLS: set api.tls_cert, api.tls_client_ca"
        );
        assert_eq!(
            err("[api]\ntls_cert = \"/c\"\n"),
            "/etc/x.toml: api.tcp_listen: missing: api.tls_cert, api.tls_key and api.tls_client_ca are only used by the TCP listener"
        );
        assert_eq!(
            err("[api]\ntcp_listen = \"host:1\"\n"),
            "/etc/x.toml: api.tcp_listen: \"host:1\" is not an address:port such as 0.0.0.0:9464 or [::]:9464"
        );
        assert_eq!(
            err("[api]\ntls_client_ca = \"ca.pem\"\n"),
            "/etc/x.toml: api.tls_client_ca: \"ca.pem\" must be an absolute path"
        );
    }

    #[test]
    fn health_keys() {
        let c = Config::parse(
            "f",
            r#"
            [health]
            interval_seconds = 2
            min_watch_interval_ms = 500
            window_seconds = 30
            libvirt_timeout_ms = 1500
            repair = true
            memory_available_min_percent = 7.5
            memory_psi_full_max_percent = 20
            cpu_psi_some_max_percent = 95
            disk_free_min_percent = 3
            io_psi_full_max_percent = 40
            "#,
        )
        .unwrap();
        let h = &c.health;
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.min_watch_interval, Duration::from_millis(500));
        assert_eq!(h.window, Duration::from_secs(30));
        assert_eq!(h.libvirt_timeout, Duration::from_millis(1500));
        assert!(h.repair);
        let t = &h.thresholds;
        assert_eq!(t.memory_available_min_percent, 7.5);
        assert_eq!(t.memory_psi_full_max, 20.0);
        assert_eq!(t.cpu_psi_some_max, 95.0);
        assert_eq!(t.disk_free_min_percent, 3.0);
        assert_eq!(t.io_psi_full_max, 40.0);
        assert_eq!(
            err("[health]\ninterval_seconds = 0\n"),
            "/etc/x.toml: health.interval_seconds: must be between 1 and 3600, got 0"
        );
        assert_eq!(
            err("[health]\nrepair = \"yes\"\n"),
            "/etc/x.toml: health.repair: must be true or false, got string"
        );
        assert_eq!(
            err("[health]\ndisk_free_min_percent = 120\n"),
            "/etc/x.toml: health.disk_free_min_percent: must be a percentage between 0 and 100, got 120"
        );
    }

    #[test]
    fn placement_keys() {
        let c = Config::parse(
            "f",
            r#"
            [placement]
            reserved_cpus = "0,16"
            reserved_memory_mib = 4096
            dedicated_cpus = "2-15"
            shared_cpus = "17-31"
            crowded_ratio = 16
            hugepages = { C = "1G", T = "2M", V = "none" }
            overhead_fixed_mib = 200
            overhead_per_vcpu_mib = 4
            overhead_ram_permille = 5
            "#,
        )
        .unwrap();
        let p = &c.placement;
        assert_eq!(p.reserved_cpus, ReservedCpus::List(vec![0, 16]));
        assert_eq!(p.reserved_memory_mib, 4096);
        assert_eq!(p.dedicated_cpus, Some((2..=15).collect()));
        assert_eq!(p.shared_cpus, Some((17..=31).collect()));
        assert_eq!(p.crowded_ratio, 16);
        assert_eq!(
            p.hugepages,
            std::collections::BTreeMap::from([('C', 1 << 20), ('T', 2048)])
        );
        assert_eq!(
            (
                p.overhead.fixed_mib,
                p.overhead.per_vcpu_mib,
                p.overhead.ram_permille
            ),
            (200, 4, 5)
        );
        let none = Config::parse("f", "[placement]\nreserved_cpus = \"\"\n").unwrap();
        assert_eq!(none.placement.reserved_cpus, ReservedCpus::List(vec![]));

        assert_eq!(
            err("[placement]\nreserved_cpus = \"0-x\"\n"),
            "/etc/x.toml: placement.reserved_cpus: bad cpulist \"0-x\": not a number"
        );
        assert_eq!(
            err("[placement]\ndedicated_cpus = \",\"\n"),
            "/etc/x.toml: placement.dedicated_cpus: must name at least one CPU"
        );
        assert_eq!(
            err("[placement]\ncrowded_ratio = 0\n"),
            "/etc/x.toml: placement.crowded_ratio: must be between 1 and 64, got 0"
        );
        assert_eq!(
            err("[placement]\nhugepages = { X = \"2M\" }\n"),
            "/etc/x.toml: placement.hugepages: \"X\" is not a CPU type letter (L, V, T, C)"
        );
        assert_eq!(
            err("[placement]\nhugepages = { C = \"3M\" }\n"),
            "/etc/x.toml: placement.hugepages: C: \"3M\" is not a hugepage size (a power of two above 4K)"
        );
        assert_eq!(
            err("[placement]\nhugepages = \"2M\"\n"),
            "/etc/x.toml: placement.hugepages: must be a table such as { C = \"1G\", T = \"2M\" }, got string"
        );
        assert_eq!(
            err("[placement]\noverhead_ram_permille = 1001\n"),
            "/etc/x.toml: placement.overhead_ram_permille: must be between 0 and 1000, got 1001"
        );
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
