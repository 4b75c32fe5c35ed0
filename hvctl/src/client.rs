//! Connecting to the agent over its Unix socket, or over TCP with mutual TLS. Failures are
//! classified before gRPC is even tried, so an operator reads "no socket", "permission denied"
//! or "the agent refused this certificate" instead of a transport error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hvagent_core::tls::dial::{DialError, Dialer};
use hvagent_core::tls::{self, Files, TlsError};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot connect to {0}: no such socket (is hvagent running? start it with `make run` or `systemctl start hvagent`)"
    )]
    Missing(PathBuf),
    #[error(
        "cannot connect to {0}: permission denied (run as root or as a member of the socket's group)"
    )]
    Permission(PathBuf),
    #[error("cannot connect to {0}: nothing is listening (a stale socket: hvagent is not running)")]
    Refused(PathBuf),
    #[error("cannot connect to {path}: {source}")]
    Other {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{agent} is not an hvagent: {reason}")]
    NotAnAgent { agent: String, reason: String },
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("--endpoint {0:?}: not HOST:PORT (an IPv6 address in brackets: [::1]:9464)")]
    Endpoint(String),
    /// The TCP connection or the TLS handshake failed.
    #[error(transparent)]
    Dial(DialError),
}

impl From<DialError> for ConnectError {
    fn from(e: DialError) -> ConnectError {
        match e {
            DialError::Endpoint(endpoint) => ConnectError::Endpoint(endpoint),
            DialError::Files(e) => ConnectError::Tls(e),
            e => ConnectError::Dial(e),
        }
    }
}

/// How long one call may take before hvctl gives up. Guest creates are the slow calls: on
/// hosts where libvirtd re-probes QEMU for every domain they take about 50 s.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The deadline of every call on a channel: `None` for calls that last as long as their
/// work (a drain moves guest after guest; the operator interrupts it if need be).
fn bounded(endpoint: Endpoint, wait: Option<Duration>) -> Endpoint {
    match wait {
        Some(t) => endpoint.timeout(t),
        None => endpoint,
    }
}

/// Opens a gRPC channel to the agent at `socket`, calls bounded by [`CALL_TIMEOUT`].
pub async fn connect(socket: &Path) -> Result<Channel, ConnectError> {
    connect_waiting(socket, Some(CALL_TIMEOUT)).await
}

/// Opens a gRPC channel to the agent at `socket`, its calls waited for `wait` at most.
pub async fn connect_waiting(
    socket: &Path,
    wait: Option<Duration>,
) -> Result<Channel, ConnectError> {
    let path = socket.to_path_buf();
    // Classify the common failures with a plain connect first.
    if let Err(e) = tokio::net::UnixStream::connect(&path).await {
        return Err(match e.kind() {
            std::io::ErrorKind::NotFound => ConnectError::Missing(path),
            std::io::ErrorKind::PermissionDenied => ConnectError::Permission(path),
            std::io::ErrorKind::ConnectionRefused => ConnectError::Refused(path),
            _ => ConnectError::Other { path, source: e },
        });
    }
    let connector_path = path.clone();
    // The URI is required by the API but unused: every connection goes to the socket.
    bounded(Endpoint::from_static("http://hvagent.local"), wait)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = connector_path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ConnectError::NotAnAgent {
            agent: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Opens a gRPC channel to the agent's TCP listener at `endpoint` (`HOST:PORT`), presenting
/// the client certificate of `files` and trusting only its CA bundle for the agent's; its
/// calls waited for `wait` at most. A trial connection first, so that a refused certificate
/// reads as such ([`Dialer::trial`]).
pub async fn connect_tls(
    endpoint: &str,
    files: &Files,
    wait: Option<Duration>,
) -> Result<Channel, ConnectError> {
    let dialer = Dialer::new(endpoint, files, tls::now())?;
    dialer.trial().await?;
    let shared = Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|_| ConnectError::Endpoint(endpoint.to_string()))?;
    bounded(shared, wait)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dialer = dialer.clone();
            async move { dialer.open().await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| ConnectError::NotAnAgent {
            agent: endpoint.to_string(),
            reason: e.to_string(),
        })
}

/// A failed call as hvctl reports it.
pub struct CallError {
    pub message: String,
    /// The peer is not (or no longer) a usable agent, rather than an agent refusing the call.
    pub unreachable: bool,
}

/// Turns a failed call into a message; transport-level failures mean the peer is not an agent.
/// `agent` is the socket or endpoint the call went to.
pub fn call_error(agent: &str, status: &tonic::Status) -> CallError {
    let unreachable = |message: String| CallError {
        message,
        unreachable: true,
    };
    match status.code() {
        tonic::Code::Unimplemented => unreachable(
            ConnectError::NotAnAgent {
                agent: agent.to_string(),
                reason: format!("it does not implement this call ({})", status.message()),
            }
            .to_string(),
        ),
        tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Internal
            if status.message().contains("transport")
                || status.message().contains("protocol")
                || status.message().contains("h2") =>
        {
            unreachable(
                ConnectError::NotAnAgent {
                    agent: agent.to_string(),
                    reason: format!("it does not speak gRPC ({})", status.message()),
                }
                .to_string(),
            )
        }
        tonic::Code::Unavailable => {
            unreachable(format!("{agent} stopped answering: {}", status.message()))
        }
        code => CallError {
            message: format!("{}: {}", code_name(code), status.message()),
            unreachable: false,
        },
    }
}

/// gRPC code names as the gRPC documentation spells them.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
