//! NIC hot-plug: `AttachInterface` adds a NIC to a guest (running or not), `DetachInterface`
//! removes one, each with one libvirt call on the running guest and its definition at once,
//! so the NIC stays across stop and start.
//!
//! A NIC is known three ways: its entry in the intent (network, MAC, address, limits, and the
//! slot that names its tap), its tap (managed networks: the agent's; host bridges: libvirt's,
//! under the agent's name) and its `<interface>` in the domain XML. The steps go so that a
//! killed agent never leaves a tap or an `<interface>` without its intent entry:
//! - attach: intent entry → tap → `<interface>` (live and persistent);
//! - detach: `<interface>` (persistent at once, live when the guest releases it) → tap →
//!   intent entry.
//!
//! A killed attach or detach can so leave only an intent entry whose NIC is in neither XML;
//! the start-up pass [`Guests::settle_nics`] drops those, with their taps (libvirt's XML is
//! the truth, as for volumes).
//!
//! Tap names and derived MACs carry a slot (0-15), not the list position: a detach in the
//! middle moves the NICs after it up the list, and their slots (kept in the intent) keep
//! their taps' names. A new NIC takes the first slot free.

use std::time::{Duration, Instant};

use super::create::attach;
use super::error::GuestError;
use super::plan::HostTap;
use super::request::{NicFields, check_nic, checked_uuid};
use super::volume::{DETACH_WAIT, VolumeCallError};
use super::{Guest, Guests};
use crate::domain::DomainState;
use crate::domain::xml::{Intent, NicAttach, NicIntent, NicSpec, interface_xml};
use crate::net::{GuestTap, nic};

const DETACH_POLL: Duration = Duration::from_millis(200);

/// An AttachInterface request, as the API gives it ("" and 0: not given).
#[derive(Debug, Clone, Default)]
pub struct NicRequest {
    pub uuid: String,
    pub network: String,
    pub address: String,
    pub mac: String,
    pub ingress_kbps: u32,
    pub egress_kbps: u32,
}

/// The request's field for the name of Create's list (errors name AttachInterface's fields).
fn field(list: &str) -> String {
    match list {
        "networks" => "network",
        "addresses" => "address",
        "macs" => "mac",
        other => other,
    }
    .to_string()
}

/// The first slot no NIC of `nics` has; `None` when all [`nic::MAX_NICS`] are taken.
pub(super) fn free_slot(nics: &[NicIntent]) -> Option<usize> {
    (0..nic::MAX_NICS).find(|s| !nics.iter().enumerate().any(|(i, n)| n.slot_at(i) == *s))
}

/// `intent` with NIC `nic` in `network` added last.
pub(super) fn with_nic(intent: &Intent, network: &str, nic: NicIntent) -> Intent {
    let mut new = intent.clone();
    // Create's guests may have fewer NIC entries than networks (older intents): every
    // network gets its entry first, so that the new one lines up with its network.
    while new.nics.len() < new.networks.len() {
        new.nics.push(NicIntent::default());
    }
    new.networks.push(network.to_string());
    new.nics.push(nic);
    new
}

/// `intent` without the NIC at `position`. The NICs after it move up the list and so keep
/// their slots explicitly (their taps keep their names).
pub(super) fn without_nic(intent: &Intent, position: usize) -> Intent {
    let mut new = intent.clone();
    for (i, n) in new.nics.iter_mut().enumerate().skip(position + 1) {
        n.slot = Some(n.slot_at(i));
    }
    if position < new.nics.len() {
        new.nics.remove(position);
    }
    if position < new.networks.len() {
        new.networks.remove(position);
    }
    new
}

/// The MACs of the `<interface>` elements of a domain XML (lowercased), in order.
pub(super) fn interface_macs(xml: &str) -> Result<Vec<String>, String> {
    Ok(interface_list(xml)?
        .into_iter()
        .map(|(_, mac)| mac)
        .collect())
}

/// The `<interface>` elements of a domain XML, in order: their `type` (`ethernet` for a
/// managed network's tap, `bridge` for a host bridge) and MAC (lowercased).
pub(super) fn interface_list(xml: &str) -> Result<Vec<(String, String)>, String> {
    use quick_xml::events::{BytesStart, Event};
    let attribute = |e: &BytesStart, name: &str| -> Result<Option<String>, String> {
        Ok(e.try_get_attribute(name)
            .map_err(|e| e.to_string())?
            .and_then(|a| {
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .ok()
                    .map(|v| v.into_owned())
            }))
    };
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    // The type of the `<interface>` being read.
    let mut inside: Option<String> = None;
    loop {
        let (e, empty) = match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(e) => {
                if e.local_name().as_ref() == "interface" {
                    inside = None;
                }
                continue;
            }
            Event::Eof => return Ok(out),
            _ => continue,
        };
        match e.local_name().as_ref() {
            "interface" if !empty => inside = Some(attribute(&e, "type")?.unwrap_or_default()),
            "mac" => {
                if let (Some(kind), Some(mac)) = (&inside, attribute(&e, "address")?) {
                    out.push((kind.clone(), mac.to_ascii_lowercase()));
                }
            }
            _ => {}
        }
    }
}

