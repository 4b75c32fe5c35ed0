//! The guest domains as the lifecycle (`guest::Guests`) uses them: the operations it needs
//! from the hypervisor, the domain states and what listing the domains gives. `Libvirt`
//! implements it (`guests.rs`); unit tests use an in-memory one (`fake.rs`), so that every
//! failure of a create can be tested without libvirtd. Every call blocks: callers run them
//! on the blocking pool.

use std::time::Duration;

use tokio::sync::broadcast;

use super::events::{DomainEvent, Progress};
use super::guest_agent::{AgentError, GuestReport};
use super::guests::DomainError;
use super::xml::{Intent, IntentError};

/// A domain's state, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    NoState,
    Running,
    Blocked,
    Paused,
    ShuttingDown,
    ShutOff,
    Crashed,
    Suspended,
    Unknown,
}

impl DomainState {
    /// The name the API shows and the metrics carry as a label.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::NoState => "no state",
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::ShuttingDown => "shutting down",
            DomainState::ShutOff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::Suspended => "suspended",
            DomainState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for DomainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A domain as the lifecycle sees it.
#[derive(Debug, Clone)]
pub struct GuestDomain {
    pub uuid: String,
    pub name: String,
    pub state: DomainState,
    pub intent: Result<Intent, IntentError>,
}

/// Where a running domain moves (`Hypervisor::migrate`): what the target agent answered to
/// its Prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationTarget {
    /// The target node's libvirtd as this node's libvirtd reaches it: the migration is peer
    /// to peer, so a target libvirtd that dies fails it at once (a managed direct migration
    /// would stream on to an orphaned QEMU).
    pub libvirt_uri: String,
    /// Where the target's QEMU listens for the memory and disk streams (`tcp://ADDR`): always
    /// given, as nodes may share a host name that resolves elsewhere.
    pub migrate_uri: String,
    /// The domain as it is to run on the target, built from the target's claim.
    pub dest_xml: String,
    /// The writable disks (their targets: `vda`, ...) copied onto the overlays the target
    /// made; the read-only seed is not copied (the target made its own).
    pub disks: Vec<String>,
}

/// The hypervisor's side of the guest lifecycle.
pub trait Hypervisor: Send + Sync {
    /// Defines (persistently) and starts the domain of `xml`.
    fn define_and_start(&self, xml: &str) -> Result<(), DomainError>;

    /// Starts a defined domain; one that runs already is fine.
    fn start(&self, uuid: &str) -> Result<(), DomainError>;

    /// ACPI power button.
    fn shutdown(&self, uuid: &str) -> Result<(), DomainError>;

    /// Pulls the plug; a domain that is not running is fine, also one that stops on its
    /// own between the check and the destroy.
    fn destroy(&self, uuid: &str) -> Result<(), DomainError>;

    /// A reset with `hard`, else a reboot request to the guest.
    fn reboot(&self, uuid: &str, hard: bool) -> Result<(), DomainError>;

    /// Pauses a running domain's vCPUs; QEMU finishes and flushes its disk writes first.
    fn suspend(&self, uuid: &str) -> Result<(), DomainError>;

    /// Lets a paused domain run again.
    fn resume(&self, uuid: &str) -> Result<(), DomainError>;

    /// Destroys and undefines; a domain that does not exist is fine (`Ok(false)`).
    fn remove(&self, uuid: &str) -> Result<bool, DomainError>;

    /// Re-pins vCPUs (and the emulator threads, when given) of a domain, live when it runs
    /// and in its definition for the next start.
    fn repin(
        &self,
        uuid: &str,
        vcpus: &[Vec<u32>],
        emulator: Option<&[u32]>,
    ) -> Result<(), DomainError>;

    fn state(&self, uuid: &str) -> Result<DomainState, DomainError>;

    /// Defines (persistently) the domain of `xml` without starting it; an existing domain of
    /// its UUID gets the new definition.
    fn define(&self, xml: &str) -> Result<(), DomainError>;

    /// The persistent definition of a domain, as libvirt holds it.
    fn inactive_xml(&self, uuid: &str) -> Result<String, DomainError>;

    /// Writes `intent` into the domain's metadata, in its definition and (when it runs) in the
    /// running domain.
    fn set_intent(&self, uuid: &str, intent: &Intent) -> Result<(), DomainError>;

    /// The running domain's XML (for one that does not run: its definition).
    fn live_xml(&self, uuid: &str) -> Result<String, DomainError>;

    /// Adds the device of `xml` in one libvirt call: to the running domain and its
    /// definition when it runs, to the definition alone when not. libvirt finishes a call it
    /// has begun whether or not the caller lives, so a killed agent leaves it done or not.
    fn attach_device(&self, uuid: &str, xml: &str) -> Result<(), DomainError>;

    /// Removes the device of `xml` likewise. From a running domain the removal completes
    /// when the guest releases the device (ACPI eject); the call may return before that.
    fn detach_device(&self, uuid: &str, xml: &str) -> Result<(), DomainError>;

    /// Asks the running domain again to release the device of `xml`, already gone from its
    /// definition (a guest that ignored or missed the first eject request): the running
    /// domain alone, as the definition no longer has it.
    fn detach_live(&self, uuid: &str, xml: &str) -> Result<(), DomainError>;

    /// The running domain's XML as a migration carries it (libvirt's `MIGRATABLE` form), on
    /// which the target builds the domain it runs.
    fn migratable_xml(&self, uuid: &str) -> Result<String, DomainError>;

    /// Moves running domain `uuid` live to `target` (peer to peer, its writable disks copied
    /// onto the target's overlays, defined there and undefined here once it runs there).
    /// Blocks until the migration ends; when it fails the domain runs on here untouched.
    fn migrate(&self, uuid: &str, target: &MigrationTarget) -> Result<(), DomainError>;

    /// How far the migration of domain `uuid` has copied; `None` when no migration runs.
    fn migration_progress(&self, uuid: &str) -> Result<Option<Progress>, DomainError>;

    /// How long the guest that migrated here as domain `uuid` was paused for the switch
    /// (libvirt's completed job, on the target); `None` when libvirt does not say.
    fn migration_downtime(&self, uuid: &str) -> Result<Option<Duration>, DomainError>;

    /// Every persistent domain carrying the agent's metadata, and what it says, by UUID.
    fn guests(&self) -> Result<Vec<GuestDomain>, DomainError>;

    /// A receiver of every domain event from now on.
    fn subscribe(&self) -> broadcast::Receiver<DomainEvent>;

    /// Sends an event of the agent's own (a migration's phase) to every receiver, among
    /// libvirt's.
    fn publish(&self, event: DomainEvent);

    /// Opens the serial console of a running domain (one session at a time; `force` closes
    /// another first).
    fn console(
        &self,
        uuid: &str,
        force: bool,
    ) -> Result<Box<dyn super::console::ConsoleStream>, DomainError>;

    /// What the guest agent of running domain `uuid` reports (one libvirt call, bounded by
    /// `guest_agent::AGENT_TIMEOUT_SECS`).
    fn guest_info(&self, uuid: &str) -> Result<GuestReport, AgentError>;

    /// Freezes the guest's file systems through its agent; how many it froze.
    fn fs_freeze(&self, uuid: &str) -> Result<u32, AgentError>;

    /// Thaws what `fs_freeze` froze.
    fn fs_thaw(&self, uuid: &str) -> Result<(), AgentError>;
}
