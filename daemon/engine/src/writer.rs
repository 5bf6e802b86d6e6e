//! The writer: one thread that owns every write to the device.
//!
//! Callers send [`Work`] over a bounded channel. The writer takes everything that is queued (a
//! group), executes each piece against the index plus the group's own effects, places the
//! resulting records into flush units, writes them, makes them durable with one `fdatasync`,
//! applies the group's index changes in one atomic batch, and only then answers. Concurrent
//! committers therefore share one write and one fsync, readers only ever see durable state, and
//! the index only ever covers durable log.
//!
//! Work that needs no durability by itself (the data chunks of a large file, sent ahead of its
//! commit) is written without an fsync; its index changes wait in `pending` until the next fsync.
//! Its write-back is started at once (`sync_file_range`), so that the disk writes a large file
//! while the rest of it is still being read and hashed, and the commit's fsync only waits for the
//! tail. Chunk buffers go back to a pool ([`crate::bufpool`]) once written.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use repl_types::Tid;
use tokio::sync::watch;

use crate::apply::apply_record;
use crate::bufpool::ChunkBufs;
use crate::chunkfilter::ChunkFilter;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::exec::{self, Intent, PfsCommand};
use crate::index::{IndexStore, Overlay, Writes};
use crate::log::{Appender, LogPos, Piece, SegmentMap};
use crate::record::{Change, ChunkRef, FramedChunk, Partial, Record, Role};
use crate::schema;

/// Most bytes of work taken into one group.
const MAX_GROUP_BYTES: usize = 64 << 20;
/// Most submissions in one group.
const MAX_GROUP_LEN: usize = 1024;
/// Written-but-unsynced bytes after which the writer syncs anyway.
const MAX_UNSYNCED: u64 = 1 << 30;

/// A piece of work for the writer.
pub(crate) enum Work {
    /// Encoded chunk records of transaction `txn`, written ahead of the commit that will
    /// reference them.
    Chunks { txn: u64, chunks: Vec<Vec<u8>> },
    /// A local transaction, with the encoded chunk records not yet sent.
    Commit {
        txn: u64,
        pfs: String,
        intents: Vec<Intent>,
        chunks: Vec<Vec<u8>>,
    },
    /// Replicated changes for a slave, with the chunks they need and the new checkpoint.
    Apply {
        pfs: String,
        chunks: Vec<FramedChunk>,
        changes: Vec<Change>,
        partial: Option<Partial>,
        master_head: Tid,
    },
    /// A change to the PFS catalog.
    Pfs(PfsCommand),
    /// Prune a PFS by its retention policy.
    Prune {
        pfs: String,
        opts: crate::prune::PruneOptions,
    },
    /// One step of space reclaim, reading at most this many bytes of the segment it cleans.
    Reclaim(u64),
    /// Make everything written durable.
    Sync,
}

impl Work {
    fn bytes(&self) -> usize {
        match self {
            Work::Chunks { chunks: c, .. } | Work::Commit { chunks: c, .. } => {
                c.iter().map(Vec::len).sum::<usize>() + 256
            }
            Work::Apply { chunks: c, .. } => c.iter().map(FramedChunk::len).sum::<usize>() + 256,
            _ => 256,
        }
    }

    fn needs_sync(&self) -> bool {
        !matches!(self, Work::Chunks { .. })
    }
}

/// What a piece of work produced.
#[derive(Debug)]
pub(crate) enum Outcome {
    Written,
    /// The commit's TID (none when it changed nothing) and how many entries it changed.
    Committed(Option<Tid>, usize),
    Applied {
        head: Tid,
        partial: Option<Partial>,
    },
    Pfs,
    Pruned(crate::prune::PruneReport),
    Reclaimed(crate::reclaim::ReclaimStep),
}

/// Work and where to answer.
pub(crate) struct Submission {
    pub work: Work,
    pub reply: SyncSender<Result<Outcome>>,
}

