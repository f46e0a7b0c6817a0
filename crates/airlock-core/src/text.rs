//! Showing untrusted text to people: the one rule for which characters would make displayed
//! text differ from what it is. Resource names, tags, values, file names and error messages come
//! from plans, state and repositories an attacker may write; every human-facing renderer (the
//! terminal, the web console, the pull-request comment) shows these characters as escapes or
//! blanks instead of letting them act.

/// Whether `c` disguises text when displayed: control characters other than newline and tab
/// (terminal escapes, carriage returns, bells), bidirectional embeddings, overrides and isolates
/// (which reorder what a reviewer reads), zero-width and invisible formatting characters, the
/// byte-order mark, line and paragraph separators, and the soft hyphen.
pub fn disguises(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

#[cfg(test)]
mod tests {
    use super::disguises;

    #[test]
    fn what_disguises_text() {
        for c in [
            '\u{1b}', '\r', '\u{7}', '\u{202E}', '\u{2066}', '\u{200B}', '\u{FEFF}', '\u{2028}',
            '\u{AD}',
        ] {
            assert!(disguises(c), "{:?}", c);
        }
        for c in ['a', ' ', '\n', '\t', 'é', '字', '<', '"'] {
            assert!(!disguises(c), "{:?}", c);
        }
    }
}
