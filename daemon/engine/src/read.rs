//! Reads: entries and directories at any kept TID, file content as a stream, per-path history,
//! the incremental change scan, and chunk reads. Readers see only durable, indexed state.

use std::io::Read;

use repl_types::{EntryPath, PfsName, Tid};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::record::{
    CHUNK_PREFIX_MAX, Change, ChunkRef, EntryKind, EntryMeta, Hash, RECORD_HEADER, Record,
    chunk_data_offset, parse_frame, payload_len,
};
use crate::schema::{self, PfsRecord};

/// How often a reader looks a record up again after space reclaim moved it.
const RELOOKUPS: usize = 4;

/// Which state of a PFS to read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum At {
    /// The newest committed state (for a slave: its synced TID).
    #[default]
    Head,
    /// The state as of this TID.
    Tid(Tid),
    /// The state at a named snapshot.
    Snapshot(String),
}

/// Counts of a PFS, from [`Engine::pfs_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PfsStats {
    /// Live files at the head.
    pub files: u64,
    /// Live directories at the head (not counting the root).
    pub dirs: u64,
    /// Live symlinks at the head.
    pub symlinks: u64,
    /// Content bytes of the live files.
    pub bytes: u64,
    /// Versions stored, live or historical.
    pub versions: u64,
    /// Named snapshots.
    pub snapshots: u64,
}

/// One version of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path.
    pub path: EntryPath,
    /// The TID that created this version.
    pub created: Tid,
    /// The TID that ended it, if it has ended.
    pub deleted: Option<Tid>,
    /// Kind, mode, mtime, size, target and chunks.
    pub meta: EntryMeta,
}

impl Entry {
    /// File, directory or symlink.
    pub fn kind(&self) -> EntryKind {
        self.meta.kind
    }

    fn new(path: EntryPath, created: Tid, v: schema::VersionVal) -> Entry {
        Entry {
            path,
            created,
            deleted: (v.deleted != Tid::MAX).then_some(v.deleted),
            meta: v.meta,
        }
    }
}

impl Engine {
    /// Resolves `at` for a PFS to a TID that may be read.
    pub(crate) fn resolve(&self, name: &PfsName, at: &At) -> Result<(PfsRecord, Tid)> {
        let p = self.record(name)?;
        let tid = match at {
            At::Head => p.head,
            At::Tid(t) => *t,
            At::Snapshot(s) => schema::snapshot(self.kv(), p.id, s)?
                .ok_or_else(|| Error::NoSuchSnapshot(s.clone()))?,
        };
        if tid < p.history_floor {
            return Err(Error::Pruned {
                tid,
                next: p.history_floor,
            });
        }
        if let Some((_, next)) = p.pruned_at(tid) {
            return Err(Error::Pruned { tid, next });
        }
        Ok((p, tid))
    }

    /// The TID that `at` names.
    pub fn resolve_tid(&self, name: &PfsName, at: &At) -> Result<Tid> {
        self.resolve(name, at).map(|(_, t)| t)
    }

    /// The entry at `path`.
    pub fn stat(&self, name: &PfsName, path: &EntryPath, at: &At) -> Result<Entry> {
        let (p, tid) = self.resolve(name, at)?;
        self.stat_in(&p, path, tid)
    }

    fn stat_in(&self, p: &PfsRecord, path: &EntryPath, tid: Tid) -> Result<Entry> {
        if path.is_root() {
            return Ok(Entry {
                path: EntryPath::root(),
                created: p.created,
                deleted: None,
                meta: EntryMeta {
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    mtime_ns: i64::try_from(p.created.get()).unwrap_or(0),
                    size: 0,
                    target: String::new(),
                    chunks: Vec::new(),
                },
            });
        }
        let at = (tid != p.head).then_some(tid);
        let (created, v) =
            schema::version_at(self.kv(), p.id, path, tid)?.ok_or_else(|| Error::NotFound {
                path: path.clone(),
                at,
            })?;
        Ok(Entry::new(path.clone(), created, v))
    }

    /// The entries of directory `dir`, sorted by name.
    pub fn list(&self, name: &PfsName, dir: &EntryPath, at: &At) -> Result<Vec<Entry>> {
        let (p, tid) = self.resolve(name, at)?;
        let d = self.stat_in(&p, dir, tid)?;
        if d.kind() != EntryKind::Dir {
            return Err(Error::NotADirectory(dir.clone()));
        }
        self.children(&p, dir, tid)
    }

