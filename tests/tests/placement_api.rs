//! The agent under a real OpenStack Placement (`openstack-placement` from PyPI on SQLite,
//! `noauth2`): its resource provider, inventories and traits appear as the agent derives them;
//! a claim's allocation appears within a round, a released claim's goes; allocations changed
//! or deleted behind the agent's back are healed, a foreign one is reported and removed only
//! when the operator asks; Placement stopped and started again costs only the `PlacementSync`
//! condition meanwhile. Prints the time from a claim to its allocation and the calls per
//! minute at idle (docs/benchmarks.md).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::placement::{Keystone, Placement};
use common::{Agent, Cleanup, free_port, http_get, runtime, wait_for};
use hvagent_proto::v1 as pb;
use serde_json::json;
use tonic::transport::Channel;

/// The full check's interval: short, so that healing shows within seconds.
const INTERVAL_S: u64 = 3;
const FLAVOR: &str = "SCS-1Vi-0.5u";

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-0000005a{n:04x}")
}

fn reporting_agent(placement: &Placement, name: &str, port: u16, extra: &str) -> Agent {
    Agent::configure_tcg(
        "",
        &format!(
            "[health]\ninterval_seconds = 1\n[placement_api]\nurl = \"{}\"\nauth = \"noauth\"\ntoken = \"{}\"\nprovider_name = \"{name}\"\ninterval_seconds = {INTERVAL_S}\n{extra}",
            placement.url, placement.token
        ),
    )
    .with_metrics_port(port)
    .spawn()
}

/// The agent's metric samples whose name and labels start with `prefix`, summed.
fn metric(port: u16, prefix: &str) -> f64 {
    let text = http_get(port, "/metrics");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The `PlacementSync` condition as the metrics show it: (reason, status).
fn sync_condition(port: u16) -> Option<(String, bool)> {
    let text = http_get(port, "/metrics");
    text.lines().find_map(|l| {
        let rest =
            l.strip_prefix("hvagent_node_condition{condition=\"PlacementSync\",reason=\"")?;
        let (reason, value) = rest.split_once("\"} ")?;
        Some((reason.to_string(), value.trim() == "1"))
    })
}

struct Clients {
    channel: Channel,
    vms: pb::vm_service_client::VmServiceClient<Channel>,
    placement: pb::placement_service_client::PlacementServiceClient<Channel>,
    node: pb::node_service_client::NodeServiceClient<Channel>,
    flavors: pb::flavor_service_client::FlavorServiceClient<Channel>,
}

async fn clients(agent: &Agent) -> Clients {
    let channel = hvctl::client::connect(&agent.socket).await.unwrap();
    Clients {
        channel: channel.clone(),
        vms: pb::vm_service_client::VmServiceClient::new(channel.clone()),
        placement: pb::placement_service_client::PlacementServiceClient::new(channel.clone()),
        node: pb::node_service_client::NodeServiceClient::new(channel.clone()),
        flavors: pb::flavor_service_client::FlavorServiceClient::new(channel),
    }
}

/// What Placement should hold for a guest of `flavor` on this agent: the flavor's Placement
/// request under the agent's policy (equal to the claim's allocation by construction).
async fn expected(c: &mut Clients, flavor: &str) -> serde_json::Value {
    let r = c
        .flavors
        .placement_request(pb::PlacementRequestRequest {
            name: flavor.into(),
        })
        .await
        .unwrap()
        .into_inner();
    json!(r.resources)
}

fn reserve(c: &mut Clients, rt: &tokio::runtime::Runtime, vm: &str, ttl: u32) {
    rt.block_on(c.placement.reserve(pb::ReserveRequest {
        request_id: format!("req-{vm}"),
        vm_uuid: vm.into(),
        flavor: FLAVOR.into(),
        ttl_seconds: ttl,
    }))
    .unwrap();
}

/// Polls every 10 ms until the consumer's allocation on `provider` is `want` (`None`: gone);
/// returns how long that took.
fn until_allocation(
    p: &Placement,
    provider: &str,
    consumer: &str,
    want: Option<&serde_json::Value>,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let held = p.allocations(provider).get(consumer).cloned();
        if held.as_ref() == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{consumer}: allocation {held:?}, want {want:?} within {limit:?}\n{}",
            p.log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stats(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "min {:.0} ms, median {:.0} ms, max {:.0} ms over {}",
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1],
        ms.len()
    )
}

