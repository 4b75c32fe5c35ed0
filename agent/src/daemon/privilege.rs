//! Least privilege: the agent runs as root (libvirt's system instance, netlink, QEMU's files)
//! but keeps only the capabilities its configuration needs, for itself and everything it
//! starts, and creates files private unless it says otherwise. Called before any thread is
//! started: capabilities are per thread, and threads inherit the starting thread's.

use caps::{CapSet, Capability, CapsHashSet};

use super::Config;

/// A capability the agent keeps, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub capability: Capability,
    pub why: &'static str,
}

/// The capabilities `config` needs after start-up; every other one is dropped, also from the
/// bounding set, so that no program the agent runs (tc, nsenter, qemu-img, mtools, the KVM
/// trial) can have more.
pub fn needed(config: &Config) -> Vec<Kept> {
    let mut kept = vec![
        Kept {
            capability: Capability::CAP_NET_ADMIN,
            why: "bridges, VXLAN devices, taps, addresses and routes over netlink; tc qdiscs for NIC limits",
        },
        Kept {
            capability: Capability::CAP_DAC_READ_SEARCH,
            why: "reading files libvirt hands to QEMU's user while a guest runs (serial console logs)",
        },
        Kept {
            capability: Capability::CAP_SYS_PTRACE,
            why: "reading /proc/PID/numa_maps and smaps of QEMU processes (another user) for guarantee reports",
        },
    ];
    if config.network.namespace.is_some() {
        kept.push(Kept {
            capability: Capability::CAP_SYS_ADMIN,
            why: "[network] namespace is set: entering it (setns; nsenter for tc)",
        });
    }
    if config.access.socket_group.is_some() {
        kept.push(Kept {
            capability: Capability::CAP_CHOWN,
            why: "[access] socket_group is set: handing the socket to that group",
        });
    }
    let low_port = |port: u16| port != 0 && port < 1024;
    if low_port(config.metrics.listen.port())
        || config
            .api
            .tcp
            .as_ref()
            .is_some_and(|t| low_port(t.listen.port()))
    {
        kept.push(Kept {
            capability: Capability::CAP_NET_BIND_SERVICE,
            why: "a listener is configured on a port below 1024",
        });
    }
    kept
}

#[derive(Debug, thiserror::Error)]
#[error("cannot drop capabilities ({step}): {source}")]
pub struct PrivilegeError {
    step: &'static str,
    source: caps::errors::CapsError,
}

/// Drops every capability not in `kept` from this thread's bounding, inheritable, ambient,
/// effective and permitted sets; returns the ones it holds afterwards (the kept ones it had).
pub fn restrict(kept: &[Kept]) -> Result<CapsHashSet, PrivilegeError> {
    let fail = |step| move |source| PrivilegeError { step, source };
    let keep: CapsHashSet = kept.iter().map(|k| k.capability).collect();
    let permitted = caps::read(None, CapSet::Permitted).map_err(fail("read permitted"))?;
    let bounding = caps::read(None, CapSet::Bounding).map_err(fail("read bounding"))?;
    caps::clear(None, CapSet::Ambient).map_err(fail("clear ambient"))?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(fail("drop from bounding"))?;
        }
    } else if !bounding.is_subset(&keep) {
        // Under the systemd unit (no CAP_SETPCAP): the unit's bounding set stays; with
        // no_new_privs and empty inheritable and ambient sets, programs the agent starts still
        // get no more than the capabilities it keeps.
        tracing::info!("bounding set left as started (no CAP_SETPCAP to narrow it)");
    }
    caps::clear(None, CapSet::Inheritable).map_err(fail("clear inheritable"))?;
    let held: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &held).map_err(fail("set effective"))?;
    caps::set(None, CapSet::Permitted, &held).map_err(fail("set permitted"))?;
    Ok(held)
}

/// The limit on open descriptors, before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub was: u64,
    pub now: u64,
}

/// Raises the soft limit on open descriptors to the hard one. Connections, guests' files and
/// taps, libvirt's sockets and the programs the agent runs all take descriptors, and the usual
/// soft limit (1024) is low for a busy node; the hard limit is what the operator allows (the
/// unit's `LimitNOFILE=`). Raising the soft limit up to the hard one needs no privilege.
pub fn raise_open_files() -> std::io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit it is given, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let was = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the rlimit it is given, which lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(OpenFiles {
        was,
        now: limit.rlim_cur,
    })
}

/// Files and directories the agent creates are private unless created with an explicit mode
/// (the socket 0660, directories QEMU must traverse 0711).
pub const UMASK: u32 = 0o077;

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_of(config: &Config) -> Vec<Capability> {
        needed(config).into_iter().map(|k| k.capability).collect()
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        let raised = raise_open_files().unwrap();
        assert!(raised.now >= raised.was);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `limit`, which lives across the call.
        let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(read, 0);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(limit.rlim_cur, raised.now);
    }

    #[test]
    fn defaults_keep_three_capabilities() {
        assert_eq!(
            caps_of(&Config::default()),
            [
                Capability::CAP_NET_ADMIN,
                Capability::CAP_DAC_READ_SEARCH,
                Capability::CAP_SYS_PTRACE
            ]
        );
        assert!(needed(&Config::default()).iter().all(|k| !k.why.is_empty()));
    }

    #[test]
    fn configuration_adds_only_what_it_uses() {
        let config = Config::parse(
            "f",
            "[network]\nnamespace = \"/run/netns/x\"\n[access]\nsocket_group = \"hv\"\n[metrics]\nlisten = \"0.0.0.0:443\"\n",
        )
        .unwrap();
        let caps = caps_of(&config);
        assert_eq!(caps.len(), 6);
        for cap in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_CHOWN,
            Capability::CAP_NET_BIND_SERVICE,
        ] {
            assert!(caps.contains(&cap), "{cap:?}");
        }
        // Port 0 (any free port) needs nothing.
        let config = Config::parse("f", "[metrics]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(caps_of(&config).len(), 3);
    }
}
