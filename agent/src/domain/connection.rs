//! One libvirt connection, opened lazily and reopened when found dead. Every method blocks:
//! callers run them on tokio's blocking pool.

use std::sync::{Mutex, Once};

use virt::connect::Connect;

use super::events::{self, DomainEvent};
use hvagent_core::host::LibvirtFacts;

static EVENT_LOOP: Once = Once::new();

/// libvirt wants its default event loop registered before the first connection, and run on a
/// thread of its own; without it keepalives and (later) domain events never fire.
fn start_event_loop() {
    EVENT_LOOP.call_once(|| {
        // Errors are returned to callers; libvirt's default handler would also print them.
        virt::error::clear_error_callback();
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!(error = %e, "cannot register the libvirt event loop");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| {
                loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        tracing::warn!(error = %e, "libvirt event loop iteration failed");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the libvirt event thread");
        }
    });
}

pub struct Libvirt {
    uri: String,
    state: Mutex<State>,
    /// Lifecycle events of every domain, from callbacks registered on each new connection.
    events: tokio::sync::broadcast::Sender<DomainEvent>,
}

#[derive(Default)]
struct State {
    conn: Option<Connect>,
    /// Facts of the current connection: they only change when libvirtd restarts.
    facts: Option<LibvirtFacts>,
    /// A connection died and no new one is open yet: events in between are missing.
    lost: bool,
    /// A caller is opening a connection (without the lock held).
    opening: bool,
}

/// How long opening a connection may take. A libvirtd that accepts the connection but does
/// not answer (stopped, hung) would hold an open for ever.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens given up on that have not returned yet; no more are started beyond
/// [`MAX_STUCK_OPENS`] (each holds a thread until libvirtd answers).
static STUCK_OPENS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const MAX_STUCK_OPENS: usize = 4;

/// Ends its open's turn when dropped.
struct Opening<'a>(&'a Libvirt);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.lock().opening = false;
    }
}

