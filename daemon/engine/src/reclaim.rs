//! Space reclaim: cleaning the oldest segment of the log (its tail) and freeing it.
//!
//! A **pass** cleans one segment, the one with the lowest seq, in bounded **steps** that run on
//! the writer thread between ordinary groups ([`step`]). Each step reads up to a budget of the
//! segment's units and copies the records that are still live to the head of the log, as
//! *relocated* copies ([`crate::record::FLAG_RELOCATED`]: the payload starts with the record's
//! original LSN). The copies are ordinary records of the writer's group: durable with its
//! `fdatasync`, and their index changes (the pointer moves of [`apply_relocated`]) applied with
//! it. The last step writes a [`Record::Reclaim`] naming the dead chunks whose index entries
//! still point into the segment and the pruned commits whose chain links go; then the writer
//! flushes the index (so that its durable position lies past the copies), clears the segment's
//! header and marks the slot free ([`crate::writer::Writer`]). The next segment becomes the start
//! of the log; the chain of segment headers stays whole because only the tail is ever freed.
//!
//! What is live (see `docs/on-disk-format.md`, "What is live, for space reclaim"):
//! - a chunk whose `C` entry points at it and that a version of any PFS references, or that is
//!   **pinned**: placed (written, or found stored and not written again) by a transaction that
//!   is still open, by a slave PFS's apply while that PFS has a partly received TID, or by any
//!   work since the pass began (its view of what versions reference is from its start); and,
//!   while a slave PFS has a partly received TID that began before the engine opened (the pins
//!   are kept in memory), every chunk;
//! - a commit whose `T` entry points at it, or a pruned commit (no `T` entry) that created or
//!   ended a version that still exists. A copy of a commit lists the ops whose versions are gone
//!   (a rebuild does not create them; its ends of older versions still apply), and the reclaim
//!   record of a segment lists the versions that the commits it drops had ended and that are
//!   gone, which a rebuild removes in case an earlier copy created them. So a rebuild recreates
//!   exactly the versions that exist, with their delete TIDs;
//! - every PFS event (they are small, and together they rebuild the catalog, the snapshots and
//!   the pruned ranges, and keep PFS ids from being reused);
//! - the newest checkpoint of each PFS.
//!
//! Readers hold the free gate ([`crate::writer::Shared::free_gate`]) while they read at an LSN
//! they took from the index; a segment is only freed while nobody holds it, and a reader that
//! finds its segment gone looks the record up again (the index already points at the copy).

use std::collections::{HashMap, HashSet};

use repl_types::{EntryPath, Tid};

use crate::apply::{apply_record, apply_relocated};
use crate::device::{BLOCK, Device};
use crate::error::{Error, Result};
use crate::index::{KvRead, Overlay};
use crate::log::{Appender, LogPos, ScanEvent, SegmentMap, scan};
use crate::record::{Change, Hash, Op, Record, frame_relocated, parse_frame};
use crate::schema::{self, VersionVal};
use crate::writer::Shared;

/// What one [`crate::Engine::reclaim_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReclaimStep {
    /// Bytes of the cleaned segment read.
    pub scanned_bytes: u64,
    /// Bytes of live records copied to the head of the log.
    pub copied_bytes: u64,
    /// Segments freed.
    pub freed_segments: u64,
    /// Whether a pass is under way (call again to finish it).
    pub in_pass: bool,
    /// Whether there was nothing to clean: the log has a single segment.
    pub idle: bool,
}

/// Who placed a chunk (wrote it, or found it stored), and so may reference it in a commit to
/// come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pin {
    /// An open transaction.
    Txn(u64),
    /// Replicated changes for a slave PFS, which may stop inside a TID.
    Slave(u32),
}

/// The reclaim state the writer keeps.
#[derive(Default)]
pub(crate) struct ReclaimState {
    pass: Option<Pass>,
    /// Chunks placed by recent work: pinned while their transaction is open, or their slave PFS
    /// has a partly received TID, and, whatever happens to those, until the pass under way
    /// ends (its view of which chunks versions reference is from when it began).
    touched: HashMap<Hash, Pin>,
    /// Pins left by the last [`ReclaimState::forget_pins`].
    pins_kept: usize,
    /// Slave PFSes that had a partly received TID when the engine opened: which chunks it
    /// placed is not known, so every chunk is pinned until that TID is complete.
    partial_at_open: HashSet<u32>,
    /// A segment whose reclaim record is durable and that is to be freed after the group.
    pub pending_free: Option<u64>,
}

