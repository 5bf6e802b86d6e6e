//! Log records: what the engine appends to the device, and what replication carries.
//!
//! A record on disk is a 12-byte header, then its payload:
//!
//! ```text
//! crc32c u32 | kind u8 | flags u8 | reserved u16 | payload length u32 | payload
//! ```
//!
//! The CRC covers everything after itself. Records do not know their own position: the flush
//! unit that holds them does (see `log.rs`), so a record is position-independent and can be
//! encoded by the thread that produces it.
//!
//! A record that space reclaim copied to the head of the log carries [`FLAG_RELOCATED`] in its
//! flags, and its payload starts with a prefix: the LSN of the first write of the record
//! (`orig_lsn u64`), then `count u32` and that many op indexes `u32` (for a commit: the puts
//! whose versions no longer existed when it was copied, which an index rebuild does not create),
//! then the original payload. [`parse_frame`] strips the prefix: every other parser sees the
//! original payload, and [`Framed::orig_lsn`] says where the record logically belongs.

use repl_types::{EntryPath, Tid};

use crate::codec::{Dec, DecodeError, Enc};

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// The largest chunk of file data; files are cut at fixed multiples of it, so the same bytes
/// always give the same chunks (and the same content hash) on every node.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Bytes in a record header.
pub(crate) const RECORD_HEADER: usize = 12;

/// The payload length in a record's header; `record` holds at least the header.
pub(crate) fn payload_len(record: &[u8]) -> usize {
    let header = &record[..RECORD_HEADER];
    u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize
}

pub use repl_types::EntryKind;

fn kind_code(k: EntryKind) -> u8 {
    match k {
        EntryKind::File => 1,
        EntryKind::Dir => 2,
        EntryKind::Symlink => 3,
    }
}

fn kind_from_code(c: u8) -> Result<EntryKind, DecodeError> {
    Ok(match c {
        1 => EntryKind::File,
        2 => EntryKind::Dir,
        3 => EntryKind::Symlink,
        _ => return Err(DecodeError("unknown entry kind")),
    })
}

/// A reference to a chunk of file data, by content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub hash: Hash,
    /// The chunk's length in bytes.
    pub len: u32,
}

/// The content of one version of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Size in bytes: the file length, the symlink target length, 0 for a directory.
    pub size: u64,
    /// The target of a symlink; empty otherwise.
    pub target: String,
    /// The chunks of a file, in order; empty otherwise.
    pub chunks: Vec<ChunkRef>,
}

impl EntryMeta {
    /// The content hash of the entry: for a file, BLAKE3 over its chunk hashes and lengths
    /// (no data is re-read); for a symlink, of its target; for a directory, of nothing.
    pub fn content_hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        match self.kind {
            EntryKind::File => {
                for c in &self.chunks {
                    h.update(&c.hash);
                    h.update(&c.len.to_le_bytes());
                }
            }
            EntryKind::Symlink => {
                h.update(self.target.as_bytes());
            }
            EntryKind::Dir => {}
        }
        *h.finalize().as_bytes()
    }

    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u8(kind_code(self.kind))
            .u32(self.mode)
            .i64(self.mtime_ns)
            .u64(self.size)
            .str(&self.target);
        e.u32(u32::try_from(self.chunks.len()).expect("chunk count is bounded by the size limit"));
        for c in &self.chunks {
            e.raw(&c.hash).u32(c.len);
        }
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<EntryMeta, DecodeError> {
        let kind = kind_from_code(d.u8()?)?;
        let mode = d.u32()?;
        let mtime_ns = d.i64()?;
        let size = d.u64()?;
        let target = d.string()?;
        let n = d.count(36)?;
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(ChunkRef {
                hash: d.hash()?,
                len: d.u32()?,
            });
        }
        Ok(EntryMeta {
            kind,
            mode,
            mtime_ns,
            size,
            target,
            chunks,
        })
    }
}

/// One change to one path within a commit. A commit holds at most one op per path: the net
/// effect of its transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new version of `path`, replacing the live version created at `supersedes`, if any.
    Put {
        /// The path.
        path: EntryPath,
        /// The new version's content.
        meta: EntryMeta,
        /// Create TID of the version this one replaces.
        supersedes: Option<Tid>,
    },
    /// `path` ends: the live version created at `supersedes` is deleted.
    Delete {
        /// The path.
        path: EntryPath,
        /// Create TID of the version deleted.
        supersedes: Tid,
    },
}

