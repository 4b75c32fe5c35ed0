//! A fleet under a real OpenStack Placement, scheduled like Nova does. Five agents, each on a
//! captured sysfs tree (different CPU counts, SMT, NUMA, ECC, mitigations, offline CPUs) with a
//! store of its own, report to one Placement. A scheduler loop asks
//! `/allocation_candidates` with each flavor's request (`FlavorService/PlacementRequest`),
//! claims a random candidate in Placement (`PUT /allocations/{consumer}`) and then `Reserve`s
//! on the node it chose with the same consumer, releasing some guests on the way (Placement
//! first, then the node). A node refusing what Placement offered is a failure; the times
//! Placement offers nothing while a node's own capacity says the flavor fits are counted and
//! printed (docs/placement.md quotes them). `FLEET_SEED` reproduces a run.

mod common;

use std::collections::BTreeMap;

use common::placement::Placement;
use common::{Agent, Rng};
use hvagent_proto::v1 as pb;

type Channel = tonic::transport::Channel;

const FIXTURES: [&str; 5] = [
    "qemu-2s4c2t-numa",
    "qemu-1s8c-nosmt",
    "hardened-1s8c-ecc",
    "qemu-offline-cpus",
    "host-firecracker",
];

/// C, T, V and L; secure and ECC ones only the hardened tree serves; 6-core ones span the
/// NUMA tree's sockets.
const FLAVORS: [&str; 13] = [
    "SCS-1Vi-0.5u",
    "SCS-2Vi-1u",
    "SCS-1Li-0.5u",
    "SCS-2Li-1u",
    "SCS-1L-1u",
    "SCS-1Ci-0.5u",
    "SCS-2Ci-1u",
    "SCS-1Ti-0.5u",
    "SCS-2Ti-1u",
    "SCS-6Ci-2u",
    "SCS-6Ti-1u",
    "SCS-1C-0.5",
    "SCS-2V-1",
];

const REQUESTS: usize = 520;

struct Node {
    agent: Agent,
    name: String,
    placement: pb::placement_service_client::PlacementServiceClient<Channel>,
    node: pb::node_service_client::NodeServiceClient<Channel>,
}

