//! One libvirt connection, opened lazily and reopened when found dead. Every method blocks:
//! callers run them on tokio's blocking pool.

use std::sync::{Mutex, Once};

use virt::connect::Connect;

use super::events::{self, DomainEvent};
use crate::host::LibvirtFacts;

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

/// libvirt cannot be used now, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

impl From<virt::error::Error> for Unreachable {
    fn from(e: virt::error::Error) -> Self {
        Unreachable(e.message().to_string())
    }
}

/// Keepalive probes every 5 s; 3 unanswered ones close the connection (20 s in all).
pub const KEEPALIVE_INTERVAL_S: i32 = 5;
pub const KEEPALIVE_COUNT: u32 = 3;

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

    /// Opens a connection with keepalive and the event callbacks on it.
    fn open(&self) -> Result<Connect, virt::error::Error> {
        let conn = Connect::open(Some(&self.uri))?;
        // The timeout on every call: libvirtd answers keepalives even while a call waits on a
        // QEMU monitor (libvirt bounds those itself, 30 s for a domain job), so a connection
        // without an answer for KEEPALIVE_INTERVAL × (KEEPALIVE_COUNT + 1) seconds is a
        // daemon that hangs; libvirt then closes it and every call in flight fails.
        if let Err(e) = conn.set_keep_alive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT) {
            tracing::warn!(error = %e, "libvirt keepalive unavailable on this connection");
        }
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
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
            // One opener at a time, and nobody waits for it: a libvirtd that accepts the
            // connection but does not answer (stopped, hung) holds only the opener, which
            // has no keepalive yet.
            if state.opening {
                return Err(Unreachable(format!(
                    "{}: not answering; a reconnect is in progress",
                    self.uri
                )));
            }
            state.opening = true;
        }
        let opened = self.open();
        let mut state = self.lock();
        state.opening = false;
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
