//! The few roff forms hvagent.toml(5) needs, from the Markdown the configuration reference is
//! written in: `code` becomes bold, links keep their text, roff's special characters are
//! escaped.

/// One line of running text, safe to put on a line of its own in a roff document.
pub fn text(markdown: &str) -> String {
    let plain = strip_links(markdown);
    // A line that starts with `.` or `'` would be a roff request; `\&` is a zero-width guard.
    let mut out = String::from("\\&");
    let mut bold = false;
    let mut chars = plain.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                out.push_str(if bold { "\\fR" } else { "\\fB" });
                bold = !bold;
            }
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                out.push_str(if bold { "\\fR" } else { "\\fB" });
                bold = !bold;
            }
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            '\n' => out.push(' '),
            c if !c.is_ascii() => out.push_str(&unicode(c)),
            c => out.push(c),
        }
    }
    if bold {
        out.push_str("\\fR");
    }
    out
}

/// groff's escape for a character outside ASCII (`→` is `\[u2192]`): a page reads the same
/// whatever encoding the formatter assumes.
pub fn unicode(c: char) -> String {
    format!("\\[u{:04X}]", u32::from(c))
}

/// A line of a literal (`.nf`) block: backslashes and non-ASCII escaped, no request.
pub fn literal(line: &str) -> String {
    let mut out = String::from("\\&");
    for c in line.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            c if !c.is_ascii() => out.push_str(&unicode(c)),
            c => out.push(c),
        }
    }
    out
}

/// `[text](target)` → `text`.
fn strip_links(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut rest = markdown;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let link = after.find("](").and_then(|mid| {
            let target = &after[mid + 2..];
            target.find(')').map(|close| (mid, mid + 2 + close + 1))
        });
        match link {
            // A link's text has no `[` of its own; `[api] tcp_listen` in running text is no link.
            Some((mid, end)) if !after[..mid].contains('[') && !after[..mid].contains(']') => {
                out.push_str(&rest[..open]);
                out.push_str(&after[..mid]);
                rest = &after[end..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_links_and_special_characters() {
        assert_eq!(
            text("`[api] unix_socket`, see [health](health.md#x) -- a\\b"),
            "\\&\\fB[api] unix_socket\\fR, see health \\-\\- a\\eb"
        );
        assert_eq!(text(".starts with a dot"), "\\&.starts with a dot");
        assert_eq!(text("**bold** `open"), "\\&\\fBbold\\fR \\fBopen\\fR");
        assert_eq!(text("[a] [b](c) ]"), "\\&[a] b ]");
        assert_eq!(text("a → b"), "\\&a \\[u2192] b");
        assert_eq!(literal(".x = 1 # 2 × \\"), "\\&.x = 1 # 2 \\[u00D7] \\e");
    }
}
