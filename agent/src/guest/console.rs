//! Interactive serial console sessions (`VmService.Console`): bytes both ways between a client
//! and a running guest's console, one session per guest. A second session is refused, or with
//! `force` takes the console over (the first one ends, told so). A client that goes away ends
//! its session and nothing else: the guest runs on and virtlogd keeps writing the console log,
//! which does not depend on a session.
//!
//! Each session is pumped by a thread of its own (not the blocking pool: a session lasts as
//! long as the operator stays, and would hold one of its few permits that long), polling the
//! non-blocking console while neither side has anything: every [`POLL_ACTIVE`] for
//! [`ACTIVE_WINDOW`] after the last byte either way (a typed line's answer comes within it),
//! then every [`POLL_IDLE`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::error::GuestError;
use super::request::checked_uuid;
use super::{Guests, LIST_TIMEOUT};
use crate::domain::DomainState;
use crate::domain::console::{ConsoleRead, ConsoleStream};
use hvagent_core::sync::lock;

/// How long a session's thread sleeps when neither side had anything, shortly after the last
/// byte either way: the most a keystroke or an output byte waits then.
pub const POLL_ACTIVE: Duration = Duration::from_millis(1);
/// How long it sleeps once the session has been quiet for [`ACTIVE_WINDOW`] (a few wake-ups a
/// second per idle session; the first key after a pause waits at most this).
pub const POLL_IDLE: Duration = Duration::from_millis(10);
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(1);
/// How long a write may wait for libvirt to take keystrokes before the session ends.
const WRITE_STALL: Duration = Duration::from_secs(10);
/// Chunks of output queued for a slow client before the session waits for it.
const OUTPUT_QUEUE: usize = 64;

/// What a session tells its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    Data(Vec<u8>),
    /// The last event: why the session ended.
    End(ConsoleEnd),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// The console closed (the guest stopped).
    Closed,
    /// Another session took the console over with `force`.
    TakenOver,
    /// libvirt failed the stream.
    Failed(String),
}

/// An open session: the guest's output, and where keystrokes go. Dropping `input` (the
/// client hung up) ends the session.
pub struct ConsoleSession {
    pub output: mpsc::Receiver<ConsoleEvent>,
    pub input: mpsc::Sender<Vec<u8>>,
}

/// The open sessions, by guest: each with the flag that tells it it was taken over.
#[derive(Default)]
pub(super) struct Sessions {
    open: Arc<Mutex<BTreeMap<String, Arc<AtomicBool>>>>,
}

