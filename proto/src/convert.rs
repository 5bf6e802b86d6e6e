//! Domain request and result types, and their conversions to and from the generated messages.
//!
//! The receiving side converts with `TryFrom<pb::X>`, which validates everything a peer could get
//! wrong: paths, PFS and snapshot names, modes, UUID and hash lengths, enum values, chunk sizes.
//! The sending side converts with `From<X> for pb::X`, which cannot fail. A server does
//!
//! ```text
//! let req = GetRequest::try_from(request.into_inner())?; // ProtocolError -> INVALID_ARGUMENT
//! ```
//!
//! and a client turns the answer back into a domain type the same way (a failure there is a
//! malformed answer, [`ClientError::Protocol`](crate::ClientError::Protocol)).
//!
//! Ids, names and paths are the newtypes of [`repl_types`]; this module adds only what the wire
//! needs beyond them: [`SnapshotName`], [`ReadAt`], [`Entry`] and the request and result structs.
//! Result types implement `serde::Serialize`, so the CLI can print them as JSON.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use repl_types::{EntryPath, MAX_PATH_LEN, PathError, PfsName, Retention, Tid};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ProtocolError;
use crate::pb;

// =============================================================================================
// Field helpers

fn pfs_name(field: &'static str, name: String) -> Result<PfsName, ProtocolError> {
    PfsName::new(name).map_err(|source| ProtocolError::PfsName { field, source })
}

fn entry_path(field: &'static str, path: String) -> Result<EntryPath, ProtocolError> {
    EntryPath::new(path).map_err(|source| ProtocolError::Path { field, source })
}

/// A path that must name an entry, not the PFS root.
fn entry_path_not_root(field: &'static str, path: String) -> Result<EntryPath, ProtocolError> {
    let p = entry_path(field, path)?;
    if p.is_root() {
        return Err(ProtocolError::Path {
            field,
            source: PathError::Root,
        });
    }
    Ok(p)
}

fn mode(field: &'static str, mode: u32) -> Result<u32, ProtocolError> {
    if mode & !MODE_MASK != 0 {
        return Err(ProtocolError::Mode { field, mode });
    }
    Ok(mode)
}

fn uuid(field: &'static str, bytes: &[u8]) -> Result<Uuid, ProtocolError> {
    Uuid::from_slice(bytes).map_err(|_| ProtocolError::Uuid {
        field,
        len: bytes.len(),
    })
}

fn hash(field: &'static str, bytes: &[u8]) -> Result<Option<[u8; 32]>, ProtocolError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    <[u8; 32]>::try_from(bytes)
        .map(Some)
        .map_err(|_| ProtocolError::Hash {
            field,
            len: bytes.len(),
        })
}

fn chunk(field: &'static str, data: Bytes) -> Result<Bytes, ProtocolError> {
    if data.len() > crate::CHUNK_SIZE {
        return Err(ProtocolError::ChunkTooLarge {
            field,
            len: data.len(),
        });
    }
    Ok(data)
}

/// 0 on the wire means "no TID".
fn opt_tid(tid: u64) -> Option<Tid> {
    (tid != 0).then_some(Tid(tid))
}

fn tid_or_zero(tid: Option<Tid>) -> u64 {
    tid.map_or(0, Tid::get)
}

fn symlink_target(field: &'static str, target: String) -> Result<String, ProtocolError> {
    let reason = if target.is_empty() {
        Some("is empty")
    } else if target.len() > MAX_PATH_LEN {
        Some("is longer than 4096 bytes")
    } else if target.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    };
    match reason {
        None => Ok(target),
        Some(reason) => {
            let mut cut = target.len().min(64);
            while !target.is_char_boundary(cut) {
                cut -= 1;
            }
            Err(ProtocolError::SymlinkTarget {
                field,
                target: target[..cut].to_owned(),
                reason,
            })
        }
    }
}

fn hex32(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn serialize_opt_hash<S: serde::Serializer>(h: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    match h {
        Some(h) => s.serialize_some(&hex32(h)),
        None => s.serialize_none(),
    }
}

fn serialize_hash<S: serde::Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex32(h))
}

/// The permission bits a mode may carry: `rwx` for user, group and other, plus setuid, setgid
/// and sticky. File-type bits are not sent; [`EntryKind`] says the type.
pub const MODE_MASK: u32 = 0o7777;

// =============================================================================================
// Common types

/// The name of a snapshot: 1 to 64 characters from `[A-Za-z0-9._-]`, not starting with `.` or
/// `-`, and neither `head` nor anything that reads as a TID (all digits, `0x...`), so that
/// `PFS@NAME` is never ambiguous.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct SnapshotName(String);

impl SnapshotName {
    /// The longest name allowed.
    pub const MAX_LEN: usize = 64;

    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<SnapshotName, ProtocolError> {
        Self::validate("snapshot", name.into())
    }

    fn validate(field: &'static str, name: String) -> Result<SnapshotName, ProtocolError> {
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
        } else if name == "head" || name.parse::<Tid>().is_ok() {
            Some("it reads as a TID")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ProtocolError::SnapshotName {
                field,
                name,
                reason,
            }),
            None => Ok(SnapshotName(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SnapshotName {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<SnapshotName, ProtocolError> {
        SnapshotName::new(s)
    }
}

impl From<SnapshotName> for String {
    fn from(n: SnapshotName) -> String {
        n.0
    }
}

/// Which state of a PFS a read sees.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadAt {
    /// The newest committed TID.
    #[default]
    Head,
    /// The PFS as it stood at this TID.
    Tid(Tid),
    /// The TID a snapshot names.
    Snapshot(SnapshotName),
}

impl ReadAt {
    /// Converts a received `At` field (absent = head).
    pub fn from_pb(field: &'static str, at: Option<pb::At>) -> Result<ReadAt, ProtocolError> {
        match at.and_then(|a| a.point) {
            None => Ok(ReadAt::Head),
            Some(pb::at::Point::Tid(t)) => Ok(ReadAt::Tid(Tid(t))),
            Some(pb::at::Point::Snapshot(s)) => {
                SnapshotName::validate(field, s).map(ReadAt::Snapshot)
            }
        }
    }
}

impl From<ReadAt> for Option<pb::At> {
    fn from(at: ReadAt) -> Option<pb::At> {
        let point = match at {
            ReadAt::Head => return None,
            ReadAt::Tid(t) => pb::at::Point::Tid(t.get()),
            ReadAt::Snapshot(s) => pb::at::Point::Snapshot(s.0),
        };
        Some(pb::At { point: Some(point) })
    }
}

/// Parses `head`, a TID (hex, decimal or RFC 3339 time), or a snapshot name, in that order: the
/// part after `@` in `PFS@...`.
impl FromStr for ReadAt {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<ReadAt, ProtocolError> {
        if s.is_empty() || s == "head" {
            return Ok(ReadAt::Head);
        }
        if let Ok(t) = s.parse::<Tid>() {
            return Ok(ReadAt::Tid(t));
        }
        SnapshotName::new(s).map(ReadAt::Snapshot)
    }
}

impl fmt::Display for ReadAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadAt::Head => f.write_str("head"),
            ReadAt::Tid(t) => t.fmt(f),
            ReadAt::Snapshot(s) => s.fmt(f),
        }
    }
}

pub use repl_types::EntryKind;

fn entry_kind_from_pb(field: &'static str, v: i32) -> Result<EntryKind, ProtocolError> {
    match pb::EntryKind::try_from(v) {
        Ok(pb::EntryKind::File) => Ok(EntryKind::File),
        Ok(pb::EntryKind::Dir) => Ok(EntryKind::Dir),
        Ok(pb::EntryKind::Symlink) => Ok(EntryKind::Symlink),
        Ok(pb::EntryKind::Unspecified) | Err(_) => Err(ProtocolError::Enum { field, value: v }),
    }
}

impl From<EntryKind> for pb::EntryKind {
    fn from(k: EntryKind) -> pb::EntryKind {
        match k {
            EntryKind::File => pb::EntryKind::File,
            EntryKind::Dir => pb::EntryKind::Dir,
            EntryKind::Symlink => pb::EntryKind::Symlink,
        }
    }
}

/// Mode and modification time of a file or directory being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Attrs {
    /// Permission bits (within [`MODE_MASK`]).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// One version of an entry, as a read at some TID sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The path, relative to the PFS root.
    pub path: EntryPath,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits (within [`MODE_MASK`]).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Content length for files, target length for symlinks, 0 for directories.
    pub size: u64,
    /// The target of a symlink.
    pub symlink_target: Option<String>,
    /// The TID that created this version.
    pub create_tid: Tid,
    /// The TID that deleted or replaced this version; `None` while it is live.
    pub delete_tid: Option<Tid>,
    /// BLAKE3 hash of a file's content.
    #[serde(serialize_with = "serialize_opt_hash")]
    pub content_hash: Option<[u8; 32]>,
}

