//! Node health against real parts: a real agent sampling the real host and real QEMU guests
//! (TCG) through libvirt, scraped over HTTP and asked over gRPC (hvctl), checked against
//! `/proc`, `promtool` and `virsh`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Agent, Cleanup, free_port, http_get, import_testguest, runtime, tool, virsh, wait_for,
};
use hvagent_proto::v1 as pb;

/// An agent sampling every `interval` seconds. The image store's disk on a CI machine may be
/// nearly full, which is not what these tests are about, so DiskPressure is off.
fn agent(interval: u32) -> (Agent, u16) {
    let port = free_port();
    let agent = Agent::configure(&format!(
        "[host]\nkvm_device = \"/nonexistent/kvm\"\n[health]\ninterval_seconds = {interval}\n\
         disk_free_min_percent = 0\n"
    ))
    .with_metrics_port(port);
    // QEMU (an unprivileged user) must reach the guests' disks.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (agent.spawn(), port)
}

fn scrape(port: u16) -> String {
    let answer = http_get(port, "/metrics");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of the sample `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let bare = series.split('{').next() == Some(name);
            bare && labels
                .iter()
                .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn health(agent: &Agent) -> serde_json::Value {
    let out = agent.hvctl(&["--output", "json", "node", "health"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    serde_json::from_slice(&out.stdout).expect("hvctl prints JSON")
}

fn condition(h: &serde_json::Value, kind: &str) -> serde_json::Value {
    h["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no condition {kind} in {h}"))
}

fn create(agent: &Agent, uuid: &str, name: &str, flavor: &str) {
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut images = pb::image_service_client::ImageServiceClient::new(channel.clone());
        if images
            .get(pb::GetImageRequest {
                name: "testguest".into(),
            })
            .await
            .is_err()
        {
            import_testguest(channel.clone()).await;
        }
        pb::vm_service_client::VmServiceClient::new(channel)
            .create(pb::CreateVmRequest {
                uuid: uuid.into(),
                name: name.into(),
                flavor: flavor.into(),
                image: "testguest".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e:?}"));
    });
}

fn qemu_pid(name: &str) -> i32 {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `/proc/stat`'s jiffies of `cpu0` in `mode` order user, nice, system, idle.
fn proc_cpu0() -> Vec<f64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let line = stat.lines().find(|l| l.starts_with("cpu0 ")).unwrap();
    line.split_whitespace()
        .skip(1)
        .take(4)
        .map(|v| v.parse().unwrap())
        .collect()
}

fn meminfo(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn a_real_scrape_passes_promtool_and_agrees_with_proc() {
    let (agent, port) = agent(1);
    let uuid = "00000000-0000-4000-8000-0000000ae001".to_string();
    let _cleanup = Cleanup(vec![uuid.clone()]);
    create(&agent, &uuid, "scraped", "SCS-1Vi-0.5u");
    let labels = [("uuid", uuid.as_str()), ("vcpu", "0")];
    let text = wait_for(
        Duration::from_secs(30),
        "guest vCPU time in a scrape",
        || {
            let t = scrape(port);
            metric(&t, "hvagent_guest_vcpu_seconds_total", &labels)
                .is_some_and(|v| v > 0.0)
                .then_some(t)
        },
    );

    // promtool reads the text exactly as Prometheus does and lints the names.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; make test installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Constants agree exactly with /proc and /sys read here.
    assert_eq!(
        metric(&text, "hvagent_host_memory_total_bytes", &[]),
        Some(meminfo("MemTotal") as f64)
    );
    let huge: u64 =
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let per_node: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("hvagent_host_hugepages{") && l.contains("page_size_bytes=\"2097152\"")
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(per_node, huge as f64, "2 MiB hugepages over all nodes");
    let cpus = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(
        text.lines()
            .filter(
                |l| l.starts_with("hvagent_host_cpu_seconds_total{") && l.contains("mode=\"idle\"")
            )
            .count(),
        cpus
    );

    // Counters lie between /proc read before and after the sample.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let before = proc_cpu0();
    let asked = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // A snapshot whose host figures were read after `before`.
    let text = wait_for(
        Duration::from_secs(20),
        "a sample taken after /proc was read",
        || {
            let t = scrape(port);
            metric(&t, "hvagent_health_sample_timestamp_seconds", &[])
                .is_some_and(|at| at > asked + 0.01)
                .then_some(t)
        },
    );
    let after = proc_cpu0();
    for (i, mode) in ["user", "nice", "system", "idle"].iter().enumerate() {
        let v = metric(
            &text,
            "hvagent_host_cpu_seconds_total",
            &[("cpu", "0"), ("mode", mode)],
        )
        .unwrap();
        assert!(
            before[i] / hz <= v + 1e-9 && v <= after[i] / hz + 1e-9,
            "cpu0 {mode}: {} <= {v} <= {}",
            before[i] / hz,
            after[i] / hz
        );
    }
    let vcpu = metric(&text, "hvagent_guest_vcpu_seconds_total", &labels).unwrap();
    let stats = virsh(&["domstats", "--vcpu", &uuid]);
    let live: f64 = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("vcpu.0.time="))
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1e9;
    assert!(
        vcpu > 0.0 && vcpu <= live,
        "vCPU time {vcpu} <= {live} (virsh, later)"
    );
    assert_eq!(
        metric(
            &text,
            "hvagent_guest_memory_balloon_bytes",
            &[("uuid", &uuid)]
        ),
        Some(512.0 * 1024.0 * 1024.0)
    );
    let rss = metric(&text, "hvagent_process_resident_memory_bytes", &[]).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let own: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse::<f64>()
        .unwrap()
        * 1024.0;
    assert!(
        (rss - own).abs() < own * 0.25,
        "agent RSS {rss} vs /proc {own}"
    );

    // gRPC says the same, with every condition.
    let h = health(&agent);
    assert_eq!(h["ready"], true, "{h}");
    let kinds: Vec<&str> = h["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "LibvirtDisconnected",
            "MemoryPressure",
            "CpuPressure",
            "DiskPressure",
            "PinningViolation",
            "EmulationOnly",
            "Draining",
            "Ready"
        ]
    );
    assert_eq!(condition(&h, "EmulationOnly")["status"], true, "TCG here");
    assert_eq!(h["host"]["memory_total_bytes"], meminfo("MemTotal"));
    let g = &h["guests"][0];
    assert_eq!(
        (g["uuid"].as_str(), g["state"].as_str()),
        (Some(uuid.as_str()), Some("running"))
    );
    assert!(g["age_seconds"].as_f64().unwrap() < 3.0, "{g}");
    assert_eq!(g["quarantined"], false);

    // A watch interval below the lower bound is refused, naming the field and the rule.
    let out = agent.hvctl(&["node", "health", "--watch", "--interval", "0.2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("interval_ms: must be 0") && err.contains("at least 1000 ms"),
        "{err}"
    );
}

/// Continues a stopped QEMU even when the test fails halfway.
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

#[test]
fn a_stopped_qemu_does_not_stop_the_others_metrics() {
    let (agent, port) = agent(1);
    let stuck = "00000000-0000-4000-8000-0000000ae002";
    let alive = "00000000-0000-4000-8000-0000000ae003";
    let _cleanup = Cleanup(vec![stuck.into(), alive.into()]);
    create(&agent, stuck, "stuck", "SCS-1Vi-0.5u");
    create(&agent, alive, "alive", "SCS-1Vi-0.5u");
    wait_for(Duration::from_secs(30), "both guests sampled", || {
        let t = scrape(port);
        [stuck, alive]
            .iter()
            .all(|u| metric(&t, "hvagent_guest_sample_age_seconds", &[("uuid", u)]).is_some())
            .then_some(())
    });

    let pid = qemu_pid("stuck");
    let _continue = Continue(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let age = |t: &str, u: &str| metric(t, "hvagent_guest_sample_age_seconds", &[("uuid", u)]);
    let quarantined = |t: &str, u: &str| metric(t, "hvagent_guest_quarantined", &[("uuid", u)]);
    let text = wait_for(
        Duration::from_secs(20),
        "the stopped guest quarantined and ageing while the other is fresh",
        || {
            let t = scrape(port);
            // The other guest's figures stay fresh meanwhile. (Under load one sample of it
            // can come late too and quarantine it for a moment: what must not happen is that
            // the stopped guest keeps it from being read at all.)
            (quarantined(&t, stuck) == Some(1.0)
                && age(&t, stuck).unwrap_or(0.0) >= 3.0
                && quarantined(&t, alive) == Some(0.0)
                && age(&t, alive).is_some_and(|a| a < 2.5))
            .then_some(t)
        },
    );
    let cpu = |t: &str| metric(t, "hvagent_guest_cpu_seconds_total", &[("uuid", alive)]).unwrap();
    let first = cpu(&text);
    wait_for(
        Duration::from_secs(10),
        "alive's CPU time moving on",
        || (cpu(&scrape(port)) > first).then_some(()),
    );
    let h = health(&agent);
    let g = h["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["uuid"] == stuck)
        .unwrap()
        .clone();
    assert_eq!(g["quarantined"], true, "{g}");
    assert!(
        g["quarantine_reason"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{g}"
    );
    assert!(g["age_seconds"].as_f64().unwrap() >= 3.0, "{g}");

    drop(_continue);
    wait_for(
        Duration::from_secs(20),
        "the guest out of quarantine once it runs again",
        || {
            let t = scrape(port);
            (quarantined(&t, stuck) == Some(0.0) && age(&t, stuck).unwrap_or(99.0) < 2.5)
                .then_some(())
        },
    );
}

/// `virsh vcpupin NAME --live`: vCPU → CPUs.
fn live_vcpu_pins(name: &str) -> BTreeMap<u32, String> {
    virsh(&["vcpupin", name, "--live"])
        .lines()
        .filter_map(|l| {
            let (v, cpus) = l.trim().split_once(char::is_whitespace)?;
            Some((v.parse().ok()?, cpus.trim().to_string()))
        })
        .collect()
}

fn live_emulator_pin(name: &str) -> String {
    virsh(&["emulatorpin", name, "--live"])
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix('*')
                .map(|r| r.trim_start_matches(':').trim().to_string())
        })
        .unwrap_or_default()
}

/// `virsh -c qemu:///system ARGS...`, failing the test if it fails.
fn report(agent: &Agent, name: &str) -> serde_json::Value {
    let out = agent.hvctl(&["--output", "json", "vm", "guarantees", name]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn violations(agent: &Agent) -> Vec<serde_json::Value> {
    health(agent)["violations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn cpus(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect()
}

#[test]
fn pin_drift_is_reported_within_two_intervals_and_repaired_on_request() {
    let (mut agent, port) = agent(2);
    let name = "pinned";
    let uuid = "00000000-0000-4000-8000-0000000ae004";
    let _cleanup = Cleanup(vec![uuid.into()]);
    create(&agent, uuid, name, "SCS-1Ci-0.5u-2");
    let r = wait_for(Duration::from_secs(20), "the guest's pins observed", || {
        let r = report(&agent, name);
        (!cpus(&r["vcpus"][0]["actual"]).is_empty()).then_some(r)
    });
    let claimed = cpus(&r["vcpus"][0]["claimed"]);
    let emulator = cpus(&r["emulator_claimed"]);
    assert_eq!(claimed.len(), 1, "a C vCPU has one CPU: {r}");
    let online: Vec<u64> = hvagent::host::sysfs::parse_cpulist(
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .unwrap()
            .trim(),
    )
    .unwrap()
    .into_iter()
    .map(u64::from)
    .collect();
    let elsewhere = |not: &[u64]| *online.iter().find(|c| !not.contains(c)).unwrap();
    let promise = |r: &serde_json::Value, name: &str| {
        r["promises"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(promise(&r, "cpu_pinning")["verdict"], 1, "{r}");

    // A vCPU moved behind the agent's back: seen within two intervals (2 s each), naming
    // the vCPU and both CPU sets.
    let moved = elsewhere(&claimed);
    virsh(&["vcpupin", name, "0", &moved.to_string()]);
    let found = wait_for(Duration::from_millis(4500), "the vCPU violation", || {
        violations(&agent)
            .into_iter()
            .find(|v| v["kind"] == "vcpu_affinity")
    });
    assert_eq!(found["vm_name"], name);
    assert_eq!(found["vcpu"], 0);
    assert_eq!(
        (cpus(&found["expected"]), cpus(&found["actual"])),
        (claimed.clone(), vec![moved])
    );
    let kinds: Vec<String> = violations(&agent)
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"libvirt_vcpu_pin".to_string()), "{kinds:?}");
    let h = health(&agent);
    assert_eq!(condition(&h, "PinningViolation")["status"], true);
    assert_eq!(
        h["ready"], true,
        "drift is reported, it does not stop scheduling"
    );
    assert_eq!(
        metric(
            &scrape(port),
            "hvagent_pinning_violations",
            &[("kind", "vcpu_affinity")]
        ),
        Some(1.0)
    );
    let r = report(&agent, name);
    assert_eq!(promise(&r, "cpu_pinning")["verdict"], 2, "{r}");
    // Not repaired: repair is off.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(live_vcpu_pins(name)[&0], moved.to_string());
    tool(
        "virsh",
        &[
            "-c",
            "qemu:///system",
            "vcpupin",
            name,
            "0",
            &claimed[0].to_string(),
        ],
    );
    wait_for(Duration::from_millis(4500), "the violation closed", || {
        violations(&agent).is_empty().then_some(())
    });

    // The emulator threads likewise.
    let moved = elsewhere(&emulator);
    virsh(&["emulatorpin", name, &moved.to_string()]);
    let found = wait_for(
        Duration::from_millis(4500),
        "the emulator violation",
        || {
            violations(&agent)
                .into_iter()
                .find(|v| v["kind"] == "emulator_affinity")
        },
    );
    assert_eq!(found["vcpu"], -1);
    assert_eq!(
        (cpus(&found["expected"]), cpus(&found["actual"])),
        (emulator.clone(), vec![moved])
    );
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    virsh(&["emulatorpin", name, &list(&emulator)]);
    wait_for(Duration::from_millis(4500), "the violation closed", || {
        violations(&agent).is_empty().then_some(())
    });

    // With repair = true the claimed pins come back by themselves, and are counted.
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        config.replace("[health]\n", "[health]\nrepair = true\n"),
    )
    .unwrap();
    let agent = agent.spawn();
    let moved = elsewhere(&claimed);
    virsh(&["vcpupin", name, "0", &moved.to_string()]);
    wait_for(Duration::from_secs(10), "the vCPU pin restored", || {
        (live_vcpu_pins(name)[&0] == claimed[0].to_string()).then_some(())
    });
    let moved = elsewhere(&emulator);
    virsh(&["emulatorpin", name, &moved.to_string()]);
    wait_for(Duration::from_secs(10), "the emulator pin restored", || {
        (live_emulator_pin(name) == list(&emulator)).then_some(())
    });
    // Counted once the pins are back, in the next sample.
    for kind in ["vcpu_affinity", "emulator_affinity"] {
        wait_for(
            Duration::from_secs(5),
            &format!("{kind} repairs counted"),
            || {
                let n = metric(
                    &scrape(port),
                    "hvagent_pinning_repairs_total",
                    &[("kind", kind)],
                );
                n.is_some_and(|n| n >= 1.0).then_some(())
            },
        );
    }
    wait_for(Duration::from_millis(4500), "no violation left", || {
        violations(&agent).is_empty().then_some(())
    });
}

/// Whether the peer has closed `s` (EOF or reset) by now, without waiting.
fn closed_by_peer(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Any local user can connect to the metrics port. Hundreds of connections that say nothing or
/// half a request hold no more than the endpoint's cap of descriptors, the API and scrapes
/// still answer, and the agent closes the silent ones itself. The agent is started with a soft
/// descriptor limit of 256 (below the flood) and raises it to the hard one.
#[test]
fn a_flood_of_silent_metrics_connections_cannot_exhaust_descriptors() {
    use hvagent::daemon::metrics::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
    use std::io::Write;
    let port = free_port();
    let mut agent =
        Agent::configure("[host]\nkvm_device = \"/nonexistent/kvm\"\n").with_metrics_port(port);
    let child = Command::new("prlimit")
        .arg("--nofile=256:8192")
        .arg(common::bin("hvagent"))
        .arg("--config")
        .arg(&agent.config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prlimit (util-linux)");
    agent.child = Some(child);
    wait_for(Duration::from_secs(30), "the agent serving", || {
        std::os::unix::net::UnixStream::connect(&agent.socket).ok()
    });
    let pid = agent.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[..2],
        ["8192", "8192"],
        "soft raised to hard:\n{limits}"
    );
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    assert!(scrape(port).contains("hvagent_up 1"));
    let before = descriptors();

    let mut flood: Vec<std::net::TcpStream> = (0..500)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: loc").unwrap();
        flood.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    let during = descriptors();
    assert!(
        during <= before + MAX_CONNECTIONS + 8,
        "{during} descriptors open during the flood, {before} before"
    );
    let refused = flood.iter_mut().map(closed_by_peer).filter(|c| *c).count();
    assert!(
        refused >= flood.len() - MAX_CONNECTIONS,
        "only {refused} of {} closed at once",
        flood.len()
    );
    // The API answers meanwhile.
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel.clone());
        let mut node = pb::node_service_client::NodeServiceClient::new(channel);
        let within = Duration::from_secs(5);
        tokio::time::timeout(within, vms.list(pb::ListVmsRequest {}))
            .await
            .expect("ListVms in time")
            .unwrap();
        tokio::time::timeout(within, node.get_health(pb::GetHealthRequest {}))
            .await
            .expect("GetHealth in time")
            .unwrap();
    });
    // The agent closes the silent and the half-asked ones after the header timeout.
    std::thread::sleep(HEADER_READ_TIMEOUT + Duration::from_secs(1));
    let open = flood.iter_mut().map(closed_by_peer).filter(|c| !*c).count();
    assert_eq!(open, 0, "connections the agent left open");
    let after = descriptors();
    println!("agent descriptors: {before} before, {during} during the flood, {after} after");
    assert!(after <= before + 2, "{after} descriptors, {before} before");
    assert!(scrape(port).contains("hvagent_up 1"));
}
