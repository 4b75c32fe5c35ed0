//! Offline planning (`hvctl plan`): place a list of flavors on a topology in order and report
//! the claims, the refusals and what still fits, as JSON an operator or a test can read.

use serde::Serialize;

use super::allocator::Allocator;
use super::capacity::Capacity;
use super::claim::{ClaimRequest, GuestCell, GuestTopology, MemoryShare};
use crate::flavor::FlavorSpec;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub claims: Vec<PlannedClaim>,
    pub rejected: Vec<Rejected>,
    pub capacity: Vec<CapacityView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedClaim {
    pub flavor: String,
    pub index: u32,
    pub vcpus: Vec<VcpuView>,
    pub emulator_cpus: Vec<u32>,
    pub idle_cpus: Vec<u32>,
    pub memory: Vec<MemoryShare>,
    pub overhead: MemoryShare,
    pub guest_topology: GuestTopology,
    pub guest_numa: Vec<GuestCell>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VcpuView {
    pub vcpu: u32,
    pub cpus: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub flavor: String,
    pub index: u32,
    pub limited_by: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapacityView {
    pub flavor: String,
    pub more: u64,
    pub per_numa_node: Vec<NodeCount>,
    pub limited_by: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeCount {
    pub numa_node: u32,
    pub more: u64,
}

impl CapacityView {
    pub fn new(flavor: &str, c: Capacity) -> Self {
        Self {
            flavor: flavor.to_string(),
            more: c.more,
            per_numa_node: c
                .per_numa_node
                .into_iter()
                .map(|(numa_node, more)| NodeCount { numa_node, more })
                .collect(),
            limited_by: c.limited_by,
            reason: c.reason,
        }
    }
}

/// Places `count` guests of each `(name, spec, count)` in the order given; claims are
/// final (the shared pool is shown as it is after the last one).
pub fn plan(alloc: &mut Allocator, requests: &[(String, FlavorSpec, u32)]) -> Plan {
    let mut placed = Vec::new();
    let mut rejected = Vec::new();
    let mut serial = 0u64;
    for (name, spec, count) in requests {
        for index in 0..*count {
            serial += 1;
            let req = ClaimRequest {
                vm_uuid: format!("00000000-0000-4000-8000-{serial:012x}"),
                request_id: format!("plan-{serial}"),
                flavor: spec.clone(),
            };
            match alloc.claim(&req, 0) {
                Ok(claim) => placed.push((name.clone(), index, claim)),
                Err(r) => rejected.push(Rejected {
                    flavor: name.clone(),
                    index,
                    limited_by: r.limited_by,
                    reason: r.message,
                }),
            }
        }
    }
    let claims = placed
        .into_iter()
        .map(|(flavor, index, claim)| PlannedClaim {
            flavor,
            index,
            vcpus: claim
                .vcpus
                .iter()
                .zip(alloc.vcpu_cpus(&claim))
                .map(|(v, cpus)| VcpuView { vcpu: v.vcpu, cpus })
                .collect(),
            emulator_cpus: alloc.emulator_cpus(&claim),
            idle_cpus: claim.idle_cpus,
            memory: claim.memory,
            overhead: claim.overhead,
            guest_topology: claim.guest_topology,
            guest_numa: claim.guest_numa,
        })
        .collect();
    let mut seen: Vec<&str> = Vec::new();
    let mut capacity = Vec::new();
    for (name, spec, _) in requests {
        if !seen.contains(&name.as_str()) {
            seen.push(name);
            capacity.push(CapacityView::new(name, alloc.capacity(spec)));
        }
    }
    Plan {
        claims,
        rejected,
        capacity,
    }
}
