//! An in-memory `Hypervisor` for unit tests: domains in a map with the XML they were defined
//! with (listed back through the same `read_intent` as libvirt's), every call recorded, any
//! operation made to fail, and one call of an operation held until the test releases it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};

use super::events::{self, DomainEvent, EventKind, Progress};
use super::guest_agent::{AgentError, GuestReport};
use super::guests::DomainError;
use super::hypervisor::{DomainState, GuestDomain, Hypervisor, MigrationTarget};
use super::xml::{Intent, IntentError, metadata_xml, read_intent};

/// The operations of [`Hypervisor`], as the fake records them and fails them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    List,
    /// The define half of `define_and_start`.
    Define,
    /// `start`, and the start half of `define_and_start`.
    Start,
    Shutdown,
    Destroy,
    Reboot,
    Suspend,
    Resume,
    Remove,
    Repin,
    State,
    /// `attach_device`.
    Attach,
    /// `detach_device`.
    Detach,
    /// `set_intent` (resize, confirm).
    SetIntent,
    InactiveXml,
    /// `guest_info`.
    GuestInfo,
    /// `fs_freeze`.
    Freeze,
    /// `fs_thaw`.
    Thaw,
    /// `migrate`.
    Migrate,
}

/// A domain the fake holds.
#[derive(Debug, Clone)]
pub struct FakeDomain {
    pub uuid: String,
    pub name: String,
    pub xml: String,
    pub state: DomainState,
    /// Devices detached from the definition that the running guest has not released (it
    /// ignores the eject): in its live XML beyond `xml` until it releases them or stops.
    pub held: Vec<String>,
}

/// A call made to wait: it reports that it arrived, then waits for the release.
struct Hold {
    op: Op,
    arrived: oneshot::Sender<()>,
    release: mpsc::Receiver<()>,
}

#[derive(Default)]
struct Inner {
    domains: BTreeMap<String, FakeDomain>,
    /// How many more calls of each operation fail (`u32::MAX`: all).
    failing: BTreeMap<Op, u32>,
    calls: Vec<(Op, String)>,
    hold: Option<Hold>,
    /// Guests ignore the ACPI power button (shutdown changes nothing).
    deaf: bool,
    /// Guests never release a detached disk (detach changes nothing).
    clinging: bool,
    /// What every running guest's agent answers; `None`: no agent answers.
    agent: Option<GuestReport>,
    /// How long each start takes, outside the lock (see `slow_starts`).
    start_delay: Option<Duration>,
}

pub struct FakeHypervisor {
    inner: Mutex<Inner>,
    events: broadcast::Sender<DomainEvent>,
    /// Starts in progress now, and the most there were at once (with `slow_starts`).
    starting: AtomicUsize,
    most_starting: AtomicUsize,
}

impl Default for FakeHypervisor {
    fn default() -> Self {
        FakeHypervisor {
            inner: Mutex::default(),
            events: broadcast::channel(events::CAPACITY).0,
            starting: AtomicUsize::new(0),
            most_starting: AtomicUsize::new(0),
        }
    }
}

/// The text of the first `<tag>` element of `xml`.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + len])
}

fn not_found(uuid: &str) -> DomainError {
    DomainError::NotFound(uuid.to_string())
}

/// What finds the device of `xml` in a domain: its element and the attribute texts that
/// mark it (an interface's MAC, a disk's target in either quoting).
fn device_key(xml: &str) -> Result<(&'static str, Vec<String>), DomainError> {
    if xml.starts_with("<interface") {
        let mac = xml
            .split("address=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or_else(|| DomainError::Libvirt(format!("no MAC in {xml}")))?;
        return Ok(("interface", vec![format!("address=\"{mac}\"")]));
    }
    let target = super::volume_disk::disks(xml)
        .ok()
        .and_then(|ds| ds.into_iter().next())
        .map(|d| d.target)
        .ok_or_else(|| DomainError::Libvirt(format!("not a disk: {xml}")))?;
    Ok((
        "disk",
        vec![format!("dev=\"{target}\""), format!("dev='{target}'")],
    ))
}

/// Removes from `xml` the first `<tag>` element holding one of `needles`, and returns it.
fn take(xml: &mut String, tag: &str, needles: &[String]) -> Option<String> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut from = 0;
    while let Some(start) = xml[from..].find(&open).map(|i| i + from) {
        let end = xml[start..]
            .find(&close)
            .map_or(xml.len(), |i| start + i + close.len());
        if needles.iter().any(|n| xml[start..end].contains(n.as_str())) {
            let device = xml[start..end].to_string();
            xml.replace_range(start..end, "");
            return Some(device);
        }
        from = end;
    }
    None
}