impl TryFrom<pb::Entry> for Entry {
    type Error = ProtocolError;
    fn try_from(e: pb::Entry) -> Result<Entry, ProtocolError> {
        let kind = entry_kind_from_pb("Entry.kind", e.kind)?;
        let symlink_target = match kind {
            EntryKind::Symlink => Some(symlink_target("Entry.symlink_target", e.symlink_target)?),
            _ if !e.symlink_target.is_empty() => {
                return Err(ProtocolError::Invalid {
                    field: "Entry.symlink_target",
                    reason: format!("set on a {kind}, which is not a symlink"),
                });
            }
            _ => None,
        };
        Ok(Entry {
            path: entry_path("Entry.path", e.path)?,
            kind,
            mode: mode("Entry.mode", e.mode)?,
            mtime_ns: e.mtime_ns,
            size: e.size,
            symlink_target,
            create_tid: Tid(e.create_tid),
            delete_tid: e.delete_tid.map(Tid),
            content_hash: hash("Entry.content_hash", &e.content_hash)?,
        })
    }
}

impl From<Entry> for pb::Entry {
    fn from(e: Entry) -> pb::Entry {
        pb::Entry {
            path: e.path.into(),
            kind: pb::EntryKind::from(e.kind).into(),
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            size: e.size,
            symlink_target: e.symlink_target.unwrap_or_default(),
            create_tid: e.create_tid.get(),
            delete_tid: e.delete_tid.map(Tid::get),
            content_hash: e
                .content_hash
                .map(|h| Bytes::copy_from_slice(&h))
                .unwrap_or_default(),
        }
    }
}

// =============================================================================================
// Storage: requests (validated by the server)

/// The header of a Put stream: which file to write, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutHeader {
    /// The PFS to write to.
    pub pfs: PfsName,
    /// The file's path (not the root).
    pub path: EntryPath,
    /// Mode and mtime.
    pub attrs: Attrs,
    /// The content length, when known in advance; the server refuses any other length.
    pub size: Option<u64>,
    /// Create missing parent directories.
    pub parents: bool,
}

impl TryFrom<pb::PutHeader> for PutHeader {
    type Error = ProtocolError;
    fn try_from(h: pb::PutHeader) -> Result<PutHeader, ProtocolError> {
        Ok(PutHeader {
            pfs: pfs_name("PutHeader.pfs", h.pfs)?,
            path: entry_path_not_root("PutHeader.path", h.path)?,
            attrs: Attrs {
                mode: mode("PutHeader.mode", h.mode)?,
                mtime_ns: h.mtime_ns,
            },
            size: h.size,
            parents: h.parents,
        })
    }
}

impl From<PutHeader> for pb::PutHeader {
    fn from(h: PutHeader) -> pb::PutHeader {
        pb::PutHeader {
            pfs: h.pfs.into(),
            path: h.path.into(),
            mode: h.attrs.mode,
            mtime_ns: h.attrs.mtime_ns,
            size: h.size,
            parents: h.parents,
        }
    }
}

/// One message of a Put stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutMessage {
    /// The first message.
    Header(PutHeader),
    /// A content chunk (at most [`CHUNK_SIZE`](crate::CHUNK_SIZE)).
    Data(Bytes),
    /// The content is complete: commit. A stream that stops without it commits nothing.
    End,
}

impl TryFrom<pb::PutRequest> for PutMessage {
    type Error = ProtocolError;
    fn try_from(r: pb::PutRequest) -> Result<PutMessage, ProtocolError> {
        match r.msg {
            Some(pb::put_request::Msg::Header(h)) => Ok(PutMessage::Header(h.try_into()?)),
            Some(pb::put_request::Msg::Data(d)) => {
                Ok(PutMessage::Data(chunk("PutRequest.data", d)?))
            }
            Some(pb::put_request::Msg::End(pb::PutEnd {})) => Ok(PutMessage::End),
            None => Err(ProtocolError::missing("PutRequest.msg")),
        }
    }
}

impl From<PutMessage> for pb::PutRequest {
    fn from(m: PutMessage) -> pb::PutRequest {
        let msg = match m {
            PutMessage::Header(h) => pb::put_request::Msg::Header(h.into()),
            PutMessage::Data(d) => pb::put_request::Msg::Data(d),
            PutMessage::End => pb::put_request::Msg::End(pb::PutEnd {}),
        };
        pb::PutRequest { msg: Some(msg) }
    }
}

/// A read of one entry (Get and Stat).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The PFS to read.
    pub pfs: PfsName,
    /// The entry (the root is allowed).
    pub path: EntryPath,
    /// Which state to read.
    pub at: ReadAt,
}

impl TryFrom<pb::GetRequest> for ReadRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::GetRequest) -> Result<ReadRequest, ProtocolError> {
        Ok(ReadRequest {
            pfs: pfs_name("GetRequest.pfs", r.pfs)?,
            path: entry_path("GetRequest.path", r.path)?,
            at: ReadAt::from_pb("GetRequest.at.snapshot", r.at)?,
        })
    }
}

impl TryFrom<pb::StatRequest> for ReadRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::StatRequest) -> Result<ReadRequest, ProtocolError> {
        Ok(ReadRequest {
            pfs: pfs_name("StatRequest.pfs", r.pfs)?,
            path: entry_path("StatRequest.path", r.path)?,
            at: ReadAt::from_pb("StatRequest.at.snapshot", r.at)?,
        })
    }
}

impl From<ReadRequest> for pb::GetRequest {
    fn from(r: ReadRequest) -> pb::GetRequest {
        pb::GetRequest {
            pfs: r.pfs.into(),
            path: r.path.into(),
            at: r.at.into(),
        }
    }
}

impl From<ReadRequest> for pb::StatRequest {
    fn from(r: ReadRequest) -> pb::StatRequest {
        pb::StatRequest {
            pfs: r.pfs.into(),
            path: r.path.into(),
            at: r.at.into(),
        }
    }
}

/// A directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRequest {
    /// The PFS to read.
    pub pfs: PfsName,
    /// The directory (the root is allowed).
    pub path: EntryPath,
    /// Which state to read.
    pub at: ReadAt,
    /// The whole subtree, not only the direct children.
    pub recursive: bool,
}

impl TryFrom<pb::ListRequest> for ListRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::ListRequest) -> Result<ListRequest, ProtocolError> {
        Ok(ListRequest {
            pfs: pfs_name("ListRequest.pfs", r.pfs)?,
            path: entry_path("ListRequest.path", r.path)?,
            at: ReadAt::from_pb("ListRequest.at.snapshot", r.at)?,
            recursive: r.recursive,
        })
    }
}

impl From<ListRequest> for pb::ListRequest {
    fn from(r: ListRequest) -> pb::ListRequest {
        pb::ListRequest {
            pfs: r.pfs.into(),
            path: r.path.into(),
            at: r.at.into(),
            recursive: r.recursive,
        }
    }
}

/// The versions of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    /// The PFS to read.
    pub pfs: PfsName,
    /// The path.
    pub path: EntryPath,
}

impl TryFrom<pb::HistoryRequest> for HistoryRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::HistoryRequest) -> Result<HistoryRequest, ProtocolError> {
        Ok(HistoryRequest {
            pfs: pfs_name("HistoryRequest.pfs", r.pfs)?,
            path: entry_path("HistoryRequest.path", r.path)?,
        })
    }
}

impl From<HistoryRequest> for pb::HistoryRequest {
    fn from(r: HistoryRequest) -> pb::HistoryRequest {
        pb::HistoryRequest {
            pfs: r.pfs.into(),
            path: r.path.into(),
        }
    }
}

/// A tar export of a subtree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRequest {
    /// The PFS to read.
    pub pfs: PfsName,
    /// The subtree (the root for the whole PFS).
    pub path: EntryPath,
    /// Which state to export.
    pub at: ReadAt,
}

impl TryFrom<pb::ExportRequest> for ExportRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::ExportRequest) -> Result<ExportRequest, ProtocolError> {
        Ok(ExportRequest {
            pfs: pfs_name("ExportRequest.pfs", r.pfs)?,
            path: entry_path("ExportRequest.path", r.path)?,
            at: ReadAt::from_pb("ExportRequest.at.snapshot", r.at)?,
        })
    }
}

