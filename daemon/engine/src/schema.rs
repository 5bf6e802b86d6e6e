//! The index's keyspaces, value encodings and typed lookups.
//!
//! Every key starts with one byte naming its keyspace:
//!
//! | space | key                                              | value                  |
//! |-------|--------------------------------------------------|------------------------|
//! | `M`   | name                                             | engine metadata        |
//! | `P`   | pfs id (u32 BE)                                  | [`PfsRecord`]          |
//! | `N`   | pfs name                                         | pfs id                 |
//! | `V`   | pfs id, parent path, 0, name, 0, create TID (BE) | [`VersionVal`]         |
//! | `T`   | pfs id, TID (BE)                                 | LSN of the commit      |
//! | `L`   | pfs id, TID (BE)                                 | history chain link     |
//! | `C`   | BLAKE3 hash                                      | [`ChunkLoc`]           |
//! | `S`   | pfs id, snapshot name                            | TID                    |
//!
//! Paths never contain NUL, so the `V` keys of one directory's children are contiguous, and the
//! versions of one path are contiguous and ordered by TID.

use repl_types::{EntryPath, Retention, Tid};

use crate::codec::{Dec, DecodeError, Enc};
use crate::error::{Error, Result};
use crate::index::KvRead;
use crate::log::LogPos;
use crate::prune::TidRange;
use crate::record::{EntryMeta, Hash, Partial, Role};

/// The log position the index covers.
pub(crate) const COVERED: &[u8] = b"Mcovered";
/// The volume the index belongs to.
pub(crate) const VOLUME: &[u8] = b"Mvolume";
/// The next PFS id to hand out.
pub(crate) const NEXT_PFS: &[u8] = b"Mnext_pfs";
/// The layout of the index's keyspaces. An index written by a build with another layout (or
/// none: before the `L` keyspace) is rebuilt from the device at open.
pub(crate) const LAYOUT: &[u8] = b"Mlayout";
/// The current [`LAYOUT`].
pub(crate) const LAYOUT_VERSION: u32 = 3;

pub(crate) fn encode_pos(p: LogPos) -> Vec<u8> {
    let mut e = Enc::new();
    e.u64(p.lsn).u64(p.prev_seq);
    e.finish()
}

pub(crate) fn decode_pos(v: &[u8]) -> Result<LogPos, DecodeError> {
    let mut d = Dec::new(v);
    Ok(LogPos {
        lsn: d.u64()?,
        prev_seq: d.u64()?,
    })
}

