//! Free-text identifiers (a customer id, say) must show something: a value of
//! only zero-width spaces, format characters or blanks is accepted by every
//! length check yet reads as empty in a console, a log line or a notification,
//! and two such values look the same while being different.

use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// Letters that render as nothing: the Hangul fillers and the blank Braille
/// pattern, favourites for ids that look empty.
const BLANK_LETTERS: &[char] = &['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}', '\u{2800}'];

/// Whether `c` shows on its own: a letter, digit, punctuation mark or symbol,
/// or a spacing mark. Not visible: white space, control and format characters
/// (U+200B zero-width space, U+FEFF, bidi controls, tags), combining marks
/// without a base (variation selectors among them), private-use and
/// unassigned code points, and the blank letters.
pub fn is_visible(c: char) -> bool {
    if c.is_whitespace() || BLANK_LETTERS.contains(&c) {
        return false;
    }
    match c.general_category_group() {
        GeneralCategoryGroup::Letter
        | GeneralCategoryGroup::Number
        | GeneralCategoryGroup::Punctuation
        | GeneralCategoryGroup::Symbol => true,
        GeneralCategoryGroup::Mark => c.general_category() == GeneralCategory::SpacingMark,
        GeneralCategoryGroup::Separator | GeneralCategoryGroup::Other => false,
    }
}

/// Whether `c` is blank where an identifier starts or ends: white space,
/// a control or format character, or a blank letter. Combining marks are not
/// (an id may end in a decomposed accent).
pub fn is_blank(c: char) -> bool {
    c.is_whitespace()
        || BLANK_LETTERS.contains(&c)
        || matches!(c.general_category(), GeneralCategory::Control | GeneralCategory::Format)
}

/// The rule for free-text identifiers, beyond their length: no control
/// characters, at least one visible character, no blank at either end.
/// The error reads after the field's name ("customer_id must ...").
pub fn check_identifier(raw: &str) -> Result<(), String> {
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if !raw.chars().any(is_visible) {
        return Err("must contain a visible character (a letter, digit, punctuation mark or symbol)".into());
    }
    if raw.starts_with(is_blank) || raw.ends_with(is_blank) {
        return Err("must not start or end with white space or invisible characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Characters that show nothing, one of each kind.
    const INVISIBLE: &[char] = &[
        ' ',
        '\u{A0}',
        '\u{2003}',
        '\u{3000}',
        '\u{200B}',
        '\u{200C}',
        '\u{200D}',
        '\u{200E}',
        '\u{200F}',
        '\u{2060}',
        '\u{FEFF}',
        '\u{AD}',
        '\u{180E}',
        '\u{202E}',
        '\u{2066}',
        '\u{E0041}',
        '\u{FE0F}',
        '\u{34F}',
        '\u{115F}',
        '\u{3164}',
        '\u{FFA0}',
        '\u{2800}',
        '\u{E000}',
    ];

    #[test]
    fn accepts_ids_that_show_something() {
        for ok in ["c-1", "é", "e\u{301}", "客户", "❤\u{FE0F}", "👩\u{200D}💻", "a\u{200B}b", "١٢", "_"] {
            assert_eq!(check_identifier(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn refuses_ids_that_show_nothing() {
        for bad in ["\u{200B}", "\u{200B}\u{200B}", "\u{FEFF}", "\u{3164}", "\u{2800}", " \u{200B} ", "\u{FE0F}"] {
            assert!(check_identifier(bad).unwrap_err().contains("visible"), "{bad:?}");
        }
        for bad in ["\u{200B}c", "c\u{200B}", " c", "c\u{3000}", "\u{202E}c"] {
            assert!(check_identifier(bad).is_err(), "{bad:?}");
        }
        assert!(check_identifier("a\u{0}b").unwrap_err().contains("control"));
    }

    proptest! {
        #[test]
        fn only_invisible_characters_are_refused(chars in prop::collection::vec(prop::sample::select(INVISIBLE), 1..20)) {
            let raw: String = chars.into_iter().collect();
            prop_assert!(check_identifier(&raw).is_err(), "{:?} was accepted", raw);
        }

        #[test]
        fn a_visible_character_between_visible_ends_is_enough(
            inner in prop::collection::vec(prop::sample::select(INVISIBLE), 0..10),
            first in "[a-zA-Z0-9À-ÿ一-龥!-/]",
            last in "[a-zA-Z0-9À-ÿ一-龥!-/]",
        ) {
            let raw: String = first.chars().chain(inner).chain(last.chars()).collect();
            prop_assert_eq!(check_identifier(&raw), Ok(()), "{:?}", raw);
        }

        #[test]
        fn what_is_accepted_shows_something(raw in "\\PC{0,12}|[\\u{200B}-\\u{200F} \\u{3164}a]{0,6}") {
            if check_identifier(&raw).is_ok() {
                prop_assert!(raw.chars().any(is_visible));
                prop_assert!(!raw.chars().next().is_some_and(is_blank));
            }
        }
    }
}
