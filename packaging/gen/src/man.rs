//! The man pages: hvctl(1) with a page per subcommand and hvagent(8) from the clap definitions,
//! hvagent.toml(5) from the configuration reference.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::config_reference::Reference;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes every page into `dir` (uncompressed; the package build compresses them).
pub fn write_all(dir: &Path, reference: &Reference) -> anyhow::Result<()> {
    let mut hvctl = hvctl::cli::Cli::command()
        .after_long_help("See also hvagent(8), hvagent.toml(5); docs: /usr/share/doc/hvagent/.")
        .disable_help_subcommand(true);
    // Built, the subcommands know their full names (`hvctl-vm-start`) for their own pages.
    hvctl.build();
    for page in commands(&hvctl) {
        write(
            dir,
            clap_mangen::Man::new(page).source(format!("hvctl {VERSION}")),
        )?;
    }

    let hvagent = hvagent::cli::Args::command().after_long_help(
        "Files: /etc/hvagent/hvagent.toml (hvagent.toml(5)), /run/hvagent/hvagent.sock, \
         /var/lib/hvagent. See also hvctl(1), hvagent.toml(5); docs: /usr/share/doc/hvagent/.",
    );
    write(
        dir,
        clap_mangen::Man::new(hvagent)
            .section("8")
            .manual("System Administration")
            .source(format!("hvagent {VERSION}")),
    )?;

    let path = dir.join("hvagent.toml.5");
    std::fs::write(&path, reference.man_page(VERSION))
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// `cmd` and every visible subcommand below it, each to get a page of its own.
fn commands(cmd: &clap::Command) -> Vec<clap::Command> {
    let mut all = vec![cmd.clone()];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        all.extend(commands(sub));
    }
    all
}

fn write(dir: &Path, page: clap_mangen::Man) -> anyhow::Result<()> {
    let path = dir.join(page.get_filename());
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    page.render(&mut file)
        .and_then(|()| file.flush())
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page's NAME line (what `whatis` and `apropos` show) is the command's one-line help:
    /// every command needs one.
    #[test]
    fn every_command_has_a_description() {
        let mut hvctl = hvctl::cli::Cli::command().disable_help_subcommand(true);
        hvctl.build();
        let mut all = commands(&hvctl);
        all.push(hvagent::cli::Args::command());
        let missing: Vec<String> = all
            .iter()
            .filter(|c| c.get_about().is_none())
            .map(|c| c.get_display_name().unwrap_or(c.get_name()).to_string())
            .collect();
        assert!(
            missing.is_empty(),
            "commands without a doc comment: {missing:?}"
        );
        assert!(all.len() > 30, "only {} commands", all.len());
    }

    #[test]
    fn pages_for_every_command_and_the_config_file() {
        let dir = std::env::temp_dir().join(format!("hvagent-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let reference = Reference::parse(crate::config_reference::OPERATIONS_MD)
            .unwrap_or_else(|e| panic!("{e}"));
        write_all(&dir, &reference).unwrap_or_else(|e| panic!("{e:#}"));
        for name in [
            "hvctl.1",
            "hvctl-vm-start.1",
            "hvctl-node-inventory.1",
            "hvagent.8",
            "hvagent.toml.5",
        ] {
            let page =
                std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(page.contains(".SH NAME"), "{name}: {page}");
        }
        let hvagent = std::fs::read_to_string(dir.join("hvagent.8")).unwrap_or_default();
        assert!(hvagent.contains(".TH hvagent 8"), "{hvagent}");
        assert!(hvagent.contains("\\-\\-config"), "{hvagent}");
        assert!(
            !hvagent.contains("kvm\\-trial"),
            "the internal flag is hidden: {hvagent}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