/// A guest's NICs as libvirt has them: by MAC, as it runs and as it is defined.
struct Interfaces {
    live: Vec<String>,
    persistent: Vec<String>,
}

impl Interfaces {
    fn has(&self, mac: &str) -> (bool, bool) {
        (
            self.live.iter().any(|m| m == mac),
            self.persistent.iter().any(|m| m == mac),
        )
    }
}

/// The NICs of a domain XML of `uuid`.
fn parse_interfaces(uuid: &str, xml: &str) -> Result<Vec<String>, GuestError> {
    interface_macs(xml).map_err(|e| GuestError::Internal(format!("domain {uuid}: XML: {e}")))
}

impl Guests {
    /// Both XMLs of `uuid`, for their NICs.
    async fn interfaces(&self, uuid: &str) -> Result<Interfaces, GuestError> {
        let hypervisor = self.hypervisor.clone();
        let u = uuid.to_string();
        self.blocking(move || {
            Ok(Interfaces {
                live: parse_interfaces(&u, &hypervisor.live_xml(&u)?)?,
                persistent: parse_interfaces(&u, &hypervisor.inactive_xml(&u)?)?,
            })
        })
        .await
    }

    async fn write_intent(&self, uuid: &str, intent: Intent) -> Result<(), GuestError> {
        let hypervisor = self.hypervisor.clone();
        let u = uuid.to_string();
        self.blocking(move || Ok(hypervisor.set_intent(&u, &intent)?))
            .await
    }

    /// How NIC `position` of `intent` reaches its network now (the network as the intent
    /// names it; a managed network that is gone counts as a host bridge, whose tap libvirt
    /// removes itself).
    fn nic_spec(&self, uuid: &str, intent: &Intent, position: usize) -> NicSpec {
        let nic = intent.nics.get(position).cloned().unwrap_or_default();
        let network = intent.networks.get(position).cloned().unwrap_or_default();
        let tap = nic::tap_name(uuid, nic.slot_at(position));
        let attach = if self.networks.managed(&network).is_some() {
            NicAttach::Tap(tap)
        } else {
            NicAttach::Bridge {
                bridge: network,
                tap,
            }
        };
        NicSpec {
            attach,
            mac: nic.mac,
        }
    }

