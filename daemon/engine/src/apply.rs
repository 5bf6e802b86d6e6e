//! Applying log records to the index.
//!
//! [`apply_record`] is the only place where a record becomes index state. The writer calls it as
//! it appends, and recovery calls it as it replays, so the two cannot drift apart. It does not
//! validate: records in the log were validated before they were written.

use repl_types::Tid;

use crate::codec::DecodeError;
use crate::error::Result;
use crate::index::{KvRead, Overlay};
use crate::record::{Change, Op, PfsEvent, Record};
use crate::schema::{self, ChunkLoc, PfsRecord, VersionVal};

/// Applies `rec`, found at `lsn`, to `ov`.
pub(crate) fn apply_record(ov: &mut Overlay<'_>, lsn: u64, rec: &Record) -> Result<()> {
    apply_record_skipping(ov, lsn, rec, &[])
}

/// Applies `rec`, found at `lsn`, to `ov`, without creating the versions of the ops at the
/// indexes `skip` (a copy of a commit whose versions were gone when space reclaim copied it;
/// their ends of older versions still apply).
pub(crate) fn apply_record_skipping(
    ov: &mut Overlay<'_>,
    lsn: u64,
    rec: &Record,
    skip: &[u32],
) -> Result<()> {
    match rec {
        Record::Chunk { hash, len } => {
            ov.put(
                schema::chunk_key(hash),
                ChunkLoc { lsn, len: *len }.encode(),
            );
        }
        Record::Commit { pfs, change } => apply_commit(ov, lsn, *pfs, change, skip)?,
        Record::Pfs(ev) => apply_pfs_event(ov, ev)?,
        Record::Checkpoint {
            pfs,
            synced: _,
            partial,
            master_head,
        } => {
            if let Some(mut p) = schema::pfs_by_id(ov, *pfs)? {
                p.partial = partial.filter(|x| x.tid > p.head);
                p.master_head = p.master_head.max(*master_head);
                p.checkpoint_lsn = lsn;
                ov.put(schema::pfs_key(p.id), p.encode());
            }
        }
        Record::Reclaim {
            from,
            to,
            chunks,
            links,
            versions,
        } => {
            for (pfs, path, created) in versions {
                ov.remove(schema::version_key(*pfs, path, *created));
            }
            for h in chunks {
                if schema::chunk_loc(ov, h)?.is_some_and(|l| (*from..*to).contains(&l.lsn)) {
                    ov.remove(schema::chunk_key(h));
                }
            }
            for (pfs, tid) in links {
                if ov.get(&schema::tid_key(*pfs, *tid))?.is_none() {
                    ov.remove(schema::link_key(*pfs, *tid));
                }
            }
        }
    }
    Ok(())
}

/// Applies a copy of a record that space reclaim made, found at `lsn`, during incremental replay
/// (and as the writer places it). The original was applied already, so the copy only moves
/// pointers: the chunk entry, the by-TID entry of a commit that still has one, and a PFS's newest
/// checkpoint. PFS events are no-ops. (A rebuild from scratch applies copies in full, in the
/// order of their original LSNs: see `engine::replay_from`.)
pub(crate) fn apply_relocated(ov: &mut Overlay<'_>, lsn: u64, rec: &Record) -> Result<()> {
    match rec {
        Record::Chunk { .. } | Record::Reclaim { .. } => apply_record(ov, lsn, rec)?,
        Record::Commit { pfs, change } => {
            let key = schema::tid_key(*pfs, change.tid);
            if ov.get(&key)?.is_some() {
                ov.put(key, lsn.to_le_bytes().to_vec());
            }
        }
        Record::Pfs(_) => {}
        Record::Checkpoint { pfs, .. } => {
            if let Some(mut p) = schema::pfs_by_id(ov, *pfs)? {
                p.checkpoint_lsn = lsn;
                ov.put(schema::pfs_key(p.id), p.encode());
            }
        }
    }
    Ok(())
}

fn apply_commit(
    ov: &mut Overlay<'_>,
    lsn: u64,
    pfs: u32,
    change: &Change,
    skip: &[u32],
) -> Result<()> {
    let Some(mut p) = schema::pfs_by_id(ov, pfs)? else {
        // Cannot happen in a valid log: the writer refuses commits to unknown PFSes, and no
        // commit of a PFS follows its destroy.
        return Ok(());
    };
    let tid = change.tid;
    for (i, op) in change.ops.iter().enumerate() {
        let (path, supersedes) = match op {
            Op::Put {
                path, supersedes, ..
            } => (path, *supersedes),
            Op::Delete { path, supersedes } => (path, Some(*supersedes)),
        };
        if let Some(old) = supersedes {
            end_version(ov, &p, path, old, tid)?;
        }
        if let Op::Put { path, meta, .. } = op
            && !skip.contains(&(i as u32))
        {
            let v = VersionVal {
                meta: meta.clone(),
                deleted: Tid::MAX,
            };
            ov.put(schema::version_key(pfs, path, tid), v.encode());
        }
    }
    ov.put(schema::tid_key(pfs, tid), lsn.to_le_bytes().to_vec());
    ov.put(schema::link_key(pfs, tid), change.chain.to_vec());
    p.head = p.head.max(tid);
    p.head_chain = change.chain;
    if p.nohistory {
        p.history_floor = p.head;
    }
    if p.partial.is_some_and(|x| x.tid <= tid) {
        p.partial = None;
    }
    ov.put(schema::pfs_key(pfs), p.encode());
    Ok(())
}

