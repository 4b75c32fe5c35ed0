//! The agent killed (SIGKILL) at a different instant of each of several deletes, image
//! imports and network ensures, then started again: the state is the old one or the new one.
//! A guest is listed, claimed, defined and has its files, or none of these; an image is listed
//! whole (its content's sha256) or not at all, with no partial file or record-less directory
//! left; a network is listed with its bridge, or neither exists. (Kills during creates:
//! tests/tests/guests.rs; libvirtd killed: tests/tests/libvirtd_restart.rs.)

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, Cleanup, runtime, whole_or_gone};
use hvagent_proto::v1 as pb;

/// `hvctl ARGS` against the agent, started and left running.
fn hvctl(agent: &Agent, args: &[&str]) -> Child {
    Command::new(common::bin("hvctl"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hvctl")
}

/// Kills the agent `at` into the call `call` started, lets the call end, starts the agent again.
fn kill_during(agent: Agent, mut call: Child, at: Duration) -> Agent {
    let mut agent = agent;
    std::thread::sleep(at);
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    let _ = call.wait();
    agent.spawn()
}

#[test]
fn killed_mid_delete_every_guest_is_whole_or_gone() {
    let mut agent = Agent::configure_tcg("orphan_grace_seconds = 0\n", "").spawn();
    let ids: Vec<String> = (0..5)
        .map(|n| format!("00000000-0000-4000-8000-0000000c4a{n:02x}"))
        .collect();
    let _cleanup = Cleanup(ids.clone());
    let rt = runtime();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        common::import_testguest(channel.clone()).await;
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel);
        for (i, id) in ids.iter().enumerate() {
            vms.create(pb::CreateVmRequest {
                uuid: id.clone(),
                name: format!("delkill-{i}"),
                flavor: "SCS-1Vi-0.5u".into(),
                image: "testguest".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
    for (id, at_ms) in ids.iter().zip([0u64, 10, 30, 80, 200]) {
        let call = hvctl(&agent, &["vm", "delete", id]);
        agent = kill_during(agent, call, Duration::from_millis(at_ms));
        let when = format!("agent killed {at_ms} ms into the delete of {id}");
        rt.block_on(whole_or_gone(&agent, &ids, &when));
    }
}

/// What the image store holds besides complete images: partial files and record-less
/// directories.
fn leftovers(agent: &Agent) -> Vec<String> {
    let dir = agent.dir.path().join("store/images");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with(".import-")
                        || (e.path().is_dir() && !e.path().join("record.json").exists())
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_mid_import_every_image_is_whole_or_gone() {
    let mut agent = Agent::configure_tcg("", "").spawn();
    let source = common::repo_root().join("images/out/testguest.qcow2");
    let want = common::tool("sha256sum", &[source.to_str().unwrap()])
        .split_whitespace()
        .next()
        .expect("sha256sum prints the digest")
        .to_string();
    let rt = runtime();
    for (i, at_ms) in [0u64, 20, 50, 100, 200, 400].into_iter().enumerate() {
        let name = format!("killed-{i}");
        let call = hvctl(
            &agent,
            &["image", "import", "--name", &name, source.to_str().unwrap()],
        );
        agent = kill_during(agent, call, Duration::from_millis(at_ms));
        let when = format!("agent killed {at_ms} ms into importing {name}");
        rt.block_on(async {
            let channel = hvctl::client::connect(&agent.socket).await.unwrap();
            let images = pb::image_service_client::ImageServiceClient::new(channel)
                .list(pb::ListImagesRequest {})
                .await
                .unwrap()
                .into_inner()
                .images;
            for image in images {
                assert_eq!(image.sha256, want, "{when}: {image:?} is not whole");
            }
        });
        assert_eq!(leftovers(&agent), Vec::<String>::new(), "{when}");
    }
}

/// Whether link `name` exists.
fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes the networks' bridges even when the test fails halfway.
struct Bridges(Vec<String>);

impl Drop for Bridges {
    fn drop(&mut self) {
        for b in &self.0 {
            let _ = Command::new("ip").args(["link", "del", b]).output();
        }
    }
}

#[test]
fn killed_mid_network_ensure_or_delete_every_network_is_whole_or_gone() {
    let mut agent = Agent::configure_tcg("", "").spawn();
    let suffix = std::process::id() % 10_000;
    let names: Vec<String> = (0..4).map(|i| format!("ck{suffix}-{i}")).collect();
    let _bridges = Bridges(names.iter().map(|n| format!("br-{n}")).collect());
    let rt = runtime();
    let check = |agent: &Agent, when: &str| {
        rt.block_on(async {
            let channel = hvctl::client::connect(&agent.socket).await.unwrap();
            let mut networks = pb::network_service_client::NetworkServiceClient::new(channel);
            // The first reconcile after the start (it runs beside serving, so a loaded machine
            // may answer a listing before it) makes every listed network whole: within 20 s a
            // network is listed exactly when its bridge exists.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let listed: Vec<String> = networks
                    .list(pb::ListNetworksRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .networks
                    .into_iter()
                    .filter_map(|n| n.spec.map(|s| s.name))
                    .collect();
                let torn: Vec<String> = names
                    .iter()
                    .filter_map(|name| {
                        let bridge = link_exists(&format!("br-{name}"));
                        let spec = listed.contains(name);
                        (bridge != spec).then(|| format!("{name}: bridge {bridge}, listed {spec}"))
                    })
                    .collect();
                if torn.is_empty() {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{when}, 20 s after the restart: {torn:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    for (name, at_ms) in names.iter().zip([0u64, 5, 20, 60]) {
        let call = hvctl(&agent, &["network", "ensure", "--kind", "bridge", name]);
        agent = kill_during(agent, call, Duration::from_millis(at_ms));
        check(
            &agent,
            &format!("agent killed {at_ms} ms into ensuring {name}"),
        );
    }
    for (name, at_ms) in names.iter().zip([0u64, 5, 20, 60]) {
        let call = hvctl(&agent, &["network", "delete", name]);
        agent = kill_during(agent, call, Duration::from_millis(at_ms));
        check(
            &agent,
            &format!("agent killed {at_ms} ms into deleting {name}"),
        );
    }
}
