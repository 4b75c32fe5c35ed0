//! The host as placement sees it: online CPUs grouped into physical cores, cores grouped into
//! NUMA nodes, memory and hugepages per node, and the node facts that flavor promises depend
//! on. Built from the inventory, or synthesized for tests and planning.

use std::collections::BTreeMap;

use crate::host::{self, Inventory, KvmState, Passthrough};

#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Online CPUs ordered by id.
    pub cpus: Vec<Cpu>,
    /// Physical cores ordered by their lowest thread id.
    pub cores: Vec<Core>,
    /// NUMA nodes ordered by id; `Core::node` and the allocator index into this list.
    pub nodes: Vec<Node>,
    /// Some core has more than one online thread.
    pub smt: bool,
    /// An SMT-exploitable issue (L1TF, MDS, MMIO stale data) is open while SMT is on: two
    /// guests must never share a core's threads, unless both accept it (`i`).
    pub sibling_leak: bool,
    pub facts: Facts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    pub id: u32,
    /// Index into [`Topology::cores`].
    pub core: usize,
    /// Excluded from the kernel's load balancing (`isolcpus`): fine for a pinned vCPU, wrong
    /// for floating ones.
    pub isolated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// Online threads, ascending.
    pub threads: Vec<u32>,
    /// Index into [`Topology::nodes`].
    pub node: usize,
    pub socket: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: u32,
    /// Memory usable with normal pages: MemTotal minus the node's hugepage pools.
    pub memory_mib: u64,
    /// Page size in KiB → pages in the node's pool.
    pub hugepages: BTreeMap<u64, u64>,
}

/// A yes/no fact with the reason an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    pub holds: bool,
    pub reason: String,
}

impl Verdict {
    pub fn new(holds: bool, reason: impl Into<String>) -> Self {
        Self {
            holds,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    pub pci_address: String,
    /// SCS vendor letter: N, A, I.
    pub vendor: char,
    pub passthrough: Passthrough,
}

/// An InfiniBand HCA, given to a guest whole like a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IbDevice {
    /// The RDMA name, e.g. `mlx5_0`.
    pub name: String,
    pub pci_address: String,
    pub passthrough: Passthrough,
}

/// Node facts the admission rules check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    pub ecc: Verdict,
    pub secure: Verdict,
    pub kvm: Verdict,
    pub hwv: Verdict,
    pub brand: Option<host::CpuBrand>,
    /// SCS disk letters of the local block devices.
    pub disk_classes: Vec<char>,
    /// Size of the storage filesystem in GB; `None`: unknown, disks are not counted.
    pub disk_gb: Option<u64>,
    pub gpus: Vec<GpuDevice>,
    pub infiniband: Vec<IbDevice>,
}

impl Facts {
    /// Some InfiniBand HCA can be passed through: what `_ib` promises.
    pub fn serves_infiniband(&self) -> bool {
        self.infiniband.iter().any(|d| d.passthrough.ready())
    }

    /// GPUs of SCS vendor letter `vendor` that can be passed through.
    pub fn ready_gpus(&self, vendor: char) -> impl Iterator<Item = &GpuDevice> {
        self.gpus
            .iter()
            .filter(move |g| g.vendor == vendor && g.passthrough.ready())
    }
}

impl Topology {
    pub fn from_inventory(inv: &Inventory) -> Topology {
        let node_ids: Vec<u32> = inv.numa_nodes.iter().map(|n| n.id).collect();
        let node_index = |id: Option<u32>| {
            id.and_then(|id| node_ids.iter().position(|&n| n == id))
                .unwrap_or(0)
        };
        let mut cores: Vec<Core> = Vec::new();
        let mut cpus = Vec::new();
        for c in inv.cpu.cpus.iter().filter(|c| c.online) {
            let threads: Vec<u32> = if c.siblings.is_empty() {
                vec![c.id]
            } else {
                c.siblings.clone()
            };
            let core = match cores.iter().position(|k| k.threads == threads) {
                Some(i) => i,
                None => {
                    cores.push(Core {
                        threads,
                        node: node_index(c.numa_node),
                        socket: c.socket.unwrap_or(0),
                    });
                    cores.len() - 1
                }
            };
            cpus.push(Cpu {
                id: c.id,
                core,
                isolated: c.isolated,
            });
        }
        // Keep only online threads in each core (a sibling list may name offline CPUs).
        let online: Vec<u32> = cpus.iter().map(|c| c.id).collect();
        for core in &mut cores {
            core.threads.retain(|t| online.contains(t));
        }
        let mut nodes: Vec<Node> = inv
            .numa_nodes
            .iter()
            .map(|n| {
                let hugepages: BTreeMap<u64, u64> = n
                    .hugepages
                    .iter()
                    .map(|p| (p.page_size_kib, p.total))
                    .collect();
                let huge_mib: u64 = hugepages.iter().map(|(k, n)| k * n / 1024).sum();
                Node {
                    id: n.id,
                    memory_mib: (n.memory_total_bytes >> 20).saturating_sub(huge_mib),
                    hugepages,
                }
            })
            .collect();
        if nodes.is_empty() {
            nodes.push(Node {
                id: 0,
                memory_mib: inv.memory.total_bytes >> 20,
                hugepages: BTreeMap::new(),
            });
        }
        let smt = cores.iter().any(|c| c.threads.len() > 1);
        let sibling_leak = smt
            && inv.cpu.vulnerabilities.iter().any(|v| {
                v.smt_vulnerable()
                    || (matches!(v.name.as_str(), "l1tf" | "mds" | "mmio_stale_data")
                        && v.is_vulnerable())
            });
        let kvm = &inv.hypervisor.kvm;
        let facts = Facts {
            ecc: Verdict::new(inv.scs.serves_ecc, &inv.scs.serves_ecc_reason),
            secure: Verdict::new(inv.scs.serves_secure, &inv.scs.serves_secure_reason),
            kvm: Verdict::new(kvm.state == KvmState::Usable, &kvm.reason),
            hwv: Verdict::new(
                inv.scs.serves_hwv,
                if inv.scs.serves_hwv {
                    "KVM works and nested virtualization is on".to_string()
                } else if kvm.state != KvmState::Usable {
                    format!("KVM is {}: {}", kvm.state.as_str(), kvm.reason)
                } else {
                    inv.hypervisor.nested_reason.clone()
                },
            ),
            brand: inv.scs.cpu_brand.clone(),
            disk_classes: inv.scs.local_disk_classes.clone(),
            disk_gb: inv.storage_disk_bytes.map(|b| b / 1_000_000_000),
            gpus: inv
                .gpus
                .iter()
                .filter_map(|g| {
                    g.scs_vendor().map(|vendor| GpuDevice {
                        pci_address: g.pci_address.clone(),
                        vendor,
                        passthrough: g.passthrough.clone(),
                    })
                })
                .collect(),
            infiniband: inv
                .infiniband
                .iter()
                .map(|d| IbDevice {
                    name: d.name.clone(),
                    pci_address: d.pci_address.clone(),
                    passthrough: d.passthrough.clone(),
                })
                .collect(),
        };
        Topology {
            cpus,
            cores,
            nodes,
            smt,
            sibling_leak,
            facts,
        }
    }

