//! `hvctl vm console VM --attach`: the guest's interactive serial console (`VmService.Console`).
//! On a terminal: raw mode (every key goes to the guest as typed), restored on the way out;
//! `Ctrl-]` leaves, as in `virsh console`. Without a terminal: standard input is sent as it
//! comes, and its end leaves.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use hvagent_proto::v1 as pb;
use nix::sys::termios::{self, SetArg, Termios};

use super::fail;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

/// `Ctrl-]`: leaves the console.
pub const ESCAPE: u8 = 0x1d;

/// The terminal's settings before raw mode, put back when dropped.
struct RawMode(Termios);

impl RawMode {
    /// Raw mode on standard input when it is a terminal; `None` when it is not.
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// What of `chunk` goes to the guest, and whether the escape key was in it (the rest of the
/// chunk then stays here).
pub fn split_at_escape(chunk: &[u8]) -> (&[u8], bool) {
    match chunk.iter().position(|&b| b == ESCAPE) {
        Some(i) => (&chunk[..i], true),
        None => (chunk, false),
    }
}

pub async fn attach(agent: &str, vms: &mut Vms, uuid: String, force: bool) -> ExitCode {
    let (keys, rx) = tokio::sync::mpsc::channel::<pb::ConsoleInput>(16);
    let open = pb::ConsoleInput {
        uuid,
        force,
        data: Vec::new(),
    };
    if keys.send(open).await.is_err() {
        return ExitCode::FAILURE;
    }
    let mut output = match vms
        .console(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return fail(agent, &status),
    };
    let raw = RawMode::enter();
    if raw.is_some() {
        eprint!("Connected to the guest's console; Ctrl-] leaves.\r\n");
    }
    let escape = raw.is_some();
    // Standard input blocks: read on a thread of its own. Its end, or the escape key, drops
    // the sender, which ends the session.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let (send, leave) = if escape {
                split_at_escape(&buf[..n])
            } else {
                (&buf[..n], false)
            };
            if !send.is_empty() {
                let msg = pb::ConsoleInput {
                    data: send.to_vec(),
                    ..Default::default()
                };
                if keys.blocking_send(msg).is_err() {
                    return;
                }
            }
            if leave {
                return;
            }
        }
    });
    let mut stdout = std::io::stdout();
    let result = loop {
        match output.message().await {
            Ok(Some(out)) => {
                if stdout
                    .write_all(&out.data)
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    drop(raw);
    match result {
        Ok(()) => {
            if escape {
                eprintln!();
            }
            ExitCode::SUCCESS
        }
        Err(status) => fail(agent, &status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_key_ends_what_is_sent() {
        assert_eq!(split_at_escape(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_at_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_at_escape(b"\x1d"), (&b""[..], true));
    }
}