impl From<ExportRequest> for pb::ExportRequest {
    fn from(r: ExportRequest) -> pb::ExportRequest {
        pb::ExportRequest {
            pfs: r.pfs.into(),
            path: r.path.into(),
            at: r.at.into(),
        }
    }
}

/// Deletes an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    /// The PFS to write to.
    pub pfs: PfsName,
    /// The entry (not the root).
    pub path: EntryPath,
    /// Delete a non-empty directory with its subtree.
    pub recursive: bool,
}

impl TryFrom<pb::DeleteRequest> for DeleteRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::DeleteRequest) -> Result<DeleteRequest, ProtocolError> {
        Ok(DeleteRequest {
            pfs: pfs_name("DeleteRequest.pfs", r.pfs)?,
            path: entry_path_not_root("DeleteRequest.path", r.path)?,
            recursive: r.recursive,
        })
    }
}

impl From<DeleteRequest> for pb::DeleteRequest {
    fn from(r: DeleteRequest) -> pb::DeleteRequest {
        pb::DeleteRequest {
            pfs: r.pfs.into(),
            path: r.path.into(),
            recursive: r.recursive,
        }
    }
}

/// Moves an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenameRequest {
    /// The PFS to write to.
    pub pfs: PfsName,
    /// The entry to move (not the root).
    pub from: EntryPath,
    /// The new path (not the root, not below `from`).
    pub to: EntryPath,
    /// Replace an existing file or empty directory at `to`.
    pub replace: bool,
}

impl TryFrom<pb::RenameRequest> for RenameRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::RenameRequest) -> Result<RenameRequest, ProtocolError> {
        let from = entry_path_not_root("RenameRequest.from", r.from)?;
        let to = entry_path_not_root("RenameRequest.to", r.to)?;
        if to.starts_with(&from) {
            return Err(ProtocolError::Invalid {
                field: "RenameRequest.to",
                reason: format!(
                    "`{to}` is `{from}` or lies below it; an entry cannot move into itself"
                ),
            });
        }
        Ok(RenameRequest {
            pfs: pfs_name("RenameRequest.pfs", r.pfs)?,
            from,
            to,
            replace: r.replace,
        })
    }
}

impl From<RenameRequest> for pb::RenameRequest {
    fn from(r: RenameRequest) -> pb::RenameRequest {
        pb::RenameRequest {
            pfs: r.pfs.into(),
            from: r.from.into(),
            to: r.to.into(),
            replace: r.replace,
        }
    }
}

/// Creates a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MkdirRequest {
    /// The PFS to write to.
    pub pfs: PfsName,
    /// The directory (not the root).
    pub path: EntryPath,
    /// Mode and mtime.
    pub attrs: Attrs,
    /// Create missing parents and accept an existing directory, as `mkdir -p`.
    pub parents: bool,
}

impl TryFrom<pb::MkdirRequest> for MkdirRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::MkdirRequest) -> Result<MkdirRequest, ProtocolError> {
        Ok(MkdirRequest {
            pfs: pfs_name("MkdirRequest.pfs", r.pfs)?,
            path: entry_path_not_root("MkdirRequest.path", r.path)?,
            attrs: Attrs {
                mode: mode("MkdirRequest.mode", r.mode)?,
                mtime_ns: r.mtime_ns,
            },
            parents: r.parents,
        })
    }
}

impl From<MkdirRequest> for pb::MkdirRequest {
    fn from(r: MkdirRequest) -> pb::MkdirRequest {
        pb::MkdirRequest {
            pfs: r.pfs.into(),
            path: r.path.into(),
            mode: r.attrs.mode,
            mtime_ns: r.attrs.mtime_ns,
            parents: r.parents,
        }
    }
}

/// Creates a symbolic link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymlinkRequest {
    /// The PFS to write to.
    pub pfs: PfsName,
    /// The link (not the root).
    pub path: EntryPath,
    /// What it points to (non-empty, no NUL, at most 4096 bytes).
    pub target: String,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Create missing parent directories.
    pub parents: bool,
}

impl TryFrom<pb::SymlinkRequest> for SymlinkRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::SymlinkRequest) -> Result<SymlinkRequest, ProtocolError> {
        Ok(SymlinkRequest {
            pfs: pfs_name("SymlinkRequest.pfs", r.pfs)?,
            path: entry_path_not_root("SymlinkRequest.path", r.path)?,
            target: symlink_target("SymlinkRequest.target", r.target)?,
            mtime_ns: r.mtime_ns,
            parents: r.parents,
        })
    }
}

impl From<SymlinkRequest> for pb::SymlinkRequest {
    fn from(r: SymlinkRequest) -> pb::SymlinkRequest {
        pb::SymlinkRequest {
            pfs: r.pfs.into(),
            path: r.path.into(),
            target: r.target,
            mtime_ns: r.mtime_ns,
            parents: r.parents,
        }
    }
}

// =============================================================================================
// Storage: import

/// Opens an import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportBegin {
    /// The PFS to import into.
    pub pfs: PfsName,
    /// The most operations per transaction (`None` = the server's default).
    pub max_txn_ops: Option<u32>,
    /// The most content bytes per transaction (`None` = the server's default).
    pub max_txn_bytes: Option<u64>,
}

impl ImportBegin {
    /// An import into `pfs` with the server's transaction limits.
    pub fn new(pfs: PfsName) -> ImportBegin {
        ImportBegin {
            pfs,
            max_txn_ops: None,
            max_txn_bytes: None,
        }
    }
}

impl TryFrom<pb::ImportBegin> for ImportBegin {
    type Error = ProtocolError;
    fn try_from(b: pb::ImportBegin) -> Result<ImportBegin, ProtocolError> {
        Ok(ImportBegin {
            pfs: pfs_name("ImportBegin.pfs", b.pfs)?,
            max_txn_ops: (b.max_txn_ops != 0).then_some(b.max_txn_ops),
            max_txn_bytes: (b.max_txn_bytes != 0).then_some(b.max_txn_bytes),
        })
    }
}

impl From<ImportBegin> for pb::ImportBegin {
    fn from(b: ImportBegin) -> pb::ImportBegin {
        pb::ImportBegin {
            pfs: b.pfs.into(),
            max_txn_ops: b.max_txn_ops.unwrap_or(0),
            max_txn_bytes: b.max_txn_bytes.unwrap_or(0),
        }
    }
}

/// One operation of an import. A `File` whose `data` is shorter than its `size` is followed by
/// `Data` operations until `size` bytes have come, with nothing else in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportOp {
    /// Writes a regular file.
    File {
        /// The file's path (not the root).
        path: EntryPath,
        /// Mode and mtime.
        attrs: Attrs,
        /// The whole content length.
        size: u64,
        /// The first chunk of content (at most [`CHUNK_SIZE`](crate::CHUNK_SIZE)).
        data: Bytes,
    },
    /// More content of the file being written.
    Data(Bytes),
    /// Creates a directory, or sets the mode and mtime of an existing one.
    Mkdir {
        /// The directory (not the root).
        path: EntryPath,
        /// Mode and mtime.
        attrs: Attrs,
    },
    /// Creates a symbolic link, replacing any existing entry.
    Symlink {
        /// The link (not the root).
        path: EntryPath,
        /// What it points to.
        target: String,
        /// Modification time, nanoseconds since the Unix epoch.
        mtime_ns: i64,
    },
    /// Deletes an entry; a missing one is not an error.
    Delete {
        /// The entry (not the root).
        path: EntryPath,
        /// Delete a non-empty directory with its subtree.
        recursive: bool,
    },
}

impl ImportOp {
    /// The path the operation names (`None` for `Data`).
    pub fn path(&self) -> Option<&EntryPath> {
        match self {
            ImportOp::File { path, .. }
            | ImportOp::Mkdir { path, .. }
            | ImportOp::Symlink { path, .. }
            | ImportOp::Delete { path, .. } => Some(path),
            ImportOp::Data(_) => None,
        }
    }

    /// Roughly how many bytes the operation takes on the wire.
    pub fn wire_size(&self) -> usize {
        const OVERHEAD: usize = 32;
        OVERHEAD
            + match self {
                ImportOp::File { path, data, .. } => path.as_str().len() + data.len(),
                ImportOp::Data(d) => d.len(),
                ImportOp::Mkdir { path, .. } | ImportOp::Delete { path, .. } => path.as_str().len(),
                ImportOp::Symlink { path, target, .. } => path.as_str().len() + target.len(),
            }
    }
}

