//! The configuration reference, read from docs/operations.md: its key table (one row per key:
//! type, default, rule) and its complete example file. That page is the one place keys are
//! documented; hvagent.toml(5) and the package's commented default file are rendered from it,
//! and the tests hold both parts of the page to what the agent's parser accepts.

use std::fmt::Write;

/// The operations guide, compiled in: the generator needs no checkout to run.
pub const OPERATIONS_MD: &str = include_str!("../../../docs/operations.md");

/// The line before the example file's code block.
const EXAMPLE_INTRO: &str = "A complete file, with every key at its default:";

/// Keys the package sets in its file (the rest stay commented at their defaults): the group
/// the package creates owns the socket, and its members may read (`hvctl node ...`, `vm list`).
const PACKAGE_SETTINGS: &[(&str, &str, &str)] = &[
    (
        "access",
        "socket_group",
        "socket_group = \"hvagent\"               # the package's group may connect (mode 0660)",
    ),
    (
        "access",
        "unix_groups",
        "unix_groups = { hvagent = \"reader\" }     # ... and read; grant operator by user or group",
    ),
];

/// One row of the key table.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDoc {
    pub section: String,
    pub key: String,
    pub kind: String,
    /// As written in the table, Markdown (`` `16` ``, `unset (off)`, `the host name`).
    pub default: String,
    /// The rule and meaning, Markdown.
    pub rule: String,
}

pub struct Reference {
    pub keys: Vec<KeyDoc>,
    /// The example file's text (TOML), between the code fences.
    pub example: String,
}

impl Reference {
    pub fn parse(md: &str) -> Result<Reference, String> {
        let config = md
            .split_once("\n## Configuration\n")
            .map(|(_, rest)| rest)
            .ok_or("no \"## Configuration\" section")?;
        let config = config.split("\n## ").next().unwrap_or(config);
        let mut keys = Vec::new();
        for line in config.lines().filter(|l| l.starts_with("| `[")) {
            keys.push(row(line)?);
        }
        if keys.is_empty() {
            return Err("the key table has no rows".into());
        }
        let example = config
            .split_once(EXAMPLE_INTRO)
            .and_then(|(_, rest)| rest.split_once("```toml\n"))
            .and_then(|(_, rest)| rest.split_once("\n```"))
            .map(|(toml, _)| toml.to_string())
            .ok_or_else(|| format!("no ```toml block after {EXAMPLE_INTRO:?}"))?;
        Ok(Reference { keys, example })
    }

    /// The sections in the order the table lists them.
    pub fn sections(&self) -> Vec<&str> {
        let mut sections: Vec<&str> = Vec::new();
        for k in &self.keys {
            if !sections.contains(&k.section.as_str()) {
                sections.push(&k.section);
            }
        }
        sections
    }

