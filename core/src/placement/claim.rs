//! What a guest holds: a [`Claim`], serialisable so the lifecycle can store it with the domain
//! and rebuild the allocator from it; and what a refused request is told: a [`Refusal`].

use serde::{Deserialize, Serialize};

use crate::flavor::{CpuType, FlavorSpec};

/// Page size recorded for memory on normal (not huge) pages.
pub const NORMAL_PAGE_KIB: u64 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub vm_uuid: String,
    pub request_id: String,
    /// Canonical flavor name the claim was made for.
    pub flavor: String,
    /// `L`, `V`, `T` or `C`.
    pub cpu_type: char,
    pub insecure: bool,
    /// One entry per vCPU, in vCPU order.
    pub vcpus: Vec<VcpuPin>,
    /// Threads of this guest's cores kept idle so no other guest runs beside it.
    pub idle_cpus: Vec<u32>,
    pub emulator: Emulator,
    /// Guest RAM per host NUMA node.
    pub memory: Vec<MemoryShare>,
    /// QEMU's own memory, on normal pages.
    pub overhead: MemoryShare,
    pub guest_topology: GuestTopology,
    pub guest_numa: Vec<GuestCell>,
    /// PCI addresses of passed-through GPUs.
    pub gpus: Vec<String>,
    /// PCI addresses of passed-through InfiniBand HCAs; absent in claims stored before them.
    #[serde(default)]
    pub infiniband: Vec<String>,
    /// Local disk space taken, in GB.
    pub disk_gb: u64,
    /// Allocator generation this claim was made at.
    pub generation: u64,
    /// A reservation's deadline on the allocator's clock (ms); `None` once bound to a guest.
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuPin {
    pub vcpu: u32,
    /// The one host CPU of a dedicated vCPU; `None`: floats over the shared pool.
    pub cpu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emulator {
    /// The host's reserved CPUs.
    Reserved(Vec<u32>),
    /// No CPUs are reserved: the guest's own dedicated CPUs.
    Own,
    /// No CPUs are reserved: the shared pool.
    Pool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryShare {
    pub numa_node: u32,
    pub mib: u64,
    pub page_size_kib: u64,
}

impl MemoryShare {
    /// Pages of `page_size_kib` this share takes.
    pub fn pages(&self) -> u64 {
        (self.mib * 1024).div_ceil(self.page_size_kib)
    }

    pub fn huge(&self) -> bool {
        self.page_size_kib != NORMAL_PAGE_KIB
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestTopology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

/// A guest NUMA cell and the host node behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestCell {
    pub id: u32,
    pub vcpus: Vec<u32>,
    pub mib: u64,
    pub host_node: u32,
}

impl Claim {
    pub fn cpu_type(&self) -> CpuType {
        match self.cpu_type {
            'L' => CpuType::Crowded,
            'V' => CpuType::Shared,
            'T' => CpuType::DedicatedThread,
            _ => CpuType::DedicatedCore,
        }
    }

    /// Host CPUs pinned to this guest's vCPUs.
    pub fn dedicated_cpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.vcpus.iter().filter_map(|v| v.cpu)
    }

    pub fn is_reservation(&self) -> bool {
        self.expires_at_ms.is_some()
    }
}

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub vm_uuid: String,
    pub request_id: String,
    pub flavor: FlavorSpec,
}

impl ClaimRequest {
    /// Two requests with the same id must agree on this to be the same request.
    pub fn key(&self) -> String {
        format!("{} {}", self.vm_uuid, self.flavor.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The request itself is malformed.
    Invalid,
    /// The node can never keep this promise.
    Precondition,
    /// The node could, but not with what is free now.
    Exhausted,
    /// The request id or VM already holds a different claim.
    AlreadyExists,
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    /// The resource or promise that decided it: `PCPU`, `shared-pool ratio`, `MEMORY_MB`,
    /// `CUSTOM_HUGEPAGES_2M`, `DISK_GB`, `GPU`, `ECC`, `security`, ...
    pub limited_by: String,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, limited_by: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            limited_by: limited_by.to_string(),
            message: message.into(),
        }
    }

    pub fn precondition(limited_by: &str, message: impl Into<String>) -> Self {
        Self::new(RefusalKind::Precondition, limited_by, message)
    }

    pub fn exhausted(limited_by: &str, message: impl Into<String>) -> Self {
        Self::new(RefusalKind::Exhausted, limited_by, message)
    }
}
