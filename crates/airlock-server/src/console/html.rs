//! HTML output: the one escaping function every page uses for text that did not come from this
//! module, and the page shell. Everything from plans, state, runs and audit is attacker-influenced.
//!
//! **Invariant:** attacker text reaches a page only through [`esc`] (text and quoted attribute
//! contexts alike): `&<>"'` become entities, and characters that change how text *looks*
//! (bidirectional overrides and isolates, zero-width characters, controls other than newline
//! and tab) are shown as visible `\u{…}` escapes, so an RTL override cannot disguise an address.

use std::fmt::Write;

use airlock_core::text::disguises;

/// Longest text shown inline; longer text is cut, with the whole value behind a disclosure.
pub const SHOWN_CHARS: usize = 200;

/// Escapes `s` for HTML text and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if disguises(c) => {
                let _ = write!(out, "\\u{{{:04X}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` escaped, cut at [`SHOWN_CHARS`] with the whole value behind a disclosure.
pub fn long(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        None => esc(s),
        Some((cut, _)) => format!(
            "{}<details class=\"more\"><summary>… show all {} characters</summary><pre>{}</pre></details>",
            esc(&s[..cut]),
            s.chars().count(),
            esc(s)
        ),
    }
}

/// A path segment or query value (stack names carry `/`, which the console's URLs, like the
/// API's, encode).
pub use crate::inproc::encode as seg;

/// Milliseconds since the epoch as RFC 3339 (UTC).
pub fn when(ms: i64) -> String {
    airlock_core::time::rfc3339(ms)
}

/// A navigation header item.
pub struct Nav<'a> {
    /// Who is signed in (`name (role)`), if anyone.
    pub who: Option<String>,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: Option<&'a str>,
}

/// The whole document around `body`. No inline script or style: the CSP forbids both.
pub fn shell(title: &str, nav: &Nav<'_>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · airlock</title><link rel=\"stylesheet\" href=\"{}\">\
<script src=\"{}\" defer></script></head><body><header><nav>\
<a href=\"/ui/\" class=\"brand\">airlock</a> <a href=\"/ui/\">Stacks</a> <a href=\"/ui/runs\">Runs</a> \
<a href=\"/ui/audit\">Audit</a>",
        esc(title),
        super::assets::CSS.url(),
        super::assets::JS.url()
    );
    if let (Some(who), Some(csrf)) = (&nav.who, nav.csrf) {
        let _ = write!(
            out,
            "<span class=\"who\">{}</span><form method=\"post\" action=\"/ui/logout\" class=\"inline\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form>",
            esc(who),
            esc(csrf)
        );
    }
    let _ = write!(out, "</nav></header><main>{body}</main></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_makes_markup_and_disguises_inert() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(esc("abc\u{202E}fed"), "abc\\u{202E}fed");
        assert_eq!(esc("a\u{200B}b\u{0007}c\nd"), "a\\u{200B}b\\u{0007}c\nd");
        assert_eq!(esc("näme ✓"), "näme ✓");
    }

    #[test]
    fn long_values_are_cut_with_the_whole_value_behind_a_disclosure() {
        let s = "<".repeat(1_000_000);
        let html = long(&s);
        assert!(html.starts_with(&"&lt;".repeat(SHOWN_CHARS)));
        assert!(html.contains("show all 1000000 characters"));
        assert!(!html.contains('<') || !html.contains("<<"));
        assert_eq!(long("short"), "short");
    }

    #[test]
    fn segments_encode_everything_but_unreserved() {
        assert_eq!(seg("prod/app"), "prod%2Fapp");
        assert_eq!(seg("a\"b<"), "a%22b%3C");
    }
}