/// Counters the engine keeps; the daemon exports them as metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Transactions committed (local and replicated).
    pub commits: AtomicU64,
    /// `fdatasync` calls.
    pub fsyncs: AtomicU64,
    /// Nanoseconds spent in `fdatasync`, in total.
    pub fsync_ns: AtomicU64,
    /// Bytes written to the log.
    pub bytes_written: AtomicU64,
    /// Groups written.
    pub groups: AtomicU64,
    /// Index rebuilds since start.
    pub index_rebuilds: AtomicU64,
    /// Log corruption found.
    pub corruption_detected: AtomicU64,
    /// Whole records (commits, events) read back from the log by readers; the change scan's
    /// cost.
    pub records_read: AtomicU64,
    /// Local commits, from the commit call until it returned durable.
    pub commit_latency: crate::latency::LatencyHistogram,
    /// `fdatasync` calls.
    pub fsync_latency: crate::latency::LatencyHistogram,
    /// Segments space reclaim freed.
    pub segments_freed: AtomicU64,
    /// Bytes of live records space reclaim copied to the head of the log.
    pub reclaim_copied_bytes: AtomicU64,
}

/// State the writer shares with readers.
#[derive(Default)]
pub(crate) struct Shared {
    pub poisoned: Mutex<Option<String>>,
    pub heads: Mutex<HashMap<u32, watch::Sender<Tid>>>,
    pub stats: Stats,
    /// Chunk buffers for reuse: taken by `put_file`, given back once written.
    pub chunk_bufs: ChunkBufs,
    /// Held (shared) by readers while they read at an LSN taken from the index; space reclaim
    /// frees a segment only when it can take it exclusively, so a slot is never reused under a
    /// reader.
    pub free_gate: RwLock<()>,
    /// Open transactions: space reclaim keeps the chunks they placed.
    pub open_txns: Mutex<HashSet<u64>>,
    /// The id of the next transaction.
    pub next_txn: AtomicU64,
    /// Bytes space reclaim can give back, as last estimated.
    pub reclaimable: AtomicU64,
    /// The last usage estimate.
    pub last_usage: Mutex<Option<crate::engine::SpaceUsage>>,
}

impl Shared {
    /// Registers an open transaction; returns its id.
    pub fn txn_begin(&self) -> u64 {
        let id = self.next_txn.fetch_add(1, Ordering::Relaxed) + 1;
        self.open_txns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        id
    }

    pub fn txn_done(&self, id: u64) {
        self.open_txns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }

    pub fn txn_open(&self, id: u64) -> bool {
        self.open_txns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&id)
    }

    pub fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn poison(&self, why: String) {
        tracing::error!(error = %why, "storage engine stopped after a failed write");
        *self
            .poisoned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
    }

    pub fn notify(&self, pfs: u32, head: Tid) {
        let mut heads = self
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = heads.entry(pfs).or_insert_with(|| watch::channel(head).0);
        tx.send_if_modified(|h| {
            let changed = *h != head;
            *h = head;
            changed
        });
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub dev: Arc<Device>,
    pub index: Arc<dyn IndexStore>,
    pub map: Arc<RwLock<SegmentMap>>,
    pub app: Appender,
    pub shared: Arc<Shared>,
    /// Index changes of units written but not yet durable.
    pub pending: Writes,
    /// Which chunks may be stored: spares the index a lookup for each new chunk.
    pub known_chunks: ChunkFilter,
    pub unsynced: u64,
    /// Space reclaim's pass and pins.
    pub reclaim: crate::reclaim::ReclaimState,
}

impl Writer {
    /// Serves submissions until every sender is gone, then makes everything durable.
    pub fn run(mut self, rx: Receiver<Submission>) {
        while let Ok(first) = rx.recv() {
            let mut bytes = first.work.bytes();
            let mut group = vec![first];
            while bytes < MAX_GROUP_BYTES && group.len() < MAX_GROUP_LEN {
                match rx.try_recv() {
                    Ok(s) => {
                        bytes += s.work.bytes();
                        group.push(s);
                    }
                    Err(_) => break,
                }
            }
            self.process(group);
        }
        if self.shared.poisoned().is_none() {
            let (tx, _rx) = std::sync::mpsc::sync_channel(1);
            self.process(vec![Submission {
                work: Work::Sync,
                reply: tx,
            }]);
            if let Err(e) = self.index.flush() {
                tracing::warn!(error = %e, "index flush at shutdown failed; the next start replays more log");
            }
        }
    }

