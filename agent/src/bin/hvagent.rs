//! `hvagent`: the node agent daemon. See `hvagent --help` and docs/operations.md; the command
//! line itself is `hvagent::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hvagent::cli::Args;
use hvagent::daemon::{self, Config, config::LogFormat};
use hvagent::host::kvm;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(device) = args.kvm_trial {
        return match kvm::run_trial(&device) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hvagent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    daemon::restrict_privileges(&config);
    match daemon::privilege::raise_open_files() {
        Ok(limit) => tracing::info!(was = limit.was, now = limit.now, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let trial_exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // A small node agent: two workers keep the idle footprint low; blocking calls (sysfs,
        // libvirt) run on tokio's separate blocking pool.
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hvagent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(daemon::run(config, trial_exe));
    // A blocking call still waiting on libvirt must not keep a stopped agent alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            e @ (daemon::DaemonError::Policy(_)
            | daemon::DaemonError::Network(_)
            | daemon::DaemonError::Access(_)
            | daemon::DaemonError::Tls(_)
            | daemon::DaemonError::PlacementApi(_)),
        ) => {
            eprintln!("hvagent: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = %e, "hvagent failed");
            eprintln!("hvagent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let level = match std::env::var("HVAGENT_LOG") {
        Ok(env) => match daemon::config::check_log_filter(&env) {
            Ok(()) => env,
            Err(e) => {
                eprintln!("hvagent: HVAGENT_LOG ignored: {e}");
                config.log.level.clone()
            }
        },
        Err(_) => config.log.level.clone(),
    };
    let filter = tracing_subscriber::EnvFilter::new(level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
