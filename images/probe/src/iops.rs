//! Sequential synchronous write IOPS on a disk: 4 KiB writes with O_DIRECT | O_DSYNC, one
//! after another, each acknowledged by the device before the next (what the SCS `s`/`p`
//! "more than 1000 sequential IOPS" promise means). The writes go to a region past the test
//! image's boot partition, so the guest stays bootable.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use hvagent_probe::report::Iops;

pub const BLOCK: usize = 4096;
/// First byte written: past the 64 MiB boot image, with room to spare.
pub const START: u64 = 128 << 20;

#[repr(C, align(4096))]
struct Aligned([u8; BLOCK]);

/// Writes `BLOCK`-sized blocks to `device` from [`START`] for `duration`, wrapping around at
/// its end (`device_bytes`).
pub fn measure(device: &str, device_bytes: u64, duration: Duration) -> Result<Iops, String> {
    if device_bytes < START + (1 << 20) {
        return Err(format!(
            "{device}: {device_bytes} bytes leave no room past the boot image for the write test"
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(device)
        .map_err(|e| format!("{device}: {e}"))?;
    let mut block = Box::new(Aligned([0x5a; BLOCK]));
    let end = device_bytes - device_bytes % BLOCK as u64;
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
        let err = measure("/nonexistent", START, Duration::from_millis(10)).unwrap_err();
        assert!(err.contains("no room past the boot image"), "{err}");
    }

    #[test]
    fn writes_to_a_file_count() {
        // A sparse file stands in for the disk.
        let path = std::env::temp_dir().join(format!("hvagent-probe-iops-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(START + (2 << 20)).unwrap();
        let path = path.to_str().unwrap().to_string();
        match measure(&path, START + (2 << 20), Duration::from_millis(200)) {
            Ok(r) => {
                assert!(r.writes > 0 && r.seconds >= 0.2, "{r:?}");
                assert!((r.iops - r.writes as f64 / r.seconds).abs() < 1e-6);
            }
            // Some filesystems (older tmpfs) refuse O_DIRECT; the error must say where.
            Err(e) => assert!(e.contains(&path), "{e}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
}
