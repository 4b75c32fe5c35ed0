//! The TCP listener: mutual TLS against the real agent. Handshakes without a client
//! certificate, with another CA's or an expired one are refused; certificate identities get
//! their configured roles (the real hvctl over TCP); SIGHUP rotates the agent's certificate and
//! client CA while an open WatchEvents stream goes on; unusable TLS files stop the start with
//! an error naming the key and the problem.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Agent, Cleanup, bin, free_port, runtime, stderr, stdout};
use rcgen::{CertificateParams, DistinguishedName, DnType, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;

const CONTROLLER: &str = "spiffe://test.example/controlplane";
const READER: &str = "monitor.test.example";

/// A CA that signs certificates into files in `dir`.
struct Ca {
    dir: PathBuf,
    pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca {
            dir: dir.to_path_buf(),
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf named `file` with these SANs (`uri:`, `dns:`, `ip:`) and common name, valid
    /// from `days.0` to `days.1` days from now.
    fn sign(&self, file: &str, cn: &str, sans: &[&str], days: (i64, i64)) -> Pair {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        for san in sans {
            let (kind, value) = san.split_once(':').unwrap();
            params.subject_alt_names.push(match kind {
                "uri" => SanType::URI(value.try_into().unwrap()),
                "dns" => SanType::DnsName(value.try_into().unwrap()),
                _ => SanType::IpAddress(value.parse().unwrap()),
            });
        }
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days.0);
        params.not_after = now + time::Duration::days(days.1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pair = Pair {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }
}

/// An agent with its TCP listener on a free port, the server certificate `server`, client
/// CA bundle `client_ca`, the two test identities mapped to roles, an audit log file, and
/// `extra` sections.
fn tls_agent(server: &Pair, client_ca: &Path, extra: &str) -> (Agent, u16) {
    let port = free_port();
    let agent = Agent::configure("");
    let config = std::fs::read_to_string(&agent.config).unwrap().replace(
        "[api]\n",
        &format!(
            "[api]\ntcp_listen = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
            server.cert.display(),
            server.key.display(),
            client_ca.display()
        ),
    );
    std::fs::write(
        &agent.config,
        format!(
            "{config}[access]\ntls_identities = {{ \"{CONTROLLER}\" = \"controller\", \"{READER}\" = \"reader\" }}\naudit_log = \"{}\"\n{extra}",
            agent.dir.path().join("audit.log").display()
        ),
    )
    .unwrap();
    (agent.spawn(), port)
}

/// The real hvctl over TCP with a client certificate, trusting `ca` for the agent's.
fn hvctl_tcp(port: u16, client: &Pair, ca: &Path, args: &[&str]) -> Output {
    hvctl_tcp_command(port, client, ca, args)
        .output()
        .expect("run hvctl")
}

fn hvctl_tcp_command(port: u16, client: &Pair, ca: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("hvctl"));
    cmd.arg("--endpoint")
        .arg(format!("localhost:{port}"))
        .arg("--tls-cert")
        .arg(&client.cert)
        .arg("--tls-key")
        .arg(&client.key)
        .arg("--tls-ca")
        .arg(ca)
        .args(args);
    cmd
}

/// What a TLS client sees: `Ok(the agent's certificate)` once the agent has spoken HTTP/2
/// over the connection, or the error that ended it (a refused client certificate shows as
/// the agent's alert).
async fn handshake(
    port: u16,
    client: Option<&Pair>,
    trust: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trust).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(hvagent::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(pair) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&pair.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&pair.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Ok(stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 10 s".into()),
    }
}

fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[test]
fn only_clients_with_a_valid_certificate_of_the_ca_get_in_and_each_gets_its_role() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "nodes-and-clients");
    let other = Ca::new(pki.path(), "someone-else");
    let server = ca.sign(
        "agent",
        "agent",
        &["dns:localhost", "ip:127.0.0.1"],
        (-1, 30),
    );
    let controller = ca.sign(
        "controller",
        "cp",
        &[&format!("uri:{CONTROLLER}")],
        (-1, 30),
    );
    let reader = ca.sign("reader", "monitor", &[&format!("dns:{READER}")], (-1, 30));
    let stranger = ca.sign("stranger", "stranger", &[], (-1, 30));
    let expired = ca.sign("expired", "cp", &[&format!("uri:{CONTROLLER}")], (-30, -1));
    let foreign = other.sign("foreign", "cp", &[&format!("uri:{CONTROLLER}")], (-1, 30));
    let (agent, port) = tls_agent(&server, &ca.pem, "");

    let rt = runtime();
    rt.block_on(async {
        // Refused in the handshake, each with the alert that says why.
        let none = handshake(port, None, &ca.pem, BOTH).await.unwrap_err();
        assert!(none.contains("CertificateRequired"), "{none}");
        let err = handshake(port, Some(&foreign), &ca.pem, BOTH)
            .await
            .unwrap_err();
        assert!(err.contains("UnknownCA"), "{err}");
        let err = handshake(port, Some(&expired), &ca.pem, BOTH)
            .await
            .unwrap_err();
        assert!(err.contains("CertificateExpired"), "{err}");
        // TLS 1.2 is allowed (the intermediate profile), and so is 1.3.
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let cert = handshake(port, Some(&controller), &ca.pem, &[version])
                .await
                .unwrap();
            assert_eq!(cert, der(&server.cert));
        }
    });
    // A TLS 1.2 client offering only CBC suites (outside the profile) gets no connection.
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA",
        ])
        .arg("-cert")
        .arg(&controller.cert)
        .arg("-key")
        .arg(&controller.key)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("handshake failure"),
        "{}",
        stderr(&out)
    );

    // Roles by identity, through the real hvctl.
    let gone = "00000000-0000-4000-8000-00000000715e";
    let out = hvctl_tcp(port, &reader, &ca.pem, &["node", "inventory"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("CPU"), "{}", stdout(&out));
    for args in [
        &["vm", "delete", gone][..],
        &[
            "vm",
            "create",
            "--name",
            "x",
            "--flavor",
            "SCS-1V-2",
            "--image",
            "testguest",
        ],
    ] {
        let out = hvctl_tcp(port, &reader, &ca.pem, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains("PERMISSION_DENIED"), "{err}");
        assert!(
            err.contains("needs role controller")
                && err.contains(&format!("the caller (certificate {READER})"))
                && err.contains("has role reader"),
            "{err}"
        );
    }
    let out = hvctl_tcp(port, &stranger, &ca.pem, &["node", "capacity", "SCS-1V-2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("needs role reader; the caller (certificate stranger) has no role"),
        "{}",
        stderr(&out)
    );
    let out = hvctl_tcp(port, &controller, &ca.pem, &["vm", "delete", gone]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "nothing to delete\n");
    let out = hvctl_tcp(port, &controller, &ca.pem, &["placement", "claims"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // hvctl checks its own files and the agent's certificate before any call.
    let out = hvctl_tcp(port, &expired, &ca.pem, &["node", "inventory"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--tls-cert: ") && stderr(&out).contains("expired on"),
        "{}",
        stderr(&out)
    );
    let out = hvctl_tcp(port, &controller, &other.pem, &["node", "inventory"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("UnknownIssuer"), "{}", stderr(&out));

    // The audit log: the reader's two denied calls and the controller's delete, from TCP.
    let text = std::fs::read_to_string(agent.dir.path().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, (who, method, result)) in lines.iter().zip([
        (READER, "VmService/Delete", "PERMISSION_DENIED"),
        (READER, "VmService/Create", "PERMISSION_DENIED"),
        (CONTROLLER, "VmService/Delete", "OK"),
    ]) {
        assert_eq!(line["who"], format!("certificate {who}"), "{text}");
        assert_eq!(line["method"], format!("hvagent.v1.{method}"), "{text}");
        assert_eq!(line["result"], result, "{text}");
        assert!(
            line["from"].as_str().unwrap().starts_with("tcp 127.0.0.1:"),
            "{text}"
        );
    }
}

#[test]
fn sighup_rotates_certificates_and_open_streams_go_on() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "ca-2026");
    let next_ca = Ca::new(pki.path(), "ca-2027");
    let server = ca.sign("agent", "agent", &["dns:localhost"], (-1, 30));
    let controller = ca.sign(
        "controller",
        "cp",
        &[&format!("uri:{CONTROLLER}")],
        (-1, 30),
    );
    let next_controller = next_ca.sign("next", "cp", &[&format!("uri:{CONTROLLER}")], (-1, 30));
    // The client CA bundle the agent reads; rotated below.
    let bundle = pki.path().join("clients.pem");
    std::fs::copy(&ca.pem, &bundle).unwrap();
    let (mut agent, port) = tls_agent(&server, &bundle, "");
    let rt = runtime();
    assert!(
        rt.block_on(handshake(port, Some(&next_controller), &next_ca.pem, BOTH))
            .is_err()
    );

    // Local files are imported by local callers only (a remote controller must not copy host
    // files into an image).
    let image = common::repo_root().join("images/out/testguest.qcow2");
    let import = [
        "image",
        "import",
        image.to_str().unwrap(),
        "--name",
        "testguest",
    ];
    let out = hvctl_tcp(port, &controller, &ca.pem, &import);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "PERMISSION_DENIED: source_path: local files are imported for callers on the Unix socket only"
        ),
        "{}",
        stderr(&out)
    );
    let out = agent.hvctl(&import);
    assert!(out.status.success(), "{}", stderr(&out));

    // A WatchEvents stream over TCP, seen to deliver before the rotation.
    let mut events = hvctl_tcp_command(port, &controller, &ca.pem, &["vm", "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_event_of = |id: &str, what: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if line.contains(id) {
            break line;
        }
    };
    let id = "00000000-0000-4000-8000-0000000007e5";
    let _cleanup = Cleanup(vec![id.to_string()]);
    let create = [
        "vm",
        "create",
        "--uuid",
        id,
        "--name",
        "rotation",
        "--flavor",
        "SCS-1Vi-0.5u",
        "--image",
        "testguest",
    ];
    // The stream may still be connecting: create until the guest's event shows on it.
    let out = hvctl_tcp(port, &controller, &ca.pem, &create);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = next_event_of(id, "an event on the stream before the rotation");
    assert!(line.contains("rotation"), "{line}");

    // Rotation: a new agent certificate (signed by the new CA) and a bundle with both CAs.
    let rotated = next_ca.sign("agent-next", "agent", &["dns:localhost"], (-1, 30));
    std::fs::copy(&rotated.cert, &server.cert).unwrap();
    std::fs::copy(&rotated.key, &server.key).unwrap();
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&ca.pem).unwrap(),
        std::fs::read_to_string(&next_ca.pem).unwrap()
    );
    std::fs::write(&bundle, both).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match rt.block_on(handshake(port, Some(&next_controller), &next_ca.pem, BOTH)) {
            Ok(cert) => {
                assert_eq!(cert, der(&rotated.cert));
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "rotation not in effect: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken rotation (a key that is not the certificate's) keeps the files in use.
    std::fs::copy(&controller.key, &server.key).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        rt.block_on(handshake(port, Some(&controller), &next_ca.pem, BOTH))
            .unwrap(),
        der(&rotated.cert)
    );

    // The stream opened before the rotations still delivers: the guest's deletion, made over
    // TCP with the new CA's client certificate, shows up on it.
    let out = hvctl_tcp(port, &next_controller, &next_ca.pem, &["vm", "delete", id]);
    assert!(out.status.success(), "{}", stderr(&out));
    next_event_of(id, "an event on the stream opened before the rotation");
    assert!(events.try_wait().unwrap().is_none(), "the stream ended");
    let _ = events.kill();
    let _ = events.wait();
    let (_, log) = agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(log.contains("SIGHUP: TLS certificates reloaded"), "{log}");
    assert!(
        log.contains("SIGHUP: TLS certificates not reloaded; keeping the ones in use"),
        "{log}"
    );
}

