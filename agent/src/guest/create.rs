//! Create: validate, decide (`plan`), then claim → disks and seed → taps → define and start,
//! each step recorded in an `Undo` that takes it back, in reverse, when a later one fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{GuestError, refused};
use super::plan::{
    Boot, CreatePlan, Placed, PlannedNic, extra_disks, firmware, guest_spec, guest_taps, host_taps,
    made_volume_name, meta_data, nic_intent,
};
use super::request::{CreateRequest, check_ram, root_disk_bytes, validate};
use super::{GIB, Guest, Guests, now_unix};
use crate::domain::guests::DomainError;
use crate::domain::volume_disk::DiskSource;
use crate::domain::xml::{NicAttach, domain_xml};
use crate::domain::{DomainState, Hypervisor};
use crate::flavor::FlavorSpec;
use crate::net::spec::NetworkSpec;
use crate::net::{Networks, nic};
use crate::placement::{Allocator, Claim, ClaimRequest, PlacementState};
use crate::storage::disks;
use crate::storage::{GuestFiles, ImageRecord, VolumeError};

/// What a create (or a migration's arrival) has done so far, undone in reverse when a later
/// step fails.
pub(super) struct Undo {
    pub hypervisor: Arc<dyn Hypervisor>,
    pub placement: Arc<PlacementState>,
    pub uuid: String,
    /// The agent's store: a domain is this create's only if its metadata names it.
    pub store: PathBuf,
    pub claimed: bool,
    pub files: Option<GuestFiles>,
    /// The boot volume made for the guest, by name, and the store it is in.
    pub volume: Option<(String, Arc<Guests>)>,
    /// The define was asked for (it may have failed, or found another domain in the way).
    pub defined: bool,
}

impl Undo {
    /// Whether libvirt holds a domain with this UUID that carries this agent's metadata for
    /// this store: one this create defined. A define refused because another domain has the
    /// UUID leaves that domain, which is not the agent's, alone.
    fn own_domain(&self) -> Result<bool, DomainError> {
        Ok(self
            .hypervisor
            .guests()?
            .iter()
            .any(|d| d.uuid == self.uuid && d.intent.as_ref().is_ok_and(|i| i.store == self.store)))
    }

