//! Pinning conformance: what each guest's claim says its threads may run on, against what is
//! so — libvirt's live pins, the affinity of every QEMU vCPU and emulator thread, the cgroup
//! cpuset of each, and other guests' threads on a guest's dedicated CPUs or idle siblings.
//! Reading `/proc` is the thin edge; the comparison is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::host::sysfs::{format_cpulist, parse_cpulist};

/// Where a guest's threads belong, from its claim and placement as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub uuid: String,
    pub name: String,
    pub vcpus: Vec<Vec<u32>>,
    pub emulator: Vec<u32>,
    /// CPUs no other guest may use: dedicated CPUs, and the idle siblings of a `C` guest.
    pub exclusive: Vec<u32>,
    /// Per vCPU, and for the emulator (last), CPUs a thread may have beyond the expected ones
    /// without breaking a promise: for threads that follow the shared pool, the CPUs held by
    /// reservations not yet bound to a guest (taken out of the pool, but floating guests are
    /// re-pinned only when a dedicated guest is created or deleted).
    pub slack: Vec<Vec<u32>>,
    /// False for a guest of this agent that placement does not count (its stored claim
    /// conflicted with the guests counted before it at start-up): it has no pins to keep, but
    /// its threads still run somewhere, and other guests' promises are checked against them.
    pub accounted: bool,
}

impl Expected {
    fn slack_of(&self, index: usize) -> &[u32] {
        self.slack.get(index).map_or(&[], Vec::as_slice)
    }
}

/// Whether `actual` holds every CPU of `want` and nothing beyond `want` and `slack`.
fn conforms(want: &[u32], slack: &[u32], actual: &[u32]) -> bool {
    want.iter().all(|c| actual.contains(c))
        && actual.iter().all(|c| want.contains(c) || slack.contains(c))
}

/// One QEMU thread as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub tid: u32,
    pub affinity: Vec<u32>,
    /// The cpuset of the thread's cgroup, where one applies.
    pub cpuset: Option<Vec<u32>>,
}

/// A running guest's threads and libvirt's live pins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub libvirt_vcpus: Vec<Vec<u32>>,
    pub libvirt_emulator: Vec<u32>,
    pub vcpu_threads: BTreeMap<u32, Thread>,
    pub emulator_threads: Vec<Thread>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    LibvirtVcpuPin,
    LibvirtEmulatorPin,
    VcpuAffinity,
    EmulatorAffinity,
    VcpuCpuset,
    EmulatorCpuset,
    DedicatedCpuShared,
    Unaccounted,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::LibvirtVcpuPin => "libvirt_vcpu_pin",
            Kind::LibvirtEmulatorPin => "libvirt_emulator_pin",
            Kind::VcpuAffinity => "vcpu_affinity",
            Kind::EmulatorAffinity => "emulator_affinity",
            Kind::VcpuCpuset => "vcpu_cpuset",
            Kind::EmulatorCpuset => "emulator_cpuset",
            Kind::DedicatedCpuShared => "dedicated_cpu_shared",
            Kind::Unaccounted => "unaccounted",
        }
    }

    /// Whether re-applying the guest's own pins mends it (a shared dedicated CPU is mended
    /// on the other guest, which has a violation of its own; a guest placement does not count
    /// has no pins to apply).
    pub fn own(self) -> bool {
        !matches!(self, Kind::DedicatedCpuShared | Kind::Unaccounted)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub uuid: String,
    pub name: String,
    pub kind: Kind,
    /// `None`: the emulator threads.
    pub vcpu: Option<u32>,
    pub expected: Vec<u32>,
    pub actual: Vec<u32>,
    pub detail: String,
}

impl Violation {
    /// Identity across checks (for "since").
    pub fn key(&self) -> (String, Kind, Option<u32>) {
        (self.uuid.clone(), self.kind, self.vcpu)
    }

    pub fn line(&self) -> String {
        format!(
            "{} ({}): {}: {}",
            self.name,
            self.uuid,
            self.kind.as_str(),
            self.detail
        )
    }
}

