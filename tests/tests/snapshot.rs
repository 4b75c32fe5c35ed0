//! Snapshots end to end: the real agent captures real TCG guests' root disks through the real
//! libvirtd and qemu-img, and a new guest boots from the image. The test image cannot write to
//! its own disk, so the test writes identifiable data into a stopped guest's disk with
//! qemu-io, as the guest would have.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, Cleanup, ready, repo_root, runtime, state, stderr, stdout, tool};
use hvagent_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

type Vms = pb::vm_service_client::VmServiceClient<Channel>;
type Images = pb::image_service_client::ImageServiceClient<Channel>;

const MIB: u64 = 1 << 20;

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{:012x}", 0x5a0000 + n)
}

async fn clients(agent: &Agent) -> (Vms, Images) {
    let channel = hvctl::client::connect(&agent.socket).await.unwrap();
    (
        pb::vm_service_client::VmServiceClient::new(channel.clone()),
        pb::image_service_client::ImageServiceClient::new(channel),
    )
}

async fn import_testguest(images: &mut Images) {
    let image = repo_root().join("images/out/testguest.qcow2");
    assert!(
        image.exists(),
        "{} missing: build it with images/build.sh (make test does)",
        image.display()
    );
    images
        .import(pb::ImportImageRequest {
            name: "testguest".into(),
            source_path: image.display().to_string(),
            properties: [("min_ram".to_string(), "256".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn create(vms: &mut Vms, uuid: &str, name: &str, image: &str) {
    vms.create(pb::CreateVmRequest {
        uuid: uuid.into(),
        name: name.into(),
        flavor: "SCS-1Vi-0.5u".into(),
        image: image.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn snapshot(
    vms: &mut Vms,
    uuid: &str,
    image: &str,
    properties: &[(&str, &str)],
) -> Result<pb::Image, tonic::Status> {
    vms.snapshot(pb::SnapshotVmRequest {
        uuid: uuid.into(),
        image: image.into(),
        properties: properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .await
    .map(tonic::Response::into_inner)
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    let p = path.to_str().unwrap();
    serde_json::from_str(&tool("qemu-img", &["info", "-U", "--output=json", p])).unwrap()
}

/// What the image store's directory holds, sorted: images and anything left behind.
fn store_entries(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The guest's boot disk: the flavor here has no disk, so the volume the agent made for it
/// from the image.
fn root_disk(agent: &Agent, uuid: &str) -> PathBuf {
    agent
        .dir
        .path()
        .join("store/volumes")
        .join(format!("root-{uuid}.qcow2"))
}

fn virsh_state(uuid: &str) -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "domstate", uuid])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn snapshots_of_a_running_and_a_stopped_guest_boot_new_guests() {
    let agent = Agent::configure_tcg("", "").spawn();
    let (src, copy) = (uuid(1), uuid(2));
    let _cleanup = Cleanup(vec![src.clone(), copy.clone()]);
    let store = agent.dir.path().join("store/images");
    runtime().block_on(async {
        let (mut vms, mut images) = clients(&agent).await;
        import_testguest(&mut images).await;
        create(&mut vms, &src, "snap-src", "testguest").await;
        ready(&mut vms, &src).await;
        let root_size = qemu_img_info(&root_disk(&agent, &src))["virtual-size"]
            .as_u64()
            .unwrap();

        // Running: paused for the copy (libvirt's events say so) and running again after.
        let mut events = vms
            .watch_events(pb::WatchEventsRequest { uuid: src.clone() })
            .await
            .unwrap()
            .into_inner();
        let image = snapshot(&mut vms, &src, "from-running", &[("os_version", "1")])
            .await
            .unwrap();
        assert_eq!(state(&mut vms, &src).await, "running");
        let mut kinds = Vec::new();
        while kinds.len() < 2 {
            let e = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("the pause's events within 10 s")
                .unwrap()
                .unwrap();
            kinds.push(e.kind);
        }
        assert_eq!(kinds, ["suspended", "resumed"]);
        assert_eq!(image.name, "from-running");
        assert_eq!(image.format, "qcow2");
        assert_eq!(image.virtual_size_bytes, root_size);
        assert_eq!(
            image.properties.get("min_ram").map(String::as_str),
            Some("256")
        );
        assert_eq!(
            image.properties.get("os_version").map(String::as_str),
            Some("1")
        );
        let file = store.join("from-running/image");
        let sha = tool("sha256sum", &[file.to_str().unwrap()]);
        assert_eq!(sha.split_whitespace().next(), Some(image.sha256.as_str()));
        let info = qemu_img_info(&file);
        assert!(info.get("backing-filename").is_none(), "standalone: {info}");
        assert_eq!(image.file_bytes, std::fs::metadata(&file).unwrap().len());

        // Refused requests: the right code, and nothing changes.
        let code = |r: Result<pb::Image, tonic::Status>| r.unwrap_err().code();
        assert_eq!(
            code(snapshot(&mut vms, &uuid(99), "x", &[]).await),
            Code::NotFound
        );
        assert_eq!(
            code(snapshot(&mut vms, "not-a-uuid", "x", &[]).await),
            Code::InvalidArgument
        );
        let bad = snapshot(&mut vms, &src, "Bad Name", &[]).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().starts_with("image: "), "{}", bad.message());
        assert_eq!(
            code(snapshot(&mut vms, &src, "from-running", &[]).await),
            Code::AlreadyExists
        );
        assert_eq!(
            code(snapshot(&mut vms, &src, "x", &[("min_disk", "big")]).await),
            Code::InvalidArgument
        );
        assert_eq!(store_entries(&store), ["from-running", "testguest"]);
        assert_eq!(state(&mut vms, &src).await, "running");

        // Stopped: what the guest wrote (the last MiB of its disk, written here) is in the
        // copy, and the guest stays stopped. Through hvctl this time.
        vms.stop(pb::StopVmRequest {
            uuid: src.clone(),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
        let root = root_disk(&agent, &src);
        let at = (root_size - MIB).to_string();
        let write = format!("write -P 0x5a {at} 1M");
        tool(
            "qemu-io",
            &["-f", "qcow2", "-c", &write, root.to_str().unwrap()],
        );
        let out = agent.hvctl(&[
            "vm",
            "snapshot",
            "snap-src",
            "--image",
            "from-stopped",
            "--property",
            "os_version=2",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("from-stopped"), "{}", stdout(&out));
        assert_eq!(state(&mut vms, &src).await, "shut off");
        let file = store.join("from-stopped/image");
        let read = format!("read -P 0x5a {at} 1M");
        tool(
            "qemu-io",
            &["-r", "-f", "qcow2", "-c", &read, file.to_str().unwrap()],
        );
        let got = images
            .get(pb::GetImageRequest {
                name: "from-stopped".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            got.properties.get("os_version").map(String::as_str),
            Some("2")
        );

        // A new guest boots from the snapshot, with a root disk of the source's size.
        vms.delete(pb::DeleteVmRequest { uuid: src.clone() })
            .await
            .unwrap();
        create(&mut vms, &copy, "snap-copy", "from-stopped").await;
        let report = ready(&mut vms, &copy).await;
        assert!(
            report.contains(&format!("hvagent.root_disk_bytes={root_size}")),
            "{report}"
        );
        let users = images
            .get(pb::GetImageRequest {
                name: "from-stopped".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .used_by;
        assert_eq!(users, std::slice::from_ref(&copy));
        vms.delete(pb::DeleteVmRequest { uuid: copy.clone() })
            .await
            .unwrap();
    });
}

#[test]
fn an_agent_killed_while_a_snapshot_holds_the_guest_paused_resumes_it_at_start() {
    let mut agent = Agent::configure_tcg("", "").spawn();
    let id = uuid(3);
    let _cleanup = Cleanup(vec![id.clone()]);
    let store = agent.dir.path().join("store/images");
    let rt = runtime();
    rt.block_on(async {
        let (mut vms, mut images) = clients(&agent).await;
        import_testguest(&mut images).await;
        create(&mut vms, &id, "snap-killed", "testguest").await;
        // Data enough for the copy to take a while: written past the test image's own
        // content while the guest is stopped.
        vms.stop(pb::StopVmRequest {
            uuid: id.clone(),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
        let root = root_disk(&agent, &id);
        let write = format!("write -P 0x33 {} {}", 256 * MIB, 512 * MIB);
        tool(
            "qemu-io",
            &["-f", "qcow2", "-c", &write, root.to_str().unwrap()],
        );
        vms.start(pb::StartVmRequest { uuid: id.clone() })
            .await
            .unwrap();
    });
    // The snapshot runs through hvctl in the background; the agent is killed once libvirt
    // shows the guest paused.
    let mut call = Command::new(common::bin("hvctl"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["vm", "snapshot", &id, "--image", "never"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start hvctl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while virsh_state(&id) != "paused" {
        assert!(
            Instant::now() < deadline,
            "the guest was not paused within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    let _ = call.wait();
    assert_eq!(
        virsh_state(&id),
        "paused",
        "the killed agent left it paused"
    );
    let agent = agent.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while virsh_state(&id) != "running" {
        assert!(
            Instant::now() < deadline,
            "the restarted agent did not resume the guest within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !agent
            .dir
            .path()
            .join("store/vms")
            .join(&id)
            .join("snapshot-paused")
            .exists()
    );
    rt.block_on(async {
        let (mut vms, _) = clients(&agent).await;
        // No image, and the staging file swept: as if the snapshot had never been asked for.
        assert_eq!(store_entries(&store), ["testguest"]);
        // The name is free again, and a snapshot now completes.
        snapshot(&mut vms, &id, "never", &[]).await.unwrap();
        assert_eq!(state(&mut vms, &id).await, "running");
        vms.delete(pb::DeleteVmRequest { uuid: id.clone() })
            .await
            .unwrap();
    });
}
