//! `hvctl network ensure|list|delete`.

use std::process::ExitCode;

use hvagent_proto::v1 as pb;

use super::answer;
use crate::cli::{NetworkCommand, Output};
use crate::render;

type Networks = pb::network_service_client::NetworkServiceClient<tonic::transport::Channel>;

pub async fn run(
    output: Output,
    agent: &str,
    networks: &mut Networks,
    command: NetworkCommand,
) -> ExitCode {
    match command {
        NetworkCommand::Ensure {
            name,
            kind,
            vni,
            uplink,
            underlay,
            local,
            remotes,
            group,
            port,
            vlan_id,
            mtu,
            address,
        } => {
            let network = pb::Network {
                name,
                kind,
                vni: vni.unwrap_or(0),
                underlay: underlay.unwrap_or_default(),
                local: local.unwrap_or_default(),
                remotes,
                group: group.unwrap_or_default(),
                port: port.unwrap_or(0),
                vlan_id: vlan_id.unwrap_or(0),
                uplink: uplink.unwrap_or_default(),
                mtu: mtu.unwrap_or(0),
                address: address.unwrap_or_default(),
            };
            answer(
                output,
                agent,
                networks
                    .ensure(pb::EnsureNetworkRequest {
                        network: Some(network),
                    })
                    .await,
                |r: &pb::EnsureNetworkResponse| {
                    format!(
                        "{}{}",
                        if r.changed {
                            "created\n"
                        } else {
                            "unchanged\n"
                        },
                        render::networks(r.network.as_slice())
                    )
                },
            )
        }
        NetworkCommand::List => answer(
            output,
            agent,
            networks.list(pb::ListNetworksRequest {}).await,
            |r: &pb::ListNetworksResponse| render::networks(&r.networks),
        ),
        NetworkCommand::Delete { name, force } => answer(
            output,
            agent,
            networks
                .delete(pb::DeleteNetworkRequest { name, force })
                .await,
            |r: &pb::DeleteNetworkResponse| {
                if r.deleted {
                    "deleted\n"
                } else {
                    "no such network\n"
                }
                .into()
            },
        ),
    }
}
