//! Prune: which commits and versions of a PFS its retention drops, and how that becomes index
//! state.
//!
//! A prune keeps a set of **points**: commits whose state stays readable. The policy
//! ([`Retention::thin`]) chooses them; the head, the commit each named snapshot sees, and (unless
//! forced) every commit at or after the hold (the oldest checkpoint a paired slave has
//! confirmed) are kept whatever it says. Every other commit is pruned, and a run of pruned commits
//! becomes a **pruned range** `[first pruned commit, next kept commit)`: a read at any TID in it
//! would see the state of a pruned commit, so it is refused with [`Error::Pruned`]. A read at
//! any other TID sees the state of a kept commit (or of nothing, before the first commit), which
//! is exactly what it saw before the prune.
//!
//! A version `[create, delete)` survives when some kept commit `K` has `create ≤ K < delete`
//! (every live version does: the head is kept). The others are dropped from the index, and so
//! are the by-TID entries of pruned commits. The log records a prune as a `Prune` PFS event
//! holding the new ranges; [`apply_prune`] recomputes the same dropped versions from the index
//! as it stands at that point of the log, so replay and `fsck --rebuild-index` give the same
//! result as the prune did.
//!
//! Nothing is deleted from the device: a prune makes records *dead* (no index entry points at
//! them any more), and space reclaim may later copy the live ones out of a sparse segment. What
//! is live is derivable from the index alone (see `docs/on-disk-format.md`).

use std::collections::HashSet;

use repl_types::Tid;

use crate::error::Result;
use crate::index::{KvRead, Overlay};
use crate::record::{Hash, RECORD_HEADER};
use crate::schema::{self, PfsRecord, VersionVal};

/// A half-open range of TIDs `[from, to)` whose state is no longer readable.
pub type TidRange = (Tid, Tid);

/// Most pruned ranges a PFS keeps; ranges closest to each other are merged beyond that (a read
/// there is refused, never answered wrongly).
pub(crate) const MAX_RANGES: usize = 4096;

/// How to prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneOptions {
    /// The time the policy measures ages from.
    pub now: Tid,
    /// The oldest checkpoint a paired slave has confirmed: commits at or after it are kept
    /// unless `force`. `None` when no slave holds history.
    pub hold: Option<Tid>,
    /// Ignore the hold.
    pub force: bool,
}

impl PruneOptions {
    /// Prune at the current time, with no hold.
    pub fn now() -> PruneOptions {
        PruneOptions {
            now: Tid::now(),
            hold: None,
            force: false,
        }
    }
}

/// What a prune removes (or, for a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// The TID ranges that become unreadable, `[from, to)`, oldest first.
    pub ranges: Vec<TidRange>,
    /// Commits pruned.
    pub commits: u64,
    /// Versions of entries dropped.
    pub versions: u64,
    /// Log bytes that become dead: the pruned commit records, and chunk records that no
    /// remaining version of any PFS references. Space reclaim can give them back.
    pub bytes: u64,
    /// Commits the policy would drop but the hold keeps.
    pub held: u64,
    /// The newest commit pruned: a slave whose checkpoint is older needs a full resync.
    pub newest_pruned: Option<Tid>,
}

/// Calls `f` for every entry with `start <= key < end`, a page at a time.
pub(crate) fn for_each(
    kv: &dyn KvRead,
    start: &[u8],
    end: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut from = start.to_vec();
    loop {
        let page = kv.range(&from, end, 4096)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        from = last.clone();
        from.push(0);
        for (k, v) in &page {
            f(k, v)?;
        }
    }
}

/// The commits of a PFS still in the by-TID index, oldest first, with their LSNs.
fn commits(kv: &dyn KvRead, pfs: u32) -> Result<Vec<(Tid, u64)>> {
    schema::commits_after(kv, pfs, Tid::ZERO, usize::MAX)
}

/// Whether a version survives when `kept` (ascending) are the readable commits.
fn survives(created: Tid, v: &VersionVal, kept: &[Tid]) -> bool {
    if v.deleted == Tid::MAX {
        return true;
    }
    let i = kept.partition_point(|k| *k < created);
    kept.get(i).is_some_and(|k| *k < v.deleted)
}

/// Calls `f` with the key and value of every version of `pfs` that does not survive.
fn dead_versions(
    kv: &dyn KvRead,
    pfs: u32,
    kept: &[Tid],
    mut f: impl FnMut(&[u8], VersionVal) -> Result<()>,
) -> Result<()> {
    let (start, end) = schema::pfs_space_range(b'V', pfs);
    for_each(kv, &start, &end, |k, raw| {
        let v = VersionVal::decode(raw)?;
        if survives(schema::version_created(k)?, &v, kept) {
            return Ok(());
        }
        f(k, v)
    })
}

