//! The target grammar: `[NODE:]PFS[/PATH][@AT]`.
//!
//! ```text
//! TARGET := [NODE ":"] PFS ["/" PATH] ["@" AT]
//! AT     := "head" | TID (0x<hex>, <decimal>, RFC 3339 time) | SNAPSHOT
//! ```
//!
//! Parsing goes from the outside in:
//!
//! 1. **AT.** If the target contains `@` and the text after the *last* `@` contains no `/`, that
//!    text is AT (`@` never occurs in an AT, and `/` never does either). So `data/a@b/c` is a
//!    plain path, while a path whose last name contains `@` needs an explicit read point:
//!    `data/user@example.com@head`.
//! 2. **NODE.** If a `:` comes before the first `/`, the text before it is NODE, a name from the
//!    replctl config. Since a PFS name never contains `:`, `data/a:b` is a path with a colon.
//! 3. **PFS and PATH.** The PFS name runs to the first `/`; the rest is the path inside it. A
//!    trailing `/` is accepted and remembered (`put` uses it to mean "into this directory").
//!
//! Without NODE the command talks to the node replctl reaches by default (see
//! [`crate::endpoint`]). Without AT a read sees the head.

use std::fmt;
use std::str::FromStr;

use repl_proto::{ReadAt, SnapshotName};
use repl_types::{EntryPath, PfsName, Tid};

/// A parsed `[NODE:]PFS[/PATH][@AT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The node, as named in the replctl config; `None` = the default node.
    pub node: Option<NodeName>,
    /// The PFS.
    pub pfs: PfsName,
    /// The path inside the PFS (the root when absent).
    pub path: EntryPath,
    /// The read point, when `@AT` was given.
    pub at: Option<ReadAt>,
    /// The path was written with a trailing `/` (or was the bare root `PFS/`).
    pub trailing_slash: bool,
    /// The target as the operator wrote it, for messages.
    pub input: String,
}

/// The name of a node in the replctl config: 1 to 64 letters, digits, `-`, `_` or `.`, starting
/// with a letter or digit (the rule `repld` applies to `node_name`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<NodeName, TargetError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(NodeName(name.to_owned()))
        } else {
            Err(TargetError::BadNode(name.to_owned()))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeName {
    type Err = TargetError;
    /// Accepts `NAME` or `NAME:`, so `replctl pfs list node1:` works too.
    fn from_str(s: &str) -> Result<NodeName, TargetError> {
        NodeName::new(s.strip_suffix(':').unwrap_or(s))
    }
}

/// Why a string is not a target. Every message names the input and says what to write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Nothing was given.
    #[error("empty target: give [NODE:]PFS[/PATH][@AT], for example data/docs/a.txt")]
    Empty,
    /// The node name is malformed.
    #[error(
        "`{0}` is not a node name: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    BadNode(String),
    /// No PFS after `NODE:`.
    #[error("`{0}` names no PFS: write NODE:PFS[/PATH], for example node1:data/docs")]
    NoPfs(String),
    /// The PFS name is malformed.
    #[error("`{input}`: {reason}")]
    BadPfs {
        /// The whole target.
        input: String,
        /// Why the PFS name is malformed.
        reason: String,
    },
    /// The path is malformed.
    #[error("`{input}`: {reason}")]
    BadPath {
        /// The whole target.
        input: String,
        /// Why the path is malformed.
        reason: String,
    },
    /// `@` with nothing after it.
    #[error(
        "`{0}` ends with `@`: after @ give a TID (0x..., decimal), an RFC 3339 time or a snapshot name, or drop the @"
    )]
    EmptyAt(String),
    /// The text after `@` is neither a TID, a time nor a snapshot name.
    #[error(
        "`{input}`: `{at}` after @ is not a TID (0x0000018f2c..., 1732269600000000000), an RFC 3339 time (2026-11-22T10:00:00Z) or a snapshot name; if @ is part of the path, add @head: `{input}@head`"
    )]
    BadAt {
        /// The whole target.
        input: String,
        /// The text after `@`.
        at: String,
    },
    /// A read point was given where the command writes (or otherwise has no use for it).
    #[error(
        "`{input}` names a read point (@{at}), but {command} always works on the head; drop @{at} (if it is part of the path, add @head: `{input}@head`)"
    )]
    AtNotAllowed {
        /// The whole target.
        input: String,
        /// The read point given.
        at: String,
        /// The command.
        command: &'static str,
    },
    /// A path was given where the command names a whole PFS.
    #[error(
        "`{input}` names a path inside the PFS, but {command} takes a whole PFS: write [NODE:]PFS"
    )]
    PathNotAllowed {
        /// The whole target.
        input: String,
        /// The command.
        command: &'static str,
    },
    /// The command needs an entry, not the PFS root.
    #[error("`{input}` names the PFS root, but {command} needs an entry inside it: write PFS/PATH")]
    RootNotAllowed {
        /// The whole target.
        input: String,
        /// The command.
        command: &'static str,
    },
    /// A read point was given twice (`@AT` and `--at`).
    #[error("`{0}` has a read point and --at gives another: use one of them")]
    TwoReadPoints(String),
}

