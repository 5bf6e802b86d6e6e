//! The engine handle: open and recovery, the PFS catalog, transactions, slave apply.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use repl_types::{EntryPath, PfsName, Retention, Tid};
use tokio::sync::watch;

use crate::apply::apply_record;
use crate::chunkfilter::ChunkFilter;
use crate::device::{Device, FormatOptions};
use crate::error::{Error, Result};
use crate::exec::{IfExists, Intent, PfsCommand};
use crate::index::{Deferred, IndexStore, KvRead, MemIndex, Overlay, SledIndex, Writes};
use crate::log::{self, Appender, LogEnd, LogPos, ScanEvent, SegmentMap};
use crate::prune::{PruneOptions, PruneReport, TidRange};
use crate::record::{
    CHUNK_DATA_OFFSET, CHUNK_SIZE, Change, FramedChunk, Hash, Partial, Record, Role,
    frame_chunk_in_place,
};
use crate::schema::{self, PfsRecord};
use crate::writer::{self, Outcome, Shared, Stats, Submission, Work, Writer};

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The device: an image file or a block device.
    pub device: PathBuf,
    /// Where the sled index lives; `None` keeps the index in memory (tests), rebuilt from the log
    /// at every open.
    pub index_dir: Option<PathBuf>,
    /// Format the device first when it does not exist yet (the embedded default image).
    pub create: Option<FormatOptions>,
    /// Discard the index and rebuild it from the device alone.
    pub rebuild_index: bool,
    /// Segments kept free for deletes, so that a full device can still be cleaned up.
    pub reserve_segments: usize,
}

impl EngineOptions {
    /// Options for `device` with its index in `index_dir`, creating nothing.
    pub fn new(device: impl Into<PathBuf>, index_dir: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            device: device.into(),
            index_dir: Some(index_dir.into()),
            create: None,
            rebuild_index: false,
            reserve_segments: 1,
        }
    }
}

/// Options for a new PFS.
#[derive(Debug, Clone, Copy)]
pub struct PfsOptions {
    /// Master or slave.
    pub role: Role,
    /// Keep only the current state.
    pub nohistory: bool,
    /// The shared UUID to adopt (a slave takes its master's); a new one when `None`.
    pub shared_uuid: Option<[u8; 16]>,
}

impl Default for PfsOptions {
    fn default() -> PfsOptions {
        PfsOptions {
            role: Role::Master,
            nohistory: false,
            shared_uuid: None,
        }
    }
}

/// A PFS as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfsInfo {
    /// Its name on this node.
    pub name: PfsName,
    /// Unique to this PFS.
    pub uuid: [u8; 16],
    /// Shared by a master and its slaves.
    pub shared_uuid: [u8; 16],
    /// Master or slave.
    pub role: Role,
    /// Whether old versions are dropped at once.
    pub nohistory: bool,
    /// When it was created.
    pub created: Tid,
    /// The newest committed TID; for a slave, the synced TID.
    pub head: Tid,
    /// The history chain at the head.
    pub head_chain: Hash,
    /// Reads before this TID are refused as pruned.
    pub history_floor: Tid,
    /// A slave's progress inside a partly received TID.
    pub partial: Option<Partial>,
    /// The master's head as last reported to a slave.
    pub master_head: Tid,
    /// How much history the PFS keeps.
    pub retention: Retention,
    /// TID ranges `[from, to)` that prunes made unreadable, oldest first.
    pub pruned: Vec<TidRange>,
}

impl PfsInfo {
    pub(crate) fn from_record(r: PfsRecord) -> Result<PfsInfo> {
        Ok(PfsInfo {
            name: PfsName::new(r.name.clone()).map_err(|e| Error::Index(e.to_string()))?,
            uuid: r.uuid,
            shared_uuid: r.shared_uuid,
            role: r.role,
            nohistory: r.nohistory,
            created: r.created,
            head: r.head,
            head_chain: r.head_chain,
            history_floor: r.history_floor,
            partial: r.partial,
            master_head: r.master_head,
            retention: r.retention,
            pruned: r.pruned,
        })
    }
}

/// Mode and modification time of an entry being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits, at most `0o7777`.
    pub mode: u32,
    /// Modification time in ns since the epoch.
    pub mtime_ns: i64,
}

impl Attrs {
    /// `mode` with the current time.
    pub fn now(mode: u32) -> Attrs {
        Attrs {
            mode,
            mtime_ns: i64::try_from(Tid::now().get()).unwrap_or(i64::MAX),
        }
    }
}

/// Replicated changes for a slave, as one durable step.
#[derive(Debug, Clone, Default)]
pub struct ApplyBatch {
    /// Chunk data the changes (or a later batch's changes) reference. `Bytes`, so that a
    /// receiver can hand over slices of the batch it received without copying them.
    pub chunks: Vec<bytes::Bytes>,
    /// Whole changes, in TID order.
    pub changes: Vec<Change>,
    /// Progress inside the next, partly sent, change.
    pub partial: Option<Partial>,
    /// The master's head TID.
    pub master_head: Tid,
}