    fn process(&mut self, mut group: Vec<Submission>) {
        if let Some(why) = self.shared.poisoned() {
            for s in group {
                let _ = s.reply.send(Err(Error::Poisoned(why.clone())));
            }
            return;
        }
        let group_mark = self.app.mark();
        self.reclaim.maybe_forget_pins(&self.shared, &*self.index);
        let index = Arc::clone(&self.index);
        let saved_pending = self.pending.clone();
        let mut layer = Overlay::new(&*index, std::mem::take(&mut self.pending));
        let map_guard = Arc::clone(&self.map);
        let map = map_guard
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut results = Vec::with_capacity(group.len());
        let mut notify = Vec::new();
        let mut need_sync = self.unsynced > MAX_UNSYNCED;
        let mut commits = 0u64;
        // Records below this LSN are on the device (those of this group are not yet).
        let written_below = self
            .app
            .tail
            .map_or(0, |(seg, off)| seg.seq * self.app.seg_size + off);
        let disk = OnDisk {
            dev: &self.dev,
            map: &map,
            written_below,
        };
        for sub in &mut group {
            let mark = self.app.mark();
            let mut child = Overlay::new(&layer, Writes::new());
            let mut ctx = Ctx {
                known: &mut self.known_chunks,
                reclaim: &mut self.reclaim,
                shared: &self.shared,
            };
            match execute(
                &mut self.app,
                &mut ctx,
                &disk,
                &mut child,
                &mut sub.work,
                &mut notify,
            ) {
                Ok(outcome) => {
                    let writes = child.writes;
                    layer.writes.extend(writes);
                    need_sync |= sub.work.needs_sync();
                    if matches!(outcome, Outcome::Committed(Some(_), _)) {
                        commits += 1;
                    }
                    results.push(Ok(outcome));
                }
                Err(e) => {
                    drop(child);
                    self.app.rewind(mark);
                    if matches!(sub.work, Work::Reclaim(_)) {
                        self.reclaim.abandon();
                        self.reclaim.pending_free = None;
                    }
                    results.push(Err(e));
                }
            }
        }
        drop(map);
        let new_segments = self.app.new_segments.clone();
        // A slave's applied batches are read again only by a verify or a cascade: once durable,
        // their pages make room in the page cache, where the next batch's writes reuse them.
        let uncache = group.iter().any(|s| matches!(s.work, Work::Apply { .. }));
        let written = self.write_units(need_sync, uncache);
        let mut writes = layer.writes;
        let outcome = written.and_then(|bytes| {
            self.map
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(&new_segments);
            self.app.new_segments.clear();
            if need_sync {
                // A log that is still empty (a sync, or a close, before the first write) has no
                // position for the index to cover yet.
                if let Some((seg, off)) = self.app.tail {
                    let covered = LogPos {
                        lsn: seg.seq * self.app.seg_size + off,
                        prev_seq: self.app.last_unit_seq,
                    };
                    writes.insert(schema::COVERED.to_vec(), Some(schema::encode_pos(covered)));
                }
                self.index
                    .apply_owned(writes)
                    .map_err(|e| Error::Poisoned(format!("index update failed: {e}")))?;
                self.unsynced = 0;
            } else {
                self.pending = writes;
                self.unsynced += bytes;
            }
            Ok(())
        });
        match outcome {
            Ok(()) => {
                if self.reclaim.pending_free.is_some()
                    && self.free_segment()
                    && let Some(Ok(Outcome::Reclaimed(step))) = results
                        .iter_mut()
                        .find(|r| matches!(r, Ok(Outcome::Reclaimed(_))))
                {
                    step.freed_segments += 1;
                    step.in_pass = false;
                }
                let stats = &self.shared.stats;
                for r in results.iter().flatten() {
                    if let Outcome::Reclaimed(step) = r {
                        stats
                            .reclaim_copied_bytes
                            .fetch_add(step.copied_bytes, Ordering::Relaxed);
                    }
                }
                stats.commits.fetch_add(commits, Ordering::Relaxed);
                stats.groups.fetch_add(1, Ordering::Relaxed);
                for (pfs, head) in notify {
                    self.shared.notify(pfs, head);
                }
                for (s, r) in group.into_iter().zip(results) {
                    let _ = s.reply.send(r);
                }
            }
            Err(e) => {
                // Nothing of this group is acknowledged. Unit and segment seqs stay advanced, so
                // that units of this group already on the device can never be taken for later
                // ones.
                let (next_unit, next_seg) = (self.app.next_unit_seq, self.app.next_seg_seq);
                self.app.rewind(group_mark);
                self.app.next_unit_seq = next_unit;
                self.app.next_seg_seq = next_seg;
                self.app.new_segments.clear();
                self.pending = saved_pending;
                self.reclaim.abandon();
                self.reclaim.pending_free = None;
                let msg = e.to_string();
                let full = matches!(e, Error::DeviceFull { .. });
                if !full {
                    self.shared.poison(msg.clone());
                }
                for s in group {
                    let err = if full {
                        Error::DeviceFull {
                            detail: msg.trim_start_matches("device full: ").to_owned(),
                        }
                    } else {
                        Error::Poisoned(msg.clone())
                    };
                    let _ = s.reply.send(Err(err));
                }
            }
        }
    }