impl FakeHypervisor {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        hvagent_core::sync::lock(&self.inner)
    }

    /// Makes every later call of `op` fail, as libvirt refusing it would.
    pub fn fail(&self, op: Op) {
        self.lock().failing.insert(op, u32::MAX);
    }

    /// Gives every running guest an agent answering `report`, or (`None`) none that answers.
    pub fn set_agent(&self, report: Option<GuestReport>) {
        self.lock().agent = report;
    }

    /// The agent of running guest `uuid` answering a call of `op`.
    fn agent_call(&self, op: Op, uuid: &str) -> Result<GuestReport, AgentError> {
        let inner = self.call(op, uuid)?;
        let domain = inner.domains.get(uuid).ok_or_else(|| not_found(uuid))?;
        if domain.state != DomainState::Running {
            return Err(AgentError::NotRunning(format!(
                "domain is {}",
                domain.state
            )));
        }
        inner
            .agent
            .clone()
            .ok_or_else(|| AgentError::NotAnswering("QEMU guest agent is not connected".into()))
    }

    /// Makes the next call of `op` fail, and the ones after it succeed.
    pub fn fail_once(&self, op: Op) {
        self.lock().failing.insert(op, 1);
    }

    /// Makes every later start take `delay` (its thread sleeps, as one waiting for QEMU
    /// does), so that starts overlapping in time can be counted: [`Self::most_starts_at_once`].
    pub fn slow_starts(&self, delay: Duration) {
        self.lock().start_delay = Some(delay);
    }

    /// The most slowed starts that were in progress at once.
    pub fn most_starts_at_once(&self) -> usize {
        self.most_starting.load(Ordering::SeqCst)
    }

    /// Makes `op` succeed again.
    pub fn heal(&self, op: Op) {
        self.lock().failing.remove(&op);
    }

    /// Holds the next call of `op`: the first receiver completes when it arrives, and it goes
    /// on (or fails, as injected) when the sender sends or is dropped.
    pub fn hold(&self, op: Op) -> (oneshot::Receiver<()>, mpsc::Sender<()>) {
        let (arrived, arrival) = oneshot::channel();
        let (release, released) = mpsc::channel();
        self.lock().hold = Some(Hold {
            op,
            arrived,
            release: released,
        });
        (arrival, release)
    }

    /// The calls of `op` so far, in order: the UUID each was about (empty for `List`).
    pub fn calls(&self, op: Op) -> Vec<String> {
        let inner = self.lock();
        let of_op = inner.calls.iter().filter(|(o, _)| *o == op);
        of_op.map(|(_, uuid)| uuid.clone()).collect()
    }

    /// The operations called so far, in order (with the UUID each was about).
    pub fn ops(&self) -> Vec<(Op, String)> {
        self.lock().calls.clone()
    }

    /// A domain someone else defined (no hvagent metadata), running.
    pub fn define_foreign(&self, uuid: &str, name: &str) {
        self.define_outside(uuid, name, "", DomainState::Running);
    }

    /// A domain carrying an hvagent intent element whose content does not parse (a damaged
    /// or future-format guest), shut off.
    pub fn define_unreadable(&self, uuid: &str, name: &str) {
        let metadata = format!(
            "<metadata><hv:intent xmlns:hv='{}'>{{not json</hv:intent></metadata>",
            super::xml::NAMESPACE
        );
        self.define_outside(uuid, name, &metadata, DomainState::ShutOff);
    }

    /// A domain defined behind the agent's back, with `metadata` in its XML.
    fn define_outside(&self, uuid: &str, name: &str, metadata: &str, state: DomainState) {
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>{metadata}</domain>"
        );
        self.lock().domains.insert(
            uuid.to_string(),
            FakeDomain {
                uuid: uuid.to_string(),
                name: name.to_string(),
                xml,
                state,
                held: Vec::new(),
            },
        );
    }

    /// From now on guests keep the disks detached from them, as one that ignores the ACPI
    /// eject request does.
    pub fn ignore_eject(&self) {
        self.lock().clinging = true;
    }

    /// From now on guests ignore the ACPI power button, as one without acpid does.
    pub fn ignore_shutdown(&self) {
        self.lock().deaf = true;
    }

    /// The guest `uuid` powers itself off (as after a slow ACPI shutdown): its state and the
    /// `stopped` event libvirt would send.
    pub fn power_off(&self, uuid: &str) {
        if let Some(d) = self.lock().domains.get_mut(uuid) {
            d.state = DomainState::ShutOff;
        }
        self.send(uuid, EventKind::Stopped, "shutdown");
    }

    fn send(&self, uuid: &str, kind: EventKind, detail: &'static str) {
        let _ = self.events.send(DomainEvent {
            uuid: uuid.to_string(),
            name: String::new(),
            kind,
            detail,
            unix_ms: 0,
            progress: None,
        });
    }

    /// From now on guests release the devices detached from them, as one does once its
    /// ACPI handler listens (the ones it held stay held until asked again).
    pub fn heed_eject(&self) {
        self.lock().clinging = false;
    }

    /// The domains now, by UUID.
    pub fn domains(&self) -> Vec<FakeDomain> {
        self.lock().domains.values().cloned().collect()
    }

    /// Records a call of `op` on `uuid`, waits if it is held, and fails it if told to; then
    /// gives the lock back for the operation itself.
    fn call(&self, op: Op, uuid: &str) -> Result<MutexGuard<'_, Inner>, DomainError> {
        let mut inner = self.lock();
        inner.calls.push((op, uuid.to_string()));
        if inner.hold.as_ref().is_some_and(|h| h.op == op)
            && let Some(hold) = inner.hold.take()
        {
            drop(inner);
            let _ = hold.arrived.send(());
            let _ = hold.release.recv();
            inner = self.lock();
        }
        if let Some(left) = inner.failing.get_mut(&op) {
            if *left != u32::MAX {
                *left -= 1;
            }
            if *left == 0 {
                inner.failing.remove(&op);
            }
            return Err(DomainError::Libvirt(format!("injected failure of {op:?}")));
        }
        Ok(inner)
    }

    /// Moves `uuid` to `state` and sends the event libvirt would.
    fn set_state(&self, op: Op, uuid: &str, state: DomainState) -> Result<(), DomainError> {
        let mut inner = self.call(op, uuid)?;
        if op == Op::Shutdown && inner.deaf {
            return Ok(());
        }
        let domain = inner.domains.get_mut(uuid).ok_or_else(|| not_found(uuid))?;
        domain.state = state;
        if state == DomainState::ShutOff {
            // A stopped guest holds nothing beyond its definition.
            domain.held.clear();
        }
        drop(inner);
        let (kind, detail) = match op {
            Op::Start => (EventKind::Started, "booted"),
            Op::Suspend => (EventKind::Suspended, "paused"),
            Op::Resume => (EventKind::Resumed, "unpaused"),
            Op::Destroy => (EventKind::Stopped, "destroyed"),
            _ => (EventKind::Stopped, "shutdown"),
        };
        self.send(uuid, kind, detail);
        Ok(())
    }
}