/// `Connect::open` on a thread of its own, waited for at most `OPEN_TIMEOUT`; one that takes
/// longer is left to finish (its connection then closes) and counted as stuck meanwhile.
pub(crate) fn open_within(uri: &str) -> Result<Connect, Unreachable> {
    use std::sync::atomic::Ordering;
    if STUCK_OPENS.load(Ordering::Relaxed) >= MAX_STUCK_OPENS {
        return Err(Unreachable(format!(
            "{uri}: {MAX_STUCK_OPENS} connection attempts still wait for libvirtd"
        )));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = uri.to_string();
    STUCK_OPENS.fetch_add(1, Ordering::Relaxed);
    let spawned = std::thread::Builder::new()
        .name("libvirt-open".into())
        .spawn(move || {
            let opened = Connect::open(Some(&owned));
            STUCK_OPENS.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(opened);
        });
    if let Err(e) = spawned {
        STUCK_OPENS.fetch_sub(1, Ordering::Relaxed);
        return Err(Unreachable(format!(
            "{uri}: cannot start a thread to connect: {e}"
        )));
    }
    match rx.recv_timeout(OPEN_TIMEOUT) {
        Ok(opened) => opened.map_err(Unreachable::from),
        Err(_) => Err(Unreachable(format!(
            "{uri}: libvirtd accepted the connection but did not answer within {} s",
            OPEN_TIMEOUT.as_secs()
        ))),
    }
}

/// libvirt cannot be used now, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

impl From<virt::error::Error> for Unreachable {
    fn from(e: virt::error::Error) -> Self {
        Unreachable(e.message().to_string())
    }
}

impl Libvirt {
    pub fn new(uri: &str) -> Self {
        start_event_loop();
        Self {
            uri: uri.to_string(),
            state: Mutex::new(State::default()),
            events: tokio::sync::broadcast::channel(events::CAPACITY).0,
        }
    }

    /// A receiver of every domain event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<DomainEvent> {
        self.events.subscribe()
    }

    /// Sends an event of the agent's own to every receiver (none listening is fine).
    pub fn publish(&self, event: DomainEvent) {
        let _ = self.events.send(event);
    }

    /// Opens a connection with the event callbacks on it. No libvirt keepalive: libvirt 9.0's
    /// client crashes (a use after free in its I/O loop) when a keepalive timeout closes a
    /// connection while calls wait on it; calls are bounded by the agent instead.
    fn open(&self) -> Result<Connect, Unreachable> {
        let conn = open_within(&self.uri)?;
        if let Err(e) = events::register(&conn, &self.events) {
            tracing::warn!(error = %e, "domain events unavailable on this connection");
        }
        Ok(conn)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Versions and domain types, asked once per connection. When libvirt cannot be reached
    /// the facts say why, and the next call tries again.
    pub fn facts(&self) -> LibvirtFacts {
        let failed = |e: &dyn std::fmt::Display| LibvirtFacts {
            uri: self.uri.clone(),
            error: format!("cannot use {}: {e}", self.uri),
            ..Default::default()
        };
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return failed(&e),
        };
        if let Some(facts) = self.lock().facts.clone() {
            return facts;
        }
        // Asked without holding the lock: capabilities can take seconds on some hosts, and
        // guest operations must not wait for them.
        match self.ask(&conn) {
            Ok(facts) => {
                self.lock().facts = Some(facts.clone());
                facts
            }
            Err(e) => failed(&e),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        hvagent_core::sync::lock(&self.state)
    }

    /// The live connection, opened (or reopened after libvirtd went away) on demand.
    pub fn conn(&self) -> Result<Connect, Unreachable> {
        {
            let mut state = self.lock();
            if let Some(conn) = &state.conn
                && conn.is_alive().unwrap_or(false)
            {
                return Ok(conn.clone());
            }
            if state.conn.take().is_some() {
                tracing::warn!(uri = %self.uri, "libvirt connection lost; reconnecting");
                state.lost = true;
            }
            state.facts = None;
            // One opener at a time, and nobody waits for it (an open takes at most
            // OPEN_TIMEOUT).
            if state.opening {
                return Err(Unreachable(format!(
                    "{}: not answering; a reconnect is in progress",
                    self.uri
                )));
            }
            state.opening = true;
        }
        // Cleared however the open ends, a panic in libvirt's bindings included.
        let _opening = Opening(self);
        let opened = self.open();
        let mut state = self.lock();
        let conn = opened?;
        state.conn = Some(conn.clone());
        if std::mem::take(&mut state.lost) {
            tracing::info!(uri = %self.uri, "libvirt connection reopened");
            // Watchers learn that events may be missing and that they should list again.
            let _ = self.events.send(DomainEvent::reconnected());
        }
        Ok(conn)
    }

    fn ask(&self, conn: &Connect) -> Result<LibvirtFacts, virt::error::Error> {
        Ok(LibvirtFacts {
            uri: self.uri.clone(),
            libvirt_version: version_string(conn.lib_version()?),
            qemu_version: version_string(conn.hyp_version()?),
            domain_types: domain_types(&conn.capabilities()?),
            error: String::new(),
        })
    }
}

/// libvirt encodes versions as major * 1_000_000 + minor * 1000 + release.
fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

/// The distinct `<domain type='…'/>` values under `<guest>` in a capabilities document.
fn domain_types(capabilities: &str) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(capabilities);
    let mut depth_in_guest = 0usize;
    let mut types = Vec::new();
    loop {
        let (element, is_start) = match reader.read_event() {
            Ok(Event::Start(e)) => (e, true),
            Ok(Event::Empty(e)) => (e, false),
            Ok(Event::End(e)) => {
                if e.name().as_ref() == "guest" {
                    depth_in_guest = 0;
                }
                continue;
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => continue,
        };
        match element.name().as_ref() {
            "guest" if is_start => depth_in_guest = 1,
            "domain" if depth_in_guest > 0 => {
                let kind = element
                    .try_get_attribute("type")
                    .ok()
                    .flatten()
                    .map(|a| a.value.into_owned());
                if let Some(kind) = kind
                    && !types.contains(&kind)
                {
                    types.push(kind);
                }
            }
            _ => {}
        }
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
    }

    #[test]
    fn domain_types_from_capabilities() {
        let caps = r#"<capabilities><host><cpu><domain type='bogus'/></cpu></host>
            <guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/>
            <domain type='kvm'><emulator>/usr/bin/x</emulator></domain></arch></guest>
            <guest><arch name='i686'><domain type='qemu'/></arch></guest></capabilities>"#;
        assert_eq!(domain_types(caps), vec!["qemu", "kvm"]);
        assert!(domain_types("<not xml").is_empty());
    }
}
