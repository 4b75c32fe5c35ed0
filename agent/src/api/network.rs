//! `hvagent.v1.NetworkService` over `net::Networks`.

use std::net::IpAddr;
use std::sync::Arc;

use hvagent_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::net::spec::{DEFAULT_VXLAN_PORT, HostAddress, Kind, NetworkSpec, SpecError};
use crate::net::{NetworkView, Networks, NetworksError};

fn status(e: NetworksError) -> Status {
    match e {
        NetworksError::Invalid(e) => Status::invalid_argument(e.to_string()),
        NetworksError::NotFound(m) => Status::not_found(m),
        NetworksError::AlreadyExists(m) => Status::already_exists(m),
        NetworksError::Precondition(m) => Status::failed_precondition(m),
        NetworksError::Failed(m) => Status::internal(m),
    }
}

fn invalid(field: &'static str, rule: impl Into<String>) -> Status {
    Status::invalid_argument(
        SpecError {
            field,
            rule: rule.into(),
        }
        .to_string(),
    )
}

fn ip(field: &'static str, text: &str) -> Result<IpAddr, Status> {
    text.parse()
        .map_err(|_| invalid(field, format!("{text:?} is not an IP address")))
}

fn optional(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// The proto's flat message as a spec; fields that do not belong to the kind are refused, so
/// that a caller's mistake is not silently ignored.
pub fn spec_from_proto(n: pb::Network) -> Result<NetworkSpec, Status> {
    let stray = |field: &'static str, set: bool, kind: &str| {
        if set {
            Err(invalid(field, format!("does not apply to kind {kind}")))
        } else {
            Ok(())
        }
    };
    let vxlan_fields = n.vni != 0
        || !n.underlay.is_empty()
        || !n.local.is_empty()
        || !n.remotes.is_empty()
        || !n.group.is_empty()
        || n.port != 0;
    let kind = match n.kind.as_str() {
        "bridge" => {
            stray("vni", vxlan_fields, "bridge")?;
            stray("vlan_id", n.vlan_id != 0, "bridge")?;
            Kind::Bridge {
                uplink: optional(&n.uplink),
            }
        }
        "vlan" => {
            stray("vni", vxlan_fields, "vlan")?;
            if n.uplink.is_empty() {
                return Err(invalid("uplink", "a vlan network needs its uplink"));
            }
            Kind::Vlan {
                id: u16::try_from(n.vlan_id).map_err(|_| {
                    invalid("vlan_id", format!("must be 1-4094, got {}", n.vlan_id))
                })?,
                uplink: n.uplink.clone(),
            }
        }
        "vxlan" => {
            stray("vlan_id", n.vlan_id != 0, "vxlan")?;
            stray("uplink", !n.uplink.is_empty(), "vxlan (use underlay)")?;
            if n.underlay.is_empty() {
                return Err(invalid(
                    "underlay",
                    "a vxlan network needs its underlay device",
                ));
            }
            if n.local.is_empty() {
                return Err(invalid(
                    "local",
                    "a vxlan network needs its local underlay address",
                ));
            }
            Kind::Vxlan {
                vni: n.vni,
                underlay: n.underlay.clone(),
                local: ip("local", &n.local)?,
                remotes: n
                    .remotes
                    .iter()
                    .map(|r| ip("remotes", r))
                    .collect::<Result<_, _>>()?,
                group: optional(&n.group).map(|g| ip("group", &g)).transpose()?,
                port: if n.port == 0 {
                    DEFAULT_VXLAN_PORT
                } else {
                    u16::try_from(n.port)
                        .map_err(|_| invalid("port", format!("must be 1-65535, got {}", n.port)))?
                },
            }
        }
        other => {
            return Err(invalid(
                "kind",
                format!("must be bridge, vxlan or vlan, got {other:?}"),
            ));
        }
    };
    let spec = NetworkSpec {
        name: n.name,
        kind,
        mtu: (n.mtu != 0).then_some(n.mtu),
        address: optional(&n.address)
            .map(|a| a.parse::<HostAddress>().map_err(|e| invalid("address", e)))
            .transpose()?,
    };
    spec.validate()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(spec)
}