impl TryFrom<pb::ImportOp> for ImportOp {
    type Error = ProtocolError;
    fn try_from(op: pb::ImportOp) -> Result<ImportOp, ProtocolError> {
        use pb::import_op::Op;
        Ok(match op.op.ok_or(ProtocolError::missing("ImportOp.op"))? {
            Op::File(f) => {
                let data = chunk("ImportFile.data", f.data)?;
                if data.len() as u64 > f.size {
                    return Err(ProtocolError::Invalid {
                        field: "ImportFile.data",
                        reason: format!(
                            "{} bytes of data for `{}`, whose size is {}",
                            data.len(),
                            f.path,
                            f.size
                        ),
                    });
                }
                ImportOp::File {
                    path: entry_path_not_root("ImportFile.path", f.path)?,
                    attrs: Attrs {
                        mode: mode("ImportFile.mode", f.mode)?,
                        mtime_ns: f.mtime_ns,
                    },
                    size: f.size,
                    data,
                }
            }
            Op::Data(d) => ImportOp::Data(chunk("ImportOp.data", d)?),
            Op::Mkdir(m) => ImportOp::Mkdir {
                path: entry_path_not_root("ImportMkdir.path", m.path)?,
                attrs: Attrs {
                    mode: mode("ImportMkdir.mode", m.mode)?,
                    mtime_ns: m.mtime_ns,
                },
            },
            Op::Symlink(s) => ImportOp::Symlink {
                path: entry_path_not_root("ImportSymlink.path", s.path)?,
                target: symlink_target("ImportSymlink.target", s.target)?,
                mtime_ns: s.mtime_ns,
            },
            Op::Delete(d) => ImportOp::Delete {
                path: entry_path_not_root("ImportDelete.path", d.path)?,
                recursive: d.recursive,
            },
        })
    }
}

impl From<ImportOp> for pb::ImportOp {
    fn from(op: ImportOp) -> pb::ImportOp {
        use pb::import_op::Op;
        let op = match op {
            ImportOp::File {
                path,
                attrs,
                size,
                data,
            } => Op::File(pb::ImportFile {
                path: path.into(),
                mode: attrs.mode,
                mtime_ns: attrs.mtime_ns,
                size,
                data,
            }),
            ImportOp::Data(d) => Op::Data(d),
            ImportOp::Mkdir { path, attrs } => Op::Mkdir(pb::ImportMkdir {
                path: path.into(),
                mode: attrs.mode,
                mtime_ns: attrs.mtime_ns,
            }),
            ImportOp::Symlink {
                path,
                target,
                mtime_ns,
            } => Op::Symlink(pb::ImportSymlink {
                path: path.into(),
                target,
                mtime_ns,
            }),
            ImportOp::Delete { path, recursive } => Op::Delete(pb::ImportDelete {
                path: path.into(),
                recursive,
            }),
        };
        pb::ImportOp { op: Some(op) }
    }
}

/// One message of an Import stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRequest {
    /// Set in the first message only.
    pub begin: Option<ImportBegin>,
    /// Operations, applied in order.
    pub ops: Vec<ImportOp>,
    /// Set in the last message: commit the rest and answer with `done`. A stream that stops
    /// without it is abandoned, and what was not yet committed is discarded.
    pub finish: bool,
}

impl TryFrom<pb::ImportRequest> for ImportRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::ImportRequest) -> Result<ImportRequest, ProtocolError> {
        Ok(ImportRequest {
            begin: r.begin.map(ImportBegin::try_from).transpose()?,
            ops: r
                .ops
                .into_iter()
                .map(ImportOp::try_from)
                .collect::<Result<_, _>>()?,
            finish: r.finish,
        })
    }
}

impl From<ImportRequest> for pb::ImportRequest {
    fn from(r: ImportRequest) -> pb::ImportRequest {
        pb::ImportRequest {
            begin: r.begin.map(Into::into),
            ops: r.ops.into_iter().map(Into::into).collect(),
            finish: r.finish,
        }
    }
}

/// What a transaction, or a whole import, wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportCounts {
    /// Files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks written.
    pub symlinks: u64,
    /// Deletes applied.
    pub deletes: u64,
    /// Content bytes of the files.
    pub bytes: u64,
}

impl ImportCounts {
    /// Operations counted (files, dirs, symlinks and deletes).
    pub fn ops(&self) -> u64 {
        self.files + self.dirs + self.symlinks + self.deletes
    }
}

impl From<pb::ImportCounts> for ImportCounts {
    fn from(c: pb::ImportCounts) -> ImportCounts {
        ImportCounts {
            files: c.files,
            dirs: c.dirs,
            symlinks: c.symlinks,
            deletes: c.deletes,
            bytes: c.bytes,
        }
    }
}

impl From<ImportCounts> for pb::ImportCounts {
    fn from(c: ImportCounts) -> pb::ImportCounts {
        pb::ImportCounts {
            files: c.files,
            dirs: c.dirs,
            symlinks: c.symlinks,
            deletes: c.deletes,
            bytes: c.bytes,
        }
    }
}

/// Reports a committed transaction of an import (or, with `done`, the end of it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportProgress {
    /// The TID of the commit (`None` in a final report that committed nothing more).
    pub tid: Option<Tid>,
    /// What this transaction wrote.
    pub txn: ImportCounts,
    /// What the import has committed so far.
    pub total: ImportCounts,
    /// The path of the last committed operation.
    pub last_path: Option<EntryPath>,
    /// Everything the client sent is committed.
    pub done: bool,
}

impl TryFrom<pb::ImportResponse> for ImportProgress {
    type Error = ProtocolError;
    fn try_from(r: pb::ImportResponse) -> Result<ImportProgress, ProtocolError> {
        let last_path = entry_path("ImportResponse.last_path", r.last_path)?;
        Ok(ImportProgress {
            tid: opt_tid(r.tid),
            txn: r.txn.map(Into::into).unwrap_or_default(),
            total: r.total.map(Into::into).unwrap_or_default(),
            last_path: (!last_path.is_root()).then_some(last_path),
            done: r.done,
        })
    }
}

impl From<ImportProgress> for pb::ImportResponse {
    fn from(p: ImportProgress) -> pb::ImportResponse {
        pb::ImportResponse {
            tid: tid_or_zero(p.tid),
            txn: Some(p.txn.into()),
            total: Some(p.total.into()),
            last_path: p.last_path.map(String::from).unwrap_or_default(),
            done: p.done,
        }
    }
}

// =============================================================================================
// Storage: results (validated by the client)

/// A file written by Put.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PutResult {
    /// The TID of the commit.
    pub tid: Tid,
    /// Content bytes stored.
    pub size: u64,
    /// BLAKE3 hash of the content.
    #[serde(serialize_with = "serialize_hash")]
    pub content_hash: [u8; 32],
}

impl TryFrom<pb::PutResponse> for PutResult {
    type Error = ProtocolError;
    fn try_from(r: pb::PutResponse) -> Result<PutResult, ProtocolError> {
        Ok(PutResult {
            tid: Tid(r.tid),
            size: r.size,
            content_hash: hash("PutResponse.content_hash", &r.content_hash)?
                .ok_or(ProtocolError::missing("PutResponse.content_hash"))?,
        })
    }
}

impl From<PutResult> for pb::PutResponse {
    fn from(r: PutResult) -> pb::PutResponse {
        pb::PutResponse {
            tid: r.tid.get(),
            size: r.size,
            content_hash: Bytes::copy_from_slice(&r.content_hash),
        }
    }
}

/// One message of a Get stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetMessage {
    /// The entry's metadata; the first message.
    Meta(Entry),
    /// A content chunk.
    Data(Bytes),
}

impl TryFrom<pb::GetResponse> for GetMessage {
    type Error = ProtocolError;
    fn try_from(r: pb::GetResponse) -> Result<GetMessage, ProtocolError> {
        match r.msg {
            Some(pb::get_response::Msg::Meta(e)) => Ok(GetMessage::Meta(e.try_into()?)),
            Some(pb::get_response::Msg::Data(d)) => {
                Ok(GetMessage::Data(chunk("GetResponse.data", d)?))
            }
            None => Err(ProtocolError::missing("GetResponse.msg")),
        }
    }
}

impl From<GetMessage> for pb::GetResponse {
    fn from(m: GetMessage) -> pb::GetResponse {
        let msg = match m {
            GetMessage::Meta(e) => pb::get_response::Msg::Meta(e.into()),
            GetMessage::Data(d) => pb::get_response::Msg::Data(d),
        };
        pb::GetResponse { msg: Some(msg) }
    }
}

