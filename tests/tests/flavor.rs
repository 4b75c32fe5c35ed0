//! `hvctl flavor` (offline, no agent) and `hvagent.v1.FlavorService` on the real agent.

mod common;

use std::collections::BTreeMap;

use common::{Agent, code, hvctl_at, stderr, stdout};
use hvagent_proto::v1 as pb;

/// hvctl pointed at a socket where no agent runs: flavor commands must not need one.
fn offline(args: &[&str]) -> std::process::Output {
    hvctl_at(std::path::Path::new("/nonexistent/hvagent.sock"), args)
}

#[test]
fn parse_json_has_the_documented_shape() {
    let out = offline(&[
        "flavor",
        "parse",
        "SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64h-48hh_ib",
        "--output",
        "json",
    ]);
    assert_eq!(code(&out.status), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut order: Vec<(usize, &str)> = keys
        .iter()
        .map(|k| (text.find(&format!("\"{k}\"")).unwrap(), *k))
        .collect();
    order.sort();
    assert_eq!(
        order.into_iter().map(|(_, k)| k).collect::<Vec<_>>(),
        [
            "name",
            "syntax",
            "cpu",
            "ram",
            "disk",
            "hypervisor",
            "hwv",
            "cpu_brand",
            "gpu",
            "ib",
            "short_name",
            "extra_specs"
        ]
    );
    assert_eq!(
        v,
        serde_json::json!({
            "name": "SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64h-48hh_ib",
            "syntax": "v3",
            "cpu": {"count": 16, "type": "dedicated-thread", "insecure": false},
            "ram": {"gib": 64.0, "ecc": true, "oversubscribed": false},
            "disk": {"count": 3, "size_gb": 10, "type": "ssd"},
            "hypervisor": "kvm",
            "hwv": true,
            "cpu_brand": {"vendor": "amd", "generation": 3, "frequency_level": 1},
            "gpu": {"kind": "passthrough", "vendor": "nvidia", "generation": "a", "compute_units": 64,
                    "high_freq_level": 1, "vram_gib": 48, "hbm_level": 2},
            "ib": true,
            "short_name": "SCS-16T-64-3x10s_GNa-64-48_ib",
            "extra_specs": {
                "scs:cpu-type": "dedicated-thread",
                "scs:disk0-type": "ssd", "scs:disk1-type": "ssd", "scs:disk2-type": "ssd",
                "scs:name-v1": "SCS-16T:64:3x10s-kvm-hwv-z3h-GNa:64h:48hh-ib",
                "scs:name-v2": "SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64h-48hh_ib",
                "scs:name-v3": "SCS-16T:64:3x10s-GNa:64:48-ib",
                "scs:name-v4": "SCS-16T-64-3x10s_GNa-64-48_ib"
            }
        })
    );
    let out = offline(&["flavor", "parse", "SCS-1V-0.5", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["disk"], serde_json::Value::Null);
    assert_eq!(v["ram"]["gib"], 0.5);
    assert_eq!(v["cpu_brand"], serde_json::Value::Null);
    let out = offline(&["flavor", "parse", "SCS-2C-4-n", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["disk"],
        serde_json::json!({"count": 1, "size_gb": null, "type": "network"})
    );
}

#[test]
fn invalid_names_exit_2_with_the_position_on_stderr_only() {
    for (name, reason) in [
        (
            "SCS-2V-4.3",
            "position 7: RAM must be a positive multiple of 0.5, got \"4.3\"",
        ),
        (
            "SCS-2C-4-10_hwv_xen",
            "position 15: extensions must appear in the order",
        ),
        ("SCS-1V-4-10 ", "position 11: unexpected ' '"),
        // The reference tool's v1 grammar has no "-chy".
        (
            "SCS-2V:4-chy",
            "position 8: hypervisor \"-chy\" does not exist in v1 syntax",
        ),
    ] {
        for extra in [&[][..], &["--output", "json"][..]] {
            let mut args = vec!["flavor", "parse", name];
            args.extend_from_slice(extra);
            let out = offline(&args);
            assert_eq!(code(&out.status), 2, "{name}");
            assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
            assert!(stderr(&out).contains(reason), "{name}: {}", stderr(&out));
        }
    }
}

#[test]
fn v1_names_parse_with_a_deprecation_warning() {
    let out = offline(&[
        "flavor",
        "parse",
        "SCS-4C:32:100s-kvm-hwv-i3h-GNa:64",
        "--output",
        "json",
    ]);
    assert_eq!(code(&out.status), 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["syntax"], "v1");
    assert_eq!(v["name"], "SCS-4C-32-100s_kvm_hwv_i3h_GNa-64");
    assert!(
        stderr(&out).contains("warning: v1 syntax is deprecated"),
        "{}",
        stderr(&out)
    );
    // v1 spellings the reference tool takes besides the canonical one ("1x", "x").
    for (v1, v3) in [
        ("SCS-2V:4:1x20s", "SCS-2V-4-20s"),
        ("SCS-2V:4:x10", "SCS-2V-4-10"),
    ] {
        let out = offline(&["flavor", "parse", v1, "--output", "json"]);
        assert_eq!(code(&out.status), 0, "{v1}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["syntax"], "v1", "{v1}");
        assert_eq!(v["name"], v3, "{v1}");
    }
}

#[test]
fn explain_and_standard_work_offline() {
    let out = offline(&["flavor", "explain", "SCS-4C-16-50s"]);
    assert_eq!(code(&out.status), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("4 vCPUs, each pinned to its own physical core that no other guest"),
        "{text}"
    );
    assert!(text.contains("16 GiB of RAM, not oversubscribed"), "{text}");
    let out = offline(&["flavor", "explain", "SCS-4X-16"]);
    assert_eq!(code(&out.status), 2);

    let out = offline(&["flavor", "standard"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1 + 28, "{text}");
    assert_eq!(text.matches("mandatory").count(), 15);
    assert!(
        text.contains("SCS-2V-4-20s") && text.contains("20 GB ssd"),
        "{text}"
    );
    let out = offline(&["flavor", "standard", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 28);
    assert_eq!(v[13]["name"], "SCS-2V-4-20s");
    assert_eq!(v[13]["flavor"]["extra_specs"]["scs:disk0-type"], "ssd");
}

#[test]
fn flavor_service_over_grpc() {
    let agent = Agent::start("");
    let rt = common::runtime();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut svc = pb::flavor_service_client::FlavorServiceClient::new(channel);
        let request = |name: &str, extra: &[(&str, &str)]| pb::ParseFlavorRequest {
            name: name.into(),
            extra_specs: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        };
        let ok = svc
            .parse(request("SCS-2V-4-20s", &[]))
            .await
            .unwrap()
            .into_inner();
        let f = ok.flavor.unwrap();
        assert_eq!(f.name, "SCS-2V-4-20s");
        assert_eq!(f.cpu.unwrap().r#type, "shared-core");
        assert_eq!(f.extra_specs["scs:name-v1"], "SCS-2V:4:20s");
        assert!(ok.contradictions.is_empty());

        let checked = svc
            .parse(request(
                "SCS-2V-4-20s",
                &[
                    ("scs:cpu-type", "dedicated-core"),
                    ("scs:disk0-type", "ssd"),
                ],
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            checked.contradictions,
            vec!["scs:cpu-type = \"dedicated-core\", but the name says \"shared-core\""]
        );

        for (name, message) in [
            (
                "SCS-2V-4.3",
                "name: position 7: RAM must be a positive multiple of 0.5, got \"4.3\"",
            ),
            ("", "name: must not be empty"),
            (&"SCS-1V-1_".repeat(40)[..], "name: at most 256 characters"),
        ] {
            let status = svc.parse(request(name, &[])).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
            assert_eq!(status.message(), message);
        }

        let explained = svc
            .explain(pb::ExplainFlavorRequest {
                name: "SCS-8Ti-32-50p_i1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            explained
                .promises
                .iter()
                .any(|p| p.part == "_i1" && p.promise.contains("Skylake"))
        );

        let all = svc
            .list_standard(pb::ListStandardFlavorsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.flavors.len(), 28);
        assert_eq!(all.flavors.iter().filter(|f| f.mandatory).count(), 15);
    });
}

#[test]
fn placement_request_offline_has_the_documented_shape() {
    let out = offline(&[
        "flavor",
        "placement-request",
        "SCS-2C-4-10s",
        "--output",
        "json",
    ]);
    assert_eq!(code(&out.status), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut order: Vec<(usize, &str)> = keys
        .iter()
        .map(|k| (text.find(&format!("\"{k}\"")).unwrap(), *k))
        .collect();
    order.sort();
    assert_eq!(
        order.iter().map(|(_, k)| *k).collect::<Vec<_>>(),
        [
            "name",
            "resources",
            "required",
            "forbidden",
            "query",
            "extra_specs"
        ]
    );
    // Default policy: 4096 MiB + 128 + 2×8 + 41 (1 % of RAM) of normal memory; a core per vCPU.
    assert_eq!(
        v["resources"],
        serde_json::json!({"DISK_GB": 10, "MEMORY_MB": 4281, "PCPU": 2})
    );
    assert_eq!(
        v["required"],
        serde_json::json!([
            "CUSTOM_HVAGENT_OVERHEAD_128M_8M_10PM",
            "CUSTOM_HVAGENT_PAGES_C_4K",
            "CUSTOM_SCS_DISK_S",
            "CUSTOM_SCS_ECC",
            "CUSTOM_SCS_SECURE"
        ])
    );
    assert_eq!(
        v["forbidden"],
        serde_json::json!(["COMPUTE_STATUS_DISABLED"])
    );
    assert_eq!(
        v["query"],
        "resources=DISK_GB:10,MEMORY_MB:4281,PCPU:2&required=CUSTOM_HVAGENT_OVERHEAD_128M_8M_10PM,\
         CUSTOM_HVAGENT_PAGES_C_4K,CUSTOM_SCS_DISK_S,CUSTOM_SCS_ECC,CUSTOM_SCS_SECURE,\
         !COMPUTE_STATUS_DISABLED"
    );
    let e = &v["extra_specs"];
    assert_eq!(e["resources:PCPU"], "2");
    assert_eq!(e["hw:cpu_policy"], "dedicated");
    assert_eq!(e["hw:cpu_thread_policy"], "isolate");
    assert_eq!(e["trait:CUSTOM_SCS_DISK_S"], "required");
    assert_eq!(e["trait:COMPUTE_STATUS_DISABLED"], "forbidden");

    // The cloud's policy from a config file: C guests on 2 MiB pages, overhead on normal ones.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cloud.toml");
    std::fs::write(&config, "[placement]\nhugepages = { C = \"2M\" }\n").unwrap();
    let out = offline(&[
        "flavor",
        "placement-request",
        "SCS-2C-4",
        "--config",
        config.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code(&out.status), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["resources"],
        serde_json::json!({"CUSTOM_HUGEPAGES_2M": 2048, "MEMORY_MB": 185, "PCPU": 2})
    );
    assert_eq!(v["extra_specs"]["hw:mem_page_size"], "2MB");

    // Bad input exits 2 and prints nothing on stdout.
    std::fs::write(&config, "[placement]\ncrowded_ratio = 0\n").unwrap();
    for args in [
        vec!["flavor", "placement-request", "SCS-2X-4"],
        vec![
            "flavor",
            "placement-request",
            "SCS-2V-4",
            "--config",
            config.to_str().unwrap(),
        ],
    ] {
        let out = offline(&args);
        assert_eq!(code(&out.status), 2, "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let table = offline(&["flavor", "placement-request", "SCS-1V-2"]);
    assert_eq!(code(&table.status), 0, "{}", stderr(&table));
    assert!(stdout(&table).contains("query:     resources=MEMORY_MB:2205,VCPU:1&required="));
}

/// The agent answers under its own `[placement]` policy, exactly as hvctl computes offline from
/// the same config file.
#[test]
fn placement_request_over_grpc_follows_the_node_policy() {
    let agent = Agent::start("[placement]\ncrowded_ratio = 4\nreserved_memory_mib = 256\n");
    let offline_json = offline(&[
        "flavor",
        "placement-request",
        "SCS-2L-2",
        "--config",
        agent.config.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code(&offline_json.status), 0, "{}", stderr(&offline_json));
    let rt = common::runtime();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut svc = pb::flavor_service_client::FlavorServiceClient::new(channel);
        let r = svc
            .placement_request(pb::PlacementRequestRequest {
                name: "SCS-2L:2".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.name, "SCS-2L-2");
        // 2 L vCPUs at 4 per thread cost at most 2×5/4 V shares: 3 VCPU.
        assert_eq!(r.resources["VCPU"], 3);
        assert!(r.required.contains(&"CUSTOM_HVAGENT_L_RATIO_4".to_string()));
        let grpc: serde_json::Value = serde_json::to_value(&r).unwrap();
        let offline: serde_json::Value = serde_json::from_slice(&offline_json.stdout).unwrap();
        assert_eq!(grpc, offline);

        let status = svc
            .placement_request(pb::PlacementRequestRequest {
                name: "SCS-2V-4.3".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "name: position 7: RAM must be a positive multiple of 0.5, got \"4.3\""
        );
    });
}
