//! `hvagent.v1.FlavorService`: the flavor module behind gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;

use hvagent_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::flavor::proto::{standard_flavors, to_proto};
use crate::flavor::{self, explain, extra_specs, view::FlavorView};
use crate::placement::PlacementState;
use crate::placement::provider::placement_request;

/// Flavor names are pure computation; only `PlacementRequest` reads the node's `[placement]`
/// policy, from the allocator.
pub struct FlavorApi {
    placement: Arc<PlacementState>,
}

impl FlavorApi {
    pub fn new(placement: Arc<PlacementState>) -> Self {
        Self { placement }
    }

    pub fn into_service(self) -> pb::flavor_service_server::FlavorServiceServer<Self> {
        pb::flavor_service_server::FlavorServiceServer::new(self)
    }
}

/// Longest name accepted; real names are well under 100 characters.
pub const MAX_NAME_CHARS: usize = 256;

/// Parses the flavor name in request field `field`, or the INVALID_ARGUMENT that names the
/// field and rule.
pub fn parse_name(field: &str, name: &str) -> Result<flavor::Parsed, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Status::invalid_argument(format!(
            "{field}: at most {MAX_NAME_CHARS} characters"
        )));
    }
    flavor::parse(name).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

#[tonic::async_trait]
impl pb::flavor_service_server::FlavorService for FlavorApi {
    async fn parse(
        &self,
        request: Request<pb::ParseFlavorRequest>,
    ) -> Result<Response<pb::ParseFlavorResponse>, Status> {
        let req = request.into_inner();
        let parsed = parse_name("name", &req.name)?;
        let given: BTreeMap<String, String> = req.extra_specs;
        let contradictions = extra_specs::check(&parsed.spec, &given)
            .iter()
            .map(|c| c.to_string())
            .collect();
        Ok(Response::new(pb::ParseFlavorResponse {
            flavor: Some(to_proto(FlavorView::new(&parsed))),
            warnings: parsed.warnings,
            contradictions,
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainFlavorRequest>,
    ) -> Result<Response<pb::ExplainFlavorResponse>, Status> {
        let parsed = parse_name("name", &request.into_inner().name)?;
        let promises = explain::explain(&parsed.spec)
            .into_iter()
            .map(|p| pb::FlavorPromise {
                part: p.part,
                promise: p.promise,
                enforcement: p.enforcement,
            })
            .collect();
        Ok(Response::new(pb::ExplainFlavorResponse {
            flavor: Some(to_proto(FlavorView::new(&parsed))),
            promises,
        }))
    }

    async fn list_standard(
        &self,
        _request: Request<pb::ListStandardFlavorsRequest>,
    ) -> Result<Response<pb::ListStandardFlavorsResponse>, Status> {
        Ok(Response::new(pb::ListStandardFlavorsResponse {
            flavors: standard_flavors(),
        }))
    }

    async fn placement_request(
        &self,
        request: Request<pb::PlacementRequestRequest>,
    ) -> Result<Response<pb::PlacementRequestResponse>, Status> {
        let parsed = parse_name("name", &request.into_inner().name)?;
        let policy = self.placement.lock().policy().clone();
        Ok(Response::new(
            placement_request(&parsed.spec, &policy).into_proto(parsed.spec.name()),
        ))
    }
}
