//! Stack names: `prod/network`, 1–4 segments of `[a-z0-9._-]`, no `.`/`..` segments.

use std::fmt;

/// A validated stack name. Construct with [`StackName::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackName(String);

/// Why a stack name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidStackName {
    /// The offending input (truncated for display).
    pub input: String,
    /// What rule it broke.
    pub reason: &'static str,
}

impl fmt::Display for InvalidStackName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid stack name {:?}: {} (a stack name is 1-4 segments of [a-z0-9._-] separated by '/', e.g. prod/network)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for InvalidStackName {}

/// Longest accepted stack name, in bytes.
pub const MAX_STACK_NAME_LEN: usize = 200;

impl StackName {
    /// Validates `input` as a stack name.
    pub fn parse(input: &str) -> Result<Self, InvalidStackName> {
        let refuse = |reason| InvalidStackName {
            input: input.chars().take(80).collect(),
            reason,
        };
        if input.is_empty() {
            return Err(refuse("empty"));
        }
        if input.len() > MAX_STACK_NAME_LEN {
            return Err(refuse("too long"));
        }
        let segments: Vec<&str> = input.split('/').collect();
        if segments.len() > 4 {
            return Err(refuse("more than 4 segments"));
        }
        for seg in &segments {
            if seg.is_empty() {
                return Err(refuse("empty segment"));
            }
            if *seg == "." || *seg == ".." {
                return Err(refuse("'.' and '..' segments are not allowed"));
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            {
                return Err(refuse(
                    "only lowercase letters, digits, '.', '_' and '-' are allowed",
                ));
            }
        }
        Ok(StackName(input.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StackName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in ["prod", "prod/app", "a/b/c/d", "x.y_z-1/0"] {
            assert!(StackName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_invalid_names() {
        for bad in [
            "",
            "/",
            "prod/",
            "/prod",
            "a//b",
            "..",
            "a/../b",
            ".",
            "Prod",
            "a/b/c/d/e",
            "a b",
            "%2e%2e",
            "a\\b",
            "ä",
            "a/b?c",
        ] {
            assert!(StackName::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(StackName::parse(&"a".repeat(201)).is_err());
    }
}
