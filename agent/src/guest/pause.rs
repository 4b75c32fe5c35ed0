//! Pause and resume at the owner's request: the guest's vCPUs stop and its memory, devices
//! and claim stay (libvirt suspend; QEMU finishes its disk writes first). A pause is not a
//! stop: the guest's wanted state stays running, so a paused guest is started again after a
//! host reboot (its memory is gone then), and its claim is kept.
//!
//! Both wait for a create, delete or snapshot of the guest in flight: a snapshot pauses the
//! guest itself and resumes only a guest it paused, so an owner's pause during its copy would
//! otherwise be undone.

use super::error::GuestError;
use super::request::checked_uuid;
use super::{Guest, Guests};
use crate::domain::DomainState;

/// What a pause or resume does to a guest in `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Ask libvirt.
    Call,
    /// Already where the call would take it: answered as it is.
    Nothing,
}

fn pause_step(uuid: &str, state: DomainState) -> Result<Step, GuestError> {
    match state {
        DomainState::Running | DomainState::Blocked => Ok(Step::Call),
        DomainState::Paused => Ok(Step::Nothing),
        other => Err(GuestError::Precondition(format!(
            "uuid: guest {uuid} is {other}; only a running guest can be paused"
        ))),
    }
}

fn resume_step(uuid: &str, state: DomainState) -> Result<Step, GuestError> {
    match state {
        DomainState::Paused => Ok(Step::Call),
        DomainState::Running | DomainState::Blocked => Ok(Step::Nothing),
        other => Err(GuestError::Precondition(format!(
            "uuid: guest {uuid} is {other}; only a paused guest can be resumed (start a stopped one)"
        ))),
    }
}

impl Guests {
    /// Stops the guest's vCPUs, keeping its memory (see the module's comment).
    pub async fn pause(&self, uuid: &str) -> Result<Guest, GuestError> {
        self.pause_or_resume(uuid, pause_step, "paused", |h, u| h.suspend(u))
            .await
    }

    /// Lets a paused guest run again.
    pub async fn resume_paused(&self, uuid: &str) -> Result<Guest, GuestError> {
        self.pause_or_resume(uuid, resume_step, "resumed", |h, u| h.resume(u))
            .await
    }

    async fn pause_or_resume(
        &self,
        uuid: &str,
        step: fn(&str, DomainState) -> Result<Step, GuestError>,
        done: &'static str,
        call: fn(
            &dyn crate::domain::Hypervisor,
            &str,
        ) -> Result<(), crate::domain::guests::DomainError>,
    ) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(uuid)?;
        let _busy = self.exclusive(&uuid).await?;
        let guest = self.get(&uuid).await?;
        if step(&uuid, guest.state)? == Step::Nothing {
            return Ok(guest);
        }
        let hypervisor = self.hypervisor.clone();
        let u = uuid.clone();
        self.blocking(move || call(hypervisor.as_ref(), &u).map_err(GuestError::from))
            .await?;
        tracing::info!(vm = %uuid, "{done}");
        self.get(&uuid).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "00000000-0000-4000-8000-000000000001";

    /// Every state: pause acts on running guests only, resume on paused ones only; each is a
    /// no-op where the guest already is, and a clear refusal elsewhere.
    #[test]
    fn steps_by_state() {
        use DomainState::*;
        for state in [
            NoState,
            Running,
            Blocked,
            Paused,
            ShuttingDown,
            ShutOff,
            Crashed,
            Suspended,
            Unknown,
        ] {
            let pause = pause_step(UUID, state);
            let resume = resume_step(UUID, state);
            match state {
                Running | Blocked => {
                    assert_eq!(pause.unwrap(), Step::Call);
                    assert_eq!(resume.unwrap(), Step::Nothing);
                }
                Paused => {
                    assert_eq!(pause.unwrap(), Step::Nothing);
                    assert_eq!(resume.unwrap(), Step::Call);
                }
                _ => {
                    let (Err(GuestError::Precondition(p)), Err(GuestError::Precondition(r))) =
                        (pause, resume)
                    else {
                        panic!("{state}: both refused");
                    };
                    assert!(
                        p.contains(state.as_str()) && p.contains("only a running"),
                        "{p}"
                    );
                    assert!(
                        r.contains(state.as_str()) && r.contains("only a paused"),
                        "{r}"
                    );
                }
            }
        }
    }
}
