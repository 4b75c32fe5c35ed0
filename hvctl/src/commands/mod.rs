//! One file per noun of the command line; each `run` takes its parsed command and returns the
//! exit status. What they share: the exit statuses and how answers and failures are printed.

use std::process::ExitCode;

use crate::cli::Output;
use crate::client;

pub mod console;
pub mod flavor;
pub mod image;
pub mod network;
pub mod node;
pub mod placement;
pub mod plan;
pub mod verify;
pub mod vm;
pub mod volume;

/// The agent refused or failed the request.
pub const EXIT_CALL_FAILED: u8 = 1;
/// Bad command line or invalid input (as clap uses for usage errors).
pub const EXIT_USAGE: u8 = 2;
/// The agent could not be reached (including a TLS handshake it or hvctl refused).
pub const EXIT_UNREACHABLE: u8 = 3;
/// `hvctl verify`: a promise violated, or a flavor that could not be probed.
pub const EXIT_VIOLATED: u8 = 4;

pub fn print<T: serde::Serialize>(output: Output, value: &T, table: fn(&T) -> String) -> ExitCode {
    match output {
        Output::Table | Output::Markdown => print!("{}", table(value)),
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

/// Prints an answer, or says why the call failed.
pub fn answer<T: serde::Serialize>(
    output: Output,
    agent: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    table: fn(&T) -> String,
) -> ExitCode {
    match result {
        Ok(resp) => print(output, &resp.into_inner(), table),
        Err(status) => fail(agent, &status),
    }
}

/// Says why a call failed; the exit status tells an unreachable agent from a refusal.
pub fn fail(agent: &str, status: &tonic::Status) -> ExitCode {
    let error = client::call_error(agent, status);
    eprintln!("hvctl: {}", error.message);
    ExitCode::from(if error.unreachable {
        EXIT_UNREACHABLE
    } else {
        EXIT_CALL_FAILED
    })
}
