//! `hvctl verify`: runs the probe guests, prints the report and writes it with its charts;
//! whatever happens, the guests it made are deleted.

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_CALL_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_VIOLATED, print};
use crate::cli::{Output, VerifyArgs};
use crate::{client, verify};

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn write_report(dir: &Path, report: &verify::VerifyReport) -> Result<(), String> {
    let write = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    write("report.json", json.as_bytes())?;
    write(
        "report.md",
        verify::markdown::render(report, true).as_bytes(),
    )?;
    for f in report.flavors.iter().filter(|f| !f.alone.is_empty()) {
        let (share, throughput) = verify::markdown::chart_names(&f.flavor);
        let title = format!("{}: share of a core per vCPU", f.flavor);
        write(
            &share,
            verify::chart::share_over_time(&title, &f.alone, &f.with_neighbours)?.as_bytes(),
        )?;
        if !f.with_neighbours.is_empty() {
            let title = format!(
                "{}: throughput alone and beside {} neighbours",
                f.flavor,
                f.neighbours.len()
            );
            write(
                &throughput,
                verify::chart::throughput_bars(&title, &f.alone, &f.with_neighbours)?.as_bytes(),
            )?;
        }
    }
    Ok(())
}

pub async fn run(
    output: Output,
    agent: &str,
    channel: tonic::transport::Channel,
    args: VerifyArgs,
) -> ExitCode {
    if !(0.0..1.0).contains(&args.tolerance) {
        eprintln!(
            "hvctl: --tolerance {}: must be at least 0 and below 1",
            args.tolerance
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let mut flavors = args.flavors;
    if args.standard {
        for f in hvagent_core::flavor::catalog::standard() {
            if !flavors.iter().any(|n| n == f.name) {
                flavors.push(f.name.to_string());
            }
        }
    }
    let opts = verify::Options {
        flavors,
        neighbours: args.neighbours,
        neighbour_flavor: args.neighbour_flavor,
        image: args.image,
        samples: args.samples,
        plan: hvagent_probe::plan::Plan {
            mode: hvagent_probe::plan::Mode::Report,
            fips_blocks: args.fips_blocks,
            window_ms: args.window_ms,
            iops_ms: args.iops_ms,
        },
        boot_timeout: std::time::Duration::from_secs(args.boot_timeout),
        tolerance: args.tolerance,
    };
    let created = verify::Created::default();
    let started = std::time::Instant::now();
    let progress = |m: &str| {
        eprintln!(
            "hvctl verify [{:>4.0} s] {m}",
            started.elapsed().as_secs_f64()
        )
    };
    let outcome = tokio::select! {
        r = verify::run(channel.clone(), &created, &opts, &progress) => Some(r),
        () = interrupted() => None,
    };
    // Whatever happened, nothing this run made stays.
    let left = verify::cleanup(channel, &created).await;
    for (uuid, why) in &left {
        eprintln!(
            "hvctl: could not delete guest {uuid} this run made: {why}; delete it with `hvctl vm delete {uuid}`"
        );
    }
    let report = match outcome {
        None => {
            if left.is_empty() {
                eprintln!("hvctl: interrupted; every guest this run made is deleted");
            } else {
                eprintln!(
                    "hvctl: interrupted; {} guests this run made are left (above)",
                    left.len()
                );
            }
            return ExitCode::from(130);
        }
        Some(Err(verify::RunError::Input(msg))) => {
            eprintln!("hvctl: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
        Some(Err(e)) => {
            let status = e
                .status()
                .cloned()
                .unwrap_or_else(|| tonic::Status::unknown(""));
            let error = client::call_error(agent, &status);
            eprintln!("hvctl: {e}");
            return ExitCode::from(if error.unreachable {
                EXIT_UNREACHABLE
            } else {
                EXIT_CALL_FAILED
            });
        }
        Some(Ok(r)) => r,
    };
    // The report first: a directory that cannot be written must not cost the run.
    let printed = match output {
        Output::Json => print(output, &report, |_| String::new()) == ExitCode::SUCCESS,
        Output::Table | Output::Markdown => {
            print!("{}", verify::markdown::render(&report, false));
            true
        }
    };
    let mut written = true;
    if let Some(dir) = &args.report {
        match write_report(dir, &report) {
            Ok(()) => eprintln!("hvctl verify: report written to {}", dir.display()),
            Err(e) => {
                eprintln!("hvctl: cannot write the report: {e}");
                written = false;
            }
        }
    }
    if report.count(verify::Verdict::Violated) > 0 || report.failed() > 0 {
        ExitCode::from(EXIT_VIOLATED)
    } else if !printed || !written || !left.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
