//! `hvagent.v1.PlacementService` and the capacity half of `NodeService`: the allocator behind
//! a mutex (every decision takes microseconds) and the agent's monotonic clock.

use std::sync::Arc;
use std::time::Duration;

use hvagent_proto::v1 as pb;
use tonic::{Code, Request, Response, Status};

use super::flavor::parse_name;
use crate::flavor::{self, catalog};
use crate::placement::allocator::is_uuid;
use crate::placement::{Allocator, Claim, ClaimRequest, PlacementState, Refusal, RefusalKind};

/// At most this many flavors per capacity question.
pub const MAX_CAPACITY_FLAVORS: usize = 100;

/// How often the daemon looks for expired reservations.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

pub fn status(r: Refusal) -> Status {
    let code = match r.kind {
        RefusalKind::Invalid => Code::InvalidArgument,
        RefusalKind::Precondition => Code::FailedPrecondition,
        RefusalKind::Exhausted => Code::ResourceExhausted,
        RefusalKind::AlreadyExists => Code::AlreadyExists,
        RefusalKind::NotFound => Code::NotFound,
    };
    Status::new(code, r.message)
}

/// Placement answers only once it holds the running guests' stored claims: before that it
/// knows the host alone, and any capacity or claim it gave would promise CPUs and memory that
/// running guests may hold.
fn rebuilt(state: &PlacementState) -> Result<(), Status> {
    if state.is_rebuilt() {
        Ok(())
    } else {
        Err(Status::unavailable(
            "placement: not yet rebuilt from the running guests' stored claims (libvirt has not answered since the agent started); retry",
        ))
    }
}

pub fn claim_to_proto(alloc: &Allocator, claim: &Claim, now_ms: u64) -> pb::Claim {
    let share = |m: &crate::placement::claim::MemoryShare| pb::MemoryShare {
        numa_node: m.numa_node,
        mib: m.mib,
        page_size_kib: m.page_size_kib,
    };
    pb::Claim {
        vm_uuid: claim.vm_uuid.clone(),
        request_id: claim.request_id.clone(),
        flavor: claim.flavor.clone(),
        cpu_type: claim.cpu_type.to_string(),
        vcpus: claim
            .vcpus
            .iter()
            .zip(alloc.vcpu_cpus(claim))
            .map(|(v, cpus)| pb::VcpuPlacement { vcpu: v.vcpu, cpus })
            .collect(),
        emulator_cpus: alloc.emulator_cpus(claim),
        idle_cpus: claim.idle_cpus.clone(),
        memory: claim.memory.iter().map(share).collect(),
        overhead: Some(share(&claim.overhead)),
        guest_topology: Some(pb::GuestTopology {
            sockets: claim.guest_topology.sockets,
            cores: claim.guest_topology.cores,
            threads: claim.guest_topology.threads,
        }),
        guest_numa: claim
            .guest_numa
            .iter()
            .map(|c| pb::GuestCell {
                id: c.id,
                vcpus: c.vcpus.clone(),
                mib: c.mib,
                host_node: c.host_node,
            })
            .collect(),
        gpus: claim.gpus.clone(),
        infiniband: claim.infiniband.clone(),
        disk_gb: claim.disk_gb,
        generation: claim.generation,
        reservation: claim.is_reservation(),
        expires_in_ms: claim.expires_at_ms.map_or(0, |t| t.saturating_sub(now_ms)),
    }
}

pub struct PlacementApi {
    state: Arc<PlacementState>,
}

impl PlacementApi {
    pub fn new(state: Arc<PlacementState>) -> Self {
        Self { state }
    }

    pub fn into_service(self) -> pb::placement_service_server::PlacementServiceServer<Self> {
        pb::placement_service_server::PlacementServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::placement_service_server::PlacementService for PlacementApi {
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let r = request.into_inner();
        let spec = parse_name("flavor", &r.flavor)?.spec;
        let req = ClaimRequest {
            vm_uuid: r.vm_uuid,
            request_id: r.request_id,
            flavor: spec,
        };
        rebuilt(&self.state)?;
        let now = self.state.now_ms();
        let mut alloc = self.state.lock();
        let claim = alloc
            .reserve(&req, now, u64::from(r.ttl_seconds) * 1000)
            .map_err(status)?;
        tracing::info!(vm = %claim.vm_uuid, request = %claim.request_id, flavor = %claim.flavor, "reserved");
        Ok(Response::new(pb::ReserveResponse {
            claim: Some(claim_to_proto(&alloc, &claim, now)),
            generation: alloc.generation(),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let vm_uuid = request.into_inner().vm_uuid;
        if !is_uuid(&vm_uuid) {
            return Err(Status::invalid_argument(
                "vm_uuid: must be a UUID (8-4-4-4-12 hex digits)",
            ));
        }
        rebuilt(&self.state)?;
        let now = self.state.now_ms();
        let mut alloc = self.state.lock();
        alloc.expire(now);
        let claim = alloc.release_reservation(&vm_uuid).map_err(status)?;
        tracing::info!(vm = %claim.vm_uuid, request = %claim.request_id, "released");
        Ok(Response::new(pb::ReleaseResponse {
            claim: Some(claim_to_proto(&alloc, &claim, now)),
            generation: alloc.generation(),
        }))
    }

    async fn list_claims(
        &self,
        _request: Request<pb::ListClaimsRequest>,
    ) -> Result<Response<pb::ListClaimsResponse>, Status> {
        rebuilt(&self.state)?;
        let now = self.state.now_ms();
        let mut alloc = self.state.lock();
        alloc.expire(now);
        Ok(Response::new(pb::ListClaimsResponse {
            claims: alloc
                .claims()
                .map(|c| claim_to_proto(&alloc, c, now))
                .collect(),
            generation: alloc.generation(),
            shared_pool: alloc.pool_cpus(),
        }))
    }
}

/// `NodeService.GetCapacity`.
pub fn capacity(
    state: &PlacementState,
    request: pb::GetCapacityRequest,
) -> Result<pb::GetCapacityResponse, Status> {
    if request.flavors.len() > MAX_CAPACITY_FLAVORS {
        return Err(Status::invalid_argument(format!(
            "flavors: at most {MAX_CAPACITY_FLAVORS} names"
        )));
    }
    let asked: Vec<(String, flavor::FlavorSpec)> = if request.flavors.is_empty() {
        catalog::standard()
            .filter_map(|f| f.spec().map(|s| (f.name.to_string(), s)))
            .collect()
    } else {
        request
            .flavors
            .iter()
            .enumerate()
            .map(|(i, n)| parse_name(&format!("flavors[{i}]"), n).map(|p| (n.clone(), p.spec)))
            .collect::<Result<_, _>>()?
    };
    rebuilt(state)?;
    let now = state.now_ms();
    let mut alloc = state.lock();
    alloc.expire(now);
    Ok(pb::GetCapacityResponse {
        flavors: asked
            .iter()
            .map(|(name, spec)| {
                let c = alloc.capacity(spec);
                pb::FlavorCapacity {
                    flavor: name.clone(),
                    more: c.more,
                    per_numa_node: c
                        .per_numa_node
                        .into_iter()
                        .map(|(numa_node, more)| pb::NumaCapacity { numa_node, more })
                        .collect(),
                    limited_by: c.limited_by,
                    reason: c.reason,
                }
            })
            .collect(),
        generation: alloc.generation(),
    })
}