    pub(super) fn run(self) {
        if self.defined {
            match self.own_domain() {
                Ok(false) => {}
                Ok(true) => {
                    if let Err(e) = self.hypervisor.remove(&self.uuid) {
                        // The domain stays, so its files and claim stay too: a guest without
                        // disks, or running on CPUs that placement hands out again, would be
                        // worse than one the operator deletes.
                        tracing::error!(vm = %self.uuid, error = %e, "undo: cannot remove the domain; keeping its files and claim");
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(vm = %self.uuid, error = %e, "undo: cannot tell whether the domain is this agent's; keeping it, its files and claim");
                    return;
                }
            }
        }
        if let Some(files) = self.files
            && let Err(e) = files.remove()
        {
            tracing::error!(vm = %self.uuid, error = %e, "undo: cannot remove the guest's files");
        }
        if let Some((name, guests)) = self.volume
            && let Err(e) = guests.volumes.delete(&name)
        {
            tracing::error!(vm = %self.uuid, volume = %name, error = %e, "undo: cannot remove the boot volume made for the guest");
        }
        if self.claimed {
            let _ = self.placement.lock().release(&self.uuid);
        }
    }
}

/// How the NIC of guest `uuid` with tap index `index` reaches network `name`: a tap in a
/// managed network's bridge, or else a host bridge of that name. `label` names the field in
/// the error.
pub(super) fn attach(
    networks: &Networks,
    uuid: &str,
    index: usize,
    name: &str,
    label: &str,
) -> Result<(NicAttach, Option<NetworkSpec>), GuestError> {
    if let Some(spec) = networks.managed(name) {
        return Ok((NicAttach::Tap(nic::tap_name(uuid, index)), Some(spec)));
    }
    if Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .is_dir()
    {
        return Ok((
            NicAttach::Bridge {
                bridge: name.to_string(),
                tap: nic::tap_name(uuid, index),
            },
            None,
        ));
    }
    Err(GuestError::NotFound(format!(
        "{label}: no network or bridge named {name:?} on this node"
    )))
}

fn bind_reservation(
    alloc: &mut Allocator,
    reservation: &str,
    uuid: &str,
    spec: &FlavorSpec,
    now: u64,
) -> Result<Claim, GuestError> {
    match alloc.vm_of_request(reservation) {
        Some(vm) if vm == uuid => {}
        Some(vm) => {
            return Err(GuestError::Precondition(format!(
                "reservation: {reservation:?} holds resources for VM {vm}, not {uuid}"
            )));
        }
        None => {
            return Err(GuestError::NotFound(format!(
                "reservation: no reservation {reservation:?} (expired or never made)"
            )));
        }
    }
    let claim = alloc.bind(reservation, now).map_err(refused)?;
    if claim.flavor != spec.name() {
        return Err(GuestError::Precondition(format!(
            "reservation: {reservation:?} is for flavor {}, not {}",
            claim.flavor,
            spec.name()
        )));
    }
    Ok(claim)
}

impl Guests {
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<Guest, GuestError> {
        let spec = validate(&req)?;
        let uuid = req.uuid.to_ascii_lowercase();
        let emulation = self.emulation.clone().map_err(GuestError::Precondition)?;
        // Until this create ends (domain defined, or undone) its image cannot be deleted...
        let _image_hold = if req.image.is_empty() {
            None
        } else {
            Some(self.images.hold(&req.image, &uuid)?)
        };
        // ...nor its boot volume be attached elsewhere or deleted (the in-use check holds).
        // Lock order everywhere: the attach lock, then the guest's busy mark.
        let _volume_hold = if req.boot_volume.is_empty() {
            None
        } else {
            Some(self.volumes.attach.lock().await)
        };
        let (image, firmware, boot, nics, _busy) = loop {
            let held = self.lock.lock().await;
            self.ensure_rebuilt(&held).await?;
            if let Some(mut done) = self.busy.in_flight(&uuid) {
                // Another create or delete of this UUID: answer after it, as it left things.
                drop(held);
                let _ = done.changed().await;
                continue;
            }
            if let Some(other) = self.busy.named(&req.name) {
                return Err(GuestError::AlreadyExists(format!(
                    "name: {:?} is taken by guest {other} (being created or deleted)",
                    req.name
                )));
            }
            if let Some(existing) = self.existing(&uuid, &req, &spec).await? {
                return existing;
            }
            self.refuse_foreign(&uuid).await?;
            let image = if req.image.is_empty() {
                None
            } else {
                Some(self.images.get(&req.image)?)
            };
            if let Some(image) = &image {
                check_ram(&spec, image)?;
            }
            let firmware = firmware(image.as_ref(), &self.firmware)?;
            let boot = self.boot(&req, &spec, &uuid, image.as_ref()).await?;
            let mut nics = Vec::new();
            for (i, name) in req.networks.iter().enumerate() {
                let (attach, network) =
                    attach(&self.networks, &uuid, i, name, &format!("networks[{i}]"))?;
                nics.push(PlannedNic {
                    attach,
                    network,
                    intent: nic_intent(&req, &uuid, i),
                });
            }
            break (
                image,
                firmware,
                boot,
                nics,
                self.busy.mark(&uuid, &req.name),
            );
        };
        // From here the guest is busy: no other call creates or deletes it, or takes its
        // name, while its disks, domain and start are made without holding the lock.
        let mut undo = Undo {
            hypervisor: self.hypervisor.clone(),
            placement: self.placement.clone(),
            uuid: uuid.clone(),
            store: self.storage_root.clone(),
            claimed: false,
            files: None,
            volume: None,
            defined: false,
        };
        let plan = CreatePlan {
            req: &req,
            uuid: &uuid,
            spec: &spec,
            image: image.as_ref(),
            boot: &boot,
            emulation,
            nics: &nics,
            firmware,
        };
        let result = self.create_steps(&plan, &mut undo).await;
        match result {
            Ok(guest) => Ok(guest),
            Err(e) => {
                tracing::warn!(vm = %uuid, error = %e, "create failed; undoing");
                if let Err(e) = self.networks.unplug_guest(&uuid).await {
                    tracing::error!(vm = %uuid, error = %e, "undo: cannot remove the guest's taps");
                }
                // Finished while the guest is still busy: no other call sees half a guest.
                self.blocking(move || {
                    undo.run();
                    Ok(())
                })
                .await?;
                Err(e)
            }
        }
    }

