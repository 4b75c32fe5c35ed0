//! The operators' kit against real parts: the Prometheus rules under `promtool`, their metric
//! names and the Grafana dashboard's against a real scrape of a real agent running a TCG guest,
//! and the Debian package built by `make deb`'s script, checked by `lintian` and installed,
//! upgraded, removed and purged with `dpkg` on this machine.
//!
//! The package test installs into /usr/bin, /etc/hvagent and /var/lib/hvagent. No other test
//! runs `hvagent` or `hvctl` from PATH (they run target/<profile>/ binaries), and without
//! systemd the package starts nothing, so it can run beside them. It refuses to touch a machine
//! where any of those paths, or an hvagent package, already exist, and purges what it installed
//! also when it fails halfway.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Agent, Cleanup, free_port, http_get, import_testguest, runtime, wait_for};
use hvagent_proto::v1 as pb;

fn docs() -> PathBuf {
    common::repo_root().join("docs")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        common::stdout(&out),
        common::stderr(&out)
    );
    common::stdout(&out)
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the tools of a check are here. `make test` installs them (it runs as root): as root
/// a missing one fails the test rather than passing it unchecked; otherwise the check is
/// skipped, saying why.
fn tools(programs: &[(&str, &str)], check: &str) -> bool {
    let missing: Vec<String> = programs
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(program, package)| format!("{program} (Debian package {package})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    assert!(
        !nix::unistd::geteuid().is_root(),
        "{check} needs {missing}: make test installs them"
    );
    println!("skipped {check}: not root, and {missing} missing");
    false
}

// ---- the rules file, read ------------------------------------------------------------------

/// One rule of docs/prometheus/alerts.yml.
#[derive(Debug)]
struct Rule {
    group: String,
    /// `alert` or `record`, and its name.
    kind: &'static str,
    name: String,
    expr: String,
    severity: Option<String>,
    runbook_url: Option<String>,
}

/// The rules, read from the file's own layout (groups, rules, `expr:` inline or as a `|`
/// block). `promtool check rules` counts them too: the counts must agree, so a rule this reader
/// missed fails the test instead of going unchecked.
fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(docs().join("prometheus/alerts.yml")).expect("alerts.yml");
    let mut rules: Vec<Rule> = Vec::new();
    let mut group = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if let Some(name) = t.strip_prefix("- name: ") {
            group = name.to_string();
        } else if let Some((kind, name)) = t
            .strip_prefix("- alert: ")
            .map(|n| ("alert", n))
            .or_else(|| t.strip_prefix("- record: ").map(|n| ("record", n)))
        {
            rules.push(Rule {
                group: group.clone(),
                kind,
                name: name.to_string(),
                expr: String::new(),
                severity: None,
                runbook_url: None,
            });
        } else if let Some(expr) = t.strip_prefix("expr: ") {
            let rule = rules.last_mut().expect("expr: outside a rule");
            if expr == "|" {
                while let Some(next) = lines.peek() {
                    let n = next.trim_start();
                    if n.is_empty() || next.len() - n.len() <= indent {
                        break;
                    }
                    rule.expr.push_str(n);
                    rule.expr.push('\n');
                    lines.next();
                }
            } else {
                rule.expr = expr.to_string();
            }
        } else if let Some(s) = t.strip_prefix("severity: ") {
            rules.last_mut().expect("severity outside a rule").severity = Some(s.to_string());
        } else if let Some(u) = t.strip_prefix("runbook_url: ") {
            rules
                .last_mut()
                .expect("runbook outside a rule")
                .runbook_url = Some(u.to_string());
        }
    }
    rules
}

// ---- PromQL, read ---------------------------------------------------------------------------

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];

/// Label matchers of a selector: (label, value).
type Matchers = Vec<(String, String)>;