pub(crate) fn pfs_key(id: u32) -> Vec<u8> {
    let mut k = vec![b'P'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(crate) fn name_key(name: &str) -> Vec<u8> {
    let mut k = vec![b'N'];
    k.extend_from_slice(name.as_bytes());
    k
}

fn space_pfs(space: u8, pfs: u32) -> Vec<u8> {
    let mut k = vec![space];
    k.extend_from_slice(&pfs.to_be_bytes());
    k
}

/// `[start, end)` of every key of one PFS in one keyspace.
pub(crate) fn pfs_space_range(space: u8, pfs: u32) -> (Vec<u8>, Vec<u8>) {
    (
        space_pfs(space, pfs),
        space_pfs(space, pfs).into_iter().chain([0xFF; 2]).collect(),
    )
}

/// The prefix shared by every version of `path`.
pub(crate) fn version_prefix(pfs: u32, path: &EntryPath) -> Vec<u8> {
    let parent = path.parent().unwrap_or_default();
    let mut k = space_pfs(b'V', pfs);
    k.extend_from_slice(parent.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(path.name().as_bytes());
    k.push(0);
    k
}

pub(crate) fn version_key(pfs: u32, path: &EntryPath, created: Tid) -> Vec<u8> {
    let mut k = version_prefix(pfs, path);
    k.extend_from_slice(&created.get().to_be_bytes());
    k
}

/// The create TID at the end of a `V` key (see [`version_key`]).
pub(crate) fn version_created(key: &[u8]) -> Result<Tid> {
    let tail = key
        .len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .ok_or_else(|| Error::Index("short version key".into()))?;
    Ok(Tid(u64::from_be_bytes(
        tail.try_into().expect("an 8-byte slice"),
    )))
}

/// `[start, end)` of the versions of every child of `dir`.
pub(crate) fn children_range(pfs: u32, dir: &EntryPath) -> (Vec<u8>, Vec<u8>) {
    let mut start = space_pfs(b'V', pfs);
    start.extend_from_slice(dir.as_str().as_bytes());
    start.push(0);
    let mut end = start.clone();
    *end.last_mut().expect("non-empty") = 1;
    (start, end)
}

/// Splits a `V` key of a child of `dir` into its name and create TID.
fn split_child_key(key: &[u8], prefix_len: usize) -> Result<(&str, Tid), DecodeError> {
    let rest = key
        .get(prefix_len..)
        .ok_or(DecodeError("short version key"))?;
    if rest.len() < 10 {
        return Err(DecodeError("short version key"));
    }
    let (name, tail) = rest.split_at(rest.len() - 9);
    let name = std::str::from_utf8(name).map_err(|_| DecodeError("version key name"))?;
    let tid = u64::from_be_bytes(
        tail[1..]
            .try_into()
            .map_err(|_| DecodeError("version key tid"))?,
    );
    Ok((name, Tid(tid)))
}

pub(crate) fn tid_key(pfs: u32, tid: Tid) -> Vec<u8> {
    let mut k = space_pfs(b'T', pfs);
    k.extend_from_slice(&tid.get().to_be_bytes());
    k
}

pub(crate) fn link_key(pfs: u32, tid: Tid) -> Vec<u8> {
    let mut k = space_pfs(b'L', pfs);
    k.extend_from_slice(&tid.get().to_be_bytes());
    k
}

fn tid_of_key(k: &[u8]) -> Result<Tid, DecodeError> {
    Ok(Tid(u64::from_be_bytes(
        k.get(5..13)
            .and_then(|b| b.try_into().ok())
            .ok_or(DecodeError("tid key"))?,
    )))
}

fn decode_link(v: &[u8]) -> Result<Hash, DecodeError> {
    v.try_into().map_err(|_| DecodeError("chain link"))
}

/// The newest commit of `pfs` at or before `at` and its chain link: the hash of the PFS's whole
/// history up to `at`. `(Tid::ZERO, [0; 32])` when no commit is that old (the empty history).
pub(crate) fn link_at(kv: &dyn KvRead, pfs: u32, at: Tid) -> Result<(Tid, Hash)> {
    let (start, _) = pfs_space_range(b'L', pfs);
    let mut end = link_key(pfs, at);
    end.push(0);
    match kv.last(&start, &end)? {
        Some((k, v)) => Ok((tid_of_key(&k)?, decode_link(&v)?)),
        None => Ok((Tid::ZERO, [0; 32])),
    }
}

/// Commits of `pfs` with TIDs in `(after, before)` and their links, newest first, at most
/// `limit`.
pub(crate) fn links_between(
    kv: &dyn KvRead,
    pfs: u32,
    after: Tid,
    before: Tid,
    limit: usize,
) -> Result<Vec<(Tid, Hash)>> {
    let (start, _) = pfs_space_range(b'L', pfs);
    let mut end = link_key(pfs, before);
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((k, v)) = kv.last(&start, &end)? else {
            break;
        };
        let tid = tid_of_key(&k)?;
        if tid <= after {
            break;
        }
        out.push((tid, decode_link(&v)?));
        end = k;
    }
    Ok(out)
}

pub(crate) fn chunk_key(hash: &Hash) -> Vec<u8> {
    let mut k = vec![b'C'];
    k.extend_from_slice(hash);
    k
}

pub(crate) fn snapshot_key(pfs: u32, name: &str) -> Vec<u8> {
    let mut k = space_pfs(b'S', pfs);
    k.extend_from_slice(name.as_bytes());
    k
}

/// One version of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VersionVal {
    pub meta: EntryMeta,
    /// The TID that ended this version; [`Tid::MAX`] while it is live.
    pub deleted: Tid,
}

impl VersionVal {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u64(self.deleted.get());
        self.meta.encode(&mut e);
        e.finish()
    }
    pub fn decode(v: &[u8]) -> Result<VersionVal, DecodeError> {
        let mut d = Dec::new(v);
        let deleted = Tid(d.u64()?);
        let meta = EntryMeta::decode(&mut d)?;
        Ok(VersionVal { meta, deleted })
    }
    /// Whether the version is live at `tid` (a live version, deleted at [`Tid::MAX`], is
    /// visible even at `Tid::MAX`, which lookups use to mean "the head").
    pub fn visible_at(&self, tid: Tid) -> bool {
        self.deleted > tid || self.deleted == Tid::MAX
    }
}

/// Where a chunk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkLoc {
    pub lsn: u64,
    pub len: u32,
}

impl ChunkLoc {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u64(self.lsn).u32(self.len);
        e.finish()
    }
    pub fn decode(v: &[u8]) -> Result<ChunkLoc, DecodeError> {
        let mut d = Dec::new(v);
        Ok(ChunkLoc {
            lsn: d.u64()?,
            len: d.u32()?,
        })
    }
}

