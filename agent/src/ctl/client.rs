//! Connecting to the agent over its Unix socket. Failures are classified before gRPC is even
//! tried, so an operator reads "no socket" or "permission denied" instead of a transport error.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    #[error("{path} is not an hvagent socket: {reason}")]
    NotAnAgent { path: PathBuf, reason: String },
}

/// How long one call may take before hvctl gives up. Guest creates are the slow calls: on
/// hosts where libvirtd re-probes QEMU for every domain they take about 50 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Opens a gRPC channel to the agent at `socket`.
pub async fn connect(socket: &Path) -> Result<Channel, ConnectError> {
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
    Endpoint::from_static("http://hvagent.local")
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = connector_path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ConnectError::NotAnAgent {
            path,
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
pub fn call_error(socket: &Path, status: &tonic::Status) -> CallError {
    let unreachable = |message: String| CallError {
        message,
        unreachable: true,
    };
    match status.code() {
        tonic::Code::Unimplemented => unreachable(
            ConnectError::NotAnAgent {
                path: socket.to_path_buf(),
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
                    path: socket.to_path_buf(),
                    reason: format!("it does not speak gRPC ({})", status.message()),
                }
                .to_string(),
            )
        }
        tonic::Code::Unavailable => unreachable(format!(
            "{} stopped answering: {}",
            socket.display(),
            status.message()
        )),
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