/// The metric names an expression selects, with the label matchers (`name`, `value`) each
/// selector carries: identifiers that are not functions (followed by `(`), aggregations,
/// keywords, label names in `by (...)` lists or in `{...}`, numbers, durations or strings.
fn selectors(expr: &str) -> Vec<(String, Matchers)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out: Vec<(String, Matchers)> = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let string_end = |i: usize| {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = string_end(i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // A selector without a name (`{__name__=~...}`) is not used here.
            i = matchers(&chars, i).1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    while i < chars.len() && chars[i] != ')' {
                        i += 1;
                    }
                    i += 1;
                }
            } else if AGGREGATIONS.contains(&word.as_str())
                || OPERATORS.contains(&word.as_str())
                || chars.get(next) == Some(&'(')
            {
                // An aggregation, an operator or a function call.
            } else if chars.get(next) == Some(&'{') {
                let (found, end) = matchers(&chars, next);
                out.push((word, found));
                i = end;
            } else {
                out.push((word, Vec::new()));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The matchers of `{name="value", ...}` starting at `chars[open]`, and the index after `}`.
fn matchers(chars: &[char], open: usize) -> (Matchers, usize) {
    let mut i = open + 1;
    let mut found = Vec::new();
    let mut name = String::new();
    while i < chars.len() && chars[i] != '}' {
        let c = chars[i];
        if c == '"' {
            let mut value = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            found.push((
                name.trim()
                    .trim_end_matches(['=', '!', '~'])
                    .trim()
                    .to_string(),
                value,
            ));
            name.clear();
        } else if c != ',' {
            name.push(c);
        }
        i += 1;
    }
    (found, i + 1)
}

#[test]
fn promql_reader_finds_selectors_only() {
    let got = selectors(
        "sum without (cpu, mode) (rate(a_total{mode=\"steal\", x=~\"a|b\"}[5m])) / count by (i) (b{c=\"d\"} == bool 0) or vector(0) - time() < 14 * 86400 and on(instance) c:rec offset 5m",
    );
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a_total", "b", "c:rec"]);
    assert_eq!(
        got[0].1,
        [
            ("mode".to_string(), "steal".to_string()),
            ("x".to_string(), "a|b".to_string())
        ]
    );
}

// ---- 1. promtool --------------------------------------------------------------------------

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    if !tools(&[("promtool", "prometheus")], "the rules check") {
        return;
    }
    let dir = docs().join("prometheus");
    let out = Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(out.status.success(), "promtool check rules: {text}");
    let rules = rules();
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "promtool counts other rules than this test reads ({}): {text}",
        rules.len()
    );
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    println!("{}", common::stdout(&out));
}

/// The alerts the issue asks for, each with a severity, a runbook section that exists, and a
/// unit test in alerts_test.yml that fires it.
#[test]
fn every_alert_has_a_severity_a_runbook_and_a_unit_test() {
    let rules = rules();
    let alerts: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r.kind == "alert")
        .map(|r| r.name.as_str())
        .collect();
    for wanted in [
        "HvagentDown",
        "HvagentNodeNotReady",
        "HvagentLibvirtUnreachable",
        "HvagentPinningViolation",
        "HvagentGuestQuarantined",
        "HvagentHealthSamplesStale",
        "HvagentPlacementSyncFailing",
        "HvagentCertificateExpiresSoon",
    ] {
        assert!(alerts.contains(wanted), "no alert {wanted}");
    }
    let operations = std::fs::read_to_string(docs().join("operations.md")).expect("operations.md");
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#').trim()))
        .collect();
    let tests = std::fs::read_to_string(docs().join("prometheus/alerts_test.yml"))
        .expect("alerts_test.yml");
    for r in rules.iter().filter(|r| r.kind == "alert") {
        let severity = r.severity.as_deref().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{}: severity {severity:?}",
            r.name
        );
        let url = r.runbook_url.as_deref().unwrap_or_default();
        let anchor = url.strip_prefix("docs/operations.md#").unwrap_or_else(|| {
            panic!(
                "{}: runbook_url {url:?} is not docs/operations.md#...",
                r.name
            )
        });
        assert!(
            anchors.contains(anchor),
            "{}: no section #{anchor} in operations.md",
            r.name
        );
        assert!(
            tests.contains(&format!(
                "alertname: {}\n        exp_alerts:\n          - exp_labels",
                r.name
            )),
            "{}: no test in alerts_test.yml where it fires",
            r.name
        );
    }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