    /// Frees the segment space reclaim finished cleaning, once its reclaim record is durable:
    /// flushes the index (so that the position it covers durably lies past the copies), then,
    /// when no reader holds the free gate, clears the segment's header and marks its slot free.
    /// Returns whether it freed it; when not, the next group tries again.
    fn free_segment(&mut self) -> bool {
        let Some(seq) = self.reclaim.pending_free else {
            return false;
        };
        if let Err(e) = self.index.flush() {
            tracing::warn!(error = %e, "index flush before freeing a segment failed; trying again later");
            return false;
        }
        let Ok(_gate) = self.shared.free_gate.try_write() else {
            return false;
        };
        let slot = {
            let map = self
                .map
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.by_seq.get(&seq) {
                Some(h) => h.slot,
                None => {
                    self.reclaim.pending_free = None;
                    return false;
                }
            }
        };
        let cleared = self
            .dev
            .write_at(
                &vec![0u8; crate::device::BLOCK as usize],
                self.dev.superblock().slot_offset(slot),
            )
            .and_then(|()| self.dev.sync());
        if let Err(e) = cleared {
            tracing::warn!(error = %e, seq, slot, "clearing a reclaimed segment's header failed; trying again later");
            return false;
        }
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(seq);
        self.reclaim.pending_free = None;
        self.shared
            .stats
            .segments_freed
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(seq, slot, "space reclaim freed a segment");
        true
    }

    /// Writes the units the group placed, then (`sync`) makes them durable. With `uncache`, the
    /// durable bytes are dropped from the page cache (see "Slave apply" in architecture.md).
    fn write_units(&mut self, sync: bool, uncache: bool) -> Result<u64> {
        let units = self.app.take_units();
        let mut written = Vec::with_capacity(units.len());
        let mut bytes = 0u64;
        let zeros = [0u8; crate::device::BLOCK as usize];
        for u in units {
            let (head, pad) = u.frame(&self.app.volume);
            let mut bufs: Vec<&[u8]> = Vec::with_capacity(u.body.pieces.len() + 2);
            bufs.push(&head);
            bufs.extend(u.body.pieces.iter().map(Piece::as_slice));
            bufs.push(&zeros[..pad]);
            self.dev.write_vectored_at(&bufs, u.device_offset)?;
            let len = (head.len() + u.body.len + pad) as u64;
            if !sync {
                // Data sent ahead of its commit (a large file's chunks): let the disk work on it
                // while the rest is produced, so the commit's fdatasync has only the tail left.
                self.dev.start_writeback(u.device_offset, len);
            }
            bytes += len;
            written.push((u.device_offset, len));
            drop(bufs);
            for piece in u.body.pieces {
                if let Piece::Owned(buf) = piece {
                    self.shared.chunk_bufs.give(buf);
                }
            }
        }
        let stats = &self.shared.stats;
        stats.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        if sync && (bytes > 0 || self.unsynced > 0) {
            let t = Instant::now();
            self.dev
                .sync()
                .map_err(|e| Error::Poisoned(format!("fdatasync failed: {e}")))?;
            stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            stats.fsync_latency.observe(t.elapsed());
            stats
                .fsync_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.app.durable_seq = self.app.last_unit_seq;
            if uncache {
                for (offset, len) in written {
                    self.dev.drop_cached(offset, len);
                }
            }
        }
        Ok(bytes)
    }
}

