//! Executing work against the current state: validation, TID assignment and the net effect of a
//! transaction. Runs on the writer thread, against the index plus the writer's own batch, so it
//! always sees every commit ordered before it.

use std::collections::BTreeMap;

use repl_types::{EntryPath, Tid};

use crate::error::{Error, Result};
use crate::index::KvRead;
use crate::record::{Change, ChunkRef, EntryKind, EntryMeta, Op, Partial, PfsEvent, Record, Role};
use crate::schema::{self, PfsRecord};

/// The most ops one commit may hold.
pub const MAX_TXN_OPS: usize = 500_000;

/// One operation of a transaction, as the client asked for it.
#[derive(Clone, Debug)]
pub(crate) enum Intent {
    PutFile {
        path: EntryPath,
        mode: u32,
        mtime_ns: i64,
        size: u64,
        chunks: Vec<ChunkRef>,
    },
    PutDir {
        path: EntryPath,
        mode: u32,
        mtime_ns: i64,
        existing: IfExists,
    },
    Symlink {
        path: EntryPath,
        target: String,
        mode: u32,
        mtime_ns: i64,
    },
    Delete {
        path: EntryPath,
        recursive: bool,
        missing_ok: bool,
    },
    Rename {
        from: EntryPath,
        to: EntryPath,
        replace: bool,
    },
}

/// What creating a directory does when one exists already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfExists {
    /// Fail with `AlreadyExists` (`mkdir`).
    Fail,
    /// Give it the new mode and mtime (import).
    Update,
    /// Leave it as it is (`mkdir -p`, parents of a put).
    Keep,
}

impl Intent {
    /// Whether the intent only removes data, and so may use the space kept for deletes.
    pub fn frees_space(&self) -> bool {
        matches!(self, Intent::Delete { .. })
    }
}

/// The state of a PFS as a transaction sees it: the committed state plus its own changes.
struct TxnView<'a> {
    kv: &'a dyn KvRead,
    pfs: u32,
    changes: BTreeMap<EntryPath, Option<EntryMeta>>,
}

