//! Write throughput and commit latency while space reclaim runs, against the same writer with
//! reclaim idle (issue 7: at least 0.7 of the throughput, p99 at most 2x).
//!
//! One engine on a sparse image. A working set of 1 MiB files is written, two thirds of it are
//! overwritten twice, under a retention of one second, and it is pruned: most of the log is then
//! dead, and the oldest segments, which reclaim cleans, keep a third of their data live (which
//! reclaim copies). Then one writer commits 64 KiB files of random bytes (one per commit): with
//! reclaim idle for half the time, while a thread runs [`Engine::reclaim_step`]s of
//! [`STEP_BYTES`] paced at [`RATE`] bytes per second (as the daemon's worker is by default) for
//! the whole time, and idle again for half the time; the two idle halves make the idle figures. Both phases write into the same engine and the same log, so
//! they differ only by reclaim. The reclaim phase also reports what reclaim did during it, so a
//! figure taken while reclaim had nothing left to do cannot pass for one taken under it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use repld_engine::{Engine, PfsName, PfsOptions, PruneOptions, ReclaimStep, Retention};

use crate::fixture;
use crate::scenario::{Ctx, Figure, Scenario, Target};

/// Bytes per file the measured writer commits.
pub const FILE_BYTES: usize = 64 << 10;
/// Bytes of the cleaned segment one reclaim step reads, as the daemon's worker does.
pub const STEP_BYTES: u64 = 1 << 20;
/// The pace of reclaim: the daemon's default `[reclaim] rate`.
pub const RATE: u64 = 32 << 20;
/// The targets: throughput ratio at least, p99 ratio at most.
pub const THROUGHPUT_TARGET: f64 = 0.7;
/// See [`THROUGHPUT_TARGET`].
pub const P99_TARGET: f64 = 2.0;

/// See the module documentation.
pub struct ReclaimWrites;

impl Scenario for ReclaimWrites {
    fn name(&self) -> &'static str {
        "reclaim-writes"
    }

    fn description(&self) -> &'static str {
        "write throughput and commit p99 of one writer (64 KiB files) while space reclaim runs at the default rate, vs reclaim idle"
    }

    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>> {
        let working_set: u64 = ctx.pick(24 << 20, 256 << 20);
        let duration = ctx.pick(Duration::from_secs(1), Duration::from_secs(5));
        let dir = ctx.scratch("reclaim-writes")?;
        // A sparse 16 GiB image has the 64 MiB segments of a default node; a quick run uses
        // 4 MiB ones, so that reclaim frees whole segments within its short phase.
        let mut options = fixture::options(dir.path(), 16 << 30);
        if let Some(format) = &mut options.create {
            format.segment_size = ctx.pick(Some(4 << 20), None);
        }
        let engine = Engine::open(options).context("open a fresh engine")?;
        let pfs = PfsName::new(fixture::PFS).context("the bench PFS name")?;
        engine.create_pfs(&pfs, PfsOptions::default())?;
        make_garbage(&engine, &pfs, working_set)?;
        let before = engine.space_usage()?;
        ctx.progress(format_args!(
            "{} MiB reclaimable of {} MiB used",
            before.reclaimable_bytes >> 20,
            engine.space().used_bytes() >> 20
        ));

        // Idle before and after the reclaim phase, so that neither warm-up nor a growing log
        // favours one side.
        let mut idle = measure(&engine, &pfs, duration / 2, None, "idle-1")?;
        ctx.progress(format_args!(
            "reclaim idle: {:.1} MB/s, p99 {:.2} ms",
            idle.mb_per_s(),
            idle.p99_ms()
        ));
        let mut done = ReclaimStep::default();
        let busy = measure(&engine, &pfs, duration, Some(&mut done), "running")?;
        idle.add(measure(&engine, &pfs, duration / 2, None, "idle-2")?);
        ctx.progress(format_args!(
            "reclaim running: {:.1} MB/s, p99 {:.2} ms; reclaim read {} MiB, copied {} MiB, freed {} segments",
            busy.mb_per_s(),
            busy.p99_ms(),
            done.scanned_bytes >> 20,
            done.copied_bytes >> 20,
            done.freed_segments
        ));
        ensure!(
            done.freed_segments > 0,
            "reclaim freed nothing during the measured phase: the figures would not be under reclaim"
        );
        engine.close();

        let how = format!(
            "1 writer, one 64 KiB random file per commit, {} s under reclaim between two idle halves of as long, same engine; before: a {} MiB working set written, 2/3 of it overwritten twice, retention 1s, pruned",
            duration.as_secs(),
            working_set >> 20
        );
        let reclaim_mb_s = done.scanned_bytes as f64 / 1e6 / busy.elapsed.as_secs_f64();
        Ok(vec![
            Figure::new("reclaim idle: write throughput", idle.mb_per_s(), "MB/s").note(how),
            Figure::new("reclaim idle: commit p99", idle.p99_ms(), "ms"),
            Figure::new("reclaim running: write throughput", busy.mb_per_s(), "MB/s"),
            Figure::new("reclaim running: commit p99", busy.p99_ms(), "ms"),
            Figure::new("reclaim: read from cleaned segments", reclaim_mb_s, "MB/s").note(format!(
                "paced at {} MiB/s in steps of {} MiB, as the daemon's worker by default",
                RATE >> 20,
                STEP_BYTES >> 20
            )),
            Figure::new(
                "reclaim: copied / freed during the phase",
                done.copied_bytes as f64 / f64::from(1 << 20),
                format!("MiB / {} segments", done.freed_segments),
            ),
            Figure::ratio(
                "throughput: running / idle",
                busy.mb_per_s() / idle.mb_per_s(),
                Target::AtLeast(THROUGHPUT_TARGET),
            ),
            Figure::ratio(
                "commit p99: running / idle",
                busy.p99_ms() / idle.p99_ms(),
                Target::AtMost(P99_TARGET),
            ),
        ])
    }
}

