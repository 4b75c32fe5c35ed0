//! The fixed CPU workload: one thread per vCPU, pinned to it, doing the same integer work in
//! chunks for a window. Chunks per second per vCPU is the guest's CPU throughput; compared
//! alone and beside noisy neighbours it shows whether a dedicated core stays dedicated.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Rounds of the mixing step in one chunk (about a millisecond on a current core).
pub const CHUNK_ROUNDS: u64 = 1 << 18;

/// `rounds` steps of xorshift and a multiply: integer work the compiler cannot skip (the
/// result is returned) and that touches no memory.
pub fn mix(rounds: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays inside it for
    // cpu < CPU_SETSIZE, which is checked first.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Chunks per second on each of `cpus`, all running at once for `window`. A CPU the thread
/// cannot be pinned to gives an error for that CPU.
pub fn throughput(cpus: &[usize], window: Duration) -> Vec<Result<f64, String>> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<f64, String> {
                pin(cpu).map_err(|e| format!("pin to CPU {cpu}: {e}"))?;
                let started = Instant::now();
                let mut chunks = 0u64;
                let mut seed = cpu as u64;
                // At least one chunk, however late the thread started.
                loop {
                    seed = mix(CHUNK_ROUNDS, seed);
                    chunks += 1;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                std::hint::black_box(seed);
                Ok(chunks as f64 / started.elapsed().as_secs_f64())
            })
        })
        .collect();
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or_else(|_| Err("workload thread panicked".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_is_fixed() {
        assert_eq!(mix(0, 2), 3);
        assert_eq!(mix(1000, 7), mix(1000, 7));
        assert_ne!(mix(1000, 7), mix(1001, 7));
    }

    #[test]
    fn throughput_per_cpu_and_pinning_errors() {
        let r = throughput(&[0, 1 << 20], Duration::from_millis(200));
        let on_zero = r[0].as_ref().expect("CPU 0 exists");
        assert!(*on_zero > 0.0, "{on_zero}");
        assert!(
            r[1].as_ref().unwrap_err().starts_with("pin to CPU 1048576"),
            "{r:?}"
        );
    }
}