impl ReclaimState {
    /// The state for an engine whose index is `kv`.
    pub fn at_open(kv: &dyn KvRead) -> Result<ReclaimState> {
        Ok(ReclaimState {
            partial_at_open: schema::all_pfs(kv)?
                .into_iter()
                .filter(|p| p.partial.is_some())
                .map(|p| p.id)
                .collect(),
            ..ReclaimState::default()
        })
    }

    /// Between passes, drops the pins of work that is over, once they have grown (so that a
    /// long transaction's many pins are not walked at every group).
    pub fn maybe_forget_pins(&mut self, shared: &Shared, kv: &dyn KvRead) {
        if self.pass.is_none() && self.touched.len() > 2 * self.pins_kept + 1024 {
            self.forget_pins(shared, kv);
        }
    }

    /// Drops the pins of work that is over.
    fn forget_pins(&mut self, shared: &Shared, kv: &dyn KvRead) {
        if self.touched.is_empty() {
            return;
        }
        let mut partial: HashMap<u32, bool> = HashMap::new();
        self.touched.retain(|_, pin| match pin {
            Pin::Txn(id) => shared.txn_open(*id),
            Pin::Slave(pfs) => *partial.entry(*pfs).or_insert_with(|| {
                schema::pfs_by_id(kv, *pfs).is_ok_and(|p| p.is_some_and(|p| p.partial.is_some()))
            }),
        });
        self.pins_kept = self.touched.len();
    }

    /// Forgets a pass (after a failed group): the next step starts it again, which is safe,
    /// because copies already made are just records the index points at.
    pub fn abandon(&mut self) {
        self.pass = None;
    }

    /// Notes a chunk placed by `pin`.
    pub fn touch(&mut self, hash: &Hash, pin: Pin) {
        self.touched.insert(*hash, pin);
    }
}

struct Pass {
    seq: u64,
    pos: LogPos,
    /// Chunks some version references, when the pass began.
    vset: HashSet<Hash>,
    /// Per PFS, the create and delete TIDs of every version, when the pass began.
    vtids: HashMap<u32, HashSet<Tid>>,
    /// A slave PFS had a partly received TID: every chunk is pinned.
    pin_all: bool,
    /// Dead chunks whose `C` entry points into the segment: checked again before the free.
    skipped: Vec<(u64, Hash)>,
    /// Pruned commits not copied: their chain links go with the segment.
    links: Vec<(u32, Tid)>,
    /// Versions that pruned commits not copied ended, and that are gone.
    versions: Vec<(u32, EntryPath, Tid)>,
}

