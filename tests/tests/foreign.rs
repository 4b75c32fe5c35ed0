//! The agent among things that are not its own. Around a real agent stand foreign libvirt
//! domains (one running, one defined, one whose hvagent metadata is damaged), a foreign bridge
//! with a foreign tap in it and a loose foreign tap, and foreign files in and beside the
//! agent's store. The agent makes and deletes guests (one on a managed network), fails a
//! create late (its name is taken by a foreign domain, so libvirt refuses the define after the
//! claim, disks and tap were made), is asked to delete the foreign domains, reconciles its
//! networks, and is restarted cleanly and with SIGKILL. Afterwards every foreign thing is as it
//! was: the same XML and state, the same links with the same masters, the same files.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, Cleanup, claims, import_testguest, listed, runtime, virsh};
use hvagent_proto::v1 as pb;
use tonic::Code;

const RUNNING: &str = "00000000-0000-4000-8000-0000000f0001";
const DEFINED: &str = "00000000-0000-4000-8000-0000000f0002";
const DAMAGED: &str = "00000000-0000-4000-8000-0000000f0003";
const GUEST_NET: &str = "00000000-0000-4000-8000-0000000f0101";
const GUEST: &str = "00000000-0000-4000-8000-0000000f0102";
const LATE_FAIL: &str = "00000000-0000-4000-8000-0000000f0103";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small TCG domain without disks (it sits in the firmware), defined from `metadata`.
fn define(uuid: &str, name: &str, metadata: &str) {
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>32</memory>\
         <vcpu>1</vcpu><metadata>{metadata}</metadata><os><type arch='x86_64'>hvm</type></os>\
         <devices><serial type='pty'/></devices></domain>"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), xml).unwrap();
    virsh(&["define", file.path().to_str().unwrap()]);
}

/// What a foreign domain is: its inactive XML and its state.
fn domain(uuid: &str) -> (String, String) {
    (
        virsh(&["dumpxml", "--inactive", uuid]),
        virsh(&["domstate", uuid]).trim().to_string(),
    )
}

/// Whether link `name` exists, and its master.
fn link(name: &str) -> Option<Option<String>> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", name])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.get(0)?
            .get("master")
            .and_then(|m| m.as_str())
            .map(str::to_string),
    )
}

/// Every file under `root` with its content (before the agent makes its socket there).
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Removes the foreign links even when the test fails halfway.
struct Links(Vec<String>);