    /// The example file with every key line commented out (so the agent's own defaults apply
    /// and a newer package's defaults reach an unedited file), except [`PACKAGE_SETTINGS`].
    pub fn commented_config(&self) -> String {
        let mut out = String::from(
            "# hvagent's configuration: hvagent.toml(5), /usr/share/doc/hvagent/operations.md.\n\
             #\n\
             # Every key is shown at its default, commented out: uncomment a line to change it.\n\
             # Only the [access] lines for the package's group \"hvagent\" are set. Loading is\n\
             # strict (an unknown key or a bad value stops the agent with exit status 2):\n\
             # check a change with `hvagent --config FILE` in a shell before restarting\n\
             # (`systemctl restart hvagent`).\n",
        );
        let mut section = "";
        for line in self.example.lines() {
            let trimmed = line.trim_start();
            if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.split(']').next()) {
                section = name;
                out.push_str(line);
            } else if line.starts_with("# /etc/hvagent/") {
                continue;
            } else if let Some(set) = key_of(trimmed).and_then(|key| package_setting(section, key))
            {
                out.push_str(set);
            } else if trimmed.is_empty() || trimmed.starts_with('#') {
                out.push_str(line);
            } else {
                out.push_str("# ");
                out.push_str(line);
            }
            out.push('\n');
        }
        out
    }

    /// hvagent.toml(5).
    pub fn man_page(&self, version: &str) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            ".TH HVAGENT.TOML 5 \"\" \"hvagent {version}\" \"File Formats\""
        );
        m.push_str(".SH NAME\nhvagent.toml \\- configuration file of the hvagent node agent\n");
        m.push_str(".SH SYNOPSIS\n/etc/hvagent/hvagent.toml\n");
        m.push_str(".SH DESCRIPTION\n");
        for p in [
            "One TOML file, named with `hvagent --config FILE`; the systemd unit passes `/etc/hvagent/hvagent.toml`. Without `--config` the agent runs on the defaults below; an empty file gives the same result.",
            "Loading is strict: an unknown section, an unknown key, a key outside a section, a wrong type, an empty string or a value that breaks a rule is an error, and the agent does not start. It prints one line, `hvagent: FILE: section.key: problem`, and exits with status 2.",
            "Paths are not checked for existence when the file is loaded. Under the systemd unit the agent can write only below `/var/lib/hvagent`, `/run/hvagent` and `/run/libvirt`.",
        ] {
            m.push_str(".PP\n");
            m.push_str(&crate::roff::text(p));
            m.push('\n');
        }
        m.push_str(".SH KEYS\n");
        for section in self.sections() {
            let _ = writeln!(m, ".SS [{section}]");
            for k in self.keys.iter().filter(|k| k.section == section) {
                m.push_str(".TP\n");
                let _ = writeln!(
                    m,
                    "\\fB{}\\fR ({}; default: {})",
                    k.key,
                    k.kind,
                    crate::roff::text(&k.default)
                );
                m.push_str(&crate::roff::text(&k.rule));
                m.push('\n');
            }
        }
        m.push_str(".SH ENVIRONMENT\n.TP\n\\fBHVAGENT_LOG\\fR\n");
        m.push_str(&crate::roff::text(
            "A tracing filter that replaces `[log] level`; an invalid one is ignored with a line on stderr.",
        ));
        m.push_str("\n.SH EXAMPLE\nEvery key at its default:\n.PP\n.nf\n");
        for line in self.example.lines() {
            m.push_str(&crate::roff::literal(line));
            m.push('\n');
        }
        m.push_str(".fi\n.SH FILES\n.TP\n/etc/hvagent/hvagent.toml\n");
        m.push_str(&crate::roff::text(
            "The package's file: every key commented out at its default, except the `[access]` keys that give the group `hvagent` the socket and the reader role.",
        ));
        m.push_str("\n.SH SEE ALSO\n\\fBhvagent\\fR(8), \\fBhvctl\\fR(1), /usr/share/doc/hvagent/operations.md\n");
        m
    }
}

/// `| `[section] key` | type | default | rule |` → a [`KeyDoc`].
fn row(line: &str) -> Result<KeyDoc, String> {
    let cells: Vec<&str> = line
        .trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .split(" | ")
        .map(str::trim)
        .collect();
    let [name, kind, default, rule] = cells[..] else {
        return Err(format!(
            "a key row needs 4 cells, has {}: {line}",
            cells.len()
        ));
    };
    let (section, key) = name
        .trim_matches('`')
        .strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .ok_or_else(|| format!("{name:?} is not `[section] key`"))?;
    Ok(KeyDoc {
        section: section.to_string(),
        key: key.to_string(),
        kind: kind.to_string(),
        default: default.to_string(),
        rule: rule.to_string(),
    })
}

/// The key of a line `key = value` or `# key = value` of the example file.
pub fn key_of(line: &str) -> Option<&str> {
    let line = line.strip_prefix('#').map_or(line, str::trim_start);
    let (key, _) = line.split_once(" = ")?;
    key.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        .then_some(key)
        .filter(|k| !k.is_empty())
}

fn package_setting(section: &str, key: &str) -> Option<&'static str> {
    PACKAGE_SETTINGS
        .iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .map(|(_, _, line)| *line)
}

#[cfg(test)]
mod tests;