#[test]
fn placement_holds_what_the_agent_holds() {
    let Some(mut p) = Placement::start() else {
        return;
    };
    let name = format!("e2e-node-{}", std::process::id());
    let port = free_port();
    let mut agent = reporting_agent(&p, &name, port, "");
    let guest = uuid(1);
    let _cleanup = Cleanup(vec![guest.clone()]);
    let rt = runtime();
    let mut c = rt.block_on(clients(&agent));
    let want = rt.block_on(expected(&mut c, FLAVOR));

    // The provider, with the inventories and traits the agent derives (its own view in
    // GetInventory is the same derivation).
    let (rp, _) = wait_for(Duration::from_secs(20), "the provider appears", || {
        p.provider(&name)
    });
    let view = rt
        .block_on(c.node.get_inventory(pb::GetInventoryRequest {}))
        .unwrap()
        .into_inner()
        .scheduler
        .expect("scheduler view");
    let derived: BTreeMap<String, serde_json::Value> = view
        .inventories
        .iter()
        .map(|r| {
            (
                r.resource_class.clone(),
                json!([
                    r.total,
                    r.reserved,
                    r.min_unit,
                    r.max_unit,
                    r.step_size,
                    r.allocation_ratio
                ]),
            )
        })
        .collect();
    let inventories = wait_for(Duration::from_secs(10), "inventories written", || {
        let a = p.get(&format!("/resource_providers/{rp}/inventories"));
        let held: BTreeMap<String, serde_json::Value> = a.body["inventories"]
            .as_object()?
            .iter()
            .map(|(class, i)| {
                (
                    class.clone(),
                    json!([
                        i["total"],
                        i["reserved"],
                        i["min_unit"],
                        i["max_unit"],
                        i["step_size"],
                        i["allocation_ratio"]
                    ]),
                )
            })
            .collect();
        (!held.is_empty()).then_some(held)
    });
    assert_eq!(
        inventories, derived,
        "Placement holds the derived inventories"
    );
    assert!(
        derived.contains_key("VCPU") && derived.contains_key("MEMORY_MB"),
        "{derived:?}"
    );
    let mut derived_traits = view.traits.clone();
    derived_traits.sort();
    // Traits are written after the inventories, in the same round.
    let traits = wait_for(Duration::from_secs(10), "traits written", || {
        let held = p.get(&format!("/resource_providers/{rp}/traits")).body["traits"].clone();
        let mut held: Vec<String> = serde_json::from_value(held).ok()?;
        held.sort();
        (!held.is_empty()).then_some(held)
    });
    assert_eq!(traits, derived_traits, "Placement holds the derived traits");

    // Claim → allocation, release → gone: timed.
    let (mut made, mut gone) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let vm = uuid(100 + i);
        reserve(&mut c, &rt, &vm, 60);
        made.push(
            until_allocation(&p, &rp, &vm, Some(&want), Duration::from_secs(5)).as_secs_f64()
                * 1000.0,
        );
        rt.block_on(c.placement.release(pb::ReleaseRequest {
            vm_uuid: vm.clone(),
        }))
        .unwrap();
        gone.push(
            until_allocation(&p, &rp, &vm, None, Duration::from_secs(5)).as_secs_f64() * 1000.0,
        );
    }
    println!(
        "claim (Reserve) to its allocation in Placement: {}",
        stats(made)
    );
    println!("release to its allocation gone: {}", stats(gone));

    // A guest: its claim's allocation within a round.
    rt.block_on(common::import_testguest(c.channel.clone()));
    let out = agent.hvctl(&[
        "vm",
        "create",
        "--uuid",
        &guest,
        "--name",
        "pa-guest",
        "--flavor",
        FLAVOR,
        "--image",
        "testguest",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    until_allocation(&p, &rp, &guest, Some(&want), Duration::from_secs(5));

    // Deleted behind the agent's back: healed at the next full check.
    let missing_before = metric(
        port,
        "hvagent_placement_api_drift_total{kind=\"allocation_missing\"}",
    );
    assert_eq!(p.delete(&format!("/allocations/{guest}")).status, 204);
    until_allocation(
        &p,
        &rp,
        &guest,
        Some(&want),
        Duration::from_secs(3 * INTERVAL_S),
    );
    wait_for(Duration::from_secs(5), "allocation_missing counted", || {
        (metric(
            port,
            "hvagent_placement_api_drift_total{kind=\"allocation_missing\"}",
        ) > missing_before)
            .then_some(())
    });

    // Changed behind its back (twice the memory): set right again.
    let current = p.get(&format!("/allocations/{guest}")).body;
    let mut doubled = want.clone();
    doubled["MEMORY_MB"] = json!(want["MEMORY_MB"].as_u64().unwrap() * 2);
    let put = p.put(
        &format!("/allocations/{guest}"),
        &json!({
            "allocations": {&rp: {"resources": doubled}},
            "consumer_generation": current["consumer_generation"],
            "project_id": current["project_id"],
            "user_id": current["user_id"],
            "consumer_type": "INSTANCE",
        }),
    );
    assert_eq!(put.status, 204, "{put:?}");
    until_allocation(
        &p,
        &rp,
        &guest,
        Some(&want),
        Duration::from_secs(3 * INTERVAL_S),
    );
    // The metrics show the health sampler's newest snapshot (every second here).
    wait_for(
        Duration::from_secs(5),
        "allocation_different counted",
        || {
            (metric(
                port,
                "hvagent_placement_api_drift_total{kind=\"allocation_different\"}",
            ) >= 1.0)
                .then_some(())
        },
    );

    // A foreign allocation (no claim here): reported, not removed.
    let foreign = uuid(900);
    let put = p.put(
        &format!("/allocations/{foreign}"),
        &json!({
            "allocations": {&rp: {"resources": {"VCPU": 1}}},
            "consumer_generation": null,
            "project_id": "someone", "user_id": "someone", "consumer_type": "INSTANCE",
        }),
    );
    assert_eq!(put.status, 204, "{put:?}");
    wait_for(
        Duration::from_secs(6 * INTERVAL_S),
        "the unclaimed allocation reported",
        || {
            (metric(port, "hvagent_placement_api_unclaimed_allocations") == 1.0
                && sync_condition(port) == Some(("UnclaimedAllocations".into(), true)))
            .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2 * INTERVAL_S));
    assert!(
        p.allocations(&rp).contains_key(&foreign),
        "kept unless the operator asks"
    );

    // Placement away: the agent serves on, claims included; only the condition says so.
    p.stop();
    wait_for(
        Duration::from_secs(15),
        "PlacementSync false while Placement is away",
        || (sync_condition(port) == Some(("Unreachable".into(), false))).then_some(()),
    );
    let while_away = uuid(2);
    reserve(&mut c, &rt, &while_away, 600);
    let listed = rt.block_on(common::listed(&mut c.vms));
    assert_eq!(listed, std::slice::from_ref(&guest));
    p.restart();
    wait_for(Duration::from_secs(90), "PlacementSync true again", || {
        sync_condition(port).filter(|(_, ok)| *ok)
    });
    until_allocation(&p, &rp, &while_away, Some(&want), Duration::from_secs(5));
    until_allocation(&p, &rp, &guest, Some(&want), Duration::from_secs(5));
    rt.block_on(c.placement.release(pb::ReleaseRequest {
        vm_uuid: while_away.clone(),
    }))
    .unwrap();
    until_allocation(&p, &rp, &while_away, None, Duration::from_secs(5));
    assert!(metric(port, "hvagent_placement_api_sync_failures_total") >= 1.0);

    // Idle: only the full check calls Placement.
    let before = metric(port, "hvagent_placement_api_calls_total");
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let calls = metric(port, "hvagent_placement_api_calls_total") - before;
    let rounds = window.as_secs() / INTERVAL_S;
    println!(
        "idle: {calls} Placement calls in {}s with interval_seconds = {INTERVAL_S} ({:.1} per round; {:.1} per minute)",
        window.as_secs(),
        calls / rounds as f64,
        calls * 60.0 / window.as_secs_f64()
    );
    // 4 calls per full check; the figures come from samples up to a second old at either
    // end, so the window may hold two checks more.
    assert!(
        calls <= 4.0 * (rounds + 2) as f64,
        "{calls} calls in {rounds} rounds"
    );

    // The operator asks: the agent, restarted with remove_unclaimed, adopts its provider and
    // removes the foreign allocation; the guest's stays.
    drop(c);
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(&agent.config, format!("{text}remove_unclaimed = true\n")).unwrap();
    agent = agent.spawn();
    let mut c = rt.block_on(clients(&agent));
    until_allocation(
        &p,
        &rp,
        &foreign,
        None,
        Duration::from_secs(10 * INTERVAL_S),
    );
    assert_eq!(
        p.provider(&name).map(|(u, _)| u),
        Some(rp.clone()),
        "adopted, not made again"
    );
    until_allocation(&p, &rp, &guest, Some(&want), Duration::from_secs(5));

    // Delete: its allocation goes.
    rt.block_on(c.vms.delete(pb::DeleteVmRequest {
        uuid: guest.clone(),
    }))
    .unwrap();
    until_allocation(&p, &rp, &guest, None, Duration::from_secs(5));
    assert!(p.allocations(&rp).is_empty());
}

/// The agent's Keystone v3 application credential against a real Keystone, with a Placement
/// that validates every token there (a noauth token is refused): the provider appears and one
/// token serves every call; a wrong secret is `PlacementSync` false, reason `Unauthorized`.
#[test]
fn keystone_application_credential() {
    let Some(keystone) = Keystone::start() else {
        return;
    };
    let Some(p) = Placement::start_behind(&keystone) else {
        return;
    };
    assert_eq!(
        p.call_as("admin", "GET", "/resource_providers", None)
            .status,
        401,
        "Placement checks tokens with Keystone"
    );
    let config = |name: &str, credential: &std::path::Path| {
        format!(
            "[health]\ninterval_seconds = 1\n[placement_api]\nurl = \"{}\"\nauth = \"keystone\"\nauth_url = \"{}/v3\"\ncredential_file = \"{}\"\nprovider_name = \"{name}\"\ninterval_seconds = {INTERVAL_S}\n",
            p.url,
            keystone.url,
            credential.display()
        )
    };
    let name = format!("e2e-keystone-{}", std::process::id());
    let port = free_port();
    let _agent = Agent::configure_tcg("", &config(&name, &keystone.credential_file))
        .with_metrics_port(port)
        .spawn();
    let (rp, _) = wait_for(Duration::from_secs(30), "the provider appears", || {
        p.provider(&name)
    });
    wait_for(Duration::from_secs(10), "PlacementSync true", || {
        (sync_condition(port) == Some(("Synced".into(), true))).then_some(())
    });
    let inventories = p.get(&format!("/resource_providers/{rp}/inventories"));
    assert!(
        inventories.body["inventories"]["MEMORY_MB"]["total"].as_u64() > Some(0),
        "{inventories:?}"
    );
    // Two full checks later, still the first token.
    std::thread::sleep(Duration::from_secs(2 * INTERVAL_S));
    assert_eq!(
        metric(
            port,
            "hvagent_placement_api_calls_total{method=\"keystone\"}"
        ),
        1.0
    );
    assert!(metric(port, "hvagent_placement_api_calls_total{method=\"GET\"}") >= 8.0);

    // A wrong secret: Keystone refuses it, and the condition says so.
    let wrong = keystone.dir.path().join("wrong.toml");
    let text = std::fs::read_to_string(&keystone.credential_file).unwrap();
    let id = text.lines().next().unwrap();
    std::fs::write(&wrong, format!("{id}\nsecret = \"not-the-secret\"\n")).unwrap();
    let port = free_port();
    let _refused = Agent::configure_tcg("", &config("e2e-keystone-wrong", &wrong))
        .with_metrics_port(port)
        .spawn();
    wait_for(
        Duration::from_secs(15),
        "PlacementSync Unauthorized",
        || (sync_condition(port) == Some(("Unauthorized".into(), false))).then_some(()),
    );
    assert!(p.provider("e2e-keystone-wrong").is_none());
}
