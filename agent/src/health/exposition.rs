//! Prometheus text exposition (format 0.0.4, what `promtool check metrics` and every scraper
//! read): families with HELP and TYPE, samples with escaped labels. Written by hand so that the
//! output is exactly what the conventions ask and nothing depends on a scrape-time registry.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Gauge,
    Counter,
}

/// One scrape's text.
#[derive(Default)]
pub struct Exposition {
    out: String,
    family: String,
}

impl Exposition {
    /// Starts a family. `name` is complete (`hvagent_…`, counters ending in `_total`).
    pub fn family(&mut self, name: &str, kind: Type, help: &str) -> &mut Self {
        let kind = match kind {
            Type::Gauge => "gauge",
            Type::Counter => "counter",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        // Writing into a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self.family = name.to_string();
        self
    }

    /// A sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(&self.family);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&number(value));
        self.out.push('\n');
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaped_labels() {
        let mut e = Exposition::default();
        e.family("hvagent_x_total", Type::Counter, "Things\nseen")
            .sample(&[("name", "a\"b\\c\nd")], 3.0)
            .sample(&[], 0.25);
        e.family("hvagent_y", Type::Gauge, "Y")
            .sample(&[("k", "v"), ("l", "w")], f64::NAN);
        assert_eq!(
            e.finish(),
            "# HELP hvagent_x_total Things\\nseen\n# TYPE hvagent_x_total counter\n\
             hvagent_x_total{name=\"a\\\"b\\\\c\\nd\"} 3\nhvagent_x_total 0.25\n\
             # HELP hvagent_y Y\n# TYPE hvagent_y gauge\nhvagent_y{k=\"v\",l=\"w\"} NaN\n"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number(1e20), "100000000000000000000");
        assert_eq!(number(-2.0), "-2");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.1), "0.1");
    }
}
