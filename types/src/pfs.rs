//! PFS names.

use std::fmt;
use std::str::FromStr;

/// The name of a PFS on a node: 1 to 64 characters from `[A-Za-z0-9._-]`, not starting with `.`
/// or `-`, so it is safe in a file name, a URL and a metric label.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct PfsName(String);

/// Why a string is not a PFS name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{name}` is not a valid PFS name: {reason} (use 1-64 characters from A-Z a-z 0-9 . _ -, not starting with . or -)"
)]
pub struct PfsNameError {
    name: String,
    reason: &'static str,
}

impl PfsName {
    /// The longest name allowed.
    pub const MAX_LEN: usize = 64;

    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<PfsName, PfsNameError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > Self::MAX_LEN {
            Some("it is too long")
        } else if name.starts_with('.') || name.starts_with('-') {
            Some("it starts with . or -")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            Some("it contains a character outside the allowed set")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(PfsNameError { name, reason }),
            None => Ok(PfsName(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PfsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PfsName {
    type Err = PfsNameError;
    fn from_str(s: &str) -> Result<PfsName, PfsNameError> {
        PfsName::new(s)
    }
}

impl TryFrom<String> for PfsName {
    type Error = PfsNameError;
    fn try_from(s: String) -> Result<PfsName, PfsNameError> {
        PfsName::new(s)
    }
}

impl From<PfsName> for String {
    fn from(n: PfsName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["data", "home.v2", "a_b-c", "X"] {
            assert_eq!(PfsName::new(ok).map(|n| n.to_string()), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn rejects_unsafe_names() {
        let long = "a".repeat(65);
        for bad in ["", ".hidden", "-x", "a/b", "a b", "é", long.as_str()] {
            assert!(PfsName::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
