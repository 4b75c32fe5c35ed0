//! The verify report for people: Markdown with one table of verdicts per flavor.

use std::fmt::Write;

use super::{Outcome, Verdict, VerifyReport};

/// A table cell: no line breaks, no column separators.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The chart files of a flavor in a report directory: the name as given, with anything but
/// letters, digits, `.`, `_` and `-` made `_` (a v1 name's `:` would read as a URI scheme in
/// a Markdown link).
pub fn chart_names(flavor: &str) -> (String, String) {
    let safe: String = flavor
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    (
        format!("{safe}-share.svg"),
        format!("{safe}-throughput.svg"),
    )
}

/// `charts`: link each judged flavor's charts (they sit beside the Markdown file).
pub fn render(r: &VerifyReport, charts: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# hvctl verify: {}\n", r.node);
    let _ = writeln!(
        out,
        "Node `{}` (kernel {}, CPU {}), guests under **{}**; {:.0} s; workload window {} ms; \
         up to {} neighbours; throughput tolerance {:.0} %.\n",
        r.node,
        r.kernel,
        r.cpu_model,
        if r.emulation.is_empty() {
            "unknown"
        } else {
            &r.emulation
        },
        r.seconds,
        r.window_ms,
        r.neighbours_asked,
        r.tolerance * 100.0
    );
    let _ = writeln!(
        out,
        "**{} kept, {} violated, {} not verifiable**; {} flavors judged, {} skipped, {} failed.\n",
        r.count(Verdict::Kept),
        r.count(Verdict::Violated),
        r.count(Verdict::NotVerifiable),
        r.flavors
            .iter()
            .filter(|f| f.outcome == Outcome::Judged)
            .count(),
        r.flavors
            .iter()
            .filter(|f| f.outcome == Outcome::Skipped)
            .count(),
        r.failed()
    );
    for f in &r.flavors {
        let _ = writeln!(out, "## {}\n", f.flavor);
        match f.outcome {
            Outcome::Skipped => {
                let _ = writeln!(out, "Skipped: {}\n", f.reason);
                continue;
            }
            Outcome::Failed => {
                let _ = writeln!(out, "**Failed**: {}\n", f.reason);
            }
            Outcome::Judged => {}
        }
        if !f.vm_name.is_empty() {
            let _ = writeln!(
                out,
                "Probe guest `{}` ({}), {} neighbours{}; {:.0} s.\n",
                f.vm_name,
                f.vm_uuid,
                f.neighbours.len(),
                f.neighbours
                    .first()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                f.seconds
            );
        }
        if !f.checks.is_empty() {
            out.push_str(
                "| promise | verdict | measured | threshold | note |\n|---|---|---|---|---|\n",
            );
            for c in &f.checks {
                let verdict = match c.verdict {
                    Verdict::Violated => "**violated**".to_string(),
                    v => v.label().to_string(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    cell(&c.promise),
                    verdict,
                    cell(&c.measured),
                    cell(&c.threshold),
                    cell(&c.why)
                );
            }
            out.push('\n');
        }
        if let Some(p) = f.probe.as_ref().filter(|p| !p.errors.is_empty()) {
            let _ = writeln!(out, "Probe errors: {}\n", cell(&p.errors.join("; ")));
        }
        if charts && !f.alone.is_empty() {
            let (share, throughput) = chart_names(&f.flavor);
            let _ = writeln!(out, "![share of a core per vCPU]({share})\n");
            if !f.with_neighbours.is_empty() {
                let _ = writeln!(
                    out,
                    "![throughput alone and beside neighbours]({throughput})\n"
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Check, FlavorResult};
    use super::*;

    fn report() -> VerifyReport {
        let mut judged = FlavorResult::new("SCS-1V-2", Outcome::Judged, String::new());
        judged.vm_name = "verify-1".into();
        judged.checks = vec![
            Check {
                promise: "vcpus".into(),
                verdict: Verdict::Kept,
                measured: "1 vCPUs".into(),
                threshold: "at least 1".into(),
                why: String::new(),
            },
            Check {
                promise: "disk".into(),
                verdict: Verdict::Violated,
                measured: "a|b\nc".into(),
                threshold: "at least 5 GB".into(),
                why: String::new(),
            },
        ];
        VerifyReport {
            node: "n1".into(),
            kernel: "6.1".into(),
            cpu_model: "EPYC".into(),
            emulation: "tcg".into(),
            started_unix: 0,
            seconds: 3.0,
            neighbours_asked: 2,
            window_ms: 1000,
            tolerance: 0.1,
            flavors: vec![
                judged,
                FlavorResult::new(
                    "SCS-16V-128",
                    Outcome::Skipped,
                    "does not fit this node: MEMORY_MB (x)".into(),
                ),
            ],
        }
    }

    #[test]
    fn verdict_tables_counts_and_skips() {
        let md = render(&report(), false);
        assert!(
            md.contains(
                "**1 kept, 1 violated, 0 not verifiable**; 1 flavors judged, 1 skipped, 0 failed."
            ),
            "{md}"
        );
        assert!(
            md.contains("| vcpus | kept | 1 vCPUs | at least 1 |  |"),
            "{md}"
        );
        // Cell text cannot break the table.
        assert!(
            md.contains("| disk | **violated** | a\\|b c | at least 5 GB |  |"),
            "{md}"
        );
        assert!(
            md.contains("## SCS-16V-128\n\nSkipped: does not fit this node: MEMORY_MB (x)"),
            "{md}"
        );
        assert!(!md.contains(".svg"));
    }

    #[test]
    fn chart_file_names_are_plain() {
        assert_eq!(chart_names("SCS-2V:4:10").0, "SCS-2V_4_10-share.svg");
        assert_eq!(chart_names("SCS-1C-1u").1, "SCS-1C-1u-throughput.svg");
    }
}
