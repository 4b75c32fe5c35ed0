//! Fuzzes request validation where strings reach file names, XML and netlink: image and guest
//! names, and network specs (device names, addresses, IDs). Whatever is accepted is safe by
//! construction; whatever is refused is INVALID_ARGUMENT naming a field.
#![no_main]

use hvagent::api::network::spec_from_proto;
use hvagent::storage::images::check_name;
use hvagent_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let mut next = || parts.next().unwrap_or("").to_string();
    let name = next();
    if check_name("name", &name).is_ok() {
        assert!(!name.is_empty() && name.len() <= 64);
        assert!(!name.starts_with('.') && !name.contains('/') && name != "..");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        );
    }
    let number = |s: String| s.parse::<u32>().unwrap_or(s.len() as u32);
    let network = pb::Network {
        name: name.clone(),
        kind: next(),
        uplink: next(),
        vlan_id: number(next()),
        vni: number(next()),
        underlay: next(),
        local: next(),
        remotes: next()
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
        group: next(),
        port: number(next()),
        mtu: number(next()),
        address: next(),
    };
    match spec_from_proto(network) {
        Ok(spec) => {
            spec.validate().expect("an accepted spec is valid");
            for device in [Some(spec.bridge()), spec.member()].into_iter().flatten() {
                // Linux interface names: at most 15 bytes; nothing a shell or XML would read.
                assert!(device.len() <= 15, "{device}");
                assert!(
                    device
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{device}"
                );
            }
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let field = status.message().split(':').next().unwrap_or("");
            assert!(
                !field.is_empty() && !field.contains(' '),
                "{}",
                status.message()
            );
        }
    }
});