impl Drop for Links {
    fn drop(&mut self) {
        for l in &self.0 {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
    }
}

#[test]
fn nothing_foreign_is_touched() {
    let suffix = std::process::id() % 10_000;
    let foreign_bridge = format!("hvfbr{suffix}");
    let foreign_tap = format!("hvftap{suffix}");
    let loose_tap = format!("hvfloose{suffix}");
    let network = format!("fn{suffix}");
    let _cleanup = Cleanup(
        [RUNNING, DEFINED, DAMAGED, GUEST_NET, GUEST, LATE_FAIL]
            .map(String::from)
            .to_vec(),
    );
    let _links = Links(vec![
        foreign_tap.clone(),
        loose_tap.clone(),
        foreign_bridge.clone(),
    ]);

    // Foreign domains: running, defined, and one with an hvagent intent that does not parse.
    define(RUNNING, "hvforeign-running", "");
    virsh(&["start", RUNNING]);
    define(DEFINED, "hvforeign-defined", "");
    define(
        DAMAGED,
        "hvforeign-damaged",
        "<hv:intent xmlns:hv='https://scs.community/ns/hvagent/vm/1'>{not json</hv:intent>",
    );
    // Foreign links: a bridge with a tap in it, and a tap on its own.
    ip(&["link", "add", &foreign_bridge, "type", "bridge"]);
    ip(&["tuntap", "add", "dev", &foreign_tap, "mode", "tap"]);
    ip(&["link", "set", &foreign_tap, "master", &foreign_bridge]);
    ip(&["tuntap", "add", "dev", &loose_tap, "mode", "tap"]);

    let mut agent = Agent::configure_tcg(
        "orphan_grace_seconds = 0\n",
        "[network]\nreconcile_seconds = 1\n",
    );
    // Foreign files in the store (beside what the agent makes there: a directory in the image
    // store that is no image among them) and beside it.
    let store = agent.dir.path().join("store");
    for (path, content) in [
        ("store/operator-notes.txt", "kept"),
        ("store/vms/README", "kept"),
        ("store/vms/not-a-uuid/disk.img", "kept"),
        ("store/images/.operator-keep", "kept"),
        ("store/images/backup/readme.txt", "kept"),
        ("beside-the-store.txt", "kept"),
    ] {
        let path = agent.dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let foreign_files = files(agent.dir.path());
    let before: Vec<_> = [RUNNING, DEFINED, DAMAGED].map(domain).to_vec();
    let links_before = [&foreign_bridge, &foreign_tap, &loose_tap].map(|l| link(l));
    assert!(links_before.iter().all(Option::is_some), "{links_before:?}");

    agent = agent.spawn();
    let rt = runtime();
    let connect = |agent: &Agent| {
        let socket = agent.socket.clone();
        async move {
            let channel = hvctl::client::connect(&socket).await.unwrap();
            (
                pb::vm_service_client::VmServiceClient::new(channel.clone()),
                pb::placement_service_client::PlacementServiceClient::new(channel.clone()),
                channel,
            )
        }
    };
    rt.block_on(async {
        let (mut vms, _, channel) = connect(&agent).await;
        import_testguest(channel.clone()).await;
        pb::network_service_client::NetworkServiceClient::new(channel)
            .ensure(pb::EnsureNetworkRequest {
                network: Some(pb::Network {
                    name: network.clone(),
                    kind: "bridge".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let create = |uuid: &str, name: &str, networks: Vec<String>| pb::CreateVmRequest {
            uuid: uuid.into(),
            name: name.into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            networks,
            ..Default::default()
        };
        vms.create(create(GUEST_NET, "own-net", vec![network.clone()]))
            .await
            .unwrap();
        vms.create(create(GUEST, "own", vec![])).await.unwrap();

        // A name a foreign domain has: libvirt refuses the define after the claim, the disks
        // and the tap were made, and the undo takes back only those.
        let e = vms
            .create(create(
                LATE_FAIL,
                "hvforeign-defined",
                vec![network.clone()],
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().starts_with("libvirt refused the guest"),
            "{}",
            e.message()
        );
        assert!(!store.join("vms").join(LATE_FAIL).exists());
        assert_eq!(link(&hvagent::net::nic::tap_name(LATE_FAIL, 0)), None);
        // A foreign UUID: refused before anything is taken.
        let e = vms
            .create(create(RUNNING, "intruder", vec![]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

        // Deletes of what is not the agent's.
        for uuid in [RUNNING, DEFINED] {
            let deleted = vms
                .delete(pb::DeleteVmRequest { uuid: uuid.into() })
                .await
                .unwrap()
                .into_inner()
                .deleted;
            assert!(!deleted, "{uuid}");
        }
        let e = vms
            .delete(pb::DeleteVmRequest {
                uuid: DAMAGED.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("cannot be read"), "{}", e.message());
        // Reconciles run every second.
        tokio::time::sleep(Duration::from_secs(3)).await;
    });

    // Restarts, clean and killed: the agent's own guests and claims come back, nothing else.
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        agent.stop_with(signal);
        agent = agent.spawn();
        rt.block_on(async {
            let (mut vms, mut placement, _) = connect(&agent).await;
            let want = vec![GUEST_NET.to_string(), GUEST.to_string()];
            assert_eq!(listed(&mut vms).await, want, "after {signal}");
            let mut claimed = claims(&mut placement).await;
            claimed.sort();
            assert_eq!(claimed, want, "after {signal}");
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
    }
    rt.block_on(async {
        let (mut vms, mut placement, _) = connect(&agent).await;
        for uuid in [GUEST_NET, GUEST] {
            let deleted = vms
                .delete(pb::DeleteVmRequest { uuid: uuid.into() })
                .await
                .unwrap()
                .into_inner()
                .deleted;
            assert!(deleted, "{uuid}");
        }
        assert!(listed(&mut vms).await.is_empty());
        assert!(claims(&mut placement).await.is_empty());
    });

    // Every foreign thing as it was.
    let after: Vec<_> = [RUNNING, DEFINED, DAMAGED].map(domain).to_vec();
    assert_eq!(after, before);
    assert_eq!(before[0].1, "running");
    let links_after = [&foreign_bridge, &foreign_tap, &loose_tap].map(|l| link(l));
    assert_eq!(links_after, links_before);
    for (path, content) in &foreign_files {
        let now = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&now, content, "{}", path.display());
    }
}