// ---- 2. names against a real scrape --------------------------------------------------------

/// Series Prometheus writes itself for every target (not the agent's).
const PROMETHEUS_SERIES: &[&str] = &["up", "scrape_duration_seconds"];

/// The group of alerts.yml on the blackbox exporter's probe of the TLS listener (the agent
/// does not export its certificate's expiry), and the only names it may use.
const BLACKBOX_GROUP: &str = "hvagent-tls";
const BLACKBOX_SERIES: &[&str] = &["probe_ssl_earliest_cert_expiry"];

/// Every metric name the rules and the dashboard select, with where it is used.
fn used_names() -> BTreeMap<String, Vec<(String, Matchers)>> {
    let rules = rules();
    let recorded: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r.kind == "record")
        .map(|r| r.name.as_str())
        .collect();
    let mut used: BTreeMap<String, Vec<(String, Matchers)>> = BTreeMap::new();
    let mut add = |what: String, expr: &str| {
        let found = selectors(expr);
        assert!(!found.is_empty(), "{what}: no metric in {expr:?}");
        for (name, matchers) in found {
            if name.contains(':') {
                assert!(
                    recorded.contains(name.as_str()),
                    "{what}: {name} is recorded by no rule"
                );
                continue;
            }
            used.entry(name).or_default().push((what.clone(), matchers));
        }
    };
    for r in &rules {
        if r.group == BLACKBOX_GROUP {
            for (name, _) in selectors(&r.expr) {
                assert!(
                    BLACKBOX_SERIES.contains(&name.as_str()),
                    "{}: {name}",
                    r.name
                );
            }
            continue;
        }
        add(format!("alerts.yml {}", r.name), &r.expr);
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(docs().join("grafana/hvagent.json")).expect("hvagent.json"),
    )
    .expect("the dashboard is JSON");
    let mut targets = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target's expr");
            add(format!("dashboard panel {:?}", panel["title"]), expr);
            targets += 1;
        }
    }
    assert!(targets >= 20, "only {targets} dashboard queries");
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            // Grafana's label_values(SELECTOR, LABEL): the selector is PromQL.
            let selector = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map_or(q, |(s, _)| s);
            add(format!("dashboard variable {:?}", var["name"]), selector);
        }
    }
    used
}

/// Metric families in a scrape: the names of its `# TYPE` lines (a family with no series yet,
/// such as a counter of repairs never made, is still declared), checked against the samples'
/// names so that the two agree.
fn families(scrape: &str) -> BTreeSet<String> {
    let mut declared = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().expect("a family name");
            declared.insert(name.to_string());
        } else if !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                declared.contains(name),
                "sample of an undeclared family: {line}"
            );
        }
    }
    declared
}

