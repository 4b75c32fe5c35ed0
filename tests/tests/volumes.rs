//! Volumes end to end: the real agent makes volumes, the real libvirtd hot-plugs them into
//! running TCG guests of the test image, whose console reports each disk that comes and goes
//! (`hvagent.disk.NAME=BYTES SERIAL HEAD`) and can stamp text on a new disk
//! (`hvagent-stamp:` in user-data). libvirt's live and persistent XML are read with virsh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, Cleanup, repo_root, runtime, stderr, stdout};
use hvagent_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

type Vms = pb::vm_service_client::VmServiceClient<Channel>;
type Volumes = pb::volume_service_client::VolumeServiceClient<Channel>;

const GIB: u64 = 1 << 30;

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{:012x}", 0x701e00 + n)
}

async fn clients(agent: &Agent) -> (Vms, Volumes) {
    let channel = hvctl::client::connect(&agent.socket).await.unwrap();
    let images = pb::image_service_client::ImageServiceClient::new(channel.clone());
    let image = repo_root().join("images/out/testguest.qcow2");
    assert!(
        image.exists(),
        "{} missing: build it with images/build.sh (make test does)",
        image.display()
    );
    let mut images = images;
    images
        .import(pb::ImportImageRequest {
            name: "testguest".into(),
            source_path: image.display().to_string(),
            properties: [("min_ram".to_string(), "256".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    (
        pb::vm_service_client::VmServiceClient::new(channel.clone()),
        pb::volume_service_client::VolumeServiceClient::new(channel),
    )
}

async fn create(vms: &mut Vms, uuid: &str, name: &str, user_data: &str) {
    vms.create(pb::CreateVmRequest {
        uuid: uuid.into(),
        name: name.into(),
        flavor: "SCS-1Vi-0.5u".into(),
        image: "testguest".into(),
        user_data: user_data.as_bytes().to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// The whole console log of `uuid` (up to 1 MiB: every boot of the test's guests).
async fn console(vms: &mut Vms, uuid: &str) -> String {
    let log = vms
        .get_console_log(pb::GetConsoleLogRequest {
            uuid: uuid.into(),
            max_bytes: 1 << 20,
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&log.data).into_owned()
}

/// Waits until the console of `uuid` has `n` lines with `prefix`; returns the n-th, from the
/// prefix on.
async fn nth_line(vms: &mut Vms, uuid: &str, n: usize, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = console(vms, uuid).await;
        let found = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            // The console shell's prompt may share the line: from the prefix on.
            .filter_map(|l| l.find(prefix).map(|at| &l[at..]))
            .nth(n - 1)
            .map(str::to_string);
        if let Some(l) = found {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "guest {uuid}: no {n}. {prefix:?} line on its console within 180 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn line(vms: &mut Vms, uuid: &str, prefix: &str) -> String {
    nth_line(vms, uuid, 1, prefix).await
}

async fn create_volume(volumes: &mut Volumes, req: pb::CreateVolumeRequest) -> pb::Volume {
    volumes.create(req).await.unwrap().into_inner()
}

async fn attach(vms: &mut Vms, uuid: &str, volume: &str) -> Result<pb::Vm, tonic::Status> {
    vms.attach_volume(pb::AttachVolumeRequest {
        uuid: uuid.into(),
        volume: volume.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn detach(vms: &mut Vms, uuid: &str, volume: &str) -> Result<pb::Vm, tonic::Status> {
    vms.detach_volume(pb::DetachVolumeRequest {
        uuid: uuid.into(),
        volume: volume.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn attached_to(volumes: &mut Volumes, name: &str) -> Vec<String> {
    volumes
        .get(pb::GetVolumeRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .attached_to
}

/// The domain's XML as libvirt has it: running (`live`) or defined.
fn xml(uuid: &str, live: bool) -> String {
    let mut args = vec!["-c", "qemu:///system", "dumpxml", uuid];
    if !live {
        args.push("--inactive");
    }
    let out = Command::new("virsh").args(&args).output().expect("virsh");
    assert!(
        out.status.success(),
        "virsh dumpxml {uuid}: {}",
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `source` is a disk of the domain: (in the live XML, in the persistent XML).
fn has(uuid: &str, source: &str) -> (bool, bool) {
    (
        xml(uuid, true).contains(source),
        xml(uuid, false).contains(source),
    )
}

fn volume_file(agent: &Agent, name: &str, format: &str) -> PathBuf {
    agent
        .dir
        .path()
        .join(format!("store/volumes/{name}.{format}"))
}

#[test]
fn a_hot_attached_volume_keeps_its_data_on_another_guest_and_across_restarts() {
    let agent = Agent::configure_tcg("", "").spawn();
    let (a, b) = (uuid(1), uuid(2));
    let _cleanup = Cleanup(vec![a.clone(), b.clone()]);
    let file = volume_file(&agent, "data", "qcow2");
    let source = file.display().to_string();
    runtime().block_on(async {
        let (mut vms, mut volumes) = clients(&agent).await;
        create(&mut vms, &a, "volumes-a", "hvagent-stamp: vol-test-A\n").await;
        create(&mut vms, &b, "volumes-b", "").await;
        line(&mut vms, &a, "HVAGENT-GUEST-READY").await;
        line(&mut vms, &b, "HVAGENT-GUEST-READY").await;
        let v = create_volume(
            &mut volumes,
            pb::CreateVolumeRequest {
                name: "data".into(),
                size_gb: 1,
                ..Default::default()
            },
        )
        .await;
        assert_eq!((v.kind.as_str(), v.format.as_str()), ("store", "qcow2"));
        assert_eq!((v.size_bytes, v.source.as_str()), (GIB, source.as_str()));
        assert!(v.attached_to.is_empty());

        // Hot-plugged into A: the guest sees a 1 GiB disk with the volume's name as serial
        // (and blank), then stamps it.
        let vm = attach(&mut vms, &a, "data").await.unwrap();
        assert_eq!(vm.volumes, ["data"]);
        let seen = line(&mut vms, &a, "hvagent.disk.vd").await;
        assert!(seen.ends_with(&format!("={GIB} data -")), "{seen}");
        let dev = seen["hvagent.disk.".len()..seen.find('=').unwrap()].to_string();
        line(&mut vms, &a, &format!("hvagent.disk-stamped.{dev}")).await;
        assert_eq!(has(&a, &source), (true, true));
        assert_eq!(
            attached_to(&mut volumes, "data").await,
            std::slice::from_ref(&a)
        );
        let got = vms.get(pb::GetVmRequest { uuid: a.clone() }).await.unwrap();
        assert_eq!(got.into_inner().volumes, ["data"]);
        // Again: the guest as it is, no second disk.
        attach(&mut vms, &a, "data").await.unwrap();
        assert_eq!(xml(&a, true).matches(&source).count(), 1);

        // Not shareable: B is refused, naming A, and B's domain is unchanged.
        let before = (xml(&b, true), xml(&b, false));
        let e = attach(&mut vms, &b, "data").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(&a), "{}", e.message());
        // Missing guest, missing volume, bad names: nothing changes.
        let e = attach(&mut vms, &uuid(99), "data").await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = attach(&mut vms, &b, "no-such-volume").await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = attach(&mut vms, &b, "Bad/Name").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("volume: "), "{}", e.message());
        assert_eq!((xml(&b, true), xml(&b, false)), before);
        assert_eq!(
            attached_to(&mut volumes, "data").await,
            std::slice::from_ref(&a)
        );

        // Detach: the guest lets go (ACPI eject), libvirt has it nowhere.
        let vm = detach(&mut vms, &a, "data").await.unwrap();
        assert!(vm.volumes.is_empty());
        line(&mut vms, &a, &format!("hvagent.disk-gone.{dev}")).await;
        assert_eq!(has(&a, &source), (false, false));
        assert!(attached_to(&mut volumes, "data").await.is_empty());

        // On B the data A wrote is there.
        attach(&mut vms, &b, "data").await.unwrap();
        let seen = line(&mut vms, &b, "hvagent.disk.vd").await;
        assert!(seen.ends_with(&format!("={GIB} data vol-test-A")), "{seen}");

        // Stopped and started, B has it still (its definition holds it).
        vms.stop(pb::StopVmRequest {
            uuid: b.clone(),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
        vms.start(pb::StartVmRequest { uuid: b.clone() })
            .await
            .unwrap();
        let seen = nth_line(&mut vms, &b, 2, "hvagent.disk.vd").await;
        assert!(seen.ends_with(&format!("={GIB} data vol-test-A")), "{seen}");
        assert_eq!(has(&b, &source), (true, true));

        // An attached volume cannot be deleted.
        let e = volumes
            .delete(pb::DeleteVolumeRequest {
                name: "data".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(&b), "{}", e.message());
        assert!(file.exists());
    });

    // Through hvctl: list, detach, delete.
    let out = agent.hvctl(&["volume", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&b), "{}", stdout(&out));
    let out = agent.hvctl(&["vm", "detach-volume", "volumes-b", "data"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("volumes: -"), "{}", stdout(&out));
    let out = agent.hvctl(&["volume", "delete", "data"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!file.exists(), "the store volume's file is gone");
    // What is left: the boot volumes the agent made for the two guests (their flavor has no
    // disk), each named for and attached to its guest.
    let out = agent.hvctl(&["--output", "json", "volume", "list"]);
    let left: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let left: Vec<(String, String)> = left["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert_eq!(v["attached_to"], serde_json::json!([v["made_for"]]), "{v}");
            (
                v["name"].as_str().unwrap().to_string(),
                v["made_for"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        left,
        [
            (format!("root-{a}"), a.clone()),
            (format!("root-{b}"), b.clone())
        ]
    );
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel);
        for u in [&a, &b] {
            vms.delete(pb::DeleteVmRequest { uuid: u.clone() })
                .await
                .unwrap();
        }
    });
}

#[test]
fn a_shareable_volume_on_two_guests_and_an_nbd_export() {
    let agent = Agent::configure_tcg("", "").spawn();
    let (a, b) = (uuid(3), uuid(4));
    let _cleanup = Cleanup(vec![a.clone(), b.clone()]);
    runtime().block_on(async {
        let (mut vms, mut volumes) = clients(&agent).await;
        create(&mut vms, &a, "volumes-share-a", "").await;
        create(&mut vms, &b, "volumes-share-b", "").await;
        line(&mut vms, &a, "HVAGENT-GUEST-READY").await;
        line(&mut vms, &b, "HVAGENT-GUEST-READY").await;

        // qcow2 cannot be shared: refused, nothing made.
        let e = volumes
            .create(pb::CreateVolumeRequest {
                name: "shared".into(),
                size_gb: 1,
                shareable: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("shareable: "), "{}", e.message());
        assert!(!volume_file(&agent, "shared", "qcow2").exists());

        let shared = create_volume(
            &mut volumes,
            pb::CreateVolumeRequest {
                name: "shared".into(),
                size_gb: 1,
                format: "raw".into(),
                shareable: true,
                ..Default::default()
            },
        )
        .await;
        for u in [&a, &b] {
            attach(&mut vms, u, "shared").await.unwrap();
            let seen = line(&mut vms, u, "hvagent.disk.vd").await;
            assert!(seen.ends_with(&format!("={GIB} shared -")), "{seen}");
            assert!(xml(u, false).contains("<shareable/>"));
        }
        let mut users = attached_to(&mut volumes, "shared").await;
        users.sort();
        assert_eq!(users, [a.clone(), b.clone()]);

        // A guest deleted with a volume attached leaves it, free of that guest.
        vms.delete(pb::DeleteVmRequest { uuid: b.clone() })
            .await
            .unwrap();
        assert_eq!(
            attached_to(&mut volumes, "shared").await,
            std::slice::from_ref(&a)
        );
        assert!(Path::new(&shared.source).exists());

        // An NBD export, 64 MiB.
        let export = agent.dir.path().join("nbd.raw");
        std::fs::File::create(&export)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let Some((_nbd, port)) =
            common::serve_nbd(agent.dir.path(), &export, "volumes-nbd", "127.0.0.1")
        else {
            return;
        };
        let uri = format!("nbd://127.0.0.1:{port}/volumes-nbd");
        let v = create_volume(
            &mut volumes,
            pb::CreateVolumeRequest {
                name: "net".into(),
                source: uri.clone(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!((v.kind.as_str(), v.size_bytes), ("nbd", 64 << 20));
        assert_eq!(v.source, uri);
        let vm = attach(&mut vms, &a, "net").await.unwrap();
        assert_eq!(vm.volumes, ["net", "shared"]);
        let seen = nth_line(&mut vms, &a, 2, "hvagent.disk.vd").await;
        assert!(seen.ends_with(&format!("={} net -", 64 << 20)), "{seen}");
        assert!(xml(&a, false).contains("protocol='nbd'"));
        // An unreachable export is refused at Create.
        let e = volumes
            .create(pb::CreateVolumeRequest {
                name: "gone".into(),
                source: format!("nbd://127.0.0.1:{}/none", common::free_port()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("source: "), "{}", e.message());
        vms.delete(pb::DeleteVmRequest { uuid: a.clone() })
            .await
            .unwrap();
        // Forgotten, the export's file untouched.
        volumes
            .delete(pb::DeleteVolumeRequest { name: "net".into() })
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(&export).unwrap().len(), 64 << 20);
    });
}

#[test]
fn an_agent_killed_mid_attach_leaves_the_volume_attached_or_not() {
    let mut agent = Agent::configure_tcg("", "").spawn();
    let g = uuid(5);
    let _cleanup = Cleanup(vec![g.clone()]);
    let rt = runtime();
    let delays = [0u64, 50, 150, 400];
    rt.block_on(async {
        let (mut vms, mut volumes) = clients(&agent).await;
        create(&mut vms, &g, "volumes-kill", "").await;
        line(&mut vms, &g, "HVAGENT-GUEST-READY").await;
        for (i, _) in delays.iter().enumerate() {
            create_volume(
                &mut volumes,
                pb::CreateVolumeRequest {
                    name: format!("kill-{i}"),
                    size_gb: 1,
                    ..Default::default()
                },
            )
            .await;
        }
    });
    let mut outcomes = Vec::new();
    for (i, delay) in delays.iter().enumerate() {
        let name = format!("kill-{i}");
        let source = volume_file(&agent, &name, "qcow2").display().to_string();
        let mut call = Command::new(common::bin("hvctl"))
            .arg("--socket")
            .arg(&agent.socket)
            .args(["vm", "attach-volume", &g, &name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start hvctl");
        std::thread::sleep(Duration::from_millis(*delay));
        agent.stop_with(nix::sys::signal::Signal::SIGKILL);
        let _ = call.wait();
        // libvirt finishes a call it began: give it a moment, then it is whole or absent.
        std::thread::sleep(Duration::from_secs(2));
        let (live, persistent) = has(&g, &source);
        assert_eq!(
            live, persistent,
            "{name} after SIGKILL at {delay} ms: half attached"
        );
        outcomes.push((*delay, live));
        agent = agent.spawn();
        rt.block_on(async {
            let channel = hvctl::client::connect(&agent.socket).await.unwrap();
            let mut vms = pb::vm_service_client::VmServiceClient::new(channel);
            let vm = attach(&mut vms, &g, &name).await.unwrap();
            assert!(vm.volumes.contains(&name), "{:?}", vm.volumes);
        });
        assert_eq!(has(&g, &source), (true, true), "{name}: retried attach");
    }
    eprintln!("SIGKILL at (ms, attached): {outcomes:?}");
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel);
        vms.delete(pb::DeleteVmRequest { uuid: g.clone() })
            .await
            .unwrap();
    });
}
