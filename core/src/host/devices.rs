//! Devices a flavor can depend on: local block devices (SCS disk class), NICs, PCI GPUs and
//! InfiniBand adapters. Only devices backed by hardware (a `device` link in sysfs) are listed;
//! loop, zram, bridges and taps are the host's own plumbing.

use super::passthrough::{self, Passthrough};
use super::sysfs::SysRoot;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockDevice {
    pub name: String,
    pub size_bytes: u64,
    pub model: String,
    pub rotational: bool,
    pub nvme: bool,
    pub removable: bool,
}

impl BlockDevice {
    /// The SCS local-disk letter this device can back: `p` NVMe, `s` other solid state, `h`
    /// spinning. (Power-loss protection cannot be read from sysfs; operators vouch for it.)
    pub fn scs_disk_class(&self) -> char {
        if self.rotational {
            'h'
        } else if self.nvme {
            'p'
        } else {
            's'
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Nic {
    pub name: String,
    pub driver: String,
    pub mac: String,
    pub mtu: u32,
    pub speed_mbps: Option<u32>,
    pub link_up: bool,
    pub numa_node: Option<u32>,
    pub sriov_total_vfs: u32,
    pub sriov_num_vfs: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gpu {
    pub pci_address: String,
    pub vendor_id: String,
    pub device_id: String,
    pub numa_node: Option<u32>,
    pub driver: String,
    /// Whether it can be given to a guest whole (VFIO), or why not.
    pub passthrough: Passthrough,
}

/// An RDMA device with an InfiniBand port (a Mellanox HCA, PCI class 0x0207).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InfinibandDevice {
    /// The RDMA name, e.g. `mlx5_0`.
    pub name: String,
    /// Empty when the device has no PCI parent (a software RDMA device).
    pub pci_address: String,
    pub passthrough: Passthrough,
}

impl Gpu {
    /// SCS GPU vendor letter: N Nvidia, A AMD, I Intel.
    pub fn scs_vendor(&self) -> Option<char> {
        match self.vendor_id.as_str() {
            "0x10de" => Some('N'),
            "0x1002" => Some('A'),
            "0x8086" => Some('I'),
            _ => None,
        }
    }
}

/// sysfs reports "no NUMA affinity" as -1.
fn numa_node(sys: &SysRoot, rel: &str) -> Option<u32> {
    sys.read(rel)
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|n| u32::try_from(n).ok())
}

pub fn read_block_devices(sys: &SysRoot) -> Vec<BlockDevice> {
    sys.entries("sys/block", "")
        .into_iter()
        .filter(|name| sys.exists(&format!("sys/block/{name}/device")))
        .map(|name| {
            let base = format!("sys/block/{name}");
            BlockDevice {
                // `size` counts 512-byte sectors whatever the logical block size.
                size_bytes: sys.read_u64(&format!("{base}/size")).unwrap_or(0) * 512,
                model: sys
                    .read(&format!("{base}/device/model"))
                    .unwrap_or_default(),
                rotational: sys.read_u64(&format!("{base}/queue/rotational")) == Some(1),
                nvme: name.starts_with("nvme"),
                removable: sys.read_u64(&format!("{base}/removable")) == Some(1),
                name,
            }
        })
        .collect()
}

pub fn read_nics(sys: &SysRoot) -> Vec<Nic> {
    sys.entries("sys/class/net", "")
        .into_iter()
        .filter(|name| sys.exists(&format!("sys/class/net/{name}/device")))
        .map(|name| {
            let base = format!("sys/class/net/{name}");
            Nic {
                driver: sys
                    .link_name(&format!("{base}/device/driver"))
                    .unwrap_or_default(),
                mac: sys.read(&format!("{base}/address")).unwrap_or_default(),
                mtu: sys.read_u64(&format!("{base}/mtu")).unwrap_or(0) as u32,
                // Reading `speed` fails (EINVAL) or gives -1 when the link is down or unknown.
                speed_mbps: sys
                    .read(&format!("{base}/speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|s| u32::try_from(s).ok()),
                link_up: sys.read(&format!("{base}/operstate")).as_deref() == Some("up"),
                numa_node: numa_node(sys, &format!("{base}/device/numa_node")),
                sriov_total_vfs: sys
                    .read_u64(&format!("{base}/device/sriov_totalvfs"))
                    .unwrap_or(0) as u32,
                sriov_num_vfs: sys
                    .read_u64(&format!("{base}/device/sriov_numvfs"))
                    .unwrap_or(0) as u32,
                name,
            }
        })
        .collect()
}

/// PCI display controllers (class 0x03xxxx) and 3D/processing accelerators (0x12xxxx).
pub fn read_gpus(sys: &SysRoot) -> Vec<Gpu> {
    let dir = "sys/bus/pci/devices";
    sys.entries(dir, "")
        .into_iter()
        .filter_map(|addr| {
            let base = format!("{dir}/{addr}");
            let class = sys.read(&format!("{base}/class"))?;
            let is_gpu = class.starts_with("0x03") || class.starts_with("0x12");
            is_gpu.then(|| Gpu {
                vendor_id: sys.read(&format!("{base}/vendor")).unwrap_or_default(),
                device_id: sys.read(&format!("{base}/device")).unwrap_or_default(),
                numa_node: numa_node(sys, &format!("{base}/numa_node")),
                driver: sys.link_name(&format!("{base}/driver")).unwrap_or_default(),
                passthrough: passthrough::check(sys, &addr),
                pci_address: addr,
            })
        })
        .collect()
}

/// InfiniBand HCAs: RDMA devices with at least one InfiniBand port (RoCE adapters, Ethernet
/// link layer, also live in /sys/class/infiniband but are not InfiniBand), named by their PCI
/// function (the `device` link), plus PCI InfiniBand controllers (class 0x0207) that no host
/// driver holds: an HCA bound to vfio-pci for passthrough has no RDMA device any more, so its
/// class is all that says what it is (named by its PCI address).
pub fn read_infiniband(sys: &SysRoot) -> Vec<InfinibandDevice> {
    let mut found: Vec<InfinibandDevice> = sys
        .entries("sys/class/infiniband", "")
        .into_iter()
        .filter(|dev| {
            let ports = format!("sys/class/infiniband/{dev}/ports");
            sys.entries(&ports, "").iter().any(|port| {
                sys.read(&format!("{ports}/{port}/link_layer")).as_deref() == Some("InfiniBand")
            })
        })
        .map(|name| {
            let pci_address = sys
                .link_name(&format!("sys/class/infiniband/{name}/device"))
                .unwrap_or_default();
            let passthrough = if pci_address.is_empty() {
                Passthrough::Refused(format!("{name} has no PCI device"))
            } else {
                passthrough::check(sys, &pci_address)
            };
            InfinibandDevice {
                name,
                pci_address,
                passthrough,
            }
        })
        .collect();
    let dir = "sys/bus/pci/devices";
    for addr in sys.entries(dir, "") {
        let base = format!("{dir}/{addr}");
        let is_ib = sys
            .read(&format!("{base}/class"))
            .is_some_and(|c| c.starts_with("0x0207"));
        let driver = sys.link_name(&format!("{base}/driver"));
        let unclaimed = driver.is_none_or(|d| d == "vfio-pci" || d == "pci-stub");
        if is_ib && unclaimed && !found.iter().any(|d| d.pci_address == addr) {
            found.push(InfinibandDevice {
                name: addr.clone(),
                passthrough: passthrough::check(sys, &addr),
                pci_address: addr,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &std::path::Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn disk_classes() {
        let d = |rotational, nvme| BlockDevice {
            rotational,
            nvme,
            ..Default::default()
        };
        assert_eq!(d(true, false).scs_disk_class(), 'h');
        assert_eq!(d(false, false).scs_disk_class(), 's');
        assert_eq!(d(false, true).scs_disk_class(), 'p');
    }

    #[test]
    fn devices_from_tree() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "sys/block/nvme0n1/size", "2000\n");
        write(r, "sys/block/nvme0n1/queue/rotational", "0\n");
        write(r, "sys/block/nvme0n1/device/model", "Fast SSD  \n");
        write(r, "sys/block/loop0/size", "100\n");
        write(r, "sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        write(r, "sys/class/net/eth0/mtu", "9000\n");
        write(r, "sys/class/net/eth0/speed", "-1\n");
        write(r, "sys/class/net/eth0/operstate", "up\n");
        write(r, "sys/class/net/eth0/device/numa_node", "-1\n");
        write(r, "sys/class/net/eth0/device/sriov_totalvfs", "8\n");
        std::fs::create_dir_all(r.join("sys/drivers/ixgbe")).unwrap();
        std::os::unix::fs::symlink(
            "../../../drivers/ixgbe",
            r.join("sys/class/net/eth0/device/driver"),
        )
        .unwrap();
        write(r, "sys/class/net/br0/mtu", "1500\n");
        write(r, "sys/bus/pci/devices/0000:3b:00.0/class", "0x030200\n");
        write(r, "sys/bus/pci/devices/0000:3b:00.0/vendor", "0x10de\n");
        write(r, "sys/bus/pci/devices/0000:3b:00.0/numa_node", "1\n");
        write(r, "sys/bus/pci/devices/0000:00:01.0/class", "0x020000\n");
        // An HCA bound to vfio-pci (no RDMA device), and the one mlx5_0 is (a host driver).
        write(r, "sys/bus/pci/devices/0000:af:00.0/class", "0x020700\n");
        write(r, "sys/bus/pci/devices/0000:5e:00.0/class", "0x020700\n");
        std::fs::create_dir_all(r.join("sys/bus/pci/devices/0000:5e:00.0")).unwrap();
        std::os::unix::fs::symlink(
            "../../../bus/pci/drivers/mlx5_core",
            r.join("sys/bus/pci/devices/0000:5e:00.0/driver"),
        )
        .unwrap();
        write(
            r,
            "sys/class/infiniband/mlx5_0/ports/1/link_layer",
            "InfiniBand\n",
        );
        std::os::unix::fs::symlink(
            "../../../devices/pci0000:5d/0000:5d:00.0/0000:5e:00.0",
            r.join("sys/class/infiniband/mlx5_0/device"),
        )
        .unwrap();
        write(
            r,
            "sys/class/infiniband/mlx5_1/ports/1/link_layer",
            "Ethernet\n",
        );
        let sys = SysRoot::new(r);

        let disks = read_block_devices(&sys);
        assert_eq!(disks.len(), 1, "loop devices are not hardware");
        assert_eq!(disks[0].size_bytes, 2000 * 512);
        assert_eq!(disks[0].model, "Fast SSD");
        assert_eq!(disks[0].scs_disk_class(), 'p');

        let nics = read_nics(&sys);
        assert_eq!(nics.len(), 1, "bridges are not hardware");
        assert_eq!(nics[0].driver, "ixgbe");
        assert_eq!(nics[0].mtu, 9000);
        assert_eq!(nics[0].speed_mbps, None);
        assert_eq!(nics[0].numa_node, None);
        assert!(nics[0].link_up);
        assert_eq!(nics[0].sriov_total_vfs, 8);

        let gpus = read_gpus(&sys);
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].scs_vendor(), Some('N'));
        assert_eq!(gpus[0].numa_node, Some(1));
        assert_eq!(gpus[0].pci_address, "0000:3b:00.0");

        assert!(
            gpus[0].passthrough.reason().starts_with("no IOMMU"),
            "{:?}",
            gpus[0].passthrough
        );

        let ib = read_infiniband(&sys);
        let names: Vec<(&str, &str)> = ib
            .iter()
            .map(|d| (d.name.as_str(), d.pci_address.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![("mlx5_0", "0000:5e:00.0"), ("0000:af:00.0", "0000:af:00.0")],
            "RoCE is not InfiniBand; an HCA bound to a host driver is counted once"
        );
        assert!(ib[0].passthrough.reason().starts_with("no IOMMU"));
    }
}
