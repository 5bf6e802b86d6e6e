//! Domain newtypes shared by every repld crate.
//!
//! Nothing here knows about disks or sockets. These types are the vocabulary the engine, the
//! wire protocol and the CLI share, and each one validates itself on construction, so a value
//! of the type is always well formed:
//!
//! - [`Tid`]: a transaction id, which is also a wall-clock timestamp in nanoseconds.
//! - [`PfsName`]: the name of a PFS on a node.
//! - [`EntryPath`]: a normalized path inside a PFS.
//! - [`EntryKind`] and [`Role`]: what an entry is, and what a PFS does in replication.
//! - [`Retention`]: how much history a PFS keeps, and which commits a policy thins out.

mod kind;
mod path;
mod pfs;
mod retention;
mod tid;

pub use kind::{EntryKind, Role, RoleParseError};
pub use path::{EntryPath, MAX_NAME_LEN, MAX_PATH_LEN, PathError};
pub use pfs::{PfsName, PfsNameError};
pub use retention::{GridRule, MAX_GRID_RULES, Retention, RetentionParseError};
pub use tid::{Tid, TidParseError};
