//! Who may call what: every gRPC method needs a role (`reader`, `operator`, `controller`), and
//! each caller has one. On the Unix socket the caller is the peer process's uid and groups
//! (`SO_PEERCRED`): root is `controller`; others get the highest role their user or any of
//! their groups is mapped to in `[access]`, or none. On the TCP listener the caller is the
//! identity of its client certificate (see [`crate::tls::identity`]), mapped to a role by
//! `[access] tls_identities`, or none. Pure rules here; the tower layer that applies them and
//! writes the audit log is in [`layer`].

pub mod audit;
pub mod layer;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tonic::transport::server::UdsConnectInfo;

/// Who is on the other end of a connection, as the listener that accepted it saw them.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A local process on the Unix socket.
    Unix(UdsConnectInfo),
    /// A client on the TCP listener, after the TLS handshake checked its certificate.
    Tls {
        remote: SocketAddr,
        /// The certificate's identity; `None` when it names none.
        identity: Option<String>,
    },
}

/// `[access]`: the roles of local users and groups, and of client certificate identities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub unix: UnixPolicy,
    /// Certificate identity (URI SAN, else DNS SAN, else CN) → role.
    pub certificates: BTreeMap<String, Role>,
}

impl Policy {
    /// The role of a TLS client by its certificate identity; `None`: no role.
    pub fn certificate_role(&self, identity: Option<&str>) -> Option<Role> {
        identity.and_then(|id| self.certificates.get(id).copied())
    }
}

/// What a caller may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Inventory, capacity, health, get, list, watch, guarantee reports.
    Reader,
    /// Reader, plus start, stop, reboot and the console.
    Operator,
    /// Everything: create, delete, reserve, release, networks, images.
    Controller,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Controller => "controller",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            "controller" => Some(Role::Controller),
            _ => None,
        }
    }
}

/// The role a method needs, from its gRPC path (`/hvagent.v1.VmService/Create`), as the table
/// of served services ([`crate::api::services`]) says. Methods not named there (including ones
/// added later) need `controller`: refused unless allowed.
pub fn required(path: &str) -> Role {
    crate::api::services::method(path).role
}

/// Whether a method changes something (and so goes to the audit log).
pub fn mutating(path: &str) -> bool {
    crate::api::services::method(path).mutates
}

/// `[access]`: roles for local users and groups, by id (names resolved at start-up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixPolicy {
    pub users: BTreeMap<u32, Role>,
    pub groups: BTreeMap<u32, Role>,
}

impl UnixPolicy {
    /// The role of a local caller: root is `controller`; otherwise the highest role its user
    /// or any of its groups (`gids`, primary included) has; `None`: no role.
    pub fn role(&self, uid: u32, gids: &[u32]) -> Option<Role> {
        if uid == 0 {
            return Some(Role::Controller);
        }
        let by_user = self.users.get(&uid).copied();
        let by_group = gids
            .iter()
            .filter_map(|g| self.groups.get(g).copied())
            .max();
        by_user.max(by_group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_the_documented_roles() {
        for (path, role) in [
            ("/hvagent.v1.NodeService/GetInventory", Role::Reader),
            ("/hvagent.v1.NodeService/WatchHealth", Role::Reader),
            ("/hvagent.v1.VmService/List", Role::Reader),
            ("/hvagent.v1.VmService/GetGuaranteeReport", Role::Reader),
            ("/hvagent.v1.VmService/Start", Role::Operator),
            ("/hvagent.v1.VmService/GetConsoleLog", Role::Operator),
            ("/hvagent.v1.VmService/Create", Role::Controller),
            ("/hvagent.v1.VmService/Delete", Role::Controller),
            ("/hvagent.v1.PlacementService/Reserve", Role::Controller),
            ("/hvagent.v1.PlacementService/ListClaims", Role::Reader),
            ("/hvagent.v1.ImageService/Import", Role::Controller),
            ("/hvagent.v1.NetworkService/Ensure", Role::Controller),
            ("/grpc.health.v1.Health/Check", Role::Reader),
            ("/hvagent.v1.VmService/SomethingNew", Role::Controller),
            ("nonsense", Role::Controller),
        ] {
            assert_eq!(required(path), role, "{path}");
        }
        assert!(mutating("/hvagent.v1.VmService/Create"));
        assert!(mutating("/hvagent.v1.VmService/Stop"));
        assert!(!mutating("/hvagent.v1.VmService/GetConsoleLog"));
        assert!(!mutating("/hvagent.v1.NodeService/GetHealth"));
    }

    #[test]
    fn unix_callers_get_their_best_role() {
        let policy = UnixPolicy {
            users: BTreeMap::from([(1001, Role::Operator)]),
            groups: BTreeMap::from([(500, Role::Reader), (501, Role::Controller)]),
        };
        assert_eq!(policy.role(0, &[]), Some(Role::Controller));
        assert_eq!(policy.role(1000, &[100]), None);
        assert_eq!(policy.role(1000, &[100, 500]), Some(Role::Reader));
        assert_eq!(policy.role(1001, &[500]), Some(Role::Operator));
        assert_eq!(policy.role(1001, &[501]), Some(Role::Controller));
        assert!(Role::Reader < Role::Operator && Role::Operator < Role::Controller);
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn certificate_identities_get_exactly_their_role() {
        let policy = Policy {
            certificates: BTreeMap::from([
                ("spiffe://cloud.example/cp".to_string(), Role::Controller),
                ("monitor.example".to_string(), Role::Reader),
            ]),
            ..Policy::default()
        };
        assert_eq!(
            policy.certificate_role(Some("spiffe://cloud.example/cp")),
            Some(Role::Controller)
        );
        assert_eq!(
            policy.certificate_role(Some("monitor.example")),
            Some(Role::Reader)
        );
        // No prefix or case folding: an identity is the whole string.
        assert_eq!(
            policy.certificate_role(Some("spiffe://cloud.example/cp/x")),
            None
        );
        assert_eq!(policy.certificate_role(Some("MONITOR.example")), None);
        assert_eq!(policy.certificate_role(None), None);
    }
}
