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
            boot_id_path = "/tmp/boot_id"
            [guests]
            resume_on_boot = false
            resume_concurrency = 8
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
    assert_eq!(c.host.boot_id_path, PathBuf::from("/tmp/boot_id"));
    assert_eq!(
        c.guests,
        ResumeSettings {
            on_boot: false,
            concurrency: 8
        }
    );
}

#[test]
fn guests_after_a_reboot_defaults_and_rules() {
    let c = Config::default();
    assert!(c.guests.on_boot);
    assert_eq!(c.guests.concurrency, 2);
    assert_eq!(
        c.host.boot_id_path,
        PathBuf::from("/proc/sys/kernel/random/boot_id")
    );
    assert_eq!(
        err("[guests]\nresume_on_boot = \"yes\"\n"),
        "/etc/x.toml: guests.resume_on_boot: must be true or false, got string"
    );
    assert_eq!(
        err("[guests]\nresume_concurrency = 0\n"),
        "/etc/x.toml: guests.resume_concurrency: must be between 1 and 64, got 0"
    );
    assert_eq!(
        err("[host]\nboot_id_path = \"boot_id\"\n"),
        "/etc/x.toml: host.boot_id_path: \"boot_id\" must be an absolute path"
    );
}

/// The migration identity is three files or none; the address is an IP address (IPv6 in
/// brackets in the migrate URI); the partition a cgroup path.
#[test]
fn migration_keys() {
    let c = Config::parse(
        "f",
        "[migration]\ntls_cert = \"/c.pem\"\ntls_key = \"/c.key\"\nserver_ca = \"/ca.pem\"\nlibvirt_uri = \"qemu+tcp://10.0.0.2/system\"\naddress = \"fd00::2\"\n[libvirt]\npartition = \"/node2\"\n",
    )
    .unwrap();
    let files = c.migration.client_files().unwrap();
    assert_eq!(files.ca, ("migration.server_ca", "/ca.pem".into()));
    let settings = c.migration.settings(c.libvirt.partition.clone());
    assert_eq!(settings.address.as_deref(), Some("[fd00::2]"));
    assert_eq!(settings.partition.as_deref(), Some("/node2"));
    assert_eq!(Config::default().migration.client_files(), None);
    assert_eq!(
        err("[migration]\ntls_cert = \"/c.pem\"\n"),
        "/etc/x.toml: migration.tls_cert: needs all three TLS files: set migration.tls_key, migration.server_ca"
    );
    assert_eq!(
        err("[migration]\naddress = \"node2\"\n"),
        "/etc/x.toml: migration.address: \"node2\" is not an IP address such as 10.0.0.2 or fd00::2"
    );
    assert_eq!(
        err("[libvirt]\npartition = \"node2\"\n"),
        "/etc/x.toml: libvirt.partition: \"node2\" is not a cgroup partition (expected e.g. /machine)"
    );
}