fn consumer(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

#[test]
fn a_nova_like_scheduler_is_never_refused() {
    let Some(placement) = Placement::start() else {
        return;
    };
    let seed = std::env::var("FLEET_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5c5_f1ee7_u64);
    println!("FLEET_SEED={seed}");
    let rt = common::runtime();
    let mut nodes: Vec<Node> = FIXTURES
        .iter()
        .map(|fixture| {
            let name = format!("fleet-{fixture}-{}", std::process::id());
            let agent = Agent::start(&format!(
                "[host]\nsysfs_root = \"{}\"\nkvm_device = \"/nonexistent/kvm\"\n\
                 [placement]\nreserved_memory_mib = 256\n\
                 [placement_api]\nurl = \"{}\"\nauth = \"noauth\"\ntoken = \"{}\"\n\
                 provider_name = \"{name}\"\ninterval_seconds = 5\n",
                common::repo_root()
                    .join("agent/tests/fixtures")
                    .join(fixture)
                    .display(),
                placement.url,
                placement.token,
            ));
            let channel = rt.block_on(hvctl::client::connect(&agent.socket)).unwrap();
            Node {
                agent,
                name,
                placement: pb::placement_service_client::PlacementServiceClient::new(
                    channel.clone(),
                ),
                node: pb::node_service_client::NodeServiceClient::new(channel),
            }
        })
        .collect();
    // Every provider is there with its inventory.
    let providers: BTreeMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let uuid = common::wait_for(
                std::time::Duration::from_secs(60),
                &format!("provider {} with an inventory", n.name),
                || {
                    let (uuid, _) = placement.provider(&n.name)?;
                    let inv = placement.get(&format!("/resource_providers/{uuid}/inventories"));
                    let traits = placement.get(&format!("/resource_providers/{uuid}/traits"));
                    // Inventories first, then traits: a scheduler asking before the traits
                    // are there would miss this node, or be told a trait does not exist.
                    let filled = inv.body["inventories"]
                        .as_object()
                        .is_some_and(|m| !m.is_empty())
                        && traits.body["traits"]
                            .as_array()
                            .is_some_and(|t| !t.is_empty());
                    filled.then_some(uuid)
                },
            );
            (uuid, i)
        })
        .collect();

    let requests: BTreeMap<&str, pb::PlacementRequestResponse> = FLAVORS
        .iter()
        .map(|f| {
            let channel = rt
                .block_on(hvctl::client::connect(&nodes[0].agent.socket))
                .unwrap();
            let r = rt
                .block_on(
                    pb::flavor_service_client::FlavorServiceClient::new(channel).placement_request(
                        pb::PlacementRequestRequest {
                            name: f.to_string(),
                        },
                    ),
                )
                .unwrap()
                .into_inner();
            (*f, r)
        })
        .collect();

    let mut rng = Rng(seed | 1);
    let mut live: Vec<(String, usize)> = Vec::new();
    let (mut placed, mut released, mut refused, mut offered_nothing, mut missed, mut conflicts) =
        (0, 0, 0, 0, 0, 0);
    let mut refusals = Vec::new();
    let mut misses: BTreeMap<&str, usize> = BTreeMap::new();
    for n in 0..REQUESTS {
        if !live.is_empty() && rng.below(10) < 3 {
            let (c, node) = live.swap_remove(rng.below(live.len()));
            let a = placement.delete(&format!("/allocations/{c}"));
            assert_eq!(a.status, 204, "{a:?}");
            rt.block_on(
                nodes[node]
                    .placement
                    .release(pb::ReleaseRequest { vm_uuid: c.clone() }),
            )
            .unwrap_or_else(|e| panic!("release {c} on {}: {e:?}", nodes[node].name));
            released += 1;
            continue;
        }
        let flavor = FLAVORS[rng.below(FLAVORS.len())];
        let request = &requests[flavor];
        let answer = placement.get(&format!(
            "/allocation_candidates?{}&limit=1000",
            request.query
        ));
        // A required trait no provider has ever had is not known to Placement at all: it
        // answers 400 "No such trait(s)", which for a scheduler means no candidate.
        let unknown_trait =
            answer.status == 400 && answer.body.to_string().contains("No such trait");
        assert!(
            answer.status == 200 || unknown_trait,
            "{flavor}: {answer:?}"
        );
        let candidates = answer.body["allocation_requests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if candidates.is_empty() {
            offered_nothing += 1;
            // Would a node have taken it?
            let fits = nodes.iter_mut().any(|node| {
                rt.block_on(node.node.get_capacity(pb::GetCapacityRequest {
                    flavors: vec![flavor.to_string()],
                }))
                .unwrap()
                .into_inner()
                .flavors[0]
                    .more
                    > 0
            });
            if fits {
                missed += 1;
                *misses.entry(flavor).or_default() += 1;
            }
            continue;
        }
        // As Nova's scheduler: claim a candidate in Placement; one that lost a race (409: the
        // provider changed since the candidates were computed) makes way for the next.
        let c = consumer(n + 1);
        let first = rng.below(candidates.len());
        let mut node = None;
        for k in 0..candidates.len().min(3) {
            let chosen = &candidates[(first + k) % candidates.len()]["allocations"];
            let (provider, _) = chosen
                .as_object()
                .and_then(|m| m.iter().next())
                .expect("a candidate allocates from a provider");
            let put = placement.put(
                &format!("/allocations/{c}"),
                &serde_json::json!({
                    "allocations": chosen,
                    "project_id": "00000000-0000-4000-8000-00000000f1ee",
                    "user_id": "00000000-0000-4000-8000-00000000f1ee",
                    "consumer_generation": null,
                    "consumer_type": "INSTANCE",
                }),
            );
            match put.status {
                204 => {
                    node = Some(providers[provider]);
                    break;
                }
                409 => {
                    conflicts += 1;
                    println!("{flavor}: claim conflict on {provider}: {}", put.body);
                }
                _ => panic!("{flavor}: {put:?}"),
            }
        }
        let Some(node) = node else { continue };
        let reserved = rt.block_on(nodes[node].placement.reserve(pb::ReserveRequest {
            request_id: c.clone(),
            vm_uuid: c.clone(),
            flavor: flavor.to_string(),
            ttl_seconds: 3600,
        }));
        match reserved {
            Ok(_) => {
                placed += 1;
                live.push((c, node));
            }
            Err(e) => {
                refused += 1;
                refusals.push(format!("{flavor} on {}: {}", nodes[node].name, e.message()));
                let _ = placement.delete(&format!("/allocations/{c}"));
            }
        }
    }
    println!(
        "{REQUESTS} requests: {placed} placed, {released} released, {refused} refused by a node, \
         {conflicts} claims lost a race in Placement, \
         Placement offered nothing {offered_nothing} times, {missed} of them while a node's \
         capacity said the flavor fits {misses:?}"
    );
    assert_eq!(
        refused, 0,
        "nodes refused what Placement offered: {refusals:#?}"
    );
    assert!(
        placed >= 50,
        "the fleet took too few guests to mean much: {placed}"
    );

    // The reporters keep each provider's allocations equal to its node's claims.
    for (uuid, &i) in &providers {
        let want: Vec<String> = {
            let mut v: Vec<String> = live
                .iter()
                .filter(|(_, n)| *n == i)
                .map(|(c, _)| c.clone())
                .collect();
            v.sort();
            v
        };
        let claims = {
            let mut v = rt.block_on(common::claims(&mut nodes[i].placement));
            v.sort();
            v
        };
        assert_eq!(claims, want, "{}", nodes[i].name);
        let mut held: Vec<String> = placement.allocations(uuid).keys().cloned().collect();
        held.sort();
        assert_eq!(held, want, "{}", nodes[i].name);
    }
}