/// The answer to a Stat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatResult {
    /// The entry.
    pub entry: Entry,
    /// The TID the read was made at.
    pub tid: Tid,
}

impl TryFrom<pb::StatResponse> for StatResult {
    type Error = ProtocolError;
    fn try_from(r: pb::StatResponse) -> Result<StatResult, ProtocolError> {
        Ok(StatResult {
            entry: r
                .entry
                .ok_or(ProtocolError::missing("StatResponse.entry"))?
                .try_into()?,
            tid: Tid(r.tid),
        })
    }
}

impl From<StatResult> for pb::StatResponse {
    fn from(r: StatResult) -> pb::StatResponse {
        pb::StatResponse {
            entry: Some(r.entry.into()),
            tid: r.tid.get(),
        }
    }
}

/// A listing (or one page of it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// The TID the read was made at.
    pub tid: Tid,
    /// The entries, in path order.
    pub entries: Vec<Entry>,
}

impl TryFrom<pb::ListResponse> for Listing {
    type Error = ProtocolError;
    fn try_from(r: pb::ListResponse) -> Result<Listing, ProtocolError> {
        Ok(Listing {
            tid: Tid(r.tid),
            entries: r
                .entries
                .into_iter()
                .map(Entry::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<Listing> for pb::ListResponse {
    fn from(l: Listing) -> pb::ListResponse {
        pb::ListResponse {
            tid: l.tid.get(),
            entries: l.entries.into_iter().map(Into::into).collect(),
        }
    }
}

/// The versions of a path, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct History {
    /// Every retained version.
    pub versions: Vec<Entry>,
    /// TID ranges of the PFS that prunes made unreadable.
    pub pruned: Vec<TidRange>,
}

impl TryFrom<pb::HistoryResponse> for History {
    type Error = ProtocolError;
    fn try_from(r: pb::HistoryResponse) -> Result<History, ProtocolError> {
        Ok(History {
            versions: r
                .versions
                .into_iter()
                .map(Entry::try_from)
                .collect::<Result<_, _>>()?,
            pruned: ranges_from_pb(r.pruned),
        })
    }
}

impl From<History> for pb::HistoryResponse {
    fn from(h: History) -> pb::HistoryResponse {
        pb::HistoryResponse {
            versions: h.versions.into_iter().map(Into::into).collect(),
            pruned: ranges_to_pb(&h.pruned),
        }
    }
}

/// One message of an Export stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportMessage {
    /// The first message: the TID the archive shows.
    Header {
        /// The TID.
        tid: Tid,
    },
    /// A chunk of the tar stream.
    Data(Bytes),
}

impl TryFrom<pb::ExportResponse> for ExportMessage {
    type Error = ProtocolError;
    fn try_from(r: pb::ExportResponse) -> Result<ExportMessage, ProtocolError> {
        match r.msg {
            Some(pb::export_response::Msg::Header(h)) => {
                Ok(ExportMessage::Header { tid: Tid(h.tid) })
            }
            Some(pb::export_response::Msg::Data(d)) => {
                Ok(ExportMessage::Data(chunk("ExportResponse.data", d)?))
            }
            None => Err(ProtocolError::missing("ExportResponse.msg")),
        }
    }
}

impl From<ExportMessage> for pb::ExportResponse {
    fn from(m: ExportMessage) -> pb::ExportResponse {
        let msg = match m {
            ExportMessage::Header { tid } => {
                pb::export_response::Msg::Header(pb::ExportHeader { tid: tid.get() })
            }
            ExportMessage::Data(d) => pb::export_response::Msg::Data(d),
        };
        pb::ExportResponse { msg: Some(msg) }
    }
}

/// What a Delete removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeleteResult {
    /// The TID of the commit.
    pub tid: Tid,
    /// Entries deleted.
    pub entries: u64,
}

impl From<pb::DeleteResponse> for DeleteResult {
    fn from(r: pb::DeleteResponse) -> DeleteResult {
        DeleteResult {
            tid: Tid(r.tid),
            entries: r.entries,
        }
    }
}

impl From<DeleteResult> for pb::DeleteResponse {
    fn from(r: DeleteResult) -> pb::DeleteResponse {
        pb::DeleteResponse {
            tid: r.tid.get(),
            entries: r.entries,
        }
    }
}

impl From<Tid> for pb::CommitResponse {
    fn from(tid: Tid) -> pb::CommitResponse {
        pb::CommitResponse { tid: tid.get() }
    }
}

impl From<pb::CommitResponse> for Tid {
    fn from(r: pb::CommitResponse) -> Tid {
        Tid(r.tid)
    }
}

// =============================================================================================
// Admin

/// What a PFS does in replication (the wire calls it `PfsRole`).
pub use repl_types::Role as PfsRole;

fn role_from_pb(field: &'static str, v: i32) -> Result<PfsRole, ProtocolError> {
    match pb::PfsRole::try_from(v) {
        Ok(pb::PfsRole::Master) => Ok(PfsRole::Master),
        Ok(pb::PfsRole::Slave) => Ok(PfsRole::Slave),
        Ok(pb::PfsRole::Unspecified) | Err(_) => Err(ProtocolError::Enum { field, value: v }),
    }
}

impl From<PfsRole> for pb::PfsRole {
    fn from(r: PfsRole) -> pb::PfsRole {
        match r {
            PfsRole::Master => pb::PfsRole::Master,
            PfsRole::Slave => pb::PfsRole::Slave,
        }
    }
}

/// The configuration and position of a PFS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PfsInfo {
    /// Its name.
    pub name: PfsName,
    /// Master or slave.
    pub role: PfsRole,
    /// Old versions are reclaimed at once.
    pub nohistory: bool,
    /// The UUID shared by a master and its slaves.
    pub shared_uuid: Uuid,
    /// The newest committed (for a slave: fully synced) TID; `None` before the first commit.
    pub head_tid: Option<Tid>,
    /// The TID that created the PFS.
    pub created_tid: Tid,
    /// How much history it keeps.
    #[serde(serialize_with = "display")]
    pub retention: Retention,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A retention policy from a request field; empty is `forever`.
pub fn retention(field: &'static str, text: &str) -> Result<Retention, ProtocolError> {
    if text.is_empty() {
        return Ok(Retention::Forever);
    }
    text.parse()
        .map_err(|source| ProtocolError::Retention { field, source })
}

impl TryFrom<pb::PfsInfo> for PfsInfo {
    type Error = ProtocolError;
    fn try_from(p: pb::PfsInfo) -> Result<PfsInfo, ProtocolError> {
        Ok(PfsInfo {
            name: pfs_name("PfsInfo.name", p.name)?,
            role: role_from_pb("PfsInfo.role", p.role)?,
            nohistory: p.nohistory,
            shared_uuid: uuid("PfsInfo.shared_uuid", &p.shared_uuid)?,
            head_tid: opt_tid(p.head_tid),
            created_tid: Tid(p.created_tid),
            retention: retention("PfsInfo.retention", &p.retention)?,
        })
    }
}

impl From<PfsInfo> for pb::PfsInfo {
    fn from(p: PfsInfo) -> pb::PfsInfo {
        pb::PfsInfo {
            name: p.name.into(),
            role: pb::PfsRole::from(p.role).into(),
            nohistory: p.nohistory,
            shared_uuid: Bytes::copy_from_slice(p.shared_uuid.as_bytes()),
            head_tid: tid_or_zero(p.head_tid),
            created_tid: p.created_tid.get(),
            retention: p.retention.to_string(),
        }
    }
}

/// TIDs `from <= t < to`.
pub type TidRange = (Tid, Tid);

fn ranges_from_pb(r: Vec<pb::TidRange>) -> Vec<TidRange> {
    r.into_iter()
        .map(|r| (Tid(r.from_tid), Tid(r.to_tid)))
        .collect()
}

/// The wire form of TID ranges.
pub fn ranges_to_pb(r: &[TidRange]) -> Vec<pb::TidRange> {
    r.iter()
        .map(|(a, b)| pb::TidRange {
            from_tid: a.get(),
            to_tid: b.get(),
        })
        .collect()
}

/// What a prune removed (or, in a dry run, would remove).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PruneResult {
    /// Nothing was changed.
    pub dry_run: bool,
    /// TID ranges that became unreadable.
    pub pruned: Vec<TidRange>,
    /// Commits pruned.
    pub commits: u64,
    /// Versions dropped.
    pub versions: u64,
    /// Log bytes that became dead.
    pub bytes: u64,
    /// Commits a slave's hold kept.
    pub held_commits: u64,
    /// The oldest checkpoint a paired slave confirmed.
    pub hold_tid: Option<Tid>,
    /// Slaves (`NODE:PFS`) that now need a full resync.
    pub needs_resync: Vec<String>,
}

impl From<pb::PruneResponse> for PruneResult {
    fn from(r: pb::PruneResponse) -> PruneResult {
        PruneResult {
            dry_run: r.dry_run,
            pruned: ranges_from_pb(r.pruned),
            commits: r.commits,
            versions: r.versions,
            bytes: r.bytes,
            held_commits: r.held_commits,
            hold_tid: opt_tid(r.hold_tid),
            needs_resync: r.needs_resync,
        }
    }
}

impl From<PruneResult> for pb::PruneResponse {
    fn from(r: PruneResult) -> pb::PruneResponse {
        pb::PruneResponse {
            dry_run: r.dry_run,
            pruned: ranges_to_pb(&r.pruned),
            commits: r.commits,
            versions: r.versions,
            bytes: r.bytes,
            held_commits: r.held_commits,
            hold_tid: tid_or_zero(r.hold_tid),
            needs_resync: r.needs_resync,
        }
    }
}

/// Creates a PFS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PfsCreateRequest {
    /// The new PFS's name.
    pub name: PfsName,
    /// Master or slave.
    pub role: PfsRole,
    /// Reclaim old versions at once.
    pub nohistory: bool,
    /// The shared UUID to use (`None` = a new random one).
    pub shared_uuid: Option<Uuid>,
}

