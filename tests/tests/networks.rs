//! Networks end to end: the real agent makes bridges and VXLAN segments over netlink inside a
//! network namespace of the test's own (`[network] namespace`), so the host's interfaces are
//! never touched; what it made is checked with iproute2, independently of the agent.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, runtime};
use hvagent_proto::v1 as pb;
use serde_json::Value;
use tonic::Code;

type Networks = pb::network_service_client::NetworkServiceClient<tonic::transport::Channel>;

/// A network namespace with an underlay veth (`ul0`, 10.99.0.1/24, up); removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("hvt-{tag}-{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
        ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "ul0"]);
        ns.ip(&["link", "set", "ul0", "up"]);
        ns.ip(&["link", "set", "ul1", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -j link show` as JSON objects.
    fn links(&self) -> Vec<Value> {
        serde_json::from_str(&self.ip(&["-j", "-d", "link", "show"])).expect("ip -j")
    }

    fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }

    /// Names, kinds, MTUs and masters of every link: what "unchanged" compares.
    fn shape(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .links()
            .iter()
            .map(|l| {
                format!(
                    "{} {} {} {}",
                    l["ifname"], l["linkinfo"]["info_kind"], l["mtu"], l["master"]
                )
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn agent(ns: &Netns, reconcile_seconds: u32) -> Agent {
    Agent::start(&format!(
        "[host]\nkvm_device = \"/nonexistent/kvm\"\n[network]\nnamespace = \"{}\"\nreconcile_seconds = {reconcile_seconds}\n",
        ns.path()
    ))
}

fn bridge(name: &str) -> pb::Network {
    pb::Network {
        name: name.into(),
        kind: "bridge".into(),
        ..Default::default()
    }
}

fn vxlan(name: &str, vni: u32) -> pb::Network {
    pb::Network {
        name: name.into(),
        kind: "vxlan".into(),
        vni,
        underlay: "ul0".into(),
        local: "10.99.0.1".into(),
        remotes: vec!["10.99.0.2".into()],
        ..Default::default()
    }
}

async fn ensure(n: &mut Networks, network: pb::Network) -> Result<bool, tonic::Status> {
    n.ensure(pb::EnsureNetworkRequest {
        network: Some(network),
    })
    .await
    .map(|r| r.into_inner().changed)
}

/// Deletes network `name`; whether it existed.
async fn delete(n: &mut Networks, name: &str, force: bool) -> bool {
    n.delete(pb::DeleteNetworkRequest {
        name: name.into(),
        force,
    })
    .await
    .unwrap()
    .into_inner()
    .deleted
}

async fn connect(agent: &Agent) -> Networks {
    Networks::new(hvctl::client::connect(&agent.socket).await.unwrap())
}

#[test]
fn networks_are_made_checked_and_removed_in_a_namespace() {
    let ns = Netns::new("a");
    let host_links_before = run("ip", &["-br", "link", "show"]);
    let agent = agent(&ns, 3600);
    runtime().block_on(async {
        let mut n = connect(&agent).await;

        // A provider bridge, and the same again.
        assert!(ensure(&mut n, bridge("prov")).await.unwrap());
        let br = ns.link("br-prov").expect("br-prov made");
        assert_eq!(br["linkinfo"]["info_kind"], "bridge");
        assert_eq!(br["mtu"], 1500);
        assert!(br["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        assert!(!ensure(&mut n, bridge("prov")).await.unwrap());
        let conflict = ensure(
            &mut n,
            pb::Network {
                mtu: 1400,
                ..bridge("prov")
            },
        )
        .await
        .unwrap_err();
        assert_eq!(conflict.code(), Code::AlreadyExists);
        assert_eq!(
            conflict.message(),
            "network \"prov\" exists with another spec: mtu is unset, not 1400"
        );

        // A VXLAN segment: bridge + VXLAN device in it, MTU from the underlay, peer flooded.
        assert!(ensure(&mut n, vxlan("seg", 100)).await.unwrap());
        let br = ns.link("br-seg").expect("br-seg made");
        assert_eq!(br["mtu"], 1450);
        let vx = ns.link("vx-seg").expect("vx-seg made");
        assert_eq!(vx["linkinfo"]["info_kind"], "vxlan");
        assert_eq!(vx["linkinfo"]["info_data"]["id"], 100);
        assert_eq!(vx["linkinfo"]["info_data"]["local"], "10.99.0.1");
        assert_eq!(vx["master"], "br-seg");
        assert_eq!(vx["mtu"], 1450);
        let fdb = ns.ip(&["-j", "neigh", "show"]);
        let fdb_bridge = run("bridge", &["-n", &ns.0, "fdb", "show", "dev", "vx-seg"]);
        assert!(
            fdb_bridge.contains("00:00:00:00:00:00 dst 10.99.0.2"),
            "{fdb_bridge}\n{fdb}"
        );
        assert!(!ensure(&mut n, vxlan("seg", 100)).await.unwrap());
        let other = ensure(&mut n, vxlan("seg", 200)).await.unwrap_err();
        assert_eq!(other.code(), Code::AlreadyExists);
        assert!(
            other.message().ends_with("vni is 100, not 200"),
            "{other:?}"
        );

        // Bad input: the right code, and the namespace exactly as it was.
        let shape = ns.shape();
        let vlan_supported = Command::new("ip")
            .args([
                "-n", &ns.0, "link", "add", "link", "ul0", "name", "vprobe", "type", "vlan", "id",
                "5",
            ])
            .status()
            .unwrap()
            .success();
        if vlan_supported {
            ns.ip(&["link", "del", "vprobe"]);
            println!("this kernel has 802.1Q: the vlan refusal case is not run");
        }
        let mut cases = vec![
            (
                bridge("Bad"),
                Code::InvalidArgument,
                "name: must be 1-12 characters",
            ),
            (
                vxlan("v0", 0),
                Code::InvalidArgument,
                "vni: must be 1-16777215, got 0",
            ),
            (
                vxlan("v1", 1 << 24),
                Code::InvalidArgument,
                "vni: must be 1-16777215, got 16777216",
            ),
            (
                pb::Network {
                    mtu: 10,
                    ..bridge("m")
                },
                Code::InvalidArgument,
                "mtu: must be 68-65535, got 10",
            ),
            (
                pb::Network {
                    underlay: "nope0".into(),
                    ..vxlan("u", 5)
                },
                Code::NotFound,
                "underlay: no interface \"nope0\" on this node",
            ),
            (
                pb::Network {
                    uplink: "nope0".into(),
                    ..bridge("u")
                },
                Code::NotFound,
                "uplink: no interface \"nope0\"",
            ),
            (
                pb::Network {
                    kind: "vlan".into(),
                    vlan_id: 5000,
                    uplink: "ul0".into(),
                    ..bridge("vl")
                },
                Code::InvalidArgument,
                "vlan_id: must be 1-4094, got 5000",
            ),
            (
                pb::Network {
                    kind: "vlan".into(),
                    vlan_id: 7,
                    ..bridge("vl")
                },
                Code::InvalidArgument,
                "uplink: a vlan network needs its uplink",
            ),
            (
                pb::Network {
                    kind: "gre".into(),
                    ..bridge("g")
                },
                Code::InvalidArgument,
                "kind: must be bridge, vxlan or vlan",
            ),
            (
                pb::Network {
                    vni: 5,
                    ..bridge("x")
                },
                Code::InvalidArgument,
                "vni: does not apply to kind bridge",
            ),
            (
                pb::Network {
                    local: "nonsense".into(),
                    ..vxlan("l", 5)
                },
                Code::InvalidArgument,
                "local: \"nonsense\" is not an IP address",
            ),
        ];
        if !vlan_supported {
            cases.push((
                pb::Network {
                    kind: "vlan".into(),
                    vlan_id: 7,
                    uplink: "ul0".into(),
                    ..bridge("vl")
                },
                Code::FailedPrecondition,
                "vlan: this kernel has no 802.1Q support (module 8021q)",
            ));
        }
        for (network, code, message) in cases {
            let status = ensure(&mut n, network.clone()).await.unwrap_err();
            assert_eq!(status.code(), code, "{network:?}: {status:?}");
            assert!(
                status.message().contains(message),
                "{network:?}: {}",
                status.message()
            );
            assert_eq!(ns.shape(), shape, "{network:?} changed the namespace");
        }
        let listed = n
            .list(pb::ListNetworksRequest {})
            .await
            .unwrap()
            .into_inner();
        let names: Vec<_> = listed
            .networks
            .iter()
            .map(|s| s.spec.clone().unwrap().name)
            .collect();
        assert_eq!(names, ["prov", "seg"]);
        assert!(
            listed.networks.iter().all(|s| s.state == "ok"),
            "{listed:?}"
        );

        // Delete: refused while a guest NIC is in the bridge, unless forced.
        ns.ip(&["tuntap", "add", "dev", "hvabcdefabcde0", "mode", "tap"]);
        ns.ip(&["link", "set", "hvabcdefabcde0", "master", "br-prov"]);
        let listed = n
            .list(pb::ListNetworksRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.networks[0].nics, ["hvabcdefabcde0"]);
        let busy = n
            .delete(pb::DeleteNetworkRequest {
                name: "prov".into(),
                force: false,
            })
            .await
            .unwrap_err();
        assert_eq!(busy.code(), Code::FailedPrecondition);
        assert!(
            busy.message()
                .contains("guest NICs attached (hvabcdefabcde0)"),
            "{busy:?}"
        );
        assert!(ns.link("br-prov").is_some());
        assert!(delete(&mut n, "prov", true).await);
        assert!(ns.link("br-prov").is_none());
        assert!(delete(&mut n, "seg", false).await);
        assert!(ns.link("br-seg").is_none() && ns.link("vx-seg").is_none());
        assert!(
            !delete(&mut n, "seg", false).await,
            "a second delete finds nothing"
        );
    });
    // The real hvctl drives the same service.
    let out = agent.hvctl(&[
        "network", "ensure", "cli", "--kind", "bridge", "--mtu", "1400",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stdout(&out).starts_with("created\n"),
        "{}",
        common::stdout(&out)
    );
    let out = agent.hvctl(&["--output", "json", "network", "list"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["networks"][0]["bridge"], "br-cli");
    assert_eq!(json["networks"][0]["mtu"], 1400);
    let out = agent.hvctl(&["network", "ensure", "cli", "--kind", "bridge"]);
    assert_eq!(common::code(&out.status), 1, "a conflicting spec fails");
    assert!(
        common::stderr(&out).contains("mtu is 1400, not unset"),
        "{}",
        common::stderr(&out)
    );
    let out = agent.hvctl(&["network", "delete", "cli"]);
    assert_eq!(common::stdout(&out), "deleted\n");
    assert_eq!(
        run("ip", &["-br", "link", "show"]),
        host_links_before,
        "the host's own interfaces changed"
    );
}

/// The reconciler repairs each kind of drift on its own, and counts it; of the taps it
/// removes only the agent's, in its bridges: devices around it that are not its own stay.
#[test]
fn drift_is_repaired() {
    let ns = Netns::new("b");
    let mut agent = agent(&ns, 1);
    // What is not the agent's: the operator's bridge, a libvirt tap in the agent's bridge, a
    // veth with an agent-shaped name in it, an agent-shaped tap outside the agent's bridges
    // (another agent's, on its way to its namespace), and one in the operator's bridge.
    let foreign = [
        ("br-ops", "bridge", None),
        ("vnet7", "tap", Some("br-prov")),
        ("hv0123456789a2", "veth", Some("br-prov")),
        ("hv0123456789a3", "tap", None),
        ("hv0123456789a4", "tap", Some("br-ops")),
    ];
    runtime().block_on(async {
        let mut n = connect(&agent).await;
        ensure(&mut n, bridge("prov")).await.unwrap();
        ensure(&mut n, vxlan("seg", 100)).await.unwrap();
        for (name, kind, master) in foreign {
            match kind {
                "tap" => ns.ip(&["tuntap", "add", "dev", name, "mode", "tap"]),
                "veth" => ns.ip(&[
                    "link", "add", name, "type", "veth", "peer", "name", "hvpeer",
                ]),
                kind => ns.ip(&["link", "add", name, "type", kind]),
            };
            if let Some(m) = master {
                ns.ip(&["link", "set", name, "master", m]);
            }
        }

        ns.ip(&["link", "del", "br-seg"]);
        ns.ip(&["link", "set", "br-prov", "mtu", "1300"]);
        // A stray: agent-shaped, in the agent's bridge, no guest's.
        ns.ip(&["tuntap", "add", "dev", "hv0123456789a0", "mode", "tap"]);
        ns.ip(&["link", "set", "hv0123456789a0", "master", "br-prov"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let repaired = ns.link("br-seg").is_some()
                && ns.link("vx-seg").is_some_and(|v| v["master"] == "br-seg")
                && ns.link("br-prov").is_some_and(|b| b["mtu"] == 1500)
                && ns.link("hv0123456789a0").is_none();
            if repaired {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not repaired in 20 s: {:?}",
                ns.shape()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let repairs = n
            .list(pb::ListNetworksRequest {})
            .await
            .unwrap()
            .into_inner()
            .repairs;
        for kind in ["bridge_created", "link_fixed", "stray_tap_removed"] {
            assert!(repairs[kind] >= 1, "{kind}: {repairs:?}");
        }
        assert_eq!(repairs["stray_tap_removed"], 1, "{repairs:?}");
        for (name, _, master) in foreign {
            let link = ns.link(name).unwrap_or_else(|| panic!("{name} removed"));
            assert_eq!(link["master"].as_str(), master, "{link}");
        }
    });
    // A spec file that cannot be read: its network is left alone (not repaired, not
    // removed, not replaced by an Ensure) and named in the answers.
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    let spec = agent.dir.path().join("store/networks/prov.json");
    std::fs::write(&spec, b"{\"name\": \"prov\", \"ki").unwrap();
    ns.ip(&["link", "set", "br-prov", "mtu", "1300"]);
    ns.ip(&["tuntap", "add", "dev", "hv0123456789a0", "mode", "tap"]);
    ns.ip(&["link", "set", "hv0123456789a0", "master", "br-prov"]);
    let before = ns.shape();
    let agent = agent.spawn();
    runtime().block_on(async {
        let mut n = connect(&agent).await;
        for status in [
            ensure(&mut n, bridge("prov")).await.unwrap_err(),
            n.delete(pb::DeleteNetworkRequest {
                name: "prov".into(),
                force: true,
            })
            .await
            .unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(
                status.message().contains("prov.json cannot be read"),
                "{status:?}"
            );
        }
        // Several reconciles later, nothing of it changed.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(ns.shape(), before);
        assert_eq!(
            std::fs::read(&spec).unwrap(),
            b"{\"name\": \"prov\", \"ki",
            "the file is kept for the operator"
        );
        // A veth someone made under the VXLAN member's name: reported by the reconciler, not
        // recreated, and left by Delete, which removes only the network's own bridge.
        ns.ip(&["link", "del", "vx-seg"]);
        ns.ip(&[
            "link", "add", "vx-seg", "type", "veth", "peer", "name", "hvpeer2",
        ]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listed = n
                .list(pb::ListNetworksRequest {})
                .await
                .unwrap()
                .into_inner();
            let seg = listed.networks.iter().find(|s| s.bridge == "br-seg");
            if seg.is_some_and(|s| {
                s.problems
                    .contains(&"seg: vx-seg exists but is a veth device, not a vxlan".to_string())
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "{listed:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(ns.link("vx-seg").unwrap()["linkinfo"]["info_kind"], "veth");
        assert!(delete(&mut n, "seg", false).await);
        assert!(ns.link("br-seg").is_none());
        assert_eq!(ns.link("vx-seg").unwrap()["linkinfo"]["info_kind"], "veth");
    });
}

/// A `[network] namespace` that cannot be entered is a configuration error: exit status 2
/// and one line naming the key.
#[test]
fn an_unusable_namespace_stops_start_up() {
    let agent = Agent::configure("[network]\nnamespace = \"/nonexistent/netns\"\n");
    let out = agent.command().output().unwrap();
    assert_eq!(common::code(&out.status), 2, "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains("hvagent: network.namespace: network namespace /nonexistent/netns: "),
        "{err}"
    );
}
