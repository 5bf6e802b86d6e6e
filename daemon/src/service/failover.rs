//! The Admin calls of failover: `pfs upgrade`, `pfs downgrade`, the history links that the
//! fail-back prefix check compares, and the rollback of a diverged target.

use repl_proto::pb;
use repld_engine::{Engine, Role, Tid};
use tonic::Status;

use super::admin::{pfs_info, pfs_name};
use super::blocking;
use crate::replication::Replication;

/// The most TIDs one `PfsLinks` call looks up or lists.
const MAX_LINKS: usize = 10_000;

/// `pfs upgrade`.
pub async fn upgrade(
    replication: &Replication,
    r: pb::PfsUpgradeRequest,
) -> Result<pb::PfsUpgradeResponse, Status> {
    let name = pfs_name("name", r.name)?;
    let (up, revoked) = replication.upgrade(&name, r.force).await?;
    Ok(pb::PfsUpgradeResponse {
        pfs: Some(pfs_info(&up.info)),
        dropped_tid: up.dropped.map_or(0, |p| p.tid.get()),
        dropped_chunks: up.dropped.map_or(0, |p| p.chunks_done),
        revoked_masters: revoked,
    })
}

/// `pfs downgrade`.
pub async fn downgrade(
    replication: &Replication,
    r: pb::PfsDowngradeRequest,
) -> Result<pb::PfsDowngradeResponse, Status> {
    let name = pfs_name("name", r.name)?;
    let (info, stopped) = replication.downgrade(&name).await?;
    Ok(pb::PfsDowngradeResponse {
        pfs: Some(pfs_info(&info)),
        stopped_pairings: stopped,
    })
}

fn link(tid: u64, (commit, hash): repld_engine::Link) -> pb::Link {
    pb::Link {
        tid,
        commit_tid: commit.get(),
        link: bytes::Bytes::copy_from_slice(&hash),
    }
}

/// The links at the TIDs asked for, and a listing of commits.
pub async fn links(
    engine: &Engine,
    r: pb::PfsLinksRequest,
) -> Result<pb::PfsLinksResponse, Status> {
    let name = pfs_name("name", r.name)?;
    let limit = r.list_limit as usize;
    if r.at.len() > MAX_LINKS || limit > MAX_LINKS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_LINKS} links per call"
        )));
    }
    let engine = engine.clone();
    blocking(move || {
        let info = engine.pfs(&name)?;
        let at =
            r.at.iter()
                .map(|&t| Ok(link(t, engine.link_at(&name, Tid(t))?)))
                .collect::<repld_engine::Result<Vec<_>>>()?;
        let before = if r.list_before == 0 {
            Tid::MAX
        } else {
            Tid(r.list_before)
        };
        let commits = if limit == 0 {
            Vec::new()
        } else {
            engine
                .links_between(&name, Tid(r.list_after), before, limit)?
                .into_iter()
                .map(|l| link(l.0.get(), l))
                .collect()
        };
        Ok(pb::PfsLinksResponse {
            head_tid: info.head.get(),
            head_link: bytes::Bytes::copy_from_slice(&info.head_chain),
            at,
            commits,
        })
    })
    .await
}

/// Rolls a slave PFS back to a TID, under its apply lock (no stream applies meanwhile).
pub async fn rollback(
    engine: &Engine,
    replication: &Replication,
    r: pb::PfsRollbackRequest,
) -> Result<pb::PfsRollbackResponse, Status> {
    let name = pfs_name("name", r.name)?;
    let lock = replication.sink.lock_for(name.as_str());
    let _no_apply = lock.lock().await;
    let engine = engine.clone();
    let to = Tid(r.to_tid);
    let done = blocking(move || {
        if engine.pfs(&name)?.role != Role::Slave {
            return Err(repld_engine::Error::Invalid(format!(
                "PFS `{name}` is a master: only a slave is rolled back (downgrade it first with \
                 `replctl pfs downgrade`)"
            )));
        }
        let done = engine.rollback(&name, to)?;
        tracing::warn!(pfs = %name, to = %to, discarded = done.commits, "rolled a slave PFS back");
        Ok(done)
    })
    .await?;
    let (first, last) = done.range.map_or((0, 0), |(a, b)| (a.get(), b.get()));
    Ok(pb::PfsRollbackResponse {
        commits_discarded: done.commits,
        first_tid: first,
        last_tid: last,
        head_tid: done.head.get(),
    })
}