/// An agent reaching another for a migration dials as hvctl does: a certificate either side
/// refuses is told as such (FAILED_PRECONDITION), not as a transport error. The agent's
/// `[migration]` files are read at each Migrate, so one agent, dialing its own listener, plays
/// source and target; Migrate dials before it looks for the guest.
#[test]
fn a_migrating_agent_tells_which_certificate_a_target_refused() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "nodes");
    let other = Ca::new(pki.path(), "elsewhere");
    let server = ca.sign("agent", "agent", &["dns:localhost"], (-1, 30));
    let trusted = ca.sign("node", "node", &[&format!("uri:{CONTROLLER}")], (-1, 30));
    let foreign = other.sign("foreign", "node", &[&format!("uri:{CONTROLLER}")], (-1, 30));
    let (cert, key, server_ca) = (
        pki.path().join("migration.pem"),
        pki.path().join("migration.key"),
        pki.path().join("migration-ca.pem"),
    );
    let identity = |pair: &Pair, trust: &Path| {
        std::fs::copy(&pair.cert, &cert).unwrap();
        std::fs::copy(&pair.key, &key).unwrap();
        std::fs::copy(trust, &server_ca).unwrap();
    };
    identity(&trusted, &ca.pem);
    let (agent, port) = tls_agent(
        &server,
        &ca.pem,
        &format!(
            "[migration]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nserver_ca = \"{}\"\n",
            cert.display(),
            key.display(),
            server_ca.display()
        ),
    );
    let target = format!("localhost:{port}");
    let gone = "00000000-0000-4000-8000-00000000715e";
    runtime().block_on(async {
        let mut vms = hvagent_proto::v1::vm_service_client::VmServiceClient::new(
            hvctl::client::connect(&agent.socket).await.unwrap(),
        );
        let mut migrate = async || {
            vms.migrate(hvagent_proto::v1::MigrateVmRequest {
                uuid: gone.into(),
                target: target.clone(),
            })
            .await
            .unwrap_err()
        };
        // Both sides take the certificates: the dial succeeds and the guest is looked for.
        let err = migrate().await;
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        // The target does not take this node's certificate.
        identity(&foreign, &ca.pem);
        let err = migrate().await;
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().starts_with(&format!(
                "target: TLS with {target} failed: received fatal alert: UnknownCA (the agent refused this client certificate"
            )),
            "{err:?}"
        );
        // This node does not take the target's certificate.
        identity(&trusted, &other.pem);
        let err = migrate().await;
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().starts_with(&format!("target: TLS with {target} failed: "))
                && err.message().contains("UnknownIssuer"),
            "{err:?}"
        );
        // A malformed UUID is refused before any dial.
        let err = vms
            .migrate(hvagent_proto::v1::MigrateVmRequest {
                uuid: "not-a-uuid".into(),
                target: target.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert_eq!(err.message(), "uuid: must be a UUID (8-4-4-4-12 hex digits)");
        // Nothing listens there.
        identity(&trusted, &ca.pem);
        let closed = format!("localhost:{}", free_port());
        let err = vms
            .migrate(hvagent_proto::v1::MigrateVmRequest {
                uuid: gone.into(),
                target: closed.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(
            err.message().starts_with(&format!("target: cannot connect to {closed}: ")),
            "{err:?}"
        );
    });
}

#[test]
fn unusable_tls_files_stop_the_start_naming_key_and_problem() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "ca");
    let good = ca.sign("agent", "agent", &["dns:localhost"], (-1, 30));
    let expired = ca.sign("old", "agent", &["dns:localhost"], (-30, -1));
    let other = ca.sign("other", "other", &[], (-1, 30));
    let start = |cert: &Path, key: &Path, client_ca: &Path| -> (Option<i32>, String) {
        let agent = Agent::configure("");
        let config = std::fs::read_to_string(&agent.config).unwrap().replace(
            "[api]\n",
            &format!(
                "[api]\ntcp_listen = \"127.0.0.1:{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
                free_port(),
                cert.display(),
                key.display(),
                client_ca.display()
            ),
        );
        std::fs::write(&agent.config, config).unwrap();
        let out = agent.command().output().unwrap();
        assert!(!agent.socket.exists(), "socket left behind");
        (out.status.code(), stderr(&out))
    };
    let (code, err) = start(&expired.cert, &expired.key, &ca.pem);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "api.tls_cert: {}: certificate 1: expired on",
            expired.cert.display()
        )),
        "{err}"
    );
    let (code, err) = start(&good.cert, &other.key, &ca.pem);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("does not belong to the certificate in api.tls_cert"),
        "{err}"
    );
    let missing = pki.path().join("missing.pem");
    let (code, err) = start(&good.cert, &good.key, &missing);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "api.tls_client_ca: {}: No such file",
            missing.display()
        )),
        "{err}"
    );
    let (code, err) = start(&good.cert, &good.cert, &ca.pem);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("api.tls_key: ") && err.contains("no PEM private key"),
        "{err}"
    );
}
