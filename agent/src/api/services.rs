//! The one table of what the agent serves: every hvagent gRPC service with each method's role
//! and whether it changes something. The access layer takes roles and audit from it, the
//! daemon registers every service in it with grpc.health, and tests hold it equal to the
//! protos, to the services the server mounts and to `docs/api.md`. A new RPC gets its row
//! here; one without a row needs `controller` (refused unless allowed).

use crate::access::Role;

/// One method: its name, the role a caller needs, and whether calls go to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub name: &'static str,
    pub role: Role,
    pub mutates: bool,
    /// The client streams its request (several messages): the access layer reads only the
    /// first for the audit record and passes the rest on as it comes.
    pub streams_requests: bool,
}

/// One served service, by its full gRPC name.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub name: &'static str,
    pub methods: &'static [Method],
}

const fn read(name: &'static str) -> Method {
    Method {
        name,
        role: Role::Reader,
        mutates: false,
        streams_requests: false,
    }
}

/// Operator methods that act on a guest (and so are audited).
const fn operate(name: &'static str) -> Method {
    Method {
        name,
        role: Role::Operator,
        mutates: true,
        streams_requests: false,
    }
}

const fn control(name: &'static str) -> Method {
    Method {
        name,
        role: Role::Controller,
        mutates: true,
        streams_requests: false,
    }
}

/// Every hvagent service and method, in the order of `docs/api.md`.
pub const SERVICES: &[Service] = &[
    Service {
        name: "hvagent.v1.NodeService",
        methods: &[
            read("GetInventory"),
            read("GetCapacity"),
            read("GetHealth"),
            read("WatchHealth"),
            control("Drain"),
            control("Undrain"),
        ],
    },
    Service {
        name: "hvagent.v1.FlavorService",
        methods: &[
            read("Parse"),
            read("Explain"),
            read("ListStandard"),
            read("PlacementRequest"),
        ],
    },
    Service {
        name: "hvagent.v1.PlacementService",
        methods: &[control("Reserve"), control("Release"), read("ListClaims")],
    },
    Service {
        name: "hvagent.v1.ImageService",
        methods: &[
            control("Import"),
            read("List"),
            read("Get"),
            control("Delete"),
        ],
    },
    Service {
        name: "hvagent.v1.VolumeService",
        // Volumes take node storage and hold tenants' data: made and removed by the control
        // plane, as images are.
        methods: &[
            control("Create"),
            read("Get"),
            read("List"),
            control("Delete"),
        ],
    },
    Service {
        name: "hvagent.v1.VmService",
        methods: &[
            control("Create"),
            read("Get"),
            read("List"),
            operate("Start"),
            operate("Stop"),
            operate("Reboot"),
            operate("Pause"),
            operate("Resume"),
            control("Delete"),
            control("Snapshot"),
            // Resizes take and give back claims, as Create and Delete do.
            control("Resize"),
            control("ConfirmResize"),
            control("RevertResize"),
            // Moving a guest takes a claim on another node and gives this one's back.
            control("Migrate"),
            // Attaching gives a guest another's data; as Create, the control plane's call.
            control("AttachVolume"),
            control("DetachVolume"),
            // A NIC puts a guest into another network: as Create, the control plane's call.
            control("AttachInterface"),
            control("DetachInterface"),
            // What the guest's agent says of it (OS, host name, addresses, file systems) is
            // inventory a monitor reads, no tenant data; the call changes nothing.
            read("GetGuestInfo"),
            // Reading a guest's console may show what its tenant typed: more than a reader.
            Method {
                name: "GetConsoleLog",
                role: Role::Operator,
                mutates: false,
                streams_requests: false,
            },
            // Typing into a guest's console acts on it: an operator's, and audited (one line
            // per session).
            Method {
                streams_requests: true,
                ..operate("Console")
            },
            read("WatchEvents"),
            read("GetGuaranteeReport"),
        ],
    },
    Service {
        name: "hvagent.v1.NetworkService",
        methods: &[control("Ensure"), control("Delete"), read("List")],
    },
    Service {
        name: "hvagent.v1.MigrationService",
        // The source node's agent calls these while it runs VmService.Migrate, with the
        // identity an operator maps to controller: claims and guests change hands.
        methods: &[control("Prepare"), control("Finish"), control("Abort")],
    },
];

