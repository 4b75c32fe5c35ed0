//! `hvctl`: the operator's command line for hvagent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hvagent::ctl::{client, render};
use hvagent::flavor::{self, view::FlavorView};
use hvagent_proto::v1 as pb;

/// Talk to the hvagent node agent of this compute node.
///
/// Node commands connect to the agent's Unix socket (default /run/hvagent/hvagent.sock, mode 0660:
/// root, or the socket's owner and group); flavor commands work offline. Exit status: 0 success,
/// 1 the agent refused or failed the request, 2 bad command line or invalid flavor name, 3 the
/// agent could not be reached.
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

    /// SCS flavor names (scs-0100-v3): parse, explain, the standard flavors. Works offline,
    /// without an agent.
    #[command(subcommand)]
    Flavor(FlavorCommand),
}

#[derive(Subcommand)]
enum FlavorCommand {
    /// Parse a name (e.g. SCS-4C-16-50s) into its parts, canonical and short names and
    /// extra_specs. An invalid name exits 2 and says at which character and why.
    Parse {
        /// The flavor name.
        name: String,
    },
    /// Every promise of a name in plain words, and what hvagent does to keep it.
    Explain {
        /// The flavor name.
        name: String,
    },
    /// The scs-0103 standard flavors, mandatory ones first.
    Standard,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Hardware inventory: CPU topology, NUMA, memory and hugepages, devices, hypervisor, SCS
    /// facts (CPU brand, ECC, security) and the scheduler view (Placement inventories, traits).
    Inventory,
}

const EXIT_CALL_FAILED: u8 = 1;
/// Bad command line or invalid input (as clap uses for usage errors).
const EXIT_USAGE: u8 = 2;
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
    let node_command = match cli.command {
        Command::Flavor(command) => return flavor(cli.output, command),
        Command::Node(command) => command,
    };
    let channel = match client::connect(&cli.socket).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hvctl: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    match node_command {
        NodeCommand::Inventory => {
            let mut node = pb::node_service_client::NodeServiceClient::new(channel);
            match node.get_inventory(pb::GetInventoryRequest {}).await {
                Ok(resp) => print(cli.output, &resp.into_inner(), render::inventory),
                Err(status) => fail(&cli.socket, &status),
            }
        }
    }
}

/// Flavor commands compute locally: the same library the agent's FlavorService uses.
fn flavor(output: Output, command: FlavorCommand) -> ExitCode {
    let parsed = |name: &str| match flavor::parse(name) {
        Ok(parsed) => {
            for warning in &parsed.warnings {
                eprintln!("hvctl: warning: {warning}");
            }
            Ok(parsed)
        }
        Err(e) => {
            eprintln!("hvctl: {name:?} is not a valid SCS flavor name: {e}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    };
    match command {
        FlavorCommand::Parse { name } => match parsed(&name) {
            Ok(p) => print(output, &FlavorView::new(&p), render::flavor),
            Err(code) => code,
        },
        FlavorCommand::Explain { name } => match parsed(&name) {
            Ok(p) => {
                let explained = render::Explained {
                    name: p.spec.name(),
                    promises: flavor::explain::explain(&p.spec),
                };
                print(output, &explained, render::explained)
            }
            Err(code) => code,
        },
        FlavorCommand::Standard => {
            print(output, &hvagent::api::flavor::standard_flavors(), |list| {
                render::standard_flavors(list)
            })
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
