//! Engine errors, classified by what the caller should do about them.

use std::path::PathBuf;

use repl_types::{EntryPath, PathError, Tid};

/// A result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Messages say what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed.
    #[error("I/O error: {what}: {source}")]
    Io {
        /// The operation and its target.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The device has no valid repld superblock.
    #[error("{} is not a repld device ({detail}): run `repld format` on it first", path.display())]
    NotFormatted {
        /// The device.
        path: PathBuf,
        /// Why neither superblock copy was accepted.
        detail: String,
    },
    /// Another process has the device open.
    #[error("{} is in use by another repld process (or `repld fsck`): stop it first", path.display())]
    DeviceBusy {
        /// The device.
        path: PathBuf,
    },
    /// `format` found another file system or data on the device.
    #[error("{} carries a {signature} signature: refusing to format it (pass --force to overwrite it)", path.display())]
    ForeignSignature {
        /// The device.
        path: PathBuf,
        /// What was recognized.
        signature: String,
    },
    /// A record that was once durable fails its checksum. Never skipped silently.
    #[error(
        "log corruption at LSN {lsn:#x} (segment slot {slot}, device offset {offset}): {detail}; \
         the device holds damaged data: run `repld fsck` to see the extent, and restore the PFS from its slave"
    )]
    Corruption {
        /// Log position of the damaged unit or record.
        lsn: u64,
        /// Segment slot holding it.
        slot: u64,
        /// Byte offset on the device.
        offset: u64,
        /// What failed.
        detail: String,
    },
    /// No space is left for the write.
    #[error("device full: {detail}")]
    DeviceFull {
        /// What was full and what to do.
        detail: String,
    },
    /// A path argument is malformed.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Other malformed input.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The named PFS does not exist.
    #[error("no PFS named `{0}` on this node (see `replctl pfs list`)")]
    NoSuchPfs(String),
    /// A PFS with that name exists already.
    #[error("a PFS named `{0}` exists already")]
    PfsExists(String),
    /// The entry does not exist at the TID read.
    #[error("`{path}` does not exist{}", at_suffix(*at))]
    NotFound {
        /// The path.
        path: EntryPath,
        /// The TID read (`None` for the head).
        at: Option<Tid>,
    },
    /// The entry exists already.
    #[error("`{0}` exists already")]
    AlreadyExists(EntryPath),
    /// A directory was needed.
    #[error("`{0}` is not a directory")]
    NotADirectory(EntryPath),
    /// A file or symlink was needed.
    #[error("`{0}` is a directory")]
    IsADirectory(EntryPath),
    /// A non-recursive delete of a non-empty directory.
    #[error("directory `{0}` is not empty (delete it recursively)")]
    DirectoryNotEmpty(EntryPath),
    /// The parent directory of the target is missing.
    #[error("parent directory of `{0}` does not exist (create it first)")]
    ParentMissing(EntryPath),
    /// A write to a slave PFS, which only its master may change.
    #[error(
        "PFS `{0}` is a slave: it is read-only and changes only by replication from its master (upgrade it to write)"
    )]
    ReadOnlySlave(String),
    /// A replication apply to a PFS that is not a slave.
    #[error("PFS `{0}` is a master: replicated changes are only applied to slave PFSes")]
    NotASlave(String),
    /// The TID read lies in history that was pruned (by the retention policy, or because the
    /// PFS keeps no history).
    #[error(
        "history at {tid} has been pruned: the nearest readable TID after it is {next} \
         (`replctl pfs status` shows the retention policy and the pruned ranges)"
    )]
    Pruned {
        /// The TID asked for.
        tid: Tid,
        /// The oldest readable TID after it.
        next: Tid,
    },
    /// A snapshot name is unknown.
    #[error("no snapshot named `{0}`")]
    NoSuchSnapshot(String),
    /// A snapshot name is taken.
    #[error("a snapshot named `{0}` exists already")]
    SnapshotExists(String),
    /// Something exceeds a size limit.
    #[error("{what} is too large: {size} > limit {limit}")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Replicated changes do not continue this PFS's history.
    #[error("replicated change at {tid} does not continue the history of PFS `{pfs}`: {detail}")]
    Diverged {
        /// The slave PFS.
        pfs: String,
        /// The TID of the change that does not fit.
        tid: Tid,
        /// What did not match.
        detail: String,
    },
    /// The index (a cache of the log) failed.
    #[error("index error: {0}")]
    Index(String),
    /// An earlier write or fsync failed; the engine refuses further work until it is reopened.
    #[error(
        "the storage engine stopped after a failed write ({0}); restart repld to recover from the log"
    )]
    Poisoned(String),
    /// The engine is shutting down.
    #[error("the storage engine is shutting down")]
    ShuttingDown,
}

fn at_suffix(at: Option<Tid>) -> String {
    at.map(|t| format!(" at {t}")).unwrap_or_default()
}

/// How a caller should treat an error; the daemon maps these onto gRPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input: fix the request.
    InvalidArgument,
    /// The thing is not there.
    NotFound,
    /// The thing is there already.
    AlreadyExists,
    /// The state does not allow the operation.
    FailedPrecondition,
    /// Out of space or over a limit.
    ResourceExhausted,
    /// The TID asked for was pruned: read a kept TID instead.
    Pruned,
    /// Stored data is damaged.
    DataLoss,
    /// Try again later.
    Unavailable,
    /// A bug or an I/O failure.
    Internal,
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind::*;
        match self {
            Error::Path(_) | Error::Invalid(_) => InvalidArgument,
            Error::NoSuchPfs(_) | Error::NotFound { .. } | Error::NoSuchSnapshot(_) => NotFound,
            Error::PfsExists(_) | Error::AlreadyExists(_) | Error::SnapshotExists(_) => {
                AlreadyExists
            }
            Error::NotADirectory(_)
            | Error::IsADirectory(_)
            | Error::DirectoryNotEmpty(_)
            | Error::ParentMissing(_)
            | Error::ReadOnlySlave(_)
            | Error::NotASlave(_)
            | Error::Diverged { .. }
            | Error::NotFormatted { .. }
            | Error::ForeignSignature { .. } => FailedPrecondition,
            Error::DeviceFull { .. } | Error::TooLarge { .. } => ResourceExhausted,
            Error::Pruned { .. } => Pruned,
            Error::Corruption { .. } => DataLoss,
            Error::ShuttingDown | Error::DeviceBusy { .. } => Unavailable,
            Error::Io { .. } | Error::Index(_) | Error::Poisoned(_) => Internal,
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Error {
        Error::Index(e.to_string())
    }
}

impl From<crate::codec::DecodeError> for Error {
    fn from(e: crate::codec::DecodeError) -> Error {
        Error::Index(format!("index value: {e}"))
    }
}
