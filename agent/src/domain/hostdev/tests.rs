use super::*;
use crate::placement::testing::fixture;
use crate::placement::{Allocator, ClaimRequest, Policy};

fn claim(gpus: &[&str], infiniband: &[&str]) -> Claim {
    let policy = Policy {
        reserved_memory_mib: 256,
        ..Policy::default()
    };
    let mut a = Allocator::new(fixture("qemu-2s4c2t-numa"), policy).unwrap();
    let mut claim = a
        .claim(
            &ClaimRequest {
                vm_uuid: "00000000-0000-4000-8000-000000000001".into(),
                request_id: "r1".into(),
                flavor: hvagent_core::flavor::parse("SCS-1Vi-0.5u").unwrap().spec,
            },
            0,
        )
        .unwrap();
    claim.gpus = gpus.iter().map(|s| s.to_string()).collect();
    claim.infiniband = infiniband.iter().map(|s| s.to_string()).collect();
    claim
}

fn xml(claim: &Claim) -> Vec<String> {
    from_claim(claim)
        .unwrap()
        .iter()
        .map(|h| quick_xml::se::to_string(h).unwrap())
        .collect()
}

#[test]
fn addresses_become_managed_vfio_hostdevs() {
    assert_eq!(
        xml(&claim(&["0000:3b:00.0"], &[])),
        [
            "<hostdev mode=\"subsystem\" type=\"pci\" managed=\"yes\"><source>\
          <address domain=\"0x0000\" bus=\"0x3b\" slot=\"0x00\" function=\"0x0\"/>\
          </source></hostdev>"
        ]
    );
}

#[test]
fn several_devices_in_claim_order_gpus_first() {
    let got = xml(&claim(&["0000:af:1f.7", "10ab:00:01.1"], &["0000:5e:00.0"]));
    let addresses: Vec<&str> = got
        .iter()
        .map(|h| {
            let start = h.find("<address").unwrap();
            &h[start..h.find("/>").unwrap() + 2]
        })
        .collect();
    assert_eq!(
        addresses,
        [
            "<address domain=\"0x0000\" bus=\"0xaf\" slot=\"0x1f\" function=\"0x7\"/>",
            "<address domain=\"0x10ab\" bus=\"0x00\" slot=\"0x01\" function=\"0x1\"/>",
            "<address domain=\"0x0000\" bus=\"0x5e\" slot=\"0x00\" function=\"0x0\"/>",
        ]
    );
}

#[test]
fn no_devices_no_hostdev() {
    assert!(from_claim(&claim(&[], &[])).unwrap().is_empty());
}

#[test]
fn malformed_addresses_are_errors_naming_the_rule() {
    let cases = [
        ("3b:00.0", "not three parts separated by ':'"),
        ("0000:3b:00", "no '.' before the function"),
        ("000:3b:00.0", "the domain must be 4 hex digits"),
        ("0000:3g:00.0", "the bus must be 2 hex digits"),
        ("0000:3b:20.0", "slot above 0x1f"),
        ("0000:3b:00.8", "function above 7"),
        ("0000:3b:00.0:1", "not three parts separated by ':'"),
    ];
    for (address, why) in cases {
        let err = from_claim(&claim(&[address], &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot build domain XML: bad PCI address {address:?}: {why} (want DDDD:BB:SS.F, e.g. 0000:3b:00.0)"
            )
        );
    }
}
