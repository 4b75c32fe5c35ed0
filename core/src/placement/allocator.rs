//! The node's one allocator: claims by VM and request id over a [`Ledger`]. Every operation is
//! atomic (a refusal changes nothing), idempotent per request id, and bumps the generation when
//! it changes state. Time comes in as milliseconds on the caller's monotonic clock.

use std::collections::{BTreeMap, HashMap};

use super::admission;
use super::claim::{Claim, ClaimRequest, Emulator, Refusal, RefusalKind};
use super::ledger::{Ledger, Need};
use super::policy::{Policy, PolicyError, Pools};
use super::topology::Topology;

/// Reservation lifetimes a scheduler may ask for.
pub const MIN_TTL_MS: u64 = 1_000;
pub const MAX_TTL_MS: u64 = 3_600_000;

#[derive(Debug, Clone)]
struct Entry {
    claim: Claim,
    key: String,
}

#[derive(Debug, Clone)]
pub struct Allocator {
    topo: Topology,
    policy: Policy,
    pools: Pools,
    ledger: Ledger,
    /// By VM UUID.
    claims: BTreeMap<String, Entry>,
    /// Request id → VM UUID.
    requests: HashMap<String, String>,
    generation: u64,
    /// The node is being drained: no new claim is taken (NodeService.Drain; Placement sees
    /// COMPUTE_STATUS_DISABLED, capacity is 0).
    draining: bool,
}

/// Stored claims that cannot all hold at once; each line names the guests involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored claims conflict: {}", conflicts.join("; "))]
pub struct RebuildError {
    pub conflicts: Vec<String>,
}

/// What a claim asked for on a draining node gets.
pub fn draining_refusal() -> Refusal {
    Refusal::new(
        RefusalKind::Precondition,
        "draining",
        "the node is draining: it admits no new guests until NodeService.Undrain (hvctl node undrain)",
    )
}

fn invalid(field: &str, rule: &str) -> Refusal {
    Refusal::new(RefusalKind::Invalid, field, format!("{field}: {rule}"))
}

/// `8-4-4-4-12` hexadecimal digits.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A request id in request field `field`.
pub fn check_request_id(field: &str, id: &str) -> Result<(), Refusal> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            "must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        ))
    }
}

