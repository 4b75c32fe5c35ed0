//! Dialing an agent's TCP API with mutual TLS: hvctl does, and so does an agent that moves a
//! guest to another. A trial connection first reads the agent's verdict on our certificate:
//! under TLS 1.3 the client's handshake ends before the agent has judged the client
//! certificate, so a refusal (an alert) shows only on the first read, which gRPC would report
//! as a bare transport error.

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Files, TlsError, client_config, host_of};

/// How long the TCP connect and TLS handshake may take, and then the agent's first bytes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0:?} is not HOST:PORT (an IPv6 address in brackets: [::1]:9464)")]
    Endpoint(String),
    /// Our own certificate, key or CA bundle cannot be used.
    #[error(transparent)]
    Files(#[from] TlsError),
    #[error("cannot connect to {endpoint}: {source}")]
    Tcp {
        endpoint: String,
        source: std::io::Error,
    },
    /// A certificate was judged and refused: ours by the agent, or the agent's by our CA
    /// bundle or its name. Configuration, not a passing fault.
    #[error("TLS with {endpoint} failed: {reason}")]
    Refused { endpoint: String, reason: String },
    /// The peer went silent or closed the connection before it spoke.
    #[error("TLS with {endpoint} failed: {reason}")]
    Silent { endpoint: String, reason: String },
}

/// The name the agent at `endpoint` (`HOST:PORT`, an IPv6 address in brackets) must carry in
/// its certificate, or why `endpoint` is not one.
pub fn server_name(endpoint: &str) -> Result<ServerName<'static>, DialError> {
    let invalid = || DialError::Endpoint(endpoint.to_string());
    let host = host_of(endpoint).ok_or_else(invalid)?;
    ServerName::try_from(host.to_string()).map_err(|_| invalid())
}

/// Opens connections to the agent at one `HOST:PORT`, presenting the client certificate of
/// some [`Files`] and trusting only their CA bundle for the agent's, which must also carry
/// the host's name or address.
#[derive(Clone)]
pub struct Dialer {
    endpoint: String,
    name: ServerName<'static>,
    connector: TlsConnector,
}

