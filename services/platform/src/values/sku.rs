//! A stock-keeping unit, as an order's lines and the stock both name it.

/// A sku: 1 to [`Sku::MAX_CHARS`] characters, no control characters, no
/// white space at either end. Orders refuses a line whose sku fails it and
/// Inventory a command or a stock whose sku fails it, with the same words,
/// so nothing Orders accepts is refused further on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sku(String);

impl Sku {
    /// The longest sku, in characters.
    pub const MAX_CHARS: usize = 64;

    /// The sku, or why not (the text reads after the field's name).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let chars = raw.chars().count();
        if chars == 0 {
            return Err("must not be empty".into());
        }
        if chars > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters, got {chars}", Self::MAX_CHARS));
        }
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        if raw.starts_with(char::is_whitespace) || raw.ends_with(char::is_whitespace) {
            return Err("must not start or end with white space".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_one_to_sixty_four_visible_edged_characters() {
        for ok in ["A", "ABC-1", "sku with inner spaces", "ß-ü", &"x".repeat(64)] {
            assert_eq!(Sku::parse(ok).map(|s| s.to_string()), Ok(ok.to_owned()));
        }
        let refused = |raw: &str| Sku::parse(raw).unwrap_err();
        assert_eq!(refused(""), "must not be empty");
        assert_eq!(refused(&"x".repeat(65)), "must be at most 64 characters, got 65");
        assert_eq!(refused("a\u{7}b"), "must not contain control characters");
        assert_eq!(refused(" lead"), "must not start or end with white space");
        assert_eq!(refused("trail\u{a0}"), "must not start or end with white space");
    }
}