impl Allocator {
    pub fn new(topo: Topology, policy: Policy) -> Result<Allocator, PolicyError> {
        let pools = policy.resolve(&topo)?;
        let ledger = Ledger::new(&topo, &pools);
        Ok(Allocator {
            topo,
            policy,
            pools,
            ledger,
            claims: BTreeMap::new(),
            requests: HashMap::new(),
            generation: 0,
            draining: false,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    pub(super) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the node admits no new claims.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Stops (`true`) or resumes admitting new claims; a change bumps the generation, so
    /// that the Placement reporter sends the node's status.
    pub fn set_draining(&mut self, draining: bool) {
        if self.draining != draining {
            self.draining = draining;
            self.generation += 1;
        }
    }

    /// Claims ordered by VM UUID.
    pub fn claims(&self) -> impl Iterator<Item = &Claim> {
        self.claims.values().map(|e| &e.claim)
    }

    pub fn get(&self, vm_uuid: &str) -> Option<&Claim> {
        self.claims.get(vm_uuid).map(|e| &e.claim)
    }

    /// A claim bound to a guest at once.
    pub fn claim(&mut self, req: &ClaimRequest, now_ms: u64) -> Result<Claim, Refusal> {
        self.take(req, now_ms, None)
    }

    /// A claim that is released at `now_ms + ttl_ms` unless [`Allocator::bind`] makes it
    /// permanent first.
    pub fn reserve(
        &mut self,
        req: &ClaimRequest,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Claim, Refusal> {
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(invalid(
                "ttl_seconds",
                &format!(
                    "must be between {} and {}",
                    MIN_TTL_MS / 1000,
                    MAX_TTL_MS / 1000
                ),
            ));
        }
        self.take(req, now_ms, Some(now_ms + ttl_ms))
    }

    fn take(
        &mut self,
        req: &ClaimRequest,
        now_ms: u64,
        expires_at_ms: Option<u64>,
    ) -> Result<Claim, Refusal> {
        if !is_uuid(&req.vm_uuid) {
            return Err(invalid("vm_uuid", "must be a UUID (8-4-4-4-12 hex digits)"));
        }
        check_request_id("request_id", &req.request_id)?;
        self.expire(now_ms);
        let vm_uuid = req.vm_uuid.to_ascii_lowercase();
        let key = ClaimRequest {
            vm_uuid: vm_uuid.clone(),
            ..req.clone()
        }
        .key();
        if let Some(vm) = self.requests.get(&req.request_id)
            && let Some(entry) = self.claims.get(vm)
        {
            if entry.key == key {
                return Ok(entry.claim.clone());
            }
            return Err(Refusal::new(
                RefusalKind::AlreadyExists,
                "request_id",
                format!(
                    "request_id {:?} already holds a claim for VM {} with flavor {}",
                    req.request_id, entry.claim.vm_uuid, entry.claim.flavor
                ),
            ));
        }
        if let Some(entry) = self.claims.get(&vm_uuid) {
            return Err(Refusal::new(
                RefusalKind::AlreadyExists,
                "vm_uuid",
                format!(
                    "VM {vm_uuid} already holds a claim (request_id {:?}, flavor {})",
                    entry.claim.request_id, entry.claim.flavor
                ),
            ));
        }
        // After the checks above: a retried request for a claim taken before the drain still
        // answers with that claim.
        if self.draining {
            return Err(draining_refusal());
        }
        admission::check(&req.flavor, &self.topo)?;
        let need = Need::new(&req.flavor, &self.policy);
        let mut claim = self.ledger.place(&self.topo, &self.pools, &need, None)?;
        claim.vm_uuid = vm_uuid.clone();
        claim.request_id = req.request_id.clone();
        claim.flavor = req.flavor.name();
        claim.generation = self.generation + 1;
        claim.expires_at_ms = expires_at_ms;
        self.ledger.apply(&self.topo, &self.pools, &claim)?;
        self.generation += 1;
        self.requests
            .insert(req.request_id.clone(), vm_uuid.clone());
        self.claims.insert(
            vm_uuid,
            Entry {
                claim: claim.clone(),
                key,
            },
        );
        Ok(claim)
    }

    /// Makes the reservation of `request_id` permanent (a guest now exists for it).
    pub fn bind(&mut self, request_id: &str, now_ms: u64) -> Result<Claim, Refusal> {
        self.expire(now_ms);
        // A reservation made before the drain would start a guest the drain does not move;
        // it lapses instead. A claim bound already answers as before.
        if self.draining
            && self
                .requests
                .get(request_id)
                .and_then(|vm| self.claims.get(vm))
                .is_some_and(|e| e.claim.expires_at_ms.is_some())
        {
            return Err(draining_refusal());
        }
        let entry = self
            .requests
            .get(request_id)
            .and_then(|vm| self.claims.get_mut(vm))
            .ok_or_else(|| {
                Refusal::new(
                    RefusalKind::NotFound,
                    "request_id",
                    format!(
                        "no reservation with request_id {request_id:?} (expired or never made)"
                    ),
                )
            })?;
        if entry.claim.expires_at_ms.take().is_some() {
            self.generation += 1;
        }
        Ok(entry.claim.clone())
    }

    /// Releases the claim of `vm_uuid`, giving back exactly what it took.
    pub fn release(&mut self, vm_uuid: &str) -> Result<Claim, Refusal> {
        let vm_uuid = vm_uuid.to_ascii_lowercase();
        let entry = self.claims.remove(&vm_uuid).ok_or_else(|| {
            Refusal::new(
                RefusalKind::NotFound,
                "vm_uuid",
                format!("VM {vm_uuid} holds no claim"),
            )
        })?;
        self.requests.remove(&entry.claim.request_id);
        self.ledger.unapply(&self.topo, &self.pools, &entry.claim);
        self.generation += 1;
        Ok(entry.claim)
    }

    /// Moves the claim of `from` to the VM UUID `to`, as it is: the same CPUs, memory and
    /// request id, only the holder changes (a resize keeps the guest's old claim under a holder
    /// UUID while the new one is taken under the guest's, and moves it back on a revert).
    /// Refused, changing nothing, when `from` holds no claim or `to` holds one already.
    pub fn rekey(&mut self, from: &str, to: &str) -> Result<Claim, Refusal> {
        if !is_uuid(to) {
            return Err(invalid("vm_uuid", "must be a UUID (8-4-4-4-12 hex digits)"));
        }
        let (from, to) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
        if let Some(entry) = self.claims.get(&to) {
            return Err(Refusal::new(
                RefusalKind::AlreadyExists,
                "vm_uuid",
                format!(
                    "VM {to} already holds a claim (request_id {:?}, flavor {})",
                    entry.claim.request_id, entry.claim.flavor
                ),
            ));
        }
        let mut entry = self.claims.remove(&from).ok_or_else(|| {
            Refusal::new(
                RefusalKind::NotFound,
                "vm_uuid",
                format!("VM {from} holds no claim"),
            )
        })?;
        entry.claim.vm_uuid = to.clone();
        entry.key = format!("{to} {}", entry.claim.flavor);
        self.requests
            .insert(entry.claim.request_id.clone(), to.clone());
        self.generation += 1;
        let claim = entry.claim.clone();
        self.claims.insert(to, entry);
        Ok(claim)
    }

    /// What `PlacementService/Release` may give back: a reservation. A claim bound to a guest
    /// (by its create) is the guest's until the guest is deleted; releasing it would let
    /// placement hand its CPUs and memory to another guest while it runs.
    pub fn release_reservation(&mut self, vm_uuid: &str) -> Result<Claim, Refusal> {
        let key = vm_uuid.to_ascii_lowercase();
        if let Some(entry) = self.claims.get(&key)
            && !entry.claim.is_reservation()
        {
            return Err(Refusal::precondition(
                "vm_uuid",
                format!(
                    "the claim of VM {key} is bound to its guest; delete the guest (VmService/Delete) to free it"
                ),
            ));
        }
        self.release(&key)
    }

    /// The VM holding `request_id`, if any.
    pub fn vm_of_request(&self, request_id: &str) -> Option<&str> {
        self.requests.get(request_id).map(String::as_str)
    }

    /// Releases every reservation whose deadline has passed; returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Claim> {
        let due: Vec<String> = self
            .claims
            .iter()
            .filter(|(_, e)| e.claim.expires_at_ms.is_some_and(|t| t <= now_ms))
            .map(|(vm, _)| vm.clone())
            .collect();
        due.iter().filter_map(|vm| self.release(vm).ok()).collect()
    }

    /// An allocator holding `claims` (as stored with the guests), or every conflict among
    /// them. Nothing is accepted silently: a CPU named twice, memory beyond a node, a CPU the
    /// policy no longer allows each name the guests involved.
    pub fn rebuild(
        topo: Topology,
        policy: Policy,
        claims: Vec<Claim>,
    ) -> Result<Allocator, RebuildError> {
        let mut alloc = Allocator::new(topo, policy).map_err(|e| RebuildError {
            conflicts: vec![e.to_string()],
        })?;
        let mut conflicts = Vec::new();
        for claim in claims {
            let vm = claim.vm_uuid.clone();
            if alloc.claims.contains_key(&vm) {
                conflicts.push(format!("VM {vm} has two stored claims"));
                continue;
            }
            if let Some(other) = alloc.requests.get(&claim.request_id) {
                conflicts.push(format!(
                    "VMs {other} and {vm} both claim request_id {:?}",
                    claim.request_id
                ));
                continue;
            }
            if let Err(refusal) = alloc.ledger.apply(&alloc.topo, &alloc.pools, &claim) {
                let holders: Vec<&str> = alloc
                    .claims()
                    .filter(|c| {
                        c.dedicated_cpus()
                            .chain(c.idle_cpus.iter().copied())
                            .any(|x| {
                                claim
                                    .dedicated_cpus()
                                    .chain(claim.idle_cpus.iter().copied())
                                    .any(|y| x == y)
                            })
                    })
                    .map(|c| c.vm_uuid.as_str())
                    .collect();
                conflicts.push(if holders.is_empty() {
                    format!("VM {vm}: {}", refusal.message)
                } else {
                    format!(
                        "VM {vm}: {} (held by VM {})",
                        refusal.message,
                        holders.join(", VM ")
                    )
                });
                continue;
            }
            alloc.generation = alloc.generation.max(claim.generation);
            alloc.requests.insert(claim.request_id.clone(), vm.clone());
            // The same key a fresh request makes: the claim keeps the canonical flavor name.
            let key = format!("{vm} {}", claim.flavor);
            alloc.claims.insert(vm, Entry { claim, key });
        }
        if conflicts.is_empty() {
            alloc.generation += 1;
            Ok(alloc)
        } else {
            Err(RebuildError { conflicts })
        }
    }

    /// Host CPUs each vCPU may run on now: its pinned CPU, or the current shared pool.
    pub fn vcpu_cpus(&self, claim: &Claim) -> Vec<Vec<u32>> {
        let pool = self.ledger.pool_cpus(&self.pools);
        claim
            .vcpus
            .iter()
            .map(|v| v.cpu.map_or_else(|| pool.clone(), |c| vec![c]))
            .collect()
    }

    /// Where the guest's emulator and I/O threads run now.
    pub fn emulator_cpus(&self, claim: &Claim) -> Vec<u32> {
        match &claim.emulator {
            Emulator::Reserved(cpus) => cpus.clone(),
            Emulator::Own => claim.dedicated_cpus().collect(),
            Emulator::Pool => self.ledger.pool_cpus(&self.pools),
        }
    }

    /// The shared pool's CPUs now.
    pub fn pool_cpus(&self) -> Vec<u32> {
        self.ledger.pool_cpus(&self.pools)
    }
}

#[cfg(test)]
mod rekey_tests {
    use proptest::prelude::*;

    use super::super::testing::fixture;
    use super::super::tests::spec;
    use super::*;

    fn uuid(n: u64) -> String {
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    fn alloc_with(flavors: &[&str]) -> Allocator {
        let mut alloc = Allocator::new(fixture("qemu-2s4c2t-numa"), Policy::default()).unwrap();
        for (n, f) in flavors.iter().enumerate() {
            let req = ClaimRequest {
                vm_uuid: uuid(n as u64),
                request_id: format!("r{n}"),
                flavor: spec(f),
            };
            alloc.claim(&req, 0).unwrap();
        }
        alloc
    }

    /// The claim moves whole: the ledger, the other claims and the claim's own content stay;
    /// the request id now names the new holder; the generation moves on.
    #[test]
    fn rekey_moves_the_claim_and_nothing_else() {
        let mut alloc = alloc_with(&["SCS-2Ci-1u", "SCS-1Vi-1u"]);
        let ledger = alloc.ledger().clone();
        let before = alloc.get(&uuid(0)).unwrap().clone();
        let other = alloc.get(&uuid(1)).unwrap().clone();
        let generation = alloc.generation();
        let moved = alloc.rekey(&uuid(0), &uuid(9)).unwrap();
        assert_eq!(
            moved,
            Claim {
                vm_uuid: uuid(9),
                ..before.clone()
            }
        );
        assert_eq!(alloc.ledger(), &ledger);
        assert!(alloc.get(&uuid(0)).is_none());
        assert_eq!(alloc.get(&uuid(9)), Some(&moved));
        assert_eq!(alloc.get(&uuid(1)), Some(&other));
        assert_eq!(alloc.vm_of_request("r0"), Some(uuid(9).as_str()));
        assert_eq!(alloc.generation(), generation + 1);
        // And back: exactly the claim it was.
        alloc.rekey(&uuid(9), &uuid(0)).unwrap();
        assert_eq!(alloc.get(&uuid(0)), Some(&before));
        assert_eq!(alloc.ledger(), &ledger);
        // The same request again is the same claim (idempotent under its new holder too).
        let again = ClaimRequest {
            vm_uuid: uuid(0),
            request_id: "r0".into(),
            flavor: spec("SCS-2Ci-1u"),
        };
        assert_eq!(alloc.claim(&again, 0).unwrap(), before);
    }

    /// A draining node takes no new claim (Create, Reserve, a resize's or an arrival's) and
    /// says why; what it holds stays, retries of its requests still answer, releases go on,
    /// and undraining admits again. Each change of the state moves the generation once.
    #[test]
    fn a_draining_node_admits_nothing_new_and_keeps_what_it_holds() {
        let mut alloc = alloc_with(&["SCS-2Ci-1u"]);
        let held = alloc.get(&uuid(0)).unwrap().clone();
        // A reservation from before the drain: it may not be bound now, only lapse.
        let reserved = ClaimRequest {
            vm_uuid: uuid(7),
            request_id: "r7".into(),
            flavor: spec("SCS-1Vi-1u"),
        };
        alloc.reserve(&reserved, 0, 60_000).unwrap();
        let generation = alloc.generation();
        alloc.set_draining(true);
        alloc.set_draining(true);
        assert!(alloc.is_draining());
        assert_eq!(alloc.generation(), generation + 1);
        let before = format!("{alloc:?}");
        let new = |n: u64| ClaimRequest {
            vm_uuid: uuid(n),
            request_id: format!("r{n}"),
            flavor: spec("SCS-1Vi-1u"),
        };
        for refused in [
            alloc.claim(&new(5), 0),
            alloc.reserve(&new(6), 0, 60_000),
            alloc.bind("r7", 0),
        ] {
            let r = refused.unwrap_err();
            assert_eq!(r.kind, RefusalKind::Precondition);
            assert_eq!(r.limited_by, "draining");
            assert!(r.message.contains("Undrain"), "{r}");
        }
        assert_eq!(
            format!("{alloc:?}"),
            before,
            "a refusal changed the allocator"
        );
        let retried = ClaimRequest {
            vm_uuid: uuid(0),
            request_id: "r0".into(),
            flavor: spec("SCS-2Ci-1u"),
        };
        assert_eq!(alloc.claim(&retried, 0).unwrap(), held);
        assert_eq!(alloc.bind("r0", 0).unwrap(), held);
        let capacity = alloc.capacity(&spec("SCS-1Vi-1u"));
        assert_eq!(
            (capacity.more, capacity.limited_by.as_str()),
            (0, "draining")
        );
        assert!(capacity.per_numa_node.iter().all(|(_, n)| *n == 0));
        assert_eq!(alloc.release(&uuid(0)).unwrap(), held);
        alloc.set_draining(false);
        assert!(!alloc.is_draining());
        assert!(alloc.capacity(&spec("SCS-1Vi-1u")).more > 0);
        alloc.claim(&new(5), 0).unwrap();
    }

    #[test]
    fn rekey_refuses_a_taken_target_a_missing_source_and_a_bad_uuid() {
        let mut alloc = alloc_with(&["SCS-2Ci-1u", "SCS-1Vi-1u"]);
        let snapshot = format!("{alloc:?}");
        let taken = alloc.rekey(&uuid(0), &uuid(1)).unwrap_err();
        assert_eq!(taken.kind, RefusalKind::AlreadyExists);
        assert_eq!(
            taken.message,
            format!(
                "VM {} already holds a claim (request_id \"r1\", flavor SCS-1Vi-1u)",
                uuid(1)
            )
        );
        let missing = alloc.rekey(&uuid(7), &uuid(8)).unwrap_err();
        assert_eq!(missing.kind, RefusalKind::NotFound);
        assert_eq!(
            alloc.rekey(&uuid(0), "holder").unwrap_err().kind,
            RefusalKind::Invalid
        );
        assert_eq!(format!("{alloc:?}"), snapshot, "a refusal changes nothing");
    }

    proptest! {
        /// Any sequence of rekeys among a few UUIDs keeps the ledger as it was, keeps every
        /// claim's content (only its holder changes), and keeps the request map pointing at
        /// each claim's holder; a rebuild from the claims gives the same ledger.
        #[test]
        fn rekeys_keep_the_ledger(moves in proptest::collection::vec((0u64..6, 0u64..6), 1..24)) {
            let mut alloc = alloc_with(&["SCS-2Ci-1u", "SCS-1Vi-1u", "SCS-2Ti-0.5u"]);
            let ledger = alloc.ledger().clone();
            let content = |a: &Allocator| {
                let mut v: Vec<Claim> = a
                    .claims()
                    .map(|c| Claim { vm_uuid: String::new(), ..c.clone() })
                    .collect();
                v.sort_by(|x, y| x.request_id.cmp(&y.request_id));
                v
            };
            let claims = content(&alloc);
            for (from, to) in moves {
                let before = format!("{alloc:?}");
                let generation = alloc.generation();
                match alloc.rekey(&uuid(from), &uuid(to)) {
                    Ok(c) => {
                        prop_assert_eq!(&c.vm_uuid, &uuid(to));
                        prop_assert_eq!(alloc.generation(), generation + 1);
                    }
                    Err(_) => prop_assert_eq!(format!("{alloc:?}"), before),
                }
                prop_assert_eq!(alloc.ledger(), &ledger);
                prop_assert_eq!(content(&alloc), claims.clone());
                for c in alloc.claims() {
                    prop_assert_eq!(alloc.vm_of_request(&c.request_id), Some(c.vm_uuid.as_str()));
                }
            }
            let rebuilt = Allocator::rebuild(
                alloc.topology().clone(),
                alloc.policy().clone(),
                alloc.claims().cloned().collect(),
            )
            .unwrap();
            prop_assert_eq!(rebuilt.ledger(), &ledger);
        }
    }
}