/// One step of reclaim: reads up to `budget` bytes of the tail segment and copies its live
/// records into `app`'s units, applying the copies to `ov`.
pub(crate) fn step(
    dev: &Device,
    map: &SegmentMap,
    app: &mut Appender,
    ov: &mut Overlay<'_>,
    rs: &mut ReclaimState,
    budget: u64,
    shared: &Shared,
) -> Result<ReclaimStep> {
    let mut out = ReclaimStep::default();
    if rs.pending_free.is_some() {
        out.in_pass = true;
        return Ok(out);
    }
    let seg = map.seg_size;
    if rs.pass.is_none() {
        let head_seq = app.tail.map(|(h, _)| h.seq);
        let Some((&seq, h)) = map.by_seq.iter().next() else {
            out.idle = true;
            return Ok(out);
        };
        if head_seq.is_none_or(|head| seq >= head) {
            out.idle = true;
            return Ok(out);
        }
        rs.forget_pins(shared, ov);
        let mut vset = HashSet::new();
        let mut vtids: HashMap<u32, HashSet<Tid>> = HashMap::new();
        let all = schema::all_pfs(ov)?;
        rs.partial_at_open
            .retain(|id| all.iter().any(|p| p.id == *id && p.partial.is_some()));
        let pin_all = !rs.partial_at_open.is_empty();
        for p in all {
            let tids = vtids.entry(p.id).or_default();
            let (start, end) = schema::pfs_space_range(b'V', p.id);
            crate::prune::for_each(ov, &start, &end, |k, raw| {
                let v = VersionVal::decode(raw)?;
                tids.insert(schema::version_created(k)?);
                if v.deleted != Tid::MAX {
                    tids.insert(v.deleted);
                }
                vset.extend(v.meta.chunks.iter().map(|c| c.hash));
                Ok(())
            })?;
        }
        rs.pass = Some(Pass {
            seq,
            pos: LogPos {
                lsn: seq * seg + BLOCK,
                prev_seq: h.prev_unit_seq,
            },
            vset,
            vtids,
            pin_all,
            skipped: Vec::new(),
            links: Vec::new(),
            versions: Vec::new(),
        });
    }
    let pass = rs.pass.as_mut().expect("a pass was started");
    let seg_end = (pass.seq + 1) * seg;
    let until = pass.pos.lsn.saturating_add(budget.max(1)).min(seg_end);
    let touched = &rs.touched;
    let start = pass.pos;
    let end = scan(dev, map, start, 0, until, |ev| {
        let ScanEvent::Record(lsn, f) = ev else {
            return Ok(());
        };
        out.scanned_bytes += f.total_len as u64;
        let orig = f.orig_lsn.unwrap_or(lsn);
        let rec = Record::decode(f.kind, f.payload).map_err(|e| Error::Corruption {
            lsn,
            slot: map.locate(lsn).map_or(0, |l| l.0),
            offset: map.locate(lsn).map_or(0, |l| l.1),
            detail: format!("record passes its checksum but does not decode: {e}"),
        })?;
        let copy = match &rec {
            Record::Chunk { hash, .. } => {
                if schema::chunk_loc(ov, hash)?.is_some_and(|l| l.lsn == lsn) {
                    if pass.pin_all || pass.vset.contains(hash) || touched.contains_key(hash) {
                        Some(Vec::new())
                    } else {
                        pass.skipped.push((lsn, *hash));
                        None
                    }
                } else {
                    None
                }
            }
            Record::Commit { pfs, change } => {
                let by_tid = ov.get(&schema::tid_key(*pfs, change.tid))?;
                let (skip, ends) = gone_ops(ov, *pfs, change)?;
                let live = match &by_tid {
                    Some(v) => v.as_slice() == lsn.to_le_bytes(),
                    // A pruned commit: needed while a version it created or ended exists.
                    None => {
                        pass.vtids.get(pfs).is_some_and(|t| t.contains(&change.tid))
                            && (skip.len() < puts(change) || ends)
                    }
                };
                if live {
                    Some(skip)
                } else {
                    if by_tid.is_none() {
                        if ov.get(&schema::link_key(*pfs, change.tid))?.is_some() {
                            pass.links.push((*pfs, change.tid));
                        }
                        // Versions it ended that are gone: a copy made earlier may create them
                        // in a rebuild, which must not keep them.
                        for op in &change.ops {
                            let (path, old) = match op {
                                Op::Put {
                                    path,
                                    supersedes: Some(old),
                                    ..
                                }
                                | Op::Delete {
                                    path,
                                    supersedes: old,
                                } => (path, *old),
                                Op::Put { .. } => continue,
                            };
                            if ov.get(&schema::version_key(*pfs, path, old))?.is_none() {
                                pass.versions.push((*pfs, path.clone(), old));
                            }
                        }
                    }
                    None
                }
            }
            Record::Pfs(_) => Some(Vec::new()),
            Record::Checkpoint { pfs, .. } => schema::pfs_by_id(ov, *pfs)?
                .filter(|p| p.checkpoint_lsn == lsn)
                .map(|_| Vec::new()),
            Record::Reclaim { .. } => None,
        };
        if let Some(skip) = copy {
            let framed = frame_relocated(f.kind, orig, &skip, f.payload);
            out.copied_bytes += framed.len() as u64;
            let at = app.place(framed, map, true)?;
            apply_relocated(ov, at, &rec)?;
        }
        Ok(())
    })?;
    let pos = end.tail.unwrap_or(LogPos {
        lsn: seg_end,
        prev_seq: 0,
    });
    pass.pos = pos;
    if pos.lsn < seg_end && pos.lsn / seg == pass.seq && pos.lsn < until {
        // The units of the segment ended before `until` without the log going on to the next
        // segment: the tail is the head (cannot happen: the head segment is never cleaned).
        return Err(Error::Index(format!(
            "space reclaim: the log ends inside segment {} at {:#x}",
            pass.seq, pos.lsn
        )));
    }
    if pos.lsn < seg_end && pos.lsn / seg == pass.seq {
        out.in_pass = true;
        return Ok(out);
    }
    // The whole segment is read. Chunks skipped as dead may have been pinned since (a
    // transaction deduplicated against them): copy those now; the rest go.
    let pass = rs.pass.take().expect("a pass is under way");
    let mut dead = Vec::new();
    for (lsn, hash) in &pass.skipped {
        if schema::chunk_loc(ov, hash)?.is_none_or(|l| l.lsn != *lsn) {
            continue;
        }
        if pass.pin_all || rs.touched.contains_key(hash) {
            let (kind, orig, _, payload) = read_record_raw(dev, map, *lsn)?;
            let r = Record::decode(kind, &payload).map_err(|e| Error::Index(e.to_string()))?;
            let framed = frame_relocated(kind, orig, &[], &payload);
            out.copied_bytes += framed.len() as u64;
            let at = app.place(framed, map, true)?;
            apply_relocated(ov, at, &r)?;
        } else {
            dead.push(*hash);
        }
    }
    let rec = Record::Reclaim {
        from: pass.seq * seg,
        to: seg_end,
        chunks: dead,
        links: pass.links,
        versions: pass.versions,
    };
    let at = app.place(rec.encode(), map, true)?;
    apply_record(ov, at, &rec)?;
    rs.pending_free = Some(pass.seq);
    Ok(out)
}

