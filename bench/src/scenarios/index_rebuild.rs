//! Index rebuild time per GiB of log.
//!
//! Writes about 1 GiB of log (quick: 64 MiB): many small files (4 KiB, committed 500 per
//! transaction in directories of 1,000, as an import would) and large files (32 MiB, one per
//! transaction) for the rest. Closes the engine, drops the device image's pages from the page
//! cache (`fdatasync` + `posix_fadvise(DONTNEED)` on that file only), and times
//! `Engine::open` with `rebuild_index: true` until it returns, i.e. until the engine serves
//! reads from an index rebuilt from the device alone. The rebuilt engine is then checked to see
//! the same head TID and files.

use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use repld_engine::{At, Engine};

use crate::data::Incompressible;
use crate::fixture::{self, Counters};
use crate::scenario::{Ctx, Figure, Scenario};

/// Bytes per small file.
pub const SMALL_BYTES: usize = 4096;
/// Small files per transaction.
const SMALL_PER_TXN: usize = 500;
/// Small files per directory.
const SMALL_PER_DIR: usize = 1000;

/// See the module documentation.
pub struct IndexRebuild;

impl Scenario for IndexRebuild {
    fn name(&self) -> &'static str {
        "index-rebuild"
    }

    fn description(&self) -> &'static str {
        "rebuild the index from the device alone, after ~1 GiB of log of large and small files"
    }

    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>> {
        let total: u64 = ctx.pick(64 << 20, 1 << 30);
        let small_files: usize = ctx.pick(2_000, 50_000);
        let large_bytes: u64 = ctx.pick(8 << 20, 32 << 20);
        let small_total = (small_files * SMALL_BYTES) as u64;
        let large_files = total.saturating_sub(small_total).div_ceil(large_bytes);
        let pool = Incompressible::fresh(64 << 20);
        let dir = ctx.scratch("index-rebuild")?;
        let device_bytes = total * 2 + (1 << 30);

        // Write the log.
        let (engine, pfs) = fixture::fresh_engine(dir.path(), device_bytes)?;
        let t = Instant::now();
        let mut tx = engine.begin(&pfs)?;
        tx.mkdir(&fixture::path("small")?, fixture::dir_attrs(), false)?;
        tx.commit().context("create the small files' directory")?;
        let mut stream = 0u64;
        let mut written = 0usize;
        while written < small_files {
            let mut tx = engine.begin(&pfs)?;
            let end = (written + SMALL_PER_TXN).min(small_files);
            for i in written..end {
                let d = format!("small/d{:04}", i / SMALL_PER_DIR);
                if i % SMALL_PER_DIR == 0 {
                    tx.mkdir(&fixture::path(&d)?, fixture::dir_attrs(), false)?;
                }
                stream += 1;
                tx.put_bytes(
                    &fixture::path(&format!("{d}/f{i:06}"))?,
                    fixture::attrs(),
                    &pool.bytes(stream, SMALL_BYTES),
                )?;
            }
            tx.commit().context("commit small files")?;
            written = end;
        }
        for i in 0..large_files {
            let mut tx = engine.begin(&pfs)?;
            stream += 1;
            tx.put_file(
                &fixture::path(&format!("large-{i:04}.bin"))?,
                fixture::attrs(),
                &mut pool.reader(stream, large_bytes),
            )?;
            tx.commit().context("commit a large file")?;
        }
        let write_secs = t.elapsed().as_secs_f64();
        let log = Counters::read(engine.stats());
        let used = engine.space().used_bytes();
        let head = engine.pfs(&pfs)?.head;
        engine.close();
        drop(engine);
        ctx.progress(format_args!(
            "wrote {} small + {large_files} large files, {} MiB of log, in {write_secs:.1} s",
            small_files,
            log.bytes_written >> 20
        ));

        // Rebuild from a cold cache.
        let device = fixture::device_path(dir.path());
        fixture::evict_from_cache(&device)?;
        let mut opts = fixture::options(dir.path(), device_bytes);
        opts.create = None;
        opts.rebuild_index = true;
        let t = Instant::now();
        let engine = Engine::open(opts).context("open with rebuild_index")?;
        let rebuild_secs = t.elapsed().as_secs_f64();
        check_rebuilt(&engine, &pfs, head, small_files, large_files, large_bytes)?;
        let t = Instant::now();
        engine.close();
        let close_secs = t.elapsed().as_secs_f64();

        let gib = log.bytes_written as f64 / (1u64 << 30) as f64;
        ctx.progress(format_args!(
            "rebuilt in {rebuild_secs:.2} s ({:.2} s/GiB of log)",
            rebuild_secs / gib
        ));
        Ok(vec![
            Figure::new("rebuild per GiB of log", rebuild_secs / gib, "s/GiB").note(format!(
                "Engine::open(rebuild_index) until it returns, device pages evicted first (cold); log = {} small 4 KiB files in txns of {SMALL_PER_TXN} + {large_files} files of {} MiB",
                small_files,
                large_bytes >> 20
            )),
            Figure::new("rebuild time", rebuild_secs, "s"),
            Figure::new("log size (bytes written)", gib, "GiB")
                .note("engine stats bytes_written; the device's used segments are listed beside it"),
            Figure::new(
                "device used (whole segments)",
                used as f64 / (1u64 << 30) as f64,
                "GiB",
            ),
            Figure::new("close after rebuild (index flush)", close_secs, "s"),
        ])
    }
}

fn check_rebuilt(
    engine: &Engine,
    pfs: &repld_engine::PfsName,
    head: repld_engine::Tid,
    small_files: usize,
    large_files: u64,
    large_bytes: u64,
) -> Result<()> {
    ensure!(
        engine
            .stats()
            .index_rebuilds
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the engine did not rebuild its index"
    );
    let got = engine.pfs(pfs)?.head;
    ensure!(got == head, "head after rebuild is {got}, was {head}");
    let last_small = small_files - 1;
    let small = engine.stat(
        pfs,
        &fixture::path(&format!(
            "small/d{:04}/f{last_small:06}",
            last_small / SMALL_PER_DIR
        ))?,
        &At::Head,
    )?;
    ensure!(
        small.meta.size == SMALL_BYTES as u64,
        "small file size after rebuild"
    );
    if large_files > 0 {
        let large = engine.stat(
            pfs,
            &fixture::path(&format!("large-{:04}.bin", large_files - 1))?,
            &At::Head,
        )?;
        ensure!(
            large.meta.size == large_bytes,
            "large file size after rebuild"
        );
    }
    Ok(())
}