fn sorted(v: &[u32]) -> Vec<u32> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Every way the guests' threads differ from their claims.
pub fn check(guests: &[(Expected, Observed)]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (e, o) in guests {
        if !e.accounted {
            out.push(Violation {
                uuid: e.uuid.clone(),
                name: e.name.clone(),
                kind: Kind::Unaccounted,
                vcpu: None,
                expected: Vec::new(),
                actual: Vec::new(),
                detail: "placement does not count this guest (its stored claim conflicts with the guests counted before it at start-up): what it uses may be promised to others".into(),
            });
            continue;
        }
        let mut push =
            |kind: Kind, vcpu: Option<u32>, expected: &[u32], actual: &[u32], what: String| {
                out.push(Violation {
                    uuid: e.uuid.clone(),
                    name: e.name.clone(),
                    kind,
                    vcpu,
                    expected: sorted(expected),
                    actual: sorted(actual),
                    detail: format!(
                        "{what}: expected CPUs {}, found {}",
                        format_cpulist(&sorted(expected)),
                        format_cpulist(&sorted(actual))
                    ),
                })
            };
        for (i, want) in e.vcpus.iter().enumerate() {
            let vcpu = i as u32;
            let want = sorted(want);
            let slack = e.slack_of(i);
            if let Some(pin) = o.libvirt_vcpus.get(i)
                && !conforms(&want, slack, pin)
            {
                push(
                    Kind::LibvirtVcpuPin,
                    Some(vcpu),
                    &want,
                    pin,
                    format!("libvirt pins vCPU {vcpu}"),
                );
            }
            if let Some(t) = o.vcpu_threads.get(&vcpu) {
                if !conforms(&want, slack, &t.affinity) {
                    push(
                        Kind::VcpuAffinity,
                        Some(vcpu),
                        &want,
                        &t.affinity,
                        format!("vCPU {vcpu} thread {} may run on other CPUs", t.tid),
                    );
                }
                if let Some(cpuset) = &t.cpuset
                    && !conforms(&want, slack, cpuset)
                {
                    push(
                        Kind::VcpuCpuset,
                        Some(vcpu),
                        &want,
                        cpuset,
                        format!("vCPU {vcpu} cgroup cpuset"),
                    );
                }
            }
        }
        let want = sorted(&e.emulator);
        let slack = e.slack_of(e.vcpus.len());
        if !o.libvirt_emulator.is_empty() && !conforms(&want, slack, &o.libvirt_emulator) {
            push(
                Kind::LibvirtEmulatorPin,
                None,
                &want,
                &o.libvirt_emulator,
                "libvirt pins the emulator".into(),
            );
        }
        // One violation per kind for the emulator: its threads move together.
        if let Some(t) = o
            .emulator_threads
            .iter()
            .find(|t| !conforms(&want, slack, &t.affinity))
        {
            push(
                Kind::EmulatorAffinity,
                None,
                &want,
                &t.affinity,
                format!("emulator thread {} may run on other CPUs", t.tid),
            );
        }
        if let Some((t, cpuset)) = o
            .emulator_threads
            .iter()
            .filter_map(|t| t.cpuset.as_ref().map(|c| (t, c)))
            .find(|(_, c)| !conforms(&want, slack, c))
        {
            push(
                Kind::EmulatorCpuset,
                None,
                &want,
                cpuset,
                format!("emulator thread {} cgroup cpuset", t.tid),
            );
        }
    }
    // Another guest's thread that may run on a CPU this guest holds alone.
    for (e, _) in guests.iter().filter(|(e, _)| !e.exclusive.is_empty()) {
        let exclusive = sorted(&e.exclusive);
        for (other, o) in guests.iter().filter(|(o, _)| o.uuid != e.uuid) {
            let threads = o
                .vcpu_threads
                .iter()
                .map(|(v, t)| (format!("vCPU {v}"), t))
                .chain(
                    o.emulator_threads
                        .iter()
                        .map(|t| ("emulator".to_string(), t)),
                );
            if let Some((what, shared)) = threads
                .map(|(what, t)| {
                    let shared: Vec<u32> = t
                        .affinity
                        .iter()
                        .copied()
                        .filter(|c| exclusive.binary_search(c).is_ok())
                        .collect();
                    (what, shared)
                })
                .find(|(_, shared)| !shared.is_empty())
            {
                out.push(Violation {
                    uuid: e.uuid.clone(),
                    name: e.name.clone(),
                    kind: Kind::DedicatedCpuShared,
                    vcpu: None,
                    expected: exclusive.clone(),
                    actual: sorted(&shared),
                    detail: format!(
                        "{what} of guest {} ({}) may run on CPUs {} held by this guest alone",
                        other.name,
                        other.uuid,
                        format_cpulist(&sorted(&shared))
                    ),
                });
            }
        }
    }
    out
}