impl Dialer {
    /// A dialer for `endpoint` (`HOST:PORT`, an IPv6 address in brackets) with the files
    /// checked at `now` (seconds since the epoch).
    pub fn new(endpoint: &str, files: &Files, now: i64) -> Result<Dialer, DialError> {
        Ok(Dialer {
            endpoint: endpoint.to_string(),
            name: server_name(endpoint)?,
            connector: TlsConnector::from(client_config(files, now)?),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One connection with its handshake done, for gRPC to use.
    pub async fn open(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.endpoint).await?;
        self.connector.connect(self.name.clone(), tcp).await
    }

    /// A trial connection, closed once the agent has said its first bytes (an agent speaks
    /// first: HTTP/2 settings), so that a refused certificate is told as such.
    pub async fn trial(&self) -> Result<(), DialError> {
        let endpoint = || self.endpoint.clone();
        let refused = |reason: String| DialError::Refused {
            endpoint: endpoint(),
            reason,
        };
        let silent = |reason: &str| DialError::Silent {
            endpoint: endpoint(),
            reason: reason.to_string(),
        };
        let mut trial = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.open()).await {
            Err(_) => return Err(silent("no answer within 10 s")),
            // rustls reports every certificate or protocol verdict as invalid data.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(refused(e.to_string()));
            }
            Ok(Err(source)) => {
                return Err(DialError::Tcp {
                    endpoint: endpoint(),
                    source,
                });
            }
            Ok(Ok(stream)) => stream,
        };
        let mut first = [0u8; 1];
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, trial.read(&mut first)).await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(Ok(_)) => Err(silent("the agent closed the connection")),
            // A TLS alert: the agent's verdict on our certificate.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(refused(format!(
                "{e} (the agent refused this client certificate: is it signed by a CA in the agent's api.tls_client_ca, and in its validity period?)"
            ))),
            Ok(Err(e)) => Err(silent(&format!("the connection failed: {e}"))),
            Err(_) => Err(silent("the agent said nothing within 10 s")),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::super::testing::{Ca, ca, leaf};
    use super::super::{Files, now, server_config};
    use super::*;

    /// Writes a certificate (with `sans`) signed by `signer`, its key and the CA bundle
    /// `trusted` into `dir` under `prefix`.
    fn files(
        dir: &tempfile::TempDir,
        prefix: &str,
        signer: &Ca,
        sans: &[&str],
        trusted: &Ca,
    ) -> Files {
        let leaf = leaf(signer, Some(prefix), sans, (-1, 30));
        let write = |name: &str, text: &str| {
            let path = dir.path().join(format!("{prefix}-{name}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        Files {
            cert: ("tls_cert", write("cert.pem", &leaf.cert_pem)),
            key: ("tls_key", write("key.pem", &leaf.key_pem)),
            ca: ("tls_ca", write("ca.pem", &trusted.pem)),
        }
    }

    /// How the test server treats a connection whose handshake it accepted.
    #[derive(Clone, Copy)]
    enum Server {
        /// Speaks first, as an agent's HTTP/2 server does.
        Speaks,
        /// Closes the connection (with close_notify) without a word.
        Closes,
    }

    /// A TLS server on a loopback port with `files`, serving connections as `kind` says;
    /// handshakes it refuses end with the alert rustls sends.
    async fn serve(files: &Files, kind: Server) -> String {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(files, now()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    match kind {
                        Server::Speaks => {
                            let _ = tls.write_all(b"x").await;
                            let _ = tls.flush().await;
                            let mut rest = Vec::new();
                            let _ = tls.read_to_end(&mut rest).await;
                        }
                        Server::Closes => {
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });
        endpoint
    }

    /// What a trial dial of `endpoint` with `files` failed with.
    async fn refusal(endpoint: &str, files: &Files) -> DialError {
        let dialer = Dialer::new(endpoint, files, now()).unwrap();
        dialer.trial().await.unwrap_err()
    }

    #[tokio::test]
    async fn a_trial_tells_each_verdict() {
        let (ours, theirs) = (ca("clients CA"), ca("agents CA"));
        let dir = tempfile::tempdir().unwrap();
        let agent = files(&dir, "agent", &theirs, &["ip:127.0.0.1"], &ours);
        let client = files(&dir, "client", &ours, &["uri:spiffe://test/cp"], &theirs);
        let endpoint = serve(&agent, Server::Speaks).await;

        let dialer = Dialer::new(&endpoint, &client, now()).unwrap();
        assert_eq!(dialer.endpoint(), endpoint);
        dialer.trial().await.unwrap();
        // gRPC's connections are opened the same way.
        let mut stream = dialer.open().await.unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"x");

        // Our certificate from a CA the agent does not trust: its alert, and what to check.
        let stranger = files(&dir, "stranger", &ca("other CA"), &[], &theirs);
        let err = refusal(&endpoint, &stranger).await;
        assert!(matches!(err, DialError::Refused { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "TLS with {endpoint} failed: received fatal alert: UnknownCA"
            )),
            "{text}"
        );
        assert!(text.contains("api.tls_client_ca"), "{text}");

        // The agent's certificate from a CA we do not trust, or for another name.
        let wary = files(&dir, "wary", &ours, &[], &ours);
        let err = refusal(&endpoint, &wary).await;
        assert!(matches!(err, DialError::Refused { .. }), "{err:?}");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        let port = endpoint.rsplit_once(':').unwrap().1;
        let err = refusal(&format!("localhost:{port}"), &client).await;
        assert!(matches!(err, DialError::Refused { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("certificate not valid for name \"localhost\""),
            "{err}"
        );

        // A server that closes without a word is no agent.
        let quiet = serve(&agent, Server::Closes).await;
        let err = refusal(&quiet, &client).await;
        assert!(matches!(err, DialError::Silent { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("TLS with {quiet} failed: the agent closed the connection")
        );

        // Nothing listening.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = free.local_addr().unwrap().to_string();
        drop(free);
        let err = refusal(&closed, &client).await;
        assert!(
            matches!(&err, DialError::Tcp { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to {closed}: "))
        );
    }

    #[test]
    fn a_dialer_needs_an_endpoint_and_usable_files() {
        let ca = ca("CA");
        let dir = tempfile::tempdir().unwrap();
        let client = files(&dir, "client", &ca, &[], &ca);
        for bad in ["node1", "node1:http", ":9464", "[::1]"] {
            let err = Dialer::new(bad, &client, now()).err().unwrap();
            assert_eq!(
                err.to_string(),
                format!("{bad:?} is not HOST:PORT (an IPv6 address in brackets: [::1]:9464)")
            );
        }
        let mut missing = client.clone();
        missing.key.1 = dir.path().join("nope.pem");
        let err = Dialer::new("127.0.0.1:9464", &missing, now())
            .err()
            .unwrap();
        assert!(
            matches!(
                &err,
                DialError::Files(TlsError::File { key: "tls_key", .. })
            ),
            "{err:?}"
        );
        let v6 = Dialer::new("[::1]:9464", &client, now()).unwrap();
        assert_eq!(v6.endpoint(), "[::1]:9464");
    }
}