    /// A regular machine: `sockets` × `cores_per_socket` × `threads`, each socket split into
    /// `nodes_per_socket` NUMA nodes of equal core counts (the last takes the remainder), thread
    /// `t` of core `c` numbered `t * total_cores + c` as Linux numbers x86 SMT siblings.
    pub fn regular(shape: &Shape) -> Topology {
        let total_cores = shape.sockets * shape.cores_per_socket;
        let node_count = shape.sockets * shape.nodes_per_socket;
        let per_node = shape
            .cores_per_socket
            .div_ceil(shape.nodes_per_socket)
            .max(1);
        let mut cores = Vec::new();
        let mut cpus = Vec::new();
        for s in 0..shape.sockets {
            for c in 0..shape.cores_per_socket {
                let global = s * shape.cores_per_socket + c;
                let node = (s * shape.nodes_per_socket + (c / per_node)) as usize;
                let threads: Vec<u32> = (0..shape.threads)
                    .map(|t| t * total_cores + global)
                    .filter(|id| !shape.offline.contains(id))
                    .collect();
                if threads.is_empty() {
                    continue;
                }
                for &id in &threads {
                    cpus.push(Cpu {
                        id,
                        core: cores.len(),
                        isolated: shape.isolated.contains(&id),
                    });
                }
                cores.push(Core {
                    threads,
                    node,
                    socket: s,
                });
            }
        }
        cpus.sort_by_key(|c| c.id);
        let nodes = (0..node_count)
            .map(|id| Node {
                id,
                memory_mib: shape.memory_mib_per_node,
                hugepages: shape.hugepages_per_node.clone(),
            })
            .collect();
        Topology {
            smt: cores.iter().any(|c| c.threads.len() > 1),
            cpus,
            cores,
            nodes,
            sibling_leak: shape.sibling_leak,
            facts: Facts {
                ecc: Verdict::new(true, "synthetic"),
                secure: Verdict::new(true, "synthetic"),
                kvm: Verdict::new(true, "synthetic"),
                hwv: Verdict::new(true, "synthetic"),
                ..Facts::default()
            },
        }
    }

    pub fn cpu(&self, id: u32) -> Option<&Cpu> {
        self.cpus
            .binary_search_by_key(&id, |c| c.id)
            .ok()
            .map(|i| &self.cpus[i])
    }

    /// One past the highest online CPU id: the length of per-CPU tables.
    pub fn cpu_slots(&self) -> usize {
        self.cpus.last().map_or(0, |c| c.id as usize + 1)
    }
}

/// Parameters of [`Topology::regular`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub sockets: u32,
    pub cores_per_socket: u32,
    pub threads: u32,
    pub nodes_per_socket: u32,
    pub memory_mib_per_node: u64,
    pub hugepages_per_node: BTreeMap<u64, u64>,
    pub offline: Vec<u32>,
    pub isolated: Vec<u32>,
    pub sibling_leak: bool,
}

impl Shape {
    pub fn new(sockets: u32, cores_per_socket: u32, threads: u32) -> Shape {
        Shape {
            sockets,
            cores_per_socket,
            threads,
            nodes_per_socket: 1,
            memory_mib_per_node: 256 * 1024,
            hugepages_per_node: BTreeMap::new(),
            offline: Vec::new(),
            isolated: Vec::new(),
            sibling_leak: false,
        }
    }
}