/// Replicated changes whose chunks are hashed and framed as records, ready for
/// [`Engine::apply_ready`].
pub struct ReadyBatch {
    chunks: Vec<FramedChunk>,
    changes: Vec<Change>,
    partial: Option<Partial>,
    master_head: Tid,
}

impl std::fmt::Debug for ReadyBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyBatch")
            .field("chunks", &self.chunks.len())
            .field("changes", &self.changes.len())
            .field("partial", &self.partial)
            .field("master_head", &self.master_head)
            .finish()
    }
}

impl ReadyBatch {
    /// The changes, in TID order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
}

/// A slave's checkpoint after an apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last TID fully applied.
    pub synced: Tid,
    /// Progress inside the next TID.
    pub partial: Option<Partial>,
}

/// Space on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceInfo {
    /// Bytes of the device.
    pub device_bytes: u64,
    /// Bytes per segment.
    pub segment_bytes: u64,
    /// Segment slots.
    pub segments_total: u64,
    /// Segment slots in use.
    pub segments_used: u64,
    /// Bytes that space reclaim can give back, as [`Engine::space_usage`] last estimated them
    /// (0 before it ran).
    pub reclaimable_bytes: u64,
}

/// Where the bytes of a device go, from [`Engine::space_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceUsage {
    /// Bytes of the chunk records some kept version of any PFS references (each chunk once).
    pub live_bytes: u64,
    /// Bytes in segments in use, except the segment being written, less `live_bytes`: what
    /// space reclaim can give back. An estimate from above: the records of commits, events and
    /// checkpoints count as reclaimable, and they are small next to file data.
    pub reclaimable_bytes: u64,
    /// Per PFS, the bytes of the chunks its kept versions reference. A chunk two PFSes share
    /// counts in each, so these may add up to more than `live_bytes`.
    pub pfs_used: Vec<(PfsName, u64)>,
}

impl SpaceInfo {
    /// Bytes in segments that are in use.
    pub fn used_bytes(&self) -> u64 {
        self.segments_used * self.segment_bytes
    }
    /// Bytes in free segments.
    pub fn free_bytes(&self) -> u64 {
        (self.segments_total - self.segments_used) * self.segment_bytes
    }
}

/// An open storage engine. Cheap to clone; the last clone dropped closes it.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub dev: Arc<Device>,
    pub index: Arc<dyn IndexStore>,
    pub map: Arc<RwLock<SegmentMap>>,
    pub shared: Arc<Shared>,
    tx: Mutex<Option<SyncSender<Submission>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    fn stop(&self) {
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = writer {
            if h.join().is_err() {
                tracing::error!("the storage writer thread panicked");
            }
            self.dev.unlock();
        }
    }

    fn sender(&self) -> Result<SyncSender<Submission>> {
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(Error::ShuttingDown)
    }
}

