//! The node's hardware inventory, read from a root directory (`/` or a captured fixture tree)
//! plus the facts only libvirt and a KVM trial can give. Reading is pure apart from file reads:
//! the same tree always gives the same inventory.

pub mod cpu;
pub mod devices;
pub mod firmware;
pub mod kvm;
pub mod memory;
pub mod passthrough;
pub mod scheduler;
pub mod scs;
pub mod sysfs;

use std::path::Path;

pub use cpu::CpuInfo;
pub use devices::{BlockDevice, Gpu, InfinibandDevice, Nic};
pub use firmware::FirmwareFacts;
pub use kvm::{KvmState, KvmVerdict};
pub use memory::{MemoryInfo, NumaNode};
pub use passthrough::{MdevType, Passthrough};
pub use scheduler::ResourceInventory;
pub use scs::CpuBrand;
use sysfs::SysRoot;

/// What libvirt says about itself; `None` fields when it could not be asked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LibvirtFacts {
    pub uri: String,
    pub libvirt_version: String,
    pub qemu_version: String,
    pub domain_types: Vec<String>,
    /// Why libvirt could not be asked; empty when it answered.
    pub error: String,
}

impl LibvirtFacts {
    pub fn connected(&self) -> bool {
        self.error.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HypervisorFacts {
    pub libvirt: LibvirtFacts,
    pub kvm: KvmVerdict,
    pub nested: bool,
    pub nested_reason: String,
    pub rdrand: bool,
    pub rdseed: bool,
    /// UEFI, Secure Boot and vTPM as guests can get them here.
    pub firmware: FirmwareFacts,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScsFacts {
    pub cpu_brand: Option<CpuBrand>,
    pub cpu_brand_reason: String,
    pub serves_secure: bool,
    pub serves_secure_reason: String,
    pub serves_ecc: bool,
    pub serves_ecc_reason: String,
    pub local_disk_classes: Vec<char>,
    pub serves_hwv: bool,
    /// Some GPU can be passed through (`_GN...` flavors), or why none can.
    pub serves_gpu: bool,
    pub serves_gpu_reason: String,
    /// Some InfiniBand HCA can be passed through (`_ib`), or why none can.
    pub serves_ib: bool,
    pub serves_ib_reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub hostname: String,
    pub kernel_release: String,
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    pub numa_nodes: Vec<NumaNode>,
    pub block_devices: Vec<BlockDevice>,
    pub nics: Vec<Nic>,
    pub gpus: Vec<Gpu>,
    pub infiniband: Vec<InfinibandDevice>,
    /// Mediated device (vGPU) types the devices offer; listed, not assigned.
    pub mdev_types: Vec<MdevType>,
    pub hypervisor: HypervisorFacts,
    pub scs: ScsFacts,
    /// Size of the filesystem holding the storage root, when it could be measured.
    pub storage_disk_bytes: Option<u64>,
    pub warnings: Vec<String>,
}

/// The inputs that do not come from the sysfs/procfs tree.
#[derive(Debug, Clone)]
pub struct ExternalFacts {
    pub libvirt: LibvirtFacts,
    pub kvm: KvmVerdict,
    pub storage_disk_bytes: Option<u64>,
}

/// Reads the inventory of the tree at `root`.
pub fn read(root: &Path, external: ExternalFacts) -> Inventory {
    let sys = SysRoot::new(root);
    let memory = memory::read(&sys);
    // NUMA first: the CPUs need their node, the fallback node needs the online CPUs.
    let online = cpu::read_online(&sys);
    let numa_nodes = memory::read_numa(&sys, &memory, &online);
    let cpu = cpu::read(&sys, &online, &memory::cpu_to_node(&numa_nodes));
    let block_devices = devices::read_block_devices(&sys);

    let (nested, nested_reason) = nested(&sys, &cpu);
    let hypervisor = HypervisorFacts {
        rdrand: cpu.has_flag("rdrand"),
        rdseed: cpu.has_flag("rdseed"),
        libvirt: external.libvirt,
        kvm: external.kvm,
        nested,
        nested_reason,
        firmware: firmware::read(&sys),
    };

    let (cpu_brand, cpu_brand_reason) = scs::cpu_brand(&cpu);
    let (serves_secure, serves_secure_reason) = scs::serves_secure(&cpu);
    let (serves_ecc, serves_ecc_reason) = scs::serves_ecc(&memory);
    let mut local_disk_classes: Vec<char> =
        block_devices.iter().map(|d| d.scs_disk_class()).collect();
    local_disk_classes.sort_unstable();
    local_disk_classes.dedup();
    let gpus = devices::read_gpus(&sys);
    let infiniband = devices::read_infiniband(&sys);
    let (serves_gpu, serves_gpu_reason) = passthrough::summary(
        "GPU",
        // Only GPUs a flavor can name (SCS vendors): not a BMC's or QEMU's VGA.
        gpus.iter()
            .filter(|g| g.scs_vendor().is_some())
            .map(|g| (g.pci_address.as_str(), &g.passthrough)),
    );
    let (serves_ib, serves_ib_reason) = passthrough::summary(
        "InfiniBand HCA",
        infiniband
            .iter()
            .map(|d| (d.pci_address.as_str(), &d.passthrough)),
    );
    let scs = ScsFacts {
        cpu_brand,
        cpu_brand_reason,
        serves_secure,
        serves_secure_reason,
        serves_ecc,
        serves_ecc_reason,
        local_disk_classes,
        // A guest can only see vmx/svm if the host runs it under working KVM with nesting on.
        serves_hwv: hypervisor.kvm.state == KvmState::Usable && hypervisor.nested,
        serves_gpu,
        serves_gpu_reason,
        serves_ib,
        serves_ib_reason,
    };

    let mut warnings = Vec::new();
    if cpu.cpus.is_empty() {
        warnings.push("cpu: no CPUs found under /sys/devices/system/cpu".to_string());
    }
    if memory.total_bytes == 0 {
        warnings.push("memory: no MemTotal in /proc/meminfo".to_string());
    }
    if !hypervisor.libvirt.connected() {
        warnings.push(format!("libvirt: {}", hypervisor.libvirt.error));
    }

    Inventory {
        hostname: sys.read("proc/sys/kernel/hostname").unwrap_or_default(),
        kernel_release: sys.read("proc/sys/kernel/osrelease").unwrap_or_default(),
        gpus,
        nics: devices::read_nics(&sys),
        infiniband,
        mdev_types: passthrough::read_mdev_types(&sys),
        cpu,
        memory,
        numa_nodes,
        block_devices,
        hypervisor,
        scs,
        storage_disk_bytes: external.storage_disk_bytes,
        warnings,
    }
}

/// Nested virtualization is a kvm_intel/kvm_amd module parameter (`Y`/`1`).
fn nested(sys: &SysRoot, cpu: &CpuInfo) -> (bool, String) {
    for module in ["kvm_intel", "kvm_amd"] {
        let file = format!("sys/module/{module}/parameters/nested");
        if let Some(value) = sys.read(&file) {
            let on = matches!(value.as_str(), "Y" | "y" | "1");
            return (on, format!("/{file} is {value}"));
        }
    }
    let ext = if cpu.has_flag("vmx") {
        "vmx"
    } else if cpu.has_flag("svm") {
        "svm"
    } else {
        return (false, "the CPU has neither vmx nor svm".into());
    };
    (
        false,
        format!("the CPU has {ext} but neither kvm_intel nor kvm_amd is loaded"),
    )
}
