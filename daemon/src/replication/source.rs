//! The master side's [`Source`]: batches from the engine's change scan, and, for a resync, a
//! full copy of the master at one TID first ([`Base`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use repl_agent::{Payload, Position, Source};
use repld_engine::{At, Change, Engine, Op, PfsName, Tid};
use tokio::sync::watch;

use super::wire;

/// Changes read per scan step.
const SCAN: usize = 64;
/// The most batch buffer reserved up front.
const MAX_PREALLOC: usize = 64 << 20;

/// A master PFS as a sender reads it.
pub struct EngineSource {
    /// The node's engine.
    pub engine: Engine,
    /// The master PFS.
    pub pfs: PfsName,
    /// Its head, from the engine's commit notifications.
    pub head: watch::Receiver<Tid>,
    /// A resync in progress: a slave before its TID gets the full copy first.
    pub base: Option<Base>,
}

/// The full copy of a master PFS at one TID that a resync sends (`replctl pair resync`): one
/// change per create TID of the versions live at `until`, each with those versions (sorted by
/// path, replacing nothing) and the master's history link at that TID, ending with a change at
/// `until` itself. A slave prepared with `Engine::begin_base` applies them (its history before
/// `until` stays unreadable), and is then at `until` with the master's link there: the stream
/// continues incrementally, its chain checked as usual. Made once per sender (it holds one
/// entry per live path), when a slave first asks for it.
pub struct Base {
    /// The TID the copy is of.
    pub until: Tid,
    changes: Mutex<Option<Arc<Vec<Change>>>>,
}

impl Base {
    /// The full copy at `until`, made when first needed.
    pub fn new(until: Tid) -> Base {
        Base {
            until,
            changes: Mutex::new(None),
        }
    }
}

/// What a full copy of `pfs` at `until` holds: entries and bytes of file content (what
/// `replctl pair resync` says it will send).
pub fn base_size(engine: &Engine, pfs: &PfsName, until: Tid) -> repld_engine::Result<(u64, u64)> {
    let (mut entries, mut bytes) = (0u64, 0u64);
    engine.walk(pfs, &At::Tid(until), |e| {
        entries += 1;
        bytes += e.meta.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>();
        Ok(())
    })?;
    Ok((entries, bytes))
}

/// The changes of a full copy of `pfs` at `until` ([`Base`]).
pub(crate) fn base_changes(
    engine: &Engine,
    pfs: &PfsName,
    until: Tid,
) -> repld_engine::Result<Vec<Change>> {
    let mut by_tid: BTreeMap<Tid, Vec<Op>> = BTreeMap::new();
    engine.walk(pfs, &At::Tid(until), |e| {
        by_tid.entry(e.created).or_default().push(Op::Put {
            path: e.path.clone(),
            meta: e.meta.clone(),
            supersedes: None,
        });
        Ok(())
    })?;
    by_tid.entry(until).or_default();
    by_tid
        .into_iter()
        .map(|(tid, mut ops)| {
            // The walk goes depth first; a change's ops are sorted by path.
            ops.sort_by(|a, b| a.path().cmp(b.path()));
            Ok(Change {
                tid,
                chain: engine.link_at(pfs, tid)?.1,
                ops,
            })
        })
        .collect()
}

impl Source for EngineSource {
    fn head(&self) -> watch::Receiver<Tid> {
        self.head.clone()
    }

    async fn next_batch(&self, from: Position, max_bytes: u64) -> Result<Option<Payload>, String> {
        let engine = self.engine.clone();
        let pfs = self.pfs.clone();
        let base = match &self.base {
            Some(b) if from.synced < b.until => Some((self.base_changes_of(b).await?, b.until)),
            _ => None,
        };
        tokio::task::spawn_blocking(move || match base {
            Some((changes, until)) => {
                let after = changes.iter().filter(|c| c.tid > from.synced).cloned();
                fill(&engine, after, from, max_bytes, until)
            }
            None => batch(&engine, &pfs, from, max_bytes, Tid::MAX),
        })
        .await
        .map_err(|e| format!("the scan task failed: {e}"))?
        .map_err(|e| e.to_string())
    }

