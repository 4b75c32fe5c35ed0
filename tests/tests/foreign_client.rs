//! gRPC health and reflection work from a client that is not ours (Python grpcio), and that
//! client can call GetInventory knowing nothing but what reflection told it.

mod common;

use common::{Agent, repo_root, stderr};
use serde_json::Value;

/// A default `unix:` channel (grpc-core sends the socket path as `:authority`), and channels
/// that send `localhost` or a host:port, all get the same answers.
#[test]
fn python_grpcio_uses_health_reflection_and_the_api() {
    let agent = Agent::start("");
    for authority in ["default", "localhost", "node-1.example:50051"] {
        check_python_client(&agent, authority);
    }
}

fn check_python_client(agent: &Agent, authority: &str) {
    let script = repo_root().join("tests/python/grpc_client_check.py");
    let services = hvagent::api::services::SERVICES.iter().map(|s| s.name);
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&agent.socket)
        .arg(authority)
        .args(services.clone())
        .output()
        .expect("python3 (make test installs grpcio, grpcio-health-checking, grpcio-reflection)");
    assert!(
        out.status.success(),
        "python client with authority {authority:?} failed: {}",
        stderr(&out)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(seen["health[]"], "SERVING");
    // Every served service is registered with grpc.health.
    for service in services {
        assert_eq!(seen[format!("health[{service}]")], "SERVING", "{service}");
    }
    assert_eq!(seen["health[no.such.Service]"], "NOT_FOUND");
    let services: Vec<&str> = seen["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for expected in ["grpc.health.v1.Health", "hvagent.v1.NodeService"] {
        assert!(services.contains(&expected), "{services:?}");
    }
    for served in hvagent::api::services::SERVICES {
        assert!(services.contains(&served.name), "{services:?}");
    }

    // The dynamically decoded inventory is the same one hvctl shows.
    let theirs = &seen["inventory"];
    let ours = agent.inventory_json();
    assert_eq!(theirs["cpu"]["model_name"], ours["cpu"]["model_name"]);
    // protobuf's JSON mapping prints 64-bit integers as strings; compare as text.
    let as_text = |v: &Value| {
        v.as_str()
            .map(String::from)
            .unwrap_or_else(|| v.to_string())
    };
    assert_eq!(
        as_text(&theirs["cpu"]["threads"]),
        as_text(&ours["cpu"]["threads"])
    );
    assert_eq!(
        as_text(&theirs["memory"]["total_bytes"]),
        as_text(&ours["memory"]["total_bytes"])
    );
    assert_eq!(theirs["scheduler"]["traits"], ours["scheduler"]["traits"]);
}
