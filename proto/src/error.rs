//! Errors of the protocol layer.
//!
//! [`ProtocolError`] is a malformed message: a bad path, a missing field, an unknown enum value.
//! A server that receives one answers `INVALID_ARGUMENT` (through `From<ProtocolError> for
//! tonic::Status`), with a message that names the offending field and value. [`ClientError`] is
//! what the typed clients return.

use repl_types::{PathError, PfsNameError};

/// A message that does not satisfy the protocol. Every variant names the field (as
/// `message.field`) and, where there is one, the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A path is malformed; the inner error names the path.
    #[error("{field}: {source}")]
    Path {
        /// The field that held the path.
        field: &'static str,
        /// Why the path is malformed.
        source: PathError,
    },
    /// A PFS name is malformed.
    #[error("{field}: {source}")]
    PfsName {
        /// The field that held the name.
        field: &'static str,
        /// Why the name is malformed.
        source: PfsNameError,
    },
    /// A snapshot name is malformed.
    #[error(
        "{field}: `{name}` is not a valid snapshot name: {reason} (use 1-64 characters from \
         A-Z a-z 0-9 . _ -, not starting with . or -, and not a TID such as 123 or 0x1f)"
    )]
    SnapshotName {
        /// The field that held the name.
        field: &'static str,
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A retention policy is malformed.
    #[error("{field}: {source}")]
    Retention {
        /// The field that held it.
        field: &'static str,
        /// Why it is malformed.
        source: repl_types::RetentionParseError,
    },
    /// A required field is absent.
    #[error("{0}: required field is missing")]
    Missing(&'static str),
    /// A mode has bits outside the permission bits `0o7777`.
    #[error("{field}: mode {mode:#o} has bits outside 0o7777 (send permission bits only)")]
    Mode {
        /// The field that held the mode.
        field: &'static str,
        /// The offending mode.
        mode: u32,
    },
    /// An enum field holds a value this side does not know (or the unspecified zero).
    #[error("{field}: unknown or unspecified value {value}")]
    Enum {
        /// The enum field.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
    /// A UUID is not 16 bytes long.
    #[error("{field}: a UUID is 16 bytes, got {len}")]
    Uuid {
        /// The field that held the UUID.
        field: &'static str,
        /// The length received.
        len: usize,
    },
    /// A content hash is neither empty nor 32 bytes long.
    #[error("{field}: a BLAKE3 hash is 32 bytes, got {len}")]
    Hash {
        /// The field that held the hash.
        field: &'static str,
        /// The length received.
        len: usize,
    },
    /// A symlink target is empty, too long or contains NUL.
    #[error("{field}: symlink target {target:?} {reason}")]
    SymlinkTarget {
        /// The field that held the target.
        field: &'static str,
        /// The offending target (cut to 64 bytes when too long).
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A data chunk is larger than [`CHUNK_SIZE`](crate::CHUNK_SIZE).
    #[error("{field}: a data chunk of {len} bytes exceeds the 1 MiB limit")]
    ChunkTooLarge {
        /// The field that held the chunk.
        field: &'static str,
        /// The chunk's length.
        len: usize,
    },
    /// A stream's messages came in an order the protocol does not allow.
    #[error("{0}")]
    Sequence(&'static str),
    /// An inconsistency between fields, described in words.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field concerned.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ProtocolError {
    /// Shorthand for a missing required field.
    pub fn missing(field: &'static str) -> ProtocolError {
        ProtocolError::Missing(field)
    }
}

impl From<ProtocolError> for tonic::Status {
    fn from(e: ProtocolError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// What a typed client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be set up (bad address, TLS files, refused connection).
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint, as given.
        endpoint: String,
        /// What went wrong, with what to do about it where known.
        reason: String,
    },
    /// The server answered with an error status. Branch on [`tonic::Status::code`].
    #[error("{}", status_message(.0))]
    Status(#[from] tonic::Status),
    /// The server's answer does not satisfy the protocol (a bug or version skew on the server).
    #[error("malformed answer from the server: {0}")]
    Protocol(#[from] ProtocolError),
    /// Reading local input for an upload failed (or it had another length than announced); the
    /// upload was aborted and nothing was committed.
    #[error("reading the input failed, so the upload was aborted and nothing was committed: {0}")]
    Input(std::io::Error),
    /// Writing downloaded content to its local destination failed.
    #[error("writing the output failed: {0}")]
    Output(std::io::Error),
}

impl ClientError {
    /// The gRPC status code, when the server answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

fn status_message(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("server error: {}", s.code())
    } else {
        format!("{} ({})", s.message(), code_name(s.code()))
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_error_becomes_invalid_argument_naming_the_path() {
        let e = ProtocolError::Path {
            field: "GetRequest.path",
            source: repl_types::EntryPath::new("a/../b").expect_err("has .."),
        };
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("a/../b"), "{}", s.message());
        assert!(s.message().contains("GetRequest.path"), "{}", s.message());
    }

    #[test]
    fn client_error_shows_status_message_and_code() {
        let e = ClientError::from(tonic::Status::failed_precondition("PFS `b` is a slave"));
        assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition));
        assert_eq!(e.to_string(), "PFS `b` is a slave (FAILED_PRECONDITION)");
    }
}
