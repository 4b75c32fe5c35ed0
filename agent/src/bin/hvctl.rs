//! `hvctl`: the operator's command line for hvagent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hvagent::ctl::{client, render};
use hvagent_proto::v1 as pb;

/// Talk to the hvagent node agent of this compute node.
///
/// hvctl connects to the agent's Unix socket (default /run/hvagent/hvagent.sock, mode 0660:
/// root, or the socket's owner and group). Exit status: 0 success, 1 the agent refused or failed the request,
/// 2 bad command line, 3 the agent could not be reached.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// The agent's Unix socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "HVCTL_SOCKET",
        default_value = "/run/hvagent/hvagent.sock"
    )]
    socket: PathBuf,

    /// `table` for people, `json` for programs (the proto message, field names as in the API).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// This compute node: hardware inventory and what it can serve.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Hardware inventory: CPU topology, NUMA, memory and hugepages, devices, hypervisor, SCS
    /// facts (CPU brand, ECC, security) and the scheduler view (Placement inventories, traits).
    Inventory,
}

const EXIT_CALL_FAILED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 3;

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
    let channel = match client::connect(&cli.socket).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hvctl: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    match cli.command {
        Command::Node(NodeCommand::Inventory) => {
            let mut node = pb::node_service_client::NodeServiceClient::new(channel);
            match node.get_inventory(pb::GetInventoryRequest {}).await {
                Ok(resp) => print(cli.output, &resp.into_inner(), render::inventory),
                Err(status) => fail(&cli.socket, &status),
            }
        }
    }
}

fn print<T: serde::Serialize>(output: Output, value: &T, table: fn(&T) -> String) -> ExitCode {
    match output {
        Output::Table => print!("{}", table(value)),
        Output::Json => match serde_json::to_string_pretty(value) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("hvctl: cannot encode JSON: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

fn fail(socket: &Path, status: &tonic::Status) -> ExitCode {
    let error = client::call_error(socket, status);
    eprintln!("hvctl: {}", error.message);
    ExitCode::from(if error.unreachable {
        EXIT_UNREACHABLE
    } else {
        EXIT_CALL_FAILED
    })
}