#[test]
fn every_metric_of_the_rules_and_the_dashboard_is_in_a_real_scrape() {
    let used = used_names();
    let port = free_port();
    let agent = Agent::configure_tcg(
        "",
        "[health]\ninterval_seconds = 1\nwindow_seconds = 5\ndisk_free_min_percent = 0\n",
    )
    .with_metrics_port(port)
    .spawn();
    let uuid = "00000000-0000-4000-8000-00000000c1a0";
    let _cleanup = Cleanup(vec![uuid.to_string()]);
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket)
            .await
            .expect("connect");
        import_testguest(channel.clone()).await;
        pb::vm_service_client::VmServiceClient::new(channel)
            .create(pb::CreateVmRequest {
                uuid: uuid.into(),
                name: "operators-kit-scraped".into(),
                flavor: "SCS-1Vi-0.5u".into(),
                image: "testguest".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create: {e:?}"));
    });
    // Wait for the guest's own figures (steal over the window needs two samples of it).
    let scrape = wait_for(
        Duration::from_secs(60),
        "the guest's vCPU steal in a scrape",
        || {
            let answer = http_get(port, "/metrics");
            let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
            body.lines()
                .any(|l| l.starts_with("hvagent_guest_vcpu_steal_ratio{") && l.contains(uuid))
                .then_some(body)
        },
    );
    let exported = families(&scrape);
    let mut missing = Vec::new();
    for (name, uses) in &used {
        if PROMETHEUS_SERIES.contains(&name.as_str()) {
            continue;
        }
        if !exported.contains(name) {
            missing.push(format!("{name} (used by {})", uses[0].0));
        }
    }
    assert!(
        missing.is_empty(),
        "not in a real scrape: {missing:?}\n{scrape}"
    );
    // The conditions the alerts select by name are the ones the agent writes (PlacementSync
    // only exists with [placement_api] url: docs/health.md).
    let conditions: BTreeSet<&str> = used["hvagent_node_condition"]
        .iter()
        .flat_map(|(_, m)| {
            m.iter()
                .filter(|(k, _)| k == "condition")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    for c in conditions.iter().filter(|c| **c != "PlacementSync") {
        assert!(
            scrape.contains(&format!("hvagent_node_condition{{condition=\"{c}\",")),
            "condition {c} is not in a scrape"
        );
    }
    assert!(conditions.contains("Ready") && conditions.contains("LibvirtDisconnected"));
    println!("{} metric names checked against the scrape", used.len());
}

// ---- 3. the Debian package -----------------------------------------------------------------

/// Paths the package owns or makes on install; the test runs only where none exists yet.
const PACKAGE_PATHS: &[&str] = &[
    "/usr/bin/hvagent",
    "/usr/bin/hvctl",
    "/etc/hvagent",
    "/var/lib/hvagent",
];
/// What deb-systemd-helper leaves for an enabled or masked unit.
const UNIT_STATE: &[&str] = &[
    "/etc/systemd/system/multi-user.target.wants/hvagent.service",
    "/etc/systemd/system/hvagent.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/hvagent.service.dsh-also",
    "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/hvagent.service",
    "/var/lib/systemd/deb-systemd-helper-masked/hvagent.service",
];

/// Whether `path` exists, a dangling symlink (an enabled unit whose file is gone) included.
fn present(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn package_status() -> Option<String> {
    let out = run("dpkg-query", &["-W", "-f=${Status} ${Version}", "hvagent"]);
    out.status
        .success()
        .then(|| common::stdout(&out))
        .filter(|s| !s.starts_with("unknown"))
}

/// Purges the package and what the test made, also when the test fails halfway.
struct Installed {
    made_group: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if package_status().is_some() {
            let out = run("dpkg", &["--purge", "hvagent"]);
            if !out.status.success() {
                eprintln!("cleanup: dpkg --purge hvagent: {}", common::stderr(&out));
            }
        }
        // Guest files the test put there, which purge rightly keeps.
        let _ = std::fs::remove_dir_all("/var/lib/hvagent");
        if self.made_group {
            let _ = run("groupdel", &["hvagent"]);
        }
    }
}

fn build_package(revision: &str) -> PathBuf {
    let script = common::repo_root().join("packaging/deb/build.sh");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = std::time::Instant::now();
    let out = Command::new(&script)
        .env("CARGO", cargo)
        .env("DEB_REVISION", revision)
        // The binaries the tests run already: the packaging is checked, not the optimiser
        // (`make deb` builds with the `deb` profile).
        .env("DEB_PROFILE", "dev")
        .stdin(Stdio::null())
        .output()
        .expect("packaging/deb/build.sh");
    assert!(
        out.status.success(),
        "build.sh: {}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    let deb = common::stdout(&out)
        .lines()
        .last()
        .expect("the .deb's path")
        .to_string();
    println!("built {deb} in {:.0} s", started.elapsed().as_secs_f64());
    common::repo_root().join(deb)
}

fn mode(path: &str) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn the_debian_package_installs_upgrades_removes_and_purges() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: installing a package needs root");
        return;
    }
    let needed = [
        ("dpkg", "dpkg"),
        ("dpkg-deb", "dpkg"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("lintian", "lintian"),
        ("man", "man-db"),
        ("readelf", "binutils"),
    ];
    tools(&needed, "the package test");
    if let Some(status) = package_status() {
        println!(
            "skipped: an hvagent package is on this machine already ({status}); not touching it"
        );
        return;
    }
    if let Some(p) = PACKAGE_PATHS.iter().chain(UNIT_STATE).find(|p| present(p)) {
        println!("skipped: {p} exists; the package would take it over");
        return;
    }
    let made_group = run("getent", &["group", "hvagent"]).status.code() == Some(2);
    let guard = Installed { made_group };

    let first = build_package("1");
    let out = run(
        "lintian",
        &["--fail-on", "error", first.to_str().expect("path")],
    );
    let report = format!("{}{}", common::stdout(&out), common::stderr(&out));
    println!("lintian:\n{report}");
    assert!(
        out.status.success() && !report.contains("\nE: ") && !report.starts_with("E: "),
        "lintian: {report}"
    );
    // What the agent runs on: libvirt's daemon and QEMU, at least the versions it is tested
    // with (packaging/deb/control.in).
    let control = ok(
        "dpkg-deb",
        &["--field", first.to_str().expect("path"), "Depends"],
    );
    for depends in [
        "libvirt-daemon-system (>= 9.0.0)",
        "qemu-system-x86 (>= 1:7.2)",
        "qemu-utils (>= 1:7.2)",
    ] {
        assert!(
            control.contains(depends),
            "Depends lacks {depends}: {control}"
        );
    }

    ok("dpkg", &["-i", first.to_str().expect("path")]);
    assert!(
        package_status().is_some_and(|s| s == "install ok installed 0.1.0-1"),
        "{:?}",
        package_status()
    );
    let version = ok("/usr/bin/hvagent", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("hvagent {}", env!("CARGO_PKG_VERSION"))
    );
    let help = ok("/usr/bin/hvctl", &["--help"]);
    assert!(help.contains("Usage: hvctl"), "{help}");
    // man-db reads the installed pages (a plain pager: no terminal here).
    let man = Command::new("man")
        .args(["hvctl"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man (man-db; make test installs it)");
    let page = common::stdout(&man);
    assert!(
        man.status.success() && page.contains("hvctl") && page.contains("--socket"),
        "man hvctl: {page}{}",
        common::stderr(&man)
    );
    let toml_page = ok("man", &["-P", "cat", "5", "hvagent.toml"]);
    assert!(
        toml_page.contains("unix_socket") && toml_page.contains("reconcile_seconds"),
        "{toml_page}"
    );
    ok("man", &["-P", "cat", "8", "hvagent"]);

    // Files and modes.
    let listed: BTreeSet<String> = ok("dpkg", &["-L", "hvagent"])
        .lines()
        .map(str::to_string)
        .collect();
    for path in [
        "/usr/bin/hvagent",
        "/usr/bin/hvctl",
        "/lib/systemd/system/hvagent.service",
        "/etc/hvagent/hvagent.toml",
        "/usr/lib/tmpfiles.d/hvagent.conf",
        "/usr/share/man/man1/hvctl.1.gz",
        "/usr/share/man/man1/hvctl-vm-create.1.gz",
        "/usr/share/man/man8/hvagent.8.gz",
        "/usr/share/man/man5/hvagent.toml.5.gz",
        "/usr/share/bash-completion/completions/hvctl",
        "/usr/share/zsh/vendor-completions/_hvctl",
        "/usr/share/fish/vendor_completions.d/hvctl.fish",
        "/usr/share/doc/hvagent/copyright",
        "/usr/share/doc/hvagent/prometheus/alerts.yml",
        "/usr/share/doc/hvagent/grafana/hvagent.json",
    ] {
        assert!(listed.contains(path), "dpkg -L lacks {path}");
    }
    // The completions are hvctl's own (generated from its command line), not empty files.
    for completion in [
        "/usr/share/bash-completion/completions/hvctl",
        "/usr/share/zsh/vendor-completions/_hvctl",
        "/usr/share/fish/vendor_completions.d/hvctl.fish",
    ] {
        let text = std::fs::read_to_string(completion).expect("completion file");
        assert!(
            text.contains("hvctl") && text.contains("attach-network"),
            "{completion}: {text}"
        );
    }
    for bin in ["/usr/bin/hvagent", "/usr/bin/hvctl"] {
        assert_eq!(mode(bin), (0o755, 0, 0), "{bin}");
        let sections = ok("readelf", &["-S", "-W", bin]);
        assert!(!sections.contains(".symtab"), "{bin} is not stripped");
    }
    assert_eq!(mode("/etc/hvagent/hvagent.toml"), (0o644, 0, 0));
    assert_eq!(mode("/lib/systemd/system/hvagent.service"), (0o644, 0, 0));
    assert_eq!(mode("/var/lib/hvagent").0, 0o711, "the storage root");
    assert!(
        run("getent", &["group", "hvagent"]).status.success(),
        "no group hvagent"
    );
    // Enabled as dh_installsystemd does it, even without systemd running (nothing started).
    assert!(
        present("/etc/systemd/system/multi-user.target.wants/hvagent.service"),
        "the unit is not enabled"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/hvagent.service").expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/hvagent --config /etc/hvagent/hvagent.toml"),
        "{unit}"
    );
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", "hvagent"]);
    assert!(
        conffiles.contains("/etc/hvagent/hvagent.toml"),
        "{conffiles}"
    );
    // The package's settings (hvagent-packaging's unit tests parse the whole file).
    let conf = std::fs::read_to_string("/etc/hvagent/hvagent.toml").expect("config");
    assert!(conf.contains("\nsocket_group = \"hvagent\""), "{conf}");

    // The operator edits the config; an upgrade keeps it, without asking (stdin is closed).
    let edited = format!("{conf}\n# edited by operators_kit\n");
    std::fs::write("/etc/hvagent/hvagent.toml", &edited).expect("edit config");
    let second = build_package("2");
    ok("dpkg", &["-i", second.to_str().expect("path")]);
    assert!(
        package_status().is_some_and(|s| s == "install ok installed 0.1.0-2"),
        "{:?}",
        package_status()
    );
    assert_eq!(
        std::fs::read_to_string("/etc/hvagent/hvagent.toml").expect("config"),
        edited
    );

    // Remove: binaries go, the config stays.
    ok("dpkg", &["-r", "hvagent"]);
    assert!(!Path::new("/usr/bin/hvagent").exists() && !Path::new("/usr/bin/hvctl").exists());
    assert_eq!(
        std::fs::read_to_string("/etc/hvagent/hvagent.toml").expect("config kept"),
        edited
    );
    assert!(
        package_status().is_some_and(|s| s.starts_with("deinstall ok config-files")),
        "{:?}",
        package_status()
    );

    // Purge: the config and the agent's own state go; a guest's disk stays, and purge says so.
    std::fs::write("/var/lib/hvagent/boot_id", "x\n").expect("boot id");
    std::fs::create_dir_all("/var/lib/hvagent/images").expect("images dir");
    std::fs::create_dir_all("/var/lib/hvagent/vms/operators-kit").expect("guest dir");
    std::fs::write(
        "/var/lib/hvagent/vms/operators-kit/disk.qcow2",
        "guest data",
    )
    .expect("disk");
    let purge = run("dpkg", &["--purge", "hvagent"]);
    assert!(purge.status.success(), "{}", common::stderr(&purge));
    assert!(
        common::stderr(&purge).contains("kept /var/lib/hvagent"),
        "{}",
        common::stderr(&purge)
    );
    assert!(package_status().is_none(), "{:?}", package_status());
    assert!(
        !Path::new("/etc/hvagent").exists(),
        "purge leaves /etc/hvagent"
    );
    assert!(
        Path::new("/var/lib/hvagent/vms/operators-kit/disk.qcow2").exists(),
        "purge removed a guest disk"
    );
    assert!(
        !Path::new("/var/lib/hvagent/boot_id").exists(),
        "purge keeps the agent's boot id"
    );
    assert!(
        !Path::new("/var/lib/hvagent/images").exists(),
        "purge keeps an empty images dir"
    );
    for p in UNIT_STATE {
        assert!(!present(p), "purge leaves {p}");
    }
    drop(guard);
    for p in PACKAGE_PATHS {
        assert!(!present(p), "{p} is left behind");
    }
}
