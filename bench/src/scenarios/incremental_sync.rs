//! Streaming a 1% change of a 100,000-file tree to a paired slave, against `rsync -a` of the
//! same change to an rsync daemon on loopback (issue 4).
//!
//! Set-up, not timed: the tree of `import-small-files` ([`tree::small_files`]: 100,000 files of
//! 4 KiB in 400 directories; 5,000 in 20 with `--quick`), imported into `node1:data`, paired
//! with `node2:data` and synced ([`Cluster`], mutual TLS on loopback); and pushed with
//! `rsync -a` to an `rsync --daemon` on `127.0.0.1` whose module is a directory on the same file
//! system, then `sync -f`. The pairing stays up from then on.
//!
//! The change: every 100th file (1,000 files) gets new incompressible content of the same size
//! and an mtime an hour later. It is written in place into the source tree (for rsync) and into
//! a separate directory of the same layout holding only those files (for `replctl import`), whose
//! directories get the source directories' mode and mtime, so that importing it changes exactly
//! those files, in one transaction. Both are written before either side is timed.
//!
//! - **repld**: `replctl import CHANGE node1:data` commits the change (timed on its own), then
//!   `replctl wait-sync node1:data node2:data` runs. The figure is the wall-clock time from the
//!   commit's TID (a TID is its commit's wall-clock time) until wait-sync exited 0: the change
//!   streamed and durable on the slave. An in-process poll of the slave's head every 5 ms gives
//!   the same without wait-sync's own start and connections (it waits on `PfsWaitHead`).
//! - **rsync**: `rsync -a --stats SRC/ rsync://127.0.0.1:PORT/bench/`, then `sync -f DEST` so
//!   that the copy is durable as the slave's is; `--stats` must report the changed files as the
//!   only ones transferred.
//!
//! Both start with the caches as the set-up left them (the tree's inodes and the changed data
//! in memory on both sides), after `syncfs` and the page-cache warm-up; the order alternates
//! between runs. Afterwards `replctl verify` must say MATCH and the rsync copy must hold the new
//! content, or the run fails.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, ensure};
use repl_types::Tid;
use serde::Deserialize;

use crate::cluster::{Cluster, SlaveWatch, parse_tid};
use crate::data::Incompressible;
use crate::fixture;
use crate::node::{self, Binaries, ProcCpu};
use crate::rsyncd::{self, Rsyncd};
use crate::scenario::{Ctx, Figure, Scenario, Target};
use crate::scenarios::import_throughput::seed;
use crate::scenarios::initial_sync::SlaveIo;
use crate::tree::{self, Tree};

/// The target for rsync / repld.
pub const TARGET: f64 = 10.0;
/// Bytes per file.
const FILE_BYTES: usize = 4096;
/// One file in this many is changed.
const EVERY: usize = 100;

/// See the module documentation.
pub struct IncrementalSync;

