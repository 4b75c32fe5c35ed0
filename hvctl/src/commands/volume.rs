//! `hvctl volume create|list|get|delete`.

use std::process::ExitCode;

use hvagent_proto::v1 as pb;

use super::answer;
use crate::cli::{Output, VolumeCommand};
use crate::render;

type Volumes = pb::volume_service_client::VolumeServiceClient<tonic::transport::Channel>;

pub async fn run(
    output: Output,
    agent: &str,
    volumes: &mut Volumes,
    command: VolumeCommand,
) -> ExitCode {
    let one = |v: &pb::Volume| render::volumes(std::slice::from_ref(v));
    match command {
        VolumeCommand::Create {
            name,
            size_gb,
            format,
            shareable,
            image,
            source,
        } => {
            let req = pb::CreateVolumeRequest {
                name,
                size_gb,
                format: format.unwrap_or_default(),
                shareable,
                image: image.unwrap_or_default(),
                source: source.map(absolute).unwrap_or_default(),
            };
            answer(output, agent, volumes.create(req).await, one)
        }
        VolumeCommand::List => answer(
            output,
            agent,
            volumes.list(pb::ListVolumesRequest {}).await,
            render::volume_list,
        ),
        VolumeCommand::Get { name } => answer(
            output,
            agent,
            volumes.get(pb::GetVolumeRequest { name }).await,
            one,
        ),
        VolumeCommand::Delete { name } => answer(
            output,
            agent,
            volumes.delete(pb::DeleteVolumeRequest { name }).await,
            |_: &pb::DeleteVolumeResponse| "deleted\n".into(),
        ),
    }
}

/// A device path relative to the working directory made absolute (the agent has another);
/// an nbd:// URI as it is.
fn absolute(source: String) -> String {
    if source.starts_with("nbd://") {
        return source;
    }
    let path = std::path::PathBuf::from(&source);
    std::path::absolute(&path)
        .unwrap_or(path)
        .display()
        .to_string()
}
