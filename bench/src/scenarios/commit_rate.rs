//! Commits per second of 4 KiB files, with one writer and with 16 concurrent writers.
//!
//! Each writer thread commits one new file of 4 KiB of random bytes per transaction, for a fixed
//! time, into its own directory of one PFS. The two phases use fresh engines. Group commit is
//! what should make 16 writers much faster than one: they share one write and one `fdatasync`.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use repld_engine::{Engine, PfsName};

use crate::fixture::{self, Counters};
use crate::scenario::{Ctx, Figure, Scenario, Target};

/// Bytes per file.
pub const FILE_BYTES: usize = 4096;
/// Writers of the concurrent phase.
pub const WRITERS: usize = 16;
/// The target for the ratio of the two rates.
pub const TARGET: f64 = 5.0;

/// See the module documentation.
pub struct CommitRate;

impl Scenario for CommitRate {
    fn name(&self) -> &'static str {
        "commit-rate"
    }

    fn description(&self) -> &'static str {
        "commits/s of 4 KiB files (one per commit), 1 writer vs 16 concurrent writers on one PFS"
    }

    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>> {
        let duration = ctx.pick(Duration::from_secs(1), Duration::from_secs(5));
        let one = phase(ctx, 1, duration)?;
        ctx.progress(format_args!("1 writer: {:.0} commits/s", one.rate()));
        let many = phase(ctx, WRITERS, duration)?;
        ctx.progress(format_args!(
            "{WRITERS} writers: {:.0} commits/s, {:.1} commits per fdatasync",
            many.rate(),
            many.commits_per_fsync()
        ));
        let how = format!(
            "each writer commits one new 4 KiB random file per transaction for {} s; fresh engine per phase",
            duration.as_secs()
        );
        Ok(vec![
            Figure::new("1 writer", one.rate(), "commits/s").note(how),
            Figure::new("1 writer: p99 commit latency", one.p99_ms(), "ms"),
            Figure::new("1 writer: mean fdatasync", one.mean_fsync_ms(), "ms"),
            Figure::new(format!("{WRITERS} writers"), many.rate(), "commits/s"),
            Figure::new(
                format!("{WRITERS} writers: p99 commit latency"),
                many.p99_ms(),
                "ms",
            ),
            Figure::new(
                format!("{WRITERS} writers: commits per fdatasync"),
                many.commits_per_fsync(),
                "commits",
            ),
            Figure::ratio(
                format!("{WRITERS} writers / 1 writer"),
                many.rate() / one.rate(),
                Target::AtLeast(TARGET),
            ),
        ])
    }
}

/// What one phase measured.
struct Phase {
    commits: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    counters: Counters,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }

    fn p99_ms(&self) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        let i = (l.len() * 99 / 100).min(l.len().saturating_sub(1));
        l.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    fn commits_per_fsync(&self) -> f64 {
        self.counters.commits as f64 / self.counters.fsyncs.max(1) as f64
    }

    fn mean_fsync_ms(&self) -> f64 {
        self.counters.fsync_ns as f64 / self.counters.fsyncs.max(1) as f64 / 1e6
    }
}

fn phase(ctx: &Ctx, writers: usize, duration: Duration) -> Result<Phase> {
    let dir = ctx.scratch(&format!("commit-rate-{writers}"))?;
    // Sparse: only what is written takes space.
    let (engine, pfs) = fixture::fresh_engine(dir.path(), 16 << 30)?;
    let mut tx = engine.begin(&pfs)?;
    for w in 0..writers {
        tx.mkdir(
            &fixture::path(&format!("w{w:02}"))?,
            fixture::dir_attrs(),
            false,
        )?;
    }
    tx.commit().context("create the writers' directories")?;
    fixture::sync_fs(dir.path())?;

    let before = Counters::read(engine.stats());
    let barrier = Barrier::new(writers + 1);
    let (elapsed, results) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (engine, pfs, barrier) = (&engine, &pfs, &barrier);
                s.spawn(move || writer(engine, pfs, w, barrier, duration))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<Result<Vec<Duration>>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer thread panicked")))
            })
            .collect();
        (start.elapsed(), results)
    });
    let counters = Counters::read(engine.stats()).since(&before);
    let mut latencies = Vec::new();
    for r in results {
        latencies.extend(r?);
    }
    engine.close();
    Ok(Phase {
        commits: latencies.len() as u64,
        elapsed,
        latencies,
        counters,
    })
}

/// One writer: new 4 KiB files, one per commit, until the time is up. Returns the latencies.
fn writer(
    engine: &Engine,
    pfs: &PfsName,
    w: usize,
    barrier: &Barrier,
    duration: Duration,
) -> Result<Vec<Duration>> {
    let mut rng = SmallRng::from_os_rng();
    let mut buf = vec![0u8; FILE_BYTES];
    let mut latencies = Vec::new();
    barrier.wait();
    let deadline = Instant::now() + duration;
    let mut n = 0u64;
    while Instant::now() < deadline {
        rng.fill_bytes(&mut buf);
        let path = fixture::path(&format!("w{w:02}/f{n:09}"))?;
        let t = Instant::now();
        let mut tx = engine.begin(pfs)?;
        tx.put_bytes(&path, fixture::attrs(), &buf)?;
        tx.commit()
            .with_context(|| format!("writer {w}: commit {n}"))?;
        latencies.push(t.elapsed());
        n += 1;
    }
    Ok(latencies)
}
