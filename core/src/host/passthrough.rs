//! Whether the host can hand a PCI device to a guest whole, through VFIO, and the mediated
//! device (vGPU) types it offers. Read from sysfs below a root, like every other reader.
//!
//! The rules, checked in this order (the first that fails is the reason):
//! 1. An IOMMU is on: `/sys/kernel/iommu_groups/` is not empty.
//! 2. The device is in an IOMMU group (its `iommu_group` link).
//! 3. `vfio-pci` is loaded (`/sys/bus/pci/drivers/vfio-pci` or `/sys/module/vfio_pci`) or can be
//!    loaded (named in `/lib/modules/<release>/modules.dep` or `modules.builtin`): libvirt's
//!    managed mode loads it and binds the device to it.
//! 4. The device is bound to nothing, `vfio-pci` or `pci-stub`. A device a host driver holds
//!    (nvidia, amdgpu, mlx5_core, ...) may be driving the console or host workloads; the
//!    operator hands it over (`driverctl set-override <address> vfio-pci`), the agent never
//!    takes it from the host.
//! 5. Every other device of its IOMMU group is bound to nothing, `vfio-pci`, `pci-stub`, or is a
//!    PCIe port (`pcieport`): VFIO assigns whole groups and refuses a group another host driver
//!    holds a part of.

use super::sysfs::SysRoot;

/// Drivers that leave a device free for assignment.
const FREE_DRIVERS: [&str; 2] = ["vfio-pci", "pci-stub"];
/// The PCIe port driver: VFIO tolerates bridges in an assigned group.
const BRIDGE_DRIVER: &str = "pcieport";

/// What the host can do with one PCI device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passthrough {
    /// The device can be assigned to a guest.
    Ready { iommu_group: u32 },
    /// Why it cannot.
    Refused(String),
}

impl Default for Passthrough {
    fn default() -> Self {
        Passthrough::Refused("not checked".into())
    }
}

impl Passthrough {
    pub fn ready(&self) -> bool {
        matches!(self, Passthrough::Ready { .. })
    }

    /// `"ok"`, or why the device cannot be passed through.
    pub fn reason(&self) -> &str {
        match self {
            Passthrough::Ready { .. } => "ok",
            Passthrough::Refused(why) => why,
        }
    }

    pub fn iommu_group(&self) -> Option<u32> {
        match self {
            Passthrough::Ready { iommu_group } => Some(*iommu_group),
            Passthrough::Refused(_) => None,
        }
    }
}

/// Checks the PCI device at `address` (`0000:3b:00.0`) against the rules above.
pub fn check(sys: &SysRoot, address: &str) -> Passthrough {
    match check_rules(sys, address) {
        Ok(iommu_group) => Passthrough::Ready { iommu_group },
        Err(why) => Passthrough::Refused(why),
    }
}

fn check_rules(sys: &SysRoot, address: &str) -> Result<u32, String> {
    let groups = "sys/kernel/iommu_groups";
    if sys.entries(groups, "").is_empty() {
        return Err(format!(
            "no IOMMU: /{groups} is empty (turn on VT-d or AMD-Vi in the firmware and boot \
             with intel_iommu=on or amd_iommu=on)"
        ));
    }
    let device = format!("sys/bus/pci/devices/{address}");
    let group = sys
        .link_name(&format!("{device}/iommu_group"))
        .and_then(|g| g.parse::<u32>().ok())
        .ok_or_else(|| format!("no IOMMU group: {address} has no iommu_group link"))?;
    if !vfio_available(sys) {
        return Err(
            "vfio-pci not available: not loaded (no /sys/bus/pci/drivers/vfio-pci or \
             /sys/module/vfio_pci) and not in this kernel's modules.dep or modules.builtin"
                .into(),
        );
    }
    if let Some(driver) = driver(sys, address)
        && !FREE_DRIVERS.contains(&driver.as_str())
    {
        return Err(format!(
            "in use by driver {driver}: bind {address} to vfio-pci to offer it \
             (driverctl set-override {address} vfio-pci)"
        ));
    }
    for peer in sys.entries(&format!("{groups}/{group}/devices"), "") {
        if peer == address {
            continue;
        }
        if let Some(driver) = driver(sys, &peer)
            && !FREE_DRIVERS.contains(&driver.as_str())
            && driver != BRIDGE_DRIVER
        {
            return Err(format!(
                "IOMMU group {group} also holds {peer}, in use by driver {driver}; VFIO \
                 assigns whole groups: bind {peer} to vfio-pci too"
            ));
        }
    }
    Ok(group)
}

fn driver(sys: &SysRoot, address: &str) -> Option<String> {
    sys.link_name(&format!("sys/bus/pci/devices/{address}/driver"))
}

/// vfio-pci is loaded, or the running kernel has it as a module or built in.
fn vfio_available(sys: &SysRoot) -> bool {
    if sys.exists("sys/bus/pci/drivers/vfio-pci") || sys.exists("sys/module/vfio_pci") {
        return true;
    }
    let Some(release) = sys.read("proc/sys/kernel/osrelease") else {
        return false;
    };
    ["modules.dep", "modules.builtin"].iter().any(|file| {
        sys.read(&format!("lib/modules/{release}/{file}"))
            .is_some_and(|list| list.lines().any(|l| l.contains("/vfio-pci.ko")))
    })
}

/// Whether any of `devices` ((PCI address, verdict)) can be passed through, and a line saying
/// so: `"1 of 2 GPUs can be passed through"`, or each device's reason.
pub fn summary<'a>(
    what: &str,
    devices: impl Iterator<Item = (&'a str, &'a Passthrough)>,
) -> (bool, String) {
    let devices: Vec<_> = devices.collect();
    let ready = devices.iter().filter(|(_, p)| p.ready()).count();
    if devices.is_empty() {
        (false, format!("no {what}"))
    } else if ready > 0 {
        (
            true,
            format!("{ready} of {} {what}s can be passed through", devices.len()),
        )
    } else {
        let why: Vec<String> = devices
            .iter()
            .map(|(address, p)| format!("{address}: {}", p.reason()))
            .collect();
        (false, why.join("; "))
    }
}

/// A mediated device type a parent device (a vGPU-capable GPU) offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MdevType {
    /// PCI address of the parent device.
    pub parent: String,
    /// The type's directory name, e.g. `nvidia-63`.
    pub type_id: String,
    /// The type's human name (`name` file), e.g. `GRID T4-1Q`; empty when the driver gives none.
    pub name: String,
    pub available_instances: u64,
}

/// Every `/sys/class/mdev_bus/<parent>/mdev_supported_types/<type>`.
pub fn read_mdev_types(sys: &SysRoot) -> Vec<MdevType> {
    let bus = "sys/class/mdev_bus";
    sys.entries(bus, "")
        .into_iter()
        .flat_map(|parent| {
            let types = format!("{bus}/{parent}/mdev_supported_types");
            sys.entries(&types, "")
                .into_iter()
                .map(|type_id| {
                    let base = format!("{types}/{type_id}");
                    MdevType {
                        name: sys.read(&format!("{base}/name")).unwrap_or_default(),
                        available_instances: sys
                            .read_u64(&format!("{base}/available_instances"))
                            .unwrap_or(0),
                        parent: parent.clone(),
                        type_id,
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
#[path = "passthrough/tests.rs"]
mod tests;
