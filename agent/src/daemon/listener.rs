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
use tokio_stream::wrappers::ReceiverStream;
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

/// Local connections open at once per user other than root; beyond, new ones are closed at
/// once. Root (the controller) has no limit, so that members of `[access] socket_group` cannot
/// lock it out, nor make the agent hold more than this many descriptors each.
pub const MAX_LOCAL_CONNECTIONS_PER_USER: usize = 64;

/// A local connection must send its first bytes (the HTTP/2 preface, which a client sends at
/// once) within this, or it is closed. Once HTTP/2 runs, its pings find a peer that is gone.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// What is held per key (a TLS client's address, a local user); an entry goes with its last
/// slot.
struct InProgress<K>(std::sync::Mutex<std::collections::HashMap<K, usize>>);

impl<K> Default for InProgress<K> {
    fn default() -> Self {
        InProgress(std::sync::Mutex::default())
    }
}

impl<K: std::hash::Hash + Eq + Copy> InProgress<K> {
    /// A slot for `key`, or `None` when it holds `max` already.
    fn claim(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut map = lock(&self.0);
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            key,
        })
    }
}

/// One held place of a key in [`InProgress`]; given back when dropped.
pub struct Slot<K: std::hash::Hash + Eq + Copy> {
    owner: Arc<InProgress<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = lock(&self.owner.0);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// One accepted connection. Local ones read through the `:authority` rewrite that lets stock
/// gRPC clients in (see [`authority`](super::authority)), and hold their user's slot (none for
/// root) while they are open.
pub enum Connection {
    Unix(Box<LocalStream>, Option<Slot<u32>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Peer),
}

impl Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Connection::Unix(stream, _) => Peer::Unix(stream.socket().connect_info()),
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
            Connection::Unix(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Connection::Unix(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Unix(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Unix(s, _) => s.is_write_vectored(),
            Connection::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Unix(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
            Connection::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Unix(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
            .zip(per_address.claim(remote.ip(), MAX_HANDSHAKES_PER_ADDRESS));
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

/// Accepts local connections, each held to [`MAX_LOCAL_CONNECTIONS_PER_USER`] and
/// [`FIRST_BYTES_TIMEOUT`], and hands those that speak to `ready`. Runs until `ready` is closed.
async fn accept_local(listener: UnixListener, ready: mpsc::Sender<Connection>) {
    let per_user = Arc::new(InProgress::<u32>::default());
    let mut last_refusal_log: Option<std::time::Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "cannot accept a local connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        // A peer whose credentials cannot be read counts as one more user, never as root.
        let slot = match stream.peer_cred().map(|c| c.uid()) {
            Ok(0) => None,
            uid => {
                let uid = uid.unwrap_or(u32::MAX);
                match per_user.claim(uid, MAX_LOCAL_CONNECTIONS_PER_USER) {
                    Some(slot) => Some(slot),
                    None => {
                        if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                            last_refusal_log = Some(std::time::Instant::now());
                            tracing::warn!(
                                uid,
                                limit = MAX_LOCAL_CONNECTIONS_PER_USER,
                                "too many local connections of one user; closing new ones (logged at most every 10 s)"
                            );
                        }
                        continue;
                    }
                }
            }
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(FIRST_BYTES_TIMEOUT, first_bytes(&stream)).await {
                Ok(Ok(())) => {
                    let local = Connection::Unix(Box::new(LocalStream::new(stream)), slot);
                    let _ = ready.send(local).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "local connection failed"),
                Err(_) => tracing::debug!(
                    timeout_s = FIRST_BYTES_TIMEOUT.as_secs(),
                    "local connection sent nothing in time; closed"
                ),
            }
        });
    }
}

/// Returns once `stream` has bytes to read (or its peer closed it), leaving them unread.
async fn first_bytes(stream: &tokio::net::UnixStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // Readiness can be reported without data (tokio says so): peek to be sure.
        stream.readable().await?;
        let mut byte = [0u8; 1];
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let flags =
                nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
            nix::sys::socket::recv(stream.as_raw_fd(), &mut byte, flags).map_err(io::Error::from)
        });
        match peeked {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Every connection the server takes: the Unix socket's (accepted by a task of their own), and
/// the TLS ones [`accept_tls`] sends to `tls` (a channel whose senders are gone when there is no
/// TCP listener).
pub fn incoming(
    unix: UnixListener,
    tls: mpsc::Receiver<Connection>,
) -> impl Stream<Item = io::Result<Connection>> {
    let (local_ready, local) = mpsc::channel(MAX_LOCAL_CONNECTIONS_PER_USER);
    tokio::spawn(accept_local(unix, local_ready));
    ReceiverStream::new(local)
        .merge(ReceiverStream::new(tls))
        .map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_slots_are_bounded_per_address_and_given_back() {
        let slots = Arc::new(InProgress::default());
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let max = MAX_HANDSHAKES_PER_ADDRESS;
        let held: Vec<Slot<_>> = (0..max)
            .map(|_| slots.claim(a, max).expect("a slot"))
            .collect();
        assert!(
            slots.claim(a, max).is_none(),
            "one address cannot take more"
        );
        let other = slots.claim(b, max).expect("another address still gets one");
        drop(held);
        drop(other);
        assert!(
            slots.0.lock().unwrap().is_empty(),
            "entries go with their last slot"
        );
        assert!(slots.claim(a, max).is_some());
    }
}