/// A PFS as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PfsRecord {
    pub id: u32,
    pub name: String,
    pub uuid: [u8; 16],
    pub shared_uuid: [u8; 16],
    pub role: Role,
    pub nohistory: bool,
    pub created: Tid,
    /// The newest committed TID (for a slave: the synced TID).
    pub head: Tid,
    pub head_chain: Hash,
    /// Reads before this TID are refused as pruned.
    pub history_floor: Tid,
    /// A slave's progress inside a TID it has only partly received.
    pub partial: Option<Partial>,
    /// The master's head as last reported to this slave.
    pub master_head: Tid,
    /// How much history the PFS keeps.
    pub retention: Retention,
    /// TID ranges `[from, to)` a prune made unreadable, sorted and disjoint.
    pub pruned: Vec<TidRange>,
    /// LSN of the PFS's newest checkpoint record (0: none), the one space reclaim keeps.
    pub checkpoint_lsn: u64,
}

impl PfsRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(self.id)
            .str(&self.name)
            .raw(&self.uuid)
            .raw(&self.shared_uuid);
        e.u8(match self.role {
            Role::Master => 1,
            Role::Slave => 2,
        });
        e.u8(u8::from(self.nohistory))
            .u64(self.created.get())
            .u64(self.head.get())
            .raw(&self.head_chain);
        e.u64(self.history_floor.get()).u64(self.master_head.get());
        match self.partial {
            Some(p) => e.u8(1).u64(p.tid.get()).u64(p.chunks_done),
            None => e.u8(0),
        };
        e.str(&self.retention.to_string());
        e.u32(u32::try_from(self.pruned.len()).expect("bounded by MAX_RANGES"));
        for (a, b) in &self.pruned {
            e.u64(a.get()).u64(b.get());
        }
        e.u64(self.checkpoint_lsn);
        e.finish()
    }
    pub fn decode(v: &[u8]) -> Result<PfsRecord, DecodeError> {
        let mut d = Dec::new(v);
        let mut p = PfsRecord {
            id: d.u32()?,
            name: d.string()?,
            uuid: d.uuid()?,
            shared_uuid: d.uuid()?,
            role: match d.u8()? {
                1 => Role::Master,
                2 => Role::Slave,
                _ => return Err(DecodeError("role")),
            },
            nohistory: d.u8()? != 0,
            created: Tid(d.u64()?),
            head: Tid(d.u64()?),
            head_chain: d.hash()?,
            history_floor: Tid(d.u64()?),
            master_head: Tid(d.u64()?),
            partial: match d.u8()? {
                0 => None,
                _ => Some(Partial {
                    tid: Tid(d.u64()?),
                    chunks_done: d.u64()?,
                }),
            },
            retention: Retention::Forever,
            pruned: Vec::new(),
            checkpoint_lsn: 0,
        };
        // An index written before retention existed has neither field.
        if !d.rest().is_empty() {
            p.retention = decode_retention(&d.string()?)?;
            let n = d.count(16)?;
            for _ in 0..n {
                p.pruned.push((Tid(d.u64()?), Tid(d.u64()?)));
            }
        }
        if !d.rest().is_empty() {
            p.checkpoint_lsn = d.u64()?;
        }
        Ok(p)
    }

    /// The pruned range holding `tid`, if any.
    pub fn pruned_at(&self, tid: Tid) -> Option<TidRange> {
        let i = self.pruned.partition_point(|(_, to)| *to <= tid);
        self.pruned.get(i).copied().filter(|(from, _)| *from <= tid)
    }
}

/// A retention policy as the log and the index store it (its text form).
pub(crate) fn decode_retention(s: &str) -> Result<Retention, DecodeError> {
    s.parse().map_err(|_| DecodeError("retention policy"))
}

pub(crate) fn pfs_by_id(kv: &dyn KvRead, id: u32) -> Result<Option<PfsRecord>> {
    Ok(kv
        .get(&pfs_key(id))?
        .map(|v| PfsRecord::decode(&v))
        .transpose()?)
}

pub(crate) fn pfs_by_name(kv: &dyn KvRead, name: &str) -> Result<Option<PfsRecord>> {
    let Some(id) = kv.get(&name_key(name))? else {
        return Ok(None);
    };
    let id = u32::from_be_bytes(
        id.as_slice()
            .try_into()
            .map_err(|_| DecodeError("pfs id"))?,
    );
    pfs_by_id(kv, id)
}

pub(crate) fn all_pfs(kv: &dyn KvRead) -> Result<Vec<PfsRecord>> {
    kv.range(b"P", b"Q", usize::MAX)?
        .into_iter()
        .map(|(_, v)| PfsRecord::decode(&v).map_err(Into::into))
        .collect()
}