impl Guests {
    /// Opens the console of running (or paused) guest `uuid`; see the module's comment.
    pub async fn console(&self, uuid: &str, force: bool) -> Result<ConsoleSession, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let guest = self.get(&uuid).await?;
        if !matches!(
            guest.state,
            DomainState::Running | DomainState::Blocked | DomainState::Paused
        ) {
            return Err(GuestError::Precondition(format!(
                "uuid: guest {uuid} is {}; its console is there only while it runs (start it; `GetConsoleLog` reads what it wrote)",
                guest.state
            )));
        }
        match lock(&self.consoles.open).get(&uuid) {
            Some(_) if !force => {
                return Err(GuestError::Precondition(format!(
                    "uuid: the console of guest {uuid} is in use by another session; force takes it over"
                )));
            }
            // Told before libvirt closes its stream (the forced open does), so that it ends
            // as taken over rather than as a failed stream; it ends also if the open fails.
            Some(other) => other.store(true, Ordering::SeqCst),
            None => {}
        }
        let hypervisor = self.hypervisor.clone();
        let u = uuid.clone();
        let stream = tokio::time::timeout(
            LIST_TIMEOUT,
            self.blocking(move || {
                hypervisor.console(&u, force).map_err(|e| match e {
                    crate::domain::guests::DomainError::Libvirt(m) => GuestError::Precondition(
                        format!("uuid: libvirt cannot open the console of guest {u}: {m}"),
                    ),
                    other => other.into(),
                })
            }),
        )
        .await
        .map_err(|_| {
            GuestError::Unavailable(format!(
                "libvirt: no answer to opening the console within {} s",
                LIST_TIMEOUT.as_secs()
            ))
        })??;
        let taken = Arc::new(AtomicBool::new(false));
        if let Some(old) = lock(&self.consoles.open).insert(uuid.clone(), taken.clone()) {
            old.store(true, Ordering::SeqCst);
            tracing::warn!(vm = %uuid, "console taken over by a new session (force)");
        }
        tracing::info!(vm = %uuid, force, "console session opened");
        let (output_tx, output) = mpsc::channel(OUTPUT_QUEUE);
        let (input, input_rx) = mpsc::channel(OUTPUT_QUEUE);
        let open = self.consoles.open.clone();
        let name = format!("console-{}", &uuid[..8]);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let end = pump(stream, input_rx, &output_tx, &taken);
                // Only this session's entry goes: a session that took over has its own.
                let mut open = lock(&open);
                if open.get(&uuid).is_some_and(|t| Arc::ptr_eq(t, &taken)) {
                    open.remove(&uuid);
                }
                drop(open);
                tracing::info!(vm = %uuid, end = ?end, "console session ended");
                if let Some(end) = end {
                    let _ = output_tx.blocking_send(ConsoleEvent::End(end));
                }
            })
            .map_err(|e| GuestError::Internal(format!("cannot start a console thread: {e}")))?;
        Ok(ConsoleSession { output, input })
    }
}

/// Moves bytes both ways until the console closes, the session is taken over, or the client
/// goes; returns what to tell the client (`None`: it is gone). The stream closes when dropped,
/// at the end of this function.
fn pump(
    mut stream: Box<dyn ConsoleStream>,
    mut input: mpsc::Receiver<Vec<u8>>,
    output: &mpsc::Sender<ConsoleEvent>,
    taken: &AtomicBool,
) -> Option<ConsoleEnd> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_byte = Instant::now();
    loop {
        if taken.load(Ordering::SeqCst) {
            return Some(ConsoleEnd::TakenOver);
        }
        let mut busy = false;
        match stream.read(&mut buf) {
            Ok(ConsoleRead::Data(n)) => {
                busy = true;
                output
                    .blocking_send(ConsoleEvent::Data(buf[..n].to_vec()))
                    .ok()?;
            }
            Ok(ConsoleRead::Nothing) => {}
            Ok(ConsoleRead::Closed) => {
                return Some(if taken.load(Ordering::SeqCst) {
                    ConsoleEnd::TakenOver
                } else {
                    ConsoleEnd::Closed
                });
            }
            Err(e) => {
                return Some(if taken.load(Ordering::SeqCst) {
                    ConsoleEnd::TakenOver
                } else {
                    ConsoleEnd::Failed(e.to_string())
                });
            }
        }
        match input.try_recv() {
            Ok(keys) => {
                busy = true;
                if let Err(end) = write_all(stream.as_mut(), &keys, taken) {
                    return Some(end);
                }
            }
            Err(mpsc::error::TryRecvError::Empty) => {}
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
        }
        if output.is_closed() {
            return None;
        }
        if busy {
            last_byte = Instant::now();
        } else if last_byte.elapsed() < ACTIVE_WINDOW {
            std::thread::sleep(POLL_ACTIVE);
        } else {
            std::thread::sleep(POLL_IDLE);
        }
    }
}