    /// Adds a NIC in `req.network` to guest `req.uuid`: into the running guest and its
    /// definition at once (a stopped guest: its definition). Its MAC is the one given, else
    /// derived from the UUID and the NIC's slot; its rate limits are applied as at Create.
    pub async fn attach_interface(&self, req: NicRequest) -> Result<Guest, GuestError> {
        let uuid = checked_uuid(&req.uuid)?;
        check_nic(
            &NicFields {
                network: &req.network,
                address: &req.address,
                mac: &req.mac,
                ingress_kbps: req.ingress_kbps,
                egress_kbps: req.egress_kbps,
            },
            &field,
        )?;
        let _busy = self.exclusive(&uuid).await?;
        let guest = self.get(&uuid).await?;
        let old = guest.intent.clone();
        let Some(slot) = free_slot(&old.nics).filter(|_| old.networks.len() < nic::MAX_NICS) else {
            return Err(GuestError::Precondition(format!(
                "network: guest {uuid} has {} NICs, the most a guest can have",
                nic::MAX_NICS
            )));
        };
        let mac = if req.mac.is_empty() {
            nic::format_mac(&nic::derived_mac(&uuid, slot))
        } else {
            req.mac.to_ascii_lowercase()
        };
        if old.nics.iter().any(|n| n.mac == mac) {
            return Err(GuestError::AlreadyExists(format!(
                "mac: guest {uuid} has a NIC with MAC {mac} already"
            )));
        }
        let found = self.interfaces(&uuid).await?;
        if found.has(&mac) != (false, false) {
            return Err(GuestError::Precondition(format!(
                "mac: guest {uuid} has a NIC with MAC {mac} that the agent did not attach (added outside it)"
            )));
        }
        let (how, managed) = attach(&self.networks, &uuid, slot, &req.network, "network")?;
        let intent = NicIntent {
            mac: mac.clone(),
            address: req.address.clone(),
            ingress_kbps: req.ingress_kbps,
            egress_kbps: req.egress_kbps,
            slot: Some(slot),
        };
        let started = Instant::now();
        // 1. The intent entry: whatever follows, a restarted agent knows the tap is the
        // guest's, and drops the entry if the NIC never reached libvirt.
        self.write_intent(&uuid, with_nic(&old, &req.network, intent))
            .await?;
        let tap = managed.map(|network| GuestTap {
            name: nic::tap_name(&uuid, slot),
            network,
            ingress_kbps: req.ingress_kbps,
            egress_kbps: req.egress_kbps,
        });
        let spec = NicSpec {
            attach: how,
            mac: mac.clone(),
        };
        // Whether libvirt has the NIC, for the undo: set once the attach call returned.
        let mut in_libvirt = false;
        let done = async {
            self.plug_and_attach(&uuid, tap.as_ref(), &spec).await?;
            in_libvirt = true;
            if guest.state != DomainState::ShutOff {
                self.open_nic(&uuid, slot, tap.as_ref(), &req).await?;
            }
            Ok::<(), GuestError>(())
        }
        .await;
        if let Err(e) = done {
            // Nothing of a NIC the call answers with an error stays: a caller that retries
            // would otherwise find the MAC taken by a NIC without its limits.
            tracing::warn!(vm = %uuid, %mac, error = %e, "NIC attach failed; undoing");
            if in_libvirt {
                let hypervisor = self.hypervisor.clone();
                let u = uuid.clone();
                let detach = move || {
                    let xml = interface_xml(&spec).map_err(GuestError::Xml)?;
                    Ok(hypervisor.detach_device(&u, &xml)?)
                };
                if let Err(e) = self.blocking(detach).await {
                    tracing::error!(vm = %uuid, %mac, error = %e, "undo: cannot detach the NIC (DetachInterface removes it)");
                }
            }
            let tap_name = nic::tap_name(&uuid, slot);
            if let Err(e) = self.networks.unplug(&tap_name).await {
                tracing::error!(vm = %uuid, tap = %tap_name, error = %e, "undo: cannot remove the tap");
            }
            if let Err(e) = self.write_intent(&uuid, old).await {
                // The start-up pass drops the entry (its NIC is in no XML).
                tracing::error!(vm = %uuid, %mac, error = %e, "undo: cannot write the intent back");
            }
            return Err(e);
        }
        tracing::info!(vm = %uuid, network = %req.network, %mac, slot, ms = started.elapsed().as_millis() as u64, "NIC attached");
        self.get(&uuid).await
    }

    /// Step 4 of an attach to a running guest, whose tap is open now: limits (libvirt resets
    /// qdiscs when it opens a tap) and, with networks elsewhere, the move into their namespace.
    async fn open_nic(
        &self,
        uuid: &str,
        slot: usize,
        tap: Option<&GuestTap>,
        req: &NicRequest,
    ) -> Result<(), GuestError> {
        match tap {
            Some(t) => Ok(self.networks.join(std::slice::from_ref(t)).await?),
            None if req.ingress_kbps > 0 || req.egress_kbps > 0 => {
                let host = HostTap {
                    name: nic::tap_name(uuid, slot),
                    ingress_kbps: req.ingress_kbps,
                    egress_kbps: req.egress_kbps,
                };
                self.limit_host_taps(uuid, std::slice::from_ref(&host))
                    .await
            }
            None => Ok(()),
        }
    }

    /// Steps 2 and 3 of an attach: the tap of a managed network, then the one libvirt call.
    async fn plug_and_attach(
        &self,
        uuid: &str,
        tap: Option<&GuestTap>,
        spec: &NicSpec,
    ) -> Result<(), GuestError> {
        if let Some(tap) = tap {
            self.networks.plug(std::slice::from_ref(tap)).await?;
        }
        let xml = interface_xml(spec).map_err(GuestError::Xml)?;
        let hypervisor = self.hypervisor.clone();
        let u = uuid.to_string();
        self.blocking(move || Ok(hypervisor.attach_device(&u, &xml)?))
            .await
    }

    /// Removes the NIC with `mac` from guest `uuid`: from its definition at once, from the
    /// running guest when it releases the device (waited for up to [`DETACH_WAIT`]), then its
    /// tap and its intent entry.
    pub async fn detach_interface(&self, uuid: &str, mac: &str) -> Result<Guest, VolumeCallError> {
        self.detach_nic_within(uuid, mac, DETACH_WAIT).await
    }

