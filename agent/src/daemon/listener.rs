//! The connections the gRPC server serves: local ones from the Unix socket, and remote ones
//! from the TCP listener once their TLS handshake (which checks the client certificate) is
//! done. Each carries an [`access::Peer`](crate::access::Peer) for the access layer. The TLS
//! configuration can be swapped (SIGHUP) while connections made with the old one go on.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::server::Connected;

use crate::access::Peer;
use crate::tls::{self, Files, TlsError};

/// A client has this long from its TCP connect to a finished handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; connections beyond are closed at once (a client that
/// opens connections without finishing them cannot tie up the agent).
pub const MAX_HANDSHAKES: usize = 64;

/// One accepted connection.
pub enum Connection {
    Unix(UnixStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Peer),
}

impl Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Connection::Unix(stream) => Peer::Unix(stream.connect_info()),
            Connection::Tls(_, peer) => peer.clone(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Unix(s) => s.is_write_vectored(),
            Connection::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Unix(s) => Pin::new(s).poll_flush(cx),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS side: the files it was made from and the configuration new handshakes use.
pub struct TlsEndpoint {
    files: Files,
    config: RwLock<Arc<ServerConfig>>,
}

impl TlsEndpoint {
    /// Reads and checks the files; the error names the config key, the file and the problem.
    pub fn load(files: Files) -> Result<TlsEndpoint, TlsError> {
        let config = tls::server_config(&files, tls::now())?;
        Ok(TlsEndpoint {
            files,
            config: RwLock::new(config),
        })
    }

    /// Reads the files again; new handshakes use them from now on, open connections keep
    /// theirs. On an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = tls::server_config(&self.files, tls::now())?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Accepts TCP connections, runs each handshake on its own task (bounded in number and time)
/// and hands the finished ones to `ready`. Runs until `ready` is closed.
pub async fn accept_tls(
    listener: TcpListener,
    endpoint: Arc<TlsEndpoint>,
    ready: mpsc::Sender<Connection>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "cannot accept a TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%remote, limit = MAX_HANDSHAKES, "too many TLS handshakes in progress; closing the connection");
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(endpoint.current());
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| tls::identity::of_certificate(cert));
                    tracing::debug!(%remote, identity = identity.as_deref().unwrap_or("-"), "TLS client connected");
                    let peer = Peer::Tls { remote, identity };
                    let _ = ready.send(Connection::Tls(Box::new(stream), peer)).await;
                }
                Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake refused"),
                Err(_) => {
                    tracing::info!(%remote, timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "TLS handshake not finished in time; closed")
                }
            }
        });
    }
}

/// Every connection the server takes: the Unix socket's, and the TLS ones [`accept_tls`]
/// sends to `tls` (a channel whose senders are gone when there is no TCP listener).
pub fn incoming(
    unix: UnixListener,
    tls: mpsc::Receiver<Connection>,
) -> impl Stream<Item = io::Result<Connection>> {
    let local = UnixListenerStream::new(unix).map(|s| s.map(Connection::Unix));
    local.merge(ReceiverStream::new(tls).map(Ok))
}