impl Op {
    /// The path the op changes.
    pub fn path(&self) -> &EntryPath {
        match self {
            Op::Put { path, .. } | Op::Delete { path, .. } => path,
        }
    }
}

/// A committed transaction: what the change scan yields and what a slave applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its TID.
    pub tid: Tid,
    /// The history chain after this commit: BLAKE3(previous chain ‖ content hash).
    pub chain: Hash,
    /// The ops, sorted by path.
    pub ops: Vec<Op>,
}

impl Change {
    /// The hash of the change's TID and ops: what the chain links.
    pub fn content_hash(tid: Tid, ops: &[Op]) -> Hash {
        let mut e = Enc::new();
        e.u64(tid.get());
        encode_ops(&mut e, ops);
        *blake3::hash(&e.0).as_bytes()
    }

    /// The chain link that follows `prev` for a commit at `tid` with `ops`.
    pub fn next_chain(prev: &Hash, tid: Tid, ops: &[Op]) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(prev);
        h.update(&Change::content_hash(tid, ops));
        *h.finalize().as_bytes()
    }

    /// The chunks the change references, in order (with repeats).
    pub fn chunk_refs(&self) -> impl Iterator<Item = &ChunkRef> {
        self.ops.iter().flat_map(|op| match op {
            Op::Put { meta, .. } => meta.chunks.as_slice(),
            Op::Delete { .. } => &[],
        })
    }
}

impl Change {
    /// The change as the replication stream carries it: TID, chain and ops, encoded as in a
    /// commit record but without the PFS id, which is local to each node. Integrity on the wire
    /// comes from the stream's checksums; [`Change::decode`] checks only the structure, and the
    /// slave's apply checks the history chain.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u64(self.tid.get()).raw(&self.chain);
        encode_ops(&mut e, &self.ops);
        e.finish()
    }

    /// Decodes [`Change::encode`]'s output; refuses trailing bytes and invalid paths.
    pub fn decode(buf: &[u8]) -> Result<Change, DecodeError> {
        let mut d = Dec::new(buf);
        let tid = Tid(d.u64()?);
        let chain = d.hash()?;
        let ops = decode_ops(&mut d)?;
        d.end()?;
        Ok(Change { tid, chain, ops })
    }
}

fn encode_ops(e: &mut Enc, ops: &[Op]) {
    e.u32(u32::try_from(ops.len()).expect("op count is bounded by the commit size limit"));
    for op in ops {
        match op {
            Op::Put {
                path,
                meta,
                supersedes,
            } => {
                e.u8(1)
                    .str(path.as_str())
                    .u64(supersedes.map_or(0, Tid::get));
                meta.encode(e);
            }
            Op::Delete { path, supersedes } => {
                e.u8(2).str(path.as_str()).u64(supersedes.get());
            }
        }
    }
}

fn decode_ops(d: &mut Dec<'_>) -> Result<Vec<Op>, DecodeError> {
    let n = d.count(13)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let tag = d.u8()?;
        let path = EntryPath::new(d.string()?).map_err(|_| DecodeError("invalid path"))?;
        let sup = d.u64()?;
        ops.push(match tag {
            1 => Op::Put {
                path,
                supersedes: (sup != 0).then_some(Tid(sup)),
                meta: EntryMeta::decode(d)?,
            },
            2 => Op::Delete {
                path,
                supersedes: Tid(sup),
            },
            _ => return Err(DecodeError("unknown op")),
        });
    }
    Ok(ops)
}

pub use repl_types::Role;

/// Where a slave stands inside a TID it has only partly received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    /// The TID being received.
    pub tid: Tid,
    /// How many of its chunk references have arrived durably (in the order of
    /// [`Change::chunk_refs`]).
    pub chunks_done: u64,
}

/// A change to the PFS catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PfsEvent {
    Create {
        id: u32,
        name: String,
        uuid: [u8; 16],
        shared_uuid: [u8; 16],
        role: Role,
        nohistory: bool,
        created: Tid,
    },
    Configure {
        id: u32,
        role: Role,
        nohistory: bool,
    },
    Destroy {
        id: u32,
    },
    Snapshot {
        id: u32,
        name: String,
        tid: Tid,
    },
    SnapshotDelete {
        id: u32,
        name: String,
    },
    /// The PFS's retention policy changed.
    Retention {
        id: u32,
        policy: repl_types::Retention,
    },
    /// A prune made these TID ranges unreadable (see `prune.rs`).
    Prune {
        id: u32,
        ranges: Vec<crate::prune::TidRange>,
    },
    /// Discards every commit after `to`, whose chain link is `chain` (`replctl pair
    /// --rollback` on a diverged target).
    Rollback {
        id: u32,
        to: Tid,
        chain: Hash,
    },
}

