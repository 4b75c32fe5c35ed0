//! The reporter's loop, a task of its own: a round whenever the allocator's generation moves
//! (a claim made, bound, released or expired: checked locally every [`WATCH`]), a full check
//! every `interval_seconds`, and, while Placement is away or refuses, retries with exponential
//! back-off. The allocator's lock is held only to read the claims, never across a call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::host::Inventory as HostInventory;
use crate::placement::PlacementState;
use crate::placement::provider::{Guests, allocation, provider_inventory};

use super::client::{ApiError, Client, Consumer};
use super::settings::Settings;
use super::status::Status;
use super::sync::{
    Drift, Inventory, Resources, Unclaimed, Write, allocation_writes, consumer_body, custom,
    inventories_equal, provider_uuid,
};

/// How often the allocator's generation is looked at (a local read, no call).
pub const WATCH: Duration = Duration::from_millis(250);
/// The first retry after a failed round; doubled per failure up to [`BACKOFF_CAP`] (or the
/// interval, if shorter).
pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// How long an allocation without a claim may be there before it is reported (or the
/// interval, if shorter): a scheduler writes its allocation a moment before it calls
/// `Reserve` here.
pub const UNCLAIMED_GRACE: Duration = Duration::from_secs(30);
/// Writes tried per round when a generation conflict (someone else wrote meanwhile) answers.
const CONFLICT_RETRIES: usize = 4;

/// What Placement should hold, read from the allocator at one moment.
struct Desired {
    generation: u64,
    rebuilt: bool,
    inventories: BTreeMap<String, Inventory>,
    traits: BTreeSet<String>,
    allocations: BTreeMap<String, Resources>,
}

/// What the reporter knows between rounds.
#[derive(Default)]
struct State {
    /// The provider's UUID once created or adopted.
    provider: Option<String>,
    /// Inventories and traits as last made right.
    synced: Option<(BTreeMap<String, Inventory>, BTreeSet<String>)>,
    /// Custom traits and resource classes known to exist.
    ensured: BTreeSet<String>,
    /// Consumers whose allocations the reporter keeps equal to their claims: once the claim
    /// is gone, so is the allocation.
    kept: BTreeSet<String>,
    unclaimed: Unclaimed,
    /// The allocator generation whose claims Placement holds.
    generation: Option<u64>,
}

pub struct Reporter {
    settings: Settings,
    name: String,
    client: Client,
    placement: Arc<PlacementState>,
    host: HostInventory,
    guests: Guests,
    status: Arc<Status>,
}