/// Ends the version of `path` created at `created`: marks it deleted at `tid`, or drops it when
/// the PFS keeps no history.
fn end_version(
    ov: &mut Overlay<'_>,
    p: &PfsRecord,
    path: &repl_types::EntryPath,
    created: Tid,
    tid: Tid,
) -> Result<()> {
    let key = schema::version_key(p.id, path, created);
    let Some(raw) = ov.get(&key)? else {
        return Ok(());
    };
    if p.nohistory {
        ov.remove(key);
    } else {
        let mut v = VersionVal::decode(&raw)?;
        v.deleted = tid;
        ov.put(key, v.encode());
    }
    Ok(())
}

fn apply_pfs_event(ov: &mut Overlay<'_>, ev: &PfsEvent) -> Result<()> {
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
            let rec = PfsRecord {
                id: *id,
                name: name.clone(),
                uuid: *uuid,
                shared_uuid: *shared_uuid,
                role: *role,
                nohistory: *nohistory,
                created: *created,
                head: match role {
                    crate::record::Role::Master => *created,
                    crate::record::Role::Slave => Tid::ZERO,
                },
                head_chain: [0; 32],
                history_floor: Tid::ZERO,
                partial: None,
                master_head: Tid::ZERO,
                retention: repl_types::Retention::Forever,
                pruned: Vec::new(),
                checkpoint_lsn: 0,
            };
            ov.put(schema::pfs_key(*id), rec.encode());
            ov.put(schema::name_key(name), id.to_be_bytes().to_vec());
            let next = next_pfs_id(ov)?.max(id + 1);
            ov.put(schema::NEXT_PFS.to_vec(), next.to_le_bytes().to_vec());
        }
        PfsEvent::Configure {
            id,
            role,
            nohistory,
        } => {
            if let Some(mut p) = schema::pfs_by_id(ov, *id)? {
                if p.role != *role {
                    // An upgrade drops a partly received TID (its chunks stay unreferenced);
                    // a downgrade starts with no master heard from.
                    p.partial = None;
                    p.master_head = Tid::ZERO;
                }
                p.role = *role;
                if *nohistory && !p.nohistory {
                    p.history_floor = p.head;
                }
                p.nohistory = *nohistory;
                ov.put(schema::pfs_key(*id), p.encode());
            }
        }
        PfsEvent::Destroy { id } => {
            if let Some(p) = schema::pfs_by_id(ov, *id)? {
                ov.remove(schema::name_key(&p.name));
            }
            ov.remove(schema::pfs_key(*id));
            for space in [b'V', b'T', b'L', b'S'] {
                let (start, end) = schema::pfs_space_range(space, *id);
                for (k, _) in ov.range(&start, &end, usize::MAX)? {
                    ov.remove(k);
                }
            }
        }
        PfsEvent::Snapshot { id, name, tid } => {
            ov.put(
                schema::snapshot_key(*id, name),
                tid.get().to_le_bytes().to_vec(),
            );
        }
        PfsEvent::SnapshotDelete { id, name } => {
            ov.remove(schema::snapshot_key(*id, name));
        }
        PfsEvent::Retention { id, policy } => {
            if let Some(mut p) = schema::pfs_by_id(ov, *id)? {
                p.retention = policy.clone();
                ov.put(schema::pfs_key(*id), p.encode());
            }
        }
        PfsEvent::Prune { id, ranges } => crate::prune::apply_prune(ov, *id, ranges)?,
        PfsEvent::Rollback { id, to, chain } => rollback(ov, *id, *to, *chain)?,
    }
    Ok(())
}

/// Discards every commit of PFS `id` after `to`: versions they created go, versions they ended
/// live again, and their TIDs, links and snapshots go. O(versions of the PFS); the log keeps the
/// discarded commits, and replay reaches the same state because it applies this record after
/// them.
fn rollback(ov: &mut Overlay<'_>, id: u32, to: Tid, chain: crate::record::Hash) -> Result<()> {
    let Some(mut p) = schema::pfs_by_id(ov, id)? else {
        return Ok(());
    };
    let (start, end) = schema::pfs_space_range(b'V', id);
    for (k, v) in ov.range(&start, &end, usize::MAX)? {
        let created = Tid(u64::from_be_bytes(
            k.get(k.len().saturating_sub(8)..)
                .and_then(|b| b.try_into().ok())
                .ok_or(DecodeError("version key"))?,
        ));
        if created > to {
            ov.remove(k);
            continue;
        }
        let mut val = VersionVal::decode(&v)?;
        if val.deleted != Tid::MAX && val.deleted > to {
            val.deleted = Tid::MAX;
            ov.put(k, val.encode());
        }
    }
    for space in [b'T', b'L'] {
        let (_, end) = schema::pfs_space_range(space, id);
        let mut start = vec![space];
        start.extend_from_slice(&id.to_be_bytes());
        start.extend_from_slice(&to.next().get().to_be_bytes());
        for (k, _) in ov.range(&start, &end, usize::MAX)? {
            ov.remove(k);
        }
    }
    for (name, tid) in schema::snapshots(ov, id)? {
        if tid > to {
            ov.remove(schema::snapshot_key(id, &name));
        }
    }
    p.head = to;
    p.head_chain = chain;
    p.partial = None;
    // Pruned ranges of discarded commits go with them (exec refuses a `to` inside a range).
    p.pruned.retain(|(from, _)| *from <= to);
    ov.put(schema::pfs_key(id), p.encode());
    Ok(())
}

/// The next unused PFS id.
pub(crate) fn next_pfs_id(kv: &dyn KvRead) -> Result<u32> {
    match kv.get(schema::NEXT_PFS)? {
        Some(v) => Ok(u32::from_le_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| DecodeError("next pfs id"))?,
        )),
        None => Ok(1),
    }
}
