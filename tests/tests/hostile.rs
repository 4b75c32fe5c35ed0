//! Hostile input against the real agent: path traversal and symlinks as image names and
//! sources, oversize user-data, XML and shell metacharacters in names and metadata, and
//! 10 000 random requests over every mutating and reading method. Each is answered with a code
//! that names the caller's mistake (never INTERNAL, UNKNOWN or UNAVAILABLE), the agent keeps
//! serving, and nothing is left behind: no guest, image, partial import, network or claim.

mod common;

use std::collections::BTreeMap;

use common::{Agent, Rng, claims, listed, runtime};
use hvagent_proto::v1 as pb;
use tonic::Code;

impl Rng {
    /// A string of hostile and ordinary pieces.
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "web",
            "a",
            "-",
            ".",
            "..",
            "../",
            "/",
            "//",
            "%2e%2e",
            "<",
            ">",
            "&",
            "&amp;",
            "'",
            "\"",
            "]]>",
            "<!--",
            "$(reboot)",
            "`id`",
            ";",
            "|",
            "\\",
            "\n",
            "\t",
            "\u{0}",
            " ",
            "é",
            "\u{202e}",
            "00000000-0000-4000-8000-000000000001",
            "SCS-1V-2",
            "testguest",
            "br-x",
            "*",
            "?",
            "{",
            "}",
            "=",
        ];
        let mut s = String::new();
        for _ in 0..self.below(8) {
            s.push_str(self.pick(PIECES));
        }
        if self.below(20) == 0 {
            s.push_str(&"x".repeat(self.below(400)));
        }
        s
    }
}

/// Codes that say the request was wrong or the thing absent: the only acceptable answers.
fn acceptable(code: Code) -> bool {
    matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::OutOfRange
    )
}