    async fn next_tid(&self, after: Tid) -> Result<Option<Tid>, String> {
        if let Some(b) = self.base.as_ref().filter(|b| after < b.until) {
            let changes = self.base_changes_of(b).await?;
            return Ok(changes.iter().map(|c| c.tid).find(|t| *t > after));
        }
        let engine = self.engine.clone();
        let pfs = self.pfs.clone();
        tokio::task::spawn_blocking(move || engine.changes_since(&pfs, after, 1))
            .await
            .map_err(|e| format!("the scan task failed: {e}"))?
            .map(|c| c.first().map(|c| c.tid))
            .map_err(|e| e.to_string())
    }

    async fn link_at(&self, tid: Tid) -> Result<[u8; 32], String> {
        let engine = self.engine.clone();
        let pfs = self.pfs.clone();
        tokio::task::spawn_blocking(move || engine.link_at(&pfs, tid))
            .await
            .map_err(|e| format!("the link lookup failed: {e}"))?
            .map(|(_, link)| link)
            .map_err(|e| e.to_string())
    }
}

impl EngineSource {
    async fn base_changes_of(&self, b: &Base) -> Result<Arc<Vec<Change>>, String> {
        let cached = b
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(c) = cached {
            return Ok(c);
        }
        let (engine, pfs, until) = (self.engine.clone(), self.pfs.clone(), b.until);
        let made = tokio::task::spawn_blocking(move || base_changes(&engine, &pfs, until))
            .await
            .map_err(|e| format!("the scan task failed: {e}"))?
            .map_err(|e| format!("reading the full copy at {until}: {e}"))?;
        let made = Arc::new(made);
        *b.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&made));
        Ok(made)
    }
}

/// Reads the batch after `from`: whole changes up to TID `until`, each after its chunks, until
/// `max_bytes`; a change whose chunks do not fit is split, the batch ending inside it. A sender
/// reads to the end (`Tid::MAX`); a dump stops at the head it started from.
pub(crate) fn batch(
    engine: &Engine,
    pfs: &PfsName,
    from: Position,
    max_bytes: u64,
    until: Tid,
) -> repld_engine::Result<Option<Payload>> {
    // A slave whose checkpoint lies before history this master pruned cannot continue: the
    // changes it lacks are gone (a forced prune, or a new slave of a pruned master).
    if let Some((a, b)) = engine
        .pfs(pfs)?
        .pruned
        .into_iter()
        .find(|(_, to)| *to > from.synced)
    {
        return Err(repld_engine::Error::Invalid(format!(
            "the slave is at {}, but this master pruned the history after it ({a} to {b}): \
             the slave needs a full resync (docs/operations.md, Holds)",
            from.synced
        )));
    }
    fill(
        engine,
        engine.changes_since(pfs, from.synced, SCAN)?.into_iter(),
        from,
        max_bytes,
        until,
    )
}

/// Fills a batch after `from` with `changes` (those after it, in TID order) up to TID `until`.
fn fill(
    engine: &Engine,
    changes: impl Iterator<Item = Change>,
    from: Position,
    max_bytes: u64,
    until: Tid,
) -> repld_engine::Result<Option<Payload>> {
    let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    // The whole batch's room at once: growing it by doubling would copy it again and again.
    let mut buf = Vec::with_capacity(max.min(MAX_PREALLOC));
    let (mut records, mut first) = (0u32, None);
    let mut to = from;
    let full = |buf: &Vec<u8>, records: u32, more: usize| {
        records > 0 && buf.len() + wire::FRAME + more > max
    };
    for change in changes.take(SCAN) {
        if change.tid > until {
            break;
        }
        let refs: Vec<_> = change.chunk_refs().copied().collect();
        let mut done = match from.partial {
            Some((tid, n)) if tid == change.tid => usize::try_from(n).unwrap_or(usize::MAX),
            _ => 0,
        };
        first.get_or_insert(change.tid);
        while done < refs.len() {
            let r = refs[done];
            if full(&buf, records, r.len as usize) {
                return Ok(Some(payload(to, first, buf, records)));
            }
            wire::put_chunk_with(&mut buf, |buf| engine.read_chunk_append(&r.hash, buf))?;
            records += 1;
            done += 1;
            to.partial = Some((change.tid, done as u64));
        }
        let encoded = change.encode();
        if full(&buf, records, encoded.len()) {
            // All its chunks are in; the change itself opens the next batch.
            to.partial = Some((change.tid, refs.len() as u64));
            return Ok(Some(payload(to, first, buf, records)));
        }
        wire::put_change(&mut buf, &encoded);
        records += 1;
        to = Position::at(change.tid);
    }
    Ok((records > 0).then(|| payload(to, first, buf, records)))
}

