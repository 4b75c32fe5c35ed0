//! `hvctl`: the operator's command line for hvagent. Parses the command line, connects to the
//! agent when the command needs it, and hands the command to its noun in `hvctl::commands`.

use std::process::ExitCode;

use clap::Parser;
use hvagent_proto::v1 as pb;
use hvctl::cli::{Cli, Command, NodeCommand};
use hvctl::client;
use hvctl::commands::{self, EXIT_UNREACHABLE, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hvctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Flavor(command) => return commands::flavor::run(cli.output, command),
        Command::Plan {
            root,
            config,
            flavors,
        } => return commands::plan::run(cli.output, &root, config.as_deref(), &flavors),
        Command::Node(_)
        | Command::Placement(_)
        | Command::Image(_)
        | Command::Volume(_)
        | Command::Vm(_)
        | Command::Verify(_)
        | Command::Network(_) => {}
    }
    // A drain answers when its last guest has moved, however long that takes.
    let wait = match &cli.command {
        Command::Node(NodeCommand::Drain { .. }) => None,
        _ => Some(client::CALL_TIMEOUT),
    };
    let (connected, agent) = match (&cli.endpoint, &cli.tls_cert, &cli.tls_key, &cli.tls_ca) {
        (Some(endpoint), Some(cert), Some(key), Some(ca)) => {
            let files = hvagent_core::tls::Files {
                cert: ("--tls-cert", cert.clone()),
                key: ("--tls-key", key.clone()),
                ca: ("--tls-ca", ca.clone()),
            };
            (
                client::connect_tls(endpoint, &files, wait).await,
                endpoint.clone(),
            )
        }
        _ => (
            client::connect_waiting(&cli.socket, wait).await,
            cli.socket.display().to_string(),
        ),
    };
    let channel = match connected {
        Ok(c) => c,
        // Unusable files or endpoint named on the command line: the command line is wrong.
        Err(e @ (client::ConnectError::Tls(_) | client::ConnectError::Endpoint(_))) => {
            eprintln!("hvctl: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("hvctl: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let (output, agent) = (cli.output, agent.as_str());
    match cli.command {
        Command::Node(command) => {
            let mut node = pb::node_service_client::NodeServiceClient::new(channel);
            commands::node::run(output, agent, &mut node, command).await
        }
        Command::Placement(command) => {
            let mut placement = pb::placement_service_client::PlacementServiceClient::new(channel);
            commands::placement::run(output, agent, &mut placement, command).await
        }
        Command::Image(command) => {
            let mut images = pb::image_service_client::ImageServiceClient::new(channel);
            commands::image::run(output, agent, &mut images, command).await
        }
        Command::Volume(command) => {
            let mut volumes = pb::volume_service_client::VolumeServiceClient::new(channel);
            commands::volume::run(output, agent, &mut volumes, command).await
        }
        Command::Vm(command) => {
            let mut vms = pb::vm_service_client::VmServiceClient::new(channel);
            commands::vm::run(output, agent, &mut vms, command).await
        }
        Command::Network(command) => {
            let mut networks = pb::network_service_client::NetworkServiceClient::new(channel);
            commands::network::run(output, agent, &mut networks, command).await
        }
        Command::Verify(args) => commands::verify::run(output, agent, channel, args).await,
        Command::Flavor(_) | Command::Plan { .. } => ExitCode::SUCCESS,
    }
}