impl SegmentMap {
    fn extend(&mut self, segs: &[crate::log::SegHeader]) {
        for h in segs {
            self.insert(*h);
        }
    }
}

fn place(
    app: &mut Appender,
    map: &SegmentMap,
    ov: &mut Overlay<'_>,
    rec: &Record,
    reserve: bool,
) -> Result<()> {
    let lsn = app.place(rec.encode(), map, reserve)?;
    apply_record(ov, lsn, rec)
}

/// What `execute` needs of the writer besides the appender.
struct Ctx<'a> {
    known: &'a mut ChunkFilter,
    reclaim: &'a mut crate::reclaim::ReclaimState,
    shared: &'a Shared,
}

fn place_chunk(
    app: &mut Appender,
    ctx: &mut Ctx<'_>,
    map: &SegmentMap,
    ov: &mut Overlay<'_>,
    framed: FramedChunk,
    pin: crate::reclaim::Pin,
) -> Result<()> {
    let ChunkRef { hash, len } = framed
        .chunk_ref()
        .map_err(|why| Error::Invalid(format!("chunk record: {why}")))?;
    // A transaction may reference this chunk from now on (written or found stored): space
    // reclaim keeps it while the transaction is open.
    ctx.reclaim.touch(&hash, pin);
    if ctx.known.may_contain(&hash) && schema::chunk_loc(ov, &hash)?.is_some() {
        return Ok(());
    }
    ctx.known.insert(&hash);
    let lsn = app.place_chunk(framed, map)?;
    apply_record(ov, lsn, &Record::Chunk { hash, len })
}

/// The log as it is on the device while a group is assembled.
struct OnDisk<'a> {
    dev: &'a Device,
    map: &'a SegmentMap,
    written_below: u64,
}

impl OnDisk<'_> {
    /// The length of the record at `lsn`, header included; 0 for a record of the group being
    /// assembled (not on the device yet).
    fn record_len(&self, lsn: u64) -> Result<u64> {
        if lsn >= self.written_below {
            return Ok(0);
        }
        let (_, off) = self
            .map
            .locate(lsn)
            .ok_or_else(|| Error::Index(format!("no segment holds LSN {lsn:#x}")))?;
        let mut head = [0u8; crate::record::RECORD_HEADER];
        self.dev.read_at(&mut head, off)?;
        Ok((crate::record::RECORD_HEADER + crate::record::payload_len(&head)) as u64)
    }
}