/// The ops of a commit whose versions no longer exist (a rebuild does not create them), and
/// whether a version it ended still exists with its TID as the delete TID.
fn gone_ops(kv: &dyn KvRead, pfs: u32, change: &Change) -> Result<(Vec<u32>, bool)> {
    let tid = change.tid;
    let mut skip = Vec::new();
    let mut ends = false;
    for (i, op) in change.ops.iter().enumerate() {
        let old = match op {
            Op::Put {
                path, supersedes, ..
            } => {
                if kv.get(&schema::version_key(pfs, path, tid))?.is_none() {
                    skip.push(i as u32);
                }
                supersedes.map(|o| (path, o))
            }
            Op::Delete { path, supersedes } => Some((path, *supersedes)),
        };
        if let Some((path, old)) = old
            && let Some(v) = kv.get(&schema::version_key(pfs, path, old))?
        {
            ends |= VersionVal::decode(&v)?.deleted == tid;
        }
    }
    Ok((skip, ends))
}

fn puts(change: &Change) -> usize {
    change
        .ops
        .iter()
        .filter(|op| matches!(op, Op::Put { .. }))
        .count()
}

/// The record at `lsn` on the device: its kind, original LSN and payload (without the
/// original-LSN prefix of a copy).
pub(crate) fn read_record_raw(
    dev: &Device,
    map: &SegmentMap,
    lsn: u64,
) -> Result<(u8, u64, Vec<u32>, Vec<u8>)> {
    let (slot, off) = map
        .locate(lsn)
        .ok_or_else(|| Error::Index(format!("no segment holds LSN {lsn:#x}")))?;
    let mut head = [0u8; crate::record::RECORD_HEADER];
    dev.read_at(&mut head, off)?;
    let len = crate::record::payload_len(&head);
    if len > crate::log::MAX_UNIT_BODY {
        return Err(Error::Corruption {
            lsn,
            slot,
            offset: off,
            detail: "record length is impossible".into(),
        });
    }
    let mut buf = vec![0u8; crate::record::RECORD_HEADER + len];
    dev.read_at(&mut buf, off)?;
    let f = parse_frame(&buf).map_err(|why| Error::Corruption {
        lsn,
        slot,
        offset: off,
        detail: why.to_owned(),
    })?;
    Ok((
        f.kind,
        f.orig_lsn.unwrap_or(lsn),
        f.skipped_ops(),
        f.payload.to_vec(),
    ))
}