impl TryFrom<pb::PfsCreateRequest> for PfsCreateRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::PfsCreateRequest) -> Result<PfsCreateRequest, ProtocolError> {
        Ok(PfsCreateRequest {
            name: pfs_name("PfsCreateRequest.name", r.name)?,
            role: role_from_pb("PfsCreateRequest.role", r.role)?,
            nohistory: r.nohistory,
            shared_uuid: r
                .shared_uuid
                .map(|b| uuid("PfsCreateRequest.shared_uuid", &b))
                .transpose()?,
        })
    }
}

impl From<PfsCreateRequest> for pb::PfsCreateRequest {
    fn from(r: PfsCreateRequest) -> pb::PfsCreateRequest {
        pb::PfsCreateRequest {
            name: r.name.into(),
            role: pb::PfsRole::from(r.role).into(),
            nohistory: r.nohistory,
            shared_uuid: r.shared_uuid.map(|u| Bytes::copy_from_slice(u.as_bytes())),
        }
    }
}

/// Destroys a PFS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PfsDestroyRequest {
    /// The PFS.
    pub name: PfsName,
    /// Destroy even if it has pairings or snapshots.
    pub force: bool,
}

impl TryFrom<pb::PfsDestroyRequest> for PfsDestroyRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::PfsDestroyRequest) -> Result<PfsDestroyRequest, ProtocolError> {
        Ok(PfsDestroyRequest {
            name: pfs_name("PfsDestroyRequest.name", r.name)?,
            force: r.force,
        })
    }
}

impl From<PfsDestroyRequest> for pb::PfsDestroyRequest {
    fn from(r: PfsDestroyRequest) -> pb::PfsDestroyRequest {
        pb::PfsDestroyRequest {
            name: r.name.into(),
            force: r.force,
        }
    }
}

impl TryFrom<pb::PfsStatusRequest> for PfsName {
    type Error = ProtocolError;
    fn try_from(r: pb::PfsStatusRequest) -> Result<PfsName, ProtocolError> {
        pfs_name("PfsStatusRequest.name", r.name)
    }
}

impl TryFrom<pb::SnapshotListRequest> for PfsName {
    type Error = ProtocolError;
    fn try_from(r: pb::SnapshotListRequest) -> Result<PfsName, ProtocolError> {
        pfs_name("SnapshotListRequest.pfs", r.pfs)
    }
}

/// The details of a PFS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PfsStatus {
    /// Configuration and position.
    pub pfs: PfsInfo,
    /// Live files at the head.
    pub files: u64,
    /// Live directories at the head.
    pub dirs: u64,
    /// Live symlinks at the head.
    pub symlinks: u64,
    /// Content bytes of the live files at the head.
    pub logical_bytes: u64,
    /// Versions stored, live or historical.
    pub versions: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// The oldest TID still readable.
    pub oldest_tid: Option<Tid>,
    /// TID ranges that prunes made unreadable.
    pub pruned: Vec<TidRange>,
    /// Bytes of file data its kept versions reference, as last estimated.
    pub used_bytes: u64,
    /// The device's bytes in segments in use.
    pub device_used_bytes: u64,
    /// Bytes of the device that space reclaim can give back, as last estimated.
    pub device_reclaimable_bytes: u64,
    /// The device's bytes in free segments.
    pub device_free_bytes: u64,
}

impl TryFrom<pb::PfsStatusResponse> for PfsStatus {
    type Error = ProtocolError;
    fn try_from(r: pb::PfsStatusResponse) -> Result<PfsStatus, ProtocolError> {
        Ok(PfsStatus {
            pfs: r
                .pfs
                .ok_or(ProtocolError::missing("PfsStatusResponse.pfs"))?
                .try_into()?,
            files: r.files,
            dirs: r.dirs,
            symlinks: r.symlinks,
            logical_bytes: r.logical_bytes,
            versions: r.versions,
            snapshots: r.snapshots,
            oldest_tid: opt_tid(r.oldest_tid),
            pruned: ranges_from_pb(r.pruned),
            used_bytes: r.used_bytes,
            device_used_bytes: r.device_used_bytes,
            device_reclaimable_bytes: r.device_reclaimable_bytes,
            device_free_bytes: r.device_free_bytes,
        })
    }
}

impl From<PfsStatus> for pb::PfsStatusResponse {
    fn from(s: PfsStatus) -> pb::PfsStatusResponse {
        pb::PfsStatusResponse {
            pfs: Some(s.pfs.into()),
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            logical_bytes: s.logical_bytes,
            versions: s.versions,
            snapshots: s.snapshots,
            oldest_tid: tid_or_zero(s.oldest_tid),
            pruned: ranges_to_pb(&s.pruned),
            used_bytes: s.used_bytes,
            device_used_bytes: s.device_used_bytes,
            device_reclaimable_bytes: s.device_reclaimable_bytes,
            device_free_bytes: s.device_free_bytes,
        }
    }
}

/// A named TID of a PFS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Its name.
    pub name: SnapshotName,
    /// The TID it names.
    pub tid: Tid,
}

impl TryFrom<pb::Snapshot> for Snapshot {
    type Error = ProtocolError;
    fn try_from(s: pb::Snapshot) -> Result<Snapshot, ProtocolError> {
        Ok(Snapshot {
            name: SnapshotName::validate("Snapshot.name", s.name)?,
            tid: Tid(s.tid),
        })
    }
}

impl From<Snapshot> for pb::Snapshot {
    fn from(s: Snapshot) -> pb::Snapshot {
        pb::Snapshot {
            name: s.name.into(),
            tid: s.tid.get(),
        }
    }
}

/// Creates a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotCreateRequest {
    /// The PFS.
    pub pfs: PfsName,
    /// The snapshot's name.
    pub name: SnapshotName,
    /// The TID to name (`None` = the head).
    pub tid: Option<Tid>,
}

impl TryFrom<pb::SnapshotCreateRequest> for SnapshotCreateRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::SnapshotCreateRequest) -> Result<SnapshotCreateRequest, ProtocolError> {
        Ok(SnapshotCreateRequest {
            pfs: pfs_name("SnapshotCreateRequest.pfs", r.pfs)?,
            name: SnapshotName::validate("SnapshotCreateRequest.name", r.name)?,
            tid: r.tid.map(Tid),
        })
    }
}

impl From<SnapshotCreateRequest> for pb::SnapshotCreateRequest {
    fn from(r: SnapshotCreateRequest) -> pb::SnapshotCreateRequest {
        pb::SnapshotCreateRequest {
            pfs: r.pfs.into(),
            name: r.name.into(),
            tid: r.tid.map(Tid::get),
        }
    }
}

/// Deletes a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDeleteRequest {
    /// The PFS.
    pub pfs: PfsName,
    /// The snapshot's name.
    pub name: SnapshotName,
}