    /// [`Guests::detach_interface`], waiting `wait` for the guest to release the NIC.
    pub(super) async fn detach_nic_within(
        &self,
        uuid: &str,
        mac: &str,
        wait: Duration,
    ) -> Result<Guest, VolumeCallError> {
        let uuid = checked_uuid(uuid)?;
        nic::parse_mac(mac).map_err(|e| GuestError::Invalid(format!("mac: {e}")))?;
        let mac = mac.to_ascii_lowercase();
        let _busy = self.exclusive(&uuid).await?;
        let guest = self.get(&uuid).await?;
        let Some(position) = guest.intent.nics.iter().position(|n| n.mac == mac) else {
            return Err(GuestError::NotFound(format!(
                "mac: guest {uuid} has no NIC with MAC {mac}"
            ))
            .into());
        };
        let spec = self.nic_spec(&uuid, &guest.intent, position);
        let started = Instant::now();
        let (live, persistent) = self.interfaces(&uuid).await?.has(&mac);
        let running = guest.state != DomainState::ShutOff;
        if persistent || (live && running) {
            let xml = interface_xml(&spec).map_err(GuestError::Xml)?;
            let hypervisor = self.hypervisor.clone();
            let u = uuid.clone();
            self.blocking(move || {
                if persistent {
                    Ok(hypervisor.detach_device(&u, &xml)?)
                } else {
                    // A retry after the guest kept the NIC: ask it again (it may have missed
                    // the first request while booting), or the wait could only time out again.
                    Ok(hypervisor.detach_live(&u, &xml)?)
                }
            })
            .await?;
        }
        if live && running {
            self.wait_nic_released(&uuid, &mac, wait).await?;
        }
        self.drop_nic(&uuid, &guest.intent, position).await?;
        tracing::info!(vm = %uuid, %mac, ms = started.elapsed().as_millis() as u64, "NIC detached");
        Ok(self.get(&uuid).await?)
    }

    /// The last steps of a detach: the tap of NIC `position`, then its intent entry.
    async fn drop_nic(
        &self,
        uuid: &str,
        intent: &Intent,
        position: usize,
    ) -> Result<(), GuestError> {
        let slot = intent
            .nics
            .get(position)
            .map_or(position, |n| n.slot_at(position));
        // Managed networks' taps are the agent's; libvirt removes those it made, and an
        // absent tap is fine.
        self.networks.unplug(&nic::tap_name(uuid, slot)).await?;
        self.write_intent(uuid, without_nic(intent, position)).await
    }

    /// Waits (at most `wait`) until the running guest `uuid` has no NIC with `mac`.
    async fn wait_nic_released(
        &self,
        uuid: &str,
        mac: &str,
        wait: Duration,
    ) -> Result<(), VolumeCallError> {
        let deadline = Instant::now() + wait;
        loop {
            let hypervisor = self.hypervisor.clone();
            let u = uuid.to_string();
            let xml = self.blocking(move || Ok(hypervisor.live_xml(&u)?)).await?;
            let still = parse_interfaces(uuid, &xml)?.iter().any(|m| m == mac);
            if !still {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VolumeCallError::NotReleased(format!(
                    "mac: guest {uuid} has not released the NIC with MAC {mac} within {} s (no PCI hot-unplug); its definition is without it, and a later DetachInterface finishes the detach",
                    wait.as_secs()
                )));
            }
            tokio::time::sleep(DETACH_POLL).await;
        }
    }

    /// At start-up: the intent entries whose NIC is in neither XML of its guest (left by an
    /// attach or detach the agent did not live to finish) are dropped, with their taps.
    pub(super) async fn settle_nics(&self) {
        let domains = match self.domains().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the guests to settle their NICs");
                return;
            }
        };
        for d in domains {
            let Ok(intent) = d.intent else { continue };
            if let Err(e) = self.settle_guest_nics(&d.uuid, intent).await {
                tracing::warn!(vm = %d.uuid, error = %e, "cannot settle the guest's NICs");
            }
        }
    }

    async fn settle_guest_nics(&self, uuid: &str, mut intent: Intent) -> Result<(), GuestError> {
        let found = self.interfaces(uuid).await?;
        // From the last: dropping one moves only those after it.
        for position in (0..intent.nics.len()).rev() {
            let mac = intent.nics[position].mac.clone();
            if !mac.is_empty() && found.has(&mac) == (false, false) {
                tracing::warn!(vm = %uuid, %mac, "NIC in the intent but in no domain XML (an attach or detach cut short): dropped");
                self.drop_nic(uuid, &intent, position).await?;
                intent = without_nic(&intent, position);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
