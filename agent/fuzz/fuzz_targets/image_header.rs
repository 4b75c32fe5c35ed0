//! Fuzzes the image format check (the first bytes of a tenant's image decide what QEMU will
//! open): it never panics, and a qcow2 it accepts, read back from the raw bytes here rather
//! than through the agent's parser, names no backing file, no external data file, no
//! encryption and no incompatible feature the agent does not know.
#![no_main]

use hvagent::storage::images::{HEAD_BYTES, MAX_VIRTUAL_SIZE, accept, detect};
use libfuzzer_sys::fuzz_target;

fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
}

fn be64(data: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(data[at..at + 8].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len().min(HEAD_BYTES)];
    let Ok((format, virtual_size)) = accept(detect(head), data.len() as u64) else {
        return;
    };
    if !data.starts_with(b"QFI\xfb") {
        assert_eq!(format, "raw");
        assert_eq!(virtual_size, data.len() as u64);
        return;
    }
    assert_eq!(format, "qcow2");
    // An accepted header was read whole: these slices exist.
    let version = be32(data, 4);
    assert!(version == 2 || version == 3, "version {version}");
    assert_eq!(be64(data, 8), 0, "backing file offset");
    assert_eq!(be32(data, 32), 0, "crypt_method");
    assert!((1..=MAX_VIRTUAL_SIZE).contains(&virtual_size));
    assert_eq!(virtual_size, be64(data, 24));
    if version == 3 {
        let incompatible = be64(data, 72);
        // Only dirty, compression type and extended L2: never corrupt (bit 1), external data
        // file (bit 2) or an unknown bit.
        assert_eq!(incompatible & !0b1_1001, 0, "incompatible {incompatible:#x}");
    }
});