impl Hypervisor for FakeHypervisor {
    fn define_and_start(&self, xml: &str) -> Result<(), DomainError> {
        self.define(xml)?;
        self.start(element(xml, "uuid").unwrap_or_default())
    }

    fn define(&self, xml: &str) -> Result<(), DomainError> {
        let uuid = element(xml, "uuid").unwrap_or_default().to_string();
        let name = element(xml, "name").unwrap_or_default().to_string();
        {
            let mut inner = self.call(Op::Define, &uuid)?;
            // As libvirt: a UUID keeps its name, a name its UUID.
            if let Some(d) = inner
                .domains
                .values()
                .find(|d| (d.uuid == uuid) != (d.name == name))
            {
                return Err(DomainError::Libvirt(format!(
                    "domain '{}' already exists with uuid {}",
                    d.name, d.uuid
                )));
            }
            let state = inner
                .domains
                .get(&uuid)
                .map_or(DomainState::ShutOff, |d| d.state);
            inner.domains.insert(
                uuid.clone(),
                FakeDomain {
                    uuid: uuid.clone(),
                    name,
                    xml: xml.to_string(),
                    state,
                    held: Vec::new(),
                },
            );
        }
        Ok(())
    }

    fn inactive_xml(&self, uuid: &str) -> Result<String, DomainError> {
        let inner = self.call(Op::InactiveXml, uuid)?;
        inner
            .domains
            .get(uuid)
            .map(|d| d.xml.clone())
            .ok_or_else(|| not_found(uuid))
    }

