//! Whole PCI devices a guest is given (GPUs, InfiniBand HCAs): one free flag per device of the
//! topology's list, in the same order. Only devices that can be passed through are ever picked.

use super::super::claim::Refusal;
use super::super::topology::Topology;
use super::Ledger;

/// A kind of device the ledger hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in super::super) enum Kind {
    Gpu,
    Infiniband,
}

impl Kind {
    /// The topology's devices of this kind, in order: (PCI address, can be picked for
    /// `vendor`: it can be passed through and, for a GPU, is of that SCS vendor).
    fn devices(self, topo: &Topology, vendor: Option<char>) -> Vec<(&String, bool)> {
        let facts = &topo.facts;
        match self {
            Kind::Gpu => facts
                .gpus
                .iter()
                .map(|g| {
                    let fits = g.passthrough.ready() && vendor.is_none_or(|v| v == g.vendor);
                    (&g.pci_address, fits)
                })
                .collect(),
            Kind::Infiniband => facts
                .infiniband
                .iter()
                .map(|d| (&d.pci_address, d.passthrough.ready()))
                .collect(),
        }
    }

    fn class(self) -> &'static str {
        match self {
            Kind::Gpu => "GPU",
            Kind::Infiniband => "InfiniBand",
        }
    }
}

impl Ledger {
    fn free_flags(&self, kind: Kind) -> &Vec<bool> {
        match kind {
            Kind::Gpu => &self.gpu_free,
            Kind::Infiniband => &self.ib_free,
        }
    }

    fn free_flags_mut(&mut self, kind: Kind) -> &mut Vec<bool> {
        match kind {
            Kind::Gpu => &mut self.gpu_free,
            Kind::Infiniband => &mut self.ib_free,
        }
    }

    /// The address of a free device of `kind` (of SCS vendor `vendor` for GPUs).
    pub(super) fn pick_device(
        &self,
        topo: &Topology,
        kind: Kind,
        vendor: Option<char>,
    ) -> Result<String, Refusal> {
        kind.devices(topo, vendor)
            .into_iter()
            .zip(self.free_flags(kind))
            .find(|((_, fits), free)| *fits && **free)
            .map(|((address, _), _)| address.clone())
            .ok_or_else(|| {
                let what = match vendor {
                    Some(v) => format!("every {v} {} of this node", kind.class()),
                    None => format!("every {} device of this node", kind.class()),
                };
                Refusal::exhausted(
                    kind.class(),
                    format!("{what} that can be passed through is taken"),
                )
            })
    }

    /// The free flags with `addresses` taken, or the first address that is not free.
    pub(super) fn take_devices(
        &self,
        topo: &Topology,
        kind: Kind,
        addresses: &[String],
    ) -> Result<Vec<bool>, String> {
        let mut free = self.free_flags(kind).clone();
        for address in addresses {
            match kind
                .devices(topo, None)
                .iter()
                .position(|(a, _)| *a == address)
            {
                Some(i) if free[i] => free[i] = false,
                _ => return Err(address.clone()),
            }
        }
        Ok(free)
    }

    pub(super) fn set_free_flags(&mut self, kind: Kind, free: Vec<bool>) {
        *self.free_flags_mut(kind) = free;
    }

    /// Marks `addresses` free again.
    pub(super) fn give_back_devices(&mut self, topo: &Topology, kind: Kind, addresses: &[String]) {
        for address in addresses {
            if let Some(i) = kind
                .devices(topo, None)
                .iter()
                .position(|(a, _)| *a == address)
            {
                self.free_flags_mut(kind)[i] = true;
            }
        }
    }
}

#[cfg(test)]
#[path = "devices/tests.rs"]
mod tests;