/// Writes all of `data`, waiting while libvirt takes none of it (at most [`WRITE_STALL`]).
fn write_all(
    stream: &mut dyn ConsoleStream,
    mut data: &[u8],
    taken: &AtomicBool,
) -> Result<(), ConsoleEnd> {
    let mut since = Instant::now();
    while !data.is_empty() {
        if taken.load(Ordering::SeqCst) {
            return Err(ConsoleEnd::TakenOver);
        }
        match stream.write(data) {
            Ok(0) => {
                if since.elapsed() > WRITE_STALL {
                    return Err(ConsoleEnd::Failed(format!(
                        "the console took no input for {} s",
                        WRITE_STALL.as_secs()
                    )));
                }
                std::thread::sleep(POLL_ACTIVE);
            }
            Ok(n) => {
                data = &data[n.min(data.len())..];
                since = Instant::now();
            }
            Err(e) => return Err(ConsoleEnd::Failed(e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::guests::DomainError;
    use std::collections::VecDeque;

    /// A console that answers what it is sent, takes at most `chunk` bytes per write and
    /// none every other time, and closes after `close_after` reads.
    struct Echo {
        queued: VecDeque<u8>,
        chunk: usize,
        refuse_next: bool,
        reads: usize,
        close_after: usize,
    }

    impl ConsoleStream for Echo {
        fn read(&mut self, buf: &mut [u8]) -> Result<ConsoleRead, DomainError> {
            self.reads += 1;
            if self.reads > self.close_after {
                return Ok(ConsoleRead::Closed);
            }
            if self.queued.is_empty() {
                return Ok(ConsoleRead::Nothing);
            }
            let n = self.queued.len().min(buf.len()).min(3);
            for b in buf.iter_mut().take(n) {
                *b = self.queued.pop_front().unwrap_or(0);
            }
            Ok(ConsoleRead::Data(n))
        }

        fn write(&mut self, data: &[u8]) -> Result<usize, DomainError> {
            self.refuse_next = !self.refuse_next;
            if !self.refuse_next {
                return Ok(0);
            }
            let n = data.len().min(self.chunk);
            self.queued.extend(&data[..n]);
            Ok(n)
        }
    }

    fn echo(close_after: usize) -> Box<dyn ConsoleStream> {
        Box::new(Echo {
            queued: VecDeque::new(),
            chunk: 2,
            refuse_next: false,
            reads: 0,
            close_after,
        })
    }

    /// Keystrokes written in pieces (with "not now" answers between) come back whole and in
    /// order; a console that closes ends the session with `Closed`.
    #[test]
    fn bytes_go_both_ways_in_order_until_the_console_closes() {
        let (out_tx, mut out) = mpsc::channel(1024);
        let (in_tx, in_rx) = mpsc::channel(8);
        in_tx.blocking_send(b"echo hi\n".to_vec()).unwrap();
        in_tx.blocking_send(b"ls\n".to_vec()).unwrap();
        let end = pump(echo(400), in_rx, &out_tx, &AtomicBool::new(false));
        assert_eq!(end, Some(ConsoleEnd::Closed));
        let mut got = Vec::new();
        while let Ok(ConsoleEvent::Data(d)) = out.try_recv() {
            got.extend(d);
        }
        assert_eq!(got, b"echo hi\nls\n");
    }

    /// A client that hangs up ends the session with nothing to tell; a session taken over
    /// says so.
    #[test]
    fn hang_up_and_take_over_end_the_session() {
        let (out_tx, _out) = mpsc::channel(8);
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(8);
        drop(in_tx);
        assert_eq!(
            pump(echo(usize::MAX), in_rx, &out_tx, &AtomicBool::new(false)),
            None
        );
        let (_in_tx, in_rx) = mpsc::channel::<Vec<u8>>(8);
        assert_eq!(
            pump(echo(usize::MAX), in_rx, &out_tx, &AtomicBool::new(true)),
            Some(ConsoleEnd::TakenOver)
        );
        let (out_tx, out) = mpsc::channel(8);
        drop(out);
        let (_in_tx, in_rx) = mpsc::channel::<Vec<u8>>(8);
        assert_eq!(
            pump(echo(usize::MAX), in_rx, &out_tx, &AtomicBool::new(false)),
            None,
            "a client that stopped reading is gone too"
        );
    }
}
