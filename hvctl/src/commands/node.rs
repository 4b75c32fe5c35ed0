//! `hvctl node inventory|capacity|health|drain|undrain`.

use std::process::ExitCode;

use hvagent_proto::v1 as pb;

use super::{EXIT_USAGE, answer, fail};
use crate::cli::{NodeCommand, Output};
use crate::render;

type Node = pb::node_service_client::NodeServiceClient<tonic::transport::Channel>;

pub async fn run(output: Output, agent: &str, node: &mut Node, command: NodeCommand) -> ExitCode {
    match command {
        NodeCommand::Inventory => answer(
            output,
            agent,
            node.get_inventory(pb::GetInventoryRequest {}).await,
            render::inventory,
        ),
        NodeCommand::Capacity { flavors } => answer(
            output,
            agent,
            node.get_capacity(pb::GetCapacityRequest { flavors }).await,
            render::capacity,
        ),
        NodeCommand::Health { watch: false, .. } => answer(
            output,
            agent,
            node.get_health(pb::GetHealthRequest {}).await,
            render::health,
        ),
        NodeCommand::Health {
            watch: true,
            interval,
        } => watch_health(output, agent, node, interval).await,
        NodeCommand::Drain { to } => match node.drain(pb::DrainRequest { targets: to }).await {
            Ok(r) => {
                let r = r.into_inner();
                let printed = super::print(output, &r, render::drained);
                if r.stayed.is_empty() {
                    printed
                } else {
                    ExitCode::from(super::EXIT_CALL_FAILED)
                }
            }
            Err(status) => fail(agent, &status),
        },
        NodeCommand::Undrain => answer(
            output,
            agent,
            node.undrain(pb::UndrainRequest {}).await,
            |_| "node admitting new guests\n".into(),
        ),
    }
}

/// Prints a health snapshot as the agent sends each one, until interrupted.
async fn watch_health(
    output: Output,
    agent: &str,
    node: &mut Node,
    interval: Option<f64>,
) -> ExitCode {
    let interval_ms = match interval {
        None => 0,
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => (s * 1000.0).round() as u32,
        Some(s) => {
            eprintln!("hvctl: --interval: must be between 0 and 3600 seconds, got {s}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut stream = match node
        .watch_health(pb::WatchHealthRequest { interval_ms })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(status) => return fail(agent, &status),
    };
    loop {
        match stream.message().await {
            Ok(Some(h)) => match output {
                Output::Json => println!("{}", serde_json::to_string(&h).unwrap_or_default()),
                // Clear the terminal between tables, as `watch` does.
                Output::Table | Output::Markdown => print!("\x1b[H\x1b[2J{}", render::health(&h)),
            },
            Ok(None) => return ExitCode::SUCCESS,
            Err(status) => return fail(agent, &status),
        }
    }
}