/// A record as the engine uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// File data. Only the hash is decoded when scanning; the data stays on the device.
    Chunk {
        hash: Hash,
        len: u32,
    },
    Commit {
        pfs: u32,
        change: Change,
    },
    Pfs(PfsEvent),
    Checkpoint {
        pfs: u32,
        synced: Tid,
        partial: Option<Partial>,
        master_head: Tid,
    },
    /// Space reclaim freed the segment holding LSNs `[from, to)`: the chunk entries that still
    /// point there for these hashes go (their chunks were dead), and so do the chain links of
    /// these commits when they have no by-TID entry (pruned commits that were not copied), and
    /// so do these versions.
    Reclaim {
        from: u64,
        to: u64,
        chunks: Vec<Hash>,
        links: Vec<(u32, Tid)>,
        /// Versions (pfs, path, create TID) that no longer exist and whose ending commit went
        /// with the segment: a rebuild removes them if a copy made earlier created them.
        versions: Vec<(u32, EntryPath, Tid)>,
    },
}

const KIND_CHUNK: u8 = 1;
/// The kind code of chunk records.
pub(crate) const KIND_CHUNK_CODE: u8 = KIND_CHUNK;
const KIND_COMMIT: u8 = 2;
const KIND_PFS: u8 = 3;
const KIND_CHECKPOINT: u8 = 4;
const KIND_RECLAIM: u8 = 5;

/// Record flag: a copy made by space reclaim; the payload starts with the original LSN.
pub(crate) const FLAG_RELOCATED: u8 = 0x01;

/// A relocated copy of a record: `kind` and `payload` as [`parse_frame`] returned them (the
/// original payload), the LSN of the record's first write, and the ops whose versions a rebuild
/// does not create.
pub(crate) fn frame_relocated(kind: u8, orig_lsn: u64, skip: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut buf = frame(kind, 12 + 4 * skip.len() + payload.len(), |b| {
        b.extend_from_slice(&orig_lsn.to_le_bytes());
        b.extend_from_slice(
            &u32::try_from(skip.len())
                .expect("ops are bounded")
                .to_le_bytes(),
        );
        for i in skip {
            b.extend_from_slice(&i.to_le_bytes());
        }
        b.extend_from_slice(payload);
    });
    buf[5] = FLAG_RELOCATED;
    let crc = crc32c::crc32c(&buf[4..]);
    buf[..4].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn role_code(r: Role) -> u8 {
    match r {
        Role::Master => 1,
        Role::Slave => 2,
    }
}

fn role_from(c: u8) -> Result<Role, DecodeError> {
    match c {
        1 => Ok(Role::Master),
        2 => Ok(Role::Slave),
        _ => Err(DecodeError("unknown role")),
    }
}

fn frame(kind: u8, payload_len: usize, write_payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::with_capacity(RECORD_HEADER + payload_len);
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind);
    buf.push(0);
    buf.extend_from_slice(&[0; 2]);
    buf.extend_from_slice(
        &u32::try_from(payload_len)
            .expect("records are bounded")
            .to_le_bytes(),
    );
    write_payload(&mut buf);
    debug_assert_eq!(buf.len(), RECORD_HEADER + payload_len);
    let crc = crc32c::crc32c(&buf[4..]);
    buf[..4].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Where a chunk's data starts in its record: after the header and the hash.
pub(crate) const CHUNK_DATA_OFFSET: usize = RECORD_HEADER + 32;

/// The hash and length of a chunk record this process framed with [`frame_chunk_in_place`],
/// read from its header without checksumming its data again: the writer places thousands of
/// chunks a second and their CRC was computed a moment ago, in memory. Records read from a
/// device or received from a peer go through [`parse_frame`] instead.
pub(crate) fn framed_chunk_ref(buf: &[u8]) -> Result<ChunkRef, &'static str> {
    let Some((head, data)) = buf.split_at_checked(CHUNK_DATA_OFFSET) else {
        return Err("not a framed chunk record");
    };
    chunk_ref_of(head, data.len())
}

