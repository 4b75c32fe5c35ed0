//! `hvctl placement reserve|release|claims`.

use std::process::ExitCode;

use hvagent_proto::v1 as pb;

use super::answer;
use crate::cli::{Output, PlacementCommand};
use crate::render;

type Placement = pb::placement_service_client::PlacementServiceClient<tonic::transport::Channel>;

pub async fn run(
    output: Output,
    agent: &str,
    placement: &mut Placement,
    command: PlacementCommand,
) -> ExitCode {
    match command {
        PlacementCommand::Reserve {
            flavor,
            vm_uuid,
            request_id,
            ttl,
        } => answer(
            output,
            agent,
            placement
                .reserve(pb::ReserveRequest {
                    request_id: request_id.unwrap_or_else(|| format!("hvctl-{vm_uuid}")),
                    vm_uuid,
                    flavor,
                    ttl_seconds: ttl,
                })
                .await,
            |r: &pb::ReserveResponse| render::claims(r.claim.as_slice(), &[]),
        ),
        PlacementCommand::Release { vm_uuid } => answer(
            output,
            agent,
            placement.release(pb::ReleaseRequest { vm_uuid }).await,
            |r: &pb::ReleaseResponse| render::claims(r.claim.as_slice(), &[]),
        ),
        PlacementCommand::Claims => answer(
            output,
            agent,
            placement.list_claims(pb::ListClaimsRequest {}).await,
            |r: &pb::ListClaimsResponse| render::claims(&r.claims, &r.shared_pool),
        ),
    }
}
