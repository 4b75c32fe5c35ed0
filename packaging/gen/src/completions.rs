//! Shell completions for both commands, from their clap definitions.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

/// The shells Debian packages ship completions for, and the file name each one looks up
/// (`/usr/share/bash-completion/completions/NAME`, `/usr/share/zsh/vendor-completions/_NAME`,
/// `/usr/share/fish/vendor_completions.d/NAME.fish`).
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes `<shell>/<file>` for hvctl and hvagent into `dir`.
pub fn write_all(dir: &Path) -> anyhow::Result<()> {
    for shell in SHELLS {
        let shell_dir = dir.join(shell.to_string());
        std::fs::create_dir_all(&shell_dir)
            .with_context(|| format!("create {}", shell_dir.display()))?;
        for mut cmd in [hvctl::cli::Cli::command(), hvagent::cli::Args::command()] {
            let name = cmd.get_name().to_string();
            clap_complete::generate_to(shell, &mut cmd, &name, &shell_dir)
                .with_context(|| format!("{shell} completion of {name}"))?;
        }
    }
    Ok(())
}
