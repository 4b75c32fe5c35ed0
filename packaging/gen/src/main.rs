//! `hvagent-packaging OUT_DIR`: renders what the Debian package ships beside the binaries, from
//! the same sources the binaries and the docs are made of:
//!
//! - `man/`: hvctl(1) and one page per hvctl subcommand, hvagent(8) (from the clap definitions),
//!   hvagent.toml(5) (from the configuration reference in docs/operations.md);
//! - `completions/`: bash, zsh and fish completions for hvctl and hvagent;
//! - `hvagent.toml`: the commented default configuration the package installs as a conffile.
//!
//! packaging/deb/build.sh runs it; nothing here is written by hand twice.

mod completions;
mod config_reference;
mod man;
mod roff;

use std::path::PathBuf;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: hvagent-packaging OUT_DIR");
    };
    let out = PathBuf::from(out);
    let reference = config_reference::Reference::parse(config_reference::OPERATIONS_MD)
        .map_err(|e| anyhow::anyhow!("docs/operations.md: configuration reference: {e}"))?;

    let man_dir = out.join("man");
    std::fs::create_dir_all(&man_dir).with_context(|| format!("create {}", man_dir.display()))?;
    man::write_all(&man_dir, &reference)?;

    let completions_dir = out.join("completions");
    std::fs::create_dir_all(&completions_dir)
        .with_context(|| format!("create {}", completions_dir.display()))?;
    completions::write_all(&completions_dir)?;

    let conffile = out.join("hvagent.toml");
    std::fs::write(&conffile, reference.commented_config())
        .with_context(|| format!("write {}", conffile.display()))?;
    Ok(())
}