/// The CPUs a `/proc/.../status` allows (`Cpus_allowed_list:`).
pub fn parse_affinity(status: &str) -> Option<Vec<u32>> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| parse_cpulist(v.trim()).ok())
}

/// vCPU number of a QEMU thread name (`CPU 3/KVM`, `CPU 0/TCG`; libvirt starts QEMU with
/// `debug-threads=on`).
pub fn vcpu_of_thread(comm: &str) -> Option<u32> {
    let rest = comm.trim().strip_prefix("CPU ")?;
    let (n, accel) = rest.split_once('/')?;
    (!accel.is_empty()).then_some(())?;
    n.parse().ok()
}

/// Where the cpuset controller is mounted: (v1 cpuset mount, v2 unified mount), from
/// `/proc/self/mountinfo`.
pub fn cgroup_mounts(mountinfo: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let mut v1 = None;
    let mut v2 = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = left.split_whitespace().nth(4).map(PathBuf::from);
        let mut r = right.split_whitespace();
        let fstype = r.next();
        let options = r.nth(1).unwrap_or("");
        match fstype {
            Some("cgroup") if options.split(',').any(|o| o == "cpuset") => v1 = v1.or(mount),
            Some("cgroup2") => v2 = v2.or(mount),
            _ => {}
        }
    }
    (v1, v2)
}

/// The file holding the cpuset of a thread's cgroup, from its `/proc/.../cgroup`.
pub fn cpuset_file(cgroup: &str, mounts: &(Option<PathBuf>, Option<PathBuf>)) -> Option<PathBuf> {
    let mut v2_path = None;
    for line in cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "cpuset")
            && let Some(base) = &mounts.0
        {
            return Some(base.join(rel).join("cpuset.cpus"));
        }
        if controllers.is_empty() {
            v2_path = Some(rel.to_string());
        }
    }
    let base = mounts.1.as_ref()?;
    let file = base.join(v2_path?).join("cpuset.cpus.effective");
    file.exists().then_some(file)
}

