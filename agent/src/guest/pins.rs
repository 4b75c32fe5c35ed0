//! Where running guests' threads are pinned, kept as placement says: floating (`V`/`L`)
//! guests follow the shared pool when a dedicated guest takes CPUs from it or gives them
//! back, and `restore_pins` repairs pins changed behind the agent's back.

use super::Guests;
use super::error::GuestError;
use crate::placement::claim::Emulator;
use crate::placement::{Allocator, Claim};

/// A guest, the CPUs of each of its vCPUs, and its emulator CPUs when they follow the pool.
type Pins = (String, Vec<Vec<u32>>, Option<Vec<u32>>);

/// Where a floating guest's threads belong with the shared pool as `alloc` has it now.
fn pool_pins(alloc: &Allocator, uuid: String, claim: &Claim) -> Pins {
    let emulator = (claim.emulator == Emulator::Pool).then(|| alloc.emulator_cpus(claim));
    (uuid, alloc.vcpu_cpus(claim), emulator)
}

impl Guests {
    /// Pins every floating (`V`/`L`) guest to the shared pool as it is now, live and in its
    /// definition. Failures are logged: the guest keeps running on its old pins.
    pub(super) async fn repin_floating(&self) {
        let _one_at_a_time = self.repin.lock().await;
        let Ok(domains) = self.domains().await else {
            return;
        };
        let pins: Vec<Pins> = {
            let alloc = self.placement.lock();
            domains
                .into_iter()
                .filter_map(|d| d.intent.ok().map(|i| (d.uuid, i.claim)))
                .filter(|(_, c)| c.dedicated_cpus().next().is_none())
                .map(|(uuid, c)| pool_pins(&alloc, uuid, &c))
                .collect()
        };
        self.apply_pins(pins).await;
    }

    /// A floating guest just started with the pool as it was at its claim: if a dedicated
    /// create or delete changed the pool meanwhile, pins it to the pool as it is now. (A change
    /// after this check re-pins it from that call, which then sees its domain.)
    pub(super) async fn follow_pool(&self, uuid: &str, claim: &Claim, pinned: &[Vec<u32>]) {
        let _one_at_a_time = self.repin.lock().await;
        let pins = pool_pins(&self.placement.lock(), uuid.to_string(), claim);
        if pins.1 != pinned {
            self.apply_pins(vec![pins]).await;
        }
    }

    /// Failures are logged: the guest keeps running on its old pins.
    async fn apply_pins(&self, pins: Vec<Pins>) {
        let hypervisor = self.hypervisor.clone();
        let _ = self
            .blocking(move || {
                for (uuid, vcpus, emulator) in pins {
                    match hypervisor.repin(&uuid, &vcpus, emulator.as_deref()) {
                        Ok(()) => tracing::info!(vm = %uuid, "re-pinned to the shared pool"),
                        Err(e) => tracing::warn!(vm = %uuid, error = %e, "cannot re-pin to the shared pool"),
                    }
                }
                Ok(())
            })
            .await;
    }

    /// Applies placement's pins again to the guests `uuids` (vCPUs and emulator, live and in
    /// their definitions): the repair for pins changed behind the agent's back.
    pub async fn restore_pins(&self, uuids: Vec<String>) -> Result<(), GuestError> {
        let _one_at_a_time = self.repin.lock().await;
        let pins: Vec<Pins> = {
            let alloc = self.placement.lock();
            uuids
                .into_iter()
                .filter_map(|uuid| {
                    let claim = alloc.get(&uuid)?;
                    Some((
                        uuid.clone(),
                        alloc.vcpu_cpus(claim),
                        Some(alloc.emulator_cpus(claim)),
                    ))
                })
                .collect()
        };
        let hypervisor = self.hypervisor.clone();
        self.blocking(move || {
            for (uuid, vcpus, emulator) in pins {
                hypervisor.repin(&uuid, &vcpus, emulator.as_deref())?;
            }
            Ok(())
        })
        .await
    }
}