/// Writes the working set as 1 MiB files, then overwrites two thirds of them twice, and prunes
/// all but the head: 4 of the 7 parts written become dead, and the oldest segments keep a third
/// of their data live.
fn make_garbage(engine: &Engine, pfs: &PfsName, working_set: u64) -> Result<()> {
    let policy: Retention = "1s".parse().context("the retention policy")?;
    engine.set_retention(pfs, policy)?;
    let mut rng = SmallRng::seed_from_u64(7);
    let mut buf = vec![0u8; 1 << 20];
    let files = working_set >> 20;
    let mut tx = engine.begin(pfs)?;
    tx.ensure_dir(&fixture::path("set")?, fixture::dir_attrs())?;
    tx.commit().context("the working set's directory")?;
    for round in 0..3 {
        for chunk in 0..files.div_ceil(16) {
            let mut tx = engine.begin(pfs)?;
            for f in chunk * 16..((chunk + 1) * 16).min(files) {
                if round > 0 && f % 3 == 0 {
                    // A third of the first round stays live, spread over the oldest segments:
                    // reclaim has to copy it out.
                    continue;
                }
                rng.fill_bytes(&mut buf);
                tx.put_bytes(
                    &fixture::path(&format!("set/f{f:05}"))?,
                    fixture::attrs(),
                    &buf,
                )?;
            }
            tx.commit()
                .with_context(|| format!("round {round}: commit {chunk}"))?;
        }
    }
    // Everything older than a second goes (the head stays).
    std::thread::sleep(Duration::from_millis(1100));
    engine.prune(pfs, PruneOptions::now())?;
    Ok(())
}

/// What one phase measured.
struct Phase {
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn add(&mut self, other: Phase) {
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    fn p99_ms(&self) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        let i = (l.len() * 99 / 100).min(l.len().saturating_sub(1));
        l.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }
}

/// One writer for `duration`; with `reclaim`, a reclaim thread runs beside it and adds what it
/// did there.
fn measure(
    engine: &Engine,
    pfs: &PfsName,
    duration: Duration,
    reclaim: Option<&mut ReclaimStep>,
    label: &str,
) -> Result<Phase> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reclaimer = reclaim
            .is_some()
            .then(|| s.spawn(|| reclaim_paced(engine, &stop)));
        let phase = writer(engine, pfs, duration, label);
        stop.store(true, Ordering::Relaxed);
        if let (Some(h), Some(total)) = (reclaimer, reclaim) {
            *total = h
                .join()
                .map_err(|_| anyhow::anyhow!("the reclaim thread panicked"))??;
        }
        phase
    })
}

/// Reclaim steps at [`RATE`] bytes per second (counted on the bytes each step reads) until
/// `stop`. Returns the sum of the steps.
fn reclaim_paced(engine: &Engine, stop: &AtomicBool) -> Result<ReclaimStep> {
    let mut total = ReclaimStep::default();
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let step = engine.reclaim_step(STEP_BYTES)?;
        total.scanned_bytes += step.scanned_bytes;
        total.copied_bytes += step.copied_bytes;
        total.freed_segments += step.freed_segments;
        if step.idle {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let due = Duration::from_secs_f64(total.scanned_bytes as f64 / RATE as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(total)
}

/// Commits one new 64 KiB random file per transaction, in the directory `label`, until
/// `duration` is up.
fn writer(engine: &Engine, pfs: &PfsName, duration: Duration, label: &str) -> Result<Phase> {
    let dir = fixture::path(label)?;
    let mut tx = engine.begin(pfs)?;
    tx.ensure_dir(&dir, fixture::dir_attrs())?;
    tx.commit().context("the writer's directory")?;
    let mut rng = SmallRng::from_os_rng();
    let mut buf = vec![0u8; FILE_BYTES];
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        rng.fill_bytes(&mut buf);
        let path = fixture::path(&format!("{label}/f{:09}", latencies.len()))?;
        let t = Instant::now();
        let mut tx = engine.begin(pfs)?;
        tx.put_bytes(&path, fixture::attrs(), &buf)?;
        tx.commit().context("a measured commit")?;
        latencies.push(t.elapsed());
    }
    Ok(Phase {
        bytes: latencies.len() as u64 * FILE_BYTES as u64,
        elapsed: start.elapsed(),
        latencies,
    })
}