impl Scenario for IncrementalSync {
    fn name(&self) -> &'static str {
        "incremental-sync"
    }

    fn description(&self) -> &'static str {
        "a 1% change of 100,000 files streamed to a paired slave (commit to wait-sync) vs rsync -a + sync -f of it to an rsync daemon on loopback"
    }

    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>> {
        rsyncd::check_installed()?;
        let bins = Binaries::locate()?;
        let (count, dirs) = ctx.pick((5_000, 20), (100_000, 400));
        let work = ctx.scratch("incremental-sync")?;
        let w = work.path();
        ctx.progress(format_args!(
            "generating {count} files of {FILE_BYTES} bytes in {dirs} directories"
        ));
        let tree = tree::small_files(&w.join("src"), count, FILE_BYTES, dirs, seed())?;

        let cluster = Cluster::start(&bins, &w.join("c"), 2, 4 << 30)?;
        cluster.replctl_ok(&["pfs", "create", "node1:data"])?;
        ctx.progress("import, pair and initial sync (not timed)");
        let mut import = cluster.replctl();
        import
            .args(["--quiet", "import"])
            .arg(&tree.root)
            .arg("node1:data");
        let out = node::run(&mut import)?;
        ensure!(
            out.status.success(),
            "replctl import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = Instant::now();
        cluster.replctl_ok(&["--quiet", "pair", "node1:data", "node2:data"])?;
        cluster.replctl_ok(&["--quiet", "wait-sync", "node1:data", "node2:data"])?;
        let initial_sync = t.elapsed().as_secs_f64();

        ctx.progress("rsync daemon and initial rsync (not timed)");
        let dest = w.join("rsync-dest");
        std::fs::create_dir(&dest).with_context(|| format!("create {}", dest.display()))?;
        let rsyncd_dir = w.join("rsyncd");
        std::fs::create_dir(&rsyncd_dir)?;
        let daemon = Rsyncd::start(&rsyncd_dir, &dest)?;
        let t = Instant::now();
        daemon.push(&tree.root)?;
        sync_f(&dest)?;
        let initial_rsync = t.elapsed().as_secs_f64();

        let change = make_change(&tree, &w.join("change"))?;
        let versions_before = cluster.versions("node1:data")?;
        let head_before = cluster.head("node1:data")?;

        let (repl, rsync) = if ctx.run_index() & 1 == 0 {
            let r = repld_side(ctx, &cluster, &change, head_before)?;
            (r, rsync_side(ctx, &daemon, &tree, &dest, &change)?)
        } else {
            let s = rsync_side(ctx, &daemon, &tree, &dest, &change)?;
            (repld_side(ctx, &cluster, &change, head_before)?, s)
        };
        let added = cluster.versions("node1:data")? - versions_before;
        let verify = cluster.verify_match("node1:data", "node2:data")?;
        check_rsync_copy(&tree, &dest, &change)?;
        let status_secs = crate::cluster::pfs_status_secs(cluster.node(2), "data")?;
        drop(daemon);
        cluster.stop()?;

        let n = change.files.len();
        ctx.progress(format_args!(
            "repld: commit -> wait-sync {:.3} s (slave durable after {:.3} s, import {:.3} s); rsync -a + sync -f {:.3} s (rsync {:.3} s): {:.1}x",
            repl.to_wait_sync,
            repl.to_slave,
            repl.import_secs,
            rsync.secs,
            rsync.rsync_secs,
            rsync.secs / repl.to_wait_sync
        ));
        Ok(vec![
            Figure::new("repld: commit -> wait-sync", repl.to_wait_sync, "s").note(format!(
                "{n} of {} files of {FILE_BYTES} B rewritten, committed on node1 by one `replctl import` of a tree holding only them ({} transaction); wall-clock time from the commit's TID until `replctl wait-sync node1:data node2:data` exited 0 (slave durable; wait-sync waits on the slave's PfsWaitHead)",
                tree.files, repl.transactions
            )),
            Figure::new("rsync: rsync -a + sync -f", rsync.secs, "s").note(format!(
                "`rsync -a SRC/ rsync://127.0.0.1:PORT/bench/` to a daemon whose module already held the tree ({} files examined, {} transferred), then `sync -f DEST`",
                rsync.stats.files_examined, rsync.stats.files_transferred
            )),
            Figure::ratio("rsync / repld", rsync.secs / repl.to_wait_sync, Target::AtLeast(TARGET))
                .note("rsync -a + sync -f over commit -> wait-sync"),
            Figure::new("repld: commit -> slave durable (5 ms poll)", repl.to_slave, "s").note(
                "from the commit's TID until an in-process poll of node2's head (admin socket, every 5 ms) saw the change",
            ),
            Figure::new(
                "rsync / repld (5 ms poll)",
                rsync.secs / repl.to_slave,
                "x",
            )
            .note("rsync -a + sync -f over commit -> slave durable: without wait-sync's own cost"),
            Figure::new("rsync: rsync -a alone", rsync.rsync_secs, "s")
                .note("without the sync -f: its data not yet durable"),
            Figure::new("rsync -a alone / repld", rsync.rsync_secs / repl.to_wait_sync, "x"),
            Figure::new("repld: change import (master commit)", repl.import_secs, "s")
                .note("spawning `replctl import CHANGE node1:data` until it exited 0"),
            Figure::new("repld: import + wait-sync, end to end", repl.end_to_end, "s")
                .note("spawning the import until wait-sync exited: the change made and replicated"),
            Figure::new(
                "rsync / repld end to end",
                rsync.secs / repl.end_to_end,
                "x",
            ),
            Figure::new("repld: node1 (master) CPU", repl.cpu[0].cpu, "s")
                .note("from spawning the import until wait-sync exited"),
            Figure::new("repld: node2 (slave) CPU", repl.cpu[1].cpu, "s"),
            Figure::new("repld: slave batches applied", repl.slave.batches, "batches")
                .note("node2's metrics, before the import and after wait-sync"),
            Figure::new("repld: slave time applying them", repl.slave.apply_secs * 1e3, "ms")
                .note("the sum of repld_replication_apply_duration_seconds"),
            Figure::new("repld: slave fdatasyncs", repl.slave.fsyncs, "calls"),
            Figure::new("rsync: client CPU (rsync + sync)", rsync.cpu, "s")
                .note("the daemon's side is not counted"),
            Figure::new("repld: versions the change added", added as f64, "versions")
                .note(format!("{n} expected: only the rewritten files")),
            Figure::new("PfsStatus on the slave", status_secs * 1e3, "ms").note(format!(
                "one call (best of 3) on the {}-file slave PFS, as `replctl pfs status` makes: it walks every entry to count them (wait-sync does not call it)",
                tree.files
            )),
            Figure::new("set-up: initial sync of the tree", initial_sync, "s")
                .note("pair + wait-sync of the whole tree, not timed above"),
            Figure::new("set-up: initial rsync of the tree", initial_rsync, "s")
                .note("rsync -a + sync -f of the whole tree to the empty module"),
            Figure::new("verify: entries (MATCH)", verify.entries as f64, "entries")
                .note("replctl verify node1:data node2:data said MATCH (a mismatch fails the run)"),
        ])
    }
}

