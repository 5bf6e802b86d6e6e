//! Files per second of `replctl import` of many 4 KiB files into a running node, with
//! `cp -a` + `sync -f` of the same tree beside it for context (issue 3).
//!
//! The tree ([`tree::small_files`]): 100,000 files of 4 KiB (5,000 with `--quick`) of
//! incompressible data in 400 directories (20 with `--quick`), generated afresh each run before
//! anything is timed. The sides are those of [`operator`], set up the same way.

use anyhow::Result;

use crate::node::Binaries;
use crate::operator;
use crate::scenario::{Ctx, Figure, Scenario};
use crate::scenarios::import_throughput::seed;
use crate::tree;

/// Bytes per file.
pub const FILE_BYTES: usize = 4096;

/// See the module documentation.
pub struct ImportSmallFiles;

impl Scenario for ImportSmallFiles {
    fn name(&self) -> &'static str {
        "import-small-files"
    }

    fn description(&self) -> &'static str {
        "files/s of replctl import of 4 KiB files into a running node (cp -a + sync -f for context)"
    }

    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>> {
        let bins = Binaries::locate()?;
        let (count, dirs) = ctx.pick((5_000, 20), (100_000, 400));
        let src = ctx.scratch("import-src")?;
        ctx.progress(format_args!(
            "generating {count} files of {FILE_BYTES} bytes in {dirs} directories"
        ));
        let tree = tree::small_files(&src.path().join("tree"), count, FILE_BYTES, dirs, seed())?;
        let (import, cp) = operator::both(ctx, &bins, &tree)?;
        let i_rate = tree.files as f64 / import.secs;
        let c_rate = tree.files as f64 / cp.secs;
        ctx.progress(format_args!(
            "import {i_rate:.0} files/s ({} transactions), cp -a + sync {c_rate:.0} files/s",
            import.transactions
        ));
        Ok(vec![
            Figure::new("import: replctl import", i_rate, "files/s").note(format!(
                "{} files of {FILE_BYTES} bytes in {} dirs; wall time from spawning `replctl import --json DIR PFS` (admin socket, fresh node) until it exited 0",
                tree.files, tree.dirs
            )),
            Figure::new("cp: cp -a + sync -f", c_rate, "files/s").note(
                "same tree, new directory on the same file system, until `sync -f DEST` exited; set up as import-throughput's sides",
            ),
            Figure::new("import / cp", i_rate / c_rate, "x"),
            Figure::new("import: wall time", import.secs, "s"),
            Figure::new("import: transactions", import.transactions as f64, "txns"),
            Figure::new("import: replctl CPU", import.client_cpu, "s"),
            Figure::new("import: repld CPU", import.server_cpu, "s"),
            Figure::new("import: repld waiting for a CPU", import.server_wait, "s"),
            Figure::new("cp: wall time", cp.secs, "s"),
            Figure::new("cp: of which sync -f", cp.sync_secs, "s"),
            Figure::new("cp: CPU (cp + sync)", cp.cpu, "s"),
        ])
    }
}
