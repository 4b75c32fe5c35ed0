//! Sequential synchronous write IOPS on a disk: 4 KiB writes with O_DIRECT | O_DSYNC, one
//! after another, each acknowledged by the device before the next (what the SCS `s`/`p`
//! "more than 1000 sequential IOPS" promise means). The writes go to a region past the test
//! image's boot partition, so the guest stays bootable. The region is written once before
//! the clock starts: the root disk is a fresh qcow2 overlay, and first writes there also
//! allocate clusters, which says something about the image format, not the disk.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use hvagent_probe::report::Iops;

pub const BLOCK: usize = 4096;
/// First byte written: past the 64 MiB boot image, with room to spare.
pub const START: u64 = 128 << 20;
/// The timed writes wrap around inside this many bytes from [`START`].
pub const REGION: u64 = 8 << 20;

#[repr(C, align(4096))]
struct Aligned([u8; BLOCK]);

/// Writes the region once through the page cache and waits until it is on the device.
fn prefill(device: &str) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(|e| format!("{device}: {e}"))?;
    file.seek(SeekFrom::Start(START))
        .map_err(|e| format!("{device}: seek: {e}"))?;
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..REGION / chunk.len() as u64 {
        file.write_all(&chunk)
            .map_err(|e| format!("{device}: prefill: {e}"))?;
    }
    file.sync_all()
        .map_err(|e| format!("{device}: prefill sync: {e}"))
}

/// Writes `BLOCK`-sized blocks to `device` from [`START`] for `duration`, wrapping around
/// inside [`REGION`] (`device_bytes` is the device's size).
pub fn measure(device: &str, device_bytes: u64, duration: Duration) -> Result<Iops, String> {
    if device_bytes < START + REGION {
        return Err(format!(
            "{device}: {device_bytes} bytes leave no room past the boot image for the write test"
        ));
    }
    prefill(device)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(device)
        .map_err(|e| format!("{device}: {e}"))?;
    let mut block = Box::new(Aligned([0x5a; BLOCK]));
    let end = START + REGION;
    let mut at = START;
    file.seek(SeekFrom::Start(at))
        .map_err(|e| format!("{device}: seek: {e}"))?;
    let started = Instant::now();
    let mut writes = 0u64;
    while started.elapsed() < duration {
        if at + BLOCK as u64 > end {
            at = START;
            file.seek(SeekFrom::Start(at))
                .map_err(|e| format!("{device}: seek: {e}"))?;
        }
        // Different content per block, so that nothing below can deduplicate it.
        block.0[..8].copy_from_slice(&writes.to_le_bytes());
        file.write_all(&block.0)
            .map_err(|e| format!("{device}: write at {at}: {e}"))?;
        at += BLOCK as u64;
        writes += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Iops {
        block_bytes: BLOCK as u64,
        writes,
        seconds,
        iops: writes as f64 / seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_too_small_is_refused_before_any_write() {
        let err = measure(
            "/nonexistent",
            START + REGION - 1,
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert!(err.contains("no room past the boot image"), "{err}");
    }

    #[test]
    fn writes_to_a_file_count() {
        // A sparse file stands in for the disk.
        let path = std::env::temp_dir().join(format!("hvagent-probe-iops-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(START + REGION).unwrap();
        let path = path.to_str().unwrap().to_string();
        match measure(&path, START + REGION, Duration::from_millis(200)) {
            Ok(r) => {
                assert!(r.writes > 0 && r.seconds >= 0.2, "{r:?}");
                assert!((r.iops - r.writes as f64 / r.seconds).abs() < 1e-6);
                // Nothing written past the region.
                assert_eq!(std::fs::metadata(&path).unwrap().len(), START + REGION);
            }
            // Some filesystems (older tmpfs) refuse O_DIRECT; the error must say where.
            Err(e) => assert!(e.contains(&path), "{e}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
}
