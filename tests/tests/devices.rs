//! GPU and InfiniBand flavors on the real agent over its Unix socket: refused at admission and
//! in GetCapacity with the host's reason where no device can be passed through (this machine,
//! and a captured tree with a GPU and an HCA but no IOMMU), offered where one can (a tree with
//! a GPU and an HCA on vfio-pci), and a create that libvirt fails after the GPU was claimed
//! gives it back. Device trees: `agent/tests/fixtures/devices-*` laid over the captured
//! 2-socket NUMA host.

mod common;

use std::path::Path;

use common::{Agent, claims, domain_exists, import_testguest, listed, repo_root, runtime};
use hvagent_proto::v1 as pb;
use tonic::Code;

const GPU: &str = "SCS-1Vi-1u_GN";
const IB: &str = "SCS-1Vi-1u_ib";

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-de71ce{n:06x}")
}

/// Removes the test's domains from libvirt whatever happened.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for u in &self.0 {
            for args in [
                vec!["destroy", u.as_str()],
                vec!["undefine", u.as_str(), "--nvram"],
            ] {
                let _ = std::process::Command::new("virsh")
                    .args(["-c", "qemu:///system"])
                    .args(&args)
                    .output();
            }
        }
    }
}

/// The captured NUMA host with device fixture `devices` laid over it, in `dir`.
fn host_tree(dir: &Path, devices: &str) -> std::path::PathBuf {
    let fixtures = repo_root().join("agent/tests/fixtures");
    let root = dir.join("host");
    std::fs::create_dir_all(&root).unwrap();
    for part in ["qemu-2s4c2t-numa", devices] {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(fixtures.join(part).join("."))
            .arg(&root)
            .status()
            .unwrap();
        assert!(status.success(), "cp {part}");
    }
    root
}

/// A TCG agent reading `sysfs_root` (or this machine's own tree).
fn agent(sysfs_root: Option<&Path>) -> Agent {
    let agent = Agent::configure_tcg("", "");
    if let Some(root) = sysfs_root {
        let text = std::fs::read_to_string(&agent.config).unwrap();
        let line = format!("[host]\nsysfs_root = \"{}\"\n", root.display());
        std::fs::write(&agent.config, text.replacen("[host]\n", &line, 1)).unwrap();
    }
    agent.spawn()
}

struct Clients {
    node: pb::node_service_client::NodeServiceClient<tonic::transport::Channel>,
    vms: pb::vm_service_client::VmServiceClient<tonic::transport::Channel>,
    placement: pb::placement_service_client::PlacementServiceClient<tonic::transport::Channel>,
    channel: tonic::transport::Channel,
}

impl Clients {
    async fn new(agent: &Agent) -> Clients {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        Clients {
            node: pb::node_service_client::NodeServiceClient::new(channel.clone()),
            vms: pb::vm_service_client::VmServiceClient::new(channel.clone()),
            placement: pb::placement_service_client::PlacementServiceClient::new(channel.clone()),
            channel,
        }
    }

    async fn capacity(&mut self, flavor: &str) -> pb::FlavorCapacity {
        self.node
            .get_capacity(pb::GetCapacityRequest {
                flavors: vec![flavor.into()],
            })
            .await
            .unwrap()
            .into_inner()
            .flavors
            .remove(0)
    }

