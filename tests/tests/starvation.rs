//! No call starves the others. With every kind of slow call held at once — imports from a
//! tar-pit URL (one byte every two seconds) up to `[storage] max_imports` and one more, an
//! import of a FIFO nobody writes, and stops of a guest whose QEMU is frozen (SIGSTOP: it
//! neither answers ACPI nor libvirt's monitor) — ListVms, GetVm, GetHealth, ListImages and a
//! Create of another guest still answer, each within a bound far below the slow calls'. The
//! figures are printed (docs/security.md quotes them).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Agent, Cleanup, import_testguest, runtime};
use hvagent_proto::v1 as pb;
use tonic::Code;

const FROZEN: &str = "00000000-0000-4000-8000-0000000d1501";
const FRESH: &str = "00000000-0000-4000-8000-0000000d1502";

/// A server that promises a megabyte and sends one byte every two seconds, for ever.
fn tar_pit() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request);
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                while conn.write_all(b"x").is_ok() {
                    std::thread::sleep(Duration::from_secs(2));
                }
            });
        }
    });
    port
}

/// Lets the frozen QEMU go on even when the test fails halfway.
struct Thaw(nix::unistd::Pid);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// How long `call` took; fails when it took longer than `bound`.
async fn timed<T>(what: &str, bound: Duration, call: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(bound, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {bound:?} beside the slow calls"));
    println!("{what}: {:?} beside the slow calls", started.elapsed());
    out
}

#[test]
fn slow_calls_do_not_starve_the_others() {
    let agent = Agent::configure_tcg("max_imports = 2\nimport_deadline_secs = 40\n", "").spawn();
    let _cleanup = Cleanup(vec![FROZEN.into(), FRESH.into()]);
    let port = tar_pit();
    let fifo = agent.dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel.clone());
        let images = pb::image_service_client::ImageServiceClient::new(channel.clone());
        let mut node = pb::node_service_client::NodeServiceClient::new(channel.clone());
        import_testguest(channel.clone()).await;
        let create = |uuid: &str, name: &str| pb::CreateVmRequest {
            uuid: uuid.into(),
            name: name.into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            ..Default::default()
        };
        vms.create(create(FROZEN, "frozen")).await.unwrap();
        let pid: i32 = std::fs::read_to_string("/run/libvirt/qemu/frozen.pid")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let thaw = Thaw(pid);

        // A FIFO is refused at once, not opened for ever (before the tar-pits take every
        // import slot).
        let mut i = images.clone();
        let e = timed(
            "Import of a FIFO",
            Duration::from_secs(5),
            i.import(pb::ImportImageRequest {
                name: "fifo".into(),
                source_path: fifo.display().to_string(),
                ..Default::default()
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        // The slow calls, all at once.
        let mut slow = Vec::new();
        for i in 0..3 {
            let mut images = images.clone();
            slow.push(tokio::spawn(async move {
                images
                    .import(pb::ImportImageRequest {
                        name: format!("tarpit-{i}"),
                        source_url: format!("http://127.0.0.1:{port}/image-{i}"),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            }));
        }
        for _ in 0..4 {
            let mut vms = vms.clone();
            slow.push(tokio::spawn(async move {
                vms.stop(pb::StopVmRequest {
                    uuid: FROZEN.into(),
                    force: false,
                    timeout_seconds: 30,
                })
                .await
                .map(drop)
            }));
        }
        // Let them all get going.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let reads = Duration::from_secs(3);
        timed("ListVms", reads, vms.list(pb::ListVmsRequest {}))
            .await
            .unwrap();
        let got = timed(
            "GetVm",
            reads,
            vms.get(pb::GetVmRequest {
                uuid: FROZEN.into(),
            }),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(got.uuid, FROZEN);
        timed("GetHealth", reads, node.get_health(pb::GetHealthRequest {}))
            .await
            .unwrap();
        let listed = timed(
            "ListImages",
            reads,
            images.clone().list(pb::ListImagesRequest {}),
        )
        .await
        .unwrap()
        .into_inner();
        let pits = listed
            .images
            .iter()
            .filter(|i| i.name.starts_with("tarpit-"))
            .count();
        assert_eq!(pits, 2, "max_imports = 2 imports under way: {listed:?}");
        let made = timed(
            "CreateVm",
            Duration::from_secs(20),
            vms.create(create(FRESH, "fresh")),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(made.state, "running");
        // The slow calls are still slow: the stops and the two admitted imports go on.
        assert!(slow[3..].iter().all(|t| !t.is_finished()));
        assert_eq!(slow[..3].iter().filter(|t| !t.is_finished()).count(), 2);

        // The import past max_imports was refused at once; the others end at their deadline.
        drop(thaw);
        let mut refused = 0;
        for t in slow.drain(..3) {
            let e = t.await.unwrap().unwrap_err();
            match e.code() {
                Code::ResourceExhausted => {
                    assert!(e.message().contains("max_imports"), "{e:?}");
                    refused += 1;
                }
                _ => assert!(e.message().contains("import_deadline_secs"), "{e:?}"),
            }
        }
        assert_eq!(refused, 1);
        for t in slow {
            let _ = t.await.unwrap();
        }
        for uuid in [FROZEN, FRESH] {
            vms.delete(pb::DeleteVmRequest { uuid: uuid.into() })
                .await
                .unwrap();
        }
    });
}
