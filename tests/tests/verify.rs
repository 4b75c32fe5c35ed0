//! `hvctl verify` end to end: the real hvctl against a real agent, probe guests booted under
//! TCG from the test image, their consoles read back. One run where every structural promise
//! holds, and one run per promise broken on purpose behind the agent's back (a guest CPU
//! without rdrand, a root disk shrunk below the name, a dedicated core shared by a manual
//! re-pin, a shared pool left past its ratio by an agent config change) that must come out
//! `violated` for exactly that promise.
//!
//! The probe flavors carry `i` (and `u`): a node with an unmitigated CPU vulnerability serves
//! only `i` flavors and one without confirmed ECC only `u` ones, and these tests must pass on any
//! host. Admission of flavors without them is tested on fixture trees (placement.rs).

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, Cleanup, code, stderr, stdout, tool, virsh, wait_for};
use serde_json::Value;

/// Both host CPUs for guests: a `C` guest and the shared pool fit side by side.
const NO_RESERVE: &str = "[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 512\n";

/// Short runs: the timing verdicts are "not verifiable" under TCG anyway.
const QUICK: [&str; 8] = [
    "--samples",
    "2",
    "--window-ms",
    "1000",
    "--iops-ms",
    "500",
    "--boot-timeout",
    "600",
];