    async fn inventory(&mut self) -> pb::Inventory {
        self.node
            .get_inventory(pb::GetInventoryRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    async fn create(&mut self, n: u32, flavor: &str) -> Result<pb::Vm, tonic::Status> {
        self.vms
            .create(pb::CreateVmRequest {
                uuid: uuid(n),
                name: format!("devices-{n}"),
                flavor: flavor.into(),
                image: "testguest".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Capacity says refused with `reason`, and a create is refused with it and leaves nothing.
    async fn assert_refused(&mut self, n: u32, flavor: &str, limited_by: &str, reason: &str) {
        let c = self.capacity(flavor).await;
        assert_eq!(
            (c.more, c.limited_by.as_str(), c.reason.as_str()),
            (0, limited_by, reason),
            "{flavor}"
        );
        let status = self.create(n, flavor).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{flavor}: {status:?}"
        );
        assert!(
            status.message().contains(reason),
            "{flavor}: {}",
            status.message()
        );
        assert!(listed(&mut self.vms).await.is_empty(), "{flavor}");
        assert!(claims(&mut self.placement).await.is_empty(), "{flavor}");
        assert!(!domain_exists(&uuid(n)), "{flavor}");
    }
}

const NO_IOMMU: &str = "no IOMMU: /sys/kernel/iommu_groups is empty (turn on VT-d or AMD-Vi \
                        in the firmware and boot with intel_iommu=on or amd_iommu=on)";

#[test]
fn this_machine_refuses_gpu_and_ib_flavors_with_its_reason() {
    let agent = agent(None);
    runtime().block_on(async {
        let mut c = Clients::new(&agent).await;
        import_testguest(c.channel.clone()).await;
        let scs = c.inventory().await.scs.unwrap();
        if scs.serves_gpu || scs.serves_ib {
            println!("skipped: this machine can pass a GPU or HCA through ({scs:?})");
            return;
        }
        // What the inventory says is what admission says.
        let gpu_reason = if scs.serves_gpu_reason == "no GPU" {
            "flavor asks for a GPU of vendor nvidia; this node has none".to_string()
        } else {
            format!(
                "flavor asks for a GPU of vendor nvidia; none of this node's can be passed \
                 through: {}",
                scs.serves_gpu_reason
            )
        };
        println!(
            "this machine: GPU: {}; IB: {}",
            scs.serves_gpu_reason, scs.serves_ib_reason
        );
        c.assert_refused(1, GPU, "GPU", &gpu_reason).await;
        let ib_reason = if scs.serves_ib_reason == "no InfiniBand HCA" {
            "flavor asks for InfiniBand (`_ib`); this node has no InfiniBand device".to_string()
        } else {
            format!(
                "flavor asks for InfiniBand (`_ib`); no InfiniBand HCA of this node can be \
                 passed through: {}",
                scs.serves_ib_reason
            )
        };
        c.assert_refused(2, IB, "InfiniBand", &ib_reason).await;
    });
}

#[test]
fn a_gpu_and_an_hca_without_an_iommu_are_refused_with_that_reason() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(Some(&host_tree(dir.path(), "devices-gpu-no-iommu")));
    runtime().block_on(async {
        let mut c = Clients::new(&agent).await;
        import_testguest(c.channel.clone()).await;
        let inv = c.inventory().await;
        // The captured host's own QEMU VGA (0000:00:02.0) is listed too, with the same reason.
        let gpu = inv
            .gpus
            .iter()
            .find(|g| g.pci_address == "0000:3b:00.0")
            .unwrap();
        assert_eq!(
            (gpu.scs_vendor.as_str(), gpu.passthrough.as_str()),
            ("N", NO_IOMMU)
        );
        assert_eq!(inv.infiniband[0].name, "mlx5_0");
        assert_eq!(inv.infiniband[0].passthrough, NO_IOMMU);
        let scs = inv.scs.unwrap();
        assert!(!scs.serves_gpu && !scs.serves_ib);
        assert_eq!(scs.serves_gpu_reason, format!("0000:3b:00.0: {NO_IOMMU}"));
        let scheduler = inv.scheduler.unwrap();
        assert!(
            !scheduler
                .inventories
                .iter()
                .any(|r| r.resource_class.starts_with("CUSTOM_PGPU")),
            "Placement is not offered a GPU that cannot be delivered"
        );
        assert!(!scheduler.traits.iter().any(|t| t == "CUSTOM_SCS_IB"));
        c.assert_refused(
            3,
            GPU,
            "GPU",
            &format!(
                "flavor asks for a GPU of vendor nvidia; none of this node's can be passed \
                 through: 0000:3b:00.0: {NO_IOMMU}"
            ),
        )
        .await;
        c.assert_refused(
            4,
            IB,
            "InfiniBand",
            &format!(
                "flavor asks for InfiniBand (`_ib`); no InfiniBand HCA of this node can be \
                 passed through: 0000:5e:00.0: {NO_IOMMU}"
            ),
        )
        .await;
    });
}

/// The PCI address of the GPU in the `devices-gpu-vfio` tree.
const FIXTURE_GPU: &str = "0000:3b:00.0";

/// Why a guest with a managed `<hostdev>` at `address` must not be defined against this
/// machine's libvirtd: it has IOMMU groups and a real PCI device there, which libvirt would
/// unbind from its driver to give it to the guest. `None` where libvirt can only fail.
fn real_device_at(address: &str) -> Option<String> {
    let iommu = std::fs::read_dir("/sys/kernel/iommu_groups").is_ok_and(|mut d| d.next().is_some());
    let device = Path::new("/sys/bus/pci/devices").join(address);
    (iommu && device.exists()).then(|| {
        format!(
            "this host has IOMMU groups and a PCI device at {address} ({}): libvirt would take it from its driver",
            device.display()
        )
    })
}

#[test]
fn a_gpu_on_vfio_is_offered_and_released_when_libvirt_fails_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(Some(&host_tree(dir.path(), "devices-gpu-vfio")));
    let _cleanup = Cleanup(vec![uuid(5)]);
    runtime().block_on(async {
        let mut c = Clients::new(&agent).await;
        import_testguest(c.channel.clone()).await;
        let inv = c.inventory().await;
        let pgpu: Vec<(String, u64)> = inv
            .scheduler
            .unwrap()
            .inventories
            .into_iter()
            .filter(|r| r.resource_class.starts_with("CUSTOM_PGPU"))
            .map(|r| (r.resource_class, r.total))
            .collect();
        assert_eq!(pgpu, [("CUSTOM_PGPU_NVIDIA".to_string(), 1)]);
        assert_eq!(inv.mdev_types.len(), 2);
        assert_eq!(c.capacity(GPU).await.more, 1);
        assert_eq!(c.capacity(IB).await.more, 1);
        if let Some(why) = real_device_at(FIXTURE_GPU) {
            println!("SKIP the create part: {why}");
            return;
        }
        // The tree's GPU is not this machine's: libvirt cannot give it to the guest, after the
        // agent claimed it. The failed create must give it back.
        let status = c.create(5, GPU).await.unwrap_err();
        println!("create refused by libvirt as expected: {status:?}");
        assert!(
            status.message().starts_with("libvirt refused the guest"),
            "failed after the claim, in libvirt: {status:?}"
        );
        assert!(listed(&mut c.vms).await.is_empty());
        assert!(claims(&mut c.placement).await.is_empty());
        assert!(!domain_exists(&uuid(5)));
        assert_eq!(c.capacity(GPU).await.more, 1, "the GPU is free again");
    });
}
