//! The lag of a pairing under a steady write load on its master (issue 4).
//!
//! Set-up: two nodes sharing a CA ([`Cluster`], mutual TLS on loopback), an empty
//! `node1:data` paired with `node2:data` and synced.
//!
//! Load: an in-process Storage client on node1's admin socket commits one new 4 KiB file of
//! incompressible data every 15 ms (a tokio interval; a put that takes longer delays the next
//! tick rather than bunching them) for 20 s (3 s with `--quick`).
//!
//! Sampling, every 100 ms from another in-process client: the pairing's `lag_seconds` from the
//! master's `ReplicationStatus` (the age of the oldest master change the slave has not
//! acknowledged, 0 in sync). Beside it, the same quantity measured from outside the sender:
//! the slave's head from node2's `PfsList`, and the oldest commit the writer has seen
//! answered with a TID beyond that head (a TID is its commit's wall-clock time), so its age.
//!
//! Afterwards `replctl wait-sync` and `replctl verify` (MATCH, or the run fails).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use repl_proto::{Attrs, PutHeader, pb};
use repl_types::{EntryPath, PfsName, Tid};

use crate::cluster::{self, Cluster};
use crate::data::{BLOCK, Incompressible};
use crate::node::Binaries;
use crate::scenario::{Ctx, Figure, Scenario, Target};
use crate::scenarios::import_throughput::seed;

/// The target for the p99 lag, in seconds.
pub const TARGET_SECS: f64 = 1.0;
/// Bytes per file.
const FILE_BYTES: usize = 4096;
/// One commit this often.
const WRITE_EVERY: Duration = Duration::from_millis(15);
/// One sample this often.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// See the module documentation.
pub struct Lag;

impl Scenario for Lag {
    fn name(&self) -> &'static str {
        "lag"
    }

    fn description(&self) -> &'static str {
        "a pairing's lag_seconds under a steady writer (a 4 KiB commit every 15 ms for 20 s), sampled every 100 ms: p50 and p99"
    }

    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>> {
        let bins = Binaries::locate()?;
        let duration = ctx.pick(Duration::from_secs(3), Duration::from_secs(20));
        let work = ctx.scratch("lag")?;
        let c = Cluster::start(&bins, &work.path().join("c"), 2, 4 << 30)?;
        c.replctl_ok(&["pfs", "create", "node1:data"])?;
        c.replctl_ok(&["--quiet", "pair", "node1:data", "node2:data"])?;
        c.replctl_ok(&["--quiet", "wait-sync", "node1:data", "node2:data"])?;
        ctx.progress(format_args!(
            "writing a {FILE_BYTES} B file every {WRITE_EVERY:?} for {duration:?}, sampling the lag every {SAMPLE_EVERY:?}"
        ));
        let before = c.cpu();
        let t = Instant::now();
        let load = cluster::runtime()?.block_on(load_and_sample(&c, duration))?;
        let secs = t.elapsed().as_secs_f64();
        let after = c.cpu();
        c.replctl_ok(&["--quiet", "wait-sync", "node1:data", "node2:data"])?;
        let verify = c.verify_match("node1:data", "node2:data")?;
        let row = c.pairing("node1", "node2:data")?;
        c.stop()?;

        ensure!(
            load.lags.len() >= 10,
            "only {} lag samples in {duration:?}",
            load.lags.len()
        );
        let lag = Percentiles::of(&load.lags);
        let outside = Percentiles::of(&load.outside);
        let put = Percentiles::of(&load.put_secs);
        ctx.progress(format_args!(
            "{} commits, {} samples: lag p50 {:.3} s, p99 {:.3} s, max {:.3} s (outside: p50 {:.3}, p99 {:.3}, max {:.3})",
            load.commits,
            load.lags.len(),
            lag.p50,
            lag.p99,
            lag.max,
            outside.p50,
            outside.p99,
            outside.max
        ));
        let cpu = |i: usize| after[i].since(&before[i]).cpu;
        Ok(vec![
            Figure::new("lag p50", lag.p50, "s").note(format!(
                "{} samples of the pairing's lag_seconds (master's ReplicationStatus, in-process client on its admin socket) every {} ms while a writer committed a {FILE_BYTES} B file every {} ms",
                load.lags.len(),
                SAMPLE_EVERY.as_millis(),
                WRITE_EVERY.as_millis()
            )),
            Figure::new("lag p99", lag.p99, "s")
                .note("nearest rank")
                .with_target(Target::AtMost(TARGET_SECS)),
            Figure::new("lag max", lag.max, "s"),
            Figure::new("lag p50, from outside", outside.p50, "s").note(
                "at each sample: node2's head (PfsList), then the age of the oldest writer commit with a greater TID",
            ),
            Figure::new("lag p99, from outside", outside.p99, "s"),
            Figure::new("lag max, from outside", outside.max, "s"),
            Figure::new(
                "samples with lag > 0",
                load.lags.iter().filter(|&&l| l > 0.0).count() as f64,
                "samples",
            )
            .note("the others found the slave in sync with every commit made"),
            Figure::new("samples not streaming", load.not_streaming as f64, "samples")
                .note("the pairing's state was not `streaming`"),
            Figure::new("writer: commits/s", load.commits as f64 / secs, "commits/s"),
            Figure::new("writer: put p50", put.p50 * 1e3, "ms"),
            Figure::new("writer: put p99", put.p99 * 1e3, "ms"),
            Figure::new("node1 (master) CPU", cpu(0), "s")
                .note("over the load, all of repld's threads"),
            Figure::new("node2 (slave) CPU", cpu(1), "s"),
            Figure::new("reconnects", row.reconnects as f64, "streams"),
            Figure::new("verify: entries (MATCH)", verify.entries as f64, "entries")
                .note("replctl verify node1:data node2:data said MATCH (a mismatch fails the run)"),
        ])
    }
}

