//! Import throughput of a tree of mixed files through `replctl import` and a running node,
//! against `cp -a` + `sync -f` of the same tree to the same file system, in the same run
//! (issue 3).
//!
//! The tree ([`tree::mixed`]): 1 GiB (64 MiB with `--quick`) of files from 4 KiB to 48 MiB,
//! half of the bytes incompressible and half compressible text, in 42 directories, generated
//! afresh each run before anything is timed. The two sides and how they are made fair are in
//! [`operator`]: both read the tree from disk, both end with their data durable, and their order
//! alternates between runs.

use anyhow::Result;

use crate::node::Binaries;
use crate::operator::{self, mb_per_s};
use crate::scenario::{Ctx, Figure, Scenario, Target};
use crate::tree;

/// The target for import / cp.
pub const TARGET: f64 = 0.7;

/// See the module documentation.
pub struct ImportThroughput;

impl Scenario for ImportThroughput {
    fn name(&self) -> &'static str {
        "import-throughput"
    }

    fn description(&self) -> &'static str {
        "replctl import of a mixed, half-incompressible tree into a running node vs cp -a + sync -f of it"
    }

    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>> {
        let bins = Binaries::locate()?;
        let total: u64 = ctx.pick(64 << 20, 1 << 30);
        let src = ctx.scratch("import-src")?;
        ctx.progress(format_args!(
            "generating {} MiB of mixed files",
            total >> 20
        ));
        let tree = tree::mixed(&src.path().join("tree"), total, seed())?;
        let (import, cp) = operator::both(ctx, &bins, &tree)?;
        let i_rate = mb_per_s(tree.bytes, import.secs);
        let c_rate = mb_per_s(tree.bytes, cp.secs);
        ctx.progress(format_args!(
            "import {i_rate:.0} MB/s ({} transactions), cp -a + sync {c_rate:.0} MB/s: ratio {:.2}",
            import.transactions,
            i_rate / c_rate
        ));
        Ok(vec![
            Figure::new("import: replctl import", i_rate, "MB/s").note(format!(
                "{} files ({:.0}% of {} MiB incompressible, the rest text) in {} dirs; wall time from spawning `replctl import --json DIR PFS` (admin socket, fresh node) until it exited 0; MB = 10^6 bytes",
                tree.files,
                100.0 * tree.random_bytes as f64 / tree.bytes as f64,
                tree.bytes >> 20,
                tree.dirs
            )),
            Figure::new("cp: cp -a + sync -f", c_rate, "MB/s").note(
                "same tree, new directory on the same file system, until `sync -f DEST` exited; before each side: tree evicted from the page cache, page-cache warm-up, syncfs; order alternates per run",
            ),
            Figure::ratio("import / cp", i_rate / c_rate, Target::AtLeast(TARGET)),
            Figure::new("import: wall time", import.secs, "s"),
            Figure::new("import: transactions", import.transactions as f64, "txns"),
            Figure::new("import: replctl CPU", import.client_cpu, "s")
                .note("walks and reads the tree, frames and sends it over gRPC"),
            Figure::new("import: repld CPU", import.server_cpu, "s")
                .note("receives, hashes, writes and commits; all of its threads"),
            Figure::new("import: repld waiting for a CPU", import.server_wait, "s")
                .note("runnable but not running: other work on the machine (schedstat run delay)"),
            Figure::new(
                "import: node's bytes on disk / data bytes",
                import.stored_bytes as f64 / tree.bytes as f64,
                "x",
            ),
            Figure::new("cp: wall time", cp.secs, "s"),
            Figure::new("cp: of which sync -f", cp.sync_secs, "s"),
            Figure::new("cp: CPU (cp + sync)", cp.cpu, "s"),
        ])
    }
}

/// A seed from the clock, so that separate runs never share data.
pub(crate) fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