fn agent(extra: &str) -> Agent {
    let agent = Agent::start(extra);
    let image = common::repo_root().join("images/out/testguest.qcow2");
    let out = agent.hvctl(&[
        "image",
        "import",
        image.to_str().unwrap(),
        "--name",
        "hvagent-probe",
    ]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    agent
}

fn spawn_verify(agent: &Agent, args: &[&str]) -> Child {
    Command::new(common::bin("hvctl"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["--output", "json", "verify"])
        .args(QUICK)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hvctl verify")
}

/// Waits for `hvctl verify` and returns its exit code, parsed report and progress lines.
fn finish(child: Child) -> (i32, Value, String) {
    let out = child.wait_with_output().expect("hvctl verify");
    let err = stderr(&out);
    let report = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("verify printed no JSON report ({e}); stderr:\n{err}"));
    (code(&out.status), report, err)
}

fn flavor<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["flavors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["flavor"] == name)
        .unwrap_or_else(|| panic!("{name} not in the report: {report:#}"))
}

/// promise -> verdict of one judged flavor.
fn verdicts(f: &Value) -> Vec<(String, String)> {
    f["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["promise"].as_str().unwrap().to_string(),
                c["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn check<'a>(f: &'a Value, promise: &str) -> &'a Value {
    f["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["promise"] == promise)
        .unwrap_or_else(|| panic!("no {promise} check: {f:#}"))
}

fn violated(f: &Value) -> BTreeSet<String> {
    verdicts(f)
        .into_iter()
        .filter(|(_, v)| v == "violated")
        .map(|(p, _)| p)
        .collect()
}

/// The guests of `agent` as `hvctl vm list` shows them.
fn vms(agent: &Agent) -> Vec<Value> {
    let out = agent.hvctl(&["--output", "json", "vm", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list["vms"].as_array().cloned().unwrap_or_default()
}

/// Name of the running probe guest verify made for `flavor` on `agent`.
fn probe_guest(agent: &Agent, flavor: &str) -> String {
    wait_for(Duration::from_secs(120), "the probe guest", || {
        vms(agent)
            .into_iter()
            .find(|v| v["flavor"] == flavor && v["state"] == "running")
            .map(|v| v["name"].as_str().unwrap().to_string())
    })
}

/// Stops the guest, changes its definition or disk with `change`, starts it again: what an
/// operator (or a bug) could do behind the agent's back. The probe has not reported yet (it
/// needs seconds to boot), so the report verify reads is the second boot's.
fn restart_changed(name: &str, change: impl FnOnce()) {
    virsh(&["destroy", name]);
    change();
    virsh(&["start", name]);
}

fn create(agent: &Agent, name: &str, flavor: &str) {
    let out = agent.hvctl(&[
        "vm",
        "create",
        "--name",
        name,
        "--flavor",
        flavor,
        "--image",
        "hvagent-probe",
    ]);
    assert!(out.status.success(), "create {name}: {}", stderr(&out));
}

/// The host CPUs `virsh vcpupin` lists for vCPU 0 of `name`.
fn vcpu0_cpus(name: &str) -> String {
    virsh(&["vcpupin", name])
        .lines()
        .find_map(|l| {
            let (vcpu, cpus) = l.trim().split_once(' ')?;
            (vcpu.trim_end_matches(':') == "0").then(|| cpus.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn every_structural_promise_is_kept_and_the_report_is_written() {
    let agent = agent(NO_RESERVE);
    let dir = tempfile::tempdir().unwrap();
    let report_dir = dir.path().join("report");
    let child = spawn_verify(
        &agent,
        &[
            "--flavor",
            "SCS-1Ci-1u",
            "--flavor",
            "SCS-2Vi-2u-5",
            "--flavor",
            "SCS-16Vi-128u",
            "--neighbours",
            "1",
            "--report",
            report_dir.to_str().unwrap(),
        ],
    );
    let (exit, report, progress) = finish(child);
    assert_eq!(exit, 0, "{report:#}\n{progress}");
    assert_eq!(report["emulation"], "tcg");
    // No --neighbour-flavor: the default this node can serve.
    let serves_secure = agent.inventory_json()["scs"]["serves_secure"] == true;
    let neighbour = hvctl::verify::default_neighbour(serves_secure);
    // Progress was shown while it ran.
    for step in [
        "creating the probe guest",
        "waiting for the probe's report",
        "starting 1 neighbours",
        "asking the agent",
    ] {
        assert!(progress.contains(step), "no {step:?} in:\n{progress}");
    }

    let big = flavor(&report, "SCS-16Vi-128u");
    assert_eq!(big["outcome"], "skipped");
    assert!(
        big["reason"].as_str().unwrap().contains("does not fit"),
        "{big:#}"
    );

    let structural = ["vcpus", "ram", "entropy", "rdrand", "numa_locality"];
    let timing = ["cpu_throughput", "cpu_share"];
    for (name, own) in [
        ("SCS-1Ci-1u", "cpu_exclusive"),
        ("SCS-2Vi-2u-5", "shared_ratio"),
    ] {
        let f = flavor(&report, name);
        assert_eq!(f["outcome"], "judged", "{f:#}");
        assert_eq!(f["neighbours"], serde_json::json!([neighbour]), "{f:#}");
        let v = verdicts(f);
        for promise in structural.iter().chain([&own]) {
            assert_eq!(
                check(f, promise)["verdict"],
                "kept",
                "{name} {promise}: {f:#}"
            );
        }
        assert!(violated(f).is_empty(), "{name}: {v:?}");
        // Timing under TCG: measured, never judged.
        for (promise, verdict) in &v {
            if timing.contains(&promise.as_str()) {
                assert_eq!(verdict, "not_verifiable", "{name}: {v:?}");
                let c = check(f, promise);
                assert!(c["why"].as_str().unwrap().contains("emulation"), "{c}");
            }
        }
        assert_eq!(f["alone"].as_array().unwrap().len(), 2, "{f:#}");
        assert_eq!(f["with_neighbours"].as_array().unwrap().len(), 2, "{f:#}");
        // The probe read its NoCloud identity: the agent's uuid and name.
        let probe = &f["probe"];
        assert_eq!(probe["identity"]["instance_id"], f["vm_uuid"], "{probe:#}");
        assert_eq!(probe["identity"]["hostname"], f["vm_name"], "{probe:#}");
        assert_eq!(probe["fips"]["blocks"], 1000);
        assert!(probe["iops"]["writes"].as_u64().unwrap() > 0, "{probe:#}");
    }
    let c = flavor(&report, "SCS-1Ci-1u");
    assert!(
        c["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["promise"] != "disk")
    );
    let v = flavor(&report, "SCS-2Vi-2u-5");
    assert_eq!(check(v, "disk")["verdict"], "kept");

    // The files: JSON equal to stdout, Markdown with the tables, the charts.
    let json: Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["flavors"], report["flavors"]);
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("| cpu_exclusive | kept |"), "{md}");
    assert!(
        md.contains("![share of a core per vCPU](SCS-2Vi-2u-5-share.svg)"),
        "{md}"
    );
    for chart in [
        "SCS-1Ci-1u-share.svg",
        "SCS-1Ci-1u-throughput.svg",
        "SCS-2Vi-2u-5-share.svg",
        "SCS-2Vi-2u-5-throughput.svg",
    ] {
        let svg = std::fs::read_to_string(report_dir.join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("vCPU 0"), "{chart}");
    }
    // Nothing it made is left.
    assert!(vms(&agent).is_empty(), "{:#?}", vms(&agent));
}

#[test]
fn a_guest_cpu_without_rdrand_is_violated() {
    let agent = agent(NO_RESERVE);
    let child = spawn_verify(&agent, &["--flavor", "SCS-1Vi-2u", "--neighbours", "0"]);
    let name = probe_guest(&agent, "SCS-1Vi-2u");
    let _cleanup = Cleanup(vec![name.clone()]);
    restart_changed(&name, || {
        let xml = virsh(&["dumpxml", "--inactive", &name]);
        let changed = xml
            .replace(
                "policy='require' name='rdrand'",
                "policy='disable' name='rdrand'",
            )
            .replace(
                "policy=\"require\" name=\"rdrand\"",
                "policy=\"disable\" name=\"rdrand\"",
            );
        assert_ne!(xml, changed, "no rdrand feature in {xml}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), changed).unwrap();
        virsh(&["define", file.path().to_str().unwrap()]);
    });
    let (exit, report, progress) = finish(child);
    assert_eq!(exit, 4, "{progress}");
    let f = flavor(&report, "SCS-1Vi-2u");
    assert_eq!(violated(f), BTreeSet::from(["rdrand".to_string()]), "{f:#}");
    assert_eq!(
        check(f, "rdrand")["measured"],
        "no rdrand in the guest's /proc/cpuinfo"
    );
    assert!(vms(&agent).is_empty());
}

#[test]
fn a_root_disk_smaller_than_the_name_is_violated() {
    let agent = agent(NO_RESERVE);
    let child = spawn_verify(&agent, &["--flavor", "SCS-1Vi-1u-5", "--neighbours", "0"]);
    let name = probe_guest(&agent, "SCS-1Vi-1u-5");
    let _cleanup = Cleanup(vec![name.clone()]);
    restart_changed(&name, || {
        let disk = virsh(&["domblklist", &name])
            .lines()
            .find_map(|l| l.trim().strip_prefix("vda").map(|p| p.trim().to_string()))
            .expect("a vda disk");
        // 4 GiB, below the 5 GiB the agent gives a "5" disk.
        tool(
            "qemu-img",
            &["resize", "--shrink", "-f", "qcow2", &disk, "4G"],
        );
    });
    let (exit, report, progress) = finish(child);
    assert_eq!(exit, 4, "{progress}");
    let f = flavor(&report, "SCS-1Vi-1u-5");
    assert_eq!(violated(f), BTreeSet::from(["disk".to_string()]), "{f:#}");
    let c = check(f, "disk");
    assert_eq!(c["measured"], "4.00 GiB root disk (4294967296 bytes)");
    assert_eq!(
        c["threshold"],
        "at least 5 GiB (a flavor's GB as Nova and the agent size disks)"
    );
    assert!(vms(&agent).is_empty());
}

#[test]
fn a_dedicated_core_shared_by_a_manual_repin_is_violated() {
    let agent = agent(NO_RESERVE);
    let _cleanup = Cleanup(vec!["verify-intruder".into()]);
    create(&agent, "verify-intruder", "SCS-1Vi-1u");
    let child = spawn_verify(&agent, &["--flavor", "SCS-1Ci-2u", "--neighbours", "0"]);
    let name = probe_guest(&agent, "SCS-1Ci-2u");
    let core = vcpu0_cpus(&name);
    assert!(
        core.parse::<u32>().is_ok(),
        "the C guest's vCPU 0 is pinned to one CPU: {core:?}"
    );
    // The agent moves the floating guest off the new dedicated core; then the operator puts it
    // back by hand (the agent only reports drift: [health] repair is off).
    wait_for(
        Duration::from_secs(60),
        "the intruder off the dedicated core",
        || {
            (vcpu0_cpus("verify-intruder") != core
                && !vcpu0_cpus("verify-intruder").contains(&core))
            .then_some(())
        },
    );
    virsh(&["vcpupin", "verify-intruder", "0", &core, "--live"]);
    let (exit, report, progress) = finish(child);
    assert_eq!(exit, 4, "{progress}");
    let f = flavor(&report, "SCS-1Ci-2u");
    assert_eq!(
        violated(f),
        BTreeSet::from(["cpu_exclusive".to_string()]),
        "{f:#}"
    );
    let measured = check(f, "cpu_exclusive")["measured"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        measured.contains(&format!(
            "guest verify-intruder (SCS-1Vi-1u) may run on host CPU {core}"
        )),
        "{measured}"
    );
    // Only verify's own guest went; the intruder is the operator's.
    let left: Vec<_> = vms(&agent)
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec!["verify-intruder".to_string()]);
}

#[test]
fn a_shared_pool_left_past_its_ratio_by_a_config_change_is_violated() {
    // Two CPUs in the pool: 10 V vCPUs at 5 per core. Eight go to two guests.
    let mut agent = agent(NO_RESERVE);
    let _cleanup = Cleanup(vec!["pool-a".into(), "pool-b".into()]);
    create(&agent, "pool-a", "SCS-4Vi-1u");
    create(&agent, "pool-b", "SCS-4Vi-1u");
    // The operator reserves CPU 0 for the host and restarts the agent: the pool is CPU 1
    // alone (5 V vCPUs), but the eight stay where they run.
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        config.replace("reserved_cpus = \"\"", "reserved_cpus = \"0\""),
    )
    .unwrap();
    let agent = agent.spawn();
    let (exit, report, progress) = finish(spawn_verify(
        &agent,
        &["--flavor", "SCS-1Vi-1u", "--neighbours", "0"],
    ));
    assert_eq!(
        exit,
        4,
        "{progress}\n{:#}",
        flavor(&report, "SCS-1Vi-1u")["checks"]
    );
    let f = flavor(&report, "SCS-1Vi-1u");
    assert_eq!(
        violated(f),
        BTreeSet::from(["shared_ratio".to_string()]),
        "{f:#}"
    );
    let c = check(f, "shared_ratio");
    assert_eq!(c["measured"], "9 V vCPUs on 1 host CPUs (1)", "{c}");
    assert_eq!(c["threshold"], "at most 5 per core (5 vCPUs)", "{c}");
    // The agent itself says so too: one of the two is not counted, and reported.
    let health = agent.hvctl(&["--output", "json", "node", "health"]);
    let health: Value = serde_json::from_slice(&health.stdout).unwrap();
    let unaccounted: Vec<_> = health["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "unaccounted")
        .map(|v| v["vm_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(unaccounted.len(), 1, "{health:#}");
    assert!(unaccounted[0].starts_with("pool-"), "{unaccounted:?}");
    let mut left: Vec<_> = vms(&agent)
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    left.sort();
    assert_eq!(left, vec!["pool-a".to_string(), "pool-b".to_string()]);
}

#[test]
fn interrupted_verify_deletes_what_it_made() {
    let agent = agent(NO_RESERVE);
    let child = spawn_verify(&agent, &["--flavor", "SCS-1Vi-1u", "--neighbours", "0"]);
    let name = probe_guest(&agent, "SCS-1Vi-1u");
    let _cleanup = Cleanup(vec![name.clone()]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out.status), 130, "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted; every guest this run made is deleted"));
    assert!(vms(&agent).is_empty(), "{:#?}", vms(&agent));
    assert!(!virsh(&["list", "--all", "--name"]).contains(&name));
}

#[test]
fn bad_input_changes_nothing() {
    let agent = agent("");
    for (args, exit, says) in [
        (
            &["verify", "--flavor", "SCS-1X-1"][..],
            2,
            "is not a valid SCS flavor name",
        ),
        (
            &["verify", "--flavor", "SCS-1Vi-1u", "--tolerance", "1.5"],
            2,
            "--tolerance 1.5",
        ),
        (
            &[
                "verify",
                "--flavor",
                "SCS-1Vi-1u",
                "--neighbour-flavor",
                "big",
            ],
            2,
            "\"big\" is not a valid SCS flavor name",
        ),
        (
            &["verify", "--flavor", "SCS-1Vi-1u", "--samples", "0"],
            2,
            "--samples",
        ),
        // The agent answers NOT_FOUND: a failed call, not a bad command line.
        (
            &["verify", "--flavor", "SCS-1Vi-1u", "--image", "nope"],
            1,
            "the probe image \"nope\"",
        ),
    ] {
        let out = agent.hvctl(args);
        assert_eq!(code(&out.status), exit, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert!(vms(&agent).is_empty());
}

#[test]
fn standard_flavors_that_do_not_fit_are_skipped_with_the_reason() {
    let agent = agent("");
    // Every scs-0103 name promises ECC; a node that cannot confirm ECC fits none of them.
    let ecc = agent.inventory_json()["memory"]["ecc"].clone();
    if ecc == "present" {
        println!(
            "skipped: this node has ECC memory, so --standard would boot every standard flavor"
        );
        return;
    }
    let out = agent.hvctl(&[
        "--output",
        "json",
        "verify",
        "--standard",
        "--neighbours",
        "0",
    ]);
    assert_eq!(code(&out.status), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let flavors = report["flavors"].as_array().unwrap();
    let standard = hvagent::flavor::proto::standard_flavors();
    assert_eq!(flavors.len(), standard.len());
    for (f, s) in flavors.iter().zip(&standard) {
        assert_eq!(f["flavor"], s.name.as_str());
        assert_eq!(f["outcome"], "skipped", "{f:#}");
        assert!(
            f["reason"]
                .as_str()
                .unwrap()
                .starts_with("does not fit this node: ECC"),
            "{f:#}"
        );
    }
    assert!(stderr(&out).contains("skipped, does not fit (ECC)"));
    assert!(vms(&agent).is_empty());
}