/// [`framed_chunk_ref`] of a record whose header and hash are `head` and whose data, elsewhere,
/// is `data_len` bytes.
fn chunk_ref_of(head: &[u8], data_len: usize) -> Result<ChunkRef, &'static str> {
    if head.len() != CHUNK_DATA_OFFSET || head[4] != KIND_CHUNK || head[5] != 0 {
        return Err("not a framed chunk record");
    }
    if payload_len(head) != 32 + data_len {
        return Err("a chunk record's length does not match its data");
    }
    let hash: Hash = head[RECORD_HEADER..]
        .try_into()
        .expect("the head is checked to end with a hash");
    let len = u32::try_from(data_len).map_err(|_| "chunk too large")?;
    Ok(ChunkRef { hash, len })
}

/// The bytes of a chunk record before its data, at most: the header, the 12 bytes a copy made
/// by space reclaim adds (its original LSN and an empty op list), and the hash.
pub(crate) const CHUNK_PREFIX_MAX: usize = CHUNK_DATA_OFFSET + 12;

/// Where the data of the chunk record that `prefix` (its first [`CHUNK_PREFIX_MAX`] bytes)
/// begins: after the header and hash, and in a copy made by space reclaim, after its original
/// LSN and empty op list too. Checks the kind and the flags; the checksum needs the data.
pub(crate) fn chunk_data_offset(prefix: &[u8; CHUNK_PREFIX_MAX]) -> Result<usize, &'static str> {
    if prefix[4] != KIND_CHUNK {
        return Err("not a chunk record");
    }
    match prefix[5] {
        0 => Ok(CHUNK_DATA_OFFSET),
        FLAG_RELOCATED if prefix[RECORD_HEADER + 8..RECORD_HEADER + 12] == [0; 4] => {
            Ok(CHUNK_PREFIX_MAX)
        }
        FLAG_RELOCATED => Err("a relocated chunk record with an op list"),
        _ => Err("unknown record flags"),
    }
}

/// A chunk record ready for the log.
#[derive(Debug)]
pub(crate) enum FramedChunk {
    /// The whole record in one buffer: a chunk read, hashed and framed on this node.
    Whole(Vec<u8>),
    /// A chunk received by a slave: the record's header and hash, and its data as it arrived,
    /// shared with the batch it came in rather than copied (the writer writes both parts).
    Split { head: Vec<u8>, data: bytes::Bytes },
}

impl FramedChunk {
    /// Frames received chunk `data`: hashes it and checksums the record around it, without
    /// copying it.
    pub fn received(data: bytes::Bytes) -> (ChunkRef, FramedChunk) {
        let hash = *blake3::hash(&data).as_bytes();
        let len = u32::try_from(data.len()).expect("chunks are at most CHUNK_SIZE");
        let mut head = vec![0u8; CHUNK_DATA_OFFSET];
        head[4] = KIND_CHUNK;
        head[8..12].copy_from_slice(&(32 + len).to_le_bytes());
        head[RECORD_HEADER..].copy_from_slice(&hash);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head[4..]), &data);
        head[..4].copy_from_slice(&crc.to_le_bytes());
        (ChunkRef { hash, len }, FramedChunk::Split { head, data })
    }

    /// The chunk the record holds, from its header; checks that the header frames the data.
    pub fn chunk_ref(&self) -> Result<ChunkRef, &'static str> {
        match self {
            FramedChunk::Whole(buf) => framed_chunk_ref(buf),
            FramedChunk::Split { head, data } => chunk_ref_of(head, data.len()),
        }
    }

    /// The record's length in the log.
    pub fn len(&self) -> usize {
        match self {
            FramedChunk::Whole(buf) => buf.len(),
            FramedChunk::Split { head, data } => head.len() + data.len(),
        }
    }
}

/// Frames a chunk record in place: `buf` holds the data at [`CHUNK_DATA_OFFSET`] (the bytes
/// before it are overwritten) and is cut to `data_len` bytes of data. Saves the copy of
/// a separate encoding for data that can be read straight into its record.
pub(crate) fn frame_chunk_in_place(mut buf: Vec<u8>, data_len: usize) -> (ChunkRef, Vec<u8>) {
    buf.truncate(CHUNK_DATA_OFFSET + data_len);
    let hash = *blake3::hash(&buf[CHUNK_DATA_OFFSET..]).as_bytes();
    buf[4] = KIND_CHUNK;
    buf[5..8].fill(0);
    let payload = u32::try_from(32 + data_len).expect("chunks are at most CHUNK_SIZE");
    buf[8..12].copy_from_slice(&payload.to_le_bytes());
    buf[RECORD_HEADER..CHUNK_DATA_OFFSET].copy_from_slice(&hash);
    let crc = crc32c::crc32c(&buf[4..]);
    buf[..4].copy_from_slice(&crc.to_le_bytes());
    let len = u32::try_from(data_len).expect("chunks are at most CHUNK_SIZE");
    (ChunkRef { hash, len }, buf)
}