    fn children(&self, p: &PfsRecord, dir: &EntryPath, tid: Tid) -> Result<Vec<Entry>> {
        schema::children_at(self.kv(), p.id, dir, tid)?
            .into_iter()
            .map(|(n, created, v)| Ok(Entry::new(dir.join(&n)?, created, v)))
            .collect()
    }

    /// Calls `f` for every entry of the PFS at `at` (not the root), depth first, children sorted by
    /// name: the canonical order of exports and digests.
    pub fn walk(
        &self,
        name: &PfsName,
        at: &At,
        f: impl FnMut(&Entry) -> Result<()>,
    ) -> Result<Tid> {
        self.walk_under(name, at, &EntryPath::root(), f)
    }

    /// Like [`Engine::walk`], for the entries below directory `dir` only (`dir` itself is not
    /// visited).
    pub fn walk_under(
        &self,
        name: &PfsName,
        at: &At,
        dir: &EntryPath,
        mut f: impl FnMut(&Entry) -> Result<()>,
    ) -> Result<Tid> {
        let (p, tid) = self.resolve(name, at)?;
        if self.stat_in(&p, dir, tid)?.kind() != EntryKind::Dir {
            return Err(Error::NotADirectory(dir.clone()));
        }
        let mut stack = vec![self.children(&p, dir, tid)?.into_iter()];
        while let Some(level) = stack.last_mut() {
            match level.next() {
                None => {
                    stack.pop();
                }
                Some(e) => {
                    f(&e)?;
                    if e.kind() == EntryKind::Dir {
                        let below = self.children(&p, &e.path, tid)?;
                        stack.push(below.into_iter());
                    }
                }
            }
        }
        Ok(tid)
    }

    /// Counts of a PFS: live entries and bytes at the head, and versions stored. Walks the whole
    /// PFS: for status displays, not for hot paths.
    pub fn pfs_stats(&self, name: &PfsName) -> Result<PfsStats> {
        let mut st = PfsStats::default();
        self.walk(name, &At::Head, |e| {
            match e.kind() {
                EntryKind::File => {
                    st.files += 1;
                    st.bytes += e.meta.size;
                }
                EntryKind::Dir => st.dirs += 1,
                EntryKind::Symlink => st.symlinks += 1,
            }
            Ok(())
        })?;
        let p = self.record(name)?;
        let (mut from, end) = schema::pfs_space_range(b'V', p.id);
        loop {
            let page = self.kv().range(&from, &end, 4096)?;
            let Some((last, _)) = page.last() else { break };
            st.versions += page.len() as u64;
            from = last.clone();
            from.push(0);
        }
        st.snapshots = schema::snapshots(self.kv(), p.id)?.len() as u64;
        Ok(st)
    }

    /// Every version of `path` that history keeps, oldest first. Versions that only pruned
    /// TIDs saw are gone; [`PfsInfo::pruned`](crate::PfsInfo::pruned) names those TIDs.
    pub fn history(&self, name: &PfsName, path: &EntryPath) -> Result<Vec<Entry>> {
        let p = self.record(name)?;
        Ok(schema::versions(self.kv(), p.id, path)?
            .into_iter()
            .map(|(t, v)| Entry::new(path.clone(), t, v))
            .collect())
    }

    /// A reader of the file at `path`, streaming its chunks.
    pub fn open_file(&self, name: &PfsName, path: &EntryPath, at: &At) -> Result<FileReader> {
        let e = self.stat(name, path, at)?;
        match e.kind() {
            EntryKind::File => Ok(FileReader {
                engine: self.clone(),
                chunks: e.meta.chunks,
                next: 0,
                buf: Vec::new(),
                pos: 0,
            }),
            EntryKind::Dir => Err(Error::IsADirectory(path.clone())),
            EntryKind::Symlink => Err(Error::Invalid(format!(
                "`{path}` is a symlink to `{}`",
                e.meta.target
            ))),
        }
    }