/// The standard services (health, both reflection versions): every reader may use them.
pub const STANDARD: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The rule for a gRPC path (`/hvagent.v1.VmService/Create`): the table's row, a reader's
/// method for the standard services, and for anything unknown `controller`, audited.
pub fn method(path: &str) -> Method {
    let (service, name) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    if STANDARD.contains(&service) {
        return read("standard");
    }
    SERVICES
        .iter()
        .filter(|s| s.name == service)
        .flat_map(|s| s.methods.iter())
        .find(|m| m.name == name)
        .copied()
        .unwrap_or(control("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use prost::Message;

    /// (service, method) pairs.
    type Pairs = BTreeSet<(String, String)>;

    fn table() -> Pairs {
        SERVICES
            .iter()
            .flat_map(|s| {
                s.methods
                    .iter()
                    .map(|m| (s.name.to_string(), m.name.to_string()))
            })
            .collect()
    }

    #[test]
    fn the_table_is_exactly_the_protos_services_and_methods() {
        let set =
            prost_types::FileDescriptorSet::decode(hvagent_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut protos = Pairs::new();
        for file in &set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                for m in &service.method {
                    protos.insert((name.clone(), m.name().to_string()));
                    assert_eq!(
                        method(&format!("/{name}/{}", m.name())).streams_requests,
                        m.client_streaming(),
                        "{name}/{}: streams_requests as the proto says",
                        m.name()
                    );
                }
            }
        }
        assert_eq!(table(), protos);
        let names: BTreeSet<_> = SERVICES.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SERVICES.len(), "each service once");
        assert_eq!(
            table().len(),
            SERVICES.iter().map(|s| s.methods.len()).sum::<usize>(),
            "each method once"
        );
    }

    #[test]
    fn unknown_methods_need_controller_and_are_audited() {
        for path in [
            "/hvagent.v1.VmService/SomethingNew",
            "/hvagent.v1.NetworkService/Get",
            "/no.such.Service/Get",
            "nonsense",
        ] {
            assert_eq!(method(path).role, Role::Controller, "{path}");
            assert!(method(path).mutates, "{path}");
        }
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(method(path).role, Role::Reader, "{path}");
            assert!(!method(path).mutates);
        }
    }

    #[test]
    fn what_a_role_may_not_do_it_cannot_change() {
        // Readers never mutate; every controller method is audited.
        for s in SERVICES {
            for m in s.methods {
                if m.role == Role::Reader {
                    assert!(!m.mutates, "{}/{}", s.name, m.name);
                }
                if m.role == Role::Controller {
                    assert!(m.mutates, "{}/{}", s.name, m.name);
                }
            }
        }
    }

    /// `docs/api.md` has one row per RPC under "## Methods and roles", with its role.
    #[test]
    fn the_api_page_names_every_rpc_with_its_role() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md");
        let page = std::fs::read_to_string(path).unwrap();
        let section = page
            .split("\n## Methods and roles\n")
            .nth(1)
            .expect("docs/api.md has a '## Methods and roles' section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let mut documented = BTreeSet::new();
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (service, method) = cells[1]
                .trim_matches('`')
                .split_once('/')
                .unwrap_or_else(|| panic!("row {line:?}: method as `Service/Method`"));
            let inserted = documented.insert((
                format!("hvagent.v1.{service}"),
                method.to_string(),
                cells[2].to_string(),
            ));
            assert!(inserted, "row {line:?} twice");
        }
        let code: BTreeSet<_> = SERVICES
            .iter()
            .flat_map(|s| {
                s.methods.iter().map(|m| {
                    (
                        s.name.to_string(),
                        m.name.to_string(),
                        m.role.as_str().to_string(),
                    )
                })
            })
            .collect();
        let missing: Vec<_> = code.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&code).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "docs/api.md disagrees with api/services.rs: missing {missing:?}, not served or wrong role {stale:?}"
        );
    }
}
