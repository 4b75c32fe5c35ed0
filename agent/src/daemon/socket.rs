//! The local API socket. A lock file next to it makes "one agent per socket" race-free: whoever
//! holds the lock owns the socket path, so a leftover socket from a crashed agent can be replaced
//! safely, and a second agent is refused while the first one lives.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another hvagent (pid {pid}) is serving {path}")]
    AlreadyRunning { path: PathBuf, pid: String },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

/// Removes the socket when the agent stops; the lock is released when the file closes.
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_path_buf();
    move |source| SocketError::Io {
        path,
        action,
        source,
    }
}

/// Binds `path` with mode 0660, creating its directory, replacing a stale socket.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketGuard), SocketError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        // Members of the socket's group must reach it; a directory that exists is the
        // operator's and keeps its mode.
        crate::storage::traversable_dir(dir).map_err(io(dir, "create directory (mode 0711)"))?;
    }
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path, "open lock file"))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(SocketError::AlreadyRunning {
                path: path.to_path_buf(),
                pid: pid.trim().to_string(),
            });
        }
        Err((_, errno)) => {
            return Err(SocketError::Io {
                path: lock_path,
                action: "lock",
                source: errno.into(),
            });
        }
    };

    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // An agent that predates the lock, or one started with another lock path, would
            // still answer; only a socket nobody listens on is stale.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::AlreadyRunning {
                    path: path.to_path_buf(),
                    pid: "unknown".into(),
                });
            }
            tracing::info!(socket = %path.display(), "replacing stale socket");
            std::fs::remove_file(path).map_err(io(path, "remove stale socket"))?;
        }
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path, "inspect")(e)),
    }

    let listener = UnixListener::bind(path).map_err(io(path, "bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io(path, "chmod 0660"))?;
    lock.set_len(0).map_err(io(&lock_path, "truncate"))?;
    lock.rewind().map_err(io(&lock_path, "rewind"))?;
    writeln!(lock, "{}", std::process::id()).map_err(io(&lock_path, "write pid"))?;
    Ok((
        listener,
        SocketGuard {
            path: path.to_path_buf(),
            _lock: lock,
        },
    ))
}

/// `/run/hvagent/hvagent.sock` → `/run/hvagent/hvagent.sock.lock`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_bind_is_refused_and_stale_socket_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/a.sock");
        let (listener, guard) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = bind(&path).unwrap_err();
        assert!(
            matches!(&err, SocketError::AlreadyRunning { pid, .. } if *pid == std::process::id().to_string()),
            "{err}"
        );
        drop(listener);
        drop(guard);
        assert!(!path.exists(), "socket removed on stop");

        // A stale socket: bound once, never removed, nobody listening.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let (_listener, _guard) = bind(&path).unwrap();
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        std::fs::write(&path, "precious").unwrap();
        assert!(matches!(bind(&path), Err(SocketError::NotASocket { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}