    /// The `<metadata>` of the stored XML replaced by one with `intent`.
    fn set_intent(&self, uuid: &str, intent: &Intent) -> Result<(), DomainError> {
        let metadata = metadata_xml(intent).map_err(|e| DomainError::Libvirt(e.to_string()))?;
        let mut inner = self.call(Op::SetIntent, uuid)?;
        let d = inner.domains.get_mut(uuid).ok_or_else(|| not_found(uuid))?;
        let (Some(start), Some(end)) = (d.xml.find("<metadata>"), d.xml.find("</metadata>")) else {
            return Err(DomainError::Libvirt(format!(
                "domain {uuid} has no metadata"
            )));
        };
        d.xml
            .replace_range(start..end + "</metadata>".len(), &metadata);
        Ok(())
    }

    fn start(&self, uuid: &str) -> Result<(), DomainError> {
        let delay = self.lock().start_delay;
        if let Some(delay) = delay {
            let now = self.starting.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_starting.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(delay);
            self.starting.fetch_sub(1, Ordering::SeqCst);
        }
        self.set_state(Op::Start, uuid, DomainState::Running)
    }

    /// The guest obeys at once.
    fn shutdown(&self, uuid: &str) -> Result<(), DomainError> {
        self.set_state(Op::Shutdown, uuid, DomainState::ShutOff)
    }

    fn destroy(&self, uuid: &str) -> Result<(), DomainError> {
        self.set_state(Op::Destroy, uuid, DomainState::ShutOff)
    }

    fn reboot(&self, uuid: &str, _hard: bool) -> Result<(), DomainError> {
        let inner = self.call(Op::Reboot, uuid)?;
        match inner.domains.get(uuid) {
            Some(_) => Ok(()),
            None => Err(not_found(uuid)),
        }
    }

    fn suspend(&self, uuid: &str) -> Result<(), DomainError> {
        self.set_state(Op::Suspend, uuid, DomainState::Paused)
    }

    fn resume(&self, uuid: &str) -> Result<(), DomainError> {
        self.set_state(Op::Resume, uuid, DomainState::Running)
    }

    fn remove(&self, uuid: &str) -> Result<bool, DomainError> {
        Ok(self.call(Op::Remove, uuid)?.domains.remove(uuid).is_some())
    }

    fn repin(&self, uuid: &str, _: &[Vec<u32>], _: Option<&[u32]>) -> Result<(), DomainError> {
        let inner = self.call(Op::Repin, uuid)?;
        match inner.domains.get(uuid) {
            Some(_) => Ok(()),
            None => Err(not_found(uuid)),
        }
    }

    fn state(&self, uuid: &str) -> Result<DomainState, DomainError> {
        let inner = self.call(Op::State, uuid)?;
        inner
            .domains
            .get(uuid)
            .map(|d| d.state)
            .ok_or_else(|| not_found(uuid))
    }

    /// The definition, and the devices the running guest still holds.
    fn live_xml(&self, uuid: &str) -> Result<String, DomainError> {
        let inner = self.call(Op::State, uuid)?;
        let d = inner.domains.get(uuid).ok_or_else(|| not_found(uuid))?;
        let mut xml = d.xml.clone();
        if let Some(at) = xml.rfind("</devices>") {
            xml.insert_str(at, &d.held.concat());
        }
        Ok(xml)
    }

    fn migratable_xml(&self, uuid: &str) -> Result<String, DomainError> {
        self.live_xml(uuid)
    }

    /// The domain leaves: it runs on the target now, and is undefined here.
    fn migrate(&self, uuid: &str, target: &MigrationTarget) -> Result<(), DomainError> {
        let mut inner = self.call(Op::Migrate, uuid)?;
        let d = inner.domains.get(uuid).ok_or_else(|| not_found(uuid))?;
        if d.state != DomainState::Running {
            return Err(DomainError::Libvirt(format!(
                "domain {uuid} is not running, so it cannot move to {}",
                target.libvirt_uri
            )));
        }
        inner.domains.remove(uuid);
        Ok(())
    }

