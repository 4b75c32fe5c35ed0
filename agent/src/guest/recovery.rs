//! Crash-only recovery: placement rebuilt from the claims the guests' domains store, and
//! the files of creates the agent neither finished nor undid removed.

use std::time::Duration;

use super::Guests;
use super::error::GuestError;
use crate::domain::DomainState;
use crate::placement::Allocator;
use crate::placement::Claim;
use crate::placement::allocator::is_uuid;

/// Rebuilds the allocator from stored claims, leaving out (and logging) the ones that
/// conflict with those accepted before them.
pub fn rebuild(template: &Allocator, claims: Vec<Claim>) -> Allocator {
    let mut rebuilt = rebuild_claims(template, claims);
    rebuilt.set_draining(template.is_draining());
    rebuilt
}

fn rebuild_claims(template: &Allocator, claims: Vec<Claim>) -> Allocator {
    let topo = template.topology().clone();
    let policy = template.policy().clone();
    if let Ok(a) = Allocator::rebuild(topo.clone(), policy.clone(), claims.clone()) {
        return a;
    }
    let mut accepted: Vec<Claim> = Vec::new();
    for claim in claims {
        let mut trial = accepted.clone();
        trial.push(claim.clone());
        match Allocator::rebuild(topo.clone(), policy.clone(), trial) {
            Ok(_) => accepted.push(claim),
            Err(e) => tracing::error!(
                vm = %claim.vm_uuid, conflicts = %e,
                "stored claim conflicts with other guests: not counted; the guest is left alone"
            ),
        }
    }
    Allocator::rebuild(topo, policy, accepted).unwrap_or_else(|_| template.clone())
}

impl Guests {
    /// Rebuilds placement from the guests' stored claims, once: at start-up, or as soon as
    /// libvirt answers if it could not be asked then. Until then placement answers
    /// UNAVAILABLE and no create or delete runs, so nothing is claimed meanwhile.
    pub async fn rebuild_placement(&self) -> Result<(), GuestError> {
        let held = self.lock.lock().await;
        self.ensure_rebuilt(&held).await
    }

    pub(super) async fn ensure_rebuilt(
        &self,
        _held: &tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<(), GuestError> {
        if self.placement.is_rebuilt() {
            return Ok(());
        }
        // Before the claims are read: a resize rolled back changes its guest's intent.
        self.recover_resizes().await;
        // Intent entries of NICs an attach or detach cut short left in no XML.
        self.settle_nics().await;
        let stored = self.stored_claims().await?;
        // Before any call can find them paused: guests a killed agent's snapshot left so.
        self.resume_paused_by_snapshots().await;
        let mut alloc = self.placement.lock();
        // Running guests' claims first: `rebuild` accepts in order, so a claim that got in
        // before the rebuild (none should: placement refuses until then) never displaces one.
        let meanwhile: Vec<Claim> = alloc
            .claims()
            .filter(|c| !stored.iter().any(|s| s.vm_uuid == c.vm_uuid))
            .cloned()
            .collect();
        let guests = stored.len();
        let mut claims = stored;
        claims.extend(meanwhile);
        *alloc = rebuild(&alloc, claims);
        self.placement.mark_rebuilt();
        tracing::info!(
            guests,
            claims = alloc.claims().count(),
            "placement rebuilt from the guests' stored claims"
        );
        Ok(())
    }

    /// Placement as the guests' stored claims say, at start-up. Conflicting claims are left
    /// out (logged with the guests involved); unreadable metadata is reported, never touched.
    pub async fn stored_claims(&self) -> Result<Vec<Claim>, GuestError> {
        let mut claims = Vec::new();
        for d in self.domains().await? {
            match d.intent {
                Ok(intent) => {
                    claims.push(intent.claim);
                    // A pending resize's old claim, under its holder (docs/guests.md).
                    claims.extend(intent.resize.map(|r| r.old_claim));
                }
                Err(e) => tracing::error!(
                    vm = %d.uuid, name = %d.name, error = %e,
                    "domain with unreadable hvagent metadata: left alone, not counted"
                ),
            }
        }
        Ok(claims)
    }

    /// Removes guest directories that have no domain and are older than `grace`, the boot
    /// volumes made for guests that have none (left by a create the agent did not live to
    /// finish or undo), and the volumes of arrivals a restart cut short (their guest never
    /// arrived; one that did keeps them).
    pub async fn remove_orphans(&self, grace: Duration) -> Result<Vec<String>, GuestError> {
        let domains = self.domains().await?;
        let running: Vec<String> = domains
            .iter()
            .filter(|d| d.state == DomainState::Running)
            .map(|d| d.uuid.clone())
            .collect();
        let known: Vec<String> = domains.into_iter().map(|d| d.uuid).collect();
        let vms = self.storage_root.join("vms");
        let volumes = crate::storage::VolumeStore::new(&self.storage_root);
        self.blocking(move || {
            let mut removed = Vec::new();
            let now = super::now_unix();
            for v in volumes.list().0 {
                // A volume whose guest arrived (runs here) before a restart cut its Finish
                // short is that guest's for good; one whose guest is still arriving (libvirt
                // copies on without the agent) is left as it is.
                if !v.arriving_for.is_empty() && known.contains(&v.arriving_for) {
                    if running.contains(&v.arriving_for)
                        && let Err(err) = volumes.settle(&v.name)
                    {
                        tracing::warn!(volume = %v.name, error = %err, "cannot settle an arrived guest's volume");
                    }
                    continue;
                }
                // An arriving volume's age counts from its arrival (its record written then), not
                // from its creation on the source: a Prepare just taken is no orphan.
                let (guest, old) = if v.made_for.is_empty() {
                    let age = volumes.record_age(&v.name);
                    (&v.arriving_for, age.is_some_and(|a| a >= grace))
                } else {
                    let old = now.saturating_sub(v.created_unix) >= grace.as_secs();
                    (&v.made_for, old)
                };
                if !guest.is_empty() && !known.contains(guest) && old {
                    match volumes.delete(&v.name) {
                        Ok(_) => removed.push(format!("volume {}", v.name)),
                        Err(err) => {
                            tracing::warn!(volume = %v.name, error = %err, "cannot remove orphan boot volume")
                        }
                    }
                }
            }
            let Ok(entries) = std::fs::read_dir(&vms) else {
                return Ok(removed);
            };
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= grace);
                if is_uuid(&name) && !known.contains(&name) && old {
                    if let Err(err) = std::fs::remove_dir_all(e.path()) {
                        tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove orphan");
                    } else {
                        removed.push(name);
                    }
                }
            }
            Ok(removed)
        })
        .await
    }
}