/// What the load and the sampler saw.
struct Load {
    commits: u64,
    lags: Vec<f64>,
    outside: Vec<f64>,
    put_secs: Vec<f64>,
    not_streaming: u64,
}

async fn load_and_sample(c: &Cluster, duration: Duration) -> Result<Load> {
    let mut storage = cluster::storage(c.node(1)).await?;
    let mut master = cluster::admin(c.node(1)).await?;
    let mut slave = cluster::admin(c.node(2)).await?;
    let committed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let pool = Incompressible::new(BLOCK, seed());
    let pfs = PfsName::new("data").context("the PFS name")?;

    let tids = Arc::clone(&committed);
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(WRITE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = Instant::now();
        let mut put_secs = Vec::new();
        let mut i = 0u64;
        while start.elapsed() < duration {
            tick.tick().await;
            let header = PutHeader {
                pfs: pfs.clone(),
                path: EntryPath::new(format!("w/d{:03}/f{i:06}", i / 1000))
                    .context("a writer path")?,
                attrs: Attrs {
                    mode: 0o644,
                    mtime_ns: i64::try_from(Tid::now().get()).unwrap_or(i64::MAX),
                },
                size: None,
                parents: true,
            };
            let t = Instant::now();
            let r = storage
                .put_bytes(header, Bytes::from(pool.bytes(i, FILE_BYTES)))
                .await
                .with_context(|| format!("put file {i}"))?;
            put_secs.push(t.elapsed().as_secs_f64());
            tids.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(r.tid.get());
            i += 1;
        }
        anyhow::Ok((i, put_secs))
    });

    let mut lags = Vec::new();
    let mut outside = Vec::new();
    let mut not_streaming = 0;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    while !writer.is_finished() {
        tick.tick().await;
        let status = master
            .replication_status(pb::ReplicationStatusRequest {})
            .await?
            .into_inner();
        let row = status
            .pairings
            .iter()
            .find(|p| p.slave_node == "node2" && p.slave_pfs == "data")
            .context("no pairing to node2:data in node1's ReplicationStatus")?;
        lags.push(row.lag_seconds);
        if row.state != "streaming" {
            not_streaming += 1;
        }
        let head = cluster::head_tid(&mut slave, "data").await?;
        let now = Tid::now();
        let oldest_missing = {
            let tids = committed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let k = tids.partition_point(|&t| t <= head);
            tids.get(k).copied()
        };
        outside.push(oldest_missing.map_or(0.0, |t| Tid(t).lag_secs(now)));
    }
    let (commits, put_secs) = writer.await.context("the writer task")??;
    Ok(Load {
        commits,
        lags,
        outside,
        put_secs,
        not_streaming,
    })
}

/// Nearest-rank percentiles.
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(v: &[f64]) -> Percentiles {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if s.is_empty() {
                return 0.0;
            }
            let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
            s[rank - 1]
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            max: s.last().copied().unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.p50, p.p99, p.max), (100.0, 198.0, 200.0));
        let one = Percentiles::of(&[0.25]);
        assert_eq!((one.p50, one.p99, one.max), (0.25, 0.25, 0.25));
    }
}