#[test]
fn errors_name_file_key_and_rule() {
    assert_eq!(
        err("[api]\nunix_sockets = \"/x\"\n"),
        "/etc/x.toml: api.unix_sockets: unknown key"
    );
    assert_eq!(
        err("[apii]\nx = 1\n"),
        "/etc/x.toml: apii.x: unknown section [apii] (known: api, libvirt, storage, metrics, log, host, placement, network, health, guests, access, placement_api, migration)"
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

#[test]
fn import_limit_keys() {
    let d = Config::default().storage;
    assert_eq!(d.imports.max_bytes, 64 << 30);
    assert_eq!(d.imports.deadline, Duration::from_secs(3600));
    assert_eq!(d.imports.min_free_bytes, 2 << 30);
    assert_eq!(d.max_imports, 2);
    let c = Config::parse(
        "f",
        "[storage]\nimport_max_bytes = 10485760\nimport_deadline_secs = 3\nimport_min_free_bytes = 0\nmax_imports = 1\n",
    )
    .unwrap();
    assert_eq!(
        c.storage.imports,
        ImportLimits {
            max_bytes: 10 << 20,
            deadline: Duration::from_secs(3),
            min_free_bytes: 0,
        }
    );
    assert_eq!(c.storage.max_imports, 1);
    for (text, message) in [
        (
            "import_max_bytes = 1000",
            "storage.import_max_bytes: must be between 1048576 and 1125899906842624, got 1000",
        ),
        (
            "import_deadline_secs = 0",
            "storage.import_deadline_secs: must be between 1 and 604800, got 0",
        ),
        (
            "import_min_free_bytes = -1",
            "storage.import_min_free_bytes: must be between 0 and 1125899906842624, got -1",
        ),
        (
            "max_imports = 0",
            "storage.max_imports: must be between 1 and 64, got 0",
        ),
        (
            "max_imports = \"2\"",
            "storage.max_imports: must be an integer, got string",
        ),
    ] {
        assert_eq!(
            err(&format!("[storage]\n{text}\n")),
            format!("/etc/x.toml: {message}")
        );
    }
}

#[test]
fn placement_api_keys() {
    use crate::placement_api::{Auth, Settings};
    assert_eq!(Config::default().placement_api, None);
    let c = Config::parse(
        "f",
        r#"
            [placement_api]
            url = "http://placement.example:8778/"
            auth = "noauth"
            token = "admin"
            provider_name = "node-1"
            interval_seconds = 5
            remove_unclaimed = true
            "#,
    )
    .unwrap();
    assert_eq!(
        c.placement_api,
        Some(Settings {
            url: "http://placement.example:8778".into(),
            auth: Auth::NoAuth {
                token: "admin".into()
            },
            provider_name: Some("node-1".into()),
            interval: Duration::from_secs(5),
            remove_unclaimed: true,
        })
    );
    let k = Config::parse(
        "f",
        r#"
            [placement_api]
            url = "https://placement.example/placement"
            auth = "keystone"
            auth_url = "https://keystone.example:5000/v3"
            credential_file = "/etc/hvagent/placement-credential.toml"
            "#,
    )
    .unwrap()
    .placement_api
    .unwrap();
    assert_eq!(
        k.auth,
        Auth::Keystone {
            auth_url: "https://keystone.example:5000/v3".into(),
            credential_file: PathBuf::from("/etc/hvagent/placement-credential.toml"),
        }
    );
    assert_eq!(
        (k.interval, k.remove_unclaimed, k.provider_name),
        (Duration::from_secs(300), false, None)
    );
}

#[test]
fn placement_api_errors_name_the_key_and_the_rule() {
    let section = |body: &str| err(&format!("[placement_api]\n{body}\n"));
    assert_eq!(
        section("token = \"admin\""),
        "/etc/x.toml: placement_api.url: missing: placement_api.token is only used when url is set"
    );
    assert_eq!(
        section("url = \"http://p\""),
        "/etc/x.toml: placement_api.auth: missing: \"noauth\" (with token) or \"keystone\" (with auth_url and credential_file)"
    );
    assert_eq!(
        section("url = \"http://p\"\nauth = \"noauth\""),
        "/etc/x.toml: placement_api.token: missing: auth = \"noauth\" needs a token (\"admin\" for Placement's noauth2)"
    );
    assert_eq!(
        section("url = \"http://p\"\nauth = \"keystone\"\nauth_url = \"http://k\""),
        "/etc/x.toml: placement_api.auth: \"keystone\" needs credential_file"
    );
    assert_eq!(
        section("url = \"http://p\"\nauth = \"keystone\"\ntoken = \"t\""),
        "/etc/x.toml: placement_api.token: only used with auth = \"noauth\"; keystone tokens come from the credential"
    );
    assert_eq!(
        section("url = \"http://p\"\nauth = \"noauth\"\ntoken = \"t\"\nauth_url = \"http://k\""),
        "/etc/x.toml: placement_api.auth: \"noauth\" takes token only; auth_url and credential_file are for \"keystone\""
    );
    assert_eq!(
        section("url = \"ftp://p\""),
        "/etc/x.toml: placement_api.url: \"ftp://p\" is not an http:// or https:// URL with a host"
    );
    assert!(
        section("url = \"not a url\"")
            .starts_with("/etc/x.toml: placement_api.url: \"not a url\" is not a URL: ")
    );
    assert_eq!(
        section("url = \"http://p/?x=1\""),
        "/etc/x.toml: placement_api.url: \"http://p/?x=1\" must not have a query or fragment"
    );
    assert_eq!(
        section("auth = \"password\""),
        "/etc/x.toml: placement_api.auth: \"password\" is not one of \"noauth\", \"keystone\""
    );
    assert_eq!(
        section("token = \"ad min\""),
        "/etc/x.toml: placement_api.token: must be non-empty printable ASCII without spaces"
    );
    assert_eq!(
        section("credential_file = \"cred\""),
        "/etc/x.toml: placement_api.credential_file: \"cred\" must be an absolute path"
    );
    assert_eq!(
        section("provider_name = \"\""),
        "/etc/x.toml: placement_api.provider_name: must not be empty"
    );
    assert_eq!(
        section(&format!("provider_name = \"{}\"", "n".repeat(201))),
        "/etc/x.toml: placement_api.provider_name: must be at most 200 characters"
    );
    assert_eq!(
        section("interval_seconds = 0"),
        "/etc/x.toml: placement_api.interval_seconds: must be between 1 and 86400, got 0"
    );
    assert_eq!(
        section("remove_unclaimed = 1"),
        "/etc/x.toml: placement_api.remove_unclaimed: must be true or false, got integer"
    );
    assert_eq!(
        section("urll = \"http://p\""),
        "/etc/x.toml: placement_api.urll: unknown key"
    );
}

/// Where the QEMU pid files are: libvirt's run directory unless set, an absolute path.
#[test]
fn qemu_pid_dir_key() {
    assert_eq!(
        Config::default().health.qemu_pid_dir,
        std::path::PathBuf::from("/run/libvirt/qemu")
    );
    let c = Config::parse(
        "f",
        "[libvirt]\nqemu_pid_dir = \"/proc/42/root/run/libvirt/qemu\"\n",
    )
    .unwrap();
    assert_eq!(
        c.health.qemu_pid_dir,
        std::path::PathBuf::from("/proc/42/root/run/libvirt/qemu")
    );
    assert!(
        err("[libvirt]\nqemu_pid_dir = \"run/libvirt\"\n")
            .starts_with("/etc/x.toml: libvirt.qemu_pid_dir: "),
        "{}",
        err("[libvirt]\nqemu_pid_dir = \"run/libvirt\"\n")
    );
}
