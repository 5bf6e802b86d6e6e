//! Paths of entries inside a PFS.

use std::fmt;
use std::str::FromStr;

/// The longest single name (path component), in bytes, as on Linux.
pub const MAX_NAME_LEN: usize = 255;
/// The longest whole path, in bytes, as on Linux.
pub const MAX_PATH_LEN: usize = 4096;

/// A normalized path of an entry relative to the root of its PFS: `/`-separated names, none of
/// them empty, `.` or `..`, with no NUL, no leading or trailing `/`, each name at most
/// [`MAX_NAME_LEN`] bytes and the whole at most [`MAX_PATH_LEN`] bytes.
///
/// The root of the PFS is the empty path, [`EntryPath::root`]; it cannot be created, deleted or
/// renamed.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct EntryPath(String);

/// Why a string is not an entry path. Each variant names the offending path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// The path starts with `/`.
    #[error("path `{0}` is absolute: give it relative to the PFS root, without a leading /")]
    Absolute(String),
    /// A component is empty (`a//b`, or a trailing `/`).
    #[error("path `{0}` has an empty component (// or a trailing /)")]
    EmptyComponent(String),
    /// A component is `.` or `..`.
    #[error("path `{0}` contains `.` or `..`, which are not allowed")]
    DotComponent(String),
    /// The path contains a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// A component is longer than [`MAX_NAME_LEN`].
    #[error("path `{0}` has a name longer than 255 bytes")]
    NameTooLong(String),
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("path `{0}...` is longer than 4096 bytes")]
    PathTooLong(String),
    /// The operation needs a path other than the root.
    #[error("the PFS root cannot be the target of this operation; name an entry inside it")]
    Root,
}

impl EntryPath {
    /// The root of the PFS.
    pub fn root() -> EntryPath {
        EntryPath(String::new())
    }

    /// Validates `path`. The empty string is the root; so is `.`.
    pub fn new(path: impl Into<String>) -> Result<EntryPath, PathError> {
        let path = path.into();
        if path.is_empty() || path == "." {
            return Ok(EntryPath::root());
        }
        if path.len() > MAX_PATH_LEN {
            let mut cut = 64;
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            return Err(PathError::PathTooLong(path[..cut].to_owned()));
        }
        if path.contains('\0') {
            return Err(PathError::Nul(path));
        }
        if path.starts_with('/') {
            return Err(PathError::Absolute(path));
        }
        for name in path.split('/') {
            if name.is_empty() {
                return Err(PathError::EmptyComponent(path));
            }
            if name == "." || name == ".." {
                return Err(PathError::DotComponent(path));
            }
            if name.len() > MAX_NAME_LEN {
                return Err(PathError::NameTooLong(path));
            }
        }
        Ok(EntryPath(path))
    }

    /// Whether this is the PFS root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as a string (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory, or `None` for the root.
    pub fn parent(&self) -> Option<EntryPath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => EntryPath(self.0[..i].to_owned()),
            None => EntryPath::root(),
        })
    }

    /// The last component (empty for the root).
    pub fn name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// `self/name`. `name` must be a single valid component.
    pub fn join(&self, name: &str) -> Result<EntryPath, PathError> {
        if name.contains('/') || name.is_empty() {
            return Err(PathError::EmptyComponent(format!("{}/{name}", self.0)));
        }
        if self.is_root() {
            EntryPath::new(name)
        } else {
            EntryPath::new(format!("{}/{name}", self.0))
        }
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &EntryPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// Replaces the leading `from` of `self` with `to`. `self` must start with `from`.
    pub fn rebase(&self, from: &EntryPath, to: &EntryPath) -> Result<EntryPath, PathError> {
        let rest = self.0[from.0.len()..].trim_start_matches('/');
        match (to.is_root(), rest.is_empty()) {
            (_, true) => Ok(to.clone()),
            (true, false) => EntryPath::new(rest),
            (false, false) => EntryPath::new(format!("{}/{rest}", to.0)),
        }
    }
}

impl fmt::Display for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str("/")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl FromStr for EntryPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<EntryPath, PathError> {
        EntryPath::new(s)
    }
}

impl TryFrom<String> for EntryPath {
    type Error = PathError;
    fn try_from(s: String) -> Result<EntryPath, PathError> {
        EntryPath::new(s)
    }
}

impl From<EntryPath> for String {
    fn from(p: EntryPath) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_and_odd_but_legal_names() {
        for ok in [
            "a",
            "a/b/c",
            "with space",
            "ünïcödé/ß",
            "a.b",
            "...",
            "-rf",
            "x\ny",
        ] {
            assert_eq!(
                EntryPath::new(ok).map(|p| p.as_str().to_owned()),
                Ok(ok.to_owned())
            );
        }
        assert!(EntryPath::new("").expect("root").is_root());
    }

    #[test]
    fn rejects_each_bad_form_with_its_own_error() {
        assert!(matches!(
            EntryPath::new("/etc"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            EntryPath::new("a//b"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(
            EntryPath::new("a/"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(
            EntryPath::new("a/../b"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(
            EntryPath::new("./a"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(EntryPath::new("a\0b"), Err(PathError::Nul(_))));
        assert!(matches!(
            EntryPath::new("n".repeat(256)),
            Err(PathError::NameTooLong(_))
        ));
        let long = vec!["d".repeat(200); 25].join("/");
        assert!(matches!(
            EntryPath::new(long),
            Err(PathError::PathTooLong(_))
        ));
    }

    #[test]
    fn parent_name_join_and_rebase() {
        let p = EntryPath::new("a/b/c").expect("valid");
        assert_eq!(p.parent().expect("has parent").as_str(), "a/b");
        assert_eq!(p.name(), "c");
        assert_eq!(
            EntryPath::new("a").expect("valid").parent(),
            Some(EntryPath::root())
        );
        assert_eq!(EntryPath::root().join("x").expect("valid").as_str(), "x");
        assert!(p.starts_with(&EntryPath::new("a/b").expect("valid")));
        assert!(
            !EntryPath::new("ab")
                .expect("valid")
                .starts_with(&EntryPath::new("a").expect("valid"))
        );
        let moved = p
            .rebase(
                &EntryPath::new("a").expect("valid"),
                &EntryPath::new("z/y").expect("valid"),
            )
            .expect("valid");
        assert_eq!(moved.as_str(), "z/y/b/c");
    }
}
