//! Does KVM really work? `/dev/kvm` existing proves nothing: on nested setups without hardware
//! support it exists, but every guest instruction traps, so a real guest seems to hang at 100 %
//! system CPU. The trial runs a tiny long-mode guest through the raw KVM ioctls: a counting loop,
//! then `out 0x10, 0x42; hlt`. KVM is usable only if that I/O exit arrives, and fast. The trial
//! runs in a child process that is killed after a timeout, because a vCPU stuck inside
//! `KVM_RUN` cannot be interrupted from another thread of the same process.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hvagent_core::host::{KvmState, KvmVerdict};

/// Flag that makes the `hvagent` binary run [`run_trial`] and exit (0 = usable).
pub const TRIAL_FLAG: &str = "--kvm-trial";

/// Runs the trial in `trial_exe TRIAL_FLAG`, killing it after `timeout`.
pub fn probe(dev: &Path, trial_exe: &Path, timeout: Duration) -> KvmVerdict {
    let verdict = |state, reason: String| KvmVerdict { state, reason };
    if !dev.exists() {
        return verdict(
            KvmState::Absent,
            format!("{} does not exist", dev.display()),
        );
    }
    let mut child = match Command::new(trial_exe)
        .arg(TRIAL_FLAG)
        .arg(dev)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return verdict(
                KvmState::Broken,
                format!("cannot start the KVM trial {}: {e}", trial_exe.display()),
            );
        }
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let stderr = child
                    .stderr
                    .take()
                    .and_then(|mut s| {
                        let mut buf = String::new();
                        std::io::Read::read_to_string(&mut s, &mut buf).ok()?;
                        Some(buf.trim().to_string())
                    })
                    .unwrap_or_default();
                return if status.success() {
                    verdict(
                        KvmState::Usable,
                        format!(
                            "a trial guest ran on {} in {} ms",
                            dev.display(),
                            started.elapsed().as_millis()
                        ),
                    )
                } else {
                    verdict(KvmState::Broken, format!("trial guest failed: {stderr}"))
                };
            }
            Ok(None) if started.elapsed() >= timeout => {
                // Best effort: a vCPU spinning in the kernel may delay the kill, not stop it.
                let _ = child.kill();
                let _ = child.wait();
                return verdict(
                    KvmState::Broken,
                    format!(
                        "{} exists but a trial guest did not halt within {} ms",
                        dev.display(),
                        timeout.as_millis()
                    ),
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return verdict(KvmState::Broken, format!("waiting for the KVM trial: {e}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error("{step}: {source}")]
    Os {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
    #[error(
        "guest code runs too slowly for hardware virtualization: {ROUNDS} loop rounds took {ms} ms \
         (hardware-assisted KVM needs under 1 ms; the limit is {} ms)",
        MAX_RUN.as_millis()
    )]
    TooSlow { ms: u128 },
    #[error("unexpected exit: reason {reason}, port {port:#x}, data {data:#x}")]
    UnexpectedExit { reason: u32, port: u16, data: u8 },
}

// ioctl numbers from <linux/kvm.h> (x86-64).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
const KVM_EXIT_IO: u32 = 2;
/// Guest memory: page tables at 0x1000-0x3fff, code at 0x8000, identity-mapped by one 2 MiB page.
const GUEST_MEM: usize = 2 << 20;
const PML4: usize = 0x1000;
const PDPT: usize = 0x2000;
const PD: usize = 0x3000;
const CODE_ADDR: usize = 0x8000;
const PORT: u16 = 0x10;
const VALUE: u8 = 0x42;
/// Loop rounds of the trial guest.
const ROUNDS: u32 = 100_000;
/// Hardware-assisted KVM runs the loop in well under a millisecond. Where KVM exists but every
/// guest instruction traps (nested setups without hardware support) it takes hundreds of
/// milliseconds, and a real guest only appears to hang: that KVM is not usable.
const MAX_RUN: Duration = Duration::from_millis(50);
/// 64-bit code: count a register down from ROUNDS storing it to memory each round, so the
/// guest runs with paging in long mode, then `out 0x10, 0x42; hlt`.
const CODE: [u8; 26] = [
    0x48, 0xc7, 0xc1, 0xa0, 0x86, 0x01, 0x00, // mov rcx, 100000
    0x48, 0x89, 0x0c, 0x25, 0x00, 0x00, 0x10, 0x00, // loop: mov [0x100000], rcx
    0x48, 0xff, 0xc9, // dec rcx
    0x75, 0xf3, // jnz loop
    0xb0, VALUE, // mov al, 0x42
    0xe6, PORT as u8, // out 0x10, al
    0xf4,       // hlt
    0xf4,
];

#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

fn check(step: &'static str, ret: libc::c_int) -> Result<libc::c_int, TrialError> {
    if ret < 0 {
        Err(TrialError::Os {
            step,
            source: std::io::Error::last_os_error(),
        })
    } else {
        Ok(ret)
    }
}

/// Runs the trial guest in this process. Meant for a throw-away child process: file
/// descriptors and mappings are left to process exit.
pub fn run_trial(dev: &Path) -> Result<(), TrialError> {
    let path =
        std::ffi::CString::new(dev.as_os_str().as_encoded_bytes()).map_err(|e| TrialError::Os {
            step: "device path",
            source: std::io::Error::other(e),
        })?;
    // SAFETY: plain syscalls on descriptors and mappings this function owns; every buffer
    // passed to an ioctl has the size the ioctl number encodes.
    unsafe {
        let kvm = check(
            "open",
            libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC),
        )?;
        let version = libc::ioctl(kvm, KVM_GET_API_VERSION, 0);
        if version != 12 {
            return Err(TrialError::ApiVersion(version));
        }
        let vm = check("KVM_CREATE_VM", libc::ioctl(kvm, KVM_CREATE_VM, 0))?;
        let mem = libc::mmap(
            std::ptr::null_mut(),
            GUEST_MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if mem == libc::MAP_FAILED {
            return Err(TrialError::Os {
                step: "mmap guest memory",
                source: std::io::Error::last_os_error(),
            });
        }
        let m = mem as *mut u8;
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), m.add(CODE_ADDR), CODE.len());
        // Present + writable tables; the PD entry maps 0..2 MiB as one large page.
        std::ptr::write_unaligned(m.add(PML4) as *mut u64, PDPT as u64 | 0b11);
        std::ptr::write_unaligned(m.add(PDPT) as *mut u64, PD as u64 | 0b11);
        std::ptr::write_unaligned(m.add(PD) as *mut u64, 0b1000_0011);
        let region = MemoryRegion {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: GUEST_MEM as u64,
            userspace_addr: mem as u64,
        };
        check(
            "KVM_SET_USER_MEMORY_REGION",
            libc::ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region),
        )?;
        let vcpu = check("KVM_CREATE_VCPU", libc::ioctl(vm, KVM_CREATE_VCPU, 0))?;
        let run_size = check(
            "KVM_GET_VCPU_MMAP_SIZE",
            libc::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0),
        )?;
        let run = libc::mmap(
            std::ptr::null_mut(),
            run_size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu,
            0,
        );
        if run == libc::MAP_FAILED {
            return Err(TrialError::Os {
                step: "mmap kvm_run",
                source: std::io::Error::last_os_error(),
            });
        }
        let mut sregs = [0u8; 312];
        check(
            "KVM_GET_SREGS",
            libc::ioctl(vcpu, KVM_GET_SREGS, sregs.as_mut_ptr()),
        )?;
        long_mode(&mut sregs);
        check(
            "KVM_SET_SREGS",
            libc::ioctl(vcpu, KVM_SET_SREGS, sregs.as_ptr()),
        )?;
        // struct kvm_regs: 18 u64, rip is the 17th and rflags (bit 1 always set) the 18th.
        let mut regs = [0u64; 18];
        regs[16] = CODE_ADDR as u64;
        regs[17] = 0x2;
        check(
            "KVM_SET_REGS",
            libc::ioctl(vcpu, KVM_SET_REGS, regs.as_ptr()),
        )?;
        let started = Instant::now();
        check("KVM_RUN", libc::ioctl(vcpu, KVM_RUN, 0))?;
        let took = started.elapsed();
        // struct kvm_run: exit_reason u32 at 8; io exit at 32: direction u8, size u8,
        // port u16, count u32, data_offset u64.
        let base = run as *const u8;
        let reason = std::ptr::read_unaligned(base.add(8) as *const u32);
        let port = std::ptr::read_unaligned(base.add(34) as *const u16);
        let data_offset = std::ptr::read_unaligned(base.add(40) as *const u64);
        let data = if (data_offset as usize) < run_size as usize {
            *base.add(data_offset as usize)
        } else {
            0
        };
        if reason != KVM_EXIT_IO || port != PORT || data != VALUE {
            return Err(TrialError::UnexpectedExit { reason, port, data });
        }
        if took > MAX_RUN {
            return Err(TrialError::TooSlow {
                ms: took.as_millis(),
            });
        }
    }
    Ok(())
}