impl TxnView<'_> {
    fn head(&self, path: &EntryPath) -> Result<Option<EntryMeta>> {
        if path.is_root() {
            return Ok(Some(root_meta()));
        }
        match self.changes.get(path) {
            Some(state) => Ok(state.clone()),
            None => Ok(schema::version_at(self.kv, self.pfs, path, Tid::MAX)?.map(|(_, v)| v.meta)),
        }
    }

    /// The children of `dir` as the transaction sees them, by name.
    fn children(&self, dir: &EntryPath) -> Result<BTreeMap<String, EntryMeta>> {
        let mut out: BTreeMap<String, EntryMeta> =
            schema::children_at(self.kv, self.pfs, dir, Tid::MAX)?
                .into_iter()
                .map(|(name, _, v)| (name, v.meta))
                .collect();
        for (path, state) in &self.changes {
            if path.parent().as_ref() != Some(dir) {
                continue;
            }
            match state {
                Some(m) => out.insert(path.name().to_owned(), m.clone()),
                None => out.remove(path.name()),
            };
        }
        Ok(out)
    }

    /// Every entry below `dir`, parents before children.
    fn descendants(&self, dir: &EntryPath) -> Result<Vec<(EntryPath, EntryMeta)>> {
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for (name, meta) in self.children(&d)? {
                let p = d.join(&name)?;
                if meta.kind == EntryKind::Dir {
                    stack.push(p.clone());
                }
                out.push((p, meta));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn require_parent_dir(&self, path: &EntryPath) -> Result<()> {
        let parent = path.parent().ok_or(repl_types::PathError::Root)?;
        match self.head(&parent)? {
            Some(m) if m.kind == EntryKind::Dir => Ok(()),
            Some(_) => Err(Error::NotADirectory(parent)),
            None => Err(Error::ParentMissing(path.clone())),
        }
    }

    fn set(&mut self, path: EntryPath, state: Option<EntryMeta>) {
        self.changes.insert(path, state);
    }

    fn execute(&mut self, intent: &Intent) -> Result<()> {
        match intent {
            Intent::PutFile {
                path,
                mode,
                mtime_ns,
                size,
                chunks,
            } => {
                self.require_parent_dir(path)?;
                if self.head(path)?.is_some_and(|m| m.kind == EntryKind::Dir) {
                    return Err(Error::IsADirectory(path.clone()));
                }
                for c in chunks {
                    if schema::chunk_loc(self.kv, &c.hash)?.is_none() {
                        return Err(Error::Invalid(format!(
                            "`{path}` references a chunk that was never stored"
                        )));
                    }
                }
                let meta = EntryMeta {
                    kind: EntryKind::File,
                    mode: *mode,
                    mtime_ns: *mtime_ns,
                    size: *size,
                    target: String::new(),
                    chunks: chunks.clone(),
                };
                self.set(path.clone(), Some(meta));
            }
            Intent::PutDir {
                path,
                mode,
                mtime_ns,
                existing,
            } => {
                self.require_parent_dir(path)?;
                let meta = EntryMeta {
                    kind: EntryKind::Dir,
                    mode: *mode,
                    mtime_ns: *mtime_ns,
                    size: 0,
                    target: String::new(),
                    chunks: Vec::new(),
                };
                match self.head(path)? {
                    None => self.set(path.clone(), Some(meta)),
                    Some(m) if m.kind == EntryKind::Dir && *existing != IfExists::Fail => {
                        if m != meta && *existing == IfExists::Update {
                            self.set(path.clone(), Some(meta));
                        }
                    }
                    Some(_) => return Err(Error::AlreadyExists(path.clone())),
                }
            }
            Intent::Symlink {
                path,
                target,
                mode,
                mtime_ns,
            } => {
                self.require_parent_dir(path)?;
                if self.head(path)?.is_some_and(|m| m.kind == EntryKind::Dir) {
                    return Err(Error::IsADirectory(path.clone()));
                }
                if target.is_empty()
                    || target.len() > repl_types::MAX_PATH_LEN
                    || target.contains('\0')
                {
                    return Err(Error::Invalid(format!(
                        "symlink target of `{path}` must be 1-4096 bytes without NUL"
                    )));
                }
                let meta = EntryMeta {
                    kind: EntryKind::Symlink,
                    mode: *mode,
                    mtime_ns: *mtime_ns,
                    size: target.len() as u64,
                    target: target.clone(),
                    chunks: Vec::new(),
                };
                self.set(path.clone(), Some(meta));
            }
            Intent::Delete {
                path,
                recursive,
                missing_ok,
            } => {
                if path.is_root() {
                    return Err(repl_types::PathError::Root.into());
                }
                let meta = match self.head(path)? {
                    Some(meta) => meta,
                    None if *missing_ok => return Ok(()),
                    None => {
                        return Err(Error::NotFound {
                            path: path.clone(),
                            at: None,
                        });
                    }
                };
                if meta.kind == EntryKind::Dir {
                    let below = self.descendants(path)?;
                    if !below.is_empty() && !recursive {
                        return Err(Error::DirectoryNotEmpty(path.clone()));
                    }
                    for (p, _) in below {
                        self.set(p, None);
                    }
                }
                self.set(path.clone(), None);
            }
            Intent::Rename { from, to, replace } => {
                if from.is_root() || to.is_root() {
                    return Err(repl_types::PathError::Root.into());
                }
                let meta = self.head(from)?.ok_or_else(|| Error::NotFound {
                    path: from.clone(),
                    at: None,
                })?;
                if from == to {
                    return Ok(());
                }
                if to.starts_with(from) {
                    return Err(Error::Invalid(format!(
                        "cannot move `{from}` into itself (`{to}`)"
                    )));
                }
                self.require_parent_dir(to)?;
                match self.head(to)? {
                    Some(t) if t.kind == EntryKind::Dir => {
                        return Err(Error::AlreadyExists(to.clone()));
                    }
                    Some(_) if meta.kind == EntryKind::Dir || !replace => {
                        return Err(Error::AlreadyExists(to.clone()));
                    }
                    _ => {}
                }
                if meta.kind == EntryKind::Dir {
                    for (p, m) in self.descendants(from)? {
                        let moved = p.rebase(from, to)?;
                        self.set(p, None);
                        self.set(moved, Some(m));
                    }
                }
                self.set(from.clone(), None);
                self.set(to.clone(), Some(meta));
            }
        }
        if self.changes.len() > MAX_TXN_OPS {
            return Err(Error::TooLarge {
                what: "transaction (entries changed)".into(),
                size: self.changes.len() as u64,
                limit: MAX_TXN_OPS as u64,
            });
        }
        Ok(())
    }

    /// The net ops against the committed state, sorted by path.
    fn into_ops(self) -> Result<Vec<Op>> {
        let mut ops = Vec::new();
        for (path, state) in self.changes {
            let head = schema::version_at(self.kv, self.pfs, &path, Tid::MAX)?;
            match (head, state) {
                (None, None) => {}
                (Some((created, _)), None) => ops.push(Op::Delete {
                    path,
                    supersedes: created,
                }),
                (Some((_, v)), Some(meta)) if v.meta == meta => {}
                (head, Some(meta)) => ops.push(Op::Put {
                    path,
                    meta,
                    supersedes: head.map(|(t, _)| t),
                }),
            }
        }
        Ok(ops)
    }
}

fn root_meta() -> EntryMeta {
    EntryMeta {
        kind: EntryKind::Dir,
        mode: 0o755,
        mtime_ns: 0,
        size: 0,
        target: String::new(),
        chunks: Vec::new(),
    }
}

/// Looks up a PFS by name for a write.
pub(crate) fn writable_pfs(kv: &dyn KvRead, name: &str) -> Result<PfsRecord> {
    let p = schema::pfs_by_name(kv, name)?.ok_or_else(|| Error::NoSuchPfs(name.to_owned()))?;
    if p.role == Role::Slave {
        return Err(Error::ReadOnlySlave(name.to_owned()));
    }
    Ok(p)
}

/// Executes a local transaction. `None` when it changes nothing.
pub(crate) fn commit(
    kv: &dyn KvRead,
    pfs: &PfsRecord,
    intents: &[Intent],
    now: Tid,
) -> Result<Option<Record>> {
    let mut view = TxnView {
        kv,
        pfs: pfs.id,
        changes: BTreeMap::new(),
    };
    for intent in intents {
        view.execute(intent)?;
    }
    let ops = view.into_ops()?;
    if ops.is_empty() {
        return Ok(None);
    }
    let tid = now.max(pfs.head.next());
    let chain = Change::next_chain(&pfs.head_chain, tid, &ops);
    Ok(Some(Record::Commit {
        pfs: pfs.id,
        change: Change { tid, chain, ops },
    }))
}

/// Checks a replicated change against a slave's state. `None` when it is already applied.
pub(crate) fn replicated(
    kv: &dyn KvRead,
    pfs: &PfsRecord,
    change: &Change,
) -> Result<Option<Record>> {
    let diverged = |detail: String| Error::Diverged {
        pfs: pfs.name.clone(),
        tid: change.tid,
        detail,
    };
    if change.tid <= pfs.head {
        return match kv.get(&schema::link_key(pfs.id, change.tid))? {
            // Already applied, if it is the same commit: a slave never holds two histories.
            Some(link) if link == change.chain => Ok(None),
            Some(_) => Err(diverged(format!(
                "the slave holds another commit at that TID (its history diverged from this \
                 master's at or before {})",
                change.tid
            ))),
            None if change.tid <= pfs.history_floor
                || pfs.head == change.tid
                || pfs.pruned_at(change.tid).is_some() =>
            {
                Ok(None)
            }
            None => Err(diverged(format!(
                "the slave is at {} and has no commit at that TID",
                pfs.head
            ))),
        };
    }
    // A slave whose head lies in its own pruned history is receiving a full copy of its
    // master (`Engine::begin_base`): the copy's changes carry the versions live at the copy's
    // TID under their create TIDs, and the master's links there, which this slave cannot
    // recompute. Nothing before the copy's TID is readable meanwhile, and the chain is checked
    // again from it on.
    let base = pfs.pruned_at(pfs.head).is_some();
    let expect = Change::next_chain(&pfs.head_chain, change.tid, &change.ops);
    if !base && expect != change.chain {
        return Err(diverged(format!(
            "history chain mismatch after the slave's head {}",
            pfs.head
        )));
    }
    let mut last: Option<&EntryPath> = None;
    for op in &change.ops {
        if last.is_some_and(|l| l >= op.path()) {
            return Err(Error::Invalid(format!(
                "ops of {} are not sorted by path",
                change.tid
            )));
        }
        last = Some(op.path());
        let head = schema::version_at(kv, pfs.id, op.path(), Tid::MAX)?.map(|(t, _)| t);
        let expected = match op {
            Op::Put { supersedes, .. } => *supersedes,
            Op::Delete { supersedes, .. } => Some(*supersedes),
        };
        if head != expected && !pfs.nohistory {
            return Err(diverged(format!(
                "`{}` is at version {:?} on the slave but the change replaces {:?}",
                op.path(),
                head.map(|t| t.to_string()),
                expected.map(|t| t.to_string())
            )));
        }
    }
    for c in change.chunk_refs() {
        if schema::chunk_loc(kv, &c.hash)?.is_none() {
            return Err(Error::Invalid(format!(
                "change {} references chunk {} which has not arrived",
                change.tid,
                hex(&c.hash[..8])
            )));
        }
    }
    if change.ops.len() > MAX_TXN_OPS {
        return Err(Error::TooLarge {
            what: "replicated change".into(),
            size: change.ops.len() as u64,
            limit: MAX_TXN_OPS as u64,
        });
    }
    Ok(Some(Record::Commit {
        pfs: pfs.id,
        change: change.clone(),
    }))
}

/// A change to the PFS catalog, as asked for.
#[derive(Clone, Debug)]
pub(crate) enum PfsCommand {
    Create {
        name: String,
        role: Role,
        nohistory: bool,
        shared_uuid: Option<[u8; 16]>,
    },
    Configure {
        name: String,
        role: Option<Role>,
        nohistory: Option<bool>,
    },
    Destroy {
        name: String,
    },
    Snapshot {
        name: String,
        snapshot: String,
        at: Option<Tid>,
    },
    SnapshotDelete {
        name: String,
        snapshot: String,
    },
    SetRetention {
        name: String,
        policy: repl_types::Retention,
    },
    Rollback {
        name: String,
        to: Tid,
    },
    /// An empty slave about to receive a full copy of its master at `until` (a resync): its
    /// history before `until` is unreadable, and changes arrive with their master's links.
    BeginBase {
        name: String,
        until: Tid,
    },
}

impl PfsCommand {
    pub fn frees_space(&self) -> bool {
        !matches!(
            self,
            PfsCommand::Create { .. } | PfsCommand::BeginBase { .. }
        )
    }
}

/// Executes a catalog change; returns the record and the id of the PFS it concerns.
pub(crate) fn pfs_command(kv: &dyn KvRead, cmd: &PfsCommand, now: Tid) -> Result<(Record, u32)> {
    let existing = |name: &str| -> Result<PfsRecord> {
        schema::pfs_by_name(kv, name)?.ok_or_else(|| Error::NoSuchPfs(name.to_owned()))
    };
    let ev = match cmd {
        PfsCommand::Create {
            name,
            role,
            nohistory,
            shared_uuid,
        } => {
            if schema::pfs_by_name(kv, name)?.is_some() {
                return Err(Error::PfsExists(name.clone()));
            }
            let uuid = *uuid::Uuid::new_v4().as_bytes();
            PfsEvent::Create {
                id: crate::apply::next_pfs_id(kv)?,
                name: name.clone(),
                uuid,
                shared_uuid: shared_uuid.unwrap_or(uuid),
                role: *role,
                nohistory: *nohistory,
                created: now,
            }
        }
        PfsCommand::Configure {
            name,
            role,
            nohistory,
        } => {
            let p = existing(name)?;
            PfsEvent::Configure {
                id: p.id,
                role: role.unwrap_or(p.role),
                nohistory: nohistory.unwrap_or(p.nohistory),
            }
        }
        PfsCommand::Destroy { name } => PfsEvent::Destroy {
            id: existing(name)?.id,
        },
        PfsCommand::Snapshot { name, snapshot, at } => {
            let p = existing(name)?;
            validate_snapshot_name(snapshot)?;
            if schema::snapshot(kv, p.id, snapshot)?.is_some() {
                return Err(Error::SnapshotExists(snapshot.clone()));
            }
            let tid = at.unwrap_or(p.head);
            if let Some((from, to)) = p.pruned_at(tid) {
                return Err(Error::Invalid(format!(
                    "snapshot TID {tid} lies in pruned history ({from} to {to}): name a kept TID"
                )));
            }
            if tid > p.head || tid < p.history_floor {
                return Err(Error::Invalid(format!(
                    "snapshot TID {tid} must lie between the oldest kept TID {} and the head {}",
                    p.history_floor, p.head
                )));
            }
            PfsEvent::Snapshot {
                id: p.id,
                name: snapshot.clone(),
                tid,
            }
        }
        PfsCommand::SetRetention { name, policy } => PfsEvent::Retention {
            id: existing(name)?.id,
            policy: policy.clone(),
        },
        PfsCommand::SnapshotDelete { name, snapshot } => {
            let p = existing(name)?;
            if schema::snapshot(kv, p.id, snapshot)?.is_none() {
                return Err(Error::NoSuchSnapshot(snapshot.clone()));
            }
            PfsEvent::SnapshotDelete {
                id: p.id,
                name: snapshot.clone(),
            }
        }
        PfsCommand::Rollback { name, to } => {
            let p = existing(name)?;
            if *to > p.head {
                return Err(Error::Invalid(format!(
                    "cannot roll PFS `{name}` back to {to}: its head is {} (nothing to discard)",
                    p.head
                )));
            }
            if p.nohistory || *to < p.history_floor || p.pruned_at(*to).is_some() {
                return Err(Error::Invalid(format!(
                    "cannot roll PFS `{name}` back to {to}: the versions it had then are pruned \
                     (oldest kept TID {}{}); pair into a new slave PFS instead",
                    p.history_floor,
                    if p.nohistory { ", nohistory" } else { "" }
                )));
            }
            PfsEvent::Rollback {
                id: p.id,
                to: *to,
                chain: schema::link_at(kv, p.id, *to)?.1,
            }
        }
        PfsCommand::BeginBase { name, until } => {
            let p = existing(name)?;
            if p.role != Role::Slave || p.head != Tid::ZERO || p.partial.is_some() {
                return Err(Error::Invalid(format!(
                    "PFS `{name}` must be an empty slave to receive a full copy (it is a {} at {})",
                    if p.role == Role::Slave {
                        "slave"
                    } else {
                        "master"
                    },
                    p.head
                )));
            }
            if *until == Tid::ZERO {
                return Err(Error::Invalid("a full copy needs a TID after 0".into()));
            }
            // The same event a prune writes: replay and an index rebuild agree.
            PfsEvent::Prune {
                id: p.id,
                ranges: vec![(Tid::ZERO, *until)],
            }
        }
    };
    let id = match &ev {
        PfsEvent::Create { id, .. }
        | PfsEvent::Configure { id, .. }
        | PfsEvent::Destroy { id }
        | PfsEvent::Snapshot { id, .. }
        | PfsEvent::SnapshotDelete { id, .. }
        | PfsEvent::Retention { id, .. }
        | PfsEvent::Prune { id, .. }
        | PfsEvent::Rollback { id, .. } => *id,
    };
    Ok((Record::Pfs(ev), id))
}

/// Snapshot names follow PFS names, and must not read as a TID (so `@NAME` and `@TID` never
/// clash in `PFS@...` arguments).
fn validate_snapshot_name(name: &str) -> Result<()> {
    if repl_types::PfsName::new(name).is_err() || name.parse::<Tid>().is_ok() {
        return Err(Error::Invalid(format!(
            "`{name}` is not a valid snapshot name \
             (1-64 of A-Z a-z 0-9 . _ -, not starting with . or -, and not a TID)"
        )));
    }
    Ok(())
}

/// The checkpoint record a slave writes after applying a batch.
pub(crate) fn checkpoint(pfs: &PfsRecord, partial: Option<Partial>, master_head: Tid) -> Record {
    Record::Checkpoint {
        pfs: pfs.id,
        synced: pfs.head,
        partial: partial.filter(|p| p.tid > pfs.head),
        master_head,
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