/// The changed files: written into the source tree in place and into a tree of their own.
struct Change {
    /// The tree holding only the changed files, in the source's layout.
    dir: PathBuf,
    /// Paths relative to the tree roots, with their new content.
    files: Vec<(PathBuf, Vec<u8>)>,
    bytes: u64,
}

fn make_change(tree: &Tree, dir: &Path) -> Result<Change> {
    let pool = Incompressible::new(crate::data::BLOCK, seed() ^ 0xc4a9);
    let mut files = Vec::new();
    let mut parents = Vec::new();
    for (k, path) in tree.paths().iter().enumerate().step_by(EVERY) {
        let rel = path
            .strip_prefix(&tree.root)
            .context("a tree path is below its root")?
            .to_owned();
        let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let mtime = meta.modified()? + Duration::from_secs(3600);
        let data = pool.bytes(k as u64, FILE_BYTES);
        let copy = dir.join(&rel);
        if let Some(p) = rel.parent().filter(|p| !p.as_os_str().is_empty())
            && !parents.iter().any(|x: &PathBuf| x == p)
        {
            std::fs::create_dir_all(dir.join(p))?;
            parents.push(p.to_owned());
        }
        for target in [path, &copy] {
            // In place in the source: truncated and rewritten, so its directory's mtime stays.
            let mut f = std::fs::File::create(target)
                .with_context(|| format!("rewrite {}", target.display()))?;
            f.write_all(&data)?;
            f.set_modified(mtime)?;
        }
        files.push((rel, data));
    }
    // The change tree's directories look like the source's, so importing them changes nothing.
    for p in &parents {
        let src = tree.root.join(p);
        let meta = std::fs::metadata(&src)?;
        let d = dir.join(p);
        std::fs::set_permissions(&d, meta.permissions())?;
        std::fs::File::open(&d)?.set_modified(meta.modified()?)?;
    }
    let bytes = (files.len() * FILE_BYTES) as u64;
    Ok(Change {
        dir: dir.to_owned(),
        files,
        bytes,
    })
}

/// What `replctl import --json` prints, in part.
#[derive(Debug, Deserialize)]
struct ImportJson {
    files: u64,
    transactions: u64,
    last_tid: Option<String>,
}

struct ReplSide {
    slave: SlaveIo,
    transactions: u64,
    import_secs: f64,
    to_wait_sync: f64,
    to_slave: f64,
    end_to_end: f64,
    cpu: [ProcCpu; 2],
}

