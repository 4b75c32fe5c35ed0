use std::collections::BTreeSet;
use std::path::Path;

use hvagent::daemon::Config;
use hvagent::daemon::config::ConfigError;

use super::*;

fn reference() -> Reference {
    Reference::parse(OPERATIONS_MD).unwrap_or_else(|e| panic!("docs/operations.md: {e}"))
}

/// What the parser says of `[section] key = value`: `None` if it does not know the key (or the
/// section), else the result.
fn probe(section: &str, key: &str, value: &str) -> Option<Result<Config, String>> {
    match Config::parse("probe.toml", &format!("[{section}]\n{key} = {value}\n")) {
        Ok(c) => Some(Ok(c)),
        Err(ConfigError::Key { problem, .. })
            if problem == "unknown key" || problem.starts_with("unknown section") =>
        {
            None
        }
        Err(e) => Some(Err(e.to_string())),
    }
}

/// The sections the parser knows, as its own error for an unknown one lists them.
fn parser_sections() -> Vec<String> {
    let Err(ConfigError::Key { problem, .. }) = Config::parse("probe.toml", "[zz_none]\nk = 1\n")
    else {
        panic!("an unknown section must be a key error");
    };
    let known = problem
        .split_once("(known: ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no list of sections in {problem:?}"));
    known.split(", ").map(str::to_string).collect()
}

#[test]
fn the_table_has_every_section_the_parser_knows() {
    let r = reference();
    assert!(r.keys.len() >= 40, "only {} keys read", r.keys.len());
    let documented: BTreeSet<String> = r.sections().iter().map(|s| s.to_string()).collect();
    let known: BTreeSet<String> = parser_sections().into_iter().collect();
    assert_eq!(documented, known);
}

#[test]
fn every_documented_key_is_accepted_and_its_default_is_the_agents() {
    for k in reference().keys {
        // Any value: a key the parser knows answers with its rule, never "unknown key".
        assert!(
            probe(&k.section, &k.key, "1").is_some(),
            "[{}] {} is documented but the parser does not know it",
            k.section,
            k.key
        );
        // Keys of [placement_api] need `url` beside them; their defaults are the example's.
        let literal = k.default.trim_matches('`');
        let is_literal = k.default.starts_with('`') && !literal.contains('`');
        if k.section == "placement_api" || !is_literal {
            continue;
        }
        match probe(&k.section, &k.key, literal) {
            Some(Ok(config)) => assert_eq!(
                config,
                Config::default(),
                "[{}] {}: the documented default {literal} is not the agent's",
                k.section,
                k.key
            ),
            other => panic!("[{}] {} = {literal}: {other:?}", k.section, k.key),
        }
    }
}

#[test]
fn every_key_the_parser_accepts_is_documented() {
    // Candidates: every word-like string literal in the agent's and core's sources (where every
    // parser lives); the parser itself says which of them are keys of which section.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut words = BTreeSet::new();
    for dir in ["agent/src", "core/src"] {
        collect_literals(&root.join(dir), &mut words);
    }
    assert!(words.contains("unix_socket"), "source scan found no keys");
    let documented: BTreeSet<(String, String)> = reference()
        .keys
        .into_iter()
        .map(|k| (k.section, k.key))
        .collect();
    let mut undocumented = Vec::new();
    for section in parser_sections() {
        for word in &words {
            if probe(&section, word, "1").is_some()
                && !documented.contains(&(section.clone(), word.clone()))
            {
                undocumented.push(format!("[{section}] {word}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "keys the agent accepts that docs/operations.md's table lacks: {undocumented:?}"
    );
}

fn collect_literals(dir: &Path, words: &mut BTreeSet<String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            collect_literals(&path, words);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
            for (i, part) in text.split('"').enumerate() {
                if i % 2 == 1
                    && !part.is_empty()
                    && part.len() <= 64
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    words.insert(part.to_string());
                }
            }
        }
    }
}

#[test]
fn the_example_file_lists_the_table_and_is_the_defaults() {
    let r = reference();
    let mut section = String::new();
    let mut listed = BTreeSet::new();
    for line in r.example.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            section = name.to_string();
        } else if let Some(key) = key_of(t) {
            listed.insert((section.clone(), key.to_string()));
        }
    }
    let table: BTreeSet<(String, String)> = r
        .keys
        .iter()
        .map(|k| (k.section.clone(), k.key.clone()))
        .collect();
    assert_eq!(listed, table, "the example file and the key table differ");

    // [placement_api] keys need a url: the rest of the file, as written, is the defaults.
    let (without_placement_api, _) = r
        .example
        .split_once("[placement_api]")
        .unwrap_or_else(|| panic!("no [placement_api] in the example"));
    let config = Config::parse("example.toml", without_placement_api)
        .unwrap_or_else(|e| panic!("the documented example: {e}"));
    assert_eq!(config, Config::default());
}

#[test]
fn the_package_file_is_the_defaults_but_for_its_group() {
    let r = reference();
    let text = r.commented_config();
    let config = Config::parse("hvagent.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut expected = Config::default();
    expected.access.socket_group = Some("hvagent".into());
    expected.access.unix_groups.insert(
        "hvagent".into(),
        hvagent::access::Role::parse("reader").unwrap_or_else(|| panic!("reader is a role")),
    );
    assert_eq!(config, expected);
    // Every key is there to uncomment, under its section.
    for k in &r.keys {
        let body = text
            .split(&format!("\n[{}]", k.section))
            .nth(1)
            .unwrap_or_else(|| panic!("no [{}] in the package file", k.section));
        let body = body.split("\n[").next().unwrap_or(body);
        assert!(
            body.lines()
                .any(|l| key_of(l.trim_start()) == Some(k.key.as_str())),
            "[{}] {} missing from the package file",
            k.section,
            k.key
        );
    }
}

#[test]
fn the_man_page_has_every_key() {
    let r = reference();
    let page = r.man_page("9.9.9");
    assert!(page.starts_with(".TH HVAGENT.TOML 5 \"\" \"hvagent 9.9.9\""));
    for k in &r.keys {
        assert!(
            page.contains(&format!(".TP\n\\fB{}\\fR ({}; default: ", k.key, k.kind)),
            "{} missing",
            k.key
        );
    }
    // No Markdown is left for roff to print literally.
    assert!(!page.contains('`'), "a backtick survived");
    assert!(!page.contains("](",), "a link survived");
}