/// The version of `path` visible at `at`, with its create TID.
pub(crate) fn version_at(
    kv: &dyn KvRead,
    pfs: u32,
    path: &EntryPath,
    at: Tid,
) -> Result<Option<(Tid, VersionVal)>> {
    let prefix = version_prefix(pfs, path);
    let mut end = version_key(pfs, path, at);
    end.push(0);
    let Some((k, v)) = kv.last(&prefix, &end)? else {
        return Ok(None);
    };
    let created = Tid(u64::from_be_bytes(
        k[k.len() - 8..]
            .try_into()
            .map_err(|_| DecodeError("version key"))?,
    ));
    let v = VersionVal::decode(&v)?;
    Ok(v.visible_at(at).then_some((created, v)))
}

/// Every version of `path`, oldest first.
pub(crate) fn versions(
    kv: &dyn KvRead,
    pfs: u32,
    path: &EntryPath,
) -> Result<Vec<(Tid, VersionVal)>> {
    let prefix = version_prefix(pfs, path);
    let mut end = prefix.clone();
    end.extend_from_slice(&[0xFF; 9]);
    kv.range(&prefix, &end, usize::MAX)?
        .into_iter()
        .map(|(k, v)| {
            let created = Tid(u64::from_be_bytes(
                k[k.len() - 8..]
                    .try_into()
                    .map_err(|_| DecodeError("version key"))?,
            ));
            Ok((created, VersionVal::decode(&v)?))
        })
        .collect()
}

/// The children of `dir` visible at `at`, sorted by name, with their create TIDs.
pub(crate) fn children_at(
    kv: &dyn KvRead,
    pfs: u32,
    dir: &EntryPath,
    at: Tid,
) -> Result<Vec<(String, Tid, VersionVal)>> {
    let (start, end) = children_range(pfs, dir);
    let mut out: Vec<(String, Tid, VersionVal)> = Vec::new();
    for (k, v) in kv.range(&start, &end, usize::MAX)? {
        let (name, created) = split_child_key(&k, start.len())?;
        if created > at {
            continue;
        }
        let val = VersionVal::decode(&v)?;
        // Versions of one name arrive oldest first: a later visible one replaces an earlier.
        let same = out.last().is_some_and(|(n, _, _)| n == name);
        if same {
            out.pop();
        }
        if val.visible_at(at) {
            out.push((name.to_owned(), created, val));
        } else if same {
            // The older version was replaced by one that is not visible: nothing is visible.
        }
    }
    Ok(out)
}

pub(crate) fn chunk_loc(kv: &dyn KvRead, hash: &Hash) -> Result<Option<ChunkLoc>> {
    Ok(kv
        .get(&chunk_key(hash))?
        .map(|v| ChunkLoc::decode(&v))
        .transpose()?)
}

pub(crate) fn snapshot(kv: &dyn KvRead, pfs: u32, name: &str) -> Result<Option<Tid>> {
    Ok(kv
        .get(&snapshot_key(pfs, name))?
        .map(|v| decode_tid(&v))
        .transpose()?)
}

pub(crate) fn snapshots(kv: &dyn KvRead, pfs: u32) -> Result<Vec<(String, Tid)>> {
    let (start, end) = pfs_space_range(b'S', pfs);
    kv.range(&start, &end, usize::MAX)?
        .into_iter()
        .map(|(k, v)| {
            let name =
                String::from_utf8(k[5..].to_vec()).map_err(|_| DecodeError("snapshot name"))?;
            Ok((name, decode_tid(&v)?))
        })
        .collect()
}

pub(crate) fn decode_tid(v: &[u8]) -> Result<Tid, DecodeError> {
    Ok(Tid(u64::from_le_bytes(
        v.try_into().map_err(|_| DecodeError("tid"))?,
    )))
}

/// Commit LSNs of `pfs` with TIDs in `(after, ..]`, at most `limit`, oldest first.
pub(crate) fn commits_after(
    kv: &dyn KvRead,
    pfs: u32,
    after: Tid,
    limit: usize,
) -> Result<Vec<(Tid, u64)>> {
    let start = tid_key(pfs, after.next());
    let (_, end) = pfs_space_range(b'T', pfs);
    if after == Tid::MAX {
        return Ok(Vec::new());
    }
    kv.range(&start, &end, limit)?
        .into_iter()
        .map(|(k, v)| {
            let tid = Tid(u64::from_be_bytes(
                k[5..13].try_into().map_err(|_| DecodeError("tid key"))?,
            ));
            let lsn = u64::from_le_bytes(v.as_slice().try_into().map_err(|_| DecodeError("lsn"))?);
            Ok((tid, lsn))
        })
        .collect()
}