fn level(dir: &Path, bytes: u64) -> Result<()> {
    fixture::sync_fs(dir)?;
    fixture::warm_page_cache(dir, bytes)?;
    fixture::sync_fs(dir)
}

fn repld_side(ctx: &Ctx, c: &Cluster, change: &Change, head_before: u64) -> Result<ReplSide> {
    level(&c.node(2).data_dir(), 2 * change.bytes)?;
    ctx.progress("repld: import the change, wait-sync (timed)");
    let watch = SlaveWatch::start(c.node(2), "data")?;
    // One transaction: any head past the one before is the change.
    watch.target(head_before + 1);
    let metrics = c.node(2).metrics()?;
    let before = c.cpu();
    let t0 = Instant::now();
    let out = c.replctl_ok(&[
        OsStr::new("--json"),
        OsStr::new("--quiet"),
        OsStr::new("import"),
        change.dir.as_os_str(),
        OsStr::new("node1:data"),
    ])?;
    let t1 = Instant::now();
    let report: ImportJson = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "replctl import --json: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let last = parse_tid(
        report
            .last_tid
            .as_deref()
            .context("the change import committed nothing")?,
    )?;
    if report.transactions != 1 {
        watch.target(last);
    }
    c.replctl_ok(&["--quiet", "wait-sync", "node1:data", "node2:data"])?;
    let (t2, wall2) = (Instant::now(), SystemTime::now());
    let after = c.cpu();
    let slave = SlaveIo::between(&metrics, &c.node(2).metrics()?);
    let seen = watch
        .finish()?
        .context("the slave never reached the change")?;
    ensure!(
        report.files == change.files.len() as u64,
        "the change import sent {} files, not {}",
        report.files,
        change.files.len()
    );
    let committed = Tid(last).to_system_time();
    let since = |t: SystemTime| {
        t.duration_since(committed)
            .unwrap_or_default()
            .as_secs_f64()
    };
    Ok(ReplSide {
        slave,
        transactions: report.transactions,
        import_secs: t1.duration_since(t0).as_secs_f64(),
        to_wait_sync: since(wall2),
        to_slave: since(seen.1),
        end_to_end: t2.duration_since(t0).as_secs_f64(),
        cpu: [after[0].since(&before[0]), after[1].since(&before[1])],
    })
}

struct RsyncSide {
    secs: f64,
    rsync_secs: f64,
    cpu: f64,
    stats: rsyncd::Stats,
}

fn rsync_side(
    ctx: &Ctx,
    daemon: &Rsyncd,
    tree: &Tree,
    dest: &Path,
    change: &Change,
) -> Result<RsyncSide> {
    level(dest, 2 * change.bytes)?;
    ctx.progress("rsync -a + sync -f of the change (timed)");
    let cpu = ProcCpu::children();
    let t = Instant::now();
    let stats = daemon.push(&tree.root)?;
    let rsync_secs = t.elapsed().as_secs_f64();
    sync_f(dest)?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = ProcCpu::children() - cpu;
    ensure!(
        stats.files_transferred == change.files.len() as u64,
        "rsync transferred {} files; {} were changed",
        stats.files_transferred,
        change.files.len()
    );
    Ok(RsyncSide {
        secs,
        rsync_secs,
        cpu,
        stats,
    })
}

fn sync_f(dir: &Path) -> Result<()> {
    let out = node::run(Command::new("sync").arg("-f").arg(dir))?;
    ensure!(
        out.status.success(),
        "sync -f {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn check_rsync_copy(tree: &Tree, dest: &Path, change: &Change) -> Result<()> {
    for (rel, data) in &change.files {
        let got = std::fs::read(dest.join(rel))
            .with_context(|| format!("read the rsync copy of {}", rel.display()))?;
        ensure!(
            &got == data,
            "the rsync copy of {} lacks the change",
            rel.display()
        );
    }
    let n = std::fs::read_dir(dest.join("d000"))?.count();
    let m = std::fs::read_dir(tree.root.join("d000"))?.count();
    ensure!(
        n == m,
        "the rsync copy has {n} entries in d000, the source {m}"
    );
    Ok(())
}