impl Target {
    /// Parses `s` (see the module documentation).
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        // 1. AT: after the last `@`, if no `/` follows it.
        let (rest, at) = match s.rfind('@') {
            Some(i) if !s[i + 1..].contains('/') => {
                let at = &s[i + 1..];
                if at.is_empty() {
                    return Err(TargetError::EmptyAt(s.to_owned()));
                }
                let parsed = at.parse::<ReadAt>().map_err(|_| TargetError::BadAt {
                    input: s.to_owned(),
                    at: at.to_owned(),
                })?;
                (&s[..i], Some(parsed))
            }
            _ => (s, None),
        };
        // 2. NODE: before a `:` that comes before the first `/`.
        let first_slash = rest.find('/').unwrap_or(rest.len());
        let (node, rest) = match rest[..first_slash].find(':') {
            Some(i) => (Some(NodeName::new(&rest[..i])?), &rest[i + 1..]),
            None => (None, rest),
        };
        // 3. PFS and PATH.
        let (pfs, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if pfs.is_empty() {
            return Err(if node.is_some() {
                TargetError::NoPfs(s.to_owned())
            } else {
                TargetError::BadPfs {
                    input: s.to_owned(),
                    reason: "no PFS name before the path (a target starts with the PFS name, \
                             not with /)"
                        .to_owned(),
                }
            });
        }
        let pfs = PfsName::new(pfs).map_err(|e| TargetError::BadPfs {
            input: s.to_owned(),
            reason: e.to_string(),
        })?;
        let (path, trailing_slash) = match path {
            None => (EntryPath::root(), false),
            Some(p) => {
                let trailing = p.is_empty() || p.ends_with('/');
                let trimmed = p.strip_suffix('/').unwrap_or(p);
                let path = EntryPath::new(trimmed).map_err(|e| TargetError::BadPath {
                    input: s.to_owned(),
                    reason: e.to_string(),
                })?;
                (path, trailing)
            }
        };
        Ok(Target {
            node,
            pfs,
            path,
            at,
            trailing_slash,
            input: s.to_owned(),
        })
    }

    /// The read point: `@AT`, or `--at`, or the head. Both at once is an error.
    pub fn read_at(&self, flag: Option<&ReadAt>) -> Result<ReadAt, TargetError> {
        match (&self.at, flag) {
            (Some(_), Some(_)) => Err(TargetError::TwoReadPoints(self.input.clone())),
            (Some(at), None) | (None, Some(at)) => Ok(at.clone()),
            (None, None) => Ok(ReadAt::Head),
        }
    }

    /// Checks that the target names the head (or `@head`): for commands that write.
    pub fn for_write(self, command: &'static str) -> Result<Target, TargetError> {
        match &self.at {
            None | Some(ReadAt::Head) => Ok(self),
            Some(_) => Err(TargetError::AtNotAllowed {
                at: self
                    .input
                    .rsplit_once('@')
                    .map_or_else(String::new, |(_, at)| at.to_owned()),
                input: self.input.clone(),
                command,
            }),
        }
    }