/// Puts a `struct kvm_sregs` (312 bytes) into 64-bit long mode with paging on: eight 24-byte
/// segments (cs, ds, es, fs, gs, ss, tr, ldt), two 16-byte tables, then cr0 at 224, cr3 at 240,
/// cr4 at 248 and efer at 264.
fn long_mode(sregs: &mut [u8; 312]) {
    let put =
        |s: &mut [u8; 312], at: usize, bytes: &[u8]| s[at..at + bytes.len()].copy_from_slice(bytes);
    for (index, selector, kind, long) in [
        (0, 0x8u16, 11u8, 1u8),
        (1, 0x10, 3, 0),
        (2, 0x10, 3, 0),
        (3, 0x10, 3, 0),
        (4, 0x10, 3, 0),
        (5, 0x10, 3, 0),
    ] {
        let at = index * 24;
        put(sregs, at, &0u64.to_le_bytes()); // base
        put(sregs, at + 8, &0xffff_ffffu32.to_le_bytes()); // limit
        put(sregs, at + 12, &selector.to_le_bytes());
        // type, present, dpl, db (32-bit data; must be 0 for 64-bit code), s, l, g
        put(sregs, at + 14, &[kind, 1, 0, 1 - long, 1, long, 1]);
    }
    put(sregs, 224, &0x8000_0011u64.to_le_bytes()); // cr0: PG | ET | PE
    put(sregs, 240, &(PML4 as u64).to_le_bytes()); // cr3
    put(sregs, 248, &0x20u64.to_le_bytes()); // cr4: PAE
    put(sregs, 264, &0x500u64.to_le_bytes()); // efer: LMA | LME
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_absent() {
        let v = probe(
            Path::new("/nonexistent/kvm"),
            Path::new("/bin/true"),
            Duration::from_secs(1),
        );
        assert_eq!(v.state, KvmState::Absent);
        assert!(v.reason.contains("/nonexistent/kvm"));
    }

    /// A stand-in trial executable running the shell `script`.
    fn fake_trial(script: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("trial");
        std::fs::write(&exe, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        (dir, exe)
    }

    #[test]
    fn hanging_trial_is_broken_and_killed() {
        let (_dir, exe) = fake_trial("exec sleep 30");
        let started = Instant::now();
        let v = probe(Path::new("/dev/null"), &exe, Duration::from_millis(300));
        assert_eq!(v.state, KvmState::Broken);
        assert!(
            v.reason.contains("did not halt within 300 ms"),
            "{}",
            v.reason
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn failing_trial_is_broken_with_its_message() {
        let (_dir, exe) = fake_trial("echo 'KVM_RUN: boom' >&2; exit 1");
        let v = probe(Path::new("/dev/null"), &exe, Duration::from_secs(5));
        assert_eq!(v.state, KvmState::Broken);
        assert!(v.reason.contains("KVM_RUN: boom"), "{}", v.reason);
    }

    #[test]
    fn trial_on_a_non_kvm_device_fails_cleanly() {
        let err = run_trial(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, TrialError::ApiVersion(_)), "{err}");
    }
}
