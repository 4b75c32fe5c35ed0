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
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::server::Connected;

use super::authority::LocalStream;
use crate::access::Peer;
use crate::tls::{self, Files, TlsError};
use hvagent_core::sync::{lock, read, write};

/// A client has this long from its TCP connect to a finished handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; connections beyond are closed at once (a client that
/// opens connections without finishing them cannot tie up the agent).
pub const MAX_HANDSHAKES: usize = 64;

/// Handshakes in progress at once from one address: one silent peer cannot take every slot.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;

/// Refused connections are logged at most this often (a flood must not flood the log).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Handshakes in progress per address; an entry goes when its last handshake ends.
#[derive(Default)]
struct InProgress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl InProgress {
    /// A slot for `ip`, or `None` when it has [`MAX_HANDSHAKES_PER_ADDRESS`] already.
    fn claim(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        let mut map = lock(&self.0);
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            ip,
        })
    }
}

struct Slot {
    owner: Arc<InProgress>,
    ip: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = lock(&self.owner.0);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// One accepted connection. Local ones read through the `:authority` rewrite that lets stock
/// gRPC clients in (see [`authority`](super::authority)).
pub enum Connection {
    Unix(Box<LocalStream>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Peer),
}

impl Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Connection::Unix(stream) => Peer::Unix(stream.socket().connect_info()),
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
            Connection::Unix(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Connection::Unix(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Unix(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
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
            Connection::Unix(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Unix(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
        *write(&self.config) = config;
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        read(&self.config).clone()
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
    let per_address = Arc::new(InProgress::default());
    let mut last_refusal_log: Option<std::time::Instant> = None;
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
        let slots = handshakes
            .clone()
            .try_acquire_owned()
            .ok()
            .zip(per_address.claim(remote.ip()));
        let Some((permit, slot)) = slots else {
            if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                last_refusal_log = Some(std::time::Instant::now());
                tracing::warn!(%remote, limit = MAX_HANDSHAKES, per_address = MAX_HANDSHAKES_PER_ADDRESS, "too many TLS handshakes in progress; closing connections (logged at most every 10 s)");
            }
            continue;
        };
        // gRPC messages are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(endpoint.current());
        let ready = ready.clone();
        tokio::spawn(async move {
            let _held = (permit, slot);
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
    let local = UnixListenerStream::new(unix)
        .map(|s| s.map(|s| Connection::Unix(Box::new(LocalStream::new(s)))));
    local.merge(ReceiverStream::new(tls).map(Ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_slots_are_bounded_per_address_and_given_back() {
        let slots = Arc::new(InProgress::default());
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<Slot> = (0..MAX_HANDSHAKES_PER_ADDRESS)
            .map(|_| slots.claim(a).expect("a slot"))
            .collect();
        assert!(slots.claim(a).is_none(), "one address cannot take more");
        let other = slots.claim(b).expect("another address still gets one");
        drop(held);
        drop(other);
        assert!(
            slots.0.lock().unwrap().is_empty(),
            "entries go with their last slot"
        );
        assert!(slots.claim(a).is_some());
    }
}
