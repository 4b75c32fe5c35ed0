//! `PlacementService` and `NodeService.GetCapacity` on the real agent over its Unix socket,
//! `hvctl plan` as a real process, and a policy that does not fit the node.
//!
//! Most agents here read the sysfs/procfs tree captured from a 2-socket × 4-core × 2-thread
//! QEMU guest with 2 NUMA nodes (`[host] sysfs_root`), so pins are exact on any CI machine; one
//! test runs on this machine's own sysfs and hugepages.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Agent, code, hvctl_at, repo_root, runtime, stderr, stdout};
use hvagent_proto::v1 as pb;
use tonic::Code;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("agent/tests/fixtures").join(name)
}

/// An agent on the NUMA fixture, without a KVM trial, with a small host memory reserve.
fn numa_agent(placement: &str) -> Agent {
    Agent::start(&format!(
        "[host]\nsysfs_root = \"{}\"\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_memory_mib = 256\n{placement}",
        fixture("qemu-2s4c2t-numa").display()
    ))
}

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn reserve(request_id: &str, vm: &str, flavor: &str, ttl: u32) -> pb::ReserveRequest {
    pb::ReserveRequest {
        request_id: request_id.into(),
        vm_uuid: vm.into(),
        flavor: flavor.into(),
        ttl_seconds: ttl,
    }
}

struct Clients {
    placement: pb::placement_service_client::PlacementServiceClient<tonic::transport::Channel>,
    node: pb::node_service_client::NodeServiceClient<tonic::transport::Channel>,
}

impl Clients {
    async fn new(agent: &Agent) -> Clients {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        Clients {
            placement: pb::placement_service_client::PlacementServiceClient::new(channel.clone()),
            node: pb::node_service_client::NodeServiceClient::new(channel),
        }
    }