/// Encodes a chunk record from its data (hashing it) the straightforward way: the reference
/// that [`frame_chunk_in_place`], which every writer of chunks uses, is tested against.
#[cfg(test)]
pub(crate) fn encode_chunk(data: &[u8]) -> (ChunkRef, Vec<u8>) {
    let hash = *blake3::hash(data).as_bytes();
    let len = u32::try_from(data.len()).expect("chunks are at most CHUNK_SIZE");
    let buf = frame(KIND_CHUNK, 32 + data.len(), |b| {
        b.extend_from_slice(&hash);
        b.extend_from_slice(data);
    });
    (ChunkRef { hash, len }, buf)
}

impl Record {
    /// Encodes a record other than a chunk (chunks are framed by [`frame_chunk_in_place`]).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        let kind = match self {
            Record::Chunk { .. } => {
                unreachable!("chunk records are framed with their data by frame_chunk_in_place")
            }
            Record::Commit { pfs, change } => {
                e.u32(*pfs).u64(change.tid.get()).raw(&change.chain);
                encode_ops(&mut e, &change.ops);
                KIND_COMMIT
            }
            Record::Pfs(ev) => {
                match ev {
                    PfsEvent::Create {
                        id,
                        name,
                        uuid,
                        shared_uuid,
                        role,
                        nohistory,
                        created,
                    } => {
                        e.u8(1).u32(*id).str(name).raw(uuid).raw(shared_uuid);
                        e.u8(role_code(*role))
                            .u8(u8::from(*nohistory))
                            .u64(created.get());
                    }
                    PfsEvent::Configure {
                        id,
                        role,
                        nohistory,
                    } => {
                        e.u8(2)
                            .u32(*id)
                            .u8(role_code(*role))
                            .u8(u8::from(*nohistory));
                    }
                    PfsEvent::Destroy { id } => {
                        e.u8(3).u32(*id);
                    }
                    PfsEvent::Snapshot { id, name, tid } => {
                        e.u8(4).u32(*id).str(name).u64(tid.get());
                    }
                    PfsEvent::SnapshotDelete { id, name } => {
                        e.u8(5).u32(*id).str(name);
                    }
                    PfsEvent::Retention { id, policy } => {
                        e.u8(6).u32(*id).str(&policy.to_string());
                    }
                    PfsEvent::Prune { id, ranges } => {
                        e.u8(7).u32(*id);
                        e.u32(u32::try_from(ranges.len()).expect("ranges are bounded"));
                        for (a, b) in ranges {
                            e.u64(a.get()).u64(b.get());
                        }
                    }
                    PfsEvent::Rollback { id, to, chain } => {
                        e.u8(8).u32(*id).u64(to.get()).raw(chain);
                    }
                }
                KIND_PFS
            }
            Record::Checkpoint {
                pfs,
                synced,
                partial,
                master_head,
            } => {
                e.u32(*pfs).u64(synced.get()).u64(master_head.get());
                match partial {
                    Some(p) => e.u8(1).u64(p.tid.get()).u64(p.chunks_done),
                    None => e.u8(0),
                };
                KIND_CHECKPOINT
            }
            Record::Reclaim {
                from,
                to,
                chunks,
                links,
                versions,
            } => {
                e.u64(*from).u64(*to);
                e.u32(u32::try_from(chunks.len()).expect("bounded by a segment"));
                for h in chunks {
                    e.raw(h);
                }
                e.u32(u32::try_from(links.len()).expect("bounded by a segment"));
                for (pfs, tid) in links {
                    e.u32(*pfs).u64(tid.get());
                }
                e.u32(u32::try_from(versions.len()).expect("bounded by a segment"));
                for (pfs, path, tid) in versions {
                    e.u32(*pfs).str(path.as_str()).u64(tid.get());
                }
                KIND_RECLAIM
            }
        };
        let payload = e.finish();
        frame(kind, payload.len(), |b| b.extend_from_slice(&payload))
    }

    /// The payload of a record other than a chunk, as [`Record::encode`] frames it.
    #[cfg(test)]
    pub(crate) fn encode_payload(&self) -> Vec<u8> {
        self.encode()[RECORD_HEADER..].to_vec()
    }

    /// Decodes a record's payload, given its kind.
    pub(crate) fn decode(kind: u8, payload: &[u8]) -> Result<Record, DecodeError> {
        let mut d = Dec::new(payload);
        let rec = match kind {
            KIND_CHUNK => {
                let hash = d.hash()?;
                let len =
                    u32::try_from(d.rest().len()).map_err(|_| DecodeError("chunk too large"))?;
                return Ok(Record::Chunk { hash, len });
            }
            KIND_COMMIT => {
                let pfs = d.u32()?;
                let tid = Tid(d.u64()?);
                let chain = d.hash()?;
                let ops = decode_ops(&mut d)?;
                Record::Commit {
                    pfs,
                    change: Change { tid, chain, ops },
                }
            }
            KIND_PFS => Record::Pfs(match d.u8()? {
                1 => PfsEvent::Create {
                    id: d.u32()?,
                    name: d.string()?,
                    uuid: d.uuid()?,
                    shared_uuid: d.uuid()?,
                    role: role_from(d.u8()?)?,
                    nohistory: d.u8()? != 0,
                    created: Tid(d.u64()?),
                },
                2 => PfsEvent::Configure {
                    id: d.u32()?,
                    role: role_from(d.u8()?)?,
                    nohistory: d.u8()? != 0,
                },
                3 => PfsEvent::Destroy { id: d.u32()? },
                4 => PfsEvent::Snapshot {
                    id: d.u32()?,
                    name: d.string()?,
                    tid: Tid(d.u64()?),
                },
                5 => PfsEvent::SnapshotDelete {
                    id: d.u32()?,
                    name: d.string()?,
                },
                6 => PfsEvent::Retention {
                    id: d.u32()?,
                    policy: crate::schema::decode_retention(&d.string()?)?,
                },
                7 => {
                    let id = d.u32()?;
                    let n = d.count(16)?;
                    let mut ranges = Vec::with_capacity(n);
                    for _ in 0..n {
                        ranges.push((Tid(d.u64()?), Tid(d.u64()?)));
                    }
                    PfsEvent::Prune { id, ranges }
                }
                8 => PfsEvent::Rollback {
                    id: d.u32()?,
                    to: Tid(d.u64()?),
                    chain: d.hash()?,
                },
                _ => return Err(DecodeError("unknown PFS event")),
            }),
            KIND_CHECKPOINT => {
                let pfs = d.u32()?;
                let synced = Tid(d.u64()?);
                let master_head = Tid(d.u64()?);
                let partial = match d.u8()? {
                    0 => None,
                    _ => Some(Partial {
                        tid: Tid(d.u64()?),
                        chunks_done: d.u64()?,
                    }),
                };
                Record::Checkpoint {
                    pfs,
                    synced,
                    partial,
                    master_head,
                }
            }
            KIND_RECLAIM => {
                let from = d.u64()?;
                let to = d.u64()?;
                let n = d.count(32)?;
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    chunks.push(d.hash()?);
                }
                let n = d.count(12)?;
                let mut links = Vec::with_capacity(n);
                for _ in 0..n {
                    links.push((d.u32()?, Tid(d.u64()?)));
                }
                let n = d.count(16)?;
                let mut versions = Vec::with_capacity(n);
                for _ in 0..n {
                    let pfs = d.u32()?;
                    let path =
                        EntryPath::new(d.string()?).map_err(|_| DecodeError("invalid path"))?;
                    versions.push((pfs, path, Tid(d.u64()?)));
                }
                Record::Reclaim {
                    from,
                    to,
                    chunks,
                    links,
                    versions,
                }
            }
            _ => return Err(DecodeError("unknown record kind")),
        };
        d.end()?;
        Ok(rec)
    }
}

