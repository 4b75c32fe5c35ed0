//! The agent's reporting to a real OpenStack Placement (`openstack-placement` from PyPI on
//! SQLite, `tests/python/placement_server.py`), side by side in one run with what a scheduler
//! pays to write the same allocation itself:
//!
//! 1. `Reserve` → its allocation readable in Placement (the agent's reporter writes it),
//!    against a scheduler's own `PUT /allocations/{consumer}` of the same resources;
//! 2. `Release` → the allocation gone, against the scheduler's `DELETE /allocations/{consumer}`;
//! 3. Placement calls per minute while nothing changes, at the default `interval_seconds`.
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench placement_api`.
//! Needs `make python` (openstack-placement). Knobs: `ROUNDS` (default 20), `IDLE_SECONDS`
//! (default 120), `FLAVOR` (default SCS-1Vi-0.5u).

mod common;
#[path = "../../tests/tests/common/placement.rs"]
#[allow(dead_code)] // the benches use a part of the tests' Placement helper
mod placement;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{env_or, header, row, start_agent_with_metrics, stats};
use hvagent_proto::v1 as pb;
use placement::Placement;

/// The repository, for the tests' helper scripts.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// The sum of every series of `name` on the agent's metrics endpoint.
fn metric_sum(port: u16, name: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("answer");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `done` every 2 ms; the time until it held.
fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

fn main() {
    let Some(placement) = Placement::start() else {
        return;
    };
    let rounds = env_or("ROUNDS", 20);
    let idle = Duration::from_secs(env_or("IDLE_SECONDS", 120) as u64);
    let flavor = std::env::var("FLAVOR").unwrap_or_else(|_| "SCS-1Vi-0.5u".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let name = format!("bench-{}", std::process::id());
    let (mut agent, socket) = start_agent_with_metrics(
        dir.path(),
        &format!(
            "[host]\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"\"\n\
             [health]\ninterval_seconds = 1\n[placement_api]\nurl = \"{}\"\nauth = \"noauth\"\n\
             token = \"{}\"\nprovider_name = \"{name}\"\n",
            placement.url, placement.token
        ),
        port,
    );
    let rt = common::runtime();
    let channel = rt
        .block_on(hvctl::client::connect(&socket))
        .expect("connect to the agent");
    let mut claims = pb::placement_service_client::PlacementServiceClient::new(channel.clone());
    let resources = rt
        .block_on(
            pb::flavor_service_client::FlavorServiceClient::new(channel).placement_request(
                pb::PlacementRequestRequest {
                    name: flavor.clone(),
                },
            ),
        )
        .expect("placement request")
        .into_inner()
        .resources;
    let want = serde_json::to_value(&resources).expect("resources as JSON");
    let mut provider = None;
    until("the provider", || {
        provider = placement.provider(&name).map(|(uuid, _)| uuid);
        provider.is_some()
    });
    let provider = provider.expect("provider");
    let holds = |consumer: &str| {
        placement
            .allocations(&provider)
            .get(consumer)
            .is_some_and(|r| *r == want)
    };

    let (mut reported, mut written, mut released, mut deleted) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in 0..rounds {
        // The agent: a claim, and its reporter's write.
        let consumer = format!("00000000-0000-4000-8000-0000ba{n:06x}");
        rt.block_on(claims.reserve(pb::ReserveRequest {
            request_id: consumer.clone(),
            vm_uuid: consumer.clone(),
            flavor: flavor.clone(),
            ttl_seconds: 600,
        }))
        .expect("reserve");
        reported.push(until("the claim's allocation", || holds(&consumer)));
        rt.block_on(claims.release(pb::ReleaseRequest {
            vm_uuid: consumer.clone(),
        }))
        .expect("release");
        released.push(until("the allocation gone", || {
            !placement.allocations(&provider).contains_key(&consumer)
        }));

        // The peer: a scheduler writing the same allocation itself.
        let consumer = format!("00000000-0000-4000-8000-0000bb{n:06x}");
        let started = Instant::now();
        let put = placement.put(
            &format!("/allocations/{consumer}"),
            &serde_json::json!({
                "allocations": { provider.clone(): { "resources": want.clone() } },
                "project_id": "00000000-0000-4000-8000-00000000be1c",
                "user_id": "00000000-0000-4000-8000-00000000be1c",
                "consumer_generation": null,
                "consumer_type": "INSTANCE",
            }),
        );
        written.push(started.elapsed());
        assert_eq!(put.status, 204, "{put:?}");
        let started = Instant::now();
        let gone = placement.delete(&format!("/allocations/{consumer}"));
        deleted.push(started.elapsed());
        assert_eq!(gone.status, 204, "{gone:?}");
    }
    println!("\nReporting to Placement ({flavor}, {rounds} rounds):\n");
    header();
    row(
        "Reserve → allocation in Placement (agent)",
        &stats(reported),
    );
    row("PUT /allocations by a scheduler (peer)", &stats(written));
    row("Release → allocation gone (agent)", &stats(released));
    row("DELETE /allocations by a scheduler (peer)", &stats(deleted));

    // Idle: the calls the reporter makes while nothing changes (samples up to 1 s old).
    std::thread::sleep(Duration::from_secs(3));
    let before = metric_sum(port, "hvagent_placement_api_calls_total");
    std::thread::sleep(idle);
    let calls = metric_sum(port, "hvagent_placement_api_calls_total") - before;
    println!(
        "\nIdle, default interval_seconds: {calls} Placement calls in {} s ({:.2} per minute)",
        idle.as_secs(),
        calls * 60.0 / idle.as_secs_f64()
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