    /// The whole content of the file at `path`.
    pub fn read_file(&self, name: &PfsName, path: &EntryPath, at: &At) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_file(name, path, at)?
            .read_to_end(&mut out)
            .map_err(|e| read_error(path, e))?;
        Ok(out)
    }

    /// Up to `limit` commits of the PFS after TID `after`, in TID order. The cost grows with the
    /// number of commits returned, not with the size of the PFS: it walks the by-TID index.
    pub fn changes_since(&self, name: &PfsName, after: Tid, limit: usize) -> Result<Vec<Change>> {
        let p = self.record(name)?;
        let mut out = Vec::new();
        for (tid, mut lsn) in schema::commits_after(self.kv(), p.id, after, limit)? {
            let mut tries = 0;
            let rec = loop {
                match self.read_record(lsn)? {
                    Some(rec) => break rec,
                    // Space reclaim moved the commit and freed its segment: look it up again.
                    None if tries < RELOOKUPS => {
                        tries += 1;
                        match self.kv().get(&schema::tid_key(p.id, tid))? {
                            Some(v) => {
                                lsn =
                                    u64::from_le_bytes(v.as_slice().try_into().map_err(|_| {
                                        Error::Index("by-TID entry is not an LSN".into())
                                    })?);
                            }
                            // Pruned meanwhile: the scan ends before it.
                            None => return Ok(out),
                        }
                    }
                    None => return Err(self.gone(lsn)),
                }
            };
            match rec {
                Record::Commit { change, .. } if change.tid == tid => out.push(change),
                other => {
                    return Err(self.corruption(
                        lsn,
                        format!("expected the commit of {tid}, found {other:?}"),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Whether a chunk with this hash is stored.
    pub fn has_chunk(&self, hash: &Hash) -> Result<bool> {
        Ok(schema::chunk_loc(self.kv(), hash)?.is_some())
    }

    /// A chunk's bytes, checked against its record checksum.
    pub fn read_chunk(&self, hash: &Hash) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.read_chunk_append(hash, &mut data)?;
        Ok(data)
    }

    /// Appends a chunk's bytes to `out`, read from the device straight into it and checked
    /// against its record checksum: the replication sender builds its batches this way, with no
    /// copy of the data in between. On an error `out` is as it was.
    pub fn read_chunk_append(&self, hash: &Hash, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        let mut tries = 0;
        loop {
            let loc = self.stored_chunk(hash)?;
            let read = self.at_lsn(loc.lsn, |off| {
                // Over-reads into the data of a record that is not a copy: that stays on the
                // device (see `try_read_at_lsn`).
                let mut prefix = [0u8; CHUNK_PREFIX_MAX];
                self.inner.dev.read_at(&mut prefix, off)?;
                let skip = chunk_data_offset(&prefix)
                    .map_err(|why| self.corruption(loc.lsn, format!("chunk record: {why}")))?;
                self.inner
                    .dev
                    .read_append(out, loc.len as usize, off + skip as u64)?;
                Ok((prefix, skip))
            })?;
            let Some((prefix, skip)) = read else {
                if tries < RELOOKUPS {
                    tries += 1;
                    continue;
                }
                return Err(self.gone(loc.lsn));
            };
            let stored = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
            let problem = if payload_len(&prefix) != skip - RECORD_HEADER + loc.len as usize {
                Some("chunk record: its length is not the chunk's")
            } else if crc32c::crc32c_append(crc32c::crc32c(&prefix[4..skip]), &out[start..])
                != stored
            {
                Some("chunk record: record checksum mismatch")
            } else if prefix[skip - 32..skip] != hash[..] {
                Some("chunk record holds another hash")
            } else {
                None
            };
            if let Some(why) = problem {
                out.truncate(start);
                return Err(self.corruption(loc.lsn, why.into()));
            }
            return Ok(());
        }
    }

    /// Where chunk `hash` is stored.
    fn stored_chunk(&self, hash: &Hash) -> Result<schema::ChunkLoc> {
        schema::chunk_loc(self.kv(), hash)?.ok_or_else(|| {
            Error::Invalid(format!(
                "chunk {} is not stored",
                crate::exec::hex(&hash[..8])
            ))
        })
    }

    /// A chunk's bytes, re-hashed with BLAKE3 and compared with its reference: the scrub that
    /// finds silent corruption.
    pub fn read_chunk_verified(&self, c: &ChunkRef) -> Result<Vec<u8>> {
        let data = self.read_chunk(&c.hash)?;
        if data.len() != c.len as usize || blake3::hash(&data).as_bytes() != &c.hash {
            let loc = schema::chunk_loc(self.kv(), &c.hash)?.map_or(0, |l| l.lsn);
            return Err(self.corruption(loc, "chunk content does not match its BLAKE3 hash".into()));
        }
        Ok(data)
    }

    /// Reads `buf.len()` bytes at `lsn`. Returns `false` when no segment holds `lsn` any more:
    /// space reclaim copied what the index pointed at and freed the segment, and the caller looks
    /// its record up again. The segment cannot be freed (and its slot reused) during the read:
    /// reclaim frees a segment only while no reader holds the free gate.
    fn try_read_at_lsn(&self, lsn: u64, buf: &mut [u8]) -> Result<bool> {
        // A record may end within 12 bytes of the device's last slot; the backup superblock
        // follows it, so an over-read stays on the device.
        Ok(self
            .at_lsn(lsn, |off| self.inner.dev.read_at(buf, off))?
            .is_some())
    }

    /// Runs `read` with the device offset of `lsn`, holding the free gate (see
    /// [`Self::try_read_at_lsn`]); `None` when no segment holds `lsn` any more.
    fn at_lsn<T>(&self, lsn: u64, read: impl FnOnce(u64) -> Result<T>) -> Result<Option<T>> {
        let _gate = self
            .inner
            .shared
            .free_gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let located = self
            .inner
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .locate(lsn);
        located.map(|(_, off)| read(off)).transpose()
    }

    fn gone(&self, lsn: u64) -> Error {
        self.corruption(
            lsn,
            "the index points into a segment that is not on the device".into(),
        )
    }

    /// The length of the record at `lsn`, header included.
    pub(crate) fn record_len(&self, lsn: u64) -> Result<u64> {
        let mut head = [0u8; RECORD_HEADER];
        if !self.try_read_at_lsn(lsn, &mut head)? {
            return Err(Error::Index(format!(
                "space reclaim moved the record at LSN {lsn:#x} meanwhile; try again"
            )));
        }
        Ok((RECORD_HEADER + payload_len(&head)) as u64)
    }

    /// The record at `lsn`; `None` when its segment was freed (see [`Self::try_read_at_lsn`]).
    fn read_record(&self, lsn: u64) -> Result<Option<Record>> {
        self.inner
            .shared
            .stats
            .records_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _gate = self
            .inner
            .shared
            .free_gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut head = [0u8; RECORD_HEADER];
        if !self.try_read_at_lsn(lsn, &mut head)? {
            return Ok(None);
        }
        let len = payload_len(&head);
        if len > crate::log::MAX_UNIT_BODY {
            return Err(self.corruption(lsn, "record length is impossible".into()));
        }
        let mut buf = vec![0u8; RECORD_HEADER + len];
        if !self.try_read_at_lsn(lsn, &mut buf)? {
            return Ok(None);
        }
        let f = parse_frame(&buf).map_err(|why| self.corruption(lsn, why.to_owned()))?;
        Record::decode(f.kind, f.payload)
            .map(Some)
            .map_err(|e| self.corruption(lsn, e.to_string()))
    }

    fn corruption(&self, lsn: u64, detail: String) -> Error {
        self.inner
            .shared
            .stats
            .corruption_detected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (slot, offset) = self
            .inner
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .locate(lsn)
            .unwrap_or((0, 0));
        Error::Corruption {
            lsn,
            slot,
            offset,
            detail,
        }
    }
}

/// Turns an error of a [`FileReader`] back into the engine error it carries, so that damage
/// found while reading stays [`Error::Corruption`] (which callers branch on) rather than
/// becoming an I/O error.
fn read_error(path: &EntryPath, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        let inner = e.into_inner().expect("get_ref found an inner error");
        return *inner.downcast::<Error>().expect("is::<Error>() said so");
    }
    Error::io(format!("read `{path}`"), e)
}

/// Streams a file's content chunk by chunk; memory stays at one chunk.
pub struct FileReader {
    engine: Engine,
    chunks: Vec<ChunkRef>,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(c) = self.chunks.get(self.next) else {
                return Ok(0);
            };
            self.buf = self
                .engine
                .read_chunk(&c.hash)
                .map_err(std::io::Error::other)?;
            if self.buf.len() != c.len as usize {
                return Err(std::io::Error::other(format!(
                    "chunk length {} != {}",
                    self.buf.len(),
                    c.len
                )));
            }
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
