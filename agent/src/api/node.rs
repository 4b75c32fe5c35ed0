//! `hvagent.v1.NodeService`.

use std::sync::Arc;

use hvagent_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::domain::xml::Emulation;
use crate::health::Health;
use crate::placement::PlacementState;
use crate::placement::provider::{self, Guests, ProviderInventory};

use crate::host::{self, Inventory, node::Node, sysfs::format_cpulist};

pub struct NodeApi {
    node: Arc<Node>,
    placement: Arc<PlacementState>,
    health: Arc<Health>,
    guests: Guests,
    drain: Option<Drain>,
}

/// What Drain needs: the guests, the mutation limit, this node's identity towards others.
struct Drain {
    vms: Arc<crate::guest::Guests>,
    mutations: super::Mutations,
    tls: Option<hvagent_core::tls::Files>,
}

/// How guests run here, as the Placement view names it: the daemon's emulation choice, or
/// `Unavailable` where it found none (KVM broken and `[libvirt] emulation = "forbid"`).
pub fn provider_guests(emulation: &Result<Emulation, String>) -> Guests {
    match emulation {
        Ok(Emulation::Kvm) => Guests::Kvm,
        Ok(Emulation::Tcg) => Guests::Emulated,
        Err(_) => Guests::Unavailable,
    }
}

impl NodeApi {
    pub fn new(
        node: Arc<Node>,
        placement: Arc<PlacementState>,
        health: Arc<Health>,
        emulation: &Result<Emulation, String>,
    ) -> Self {
        Self {
            node,
            placement,
            health,
            guests: provider_guests(emulation),
            drain: None,
        }
    }

    /// Serves Drain and Undrain over `vms`, reaching targets with `tls` (`[migration]`).
    pub fn with_drain(
        mut self,
        vms: Arc<crate::guest::Guests>,
        mutations: super::Mutations,
        tls: Option<hvagent_core::tls::Files>,
    ) -> Self {
        self.drain = Some(Drain {
            vms,
            mutations,
            tls,
        });
        self
    }

    fn drainer(&self) -> Result<&Drain, Status> {
        self.drain
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this agent serves no guests to drain"))
    }

