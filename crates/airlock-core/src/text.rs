//! Showing untrusted text to people: the one rule for which characters would make displayed
//! text differ from what it is. Resource names, tags, values, file names and error messages come
//! from plans, state and repositories an attacker may write; every human-facing renderer (the
//! terminal, the web console, the pull-request comment) shows these characters as escapes or
//! blanks instead of letting them act.

/// Whether `c` disguises text when displayed: control characters other than newline and tab
/// (terminal escapes, carriage returns, bells), bidirectional embeddings, overrides and isolates
/// (which reorder what a reviewer reads), zero-width and invisible formatting characters, the
/// byte-order mark, line and paragraph separators, the soft hyphen, and letters and marks that
/// show nothing (Unicode's default-ignorable code points, and blanks that are not spaces: the
/// Hangul fillers and the Braille blank are letters and symbols, so Terraform takes
/// `terraform_data.db` followed by U+3164 as a name that reads as `db`).
pub fn disguises(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D159}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
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
        for c in [
            'a', ' ', '\n', '\t', 'é', '字', '<', '"', 'ㅎ', '\u{1100}', '\u{17B6}',
        ] {
            assert!(!disguises(c), "{:?}", c);
        }
    }

    /// Letters and marks that show nothing: Terraform takes `terraform_data.dbㅤ` (U+3164) as a
    /// name, and it reads as `db`.
    #[test]
    fn invisible_letters_and_marks_disguise_text() {
        for c in [
            '\u{034F}',  // combining grapheme joiner
            '\u{115F}',  // Hangul choseong filler
            '\u{1160}',  // Hangul jungseong filler
            '\u{17B4}',  // Khmer vowel inherent aq
            '\u{17B5}',  // Khmer vowel inherent aa
            '\u{180B}',  // Mongolian free variation selector one
            '\u{180E}',  // Mongolian vowel separator
            '\u{180F}',  // Mongolian free variation selector four
            '\u{2060}',  // word joiner
            '\u{2064}',  // invisible plus
            '\u{2800}',  // Braille pattern blank
            '\u{3164}',  // Hangul filler
            '\u{FE00}',  // variation selector 1
            '\u{FE0F}',  // variation selector 16
            '\u{FFA0}',  // halfwidth Hangul filler
            '\u{1BCA0}', // shorthand format letter overlap
            '\u{1D159}', // musical symbol null notehead
            '\u{1D173}', // musical symbol begin beam
            '\u{1D17A}', // musical symbol end phrase
            '\u{E0001}', // language tag
            '\u{E0041}', // tag latin capital letter a
            '\u{E007F}', // cancel tag
            '\u{E0100}', // variation selector 17
            '\u{E01EF}', // variation selector 256
        ] {
            assert!(disguises(c), "U+{:04X}", u32::from(c));
        }
    }
}