impl Reporter {
    /// `host`: the node's inventory (what the provider's inventories and traits come from);
    /// `guests`: how guests run here (under TCG their CPU traits are QEMU's, not the host's).
    pub fn new(
        settings: Settings,
        placement: Arc<PlacementState>,
        host: HostInventory,
        guests: Guests,
    ) -> Result<Reporter, ApiError> {
        let name = match &settings.provider_name {
            Some(name) => name.clone(),
            None => match host.hostname.trim() {
                "" => {
                    return Err(ApiError::Setup(
                        "the host name is empty: set [placement_api] provider_name".into(),
                    ));
                }
                h => h.to_string(),
            },
        };
        let status = Arc::new(Status::default());
        let client = Client::new(&settings.url, settings.auth.clone(), status.calls.clone())?;
        Ok(Reporter {
            settings,
            name,
            client,
            placement,
            host,
            guests,
            status,
        })
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Runs until dropped (aborted with the agent's other background tasks).
    pub async fn run(self) {
        let mut state = State::default();
        let mut next_full = Instant::now();
        let cap = BACKOFF_CAP.min(self.settings.interval);
        // While failing: the current wait and when to try again.
        let mut backoff: Option<(Duration, Instant)> = None;
        loop {
            let now = Instant::now();
            let due = match backoff {
                Some((_, at)) => now >= at,
                None => {
                    let (generation, rebuilt) = {
                        let alloc = self.placement.lock();
                        (alloc.generation(), self.placement.is_rebuilt())
                    };
                    now >= next_full || (rebuilt && state.generation != Some(generation))
                }
            };
            if !due {
                tokio::time::sleep(WATCH).await;
                continue;
            }
            let full = backoff.is_some() || now >= next_full || state.provider.is_none();
            match self.round(&mut state, full).await {
                Ok(()) => {
                    if backoff.take().is_some() {
                        tracing::info!(provider = %self.name, "placement_api: in sync with Placement again");
                    }
                    if full {
                        next_full = now + self.settings.interval;
                    }
                }
                Err(e) => {
                    let wait = backoff.map_or(BACKOFF_START, |(w, _)| (w * 2).min(cap));
                    tracing::warn!(provider = %self.name, error = %e, retry_s = wait.as_secs(), "placement_api: round failed");
                    self.status.failed(e.reason(), e.to_string());
                    backoff = Some((wait, Instant::now() + wait));
                }
            }
        }
    }

    /// One round: the provider (full rounds), inventories and traits (full rounds, or when
    /// they changed), the allocations (once the allocator holds the guests' claims).
    async fn round(&self, state: &mut State, full: bool) -> Result<(), ApiError> {
        let desired = self.desired();
        let uuid = match &state.provider {
            Some(uuid) if !full => uuid.clone(),
            _ => self.provider(state).await?,
        };
        let wanted = (desired.inventories.clone(), desired.traits.clone());
        if full || state.synced.as_ref() != Some(&wanted) {
            self.inventories(state, &uuid, &desired.inventories).await?;
            self.traits(state, &uuid, &desired.traits).await?;
            state.synced = Some(wanted);
        }
        if desired.rebuilt {
            self.allocations(state, &uuid, &desired.allocations).await?;
            state.generation = Some(desired.generation);
        }
        let unclaimed: Vec<String> = state.unclaimed.reported().iter().cloned().collect();
        self.status.succeeded(
            &format!("{} ({uuid})", self.name),
            unclaimed,
            self.settings.remove_unclaimed,
        );
        Ok(())
    }

    fn desired(&self) -> Desired {
        let alloc = self.placement.lock();
        let provider = provider_inventory(&alloc, &self.host, self.guests);
        Desired {
            generation: alloc.generation(),
            rebuilt: self.placement.is_rebuilt(),
            inventories: provider
                .inventories
                .iter()
                // Placement holds no empty inventory (total is at least 1).
                .filter(|r| r.total > 0)
                .map(|r| {
                    (
                        r.resource_class.clone(),
                        Inventory {
                            total: r.total,
                            reserved: r.reserved,
                            min_unit: r.min_unit.max(1),
                            max_unit: r.max_unit.max(1),
                            step_size: r.step_size.max(1),
                            allocation_ratio: r.allocation_ratio,
                        },
                    )
                })
                .collect(),
            traits: provider.traits.into_iter().collect(),
            allocations: alloc
                .claims()
                .map(|c| {
                    let mut r = allocation(&alloc, c);
                    r.retain(|_, n| *n > 0);
                    (c.vm_uuid.clone(), r)
                })
                .filter(|(_, r)| !r.is_empty())
                .collect(),
        }
    }

    /// The provider's UUID: the one known, else the provider of this name (adopted), else a
    /// new one.
    async fn provider(&self, state: &mut State) -> Result<String, ApiError> {
        if let Some(uuid) = &state.provider {
            if self.client.provider(uuid).await?.is_some() {
                return Ok(uuid.clone());
            }
            tracing::warn!(provider = %self.name, %uuid, "placement_api: the resource provider is gone; creating it again");
            self.status.drift.inc(Drift::Provider.as_str());
            *state = State {
                ensured: std::mem::take(&mut state.ensured),
                ..State::default()
            };
        }
        let provider = match self.client.provider_by_name(&self.name).await? {
            Some(p) => {
                tracing::info!(provider = %self.name, uuid = %p.uuid, "placement_api: adopted the resource provider of this name");
                p
            }
            None => {
                let p = self
                    .client
                    .create_provider(&self.name, &provider_uuid(&self.name))
                    .await?;
                tracing::info!(provider = %self.name, uuid = %p.uuid, "placement_api: created the resource provider");
                p
            }
        };
        state.provider = Some(provider.uuid.clone());
        Ok(provider.uuid)
    }

    async fn ensure(
        &self,
        state: &mut State,
        kind: &str,
        names: Vec<&str>,
    ) -> Result<(), ApiError> {
        for name in names {
            if !state.ensured.contains(name) {
                self.client.ensure_custom(kind, name).await?;
                state.ensured.insert(name.to_string());
            }
        }
        Ok(())
    }

    async fn inventories(
        &self,
        state: &mut State,
        uuid: &str,
        desired: &BTreeMap<String, Inventory>,
    ) -> Result<(), ApiError> {
        let mut conflict = None;
        for attempt in 0..CONFLICT_RETRIES {
            let (generation, actual) = self.client.inventories(uuid).await?;
            if inventories_equal(desired, &actual) {
                return Ok(());
            }
            if attempt == 0 {
                tracing::info!(provider = %self.name, "placement_api: inventories differ; writing them");
                self.status.drift.inc(Drift::Inventory.as_str());
            }
            self.ensure(state, "resource_classes", custom(desired.keys()))
                .await?;
            match self.client.put_inventories(uuid, generation, desired).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => conflict = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(conflict.unwrap_or_else(|| ApiError::Setup("no attempt made".into())))
    }

    async fn traits(
        &self,
        state: &mut State,
        uuid: &str,
        desired: &BTreeSet<String>,
    ) -> Result<(), ApiError> {
        let mut conflict = None;
        for attempt in 0..CONFLICT_RETRIES {
            let (generation, actual) = self.client.traits(uuid).await?;
            if &actual == desired {
                return Ok(());
            }
            if attempt == 0 {
                tracing::info!(provider = %self.name, "placement_api: traits differ; writing them");
                self.status.drift.inc(Drift::Traits.as_str());
            }
            self.ensure(state, "traits", custom(desired)).await?;
            match self.client.put_traits(uuid, generation, desired).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => conflict = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(conflict.unwrap_or_else(|| ApiError::Setup("no attempt made".into())))
    }

    /// Makes the allocations on the provider equal to the claims; reports (and, when the
    /// operator asks, removes) the ones without a claim.
    async fn allocations(
        &self,
        state: &mut State,
        uuid: &str,
        desired: &BTreeMap<String, Resources>,
    ) -> Result<(), ApiError> {
        let actual = self.client.provider_allocations(uuid).await?;
        let unclaimed: BTreeSet<String> = actual
            .keys()
            .filter(|c| !desired.contains_key(*c) && !state.kept.contains(*c))
            .cloned()
            .collect();
        let grace = UNCLAIMED_GRACE.min(self.settings.interval).as_millis() as u64;
        for consumer in state
            .unclaimed
            .update(&unclaimed, self.placement.now_ms(), grace)
        {
            tracing::warn!(provider = %self.name, %consumer, resources = ?actual.get(&consumer),
                remove = self.settings.remove_unclaimed,
                "placement_api: an allocation on this node's provider has no claim here");
            self.status.drift.inc(Drift::AllocationUnclaimed.as_str());
        }
        let removable = if self.settings.remove_unclaimed {
            state.unclaimed.reported().clone()
        } else {
            BTreeSet::new()
        };
        let writes = allocation_writes(desired, &actual, &state.kept, &removable);
        // Consumers whose claim goes stay kept until their allocation is gone.
        state.kept.extend(desired.keys().cloned());
        for write in &writes {
            if !self.still_wanted(write) {
                // The claim came or went since the claims were read (a release racing a
                // scheduler's delete would otherwise write back a released guest's
                // allocation); the generation moved, so the next round decides.
                continue;
            }
            match write {
                Write::Set {
                    consumer, drift, ..
                } => {
                    tracing::info!(provider = %self.name, %consumer, drift = drift.as_str(), "placement_api: writing the allocation of a claim");
                    self.status.drift.inc(drift.as_str());
                }
                Write::Remove { consumer } => {
                    tracing::info!(provider = %self.name, %consumer, "placement_api: removing an allocation without a claim");
                }
            }
            self.write(uuid, write).await?;
        }
        state.kept = desired.keys().cloned().collect();
        Ok(())
    }

    /// Whether the allocator still says what `write` assumes: a claim for a write, none for a
    /// removal.
    fn still_wanted(&self, write: &Write) -> bool {
        let claimed = self.placement.lock().get(write.consumer()).is_some();
        match write {
            Write::Set { .. } => claimed,
            Write::Remove { .. } => !claimed,
        }
    }

    /// One consumer's part on this provider, conditional on its consumer generation; a
    /// conflict reads it again. A consumer with nothing on this provider is first written as
    /// a new one (generation null: one call instead of two for a claim made without a
    /// scheduler); if it holds something elsewhere, Placement answers a conflict and it is read.
    async fn write(&self, uuid: &str, write: &Write) -> Result<(), ApiError> {
        let (resources, mut unread) = match write {
            Write::Set {
                resources, drift, ..
            } => (Some(resources), *drift == Drift::AllocationMissing),
            Write::Remove { .. } => (None, false),
        };
        let consumer = write.consumer();
        let mut conflict = None;
        for _ in 0..CONFLICT_RETRIES {
            let current = if std::mem::take(&mut unread) {
                Consumer::default()
            } else {
                self.client.consumer(consumer).await?
            };
            if current.allocations.get(uuid).map(|p| &p.resources) == resources {
                return Ok(());
            }
            let body = consumer_body(uuid, resources, &current);
            match self.client.put_consumer(consumer, body).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_conflict() => conflict = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(conflict.unwrap_or_else(|| ApiError::Setup("no attempt made".into())))
    }
}