/// A framed record found in a buffer.
pub(crate) struct Framed<'a> {
    pub kind: u8,
    /// The payload, without the original-LSN prefix of a relocated record.
    pub payload: &'a [u8],
    /// Header plus payload.
    pub total_len: usize,
    /// For a copy made by space reclaim: the LSN of the record's first write.
    pub orig_lsn: Option<u64>,
    /// For a copy of a commit: the indexes of the ops whose versions a rebuild does not create
    /// (4 bytes each, little-endian; see [`Framed::skipped_ops`]).
    pub skip: &'a [u8],
}

impl Framed<'_> {
    /// The ops of a copied commit whose versions a rebuild does not create.
    pub fn skipped_ops(&self) -> Vec<u32> {
        self.skip
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

/// Parses and checksums the record at the start of `buf`.
pub(crate) fn parse_frame(buf: &[u8]) -> Result<Framed<'_>, &'static str> {
    if buf.len() < RECORD_HEADER {
        return Err("record header runs past the unit");
    }
    let len = payload_len(buf);
    let total_len = RECORD_HEADER + len;
    if buf.len() < total_len {
        return Err("record runs past the unit");
    }
    let stored = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if crc32c::crc32c(&buf[4..total_len]) != stored {
        return Err("record checksum mismatch");
    }
    let flags = buf[5];
    if flags & !FLAG_RELOCATED != 0 {
        return Err("unknown record flags");
    }
    let (payload, orig_lsn, skip) = if flags & FLAG_RELOCATED != 0 {
        let p = &buf[RECORD_HEADER..total_len];
        let Some((orig, rest)) = p.split_first_chunk::<8>() else {
            return Err("relocated record without its original LSN");
        };
        let Some((n, rest)) = rest.split_first_chunk::<4>() else {
            return Err("relocated record without its op list");
        };
        let n = u32::from_le_bytes(*n) as usize;
        if rest.len() < n.saturating_mul(4) {
            return Err("relocated record's op list runs past it");
        }
        let (skip, rest) = rest.split_at(n * 4);
        (rest, Some(u64::from_le_bytes(*orig)), skip)
    } else {
        (&buf[RECORD_HEADER..total_len], None, &[][..])
    };
    Ok(Framed {
        kind: buf[4],
        payload,
        total_len,
        orig_lsn,
        skip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> EntryPath {
        EntryPath::new(s).expect("valid path")
    }

    #[test]
    fn every_record_kind_round_trips_through_its_frame() {
        let meta = EntryMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000,
            size: 5,
            target: String::new(),
            chunks: vec![ChunkRef {
                hash: [9; 32],
                len: 5,
            }],
        };
        let records = vec![
            Record::Commit {
                pfs: 3,
                change: Change {
                    tid: Tid(77),
                    chain: [4; 32],
                    ops: vec![
                        Op::Put {
                            path: path("a/b"),
                            meta,
                            supersedes: Some(Tid(5)),
                        },
                        Op::Delete {
                            path: path("c"),
                            supersedes: Tid(6),
                        },
                    ],
                },
            },
            Record::Pfs(PfsEvent::Create {
                id: 1,
                name: "data".into(),
                uuid: [1; 16],
                shared_uuid: [2; 16],
                role: Role::Slave,
                nohistory: true,
                created: Tid(9),
            }),
            Record::Pfs(PfsEvent::Snapshot {
                id: 1,
                name: "nightly".into(),
                tid: Tid(10),
            }),
            Record::Pfs(PfsEvent::Retention {
                id: 1,
                policy: "7d,1h:14d,1d:90d".parse().expect("valid policy"),
            }),
            Record::Pfs(PfsEvent::Prune {
                id: 1,
                ranges: vec![(Tid(3), Tid(7)), (Tid(9), Tid(12))],
            }),
            Record::Pfs(PfsEvent::Rollback {
                id: 1,
                to: Tid(8),
                chain: [7; 32],
            }),
            Record::Checkpoint {
                pfs: 1,
                synced: Tid(5),
                partial: Some(Partial {
                    tid: Tid(6),
                    chunks_done: 3,
                }),
                master_head: Tid(8),
            },
        ];
        for rec in records {
            let buf = rec.encode();
            let f = parse_frame(&buf).expect("valid frame");
            assert_eq!(f.total_len, buf.len());
            assert_eq!(Record::decode(f.kind, f.payload).expect("decodes"), rec);
        }
        let (cref, buf) = encode_chunk(b"hello");
        let f = parse_frame(&buf).expect("valid frame");
        assert_eq!(
            Record::decode(f.kind, f.payload).expect("decodes"),
            Record::Chunk {
                hash: cref.hash,
                len: 5
            }
        );
    }

    #[test]
    fn a_chunk_framed_in_place_equals_one_encoded_from_a_copy() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let mut buf = vec![0xAAu8; CHUNK_DATA_OFFSET + 8000];
        buf[CHUNK_DATA_OFFSET..CHUNK_DATA_OFFSET + data.len()].copy_from_slice(&data);
        assert_eq!(frame_chunk_in_place(buf, data.len()), encode_chunk(&data));
    }

    #[test]
    fn a_received_chunk_framed_around_its_data_equals_one_encoded_whole() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let (cref, framed) = FramedChunk::received(bytes::Bytes::from(data.clone()));
        let (want_ref, want) = encode_chunk(&data);
        assert_eq!(cref, want_ref);
        assert_eq!(framed.chunk_ref(), Ok(cref));
        assert_eq!(framed.len(), want.len());
        let FramedChunk::Split { head, data: shared } = framed else {
            panic!("a received chunk keeps its data apart");
        };
        assert_eq!(
            [head.as_slice(), &shared].concat(),
            want,
            "the same bytes in the log"
        );
        let short = FramedChunk::Split {
            head,
            data: shared.slice(1..),
        };
        assert!(
            short.chunk_ref().is_err(),
            "a header that does not frame the data"
        );
    }

    #[test]
    fn a_framed_chunk_gives_its_ref_from_the_header_and_a_bad_header_is_refused() {
        let (cref, rec) = encode_chunk(b"hello, chunk");
        assert_eq!(framed_chunk_ref(&rec), Ok(cref));
        assert!(
            framed_chunk_ref(&rec[..rec.len() - 1]).is_err(),
            "length mismatch"
        );
        assert!(
            framed_chunk_ref(&rec[..CHUNK_DATA_OFFSET - 1]).is_err(),
            "cut short"
        );
        let commit = Record::Checkpoint {
            pfs: 1,
            synced: Tid(5),
            partial: None,
            master_head: Tid(5),
        }
        .encode();
        assert!(framed_chunk_ref(&commit).is_err(), "not a chunk");
        let mut flagged = rec.clone();
        flagged[5] = FLAG_RELOCATED;
        assert!(framed_chunk_ref(&flagged).is_err(), "a relocated copy");
    }

    #[test]
    fn a_relocated_copy_parses_to_the_original_record_and_its_first_lsn() {
        let rec = Record::Commit {
            pfs: 2,
            change: Change {
                tid: Tid(10),
                chain: [3; 32],
                ops: vec![Op::Delete {
                    path: path("x"),
                    supersedes: Tid(4),
                }],
            },
        };
        let copy = frame_relocated(KIND_COMMIT, 0xABCD, &[0], &rec.encode_payload());
        let f = parse_frame(&copy).expect("valid frame");
        assert_eq!(f.orig_lsn, Some(0xABCD));
        assert_eq!(f.skipped_ops(), vec![0]);
        assert_eq!(f.total_len, copy.len());
        assert_eq!(Record::decode(f.kind, f.payload).expect("decodes"), rec);
        // A copy of a copy keeps the first LSN, and chunks relocate the same way.
        let again = frame_relocated(
            f.kind,
            f.orig_lsn.expect("set"),
            &f.skipped_ops(),
            f.payload,
        );
        assert_eq!(again, copy);
        let (cref, chunk) = encode_chunk(b"data");
        let c = parse_frame(&chunk).expect("chunk");
        assert_eq!(c.orig_lsn, None);
        let moved = frame_relocated(c.kind, 77, &[], c.payload);
        let m = parse_frame(&moved).expect("moved chunk");
        assert_eq!(m.orig_lsn, Some(77));
        assert_eq!(&m.payload[32..], b"data");
        assert_eq!(
            Record::decode(m.kind, m.payload).expect("decodes"),
            Record::Chunk {
                hash: cref.hash,
                len: 4
            }
        );
        // Flags it does not know make a record invalid rather than misread.
        let mut odd = chunk.clone();
        odd[5] = 0x80;
        let crc = crc32c::crc32c(&odd[4..]);
        odd[..4].copy_from_slice(&crc.to_le_bytes());
        assert!(parse_frame(&odd).is_err());
        let reclaim = Record::Reclaim {
            from: 1 << 22,
            to: 2 << 22,
            chunks: vec![[1; 32]],
            links: vec![(3, Tid(9))],
            versions: vec![(3, path("a/b"), Tid(8))],
        };
        let f2 = reclaim.encode();
        let f = parse_frame(&f2).expect("frame");
        assert_eq!(Record::decode(f.kind, f.payload).expect("decodes"), reclaim);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let (_, mut buf) = encode_chunk(b"some data");
        buf[20] ^= 0x10;
        assert_eq!(parse_frame(&buf).err(), Some("record checksum mismatch"));
        assert!(parse_frame(&buf[..8]).is_err());
    }

    #[test]
    fn the_chain_depends_on_every_op() {
        let ops = vec![Op::Delete {
            path: path("x"),
            supersedes: Tid(1),
        }];
        let a = Change::next_chain(&[0; 32], Tid(2), &ops);
        let b = Change::next_chain(&[0; 32], Tid(3), &ops);
        let c = Change::next_chain(&[1; 32], Tid(2), &ops);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
