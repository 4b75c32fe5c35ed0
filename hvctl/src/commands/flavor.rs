//! `hvctl flavor parse|explain|standard|placement-request`, offline.

use std::process::ExitCode;

use hvagent_core::flavor::{self, view::FlavorView};
use hvagent_core::placement::provider::placement_request;

use super::{EXIT_USAGE, print};
use crate::cli::{FlavorCommand, Output};
use crate::render;

/// Flavor commands compute locally: the same library the agent's FlavorService uses.
pub fn run(output: Output, command: FlavorCommand) -> ExitCode {
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
        FlavorCommand::Standard => print(output, &flavor::proto::standard_flavors(), |list| {
            render::standard_flavors(list)
        }),
        FlavorCommand::PlacementRequest { name, config } => {
            let policy = match hvagent_core::config::load_placement(config.as_deref()) {
                Ok(policy) => policy,
                Err(e) => {
                    eprintln!("hvctl: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            match parsed(&name) {
                Ok(p) => print(
                    output,
                    &placement_request(&p.spec, &policy).into_proto(p.spec.name()),
                    render::placement_request,
                ),
                Err(code) => code,
            }
        }
    }
}