    /// What the guest boots from: its local root disk (flavors with a disk), the volume the
    /// request names (unused, not shareable), or else a volume made from the image.
    async fn boot(
        self: &Arc<Self>,
        req: &CreateRequest,
        spec: &FlavorSpec,
        uuid: &str,
        image: Option<&ImageRecord>,
    ) -> Result<Boot, GuestError> {
        if !req.boot_volume.is_empty() {
            let record = self.volumes.get(&req.boot_volume).map_err(|e| match e {
                VolumeError::NotFound(_) => GuestError::NotFound(format!(
                    "boot_volume: no volume {:?} on this node",
                    req.boot_volume
                )),
                other => other.into(),
            })?;
            if record.shareable {
                return Err(GuestError::Precondition(format!(
                    "boot_volume: volume {:?} is shareable; a guest boots only from a volume of its own",
                    record.name
                )));
            }
            let users = self.users(&record).await?;
            if !users.is_empty() {
                return Err(GuestError::Precondition(format!(
                    "boot_volume: volume {:?} is attached to guest {}",
                    record.name,
                    users.join(", ")
                )));
            }
            return Ok(Boot::Volume {
                source: self.volumes.disk_source(&record),
                format: if record.format == "raw" {
                    "raw"
                } else {
                    "qcow2"
                },
                bytes: record.size_bytes,
                name: record.name,
                made: false,
            });
        }
        // `validate` asks for an image when no boot volume is named.
        let image = image.ok_or_else(|| GuestError::Invalid("image: must not be empty".into()))?;
        let bytes = root_disk_bytes(spec, image)?;
        if spec.disk.is_some() {
            return Ok(Boot::Local { bytes });
        }
        let name = made_volume_name(uuid);
        match self.volumes.get(&name) {
            Err(VolumeError::NotFound(_)) => {}
            Ok(_) => {
                return Err(GuestError::AlreadyExists(format!(
                    "uuid: a volume {name:?} exists, the name of the boot volume this guest's flavor (without a disk) needs: delete it or give boot_volume"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Boot::Volume {
            source: DiskSource::File(self.volumes.file(&name, "qcow2")),
            format: "qcow2",
            bytes,
            name,
            made: true,
        })
    }

    /// A domain that is not this agent's guest but has this UUID: the create is refused
    /// before anything is taken, so that no define can overwrite it and no undo remove it.
    pub(super) async fn refuse_foreign(&self, uuid: &str) -> Result<(), GuestError> {
        if self.exists(uuid).await? {
            return Err(GuestError::AlreadyExists(format!(
                "uuid: {uuid} is a libvirt domain that is not this agent's guest"
            )));
        }
        Ok(())
    }

    /// What to answer for a create whose UUID or name is already in libvirt: the same guest
    /// again (idempotent), or `ALREADY_EXISTS`; `None` when both are free.
    async fn existing(
        &self,
        uuid: &str,
        req: &CreateRequest,
        spec: &FlavorSpec,
    ) -> Result<Option<Result<Guest, GuestError>>, GuestError> {
        for d in self.domains().await? {
            if d.uuid == uuid {
                let same = d.intent.as_ref().is_ok_and(|i| {
                    i.name == req.name
                        && i.flavor == spec.name()
                        && i.image == req.image
                        && i.networks == req.networks
                });
                return Ok(Some(if same {
                    self.view(d)
                        .ok_or_else(|| GuestError::Internal("guest vanished".into()))
                } else {
                    Err(GuestError::AlreadyExists(format!(
                        "uuid: guest {uuid} already exists with another name, flavor, image or networks"
                    )))
                }));
            }
            if d.name == req.name {
                return Err(GuestError::AlreadyExists(format!(
                    "name: {:?} is taken by guest {}",
                    req.name, d.uuid
                )));
            }
        }
        Ok(None)
    }

    async fn create_steps(
        self: &Arc<Self>,
        plan: &CreatePlan<'_>,
        undo: &mut Undo,
    ) -> Result<Guest, GuestError> {
        let CreatePlan {
            req,
            uuid,
            spec,
            image,
            boot,
            nics,
            ..
        } = *plan;
        // 1. Claim (or consume the caller's reservation).
        let placed = {
            let now = self.placement.now_ms();
            let mut alloc = self.placement.lock();
            let claim = if req.reservation.is_empty() {
                alloc
                    .claim(
                        &ClaimRequest {
                            vm_uuid: uuid.to_string(),
                            request_id: format!("create-{uuid}"),
                            flavor: spec.clone(),
                        },
                        now,
                    )
                    .map_err(refused)?
            } else {
                bind_reservation(&mut alloc, &req.reservation, uuid, spec, now)?
            };
            undo.claimed = true;
            Placed {
                vcpu_cpus: alloc.vcpu_cpus(&claim),
                emulator_cpus: alloc.emulator_cpus(&claim),
                claim,
            }
        };
        // 2. Disks and seed.
        let files = GuestFiles::new(&self.storage_root, uuid);
        let extra = extra_disks(spec, &files);
        let meta = meta_data(plan);
        // The boot disk to make on the image: the local root disk, or a volume made for the
        // guest (a volume given at Create is there already).
        let on_image = image.map(|i| (i.name.clone(), self.images.file(&i.name), i.format.clone()));
        let make = match boot {
            Boot::Local { bytes } => on_image.map(|i| (i, *bytes, None)),
            Boot::Volume {
                name,
                bytes,
                made: true,
                ..
            } => on_image.map(|i| (i, *bytes, Some(name.clone()))),
            Boot::Volume { made: false, .. } => None,
        };
        let user_data = req.user_data.clone();
        let network_config =
            disks::network_config(&nics.iter().map(|n| n.intent.clone()).collect::<Vec<_>>());
        let f = files.clone();
        undo.files = Some(files.clone());
        let this = self.clone();
        let u = uuid.to_string();
        let made = self.blocking(move || {
            f.create().map_err(GuestError::Disk)?;
            match make {
                Some(((_, base, base_format), bytes, None)) => {
                    disks::overlay(&f.root_disk(), &base, &base_format, bytes)
                        .map_err(GuestError::Disk)?;
                }
                Some(((image, base, base_format), bytes, Some(name))) => {
                    this.volumes.create_overlay(
                        &name,
                        (&image, &base, &base_format),
                        bytes,
                        &u,
                        now_unix(),
                    )?;
                    tracing::info!(vm = %u, volume = %name, image = %image, "made the boot volume from the image (the flavor has no disk)");
                }
                None => {}
            }
            for (path, size) in &extra {
                disks::blank(path, *size).map_err(GuestError::Disk)?;
            }
            disks::seed(&f.seed(), &meta, &user_data, &network_config).map_err(GuestError::Disk)
        })
        .await;
        // Also when a later step of the closure failed: the undo removes the volume made.
        if let Boot::Volume {
            name, made: true, ..
        } = boot
            && self.volumes.get(name).is_ok_and(|r| r.made_for == uuid)
        {
            undo.volume = Some((name.clone(), self.clone()));
        }
        made?;
        // 2b. Taps into managed networks' bridges.
        let taps = guest_taps(
            uuid,
            nics.iter().map(|n| (n.network.clone(), n.intent.clone())),
        );
        self.networks.plug(&taps).await?;
        // 3. Domain.
        let guest_spec = guest_spec(
            plan,
            placed,
            &files,
            &self.storage_root,
            &self.host_flags,
            now_unix(),
        );
        let xml = domain_xml(&guest_spec).map_err(GuestError::Xml)?;
        let hypervisor = self.hypervisor.clone();
        undo.defined = true;
        tracing::info!(vm = %uuid, "defining the domain");
        self.blocking(move || {
            hypervisor.define_and_start(&xml).map_err(|e| match e {
                DomainError::Libvirt(m) => {
                    GuestError::Precondition(format!("libvirt refused the guest: {m}"))
                }
                other => other.into(),
            })
        })
        .await?;
        self.networks.join(&taps).await?;
        let host_taps = host_taps(uuid, nics.iter().map(|n| (n.network.is_some(), &n.intent)));
        self.limit_host_taps(uuid, &host_taps).await?;
        let intent = guest_spec.intent;
        tracing::info!(vm = %uuid, name = %req.name, flavor = %intent.flavor, "created");
        if intent.claim.dedicated_cpus().next().is_some() {
            // The shared pool just lost CPUs: floating guests must leave them.
            self.repin_floating().await;
        } else {
            self.follow_pool(uuid, &intent.claim, &guest_spec.vcpu_cpus)
                .await;
        }
        Ok(Guest {
            uuid: uuid.to_string(),
            state: DomainState::Running,
            intent,
            root_disk_gb: match boot {
                Boot::Local { bytes } => bytes / GIB,
                Boot::Volume { .. } => 0,
            },
        })
    }
}