fn payload(to: Position, first: Option<Tid>, buf: Vec<u8>, records: u32) -> Payload {
    Payload {
        to,
        first_tid: first.unwrap_or(to.synced),
        bytes: buf.into(),
        records,
    }
}

#[cfg(test)]
mod tests {
    use repld_engine::{
        ApplyBatch, Attrs, EngineOptions, EntryPath, FormatOptions, Partial, PfsOptions, Role,
    };

    use super::*;

    fn engine(dir: &std::path::Path) -> Engine {
        let mut o = EngineOptions::new(dir.join("dev.img"), dir.join("index"));
        o.create = Some(FormatOptions {
            force: false,
            segment_size: Some(4 << 20),
            create_size: Some(128 << 20),
        });
        Engine::open(o).expect("open")
    }

    fn apply(e: &Engine, pfs: &PfsName, p: &Payload) {
        let d = wire::decode(&p.bytes).expect("decode");
        e.apply(
            pfs,
            ApplyBatch {
                chunks: d.chunks,
                changes: d.changes,
                partial: p
                    .to
                    .partial
                    .map(|(tid, chunks_done)| Partial { tid, chunks_done }),
                master_head: Tid::ZERO,
            },
        )
        .expect("apply");
    }

    /// A master PFS `a` and a slave PFS `b` of the same pair, on one engine.
    fn master_and_slave(e: &Engine) -> (PfsName, PfsName) {
        let (a, b) = (
            PfsName::new("a").expect("name"),
            PfsName::new("b").expect("name"),
        );
        let info = e.create_pfs(&a, PfsOptions::default()).expect("master");
        e.create_pfs(
            &b,
            PfsOptions {
                role: Role::Slave,
                nohistory: false,
                shared_uuid: Some(info.shared_uuid),
            },
        )
        .expect("slave");
        (a, b)
    }

    /// A cascade's middle node: a slave PFS read as a source offers only what it has wholly
    /// received. A TID that has partly arrived is neither in its head nor in its batches.
    #[test]
    fn a_slave_as_a_source_never_offers_a_partly_received_tid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = engine(dir.path());
        let (a, b) = master_and_slave(&e);
        let mut tx = e.begin(&a).expect("begin");
        let path = EntryPath::new("big").expect("path");
        tx.put_bytes(&path, Attrs::now(0o644), &vec![5u8; 3 << 20])
            .expect("put");
        let tid = tx.commit().expect("commit").expect("a TID");

        // Two of its three chunks reach the slave.
        let first = batch(&e, &a, Position::at(Tid::ZERO), (2 << 20) + 4096, Tid::MAX)
            .expect("scan")
            .expect("a batch");
        assert_eq!(first.to.partial, Some((tid, 2)));
        apply(&e, &b, &first);
        let head = e.subscribe(&b).expect("subscribe");
        assert_eq!(*head.borrow(), Tid::ZERO, "a partial TID moved the head");
        assert!(
            batch(&e, &b, Position::at(Tid::ZERO), 64 << 20, Tid::MAX)
                .expect("scan")
                .is_none(),
            "the slave offered a TID it has only partly received"
        );