#[test]
fn ten_thousand_random_requests_get_the_right_codes_and_leave_nothing() {
    let seed: u64 = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    // The test reads the agent's stderr only if it dies: keep the log short (a full pipe would
    // block the agent), and the audit records in their own file.
    let agent =
        Agent::configure("[host]\nkvm_device = \"/nonexistent/kvm\"\n[log]\nlevel = \"error\"\n");
    let audit = agent.dir.path().join("audit.log");
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("{config}[access]\naudit_log = \"{}\"\n", audit.display()),
    )
    .unwrap();
    let agent = agent.spawn();
    // A directory and a symlink to one: not images.
    let dir = agent.dir.path().join("not-an-image");
    std::fs::create_dir_all(&dir).unwrap();
    let link = agent.dir.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let dir_s = dir.display().to_string();
    let link_s = link.display().to_string();
    let mut rng = Rng(seed);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut mutating = 0;
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel.clone());
        let mut images = pb::image_service_client::ImageServiceClient::new(channel.clone());
        let mut networks = pb::network_service_client::NetworkServiceClient::new(channel.clone());
        let mut placement =
            pb::placement_service_client::PlacementServiceClient::new(channel.clone());
        let mut node = pb::node_service_client::NodeServiceClient::new(channel);
        for i in 0..10_000 {
            let uuid = if rng.below(3) == 0 {
                format!("00000000-0000-4000-8000-{:012x}", rng.below(1000))
            } else {
                rng.text()
            };
            let kind = rng.below(12);
            // Create, start, stop, delete, import, image delete, ensure, network delete, reserve.
            if matches!(kind, 0 | 2 | 3 | 4 | 6 | 7 | 8 | 9 | 10) {
                mutating += 1;
            }
            let code = match kind {
                0 => {
                    let user_data =
                        vec![b'#'; rng.pick(&["0", "100", "65537", "70000"]).parse().unwrap()];
                    let metadata = (0..rng.below(4))
                        .map(|_| (rng.text(), rng.text()))
                        .collect();
                    vms.create(pb::CreateVmRequest {
                        uuid,
                        name: rng.text(),
                        flavor: rng
                            .pick(&["SCS-1V-2", "SCS-1Vi-0.5u", "", "SCS-<x>"])
                            .into(),
                        image: rng.text(),
                        networks: (0..rng.below(3)).map(|_| rng.text()).collect(),
                        user_data,
                        ssh_keys: (0..rng.below(2)).map(|_| rng.text()).collect(),
                        metadata,
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                }
                1 => vms.get(pb::GetVmRequest { uuid }).await.map(drop),
                2 => vms.start(pb::StartVmRequest { uuid }).await.map(drop),
                3 => vms
                    .stop(pb::StopVmRequest {
                        uuid,
                        force: rng.below(2) == 0,
                        timeout_seconds: rng.below(2000) as u32,
                    })
                    .await
                    .map(drop),
                4 => vms.delete(pb::DeleteVmRequest { uuid }).await.map(drop),
                5 => vms
                    .get_console_log(pb::GetConsoleLogRequest {
                        uuid,
                        max_bytes: rng.next() as u32,
                    })
                    .await
                    .map(drop),
                6 => {
                    let source = rng
                        .pick(&[
                            "",
                            "relative/x.qcow2",
                            "../../etc/shadow",
                            "/nonexistent/x.qcow2",
                            "dir",
                            "link",
                        ])
                        .to_string();
                    let source = match source.as_str() {
                        "dir" => dir_s.clone(),
                        "link" => link_s.clone(),
                        _ => source,
                    };
                    let name = if rng.below(2) == 0 {
                        rng.text()
                    } else {
                        "ok-name".into()
                    };
                    images
                        .import(pb::ImportImageRequest {
                            name,
                            source_path: source,
                            source_url: if rng.below(4) == 0 {
                                rng.text()
                            } else {
                                String::new()
                            },
                            sha256: rng.text(),
                            properties: (0..rng.below(3))
                                .map(|_| (rng.text(), rng.text()))
                                .collect(),
                        })
                        .await
                        .map(drop)
                }
                7 => images
                    .delete(pb::DeleteImageRequest { name: rng.text() })
                    .await
                    .map(drop),
                8 => networks
                    .ensure(pb::EnsureNetworkRequest {
                        network: Some(pb::Network {
                            name: rng.text(),
                            kind: rng.pick(&["bridge", "vxlan", "vlan", "", "x"]).into(),
                            uplink: rng.text(),
                            vni: rng.next() as u32,
                            vlan_id: rng.below(5000) as u32,
                            // Never a valid MTU: no random request may change the host.
                            mtu: *[1u32, 67, 70_000].get(rng.below(3)).unwrap(),
                            address: rng.text(),
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(drop),
                9 => networks
                    .delete(pb::DeleteNetworkRequest {
                        name: rng.text(),
                        force: rng.below(2) == 0,
                    })
                    .await
                    .map(drop),
                10 => placement
                    .reserve(pb::ReserveRequest {
                        request_id: rng.text(),
                        vm_uuid: uuid,
                        flavor: rng.pick(&["SCS-1V-2", "SCS-2C-4", "x"]).into(),
                        // Never a valid TTL: no random request may hold resources.
                        ttl_seconds: *[0u32, 3601, u32::MAX].get(rng.below(3)).unwrap(),
                    })
                    .await
                    .map(drop),
                _ => node
                    .get_capacity(pb::GetCapacityRequest {
                        flavors: (0..rng.below(3)).map(|_| rng.text()).collect(),
                    })
                    .await
                    .map(drop),
            };
            let code = code.err().map_or(Code::Ok, |s| {
                assert!(
                    acceptable(s.code()),
                    "request {i} (kind {kind}, seed {seed:#x}): {s:?}"
                );
                assert!(
                    !s.message().is_empty(),
                    "request {i}: a message names the problem"
                );
                s.code()
            });
            *seen.entry(format!("{code:?}")).or_default() += 1;
        }

        // Still serving, and nothing was made.
        node.get_inventory(pb::GetInventoryRequest {})
            .await
            .expect("still serving");
        let guests = listed(&mut vms).await;
        assert!(guests.is_empty(), "{guests:?}");
        assert!(
            images
                .list(pb::ListImagesRequest {})
                .await
                .unwrap()
                .into_inner()
                .images
                .is_empty()
        );
        assert!(
            networks
                .list(pb::ListNetworksRequest {})
                .await
                .unwrap()
                .into_inner()
                .networks
                .is_empty()
        );
        let held = claims(&mut placement).await;
        assert!(held.is_empty(), "{held:?}");
    });
    // No partial import or guest directory in the store.
    for sub in ["images", "vms"] {
        let path = agent.dir.path().join("store").join(sub);
        let left: Vec<_> = std::fs::read_dir(&path)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} holds {left:?}", path.display());
    }
    // Every mutating request is one audit line (reads are not audited).
    let lines = std::fs::read_to_string(&audit).unwrap().lines().count();
    assert_eq!(lines, mutating, "audit lines");
    println!("answers by code: {seen:?}");
    assert!(
        seen.get("InvalidArgument").copied().unwrap_or(0) > 1000,
        "{seen:?}"
    );
}