impl Engine {
    /// Opens the engine on a device: repairs what a crash left, replays the log into the index
    /// (rebuilding the index when it is missing, corrupt or from another volume), and starts
    /// the writer.
    pub fn open(opts: EngineOptions) -> Result<Engine> {
        if let Some(f) = &opts.create
            && !opts.device.exists()
        {
            tracing::info!(device = %opts.device.display(), "creating and formatting the device image");
            Device::format(&opts.device, f)?;
        }
        let dev = Arc::new(Device::open(&opts.device)?);
        // What an earlier process wrote (and a crash left in the page cache) becomes durable
        // before anything is built on it.
        dev.sync()?;
        let shared = Arc::new(Shared::default());
        let mut map = SegmentMap::load(&dev)?;
        let (backend, fresh) = open_index(opts.index_dir.as_deref(), opts.rebuild_index)?;
        let index: Arc<dyn IndexStore> = Arc::new(Deferred::new(backend)?);
        if fresh && log::log_start(&map).is_some() {
            if opts.index_dir.is_some() && !opts.rebuild_index {
                tracing::warn!(device = %opts.device.display(), "the device has no index: rebuilding it from the log");
            }
            shared
                .stats
                .index_rebuilds
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let end = recover(&dev, &map, &*index, &shared)?;
        let next_seg_seq = map.max_seq() + 1;
        for seq in &end.stale_segments {
            let slot = map.by_seq[seq].slot;
            tracing::warn!(seq, slot, "clearing a segment left by an unfinished write");
            dev.write_at(
                &vec![0u8; crate::device::BLOCK as usize],
                dev.superblock().slot_offset(slot),
            )?;
            map.remove(*seq);
        }
        if !end.stale_segments.is_empty() {
            dev.sync()?;
        }
        if let Some((lsn, why)) = &end.torn {
            tracing::warn!(lsn = format_args!("{lsn:#x}"), reason = %why, "cut a torn log tail left by a crash");
        }
        let sb = dev.superblock();
        let last = end.tail.map_or(0, |t| t.prev_seq);
        let app = Appender {
            volume: sb.volume_uuid,
            seg_size: sb.segment_size,
            tail: end.tail.map(|t| {
                let (seq, off) = t.split(sb.segment_size);
                (map.by_seq[&seq], off)
            }),
            next_unit_seq: end.max_seen_seq + 1,
            next_seg_seq,
            durable_seq: last,
            last_unit_seq: last,
            units: Vec::new(),
            new_segments: Vec::new(),
            reserve_slots: opts.reserve_segments,
        };
        let map = Arc::new(RwLock::new(map));
        let (tx, rx) = std::sync::mpsc::sync_channel::<Submission>(256);
        let w = Writer {
            dev: Arc::clone(&dev),
            index: Arc::clone(&index),
            map: Arc::clone(&map),
            app,
            shared: Arc::clone(&shared),
            pending: Writes::new(),
            known_chunks: ChunkFilter::build(&*index)?,
            unsynced: 0,
            reclaim: crate::reclaim::ReclaimState::at_open(&*index)?,
        };
        let handle = std::thread::Builder::new()
            .name("repld-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| Error::io("spawn the writer thread", e))?;
        let inner = Inner {
            dev,
            index,
            map,
            shared,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
        };
        Ok(Engine {
            inner: Arc::new(inner),
        })
    }

    /// Stops the writer after it has made everything durable. Later calls fail with
    /// [`Error::ShuttingDown`].
    pub fn close(&self) {
        self.inner.stop();
    }

    /// The engine's counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.shared.stats
    }

    /// Why the engine stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.poisoned()
    }

    /// The device's superblock.
    pub fn superblock(&self) -> &crate::device::Superblock {
        self.inner.dev.superblock()
    }