    pub fn into_service(self) -> pb::node_service_server::NodeServiceServer<Self> {
        pb::node_service_server::NodeServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::node_service_server::NodeService for NodeApi {
    async fn get_inventory(
        &self,
        _request: Request<pb::GetInventoryRequest>,
    ) -> Result<Response<pb::Inventory>, Status> {
        let inventory = self
            .node
            .inventory()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        // The Placement view comes from the allocator's topology and policy, the same the
        // claims are made with.
        let view = provider::provider_inventory(&self.placement.lock(), &inventory, self.guests);
        Ok(Response::new(to_proto(&inventory, &view)))
    }

    async fn get_capacity(
        &self,
        request: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        super::placement::capacity(&self.placement, request.into_inner()).map(Response::new)
    }

    async fn get_health(
        &self,
        _request: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::Health>, Status> {
        Ok(Response::new(super::health::health_to_proto(
            &self.health.latest(),
        )))
    }

    type WatchHealthStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::Health, Status>> + Send>>;

    async fn watch_health(
        &self,
        request: Request<pb::WatchHealthRequest>,
    ) -> Result<Response<Self::WatchHealthStream>, Status> {
        let settings = self.health.settings();
        let asked = request.into_inner().interval_ms;
        let every = if asked == 0 {
            settings.interval
        } else {
            std::time::Duration::from_millis(u64::from(asked))
        };
        if every < settings.min_watch_interval {
            return Err(Status::invalid_argument(format!(
                "interval_ms: must be 0 (the sampling interval, {} ms) or at least {} ms ([health] min_watch_interval_ms), got {asked}",
                settings.interval.as_millis(),
                settings.min_watch_interval.as_millis()
            )));
        }
        let health = self.health.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let snapshot = super::health::health_to_proto(&health.latest());
                if tx.send(Ok(snapshot)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let d = self.drainer()?;
        let targets = request.into_inner().targets;
        let (vms, tls) = (d.vms.clone(), d.tls.clone());
        let report = d
            .mutations
            .run(
                async move {
                    // Refused before the node stops admitting: without an identity no guest
                    // could leave.
                    let tls = super::migration::TargetAgent::identity(tls)?;
                    for (i, t) in targets.iter().enumerate() {
                        if !t.trim().is_empty() {
                            hvagent_core::tls::dial::server_name(t).map_err(|e| {
                                crate::guest::GuestError::Invalid(format!("targets[{i}]: {e}"))
                            })?;
                        }
                    }
                    vms.drain(&targets, |t| {
                        let tls = tls.clone();
                        async move { super::migration::TargetAgent::connect(&t, &tls).await }
                    })
                    .await
                },
                super::guest::status,
            )
            .await?;
        Ok(Response::new(pb::DrainResponse {
            moved: report
                .moved
                .into_iter()
                .map(|m| pb::DrainedVm {
                    uuid: m.uuid,
                    target: m.target,
                    elapsed_ms: m.elapsed.as_millis() as u64,
                })
                .collect(),
            stayed: report
                .stayed
                .into_iter()
                .map(|s| pb::StayedVm {
                    uuid: s.uuid,
                    reason: s.reason,
                })
                .collect(),
        }))
    }

    async fn undrain(
        &self,
        _request: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::UndrainResponse>, Status> {
        let d = self.drainer()?;
        let vms = d.vms.clone();
        d.mutations
            .run(async move { vms.undrain().await }, super::guest::status)
            .await?;
        Ok(Response::new(pb::UndrainResponse {}))
    }
}

fn hugepages(pools: &[host::memory::HugepagePool]) -> Vec<pb::HugepagePool> {
    pools
        .iter()
        .map(|p| pb::HugepagePool {
            page_size_kib: p.page_size_kib,
            total: p.total,
            free: p.free,
        })
        .collect()
}

pub fn to_proto(inv: &Inventory, view: &ProviderInventory) -> pb::Inventory {
    let cpu = &inv.cpu;
    let hv = &inv.hypervisor;
    let scs = &inv.scs;
    pb::Inventory {
        hostname: inv.hostname.clone(),
        kernel_release: inv.kernel_release.clone(),
        cpu: Some(pb::Cpu {
            vendor: cpu.vendor.clone(),
            model_name: cpu.model_name.clone(),
            family: cpu.family,
            model: cpu.model,
            stepping: cpu.stepping,
            microcode: cpu.microcode.clone(),
            flags: cpu.flags.clone(),
            sockets: cpu.sockets,
            dies: cpu.dies,
            cores: cpu.cores,
            threads: cpu.threads,
            smt_active: cpu.smt_active,
            smt_control: cpu.smt_control.clone(),
            online: format_cpulist(&cpu.online),
            offline: format_cpulist(&cpu.offline),
            isolated: format_cpulist(&cpu.isolated),
            cpus: cpu
                .cpus
                .iter()
                .map(|c| pb::LogicalCpu {
                    id: c.id,
                    online: c.online,
                    isolated: c.isolated,
                    socket: c.socket,
                    die: c.die,
                    core: c.core,
                    siblings: c.siblings.clone(),
                    numa_node: c.numa_node,
                })
                .collect(),
            caches: cpu
                .caches
                .iter()
                .map(|c| pb::Cache {
                    level: c.level,
                    r#type: c.kind.clone(),
                    size_bytes: c.size_bytes,
                    ways: c.ways,
                    line_size_bytes: c.line_size_bytes,
                    cpus: c.cpus.clone(),
                })
                .collect(),
            vulnerabilities: cpu
                .vulnerabilities
                .iter()
                .map(|v| pb::Vulnerability {
                    name: v.name.clone(),
                    status: v.status.clone(),
                })
                .collect(),
            max_frequency_khz: cpu.max_frequency_khz,
        }),
        memory: Some(pb::Memory {
            total_bytes: inv.memory.total_bytes,
            available_bytes: inv.memory.available_bytes,
            ecc: inv.memory.ecc.as_str().to_string(),
            ecc_reason: inv.memory.ecc_reason.clone(),
            hugepages: hugepages(&inv.memory.hugepages),
        }),
        numa_nodes: inv
            .numa_nodes
            .iter()
            .map(|n| pb::NumaNode {
                id: n.id,
                cpus: n.cpus.clone(),
                memory_total_bytes: n.memory_total_bytes,
                memory_free_bytes: n.memory_free_bytes,
                distances: n.distances.clone(),
                hugepages: hugepages(&n.hugepages),
            })
            .collect(),
        block_devices: inv
            .block_devices
            .iter()
            .map(|d| pb::BlockDevice {
                name: d.name.clone(),
                size_bytes: d.size_bytes,
                model: d.model.clone(),
                rotational: d.rotational,
                nvme: d.nvme,
                removable: d.removable,
                scs_disk_class: d.scs_disk_class().to_string(),
            })
            .collect(),
        nics: inv
            .nics
            .iter()
            .map(|n| pb::Nic {
                name: n.name.clone(),
                driver: n.driver.clone(),
                mac: n.mac.clone(),
                mtu: n.mtu,
                speed_mbps: n.speed_mbps,
                link_up: n.link_up,
                numa_node: n.numa_node,
                sriov_total_vfs: n.sriov_total_vfs,
                sriov_num_vfs: n.sriov_num_vfs,
            })
            .collect(),
        gpus: inv
            .gpus
            .iter()
            .map(|g| pb::Gpu {
                pci_address: g.pci_address.clone(),
                vendor_id: g.vendor_id.clone(),
                device_id: g.device_id.clone(),
                numa_node: g.numa_node,
                driver: g.driver.clone(),
                scs_vendor: g.scs_vendor().map(String::from).unwrap_or_default(),
                passthrough: g.passthrough.reason().to_string(),
                iommu_group: g.passthrough.iommu_group(),
            })
            .collect(),
        infiniband_devices: inv.infiniband.iter().map(|d| d.name.clone()).collect(),
        infiniband: inv
            .infiniband
            .iter()
            .map(|d| pb::InfinibandDevice {
                name: d.name.clone(),
                pci_address: d.pci_address.clone(),
                passthrough: d.passthrough.reason().to_string(),
                iommu_group: d.passthrough.iommu_group(),
            })
            .collect(),
        mdev_types: inv
            .mdev_types
            .iter()
            .map(|t| pb::MdevType {
                parent: t.parent.clone(),
                type_id: t.type_id.clone(),
                name: t.name.clone(),
                available_instances: t.available_instances,
            })
            .collect(),
        hypervisor: Some(pb::Hypervisor {
            libvirt_version: hv.libvirt.libvirt_version.clone(),
            qemu_version: hv.libvirt.qemu_version.clone(),
            libvirt_uri: hv.libvirt.uri.clone(),
            libvirt_connected: hv.libvirt.connected(),
            libvirt_error: hv.libvirt.error.clone(),
            kvm: hv.kvm.state.as_str().to_string(),
            kvm_reason: hv.kvm.reason.clone(),
            nested_virtualization: hv.nested,
            nested_reason: hv.nested_reason.clone(),
            rdrand: hv.rdrand,
            rdseed: hv.rdseed,
            domain_types: hv.libvirt.domain_types.clone(),
            firmware: Some(pb::Firmware {
                uefi: hv.firmware.uefi,
                secure_boot: hv.firmware.secure_boot,
                vtpm: hv.firmware.vtpm,
                reason: hv.firmware.reason.clone(),
            }),
        }),
        scs: Some(pb::ScsFacts {
            cpu_brand: scs.cpu_brand.as_ref().map(|b| b.code()).unwrap_or_default(),
            cpu_brand_reason: scs.cpu_brand_reason.clone(),
            serves_secure: scs.serves_secure,
            serves_secure_reason: scs.serves_secure_reason.clone(),
            serves_ecc: scs.serves_ecc,
            serves_ecc_reason: scs.serves_ecc_reason.clone(),
            local_disk_classes: scs
                .local_disk_classes
                .iter()
                .map(|c| c.to_string())
                .collect(),
            serves_hwv: scs.serves_hwv,
            serves_gpu: scs.serves_gpu,
            serves_gpu_reason: scs.serves_gpu_reason.clone(),
            serves_ib: scs.serves_ib,
            serves_ib_reason: scs.serves_ib_reason.clone(),
        }),
        scheduler: Some(pb::SchedulerView {
            inventories: view
                .inventories
                .iter()
                .map(|r| pb::ResourceInventory {
                    resource_class: r.resource_class.clone(),
                    total: r.total,
                    reserved: r.reserved,
                    allocation_ratio: r.allocation_ratio,
                    min_unit: r.min_unit,
                    max_unit: r.max_unit,
                    step_size: r.step_size,
                })
                .collect(),
            traits: view.traits.clone(),
        }),
        warnings: inv.warnings.clone(),
    }
}
