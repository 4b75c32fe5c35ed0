//! GPUs and InfiniBand HCAs on the device fixtures: what can be passed through is placed,
//! released and offered; what cannot is refused with the host's reason.

use crate::flavor::parse;
use crate::placement::provider::{Guests, provider_inventory};
use crate::placement::testing::{fixture_with_devices, inventory_with_devices};
use crate::placement::{Allocator, ClaimRequest, Policy, RefusalKind};

const HOST: &str = "qemu-2s4c2t-numa";

fn req(n: u64, flavor: &str) -> ClaimRequest {
    ClaimRequest {
        vm_uuid: format!("00000000-0000-4000-8000-{n:012x}"),
        request_id: format!("r{n}"),
        flavor: parse(flavor).expect(flavor).spec,
    }
}

fn policy() -> Policy {
    Policy {
        reserved_memory_mib: 256,
        ..Policy::default()
    }
}

fn allocator(devices: &str) -> Allocator {
    Allocator::new(fixture_with_devices(HOST, devices), policy()).unwrap()
}

const NO_IOMMU: &str = "no IOMMU: /sys/kernel/iommu_groups is empty (turn on VT-d or AMD-Vi in \
                        the firmware and boot with intel_iommu=on or amd_iommu=on)";

#[test]
fn without_an_iommu_gpu_and_ib_flavors_are_refused_with_the_reason() {
    let mut a = allocator("devices-gpu-no-iommu");
    let cases = [
        (
            "SCS-1Vi-1u_GN",
            "GPU",
            format!(
                "flavor asks for a GPU of vendor nvidia; none of this node's can be passed \
                 through: 0000:3b:00.0: {NO_IOMMU}"
            ),
        ),
        (
            "SCS-1Vi-1u_ib",
            "InfiniBand",
            format!(
                "flavor asks for InfiniBand (`_ib`); no InfiniBand HCA of this node can be \
                 passed through: 0000:5e:00.0: {NO_IOMMU}"
            ),
        ),
    ];
    for (flavor, what, message) in cases {
        let r = a.claim(&req(1, flavor), 0).unwrap_err();
        assert_eq!(
            (r.kind, r.limited_by.as_str(), r.message.as_str()),
            (RefusalKind::Precondition, what, message.as_str()),
            "{flavor}"
        );
        let c = a.capacity(&parse(flavor).unwrap().spec);
        assert_eq!(
            (c.more, c.limited_by.as_str(), c.reason.as_str()),
            (0, what, message.as_str())
        );
    }
    assert_eq!(a.claims().count(), 0, "refusals take nothing");
    assert_eq!(a.generation(), 0);
    // A flavor without devices is unaffected.
    assert!(a.claim(&req(2, "SCS-1Vi-1u"), 0).is_ok());
}

#[test]
fn only_a_gpu_that_can_be_passed_through_is_placed_and_released() {
    let mut a = allocator("devices-gpu-vfio");
    let gpu = parse("SCS-1Vi-1u_GN").unwrap().spec;
    // Two NVIDIA GPUs; the T4 at 0000:af:00.0 is held by the nvidia driver (vGPU host).
    let c = a.capacity(&gpu);
    assert_eq!(
        (c.more, c.limited_by.as_str(), c.reason.as_str()),
        (
            1,
            "GPU",
            "every N GPU of this node that can be passed through is taken"
        )
    );
    let claim = a.claim(&req(1, "SCS-1Vi-1u_GN"), 0).unwrap();
    assert_eq!(claim.gpus, ["0000:3b:00.0"]);
    assert!(claim.infiniband.is_empty());
    let r = a.claim(&req(2, "SCS-1Vi-1u_GN"), 0).unwrap_err();
    assert_eq!(
        (r.kind, r.limited_by.as_str()),
        (RefusalKind::Exhausted, "GPU")
    );
    assert_eq!(a.capacity(&gpu).more, 0);
    a.release(&claim.vm_uuid).unwrap();
    assert_eq!(a.capacity(&gpu).more, 1, "released with the claim");
    assert_eq!(
        a.claim(&req(3, "SCS-1Vi-1u_GN"), 0).unwrap().gpus,
        ["0000:3b:00.0"]
    );
}

