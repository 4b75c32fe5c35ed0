use std::os::unix::fs::symlink;
use std::path::Path;

use super::*;

const GPU: &str = "0000:3b:00.0";
const AUDIO: &str = "0000:3b:00.1";

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&p);
    symlink(target, p).unwrap();
}

/// A GPU and its audio function in IOMMU group 13, both bound to vfio-pci, as a host set up
/// for passthrough shows them; `tweak` changes one thing.
fn tree(tweak: impl FnOnce(&Path)) -> (tempfile::TempDir, SysRoot) {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for (addr, class) in [(GPU, "0x030200"), (AUDIO, "0x040300")] {
        write(r, &format!("sys/bus/pci/devices/{addr}/class"), class);
        link(
            r,
            &format!("sys/bus/pci/devices/{addr}/iommu_group"),
            "../../../kernel/iommu_groups/13",
        );
        link(
            r,
            &format!("sys/bus/pci/devices/{addr}/driver"),
            "../../../bus/pci/drivers/vfio-pci",
        );
        link(
            r,
            &format!("sys/kernel/iommu_groups/13/devices/{addr}"),
            &format!("../../../../devices/pci0000:3a/0000:3a:00.0/{addr}"),
        );
    }
    std::fs::create_dir_all(r.join("sys/kernel/iommu_groups/0/devices")).unwrap();
    std::fs::create_dir_all(r.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    write(r, "proc/sys/kernel/osrelease", "6.1.0-56-amd64\n");
    tweak(r);
    let sys = SysRoot::new(r);
    (dir, sys)
}

#[test]
fn a_gpu_bound_to_vfio_with_a_free_group_is_ready() {
    let (_d, sys) = tree(|_| {});
    assert_eq!(check(&sys, GPU), Passthrough::Ready { iommu_group: 13 });
    assert_eq!(check(&sys, GPU).reason(), "ok");
}

#[test]
fn no_iommu_groups_means_no_passthrough() {
    let (_d, sys) = tree(|r| std::fs::remove_dir_all(r.join("sys/kernel/iommu_groups")).unwrap());
    let p = check(&sys, GPU);
    assert!(!p.ready());
    assert!(
        p.reason()
            .starts_with("no IOMMU: /sys/kernel/iommu_groups is empty"),
        "{p:?}"
    );
}

#[test]
fn a_device_outside_every_group_is_refused() {
    let (_d, sys) = tree(|r| {
        std::fs::remove_file(r.join(format!("sys/bus/pci/devices/{GPU}/iommu_group"))).unwrap()
    });
    assert_eq!(
        check(&sys, GPU).reason(),
        format!("no IOMMU group: {GPU} has no iommu_group link")
    );
}

#[test]
fn vfio_pci_loaded_loadable_or_missing() {
    let unload =
        |r: &Path| std::fs::remove_dir_all(r.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    let (_d, sys) = tree(unload);
    assert!(
        check(&sys, GPU)
            .reason()
            .starts_with("vfio-pci not available")
    );

    let (_d, sys) = tree(|r| {
        unload(r);
        std::fs::create_dir_all(r.join("sys/module/vfio_pci")).unwrap();
    });
    assert!(check(&sys, GPU).ready(), "the module is loaded");

    let (_d, sys) = tree(|r| {
        unload(r);
        write(
            r,
            "lib/modules/6.1.0-56-amd64/modules.dep",
            "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko\n",
        );
    });
    assert!(check(&sys, GPU).ready(), "libvirt can load the module");

    let (_d, sys) = tree(|r| {
        unload(r);
        write(
            r,
            "lib/modules/6.1.0-56-amd64/modules.dep",
            "kernel/drivers/vfio/pci/vfio-pci-core.ko:\n",
        );
    });
    assert!(
        !check(&sys, GPU).ready(),
        "vfio-pci-core alone is not vfio-pci"
    );
}

#[test]
fn a_gpu_a_host_driver_holds_is_in_use() {
    let (_d, sys) = tree(|r| {
        link(
            r,
            &format!("sys/bus/pci/devices/{GPU}/driver"),
            "../../../bus/pci/drivers/nvidia",
        )
    });
    assert!(
        check(&sys, GPU)
            .reason()
            .starts_with("in use by driver nvidia: bind 0000:3b:00.0"),
        "{:?}",
        check(&sys, GPU)
    );
    // Unbound: libvirt's managed mode binds it to vfio-pci.
    let (_d, sys) = tree(|r| {
        std::fs::remove_file(r.join(format!("sys/bus/pci/devices/{GPU}/driver"))).unwrap()
    });
    assert!(check(&sys, GPU).ready());
}

#[test]
fn the_whole_group_must_be_free() {
    let (_d, sys) = tree(|r| {
        link(
            r,
            &format!("sys/bus/pci/devices/{AUDIO}/driver"),
            "../../../bus/pci/drivers/snd_hda_intel",
        )
    });
    assert_eq!(
        check(&sys, GPU).reason(),
        format!(
            "IOMMU group 13 also holds {AUDIO}, in use by driver snd_hda_intel; VFIO assigns \
             whole groups: bind {AUDIO} to vfio-pci too"
        )
    );
    // A PCIe port in the group is tolerated; an unbound peer too.
    let (_d, sys) = tree(|r| {
        link(
            r,
            "sys/kernel/iommu_groups/13/devices/0000:3a:00.0",
            "../../../../devices/pci0000:3a/0000:3a:00.0",
        );
        link(
            r,
            "sys/bus/pci/devices/0000:3a:00.0/driver",
            "../../../bus/pci/drivers/pcieport",
        );
        std::fs::remove_file(r.join(format!("sys/bus/pci/devices/{AUDIO}/driver"))).unwrap();
    });
    assert_eq!(check(&sys, GPU), Passthrough::Ready { iommu_group: 13 });
}

#[test]
fn mediated_device_types() {
    let (_d, sys) = tree(|r| {
        let types = format!("sys/class/mdev_bus/{GPU}/mdev_supported_types");
        write(r, &format!("{types}/nvidia-222/name"), "GRID T4-1B\n");
        write(
            r,
            &format!("{types}/nvidia-222/available_instances"),
            "16\n",
        );
        write(r, &format!("{types}/nvidia-63/name"), "GRID T4-1Q\n");
        write(r, &format!("{types}/nvidia-63/available_instances"), "0\n");
    });
    let types = read_mdev_types(&sys);
    let got: Vec<(&str, &str, &str, u64)> = types
        .iter()
        .map(|t| {
            (
                t.parent.as_str(),
                t.type_id.as_str(),
                t.name.as_str(),
                t.available_instances,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (GPU, "nvidia-63", "GRID T4-1Q", 0),
            (GPU, "nvidia-222", "GRID T4-1B", 16),
        ]
    );
    let (_d, sys) = tree(|_| {});
    assert!(read_mdev_types(&sys).is_empty());
}