impl TryFrom<pb::SnapshotDeleteRequest> for SnapshotDeleteRequest {
    type Error = ProtocolError;
    fn try_from(r: pb::SnapshotDeleteRequest) -> Result<SnapshotDeleteRequest, ProtocolError> {
        Ok(SnapshotDeleteRequest {
            pfs: pfs_name("SnapshotDeleteRequest.pfs", r.pfs)?,
            name: SnapshotName::validate("SnapshotDeleteRequest.name", r.name)?,
        })
    }
}

impl From<SnapshotDeleteRequest> for pb::SnapshotDeleteRequest {
    fn from(r: SnapshotDeleteRequest) -> pb::SnapshotDeleteRequest {
        pb::SnapshotDeleteRequest {
            pfs: r.pfs.into(),
            name: r.name.into(),
        }
    }
}

/// One inconsistency found by fsck.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FsckProblem {
    /// Where, as text.
    pub location: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The result of an online fsck.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    /// No problem found.
    pub clean: bool,
    /// Log records checked.
    pub records_checked: u64,
    /// Bytes checked.
    pub bytes_checked: u64,
    /// Problems found.
    pub problems: Vec<FsckProblem>,
}

impl From<pb::FsckResponse> for FsckReport {
    fn from(r: pb::FsckResponse) -> FsckReport {
        FsckReport {
            clean: r.clean,
            records_checked: r.records_checked,
            bytes_checked: r.bytes_checked,
            problems: r
                .problems
                .into_iter()
                .map(|p| FsckProblem {
                    location: p.location,
                    message: p.message,
                })
                .collect(),
        }
    }
}

impl From<FsckReport> for pb::FsckResponse {
    fn from(r: FsckReport) -> pb::FsckResponse {
        pb::FsckResponse {
            clean: r.clean,
            records_checked: r.records_checked,
            bytes_checked: r.bytes_checked,
            problems: r
                .problems
                .into_iter()
                .map(|p| pb::FsckProblem {
                    location: p.location,
                    message: p.message,
                })
                .collect(),
        }
    }
}

/// A device the node owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// Its path on the node.
    pub path: String,
    /// The volume UUID from its superblock.
    pub volume_uuid: Uuid,
    /// Total size.
    pub size_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes free.
    pub free_bytes: u64,
}

/// The node's name, version and devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    /// The node's name (the CN of its certificate).
    pub node_name: String,
    /// The repld version.
    pub version: String,
    /// Its devices.
    pub devices: Vec<DeviceInfo>,
    /// Time since the daemon started.
    pub uptime: Duration,
}

impl TryFrom<pb::NodeInfoResponse> for NodeInfo {
    type Error = ProtocolError;
    fn try_from(r: pb::NodeInfoResponse) -> Result<NodeInfo, ProtocolError> {
        Ok(NodeInfo {
            node_name: r.node_name,
            version: r.version,
            devices: r
                .devices
                .into_iter()
                .map(|d| {
                    Ok(DeviceInfo {
                        path: d.path,
                        volume_uuid: uuid("DeviceInfo.volume_uuid", &d.volume_uuid)?,
                        size_bytes: d.size_bytes,
                        used_bytes: d.used_bytes,
                        free_bytes: d.free_bytes,
                    })
                })
                .collect::<Result<_, ProtocolError>>()?,
            uptime: Duration::from_secs(r.uptime_seconds),
        })
    }
}

