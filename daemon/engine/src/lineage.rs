//! History lineage and the failover operations built on it: the chain link at a TID (is one
//! history a prefix of another?), upgrade of a slave to a master, downgrade of a master to a
//! slave, and the rollback of a diverged target.

use repl_types::{PfsName, Tid};

use crate::engine::{Engine, PfsInfo};
use crate::error::{Error, Result};
use crate::exec::PfsCommand;
use crate::record::{Hash, Partial, Role};
use crate::schema;
use crate::writer::Work;

/// A commit and its chain link.
pub type Link = (Tid, Hash);

/// What [`Engine::upgrade`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// The PFS, now a master.
    pub info: PfsInfo,
    /// The partly received TID that was dropped, with how many of its chunks had arrived.
    pub dropped: Option<Partial>,
}

/// What [`Engine::rollback`] discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolledBack {
    /// Commits discarded.
    pub commits: u64,
    /// The first and the last discarded TID (`None` when nothing was discarded).
    pub range: Option<(Tid, Tid)>,
    /// The PFS's head afterwards.
    pub head: Tid,
}

impl Engine {
    /// The newest commit of the PFS at or before `at` and its chain link, which names the whole
    /// history up to `at`: `(Tid::ZERO, [0; 32])` for the empty history. One index seek.
    ///
    /// Inside a pruned range, only the exact TID of a commit answers (its link is kept until
    /// space reclaim drops the pruned commit): any other TID there fails with
    /// [`Error::Pruned`], because the newest commit at or before it may be gone and an older
    /// one's link would be a different answer.
    pub fn link_at(&self, name: &PfsName, at: Tid) -> Result<Link> {
        let p = self.record(name)?;
        if let Some((_, next)) = p.pruned_at(at) {
            return match self.kv().get(&schema::link_key(p.id, at))? {
                Some(v) => Ok((
                    at,
                    v.as_slice()
                        .try_into()
                        .map_err(|_| Error::Index("chain link".into()))?,
                )),
                None => Err(Error::Pruned { tid: at, next }),
            };
        }
        schema::link_at(self.kv(), p.id, at)
    }

    /// The commits with TIDs in `(after, before)` and their links, newest first, at most
    /// `limit`.
    pub fn links_between(
        &self,
        name: &PfsName,
        after: Tid,
        before: Tid,
        limit: usize,
    ) -> Result<Vec<Link>> {
        schema::links_between(self.kv(), self.record(name)?.id, after, before, limit)
    }

    /// Whether the PFS's history up to `tid` is the one whose link is `link`: true when the
    /// history that ends with a commit at `tid` and link `link` is a prefix of this PFS's.
    pub fn has_prefix(&self, name: &PfsName, tid: Tid, link: &Hash) -> Result<bool> {
        Ok(&self.link_at(name, tid)?.1 == link)
    }

    /// Turns a slave into a master at its synced TID, durably. A partly received TID is dropped
    /// (its chunks stay unreferenced, for space reclaim) and reported. Callers stop the streams
    /// into the PFS first.
    pub fn upgrade(&self, name: &PfsName) -> Result<Upgraded> {
        let before = self.record(name)?;
        if before.role == Role::Master {
            return Err(Error::Invalid(format!(
                "PFS `{name}` is a master already: nothing to upgrade"
            )));
        }
        let info = self.configure_pfs(name, Some(Role::Master), None)?;
        Ok(Upgraded {
            info,
            dropped: before.partial,
        })
    }

    /// Turns a master into a read-only slave, durably, keeping its history (so that it can
    /// take the new master's changes from where the histories agree).
    pub fn downgrade(&self, name: &PfsName) -> Result<PfsInfo> {
        if self.record(name)?.role == Role::Slave {
            return Err(Error::Invalid(format!(
                "PFS `{name}` is a slave already: nothing to downgrade"
            )));
        }
        self.configure_pfs(name, Some(Role::Slave), None)
    }

    /// Prepares an empty slave for a full copy of its master at `until` (a resync after its
    /// master pruned history it lacked), durably: its history before `until` becomes
    /// unreadable (reads there, and at its head until the copy arrives, say `pruned`), and the
    /// replicated changes up to `until` are taken with the master's links as they come: they
    /// carry the versions live at `until` under their create TIDs, not the master's commits. From
    /// `until` on, the chain is checked as for any slave.
    pub fn begin_base(&self, name: &PfsName, until: Tid) -> Result<PfsInfo> {
        self.submit(Work::Pfs(PfsCommand::BeginBase {
            name: name.to_string(),
            until,
        }))?;
        self.pfs(name)
    }

    /// Discards every commit after `to`, durably, as one log record: the PFS reads as it did at
    /// `to` and its head becomes `to`. Refused when the history at `to` is pruned. For the
    /// target of a fail-back whose history diverged (`replctl pair --rollback`).
    pub fn rollback(&self, name: &PfsName, to: Tid) -> Result<RolledBack> {
        let discarded = self.links_between(name, to, Tid::MAX, usize::MAX)?;
        self.submit(Work::Pfs(PfsCommand::Rollback {
            name: name.to_string(),
            to,
        }))?;
        Ok(RolledBack {
            commits: discarded.len() as u64,
            range: discarded
                .last()
                .zip(discarded.first())
                .map(|(first, last)| (first.0, last.0)),
            head: self.record(name)?.head,
        })
    }
}