/// Reads the threads of the QEMU process `pid` below `proc_root` (`/proc`).
pub fn read_threads(
    proc_root: &Path,
    pid: u32,
    mounts: &(Option<PathBuf>, Option<PathBuf>),
) -> (BTreeMap<u32, Thread>, Vec<Thread>) {
    let mut vcpus = BTreeMap::new();
    let mut emulator = Vec::new();
    let Ok(tasks) = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return (vcpus, emulator);
    };
    for task in tasks.filter_map(Result::ok) {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let dir = task.path();
        // A thread that ends while being read is simply not there.
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        let Some(affinity) = parse_affinity(&status) else {
            continue;
        };
        let cpuset = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| cpuset_file(&c, mounts))
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|c| parse_cpulist(c.trim()).ok());
        let thread = Thread {
            tid,
            affinity,
            cpuset,
        };
        match vcpu_of_thread(&comm) {
            Some(v) => {
                vcpus.insert(v, thread);
            }
            None => emulator.push(thread),
        }
    }
    emulator.sort_by_key(|t| t.tid);
    (vcpus, emulator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(tid: u32, cpus: &[u32]) -> Thread {
        Thread {
            tid,
            affinity: cpus.to_vec(),
            cpuset: Some(cpus.to_vec()),
        }
    }

    fn dedicated(uuid: &str, cpu: u32, emulator: &[u32]) -> (Expected, Observed) {
        (
            Expected {
                uuid: uuid.into(),
                name: format!("n-{uuid}"),
                vcpus: vec![vec![cpu]],
                emulator: emulator.to_vec(),
                exclusive: vec![cpu],
                slack: vec![],
                accounted: true,
            },
            Observed {
                libvirt_vcpus: vec![vec![cpu]],
                libvirt_emulator: emulator.to_vec(),
                vcpu_threads: BTreeMap::from([(0, thread(100, &[cpu]))]),
                emulator_threads: vec![thread(99, emulator), thread(101, emulator)],
            },
        )
    }

    fn floating(uuid: &str, pool: &[u32]) -> (Expected, Observed) {
        (
            Expected {
                uuid: uuid.into(),
                name: format!("n-{uuid}"),
                vcpus: vec![pool.to_vec(), pool.to_vec()],
                emulator: pool.to_vec(),
                exclusive: vec![],
                slack: vec![],
                accounted: true,
            },
            Observed {
                libvirt_vcpus: vec![pool.to_vec(), pool.to_vec()],
                libvirt_emulator: pool.to_vec(),
                vcpu_threads: BTreeMap::from([(0, thread(200, pool)), (1, thread(201, pool))]),
                emulator_threads: vec![thread(199, pool)],
            },
        )
    }

    fn kinds(v: &[Violation]) -> Vec<(&str, Kind, Option<u32>)> {
        v.iter()
            .map(|v| (v.uuid.as_str(), v.kind, v.vcpu))
            .collect()
    }

    #[test]
    fn conforming_guests_have_no_violations() {
        assert!(check(&[dedicated("c", 1, &[0]), floating("v", &[2, 3])]).is_empty());
    }

    #[test]
    fn a_vcpu_repinned_behind_the_agents_back() {
        // `virsh vcpupin c 0 2`: libvirt, the thread and its cgroup all say 2.
        let mut c = dedicated("c", 1, &[0]);
        c.1.libvirt_vcpus[0] = vec![2];
        c.1.vcpu_threads.insert(0, thread(100, &[2]));
        let v = check(&[c, floating("v", &[2, 3])]);
        assert_eq!(
            kinds(&v),
            [
                ("c", Kind::LibvirtVcpuPin, Some(0)),
                ("c", Kind::VcpuAffinity, Some(0)),
                ("c", Kind::VcpuCpuset, Some(0)),
            ]
        );
        assert_eq!(
            (v[1].expected.clone(), v[1].actual.clone()),
            (vec![1], vec![2])
        );
        assert!(
            v[1].detail.contains("expected CPUs 1, found 2"),
            "{}",
            v[1].detail
        );
    }

    #[test]
    fn a_thread_moved_by_taskset_only() {
        let mut c = dedicated("c", 1, &[0]);
        c.1.vcpu_threads.get_mut(&0).unwrap().affinity = vec![0, 1];
        assert_eq!(kinds(&check(&[c])), [("c", Kind::VcpuAffinity, Some(0))]);
    }

    #[test]
    fn an_emulator_repinned() {
        let mut c = dedicated("c", 1, &[0]);
        c.1.libvirt_emulator = vec![1];
        c.1.emulator_threads = vec![thread(99, &[1]), thread(101, &[1])];
        let v = check(&[c]);
        assert_eq!(
            kinds(&v),
            [
                ("c", Kind::LibvirtEmulatorPin, None),
                ("c", Kind::EmulatorAffinity, None),
                ("c", Kind::EmulatorCpuset, None),
            ],
            "one per kind, not one per thread"
        );
    }

    #[test]
    fn another_guest_on_a_dedicated_cpu() {
        let mut v = floating("v", &[2, 3]);
        v.1.vcpu_threads.get_mut(&1).unwrap().affinity = vec![1, 2, 3];
        let found = check(&[dedicated("c", 1, &[0]), v]);
        assert_eq!(
            kinds(&found),
            [
                ("v", Kind::VcpuAffinity, Some(1)),
                ("c", Kind::DedicatedCpuShared, None)
            ]
        );
        assert_eq!(found[1].actual, vec![1]);
        assert!(
            found[1].detail.contains("vCPU 1 of guest n-v (v)"),
            "{}",
            found[1].detail
        );
        assert!(!Kind::DedicatedCpuShared.own() && Kind::VcpuAffinity.own());
    }

    #[test]
    fn a_guest_placement_does_not_count_is_reported_and_still_checked_against() {
        let c = dedicated("c", 3, &[0]);
        // Left out at start-up, still running on its old pins, which include 3.
        let (mut e, o) = floating("lost", &[1, 2, 3]);
        e.accounted = false;
        // Whatever its threads do, it has no pins of its own to break...
        e.vcpus = vec![vec![], vec![]];
        e.emulator = vec![];
        let v = check(&[c, (e, o)]);
        assert_eq!(
            kinds(&v),
            vec![
                ("lost", Kind::Unaccounted, None),
                // ...but the dedicated guest's promise is broken by them.
                ("c", Kind::DedicatedCpuShared, None),
            ]
        );
        assert!(
            v[0].detail
                .starts_with("placement does not count this guest")
        );
        assert!(
            v[1].detail.contains("guest n-lost (lost)"),
            "{}",
            v[1].detail
        );
        assert!(!Kind::Unaccounted.own());
    }

    #[test]
    fn floating_threads_may_keep_cpus_a_reservation_took_from_the_pool() {
        // The pool was 2-3; a reservation holds 3 now. Floating guests are re-pinned only when
        // the dedicated guest is created: until then 2-3 is no drift; 1 (not pool) still is.
        let mut v = floating("v", &[2, 3]);
        v.0.vcpus = vec![vec![2], vec![2]];
        v.0.emulator = vec![2];
        v.0.slack = vec![vec![3]; 3];
        assert!(check(std::slice::from_ref(&v)).is_empty());
        v.1.vcpu_threads.get_mut(&0).unwrap().affinity = vec![1, 2, 3];
        assert_eq!(
            kinds(&check(&[v.clone()])),
            [("v", Kind::VcpuAffinity, Some(0))]
        );
        // Fewer CPUs than the pool is drift too.
        v.1.vcpu_threads.get_mut(&0).unwrap().affinity = vec![3];
        assert_eq!(kinds(&check(&[v])), [("v", Kind::VcpuAffinity, Some(0))]);
    }

    #[test]
    fn idle_siblings_count_as_exclusive() {
        let mut c = dedicated("c", 1, &[0]);
        c.0.exclusive = vec![1, 5];
        let v = floating("v", &[5]);
        assert_eq!(
            kinds(&check(&[c, v])),
            [("c", Kind::DedicatedCpuShared, None)]
        );
    }

    #[test]
    fn thread_names_and_status() {
        assert_eq!(vcpu_of_thread("CPU 3/KVM\n"), Some(3));
        assert_eq!(vcpu_of_thread("CPU 0/TCG"), Some(0));
        assert_eq!(vcpu_of_thread("qemu-system-x86"), None);
        assert_eq!(vcpu_of_thread("CPU 1/"), None);
        assert_eq!(
            parse_affinity("Name:\tx\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1,4\n"),
            Some(vec![0, 1, 4])
        );
    }

    #[test]
    fn cgroup_files() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/cpuset rw,relatime shared:5 - cgroup cgroup rw,cpuset\n\
31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let mounts = cgroup_mounts(mountinfo);
        assert_eq!(
            mounts,
            (
                Some(PathBuf::from("/sys/fs/cgroup/cpuset")),
                Some(PathBuf::from("/sys/fs/cgroup/unified"))
            )
        );
        let cgroup = "4:memory:/x\n3:cpuset:/machine/qemu-1-c1.libvirt-qemu/vcpu0\n0::/\n";
        assert_eq!(
            cpuset_file(cgroup, &mounts),
            Some(PathBuf::from(
                "/sys/fs/cgroup/cpuset/machine/qemu-1-c1.libvirt-qemu/vcpu0/cpuset.cpus"
            ))
        );
        // No cpuset anywhere: nothing to compare.
        assert_eq!(cpuset_file("0::/nonexistent-cgroup", &(None, None)), None);
    }
}