        // The rest arrives: now the slave offers exactly what the master does.
        let rest = batch(&e, &a, first.to, 64 << 20, Tid::MAX)
            .expect("scan")
            .expect("a batch");
        apply(&e, &b, &rest);
        assert_eq!(*head.borrow(), tid);
        let from_b = batch(&e, &b, Position::at(Tid::ZERO), 64 << 20, Tid::MAX)
            .expect("scan")
            .expect("a batch");
        let from_a = batch(&e, &a, Position::at(Tid::ZERO), 64 << 20, Tid::MAX)
            .expect("scan")
            .expect("a batch");
        assert_eq!(from_b.to, Position::at(tid));
        assert_eq!(from_b.bytes, from_a.bytes);
    }

    fn commit(e: &Engine, pfs: &PfsName, path: &str, data: &[u8]) -> Tid {
        let mut tx = e.begin(pfs).expect("begin");
        let path = EntryPath::new(path).expect("path");
        if let Some((dir, _)) = path.as_str().rsplit_once('/') {
            let dir = EntryPath::new(dir).expect("dir");
            tx.mkdir(&dir, Attrs::now(0o755), true).expect("mkdir");
        }
        tx.put_bytes(&path, Attrs::now(0o644), data).expect("put");
        tx.commit().expect("commit").expect("a TID")
    }

    /// A full resync at the level of the engine: after a forced prune a slave at 0 cannot be fed
    /// the master's changes, but the full copy (`base_changes`) brings an emptied slave to the
    /// master's state and link at the copy's TID, through batches as small as one chunk, with
    /// nothing readable on the way; then the chain is checked again.
    #[test]
    fn a_full_copy_gives_an_emptied_slave_the_masters_state_and_links_after_a_forced_prune() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = engine(dir.path());
        let (a, b) = master_and_slave(&e);
        commit(&e, &a, "x", b"one");
        let kept = commit(&e, &a, "d/y", &vec![3u8; (1 << 20) + 77]);
        commit(&e, &a, "x", b"two");
        commit(&e, &a, "z", b"zzz");
        e.set_retention(&a, "0s".parse().expect("policy"))
            .expect("retention");
        let pruned = e
            .prune(
                &a,
                repld_engine::PruneOptions {
                    now: Tid::now(),
                    hold: None,
                    force: true,
                },
            )
            .expect("prune");
        assert!(pruned.commits >= 3);
        let base = e.pfs(&a).expect("master").head;
        assert!(
            batch(&e, &a, Position::at(Tid::ZERO), 64 << 20, Tid::MAX).is_err(),
            "the changes after 0 are gone: only a full copy helps"
        );

        e.begin_base(&b, base).expect("begin base");
        let root = EntryPath::root();
        let changes = base_changes(&e, &a, base).expect("copy");
        assert_eq!(changes.last().map(|c| c.tid), Some(base));
        assert!(
            changes.iter().any(|c| c.tid == kept),
            "y keeps its create TID"
        );
        let mut from = Position::at(Tid::ZERO);
        let mut batches = 0;
        while let Some(p) = fill(
            &e,
            changes.iter().filter(|c| c.tid > from.synced).cloned(),
            from,
            4096,
            base,
        )
        .expect("fill")
        {
            apply(&e, &b, &p);
            from = p.to;
            batches += 1;
            if from.synced < base {
                assert!(
                    matches!(
                        e.list(&b, &root, &repld_engine::At::Head),
                        Err(repld_engine::Error::Pruned { .. })
                    ),
                    "the slave reads nothing before the copy is whole"
                );
            }
        }
        assert!(batches >= 2, "the copy came in {batches} batches");
        let slave = e.pfs(&b).expect("slave");
        assert_eq!(slave.head, base);
        assert_eq!(slave.head_chain, e.link_at(&a, base).expect("link").1);
        let digest = |p: &PfsName, at: repld_engine::At| e.digest(p, &at, true).expect("digest");
        assert_eq!(
            digest(&a, repld_engine::At::Tid(base)).root,
            digest(&b, repld_engine::At::Head).root
        );
        assert_eq!(
            e.link_at(&b, kept).expect("link"),
            e.link_at(&a, kept).expect("link"),
            "the slave holds the master's link at the TIDs it holds"
        );

        // Incremental again, chain checked: the master's next change applies, a forged one not.
        let next = commit(&e, &a, "x", b"three");
        let p = batch(&e, &a, Position::at(base), 64 << 20, Tid::MAX)
            .expect("scan")
            .expect("a batch");
        apply(&e, &b, &p);
        assert_eq!(e.pfs(&b).expect("slave").head, next);
        assert_eq!(
            digest(&a, repld_engine::At::Head).root,
            digest(&b, repld_engine::At::Head).root
        );
        let forged = repld_engine::Change {
            tid: Tid(next.get() + 1),
            chain: [9; 32],
            ops: Vec::new(),
        };
        let refused = e.apply(
            &b,
            ApplyBatch {
                chunks: Vec::new(),
                changes: vec![forged],
                partial: None,
                master_head: Tid::ZERO,
            },
        );
        assert!(
            matches!(refused, Err(repld_engine::Error::Diverged { .. })),
            "{refused:?}"
        );
        // Only an empty slave takes a copy.
        assert!(e.begin_base(&b, base).is_err());
    }
}
