//! A guest's serial console as a byte stream both ways, over libvirt's console stream
//! (`virDomainOpenConsole`): what `VmService.Console` pumps. libvirt allows one session per
//! console; opening with `force` closes the other one.
//!
//! The stream is non-blocking and polled by its session's own thread (`guest::console`):
//! libvirt's stream callbacks run on its event thread and the Rust binding keeps a pointer to
//! the stream object for them, which a stream that moves would invalidate; polling needs
//! neither. Incoming bytes are queued on the stream by libvirt's event loop (the agent runs
//! one), so a poll finds what arrived since the last.

use virt::stream::Stream;
use virt::sys;

use super::connection::Libvirt;
use super::guests::DomainError;

/// What a read of the console found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleRead {
    /// This many bytes, at the start of the buffer.
    Data(usize),
    /// Nothing now.
    Nothing,
    /// The console closed: the guest stopped, or another session took it over.
    Closed,
}

/// One open console session; closed when dropped.
pub trait ConsoleStream: Send {
    /// Bytes from the guest, without waiting.
    fn read(&mut self, buf: &mut [u8]) -> Result<ConsoleRead, DomainError>;

    /// Sends bytes to the guest without waiting: how many it took (0: none now).
    fn write(&mut self, data: &[u8]) -> Result<usize, DomainError>;
}

/// libvirt's stream answer for "would block" in non-blocking mode.
const WOULD_BLOCK: isize = -2;

struct LibvirtConsole {
    /// `None` once aborted (in `drop`).
    stream: Option<Stream>,
}

impl ConsoleStream for LibvirtConsole {
    fn read(&mut self, buf: &mut [u8]) -> Result<ConsoleRead, DomainError> {
        let Some(stream) = &self.stream else {
            return Ok(ConsoleRead::Closed);
        };
        match stream.recv(buf) {
            Ok(0) => Ok(ConsoleRead::Closed),
            Ok(WOULD_BLOCK) => Ok(ConsoleRead::Nothing),
            Ok(n) => Ok(usize::try_from(n).map_or(ConsoleRead::Nothing, ConsoleRead::Data)),
            Err(e) => Err(DomainError::Libvirt(e.message().to_string())),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<usize, DomainError> {
        let Some(stream) = &self.stream else {
            return Err(DomainError::Libvirt("the console is closed".into()));
        };
        match stream.send(data) {
            Ok(n) => Ok(usize::try_from(n).unwrap_or(0)),
            Err(e) => Err(DomainError::Libvirt(e.message().to_string())),
        }
    }
}

impl Drop for LibvirtConsole {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            // Ends the session on libvirt's side at once (a finish would wait for the peer).
            let _ = stream.abort();
        }
    }
}

impl Libvirt {
    /// Opens the serial console of a running domain; `force` closes another session first.
    pub fn open_console(
        &self,
        uuid: &str,
        force: bool,
    ) -> Result<Box<dyn ConsoleStream>, DomainError> {
        // A connection of its own, kept by the stream until it closes: a forced takeover
        // aborts the other session's stream, and the two must not share one connection's
        // I/O with each other or with the agent's other calls (see `waiting_domain`).
        let conn = super::connection::open_within(self.uri())
            .map_err(|e| DomainError::Unreachable(e.0))?;
        let domain = conn
            .lookup_domain_by_uuid_string(uuid)
            .map_err(|_| DomainError::NotFound(uuid.to_string()))?;
        let stream = Stream::new(&conn, sys::VIR_STREAM_NONBLOCK)
            .map_err(|e| DomainError::Libvirt(e.message().to_string()))?;
        let mut flags = sys::VIR_DOMAIN_CONSOLE_SAFE;
        if force {
            flags |= sys::VIR_DOMAIN_CONSOLE_FORCE;
        }
        domain
            .open_console(None, &stream, flags)
            .map_err(|e| DomainError::Libvirt(e.message().to_string()))?;
        Ok(Box::new(LibvirtConsole {
            stream: Some(stream),
        }))
    }
}
