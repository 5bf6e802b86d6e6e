//! Retention on a node: `replctl prune` and the background prune worker.
//!
//! Both go through [`prune`]: it asks replication for the holds on the PFS (the checkpoints
//! its slaves have confirmed), prunes with the oldest as the hold, and, when `force` removed
//! changes a slave had not confirmed, marks that pairing as needing a full resync.

use std::sync::Arc;
use std::time::Duration;

use repl_proto::PruneResult;
use repld_engine::{Engine, PfsName, PruneOptions, Tid};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::replication::Replication;
use crate::service::blocking;

/// Prunes `name` by its retention policy now (or, with `dry_run`, says what would go).
pub async fn prune(
    engine: &Engine,
    replication: &Replication,
    name: PfsName,
    dry_run: bool,
    force: bool,
) -> Result<PruneResult, Status> {
    let holds = replication.holds(name.as_str())?;
    let hold = holds.iter().map(|(_, t)| *t).min();
    let opts = PruneOptions {
        now: Tid::now(),
        hold,
        force,
    };
    let engine = engine.clone();
    let pfs = name.clone();
    let report = blocking(move || {
        if dry_run {
            engine.prune_plan(&pfs, opts)
        } else {
            engine.prune(&pfs, opts)
        }
    })
    .await?;
    // The pruned commits a slave has not confirmed: it cannot continue incrementally.
    let broken: Vec<_> = holds
        .into_iter()
        .filter(|(_, t)| report.newest_pruned.is_some_and(|n| n >= *t))
        .map(|(p, _)| p)
        .collect();
    let needs_resync: Vec<String> = broken
        .iter()
        .map(|p| format!("{}:{}", p.slave_node, p.slave_pfs))
        .collect();
    if !dry_run && !broken.is_empty() {
        replication.mark_needs_resync(&broken)?;
        tracing::warn!(pfs = %name, slaves = ?needs_resync, "a forced prune removed changes these slaves had not confirmed: they need a full resync");
    }
    if !dry_run && report.commits > 0 {
        tracing::info!(pfs = %name, commits = report.commits, versions = report.versions, bytes = report.bytes, held = report.held, "pruned history");
    }
    Ok(PruneResult {
        dry_run,
        pruned: report.ranges,
        commits: report.commits,
        versions: report.versions,
        bytes: report.bytes,
        held_commits: report.held,
        hold_tid: hold.filter(|t| *t > Tid::ZERO),
        needs_resync,
    })
}

/// The background prune worker: every `interval`, prunes each PFS whose policy drops history
/// (never forced: holds are always kept). `interval` zero turns it off. Returns when `token`
/// is cancelled; a prune under way finishes first (it is one durable step).
pub async fn worker(
    engine: Engine,
    replication: Arc<Replication>,
    interval: Duration,
    token: CancellationToken,
) -> anyhow::Result<()> {
    if interval.is_zero() {
        tracing::info!("scheduled pruning is off (retention.prune_interval = 0s)");
        token.cancelled().await;
        return Ok(());
    }
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let list = {
            let engine = engine.clone();
            blocking(move || engine.list_pfs()).await
        };
        let pfses = match list {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e.message(), "scheduled prune: cannot list the PFSes; trying again at the next interval");
                continue;
            }
        };
        for p in pfses.into_iter().filter(|p| p.retention.prunes()) {
            if token.is_cancelled() {
                return Ok(());
            }
            if let Err(e) = prune(&engine, &replication, p.name.clone(), false, false).await {
                tracing::warn!(pfs = %p.name, error = %e.message(), "scheduled prune failed; trying again at the next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repld_engine::{At, Attrs, EntryPath, Error};

    fn engine(dir: &std::path::Path) -> Engine {
        let mut opts = repld_engine::EngineOptions::new(dir.join("dev.img"), dir.join("index"));
        opts.create = Some(repld_engine::FormatOptions {
            force: false,
            segment_size: Some(4 << 20),
            create_size: Some(64 << 20),
        });
        Engine::open(opts).expect("open")
    }

    fn put(e: &Engine, pfs: &PfsName, data: &[u8]) -> Tid {
        let mut tx = e.begin(pfs).expect("begin");
        let path = EntryPath::new("f").expect("path");
        tx.put_bytes(&path, Attrs::now(0o644), data).expect("put");
        tx.commit().expect("commit").expect("a change")
    }

    /// The replication state the worker reads holds from, with the token that stops it.
    async fn replication(
        e: &Engine,
        dir: &std::path::Path,
    ) -> (Arc<Replication>, CancellationToken) {
        let config = crate::config::Config {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        let token = CancellationToken::new();
        let replication = Replication::start(e.clone(), &config, token.child_token())
            .await
            .expect("replication");
        (replication, token)
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_prunes_on_its_schedule_and_stops_at_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = engine(dir.path());
        let pfs = PfsName::new("data").expect("name");
        e.create_pfs(&pfs, repld_engine::PfsOptions::default())
            .expect("create");
        e.set_retention(&pfs, "0s".parse().expect("policy"))
            .expect("retention");
        let old = put(&e, &pfs, b"one");
        put(&e, &pfs, b"two");
        let (replication, token) = replication(&e, dir.path()).await;
        let t = CancellationToken::new();
        let task = tokio::spawn(worker(
            e.clone(),
            Arc::clone(&replication),
            Duration::from_secs(600),
            t.clone(),
        ));
        let root = EntryPath::root();
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(
            e.list(&pfs, &root, &At::Tid(old)).is_ok(),
            "nothing is pruned before the first interval"
        );
        let mut pruned = false;
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if matches!(
                e.list(&pfs, &root, &At::Tid(old)),
                Err(Error::Pruned { .. })
            ) {
                pruned = true;
                break;
            }
        }
        assert!(
            pruned,
            "the worker pruned the old commit after one interval"
        );
        assert!(!task.is_finished(), "the worker runs until shutdown");
        t.cancel();
        task.await.expect("joins").expect("a clean stop");
        token.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_turns_the_worker_off_until_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = engine(dir.path());
        let (replication, token) = replication(&e, dir.path()).await;
        let t = CancellationToken::new();
        let task = tokio::spawn(worker(e, replication, Duration::ZERO, t.clone()));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!task.is_finished());
        t.cancel();
        task.await.expect("joins").expect("a clean stop");
        token.cancel();
    }
}
