//! Image imports over http(s) against a real HTTP server (Python's, serving the test guest in
//! well- and ill-behaved ways): streamed, sha256-checked, progress visible through Get while
//! it runs, and every failure answered with its code and no file left in the store.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, repo_root};
use hvagent_proto::v1 as pb;
use tonic::Code;

type Images = pb::image_service_client::ImageServiceClient<tonic::transport::Channel>;

/// The image server on a free port; stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> Server {
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("tests/python/image_server.py"))
            .arg(dir);
        if let Some((cert, key)) = tls {
            cmd.arg("--tls").arg(cert).arg(key);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("image server said {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(path: &Path) -> String {
    common::tool("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn request(name: &str, url: &str, sha256: &str) -> pb::ImportImageRequest {
    pb::ImportImageRequest {
        name: name.into(),
        source_url: url.into(),
        sha256: sha256.into(),
        ..Default::default()
    }
}

/// Nothing of an import is left in the store: no image directory, no partial file.
fn store_is_empty(agent: &Agent) {
    let dir = agent.dir.path().join("store/images");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
}

#[test]
fn images_are_imported_from_urls() {
    let agent = Agent::start("[host]\nkvm_device = \"/nonexistent/kvm\"\n");
    let files = tempfile::tempdir().unwrap();
    let guest = files.path().join("testguest.qcow2");
    std::fs::copy(repo_root().join("images/out/testguest.qcow2"), &guest)
        .expect("images/out/testguest.qcow2 (images/build.sh builds it)");
    let mut vmdk = b"KDMV".to_vec();
    vmdk.resize(4096, 0);
    std::fs::write(files.path().join("disk.vmdk"), vmdk).unwrap();
    let size = std::fs::metadata(&guest).unwrap().len();
    let digest = sha256(&guest);
    let server = Server::start(files.path(), None);
    let base = format!("http://127.0.0.1:{}", server.port);

    let rt = common::runtime();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut images = Images::new(channel);

        // A slow download: Get shows it importing, with its progress, until it is done;
        // meanwhile the name cannot be imported again or deleted.
        let import = {
            let mut images = images.clone();
            let req = request("guest", &format!("{base}/slow/testguest.qcow2"), &digest);
            tokio::spawn(async move { images.import(req).await })
        };
        let mut seen_partial = None;
        while !import.is_finished() {
            if let Ok(i) = images
                .get(pb::GetImageRequest {
                    name: "guest".into(),
                })
                .await
            {
                let i = i.into_inner();
                if i.state == "importing" && i.bytes_received > 0 && i.bytes_received < size {
                    assert_eq!(i.bytes_total, size);
                    assert!(i.source.ends_with("/slow/testguest.qcow2"), "{i:?}");
                    seen_partial = Some(i.bytes_received);
                    let again = images
                        .import(request(
                            "guest",
                            &format!("{base}/fast/testguest.qcow2"),
                            "",
                        ))
                        .await
                        .unwrap_err();
                    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
                    assert!(
                        again.message().contains("is being imported from"),
                        "{again:?}"
                    );
                    let listed = images.list(pb::ListImagesRequest {}).await.unwrap();
                    assert_eq!(listed.into_inner().images[0].state, "importing");
                    let delete = images
                        .delete(pb::DeleteImageRequest {
                            name: "guest".into(),
                        })
                        .await
                        .unwrap_err();
                    assert_eq!(delete.code(), Code::FailedPrecondition, "{delete:?}");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen_partial.is_some(), "never saw the import in progress");
        let image = import.await.unwrap().expect("import").into_inner();
        assert_eq!(image.state, "ready");
        assert_eq!(image.sha256, digest);
        assert_eq!(image.format, "qcow2");
        assert_eq!(image.file_bytes, size);
        let stored = agent.dir.path().join("store/images/guest/image");
        assert_eq!(sha256(&stored), digest);
        // The same name and sha256 again: that image, at once.
        let again = images
            .import(request("guest", &format!("{base}/missing"), &digest))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.sha256, digest);
        images
            .delete(pb::DeleteImageRequest {
                name: "guest".into(),
            })
            .await
            .unwrap();
        store_is_empty(&agent);

        // Failures: the right code, the field named, nothing left behind.
        let wrong = "0".repeat(64);
        let cases = [
            (
                request("x", &format!("{base}/fast/nothing"), ""),
                Code::FailedPrecondition,
                "the server answered 404 Not Found",
            ),
            (
                request("x", &format!("{base}/fail/500"), ""),
                Code::Unavailable,
                "the server answered 500",
            ),
            (
                request("x", &format!("{base}/cut/testguest.qcow2"), ""),
                Code::Unavailable,
                "/cut/testguest.qcow2: download cut short: ",
            ),
            (
                request("x", &format!("{base}/fast/testguest.qcow2"), &wrong),
                Code::InvalidArgument,
                "sha256: the content's sha256 is",
            ),
            (
                request("x", &format!("{base}/fast/disk.vmdk"), ""),
                Code::InvalidArgument,
                "source_url: vmdk images are not supported",
            ),
            (
                request("x", "http://127.0.0.1:1/x", ""),
                Code::Unavailable,
                "source_url: http://127.0.0.1:1/x: ",
            ),
            (
                request("x", "ftp://127.0.0.1/x", ""),
                Code::InvalidArgument,
                "source_url: scheme must be http or https",
            ),
            (
                request("x", "https://u:secret@127.0.0.1:1/x", ""),
                Code::Unavailable,
                "u:***@127.0.0.1",
            ),
            (
                pb::ImportImageRequest {
                    source_path: guest.display().to_string(),
                    ..request("x", &base, "")
                },
                Code::InvalidArgument,
                "source_path, source_url: give exactly one",
            ),
        ];
        for (req, code, message) in cases {
            let status = images.import(req.clone()).await.unwrap_err();
            assert_eq!(status.code(), code, "{req:?}: {status:?}");
            assert!(
                status.message().contains(message),
                "{req:?}: {}",
                status.message()
            );
            assert!(!status.message().contains("secret"), "{}", status.message());
            store_is_empty(&agent);
        }
    });

    // The real hvctl imports from a URL too.
    let out = agent.hvctl(&[
        "image",
        "import",
        &format!("{base}/fast/testguest.qcow2"),
        "--name",
        "cli",
        "--sha256",
        &digest,
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "ready");
    assert_eq!(json["sha256"], digest.as_str());
}

/// https is verified against the system's CAs: a self-signed server is refused, and nothing
/// is stored.
#[test]
fn https_servers_must_be_trusted() {
    let agent = Agent::start("[host]\nkvm_device = \"/nonexistent/kvm\"\n");
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    std::fs::write(files.path().join("img.raw"), vec![0u8; 4096]).unwrap();
    let server = Server::start(files.path(), Some((&cert, &key)));
    let out = agent.hvctl(&[
        "image",
        "import",
        &format!("https://127.0.0.1:{}/fast/img.raw", server.port),
        "--name",
        "tls",
    ]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("source_url: https://127.0.0.1:"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    store_is_empty(&agent);
}