    /// The in-memory migration moves at once: never in progress.
    fn migration_progress(&self, uuid: &str) -> Result<Option<Progress>, DomainError> {
        self.lock()
            .domains
            .get(uuid)
            .ok_or_else(|| not_found(uuid))?;
        Ok(None)
    }

    /// ...and says nothing of a downtime.
    fn migration_downtime(&self, uuid: &str) -> Result<Option<Duration>, DomainError> {
        self.lock()
            .domains
            .get(uuid)
            .ok_or_else(|| not_found(uuid))?;
        Ok(None)
    }

    fn attach_device(&self, uuid: &str, xml: &str) -> Result<(), DomainError> {
        let mut inner = self.call(Op::Attach, uuid)?;
        let d = inner.domains.get_mut(uuid).ok_or_else(|| not_found(uuid))?;
        match d.xml.rfind("</devices>") {
            Some(at) => d.xml.insert_str(at, xml),
            None => {
                let at = d.xml.rfind("</domain>").unwrap_or(d.xml.len());
                d.xml.insert_str(at, &format!("<devices>{xml}</devices>"));
            }
        }
        Ok(())
    }

    /// Removes the `<disk>` with the target of `xml` (the `<interface>` with its MAC), as a
    /// guest that releases it at once.
    /// Gone from the definition at once; from a running guest that clings, only from its
    /// definition (the running guest holds it). A device only in the running guest fails, as
    /// libvirt's live-and-config detach does.
    fn detach_device(&self, uuid: &str, xml: &str) -> Result<(), DomainError> {
        let (tag, needles) = device_key(xml)?;
        let mut inner = self.call(Op::Detach, uuid)?;
        let clinging = inner.clinging;
        let d = inner.domains.get_mut(uuid).ok_or_else(|| not_found(uuid))?;
        let device = take(&mut d.xml, tag, &needles).ok_or_else(|| {
            DomainError::Libvirt(format!("no {tag} {} in domain {uuid}", needles[0]))
        })?;
        if clinging && d.state != DomainState::ShutOff {
            d.held.push(device);
        }
        Ok(())
    }

    /// Asks the running guest again for a device it holds; it lets go unless it clings.
    fn detach_live(&self, uuid: &str, xml: &str) -> Result<(), DomainError> {
        let (tag, needles) = device_key(xml)?;
        let mut inner = self.call(Op::Detach, uuid)?;
        let clinging = inner.clinging;
        let d = inner.domains.get_mut(uuid).ok_or_else(|| not_found(uuid))?;
        let at = d
            .held
            .iter()
            .position(|device| needles.iter().any(|n| device.contains(n.as_str())))
            .ok_or_else(|| {
                DomainError::Libvirt(format!("no {tag} {} in running domain {uuid}", needles[0]))
            })?;
        if !clinging {
            d.held.remove(at);
        }
        Ok(())
    }

    /// As libvirt's listing: only domains with the agent's metadata element.
    fn guests(&self) -> Result<Vec<GuestDomain>, DomainError> {
        let inner = self.call(Op::List, "")?;
        Ok(inner
            .domains
            .values()
            .map(|d| GuestDomain {
                uuid: d.uuid.clone(),
                name: d.name.clone(),
                state: d.state,
                intent: read_intent(&d.xml),
            })
            .filter(|d| !matches!(d.intent, Err(IntentError::Missing)))
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<DomainEvent> {
        self.events.subscribe()
    }

    fn publish(&self, event: DomainEvent) {
        let _ = self.events.send(event);
    }

    /// The in-memory domains have no console: the session logic is tested on its own
    /// (`guest::console`), the libvirt stream end to end.
    fn console(
        &self,
        uuid: &str,
        _force: bool,
    ) -> Result<Box<dyn super::console::ConsoleStream>, DomainError> {
        Err(DomainError::Libvirt(format!(
            "the fake domain {uuid} has no console"
        )))
    }

    fn guest_info(&self, uuid: &str) -> Result<GuestReport, AgentError> {
        self.agent_call(Op::GuestInfo, uuid)
    }

    fn fs_freeze(&self, uuid: &str) -> Result<u32, AgentError> {
        self.agent_call(Op::Freeze, uuid).map(|_| 1)
    }

    fn fs_thaw(&self, uuid: &str) -> Result<(), AgentError> {
        self.agent_call(Op::Thaw, uuid).map(|_| ())
    }
}