    /// Checks that the target names a whole PFS (`[NODE:]PFS`, no path).
    pub fn whole_pfs(self, command: &'static str) -> Result<Target, TargetError> {
        if self.path.is_root() {
            Ok(self)
        } else {
            Err(TargetError::PathNotAllowed {
                input: self.input.clone(),
                command,
            })
        }
    }

    /// Checks that the target names an entry, not the PFS root.
    pub fn not_root(self, command: &'static str) -> Result<Target, TargetError> {
        if self.path.is_root() {
            Err(TargetError::RootNotAllowed {
                input: self.input.clone(),
                command,
            })
        } else {
            Ok(self)
        }
    }

    /// `[NODE:]PFS/PATH` without the read point, for messages.
    pub fn location(&self) -> String {
        let mut s = String::new();
        if let Some(node) = &self.node {
            s.push_str(node.as_str());
            s.push(':');
        }
        s.push_str(self.pfs.as_str());
        if !self.path.is_root() {
            s.push('/');
            s.push_str(self.path.as_str());
        }
        s
    }
}

/// Writes the target back in the grammar it was parsed from (without a trailing `/`).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.location())?;
        if let Some(at) = &self.at {
            write!(f, "@{at}")?;
        }
        Ok(())
    }
}

impl FromStr for Target {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Target, TargetError> {
        Target::parse(s)
    }
}

/// Parses a `--at` value: `head`, a TID (hex, decimal, RFC 3339 time) or a snapshot name.
pub fn parse_at(s: &str) -> Result<ReadAt, String> {
    if s.is_empty() {
        return Err("give a TID (0x..., decimal), an RFC 3339 time or a snapshot name".to_owned());
    }
    s.parse::<ReadAt>().map_err(|_| {
        format!(
            "`{s}` is not a TID (0x0000018f2c..., 1732269600000000000), an RFC 3339 time \
             (2026-11-22T10:00:00Z) or a snapshot name"
        )
    })
}

/// Parses a TID given alone (hex, decimal or RFC 3339 time), for clap (`dump --since`,
/// `verify --at` of the replication commands).
#[allow(dead_code)]
pub fn parse_tid(s: &str) -> Result<Tid, String> {
    s.parse::<Tid>().map_err(|e| e.to_string())
}