#[test]
fn an_infiniband_hca_bound_to_vfio_is_claimed_once() {
    let mut a = allocator("devices-gpu-vfio");
    let ib = parse("SCS-1Vi-1u_ib").unwrap().spec;
    assert_eq!(a.capacity(&ib).more, 1);
    let claim = a.claim(&req(1, "SCS-1Vi-1u_GN_ib"), 0).unwrap();
    assert_eq!(
        (claim.gpus.as_slice(), claim.infiniband.as_slice()),
        (
            &["0000:3b:00.0".to_string()][..],
            &["0000:5e:00.0".to_string()][..]
        )
    );
    let r = a.claim(&req(2, "SCS-1Vi-1u_ib"), 0).unwrap_err();
    assert_eq!(
        (r.limited_by.as_str(), r.message.as_str()),
        (
            "InfiniBand",
            "every InfiniBand device of this node that can be passed through is taken"
        )
    );
    a.release(&claim.vm_uuid).unwrap();
    assert_eq!(a.capacity(&ib).more, 1);
}

#[test]
fn placement_is_offered_only_what_can_be_delivered() {
    let view = |devices: &str| {
        let inv = inventory_with_devices(HOST, devices);
        let a = Allocator::new(crate::placement::Topology::from_inventory(&inv), policy()).unwrap();
        provider_inventory(&a, &inv, Guests::Kvm)
    };
    let ready = view("devices-gpu-vfio");
    let pgpu: Vec<(String, u64)> = ready
        .inventories
        .iter()
        .filter(|r| r.resource_class.starts_with("CUSTOM_PGPU"))
        .map(|r| (r.resource_class.clone(), r.total))
        .collect();
    assert_eq!(pgpu, [("CUSTOM_PGPU_NVIDIA".to_string(), 1)], "not the T4");
    assert!(ready.traits.contains(&"CUSTOM_SCS_GPU_N".to_string()));
    assert!(ready.traits.contains(&"CUSTOM_SCS_IB".to_string()));

    let none = view("devices-gpu-no-iommu");
    assert!(
        !none
            .inventories
            .iter()
            .any(|r| r.resource_class.starts_with("CUSTOM_PGPU"))
    );
    assert!(
        !none
            .traits
            .iter()
            .any(|t| t == "CUSTOM_SCS_GPU_N" || t == "CUSTOM_SCS_IB")
    );
}

#[test]
fn the_device_fixtures_as_the_inventory_reads_them() {
    let inv = inventory_with_devices(HOST, "devices-gpu-vfio");
    let gpus: Vec<(&str, &str, Option<u32>)> = inv
        .gpus
        .iter()
        .map(|g| {
            (
                g.pci_address.as_str(),
                g.driver.as_str(),
                g.passthrough.iommu_group(),
            )
        })
        .collect();
    assert_eq!(
        gpus,
        [
            ("0000:3b:00.0", "vfio-pci", Some(13)),
            ("0000:af:00.0", "nvidia", None)
        ]
    );
    assert!(
        inv.gpus[1]
            .passthrough
            .reason()
            .starts_with("in use by driver nvidia: bind 0000:af:00.0 to vfio-pci")
    );
    assert_eq!(
        (inv.scs.serves_gpu, inv.scs.serves_gpu_reason.as_str()),
        (true, "1 of 2 GPUs can be passed through")
    );
    assert_eq!(
        (inv.scs.serves_ib, inv.scs.serves_ib_reason.as_str()),
        (true, "1 of 1 InfiniBand HCAs can be passed through")
    );
    let mdev: Vec<(&str, &str, u64)> = inv
        .mdev_types
        .iter()
        .map(|t| (t.type_id.as_str(), t.name.as_str(), t.available_instances))
        .collect();
    assert_eq!(
        mdev,
        [
            ("nvidia-222", "GRID T4-1B", 16),
            ("nvidia-230", "GRID T4-16Q", 1)
        ]
    );

    let inv = inventory_with_devices(HOST, "devices-gpu-no-iommu");
    assert_eq!(inv.infiniband[0].name, "mlx5_0");
    assert!(!inv.scs.serves_gpu && !inv.scs.serves_ib);
    assert_eq!(
        inv.scs.serves_gpu_reason,
        format!("0000:3b:00.0: {NO_IOMMU}")
    );
    assert!(inv.mdev_types.is_empty());
}