    /// Space on the device.
    pub fn space(&self) -> SpaceInfo {
        let map = self
            .inner
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sb = self.inner.dev.superblock();
        SpaceInfo {
            device_bytes: sb.device_size,
            segment_bytes: sb.segment_size,
            segments_total: sb.slot_count,
            segments_used: sb.slot_count - map.free_slots() as u64,
            reclaimable_bytes: self
                .inner
                .shared
                .reclaimable
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Works out where the device's bytes go: live chunk data, per PFS and in all, and what space
    /// reclaim can give back. Reads every version of every PFS (not for hot paths: the daemon's
    /// reclaim worker runs it now and then); [`Engine::space`] reports the last result.
    pub fn space_usage(&self) -> Result<SpaceUsage> {
        use std::collections::HashMap;
        let mut all: HashMap<Hash, u32> = HashMap::new();
        let mut pfs_used = Vec::new();
        for p in schema::all_pfs(self.kv())? {
            let mut own: HashMap<Hash, u32> = HashMap::new();
            let (start, end) = schema::pfs_space_range(b'V', p.id);
            crate::prune::for_each(self.kv(), &start, &end, |_, raw| {
                for c in schema::VersionVal::decode(raw)?.meta.chunks {
                    own.insert(c.hash, c.len);
                }
                Ok(())
            })?;
            pfs_used.push((
                PfsName::new(p.name.clone()).map_err(|e| Error::Index(e.to_string()))?,
                own.values().map(|l| u64::from(*l)).sum(),
            ));
            all.extend(own);
        }
        pfs_used.sort();
        let live_bytes: u64 = all
            .values()
            .map(|l| (crate::record::RECORD_HEADER + 32) as u64 + u64::from(*l))
            .sum();
        let space = self.space();
        let reclaimable_bytes = space
            .used_bytes()
            .saturating_sub(space.segment_bytes)
            .saturating_sub(live_bytes);
        self.inner
            .shared
            .reclaimable
            .store(reclaimable_bytes, std::sync::atomic::Ordering::Relaxed);
        let usage = SpaceUsage {
            live_bytes,
            reclaimable_bytes,
            pfs_used,
        };
        *self
            .inner
            .shared
            .last_usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(usage.clone());
        Ok(usage)
    }

    /// What [`Engine::space_usage`] found when it last ran, if it ran.
    pub fn last_space_usage(&self) -> Option<SpaceUsage> {
        self.inner
            .shared
            .last_usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// One bounded step of space reclaim: cleans part of the oldest segment of the log, reading
    /// at most about `budget_bytes` of it, copying its live records to the head of the log, and
    /// freeing the segment once it is all read. Runs on the writer thread between ordinary
    /// groups; see [`crate::reclaim`]. Call it again while [`ReclaimStep::in_pass`] says so.
    ///
    /// [`ReclaimStep::in_pass`]: crate::ReclaimStep::in_pass
    pub fn reclaim_step(&self, budget_bytes: u64) -> Result<crate::ReclaimStep> {
        match self.submit(Work::Reclaim(budget_bytes))? {
            Outcome::Reclaimed(step) => Ok(step),
            other => Err(Error::Index(format!("unexpected writer outcome {other:?}"))),
        }
    }

    /// Every entry of the index except the position it covers, in key order: for tests that
    /// compare an index kept up by the writer (and replay) with one rebuilt from the device.
    #[doc(hidden)]
    pub fn index_dump(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        crate::prune::for_each(self.kv(), b"", &[0xFF], |k, v| {
            if k != schema::COVERED {
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(())
        })?;
        Ok(out)
    }

    pub(crate) fn submit(&self, work: Work) -> Result<Outcome> {
        writer::submit(&self.inner.sender()?, work)
    }

    pub(crate) fn kv(&self) -> &dyn KvRead {
        &*self.inner.index
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        self.submit(Work::Sync).map(|_| ())
    }

    // ----- PFS catalog -----

    /// Creates a PFS.
    pub fn create_pfs(&self, name: &PfsName, opts: PfsOptions) -> Result<PfsInfo> {
        self.submit(Work::Pfs(PfsCommand::Create {
            name: name.to_string(),
            role: opts.role,
            nohistory: opts.nohistory,
            shared_uuid: opts.shared_uuid,
        }))?;
        self.pfs(name)
    }

    /// Changes a PFS's role or history setting.
    pub fn configure_pfs(
        &self,
        name: &PfsName,
        role: Option<Role>,
        nohistory: Option<bool>,
    ) -> Result<PfsInfo> {
        self.submit(Work::Pfs(PfsCommand::Configure {
            name: name.to_string(),
            role,
            nohistory,
        }))?;
        self.pfs(name)
    }

    /// Sets the PFS's retention policy (a slave's is its own, independent of its master's).
    /// Nothing is pruned until [`Engine::prune`] runs.
    pub fn set_retention(&self, name: &PfsName, policy: Retention) -> Result<PfsInfo> {
        self.submit(Work::Pfs(PfsCommand::SetRetention {
            name: name.to_string(),
            policy,
        }))?;
        self.pfs(name)
    }

    /// Prunes the PFS by its retention policy, durably: the prune is a record in the log, so
    /// replay and an index rebuild give the same result. See [`crate::prune`] for what is kept.
    pub fn prune(&self, name: &PfsName, opts: PruneOptions) -> Result<PruneReport> {
        match self.submit(Work::Prune {
            pfs: name.to_string(),
            opts,
        })? {
            Outcome::Pruned(report) => Ok(report),
            other => Err(Error::Index(format!("unexpected writer outcome {other:?}"))),
        }
    }

    /// What [`Engine::prune`] would remove now, without changing anything (a dry run).
    pub fn prune_plan(&self, name: &PfsName, opts: PruneOptions) -> Result<PruneReport> {
        let p = self.record(name)?;
        crate::prune::plan(self.kv(), &p, &opts, &|lsn| self.record_len(lsn))
    }

    /// Destroys a PFS and everything in it.
    pub fn destroy_pfs(&self, name: &PfsName) -> Result<()> {
        self.submit(Work::Pfs(PfsCommand::Destroy {
            name: name.to_string(),
        }))
        .map(|_| ())
    }

    /// Every PFS on the device, by name.
    pub fn list_pfs(&self) -> Result<Vec<PfsInfo>> {
        let mut all: Vec<PfsInfo> = schema::all_pfs(self.kv())?
            .into_iter()
            .map(PfsInfo::from_record)
            .collect::<Result<_>>()?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// One PFS.
    pub fn pfs(&self, name: &PfsName) -> Result<PfsInfo> {
        PfsInfo::from_record(self.record(name)?)
    }

    pub(crate) fn record(&self, name: &PfsName) -> Result<PfsRecord> {
        schema::pfs_by_name(self.kv(), name.as_str())?
            .ok_or_else(|| Error::NoSuchPfs(name.to_string()))
    }

    /// Names `snapshot` for the PFS at `at` (the head when `None`). Returns its TID.
    pub fn snapshot_create(&self, name: &PfsName, snapshot: &str, at: Option<Tid>) -> Result<Tid> {
        self.submit(Work::Pfs(PfsCommand::Snapshot {
            name: name.to_string(),
            snapshot: snapshot.to_owned(),
            at,
        }))?;
        schema::snapshot(self.kv(), self.record(name)?.id, snapshot)?
            .ok_or_else(|| Error::NoSuchSnapshot(snapshot.to_owned()))
    }

    /// The PFS's snapshots, by name.
    pub fn snapshot_list(&self, name: &PfsName) -> Result<Vec<(String, Tid)>> {
        schema::snapshots(self.kv(), self.record(name)?.id)
    }

    /// Deletes a snapshot name (the TID itself stays readable while history keeps it).
    pub fn snapshot_delete(&self, name: &PfsName, snapshot: &str) -> Result<()> {
        self.submit(Work::Pfs(PfsCommand::SnapshotDelete {
            name: name.to_string(),
            snapshot: snapshot.to_owned(),
        }))
        .map(|_| ())
    }

    /// A receiver of the PFS's head TID, updated after each durable commit or apply.
    pub fn subscribe(&self, name: &PfsName) -> Result<watch::Receiver<Tid>> {
        let rec = self.record(name)?;
        let mut heads = self
            .inner
            .shared
            .heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(heads
            .entry(rec.id)
            .or_insert_with(|| watch::channel(rec.head).0)
            .subscribe())
    }

    // ----- writes -----

    /// Starts a transaction on a master PFS. Nothing is visible until [`Txn::commit`].
    pub fn begin(&self, name: &PfsName) -> Result<Txn> {
        let rec = self.record(name)?;
        if rec.role == Role::Slave {
            return Err(Error::ReadOnlySlave(name.to_string()));
        }
        Ok(Txn {
            id: self.inner.shared.txn_begin(),
            engine: self.clone(),
            pfs: name.to_string(),
            intents: Vec::new(),
            chunks: Vec::new(),
            chunk_bytes: 0,
            inflight: VecDeque::new(),
        })
    }

    /// Applies replicated changes to a slave PFS, durably, with its new checkpoint. Chunks are
    /// hashed here; a change whose chunks did not arrive intact is refused. Changes already
    /// applied are skipped, so a repeated batch is harmless.
    pub fn apply(&self, name: &PfsName, batch: ApplyBatch) -> Result<Checkpoint> {
        self.apply_ready(name, self.prepare_apply(batch)?)
    }

    /// The CPU work of [`Engine::apply`]: hashes the received chunks and frames them as records.
    /// It reads and writes nothing, so a receiver runs it for the next batch while the writer
    /// makes the previous one durable.
    pub fn prepare_apply(&self, batch: ApplyBatch) -> Result<ReadyBatch> {
        let chunks = batch
            .chunks
            .into_iter()
            .map(|d| {
                if d.len() > CHUNK_SIZE {
                    return Err(Error::TooLarge {
                        what: "chunk".into(),
                        size: d.len() as u64,
                        limit: CHUNK_SIZE as u64,
                    });
                }
                Ok(FramedChunk::received(d).1)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ReadyBatch {
            chunks,
            changes: batch.changes,
            partial: batch.partial,
            master_head: batch.master_head,
        })
    }

    /// Applies a batch that [`Engine::prepare_apply`] made ready, durably, with its new
    /// checkpoint.
    pub fn apply_ready(&self, name: &PfsName, batch: ReadyBatch) -> Result<Checkpoint> {
        match self.submit(Work::Apply {
            pfs: name.to_string(),
            chunks: batch.chunks,
            changes: batch.changes,
            partial: batch.partial,
            master_head: batch.master_head,
        })? {
            Outcome::Applied { head, partial } => Ok(Checkpoint {
                synced: head,
                partial,
            }),
            other => Err(Error::Index(format!("unexpected writer outcome {other:?}"))),
        }
    }
}

/// Opens the index; a missing or unreadable one starts empty (to be rebuilt). Returns whether it
/// starts empty.
fn open_index(dir: Option<&Path>, rebuild: bool) -> Result<(Arc<dyn IndexStore>, bool)> {
    let Some(dir) = dir else {
        return Ok((Arc::new(MemIndex::default()), true));
    };
    let existed = dir.exists();
    match SledIndex::open(dir) {
        Ok(ix) if rebuild || !existed => {
            if rebuild {
                tracing::warn!(index = %dir.display(), "discarding the index to rebuild it from the device");
            }
            ix.clear()?;
            Ok((Arc::new(ix), true))
        }
        Ok(ix) => Ok((Arc::new(ix), false)),
        Err(sled::Error::Io(e)) if crate::index::is_locked(&e) => Err(Error::Index(format!(
            "the index in {} is locked by another process ({e}); stop it first",
            dir.display()
        ))),
        Err(e) => {
            tracing::warn!(index = %dir.display(), error = %e, "the index is unreadable; rebuilding it from the device");
            std::fs::remove_dir_all(dir)
                .map_err(|e| Error::io(format!("remove {}", dir.display()), e))?;
            Ok((Arc::new(SledIndex::open(dir)?), true))
        }
    }
}

/// Brings the index up to the end of the log. Rebuilds it from the start when it does not fit
/// the device.
fn recover(
    dev: &Device,
    map: &SegmentMap,
    index: &dyn IndexStore,
    shared: &Shared,
) -> Result<LogEnd> {
    let volume = dev.superblock().volume_uuid.to_vec();
    let mut covered = None;
    let mut problem = None;
    match index.get(schema::VOLUME)? {
        Some(v) if v == volume && index.get(schema::LAYOUT)? != Some(layout()) => {
            problem = Some("the index has the layout of another repld version".to_owned());
        }
        Some(v) if v == volume => match index.get(schema::COVERED)?.map(|v| schema::decode_pos(&v))
        {
            Some(Ok(pos)) => covered = Some(pos),
            Some(Err(e)) => problem = Some(format!("unreadable covered position: {e}")),
            None => {}
        },
        Some(_) => problem = Some("the index belongs to another volume".to_owned()),
        None => {
            if !index.range(b"", &[0xFF], 1)?.is_empty() {
                problem = Some("the index has no volume id".to_owned());
            }
        }
    }
    if problem.is_none() {
        match replay(dev, map, index, covered) {
            Ok(end) => return Ok(end),
            Err(e @ Error::Corruption { .. }) => {
                shared
                    .stats
                    .corruption_detected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
            Err(Error::Index(why)) => problem = Some(why),
            Err(e) => return Err(e),
        }
    }
    let why = problem.expect("set on every path that reaches here");
    tracing::warn!(reason = %why, "rebuilding the index from the device");
    shared
        .stats
        .index_rebuilds
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    index.clear()?;
    let known = covered.map_or(0, |c| c.lsn);
    replay_from(dev, map, index, None, known).inspect_err(|e| {
        if matches!(e, Error::Corruption { .. }) {
            shared
                .stats
                .corruption_detected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
}

fn layout() -> Vec<u8> {
    schema::LAYOUT_VERSION.to_le_bytes().to_vec()
}

fn replay(
    dev: &Device,
    map: &SegmentMap,
    index: &dyn IndexStore,
    covered: Option<LogPos>,
) -> Result<LogEnd> {
    let known = covered.map_or(0, |c| c.lsn);
    replay_from(dev, map, index, covered, known)
}

/// Replays the log from `start` into the index, or rebuilds the index from the whole log when
/// `start` is `None`.
///
/// Replay from a position applies records in log order; copies that space reclaim made only move
/// pointers there (`apply_relocated`), since their originals were applied already. A rebuild
/// cannot apply records in log order: a copy sits at the head of the log but belongs where its
/// original was. So it reads the log twice: pass 1 applies chunk records (their order does not
/// matter) and collects every other record with its logical position (the original LSN of a
/// copy, the LSN otherwise); pass 2 applies them sorted by that position, reading each again.
fn replay_from(
    dev: &Device,
    map: &SegmentMap,
    index: &dyn IndexStore,
    start: Option<LogPos>,
    known_durable: u64,
) -> Result<LogEnd> {
    const FLUSH_EVERY: usize = 200_000;
    let rebuild = start.is_none();
    let start = start.or_else(|| log::log_start(map)).unwrap_or(LogPos {
        lsn: 0,
        prev_seq: 0,
    });
    let mut ov = Overlay::new(index, Writes::new());
    let mut records = 0u64;
    let mut later: Vec<(u64, u64)> = Vec::new();
    let decode_at = |lsn: u64, kind: u8, payload: &[u8]| {
        Record::decode(kind, payload).map_err(|e| {
            let (slot, offset) = map.locate(lsn).unwrap_or((0, 0));
            Error::Corruption {
                lsn,
                slot,
                offset,
                detail: format!("record passes its checksum but does not decode: {e}"),
            }
        })
    };
    let end = log::scan(dev, map, start, known_durable, u64::MAX, |ev| {
        match ev {
            ScanEvent::Record(lsn, f) => {
                records += 1;
                if rebuild {
                    if f.kind == crate::record::KIND_CHUNK_CODE {
                        apply_record(&mut ov, lsn, &decode_at(lsn, f.kind, f.payload)?)?;
                    } else {
                        later.push((f.orig_lsn.unwrap_or(lsn), lsn));
                    }
                } else {
                    let rec = decode_at(lsn, f.kind, f.payload)?;
                    if f.orig_lsn.is_some() {
                        crate::apply::apply_relocated(&mut ov, lsn, &rec)?;
                    } else {
                        apply_record(&mut ov, lsn, &rec)?;
                    }
                }
            }
            ScanEvent::UnitEnd(pos) => {
                if ov.writes.len() >= FLUSH_EVERY {
                    // A rebuild says what it covers only at the end: until then, an index that
                    // a crash left half built has no volume id and is rebuilt again.
                    if !rebuild {
                        ov.writes
                            .insert(schema::COVERED.to_vec(), Some(schema::encode_pos(pos)));
                    }
                    index.apply_owned(std::mem::take(&mut ov.writes))?;
                }
            }
        }
        Ok(())
    })?;
    if rebuild {
        // The log's records before its end, in the order they were first written.
        later.sort_unstable();
        let until = end.tail.map_or(0, |t| t.lsn);
        for (_, lsn) in later {
            if lsn >= until {
                continue;
            }
            let (kind, _, skip, payload) = crate::reclaim::read_record_raw(dev, map, lsn)?;
            let rec = decode_at(lsn, kind, &payload)?;
            crate::apply::apply_record_skipping(&mut ov, lsn, &rec, &skip)?;
            if ov.writes.len() >= FLUSH_EVERY {
                index.apply_owned(std::mem::take(&mut ov.writes))?;
            }
        }
    }
    let mut writes = ov.writes;
    if let Some(tail) = end.tail {
        writes.insert(schema::COVERED.to_vec(), Some(schema::encode_pos(tail)));
    }
    writes.insert(
        schema::VOLUME.to_vec(),
        Some(dev.superblock().volume_uuid.to_vec()),
    );
    writes.insert(schema::LAYOUT.to_vec(), Some(layout()));
    index.apply_owned(writes)?;
    if records > 0 {
        tracing::info!(records, "replayed the log into the index");
    }
    Ok(end)
}

/// A transaction being built. Data is written to the log as it is added; nothing becomes
/// visible until [`Txn::commit`] returns. Dropping it uncommitted leaves only unreferenced
/// chunks, which space reclaim removes.
pub struct Txn {
    /// Its id: space reclaim keeps the chunks it placed until it ends.
    id: u64,
    engine: Engine,
    pfs: String,
    intents: Vec<Intent>,
    chunks: Vec<Vec<u8>>,
    chunk_bytes: usize,
    inflight: VecDeque<Receiver<Result<Outcome>>>,
}

impl Drop for Txn {
    fn drop(&mut self) {
        // Chunks still in flight belong to a transaction that is over: committed, or abandoned.
        for earlier in self.inflight.drain(..) {
            let _ = writer::wait(earlier);
        }
        self.engine.inner.shared.txn_done(self.id);
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Its TID; `None` when it changed nothing.
    pub tid: Option<Tid>,
    /// Entries it created, changed or deleted.
    pub entries: usize,
}

/// Chunk bytes a transaction buffers before sending them ahead to the writer.
pub(crate) const SEND_AHEAD: usize = 8 << 20;
/// Chunk batches a transaction may have in flight.
pub(crate) const MAX_INFLIGHT: usize = 4;

impl Txn {
    /// Adds a file with the content read from `data` (streamed, in chunks). Returns its size.
    pub fn put_file(&mut self, path: &EntryPath, attrs: Attrs, data: &mut dyn Read) -> Result<u64> {
        check_mode(path, attrs.mode)?;
        let mut refs = Vec::new();
        let mut size = 0u64;
        let shared = Arc::clone(&self.engine.inner.shared);
        let bufs = &shared.chunk_bufs;
        loop {
            // Read straight into the record that will go to the device: no copy of the data.
            let mut buf = bufs.take();
            let n = read_full(data, &mut buf[CHUNK_DATA_OFFSET..])
                .map_err(|e| Error::io(format!("read the content of `{path}`"), e))?;
            if n == 0 {
                bufs.give(buf);
                break;
            }
            let (cref, rec) = if n < CHUNK_SIZE {
                // A short last chunk (every small file's only one) goes into a buffer of its own
                // size, so that it does not hold 1 MiB while it waits in the transaction.
                let framed = frame_chunk_in_place(buf[..CHUNK_DATA_OFFSET + n].to_vec(), n);
                bufs.give(buf);
                framed
            } else {
                frame_chunk_in_place(buf, n)
            };
            refs.push(cref);
            size += n as u64;
            self.chunk_bytes += rec.len();
            self.chunks.push(rec);
            if self.chunk_bytes >= SEND_AHEAD {
                self.send_ahead()?;
            }
            if n < CHUNK_SIZE {
                break;
            }
        }
        self.intents.push(Intent::PutFile {
            path: path.clone(),
            mode: attrs.mode,
            mtime_ns: attrs.mtime_ns,
            size,
            chunks: refs,
        });
        Ok(size)
    }

    /// Adds a file with `data` as its content.
    pub fn put_bytes(&mut self, path: &EntryPath, attrs: Attrs, data: &[u8]) -> Result<()> {
        self.put_file(path, attrs, &mut &data[..]).map(|_| ())
    }

    /// Adds a directory. With `exist_ok`, an existing directory takes the new attributes
    /// (as an import wants); without it, an existing entry fails the commit.
    pub fn mkdir(&mut self, path: &EntryPath, attrs: Attrs, exist_ok: bool) -> Result<()> {
        let existing = if exist_ok {
            IfExists::Update
        } else {
            IfExists::Fail
        };
        self.put_dir(path, attrs, existing)
    }

    /// Makes sure a directory exists, as `mkdir -p` does: creates it with `attrs` when it is
    /// missing and leaves an existing one untouched.
    pub fn ensure_dir(&mut self, path: &EntryPath, attrs: Attrs) -> Result<()> {
        self.put_dir(path, attrs, IfExists::Keep)
    }

    fn put_dir(&mut self, path: &EntryPath, attrs: Attrs, existing: IfExists) -> Result<()> {
        check_mode(path, attrs.mode)?;
        self.intents.push(Intent::PutDir {
            path: path.clone(),
            mode: attrs.mode,
            mtime_ns: attrs.mtime_ns,
            existing,
        });
        Ok(())
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, path: &EntryPath, target: &str, attrs: Attrs) -> Result<()> {
        check_mode(path, attrs.mode)?;
        self.intents.push(Intent::Symlink {
            path: path.clone(),
            target: target.to_owned(),
            mode: attrs.mode,
            mtime_ns: attrs.mtime_ns,
        });
        Ok(())
    }

    /// Deletes an entry; a non-empty directory only when `recursive`. A missing entry fails the
    /// commit.
    pub fn delete(&mut self, path: &EntryPath, recursive: bool) -> Result<()> {
        self.push_delete(path, recursive, false)
    }

    /// Deletes an entry if it exists (as an import's deletes do).
    pub fn delete_if_exists(&mut self, path: &EntryPath, recursive: bool) -> Result<()> {
        self.push_delete(path, recursive, true)
    }

    fn push_delete(&mut self, path: &EntryPath, recursive: bool, missing_ok: bool) -> Result<()> {
        self.intents.push(Intent::Delete {
            path: path.clone(),
            recursive,
            missing_ok,
        });
        Ok(())
    }

    /// Moves an entry (with everything below it). An existing file or symlink at `to` is
    /// replaced, as POSIX `rename` does; an existing directory fails the commit.
    pub fn rename(&mut self, from: &EntryPath, to: &EntryPath) -> Result<()> {
        self.push_rename(from, to, true)
    }

    /// Moves an entry, failing the commit with `AlreadyExists` if anything exists at `to`.
    pub fn rename_noreplace(&mut self, from: &EntryPath, to: &EntryPath) -> Result<()> {
        self.push_rename(from, to, false)
    }

    fn push_rename(&mut self, from: &EntryPath, to: &EntryPath, replace: bool) -> Result<()> {
        self.intents.push(Intent::Rename {
            from: from.clone(),
            to: to.clone(),
            replace,
        });
        Ok(())
    }

    /// Operations added so far.
    pub fn len(&self) -> usize {
        self.intents.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.intents.is_empty()
    }

    /// Bytes of data added and not yet sent to the writer.
    pub fn buffered_bytes(&self) -> usize {
        self.chunk_bytes
    }

    fn send_ahead(&mut self) -> Result<()> {
        let chunks = std::mem::take(&mut self.chunks);
        self.chunk_bytes = 0;
        self.inflight.push_back(writer::send(
            &self.engine.inner.sender()?,
            Work::Chunks {
                txn: self.id,
                chunks,
            },
        )?);
        while self.inflight.len() > MAX_INFLIGHT {
            let rx = self.inflight.pop_front().expect("non-empty");
            writer::wait(rx)?;
        }
        Ok(())
    }

    /// Validates and commits the transaction durably. Returns its TID, or `None` when it changed
    /// nothing (every entry already as given).
    pub fn commit(self) -> Result<Option<Tid>> {
        self.commit_counted().map(|c| c.tid)
    }

    /// Like [`Txn::commit`], also saying how many entries the commit changed.
    pub fn commit_counted(mut self) -> Result<Committed> {
        let started = std::time::Instant::now();
        let work = Work::Commit {
            txn: self.id,
            pfs: std::mem::take(&mut self.pfs),
            intents: std::mem::take(&mut self.intents),
            chunks: std::mem::take(&mut self.chunks),
        };
        let rx = writer::send(&self.engine.inner.sender()?, work)?;
        for earlier in self.inflight.drain(..) {
            writer::wait(earlier)?;
        }
        match writer::wait(rx)? {
            Outcome::Committed(tid, entries) => {
                let stats = &self.engine.inner.shared.stats;
                stats.commit_latency.observe(started.elapsed());
                Ok(Committed { tid, entries })
            }
            other => Err(Error::Index(format!("unexpected writer outcome {other:?}"))),
        }
    }
}

fn check_mode(path: &EntryPath, mode: u32) -> Result<()> {
    if mode & !0o7777 != 0 {
        return Err(Error::Invalid(format!(
            "mode {mode:o} of `{path}` has bits outside 0o7777"
        )));
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