/// Parses a snapshot name, for clap.
pub fn parse_snapshot_name(s: &str) -> Result<SnapshotName, String> {
    SnapshotName::new(s).map_err(|e| {
        // The protocol error starts with its field name, which means nothing to an operator.
        e.to_string()
            .strip_prefix("snapshot: ")
            .map(str::to_owned)
            .unwrap_or_else(|| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        Target::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn err(s: &str) -> String {
        match Target::parse(s) {
            Ok(t) => panic!("{s:?} should not parse, got {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_form_parses() {
        let x = t("data");
        assert_eq!(
            (x.node, x.pfs.as_str(), x.path.is_root(), x.at),
            (None, "data", true, None)
        );

        let x = t("data/docs/a.txt");
        assert_eq!(x.path.as_str(), "docs/a.txt");
        assert!(!x.trailing_slash);

        let x = t("node1:data");
        assert_eq!(x.node.as_ref().map(NodeName::as_str), Some("node1"));
        assert!(x.path.is_root());

        let x = t("node-2.example:data/a/b@0x0000018f2c000001");
        assert_eq!(
            x.node.as_ref().map(NodeName::as_str),
            Some("node-2.example")
        );
        assert_eq!(x.path.as_str(), "a/b");
        assert_eq!(x.at, Some(ReadAt::Tid(Tid(0x0000_018f_2c00_0001))));

        assert_eq!(t("data@42").at, Some(ReadAt::Tid(Tid(42))));
        assert_eq!(
            t("data/x@2026-11-22T10:00:00Z").at,
            Some(ReadAt::Tid(Tid(1_795_341_600_000_000_000)))
        );
        // A time with an offset has colons: still AT, not NODE.
        assert_eq!(
            t("data@2026-11-22T11:00:00+01:00").at,
            Some(ReadAt::Tid(Tid(1_795_341_600_000_000_000)))
        );
        let x = t("n1:data@2026-11-22T10:00:00.5Z");
        assert_eq!(x.node.as_ref().map(NodeName::as_str), Some("n1"));
        assert_eq!(x.at, Some(ReadAt::Tid(Tid(1_795_341_600_500_000_000))));
        assert_eq!(
            t("data@nightly-2026").at,
            Some(ReadAt::Snapshot(
                SnapshotName::new("nightly-2026").expect("valid")
            ))
        );
        assert_eq!(t("data/f@head").at, Some(ReadAt::Head));
    }

    #[test]
    fn trailing_slash_and_root() {
        let x = t("data/");
        assert!(x.path.is_root() && x.trailing_slash);
        let x = t("data/dir/");
        assert_eq!(x.path.as_str(), "dir");
        assert!(x.trailing_slash);
        assert_eq!(t("data/.").path, EntryPath::root());
    }

    #[test]
    fn at_and_colon_inside_paths() {
        // `@` followed by a `/` later is part of the path.
        let x = t("data/a@b/c");
        assert_eq!((x.path.as_str(), x.at.clone()), ("a@b/c", None));
        // A last name with `@` needs an explicit read point.
        let x = t("data/user@example.com@head");
        assert_eq!(x.path.as_str(), "user@example.com");
        assert_eq!(x.at, Some(ReadAt::Head));
        // A colon after the first `/` is part of the path.
        let x = t("data/a:b");
        assert_eq!((x.node.clone(), x.path.as_str()), (None, "a:b"));
        let x = t("n:data/a:b/c@7");
        assert_eq!(x.node.as_ref().map(NodeName::as_str), Some("n"));
        assert_eq!(x.path.as_str(), "a:b/c");
        assert_eq!(x.at, Some(ReadAt::Tid(Tid(7))));
    }

    #[test]
    fn bad_forms_say_what_to_write() {
        assert!(err("").contains("[NODE:]PFS"));
        assert!(err("node1:").contains("names no PFS"));
        assert!(err(":data").contains("is not a node name"));
        assert!(err("bad node:data").contains("is not a node name"));
        assert!(err("/etc/passwd").contains("not with /"));
        assert!(err(".hidden/x").contains("not a valid PFS name"));
        assert!(err("data/a//b").contains("empty component"));
        assert!(err("data/a/../b").contains("`.` or `..`"));
        assert!(err("data@").contains("ends with `@`"));
        let e = err("data/x@not a snapshot");
        assert!(e.contains("is not a TID") && e.contains("@head"), "{e}");
        assert!(err("data/x@-1").contains("`-1` after @"));
    }

    #[test]
    fn command_checks() {
        let e = t("data/f@0x10")
            .for_write("put")
            .expect_err("writes refuse a read point");
        assert!(
            e.to_string().contains("put always works on the head"),
            "{e}"
        );
        assert!(t("data/f@head").for_write("put").is_ok());
        assert!(t("data/f").whole_pfs("pfs create").is_err());
        assert!(t("data").not_root("rm").is_err());

        let at = ReadAt::Tid(Tid(5));
        assert_eq!(t("data").read_at(Some(&at)), Ok(at.clone()));
        assert_eq!(t("data@6").read_at(None), Ok(ReadAt::Tid(Tid(6))));
        assert_eq!(t("data").read_at(None), Ok(ReadAt::Head));
        assert!(t("data@6").read_at(Some(&at)).is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "data",
            "n1:data/a/b",
            "data/x@0x0000000000000010",
            "data@snap",
        ] {
            assert_eq!(t(s).to_string(), s);
        }
    }

    #[test]
    fn at_flag_and_node_names() {
        assert_eq!(parse_at("0x10"), Ok(ReadAt::Tid(Tid(16))));
        assert_eq!(parse_at("head"), Ok(ReadAt::Head));
        assert!(parse_at("").is_err());
        assert!(parse_at("two words").is_err());
        assert_eq!(parse_tid("0x10"), Ok(Tid(16)));
        assert!(parse_tid("yesterday").is_err());
        assert!(parse_snapshot_name("123").is_err());
        assert!(parse_snapshot_name("nightly").is_ok());
        assert_eq!(
            "node1:".parse::<NodeName>().map(|n| n.0),
            Ok("node1".to_owned())
        );
        assert!("-x".parse::<NodeName>().is_err());
    }
}