/// Works out what pruning `p` with `opts` removes; changes nothing. `record_len` gives the
/// length of the record at an LSN (for the bytes that become dead).
pub(crate) fn plan(
    kv: &dyn KvRead,
    p: &PfsRecord,
    opts: &PruneOptions,
    record_len: &dyn Fn(u64) -> Result<u64>,
) -> Result<PruneReport> {
    let all = commits(kv, p.id)?;
    let tids: Vec<Tid> = all.iter().map(|(t, _)| *t).collect();
    let mut keep = p.retention.thin(opts.now, &tids);
    if let Some(last) = keep.last_mut() {
        *last = true;
    }
    for (_, snap) in schema::snapshots(kv, p.id)? {
        if let Some(i) = tids.partition_point(|t| *t <= snap).checked_sub(1) {
            keep[i] = true;
        }
    }
    let mut report = PruneReport::default();
    if let (Some(hold), false) = (opts.hold, opts.force) {
        for (i, t) in tids.iter().enumerate() {
            if *t >= hold && !keep[i] {
                keep[i] = true;
                report.held += 1;
            }
        }
    }
    let mut run_start = None;
    for (i, (tid, lsn)) in all.iter().enumerate() {
        if keep[i] {
            if let Some(from) = run_start.take() {
                report.ranges.push((from, *tid));
            }
        } else {
            run_start.get_or_insert(*tid);
            report.commits += 1;
            report.bytes += record_len(*lsn)?;
            report.newest_pruned = Some(*tid);
        }
    }
    debug_assert!(run_start.is_none(), "the head is always kept");
    if report.commits == 0 {
        return Ok(report);
    }
    let kept: Vec<Tid> = tids
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(t, _)| *t)
        .collect();
    let mut candidates: HashSet<Hash> = HashSet::new();
    dead_versions(kv, p.id, &kept, |_, v| {
        report.versions += 1;
        candidates.extend(v.meta.chunks.iter().map(|c| c.hash));
        Ok(())
    })?;
    // A chunk becomes dead only when no remaining version of any PFS references it.
    if !candidates.is_empty() {
        for other in schema::all_pfs(kv)? {
            let (start, end) = schema::pfs_space_range(b'V', other.id);
            let own = other.id == p.id;
            for_each(kv, &start, &end, |k, raw| {
                let v = VersionVal::decode(raw)?;
                if own && !survives(schema::version_created(k)?, &v, &kept) {
                    return Ok(());
                }
                for c in &v.meta.chunks {
                    candidates.remove(&c.hash);
                }
                Ok(())
            })?;
        }
        for h in &candidates {
            if let Some(loc) = schema::chunk_loc(kv, h)? {
                report.bytes += (RECORD_HEADER + 32) as u64 + u64::from(loc.len);
            }
        }
    }
    Ok(report)
}

/// Adds `new` to the sorted, disjoint `ranges`, merging ranges that touch; beyond
/// [`MAX_RANGES`], the two ranges with the smallest gap between them are merged.
pub(crate) fn merge_ranges(ranges: &mut Vec<TidRange>, new: &[TidRange]) {
    ranges.extend_from_slice(new);
    ranges.sort();
    let mut out: Vec<TidRange> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    while out.len() > MAX_RANGES {
        let i = (1..out.len())
            .min_by_key(|i| out[*i].0.get() - out[*i - 1].1.get())
            .expect("more than one range");
        out[i - 1].1 = out[i].1;
        out.remove(i);
    }
    *ranges = out;
}

/// Applies a prune of `pfs` that made `ranges` unreadable: records the ranges, drops the by-TID
/// entries of the commits in them, and the versions no remaining commit sees.
pub(crate) fn apply_prune(ov: &mut Overlay<'_>, pfs: u32, ranges: &[TidRange]) -> Result<()> {
    let Some(mut p) = schema::pfs_by_id(ov, pfs)? else {
        return Ok(());
    };
    let mut kept = Vec::new();
    for (tid, _) in commits(ov, pfs)? {
        if ranges.iter().any(|(a, b)| *a <= tid && tid < *b) {
            ov.remove(schema::tid_key(pfs, tid));
        } else {
            kept.push(tid);
        }
    }
    let mut dead = Vec::new();
    dead_versions(ov, pfs, &kept, |k, _| {
        dead.push(k.to_vec());
        Ok(())
    })?;
    for k in dead {
        ov.remove(k);
    }
    merge_ranges(&mut p.pruned, ranges);
    ov.put(schema::pfs_key(pfs), p.encode());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_touch_and_stay_bounded() {
        let mut r = vec![(Tid(10), Tid(20)), (Tid(30), Tid(40))];
        merge_ranges(&mut r, &[(Tid(20), Tid(25)), (Tid(50), Tid(60))]);
        assert_eq!(
            r,
            [(Tid(10), Tid(25)), (Tid(30), Tid(40)), (Tid(50), Tid(60))]
        );
        merge_ranges(&mut r, &[(Tid(5), Tid(30))]);
        assert_eq!(r, [(Tid(5), Tid(40)), (Tid(50), Tid(60))]);
        let many: Vec<TidRange> = (0..MAX_RANGES as u64 + 3)
            .map(|i| (Tid(i * 10), Tid(i * 10 + 5)))
            .collect();
        let mut r = Vec::new();
        merge_ranges(&mut r, &many);
        assert_eq!(r.len(), MAX_RANGES);
        for (a, b) in &many {
            assert!(
                r.iter().any(|(x, y)| x <= a && b <= y),
                "every pruned TID stays inside a range"
            );
        }
    }

    #[test]
    fn a_version_survives_only_when_a_kept_commit_sees_it() {
        let v = |deleted| VersionVal {
            meta: crate::record::EntryMeta {
                kind: repl_types::EntryKind::Dir,
                mode: 0o755,
                mtime_ns: 0,
                size: 0,
                target: String::new(),
                chunks: Vec::new(),
            },
            deleted: Tid(deleted),
        };
        let kept = [Tid(10), Tid(20)];
        assert!(survives(Tid(5), &v(11), &kept));
        assert!(
            !survives(Tid(5), &v(10), &kept),
            "deleted at the kept point"
        );
        assert!(!survives(Tid(11), &v(20), &kept));
        assert!(survives(Tid(20), &v(21), &kept));
        assert!(!survives(Tid(21), &v(30), &kept));
        assert!(survives(Tid(21), &v(u64::MAX), &kept), "live versions stay");
    }
}