fn spec_to_proto(s: &NetworkSpec) -> pb::Network {
    let mut n = pb::Network {
        name: s.name.clone(),
        kind: s.kind.word().into(),
        mtu: s.mtu.unwrap_or(0),
        address: s.address.map(|a| a.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    match &s.kind {
        Kind::Bridge { uplink } => n.uplink = uplink.clone().unwrap_or_default(),
        Kind::Vlan { id, uplink } => {
            n.vlan_id = u32::from(*id);
            n.uplink = uplink.clone();
        }
        Kind::Vxlan {
            vni,
            underlay,
            local,
            remotes,
            group,
            port,
        } => {
            n.vni = *vni;
            n.underlay = underlay.clone();
            n.local = local.to_string();
            n.remotes = remotes.iter().map(IpAddr::to_string).collect();
            n.group = group.map(|g| g.to_string()).unwrap_or_default();
            n.port = u32::from(*port);
        }
    }
    n
}

fn view_to_proto(v: NetworkView) -> pb::NetworkStatus {
    let c = v.counters;
    pb::NetworkStatus {
        spec: Some(spec_to_proto(&v.spec)),
        bridge: v.bridge,
        mtu: v.mtu,
        state: if v.problems.is_empty() {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        problems: v.problems,
        nics: v.nics,
        counters: Some(counters_to_proto(&c)),
    }
}

pub(crate) fn counters_to_proto(c: &crate::net::link::Counters) -> pb::LinkCounters {
    pb::LinkCounters {
        rx_bytes: c.rx_bytes,
        tx_bytes: c.tx_bytes,
        rx_packets: c.rx_packets,
        tx_packets: c.tx_packets,
        rx_errors: c.rx_errors,
        tx_errors: c.tx_errors,
        rx_dropped: c.rx_dropped,
        tx_dropped: c.tx_dropped,
    }
}

pub struct NetworkApi {
    networks: Arc<Networks>,
    mutations: super::Mutations,
}

impl NetworkApi {
    pub fn new(networks: Arc<Networks>, mutations: super::Mutations) -> Self {
        Self {
            networks,
            mutations,
        }
    }

    pub fn into_service(self) -> pb::network_service_server::NetworkServiceServer<Self> {
        pb::network_service_server::NetworkServiceServer::new(self)
    }

    async fn view(&self, name: &str) -> Result<pb::NetworkStatus, Status> {
        self.networks
            .list()
            .await
            .map_err(status)?
            .into_iter()
            .find(|v| v.spec.name == name)
            .map(view_to_proto)
            .ok_or_else(|| Status::internal(format!("network {name:?} vanished")))
    }
}

#[tonic::async_trait]
impl pb::network_service_server::NetworkService for NetworkApi {
    async fn ensure(
        &self,
        request: Request<pb::EnsureNetworkRequest>,
    ) -> Result<Response<pb::EnsureNetworkResponse>, Status> {
        let network = request
            .into_inner()
            .network
            .ok_or_else(|| invalid("network", "missing"))?;
        let spec = spec_from_proto(network)?;
        let name = spec.name.clone();
        // Runs to the end even if the client goes away: half a network is worse than none.
        let networks = self.networks.clone();
        let changed = self
            .mutations
            .run(async move { networks.ensure(spec).await }, status)
            .await?;
        Ok(Response::new(pb::EnsureNetworkResponse {
            network: Some(self.view(&name).await?),
            changed,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::DeleteNetworkResponse>, Status> {
        let r = request.into_inner();
        let networks = self.networks.clone();
        let deleted = self
            .mutations
            .run(
                async move { networks.delete(&r.name, r.force).await },
                status,
            )
            .await?;
        Ok(Response::new(pb::DeleteNetworkResponse { deleted }))
    }

    async fn list(
        &self,
        _request: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let networks = self
            .networks
            .list()
            .await
            .map_err(status)?
            .into_iter()
            .map(view_to_proto)
            .collect();
        Ok(Response::new(pb::ListNetworksResponse {
            networks,
            repairs: self.networks.repair_counts(),
        }))
    }
}