impl From<NodeInfo> for pb::NodeInfoResponse {
    fn from(n: NodeInfo) -> pb::NodeInfoResponse {
        pb::NodeInfoResponse {
            node_name: n.node_name,
            version: n.version,
            devices: n
                .devices
                .into_iter()
                .map(|d| pb::DeviceInfo {
                    path: d.path,
                    volume_uuid: Bytes::copy_from_slice(d.volume_uuid.as_bytes()),
                    size_bytes: d.size_bytes,
                    used_bytes: d.used_bytes,
                    free_bytes: d.free_bytes,
                })
                .collect(),
            uptime_seconds: n.uptime.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pfs() -> PfsName {
        PfsName::new("data").expect("valid")
    }

    fn path(p: &str) -> EntryPath {
        EntryPath::new(p).expect("valid")
    }

    fn entry() -> Entry {
        Entry {
            path: path("dir/file.txt"),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 1_700_000_000_123_456_789,
            size: 5,
            symlink_target: None,
            create_tid: Tid(0x0000_018f_2c00_0001),
            delete_tid: Some(Tid(0x0000_018f_2c00_0002)),
            content_hash: Some([7; 32]),
        }
    }

    #[test]
    fn bad_paths_are_rejected_naming_field_and_path() {
        for (bad, what) in [
            ("a//b", "a//b"),
            ("/etc/passwd", "/etc/passwd"),
            ("x/../../y", "x/../../y"),
            ("nul\0byte", "nul\\0byte"),
        ] {
            let req = pb::GetRequest {
                pfs: "data".into(),
                path: bad.into(),
                at: None,
            };
            let err = ReadRequest::try_from(req).expect_err("bad path must be rejected");
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    ProtocolError::Path {
                        field: "GetRequest.path",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(
                msg.contains(what),
                "message {msg:?} should name the path {what:?}"
            );
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(what));
        }
    }

    #[test]
    fn writes_refuse_the_root() {
        let req = pb::DeleteRequest {
            pfs: "data".into(),
            path: String::new(),
            recursive: true,
        };
        let err = DeleteRequest::try_from(req).expect_err("root");
        assert!(
            matches!(
                err,
                ProtocolError::Path {
                    source: PathError::Root,
                    ..
                }
            ),
            "{err:?}"
        );
        let req = pb::PutHeader {
            pfs: "data".into(),
            path: ".".into(),
            ..Default::default()
        };
        assert!(PutHeader::try_from(req).is_err());
    }

    #[test]
    fn rename_into_itself_is_rejected() {
        let req = pb::RenameRequest {
            pfs: "data".into(),
            from: "a".into(),
            to: "a/b".into(),
            replace: false,
        };
        let err = RenameRequest::try_from(req).expect_err("into itself");
        assert!(err.to_string().contains("`a/b`"), "{err}");
        let ok = pb::RenameRequest {
            pfs: "data".into(),
            from: "a".into(),
            to: "ab".into(),
            replace: true,
        };
        assert!(RenameRequest::try_from(ok).is_ok());
    }

    #[test]
    fn bad_pfs_mode_uuid_and_enum_are_rejected() {
        let req = pb::ListRequest {
            pfs: "../x".into(),
            ..Default::default()
        };
        assert!(matches!(
            ListRequest::try_from(req),
            Err(ProtocolError::PfsName { .. })
        ));

        let req = pb::MkdirRequest {
            pfs: "data".into(),
            path: "d".into(),
            mode: 0o40755,
            ..Default::default()
        };
        let err = MkdirRequest::try_from(req).expect_err("type bits");
        assert!(err.to_string().contains("0o40755"), "{err}");

        let req = pb::PfsCreateRequest {
            name: "data".into(),
            role: pb::PfsRole::Slave.into(),
            nohistory: false,
            shared_uuid: Some(Bytes::from_static(&[1, 2, 3])),
        };
        assert!(matches!(
            PfsCreateRequest::try_from(req),
            Err(ProtocolError::Uuid { len: 3, .. })
        ));

        let req = pb::PfsCreateRequest {
            name: "data".into(),
            ..Default::default()
        };
        assert!(matches!(
            PfsCreateRequest::try_from(req),
            Err(ProtocolError::Enum { value: 0, .. })
        ));
    }

    #[test]
    fn oversized_chunks_and_bad_symlinks_are_rejected() {
        let big = Bytes::from(vec![0u8; crate::CHUNK_SIZE + 1]);
        let req = pb::PutRequest {
            msg: Some(pb::put_request::Msg::Data(big)),
        };
        assert!(matches!(
            PutMessage::try_from(req),
            Err(ProtocolError::ChunkTooLarge { .. })
        ));
        let req = pb::PutRequest { msg: None };
        assert_eq!(
            PutMessage::try_from(req),
            Err(ProtocolError::Missing("PutRequest.msg"))
        );

        let req = pb::SymlinkRequest {
            pfs: "data".into(),
            path: "l".into(),
            target: String::new(),
            ..Default::default()
        };
        assert!(matches!(
            SymlinkRequest::try_from(req),
            Err(ProtocolError::SymlinkTarget { .. })
        ));
        // Absolute and `..` targets are legal for symlinks.
        let req = pb::SymlinkRequest {
            pfs: "data".into(),
            path: "l".into(),
            target: "../../etc".into(),
            ..Default::default()
        };
        assert_eq!(
            SymlinkRequest::try_from(req).map(|r| r.target),
            Ok("../../etc".to_owned())
        );
    }

    #[test]
    fn snapshot_names_never_read_as_tids() {
        for bad in ["", "123", "0x1f", "head", ".x", "a b", "a/b"] {
            assert!(
                SnapshotName::new(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        for ok in ["nightly", "2026-11-22", "v1.0", "before_upgrade"] {
            assert_eq!(SnapshotName::new(ok).map(String::from), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn read_at_parses_head_tid_and_snapshot() {
        assert_eq!("".parse::<ReadAt>(), Ok(ReadAt::Head));
        assert_eq!("head".parse::<ReadAt>(), Ok(ReadAt::Head));
        assert_eq!("0x10".parse::<ReadAt>(), Ok(ReadAt::Tid(Tid(16))));
        assert_eq!("16".parse::<ReadAt>(), Ok(ReadAt::Tid(Tid(16))));
        assert_eq!(
            "2026-11-22T10:00:00Z".parse::<ReadAt>(),
            Ok(ReadAt::Tid(Tid(1_795_341_600_000_000_000)))
        );
        assert_eq!(
            "nightly".parse::<ReadAt>(),
            Ok(ReadAt::Snapshot(
                SnapshotName::new("nightly").expect("valid")
            ))
        );
        assert!("a b".parse::<ReadAt>().is_err());
    }

    #[test]
    fn read_at_round_trips_through_the_wire() {
        for at in [
            ReadAt::Head,
            ReadAt::Tid(Tid(42)),
            ReadAt::Snapshot(SnapshotName::new("nightly").expect("valid")),
        ] {
            let wire: Option<pb::At> = at.clone().into();
            assert_eq!(ReadAt::from_pb("at", wire), Ok(at));
        }
        let bad = Some(pb::At {
            point: Some(pb::at::Point::Snapshot("12".into())),
        });
        assert!(ReadAt::from_pb("GetRequest.at.snapshot", bad).is_err());
    }

    #[test]
    fn entries_round_trip_and_are_checked() {
        let e = entry();
        assert_eq!(Entry::try_from(pb::Entry::from(e.clone())), Ok(e.clone()));

        let link = Entry {
            path: path("l"),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 3,
            symlink_target: Some("a/b".into()),
            delete_tid: None,
            content_hash: None,
            ..e.clone()
        };
        assert_eq!(Entry::try_from(pb::Entry::from(link.clone())), Ok(link));

        let mut wire = pb::Entry::from(e.clone());
        wire.content_hash = Bytes::from_static(&[1; 31]);
        assert!(matches!(
            Entry::try_from(wire),
            Err(ProtocolError::Hash { len: 31, .. })
        ));

        let mut wire = pb::Entry::from(e.clone());
        wire.kind = 99;
        assert!(matches!(
            Entry::try_from(wire),
            Err(ProtocolError::Enum { value: 99, .. })
        ));

        let mut wire = pb::Entry::from(e);
        wire.symlink_target = "x".into();
        assert!(matches!(
            Entry::try_from(wire),
            Err(ProtocolError::Invalid { .. })
        ));
    }

    #[test]
    fn requests_round_trip() {
        let put = PutHeader {
            pfs: pfs(),
            path: path("a/b"),
            attrs: Attrs {
                mode: 0o600,
                mtime_ns: -5,
            },
            size: Some(10),
            parents: true,
        };
        assert_eq!(
            PutHeader::try_from(pb::PutHeader::from(put.clone())),
            Ok(put)
        );

        let list = ListRequest {
            pfs: pfs(),
            path: EntryPath::root(),
            at: ReadAt::Tid(Tid(9)),
            recursive: true,
        };
        assert_eq!(
            ListRequest::try_from(pb::ListRequest::from(list.clone())),
            Ok(list)
        );

        let import = ImportRequest {
            begin: Some(ImportBegin {
                pfs: pfs(),
                max_txn_ops: Some(1000),
                max_txn_bytes: None,
            }),
            ops: vec![
                ImportOp::Mkdir {
                    path: path("d"),
                    attrs: Attrs {
                        mode: 0o755,
                        mtime_ns: 1,
                    },
                },
                ImportOp::File {
                    path: path("d/f"),
                    attrs: Attrs {
                        mode: 0o644,
                        mtime_ns: 2,
                    },
                    size: 6,
                    data: Bytes::from_static(b"abc"),
                },
                ImportOp::Data(Bytes::from_static(b"def")),
                ImportOp::Symlink {
                    path: path("d/l"),
                    target: "f".into(),
                    mtime_ns: 3,
                },
                ImportOp::Delete {
                    path: path("old"),
                    recursive: true,
                },
            ],
            finish: true,
        };
        assert_eq!(
            ImportRequest::try_from(pb::ImportRequest::from(import.clone())),
            Ok(import)
        );

        let create = PfsCreateRequest {
            name: pfs(),
            role: PfsRole::Slave,
            nohistory: true,
            shared_uuid: Some(Uuid::from_bytes([5; 16])),
        };
        assert_eq!(
            PfsCreateRequest::try_from(pb::PfsCreateRequest::from(create.clone())),
            Ok(create)
        );

        let snap = SnapshotCreateRequest {
            pfs: pfs(),
            name: SnapshotName::new("nightly").expect("valid"),
            tid: Some(Tid(77)),
        };
        assert_eq!(
            SnapshotCreateRequest::try_from(pb::SnapshotCreateRequest::from(snap.clone())),
            Ok(snap)
        );
    }

    #[test]
    fn import_file_data_longer_than_size_is_rejected() {
        let op = pb::ImportOp::from(ImportOp::File {
            path: path("f"),
            attrs: Attrs {
                mode: 0o644,
                mtime_ns: 0,
            },
            size: 2,
            data: Bytes::from_static(b"abc"),
        });
        let err = ImportOp::try_from(op).expect_err("3 bytes for a 2-byte file");
        assert!(err.to_string().contains("`f`"), "{err}");
    }

    #[test]
    fn results_round_trip() {
        let info = PfsInfo {
            name: pfs(),
            role: PfsRole::Master,
            nohistory: false,
            shared_uuid: Uuid::from_bytes([9; 16]),
            head_tid: None,
            created_tid: Tid(3),
            retention: "7d,1h:14d".parse().expect("policy"),
        };
        assert_eq!(
            PfsInfo::try_from(pb::PfsInfo::from(info.clone())),
            Ok(info.clone())
        );

        let status = PfsStatus {
            pfs: info,
            files: 1,
            dirs: 2,
            symlinks: 3,
            logical_bytes: 4,
            versions: 5,
            snapshots: 6,
            oldest_tid: Some(Tid(1)),
            pruned: vec![(Tid(1), Tid(2)), (Tid(5), Tid(9))],
            used_bytes: 7,
            device_used_bytes: 8,
            device_reclaimable_bytes: 9,
            device_free_bytes: 10,
        };
        assert_eq!(
            PfsStatus::try_from(pb::PfsStatusResponse::from(status.clone())),
            Ok(status)
        );

        let progress = ImportProgress {
            tid: Some(Tid(10)),
            txn: ImportCounts {
                files: 1,
                dirs: 0,
                symlinks: 0,
                deletes: 0,
                bytes: 9,
            },
            total: ImportCounts {
                files: 5,
                dirs: 1,
                symlinks: 1,
                deletes: 0,
                bytes: 90,
            },
            last_path: Some(path("a/b")),
            done: false,
        };
        assert_eq!(
            ImportProgress::try_from(pb::ImportResponse::from(progress.clone())),
            Ok(progress)
        );

        let node = NodeInfo {
            node_name: "node1".into(),
            version: "0.1.0".into(),
            devices: vec![DeviceInfo {
                path: "/var/lib/repld/dev0.img".into(),
                volume_uuid: Uuid::from_bytes([1; 16]),
                size_bytes: 100,
                used_bytes: 40,
                free_bytes: 60,
            }],
            uptime: Duration::from_secs(12),
        };
        assert_eq!(
            NodeInfo::try_from(pb::NodeInfoResponse::from(node.clone())),
            Ok(node)
        );

        let put = PutResult {
            tid: Tid(1),
            size: 2,
            content_hash: [3; 32],
        };
        assert_eq!(PutResult::try_from(pb::PutResponse::from(put)), Ok(put));
    }

    #[test]
    fn entry_serializes_hash_as_hex() {
        let json = serde_json::to_value(entry()).expect("serializable");
        assert_eq!(json["path"], "dir/file.txt");
        assert_eq!(json["kind"], "file");
        assert_eq!(json["content_hash"], "07".repeat(32));
    }
}
