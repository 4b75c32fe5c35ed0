//! The daemon's command line (clap). It lives in the library, not in the binary, so that the
//! packaging generator (`packaging/gen`) renders hvagent(8) and the shell completions from the
//! same definition the binary parses.

use std::path::PathBuf;

use clap::Parser;

/// The Sovereign Cloud Stack node agent.
///
/// It serves the inventory, placement, guests, networks and health of one compute node over
/// gRPC on a Unix socket (and, with [api] tcp_listen, over TCP with mutual TLS), with
/// Prometheus metrics.
///
/// Runs in the foreground until SIGTERM or SIGINT; stopping it never stops guests. SIGHUP reads
/// the TLS files again. Without --config every setting takes its documented default
/// (hvagent.toml(5), docs/operations.md); security and privileges: docs/security.md.
///
/// Exit status: 0 clean stop (and --help, --version), 1 runtime failure, 2 configuration error
/// or bad command line.
#[derive(Parser, Debug)]
#[command(name = "hvagent", version)]
pub struct Args {
    /// TOML configuration file (e.g. /etc/hvagent/hvagent.toml). A bad file is exit status 2.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub config: Option<PathBuf>,

    /// Internal: run the KVM trial guest on DEVICE and exit 0 if it ran.
    #[arg(long = "kvm-trial", value_name = "DEVICE", hide = true)]
    pub kvm_trial: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn config_flag_is_parsed_and_trial_hidden() {
        let args = Args::try_parse_from(["hvagent", "--config", "/etc/hvagent/hvagent.toml"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.config.as_deref(),
            Some(std::path::Path::new("/etc/hvagent/hvagent.toml"))
        );
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("--config"), "{help}");
        assert!(!help.contains("--kvm-trial"), "{help}");
        assert!(Args::try_parse_from(["hvagent", "--nope"]).is_err());
    }
}