    async fn list(&mut self) -> pb::ListClaimsResponse {
        self.placement
            .list_claims(pb::ListClaimsRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    async fn refused(&mut self, req: pb::ReserveRequest) -> (Code, String) {
        let status = self.placement.reserve(req).await.unwrap_err();
        (status.code(), status.message().to_string())
    }
}

fn pins(c: &pb::Claim) -> Vec<u32> {
    c.vcpus.iter().flat_map(|v| v.cpus.clone()).collect()
}

#[test]
fn reserve_list_capacity_release_over_grpc() {
    let agent = numa_agent("");
    runtime().block_on(async {
        let mut c = Clients::new(&agent).await;
        let empty = c.list().await;
        assert!(empty.claims.is_empty());
        assert_eq!(empty.shared_pool, (2..16).collect::<Vec<u32>>());

        let first = c
            .placement
            .reserve(reserve("req-1", &uuid(1), "SCS-2Ci-1u", 60))
            .await
            .unwrap()
            .into_inner();
        let claim = first.claim.clone().unwrap();
        assert_eq!(pins(&claim), [2, 4]);
        assert_eq!(claim.idle_cpus, [3, 5]);
        assert_eq!(claim.emulator_cpus, [0, 1]);
        assert_eq!(claim.cpu_type, "C");
        assert!(claim.reservation);
        assert!(claim.expires_in_ms > 55_000 && claim.expires_in_ms <= 60_000);
        assert_eq!(
            claim.memory,
            [pb::MemoryShare {
                numa_node: 0,
                mib: 1024,
                page_size_kib: 4
            }]
        );
        let topo = claim.guest_topology.unwrap();
        assert_eq!((topo.sockets, topo.cores, topo.threads), (1, 2, 1));

        // The same request again: the same claim, nothing new taken.
        let again = c
            .placement
            .reserve(reserve("req-1", &uuid(1), "SCS-2Ci-1u", 60))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pins(&again.claim.unwrap()), [2, 4]);
        assert_eq!(again.generation, first.generation);

        let listed = c.list().await;
        assert_eq!(listed.claims.len(), 1);
        assert_eq!(listed.shared_pool, [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);

        let v = c
            .placement
            .reserve(reserve("req-2", &uuid(2), "SCS-4Vi-1u", 60))
            .await
            .unwrap()
            .into_inner()
            .claim
            .unwrap();
        assert!(v.vcpus.iter().all(|x| x.cpus == listed.shared_pool));
        assert_eq!(v.emulator_cpus, [0, 1]);

        let capacity = c
            .node
            .get_capacity(pb::GetCapacityRequest {
                flavors: vec![
                    "SCS-2Ci-1u".into(),
                    "SCS-2V-4".into(),
                    "SCS-1Li-0.5u".into(),
                ],
            })
            .await
            .unwrap()
            .into_inner();
        let by_name = |n: &str| capacity.flavors.iter().find(|f| f.flavor == n).unwrap();
        assert_eq!(by_name("SCS-2V-4").more, 0);
        assert_eq!(by_name("SCS-2V-4").limited_by, "ECC");
        assert!(by_name("SCS-2Ci-1u").more >= 1);
        assert_eq!(by_name("SCS-2Ci-1u").per_numa_node.len(), 2);
        assert_eq!(by_name("SCS-1Li-0.5u").limited_by, "MEMORY_MB");

        // Every standard flavor when none is named; this node has no ECC, so none fits.
        let standard = c
            .node
            .get_capacity(pb::GetCapacityRequest { flavors: vec![] })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(standard.flavors.len(), 28);
        assert!(
            standard
                .flavors
                .iter()
                .all(|f| f.more == 0 && f.limited_by == "ECC")
        );

        let released = c
            .placement
            .release(pb::ReleaseRequest { vm_uuid: uuid(1) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pins(&released.claim.unwrap()), [2, 4]);
        let after = c.list().await;
        assert_eq!(after.claims.len(), 1);
        assert_eq!(after.shared_pool, (2..16).collect::<Vec<u32>>());
        let gone = c
            .placement
            .release(pb::ReleaseRequest { vm_uuid: uuid(1) })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        assert_eq!(gone.message(), format!("VM {} holds no claim", uuid(1)));
    });
}

#[test]
fn bad_requests_get_the_right_code_and_change_nothing() {
    let agent = numa_agent("");
    runtime().block_on(async {
        let mut c = Clients::new(&agent).await;
        c.placement
            .reserve(reserve("held", &uuid(9), "SCS-4Ci-1u", 60))
            .await
            .unwrap();
        let before = c.list().await;
        let cases = [
            (
                reserve("r", "not-a-uuid", "SCS-1Vi-1u", 60),
                Code::InvalidArgument,
                "vm_uuid: must be a UUID (8-4-4-4-12 hex digits)".to_string(),
            ),
            (
                reserve("", &uuid(1), "SCS-1Vi-1u", 60),
                Code::InvalidArgument,
                "request_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -".into(),
            ),
            (
                reserve("r", &uuid(1), "", 60),
                Code::InvalidArgument,
                "flavor: must not be empty".into(),
            ),
            (
                reserve("r", &uuid(1), "SCS-1X-1", 60),
                Code::InvalidArgument,
                "flavor: position 5: CPU type must be one of L (crowded-core), V (shared-core), T (dedicated-thread), C (dedicated-core), got 'X'".into(),
            ),
            (
                reserve("r", &uuid(1), "SCS-1Vi-1u", 0),
                Code::InvalidArgument,
                "ttl_seconds: must be between 1 and 3600".into(),
            ),
            (
                reserve("r", &uuid(1), "SCS-1V-1", 60),
                Code::FailedPrecondition,
                "flavor promises ECC memory (no `u` in the name) but this node cannot: ECC cannot be confirmed: no EDAC memory controller registered under /sys/devices/system/edac/mc".into(),
            ),
            (
                reserve("r", &uuid(1), "SCS-4Ci-1u", 60),
                Code::ResourceExhausted,
                "4 dedicated vCPUs need 4 free cores with all their threads free; 3 are free (node 0: 3, node 1: 0)".into(),
            ),
            (
                reserve("held", &uuid(1), "SCS-1Vi-1u", 60),
                Code::AlreadyExists,
                format!(
                    "request_id \"held\" already holds a claim for VM {} with flavor SCS-4Ci-1u",
                    uuid(9)
                ),
            ),
            (
                reserve("other", &uuid(9), "SCS-1Vi-1u", 60),
                Code::AlreadyExists,
                format!(
                    "VM {} already holds a claim (request_id \"held\", flavor SCS-4Ci-1u)",
                    uuid(9)
                ),
            ),
        ];
        for (req, want_code, want_message) in cases {
            let got = c.refused(req.clone()).await;
            assert_eq!(got, (want_code, want_message), "{req:?}");
        }
        let after = c.list().await;
        assert_eq!(after.generation, before.generation, "nothing changed");
        // The same claims (apart from the reservation's clock).
        let still = |l: &pb::ListClaimsResponse| {
            l.claims
                .iter()
                .map(|c| pb::Claim {
                    expires_in_ms: 0,
                    ..c.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(still(&after), still(&before));

        let status = c
            .placement
            .release(pb::ReleaseRequest {
                vm_uuid: "x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = c
            .node
            .get_capacity(pb::GetCapacityRequest {
                flavors: vec!["SCS-2V-4".into(), "bogus".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("flavors[1]: "), "{}", status.message());
    });
}

#[test]
fn reservations_expire_on_their_own() {
    let agent = numa_agent("");
    runtime().block_on(async {
        let mut c = Clients::new(&agent).await;
        let made = c
            .placement
            .reserve(reserve("short", &uuid(1), "SCS-2Ci-1u", 1))
            .await
            .unwrap()
            .into_inner();
        // The agent's expiry runs every second: within 3 s the claim is gone by itself.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let after = c.list().await;
        assert!(after.claims.is_empty(), "{:?}", after.claims);
        assert!(after.generation > made.generation);
        assert_eq!(after.shared_pool, (2..16).collect::<Vec<u32>>());
    });
}

#[test]
fn hvctl_placement_commands() {
    let agent = numa_agent("hugepages = { V = \"1G\" }\n");
    let out = agent.hvctl(&[
        "placement",
        "reserve",
        "--flavor",
        "SCS-1Vi-1u",
        "--vm-uuid",
        &uuid(7),
        "--ttl",
        "600",
    ]);
    assert_eq!(code(&out.status), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("1:1024@1G"), "{text}");
    assert!(text.contains("reserved, 600 s left"), "{text}");

    let out = agent.hvctl(&["--output", "json", "placement", "claims"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["claims"][0]["request_id"], format!("hvctl-{}", uuid(7)));
    assert_eq!(v["claims"][0]["memory"][0]["page_size_kib"], 1048576);

    // The node's only 1G page is taken.
    let out = agent.hvctl(&["node", "capacity", "SCS-1Vi-1u"]);
    assert_eq!(code(&out.status), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("CUSTOM_HUGEPAGES_1G"),
        "{}",
        stdout(&out)
    );
    let out = agent.hvctl(&[
        "placement",
        "reserve",
        "--flavor",
        "SCS-1Vi-1u",
        "--vm-uuid",
        &uuid(8),
    ]);
    assert_eq!(code(&out.status), 1);
    assert!(
        stderr(&out).contains("guest needs 1024 MiB of 1G pages plus 147 MiB overhead"),
        "{}",
        stderr(&out)
    );

    let out = agent.hvctl(&["placement", "release", &uuid(7)]);
    assert_eq!(code(&out.status), 0, "{}", stderr(&out));
    let out = agent.hvctl(&["placement", "release", &uuid(7)]);
    assert_eq!(code(&out.status), 1);
    assert!(stderr(&out).contains("holds no claim"), "{}", stderr(&out));
}

#[test]
fn a_policy_that_does_not_fit_the_node_exits_2() {
    let agent = Agent::configure(&format!(
        "[host]\nsysfs_root = \"{}\"\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"0,99\"\n",
        fixture("qemu-2s4c2t-numa").display()
    ));
    let out = agent.command().output().unwrap();
    assert_eq!(code(&out.status), 2);
    assert!(
        stderr(&out).contains("placement.reserved_cpus: CPU 99 is not an online CPU of this node"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plan_places_flavors_offline_in_order() {
    let root = fixture("qemu-2s4c2t-numa");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plan.toml");
    std::fs::write(&config, "[placement]\nreserved_memory_mib = 256\n").unwrap();
    let out = hvctl_at(
        std::path::Path::new("/nonexistent/hvagent.sock"),
        &[
            "plan",
            "--root",
            root.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--flavor",
            "SCS-2Ci-1u=2",
            "--flavor",
            "SCS-8Ci-1u=1",
            "--output",
            "json",
        ],
    );
    assert_eq!(code(&out.status), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["capacity", "claims", "rejected"]);
    let claim = &v["claims"][0];
    assert_eq!(claim["flavor"], "SCS-2Ci-1u");
    assert_eq!(claim["index"], 0);
    assert_eq!(
        claim["vcpus"],
        serde_json::json!([{"vcpu": 0, "cpus": [2]}, {"vcpu": 1, "cpus": [4]}])
    );
    assert_eq!(claim["emulator_cpus"], serde_json::json!([0, 1]));
    assert_eq!(
        claim["memory"],
        serde_json::json!([{"numa_node": 0, "mib": 1024, "page_size_kib": 4}])
    );
    assert_eq!(
        claim["guest_topology"],
        serde_json::json!({"sockets": 1, "cores": 2, "threads": 1})
    );
    assert_eq!(v["claims"][1]["vcpus"][0]["cpus"], serde_json::json!([8]));
    assert_eq!(v["rejected"][0]["flavor"], "SCS-8Ci-1u");
    assert_eq!(v["rejected"][0]["index"], 0);
    assert_eq!(v["rejected"][0]["limited_by"], "PCPU");
    assert_eq!(
        v["rejected"][0]["reason"],
        "8 dedicated vCPUs need 8 free cores with all their threads free; 3 are free (node 0: 1, node 1: 2)"
    );
    assert_eq!(v["capacity"][0]["flavor"], "SCS-2Ci-1u");
    assert_eq!(v["capacity"][0]["more"], 1);
    assert_eq!(v["capacity"][0]["limited_by"], "PCPU");
    // One more fits only spread over both nodes (a core and 512 MiB on each): no node alone
    // has two free cores and 1 GiB beside them.
    assert_eq!(
        v["capacity"][0]["per_numa_node"],
        serde_json::json!([{"numa_node": 0, "more": 0}, {"numa_node": 1, "more": 0}])
    );

    for (args, message) in [
        (vec!["--flavor", "SCS-2V-4"], "expected NAME=COUNT"),
        (
            vec!["--flavor", "SCS-2V-4=0"],
            "COUNT must be a number from 1 to 100000",
        ),
        (
            vec!["--flavor", "SCS-2Q-4=1"],
            "is not a valid SCS flavor name",
        ),
    ] {
        let mut all = vec!["plan", "--root", root.to_str().unwrap()];
        all.extend(args);
        let out = hvctl_at(std::path::Path::new("/nonexistent"), &all);
        assert_eq!(code(&out.status), 2, "{all:?}");
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
    }
}

/// The promises a host either has or lacks (ECC, timely mitigations, and SMT with them) are
/// judged from the tree the agent reads, never from the machine the tests run on: the NUMA
/// fixture (captured: SMT on, gather_data_sampling "Unknown", retbleed "Vulnerable", no EDAC) and
/// `hardened-1s8c-ecc` (derived from `qemu-1s8c-nosmt`: every entry mitigated, SECDED DIMMs).
#[test]
fn ecc_and_security_promises_follow_the_host_tree() {
    let vulnerable = numa_agent("");
    let hardened = Agent::start(&format!(
        "[host]\nsysfs_root = \"{}\"\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_memory_mib = 64\n",
        fixture("hardened-1s8c-ecc").display()
    ));
    let scs = |agent: &Agent| agent.inventory_json()["scs"].clone();
    let (v, h) = (scs(&vulnerable), scs(&hardened));
    assert_eq!(v["serves_secure"], false, "{v:#}");
    let why = v["serves_secure_reason"].as_str().unwrap().to_string();
    // The first entry (by name) the kernel does not call mitigated.
    assert_eq!(
        why,
        "gather_data_sampling: Unknown: Dependent on hypervisor status"
    );
    assert_eq!(h["serves_secure"], true, "{h:#}");
    assert_eq!(
        hardened.inventory_json()["memory"]["ecc"],
        "present",
        "SECDED DIMMs under EDAC"
    );
    runtime().block_on(async {
        let mut c = Clients::new(&vulnerable).await;
        let (code, msg) = c.refused(reserve("a", &uuid(1), "SCS-1V-0.5u", 60)).await;
        assert_eq!(code, Code::FailedPrecondition);
        assert_eq!(
            msg,
            format!("flavor promises timely security mitigations (no `i` in the name) but this node serves only `i` flavors: {why}")
        );
        let (code, msg) = c.refused(reserve("b", &uuid(2), "SCS-1Vi-0.5", 60)).await;
        assert_eq!(code, Code::FailedPrecondition);
        assert!(msg.starts_with("flavor promises ECC memory"), "{msg}");
        assert!(c.list().await.claims.is_empty(), "refusals claim nothing");
        c.placement
            .reserve(reserve("c", &uuid(3), "SCS-1Vi-0.5u", 60))
            .await
            .expect("an i+u flavor promises nothing this host lacks");

        // The hardened host serves what the vulnerable one refused, dedicated cores included
        // (its 1 GiB fits one such guest at a time).
        let mut c = Clients::new(&hardened).await;
        let capacity = c
            .node
            .get_capacity(pb::GetCapacityRequest {
                flavors: vec!["SCS-1V-0.5".into(), "SCS-2C-0.5".into()],
            })
            .await
            .unwrap()
            .into_inner();
        for f in &capacity.flavors {
            assert!(f.more >= 1, "{f:?}");
        }
        let claim = c
            .placement
            .reserve(reserve("h", &uuid(1), "SCS-2C-0.5", 60))
            .await
            .expect("ECC and mitigations are there")
            .into_inner()
            .claim
            .unwrap();
        assert_eq!(claim.flavor, "SCS-2C-0.5");
        assert_eq!(pins(&claim).len(), 2);
    });
}

/// This machine's own sysfs and hugepage pool: what GetCapacity promises, Reserve delivers,
/// and the claimed hugepages never exceed the kernel's pool.
#[test]
fn capacity_on_this_host_is_what_reserve_then_gets() {
    let pages: u64 =
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
    let policy = if pages >= 256 {
        "hugepages = { V = \"2M\" }\n"
    } else {
        eprintln!(
            "SKIP hugepage part: this host has {pages} 2 MiB hugepages (make test allocates 512); using normal pages"
        );
        ""
    };
    let agent = Agent::start(&format!(
        "[host]\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"\"\n{policy}"
    ));
    // Whatever this host is, an `i`+`u` flavor promises nothing it cannot check.
    let flavor = "SCS-1Vi-0.5u";
    runtime().block_on(async {
        let mut c = Clients::new(&agent).await;
        let answer = c
            .node
            .get_capacity(pb::GetCapacityRequest {
                flavors: vec![flavor.into()],
            })
            .await
            .unwrap()
            .into_inner();
        let more = answer.flavors[0].more;
        let limited_by = answer.flavors[0].limited_by.clone();
        assert!(more > 0, "{:?}", answer.flavors[0]);
        let mut got = 0;
        let refusal = loop {
            match c
                .placement
                .reserve(reserve(&format!("h{got}"), &uuid(got as u32), flavor, 600))
                .await
            {
                Ok(_) => got += 1,
                Err(status) => break status,
            }
            assert!(
                got <= more,
                "more guests fit than GetCapacity said ({more})"
            );
        };
        assert_eq!(got, more, "GetCapacity said {more}, Reserve took {got}");
        assert_eq!(refusal.code(), Code::ResourceExhausted);
        let listed = c.list().await;
        let claimed_pages: u64 = listed
            .claims
            .iter()
            .flat_map(|c| &c.memory)
            .filter(|m| m.page_size_kib == 2048)
            .map(|m| m.mib / 2)
            .sum();
        assert!(claimed_pages <= pages);
        if !policy.is_empty() {
            assert!(
                listed
                    .claims
                    .iter()
                    .all(|c| c.memory.iter().all(|m| m.page_size_kib == 2048))
            );
            if limited_by == "CUSTOM_HUGEPAGES_2M" {
                // Less than one more guest's pages are left on every node.
                let nodes = std::fs::read_dir("/sys/devices/system/node")
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .filter(|e| e.file_name().to_string_lossy().starts_with("node"))
                            .count()
                    })
                    .unwrap_or(1)
                    .max(1) as u64;
                assert!(
                    pages - claimed_pages < 256 * nodes,
                    "{claimed_pages} of {pages} pages claimed"
                );
            }
        }
    });
}

/// `GetInventory`'s Placement view is the allocator's: the host's CPUs and memory reserved,
/// `PCPU` and `VCPU` disjoint, memory bounded by the smaller NUMA node, the guest's CPU as TCG
/// emulates it, the policy's traits; and it does not move when claims are made.
#[test]
fn inventory_scheduler_view_is_the_allocators() {
    let agent = numa_agent("");
    runtime().block_on(async {
        let mut c = Clients::new(&agent).await;
        let view = |inv: pb::Inventory| inv.scheduler.expect("scheduler view");
        let before = view(
            c.node
                .get_inventory(pb::GetInventoryRequest {})
                .await
                .unwrap()
                .into_inner(),
        );
        let classes: Vec<(&str, u64, u64, f64)> = before
            .inventories
            .iter()
            .filter(|r| r.resource_class != "DISK_GB")
            .map(|r| {
                (
                    r.resource_class.as_str(),
                    r.total,
                    r.reserved,
                    r.allocation_ratio,
                )
            })
            .collect();
        assert_eq!(
            classes,
            vec![
                ("CUSTOM_HUGEPAGES_1G", 1, 0, 1.0),
                ("CUSTOM_HUGEPAGES_2M", 96, 0, 1.0),
                ("MEMORY_MB", 4730, 2901, 1.0),
                ("PCPU", 6, 0, 1.0),
                ("VCPU", 4, 2, 3.0),
            ]
        );
        let disk = before
            .inventories
            .iter()
            .find(|r| r.resource_class == "DISK_GB")
            .expect("the store's filesystem is measured");
        assert!(disk.total > 0);
        let t = &before.traits;
        for want in [
            "COMPUTE_NODE",
            "CUSTOM_SCS_EMULATION_ONLY",
            "CUSTOM_HVAGENT_PAGES_C_4K",
            "CUSTOM_HVAGENT_L_RATIO_8",
            "HW_CPU_X86_SSE2",
        ] {
            assert!(t.contains(&want.to_string()), "{want} missing: {t:?}");
        }
        // The fixture's CPU has AVX2, but a TCG guest gets qemu64.
        assert!(!t.contains(&"HW_CPU_X86_AVX2".to_string()), "{t:?}");
        assert!(!t.contains(&"COMPUTE_STATUS_DISABLED".to_string()), "{t:?}");

        c.placement
            .reserve(reserve("inv-1", &uuid(1), "SCS-2Ci-1u", 60))
            .await
            .unwrap();
        let after = view(
            c.node
                .get_inventory(pb::GetInventoryRequest {})
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(after, before, "the view does not depend on the claims");
    });
}