fn execute(
    app: &mut Appender,
    ctx: &mut Ctx<'_>,
    disk: &OnDisk<'_>,
    ov: &mut Overlay<'_>,
    work: &mut Work,
    notify: &mut Vec<(u32, Tid)>,
) -> Result<Outcome> {
    let map = disk.map;
    // Chunk buffers move into the flush unit rather than being copied.
    match work {
        Work::Chunks { txn, chunks } => {
            for c in std::mem::take(chunks) {
                let c = FramedChunk::Whole(c);
                place_chunk(app, ctx, map, ov, c, crate::reclaim::Pin::Txn(*txn))?;
            }
            Ok(Outcome::Written)
        }
        Work::Commit {
            txn,
            pfs,
            intents,
            chunks,
        } => {
            let p = exec::writable_pfs(ov, pfs)?;
            let frees = chunks.is_empty() && intents.iter().all(Intent::frees_space);
            for c in std::mem::take(chunks) {
                let c = FramedChunk::Whole(c);
                place_chunk(app, ctx, map, ov, c, crate::reclaim::Pin::Txn(*txn))?;
            }
            match exec::commit(ov, &p, intents, Tid::now())? {
                None => Ok(Outcome::Committed(None, 0)),
                Some(rec) => {
                    place(app, map, ov, &rec, frees)?;
                    let Record::Commit { change, .. } = &rec else {
                        unreachable!("exec::commit makes commits")
                    };
                    notify.push((p.id, change.tid));
                    Ok(Outcome::Committed(Some(change.tid), change.ops.len()))
                }
            }
        }
        Work::Apply {
            pfs,
            chunks,
            changes,
            partial,
            master_head,
        } => {
            let load = |ov: &Overlay<'_>| -> Result<schema::PfsRecord> {
                let p =
                    schema::pfs_by_name(ov, pfs)?.ok_or_else(|| Error::NoSuchPfs(pfs.clone()))?;
                if p.role != Role::Slave {
                    return Err(Error::NotASlave(pfs.clone()));
                }
                Ok(p)
            };
            let slave = load(ov)?.id;
            for c in std::mem::take(chunks) {
                place_chunk(app, ctx, map, ov, c, crate::reclaim::Pin::Slave(slave))?;
            }
            for change in changes {
                let p = load(ov)?;
                if let Some(rec) = exec::replicated(ov, &p, change)? {
                    place(app, map, ov, &rec, false)?;
                }
            }
            let p = load(ov)?;
            place(
                app,
                map,
                ov,
                &exec::checkpoint(&p, *partial, *master_head),
                false,
            )?;
            let p = load(ov)?;
            notify.push((p.id, p.head));
            Ok(Outcome::Applied {
                head: p.head,
                partial: p.partial,
            })
        }
        Work::Pfs(cmd) => {
            let (rec, id) = exec::pfs_command(ov, cmd, Tid::now())?;
            place(app, map, ov, &rec, cmd.frees_space())?;
            if let Some(p) = schema::pfs_by_id(ov, id)? {
                notify.push((id, p.head));
            }
            Ok(Outcome::Pfs)
        }
        Work::Prune { pfs, opts } => {
            let p = schema::pfs_by_name(ov, pfs)?.ok_or_else(|| Error::NoSuchPfs(pfs.clone()))?;
            let report = crate::prune::plan(ov, &p, opts, &|lsn| disk.record_len(lsn))?;
            if !report.ranges.is_empty() {
                let rec = Record::Pfs(crate::record::PfsEvent::Prune {
                    id: p.id,
                    ranges: report.ranges.clone(),
                });
                place(app, map, ov, &rec, true)?;
            }
            Ok(Outcome::Pruned(report))
        }
        Work::Reclaim(budget) => {
            crate::reclaim::step(disk.dev, map, app, ov, ctx.reclaim, *budget, ctx.shared)
                .map(Outcome::Reclaimed)
        }
        Work::Sync => Ok(Outcome::Written),
    }
}

/// Sends work to the writer and waits for its answer.
pub(crate) fn submit(tx: &SyncSender<Submission>, work: Work) -> Result<Outcome> {
    wait(send(tx, work)?)
}

/// Sends work to the writer; the answer arrives on the returned receiver.
pub(crate) fn send(tx: &SyncSender<Submission>, work: Work) -> Result<Receiver<Result<Outcome>>> {
    let (reply, rx) = std::sync::mpsc::sync_channel(1);
    tx.send(Submission { work, reply })
        .map_err(|_| Error::ShuttingDown)?;
    Ok(rx)
}

/// Waits for an answer from [`send`].
pub(crate) fn wait(rx: Receiver<Result<Outcome>>) -> Result<Outcome> {
    rx.recv().map_err(|_| Error::ShuttingDown)?
}
