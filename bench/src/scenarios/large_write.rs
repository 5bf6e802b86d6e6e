//! Large-file write throughput through the engine, against a plain sequential write +
//! `fdatasync` of the same bytes to the same file system, in the same run.
//!
//! Both sides read the same kind of incompressible, never-repeating stream from memory
//! ([`crate::data`]) and write fresh files: the engine a newly formatted sparse image, the plain
//! side a newly created file. Before each side, a scratch file of the same size is written and
//! deleted ([`fixture::warm_page_cache`]: on this VM, page-cache pages not used recently cost
//! up to 10x more to write) and the file system is `syncfs`ed, so neither side pays for the
//! other's write-back. The order of the two sides alternates between runs.
//!
//! - Engine: `begin`, `Txn::put_file` streaming from the reader, `commit`; timed until `commit`
//!   returns (the data is then durable).
//! - Plain: `File::create`, `write_all` in 1 MiB pieces, `File::sync_data`; timed until
//!   `sync_data` returns.

use std::fs::File;
use std::io::{Read, Write};
use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::data::{BLOCK, Incompressible};
use crate::fixture::{self, Counters, Sched, mib_per_s};
use crate::scenario::{Ctx, Figure, Scenario, Target};

/// The target for engine / plain.
pub const TARGET: f64 = 0.8;
/// The most random bytes generated up front; longer streams reuse them with per-MiB stamps.
const POOL_BYTES: usize = 256 << 20;
/// The name of the engine's writer thread.
const WRITER_THREAD: &str = "repld-writer";

/// See the module documentation.
pub struct LargeWrite;

impl Scenario for LargeWrite {
    fn name(&self) -> &'static str {
        "large-write"
    }

    fn description(&self) -> &'static str {
        "one large incompressible file through the engine vs a plain write + fdatasync of the same bytes"
    }

    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>> {
        let size: u64 = ctx.pick(64 << 20, 1 << 30);
        let pool = Incompressible::fresh((size as usize).min(POOL_BYTES));
        let (engine, plain) = if ctx.run_index() & 1 == 0 {
            let e = engine_side(ctx, &pool, size)?;
            (e, plain_side(ctx, &pool, size)?)
        } else {
            let p = plain_side(ctx, &pool, size)?;
            (engine_side(ctx, &pool, size)?, p)
        };
        let e_rate = mib_per_s(size, engine.secs);
        let p_rate = mib_per_s(size, plain.secs);
        ctx.progress(format_args!(
            "engine {e_rate:.0} MiB/s ({} fdatasyncs), plain {p_rate:.0} MiB/s",
            engine.counters.fsyncs
        ));
        Ok(vec![
            Figure::new("engine: put_file + commit", e_rate, "MiB/s").note(format!(
                "{} MiB file, time from begin until commit returned; fresh sparse image; before each side: page-cache warm-up of the same size + syncfs; order alternates per run",
                size >> 20
            )),
            Figure::new("plain: write + fdatasync", p_rate, "MiB/s").note(
                "same bytes (another stream of the same generator), new file, 1 MiB writes, one sync_data",
            ),
            Figure::ratio("engine / plain", e_rate / p_rate, Target::AtLeast(TARGET)),
            Figure::new(
                "engine: fdatasyncs",
                engine.counters.fsyncs as f64,
                "calls",
            ),
            Figure::new(
                "engine: time in fdatasync",
                engine.counters.fsync_ns as f64 / 1e9,
                "s",
            ),
            Figure::new("engine: wall time", engine.secs, "s"),
            Figure::new("engine: CPU time (all threads)", engine.cpu_secs, "s"),
            Figure::new(
                "engine: CPU time, calling thread",
                engine.threads[0].cpu,
                "s",
            )
            .note("reads the data, hashes (BLAKE3) and frames the chunks"),
            Figure::new("engine: CPU time, writer thread", engine.threads[1].cpu, "s")
                .note("checks and places chunks in flush units, writes them, fdatasync"),
            Figure::new(
                "engine: waiting for a CPU, both threads",
                engine.threads[0].wait + engine.threads[1].wait,
                "s",
            )
            .note("runnable but not running: other work on the machine (schedstat run delay)"),
            Figure::new("plain: wall time", plain.secs, "s"),
            Figure::new("plain: CPU time", plain.cpu_secs, "s"),
            Figure::new("plain: waiting for a CPU", plain.threads[0].wait, "s"),
            Figure::new(
                "engine: log bytes / data bytes",
                engine.counters.bytes_written as f64 / size as f64,
                "x",
            ),
        ])
    }
}

/// One measured side.
pub(crate) struct Side {
    /// Wall seconds.
    pub(crate) secs: f64,
    /// CPU seconds of the whole process (all threads) during the side.
    cpu_secs: f64,
    /// Scheduler accounting of the calling thread and (for the engine) its writer thread.
    threads: [Sched; 2],
    counters: Counters,
}

fn engine_side(ctx: &Ctx, pool: &Incompressible, size: u64) -> Result<Side> {
    let dir = ctx.scratch("large-write-engine")?;
    let (engine, pfs) = fixture::fresh_engine(dir.path(), size + size / 2 + (1 << 30))?;
    let path = fixture::path("large.bin")?;
    fixture::warm_page_cache(dir.path(), size)?;
    fixture::sync_fs(dir.path())?;
    let before = Counters::read(engine.stats());
    let cpu = fixture::cpu_time();
    let caller = Sched::this_thread();
    let writer = Sched::threads_named(WRITER_THREAD);
    let t = Instant::now();
    let mut tx = engine.begin(&pfs)?;
    let mut reader = pool.reader(1, size);
    let written = tx.put_file(&path, fixture::attrs(), &mut reader)?;
    tx.commit().context("commit the large file")?;
    let secs = t.elapsed().as_secs_f64();
    let cpu_secs = (fixture::cpu_time() - cpu).as_secs_f64();
    let caller = Sched::this_thread().since(&caller);
    let writer = Sched::threads_named(WRITER_THREAD).since(&writer);
    let counters = Counters::read(engine.stats()).since(&before);
    anyhow::ensure!(written == size, "the engine took {written} bytes of {size}");
    engine.close();
    Ok(Side {
        secs,
        cpu_secs,
        threads: [caller, writer],
        counters,
    })
}

/// The plain side: a new file in a fresh scratch directory, `size` bytes of stream 2 of `pool`
/// in 1 MiB writes, one `sync_data`; page-cache warm-up and `syncfs` before the clock starts.
pub(crate) fn plain_side(ctx: &Ctx, pool: &Incompressible, size: u64) -> Result<Side> {
    let dir = ctx.scratch("large-write-plain")?;
    let path = dir.path().join("plain.bin");
    fixture::warm_page_cache(dir.path(), size)?;
    fixture::sync_fs(dir.path())?;
    let mut buf = vec![0u8; BLOCK];
    let cpu = fixture::cpu_time();
    let sched = Sched::this_thread();
    let t = Instant::now();
    let mut f = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut reader = pool.reader(2, size);
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])
            .with_context(|| format!("write {}", path.display()))?;
    }
    f.sync_data()
        .with_context(|| format!("fdatasync {}", path.display()))?;
    let secs = t.elapsed().as_secs_f64();
    let cpu_secs = (fixture::cpu_time() - cpu).as_secs_f64();
    Ok(Side {
        secs,
        cpu_secs,
        threads: [Sched::this_thread().since(&sched), Sched::default()],
        counters: Counters::default(),
    })
}
