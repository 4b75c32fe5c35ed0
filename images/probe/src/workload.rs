//! The fixed CPU workload: one thread per vCPU, pinned to it, doing the same integer work in
//! chunks for a window. Chunks per second per vCPU is the guest's CPU throughput; compared
//! alone and beside noisy neighbours it shows whether a dedicated core stays dedicated.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// Marks a CPU whose thread could not be pinned there.
const UNPINNED: u64 = u64::MAX;

/// The workload running on a set of CPUs, one pinned thread each, until dropped.
pub struct Workload {
    chunks: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Workload {
    pub fn start(cpus: &[usize]) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let chunks: Vec<_> = cpus.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
        for (&cpu, done) in cpus.iter().zip(&chunks) {
            let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
            std::thread::spawn(move || {
                if let Err(e) = pin(cpu) {
                    done.store(UNPINNED, Ordering::Relaxed);
                    if let Ok(mut errors) = errors.lock() {
                        errors.push(format!("pin to CPU {cpu}: {e}"));
                    }
                    return;
                }
                let mut seed = cpu as u64;
                while !stop.load(Ordering::Relaxed) {
                    seed = mix(CHUNK_ROUNDS, seed);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                std::hint::black_box(seed);
            });
        }
        Workload {
            chunks,
            stop,
            errors,
        }
    }

    /// Chunks done so far per CPU (`None`: its thread could not be pinned).
    pub fn chunks(&self) -> Vec<Option<u64>> {
        self.chunks
            .iter()
            .map(|c| Some(c.load(Ordering::Relaxed)).filter(|&n| n != UNPINNED))
            .collect()
    }

    /// Why threads could not run where they should, taken (each said once).
    pub fn take_errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Per CPU, chunks per second between two [`Workload::chunks`] readings `seconds` apart.
pub fn rates(before: &[Option<u64>], after: &[Option<u64>], seconds: f64) -> Vec<Option<f64>> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| match (b, a) {
            (Some(b), Some(a)) if seconds > 0.0 => Some(a.saturating_sub(*b) as f64 / seconds),
            _ => None,
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
    fn chunks_per_cpu_and_pinning_errors() {
        let w = Workload::start(&[0, 1 << 20]);
        let before = w.chunks();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after = w.chunks();
        let r = rates(&before, &after, 0.3);
        assert!(r[0].is_some_and(|x| x > 0.0), "{r:?}");
        assert_eq!(r[1], None);
        let errors = w.take_errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("pin to CPU 1048576"), "{errors:?}");
        assert!(w.take_errors().is_empty());
    }

    #[test]
    fn rates_between_readings() {
        assert_eq!(
            rates(
                &[Some(10), None, Some(5)],
                &[Some(30), Some(4), Some(5)],
                2.0
            ),
            vec![Some(10.0), None, Some(0.0)]
        );
        assert_eq!(rates(&[Some(1)], &[Some(2)], 0.0), vec![None]);
    }
}
