//! What an operator runs, timed: `replctl import DIR PFS` against a running node, and
//! `cp -a DIR DEST` + `sync -f DEST` of the same tree to the same file system.
//!
//! Both sides start from the same state, whichever runs first:
//! - the tree's file data is not in the page cache ([`tree::evict`]), so both read it from disk;
//! - a scratch file as large as what the side will read plus what it will write was just written
//!   and deleted ([`fixture::warm_page_cache`], see there and `docs/benchmarks.md` for why);
//! - the file system was `syncfs`ed, so neither pays for write-back of what came before.
//!
//! The import side gets a fresh node (started, with its PFS created, before the clock starts)
//! and is timed from spawning `replctl import` until it exits 0: by then every transaction is
//! committed, so durable. The cp side is timed from spawning `cp -a` until `sync -f` exits, so
//! its data is durable too. The node is stopped (SIGTERM) after its side, untimed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use serde::Deserialize;

use crate::fixture;
use crate::node::{self, Binaries, Node, ProcCpu};
use crate::scenario::Ctx;
use crate::tree::{self, Tree};

/// The PFS the tree is imported into.
pub const PFS: &str = "bench";

/// One measured `replctl import`.
#[derive(Debug, Clone, Copy)]
pub struct ImportSide {
    /// Wall seconds until `replctl import` exited 0.
    pub secs: f64,
    /// Transactions the import committed (as `replctl import --json` reports).
    pub transactions: u64,
    /// CPU seconds of `replctl`.
    pub client_cpu: f64,
    /// CPU seconds of `repld` during the import.
    pub server_cpu: f64,
    /// Seconds `repld`'s threads were runnable but waiting for a CPU.
    pub server_wait: f64,
    /// Bytes allocated to the node's data directory (image + index) afterwards.
    pub stored_bytes: u64,
}

/// One measured `cp -a` + `sync -f`.
#[derive(Debug, Clone, Copy)]
pub struct CpSide {
    /// Wall seconds until `sync -f` exited.
    pub secs: f64,
    /// Of those, seconds in `sync -f`.
    pub sync_secs: f64,
    /// CPU seconds of `cp` and `sync`.
    pub cpu: f64,
}

/// Both sides on `tree`, in an order that alternates between runs.
pub fn both(ctx: &Ctx, bins: &Binaries, tree: &Tree) -> Result<(ImportSide, CpSide)> {
    if ctx.run_index() & 1 == 0 {
        let i = import_side(ctx, bins, tree)?;
        Ok((i, cp_side(ctx, tree)?))
    } else {
        let c = cp_side(ctx, tree)?;
        Ok((import_side(ctx, bins, tree)?, c))
    }
}

/// Gives the side the same starting state as the other (see the module documentation).
fn level_the_field(tree: &Tree, dir: &Path) -> Result<()> {
    tree::evict(tree)?;
    fixture::warm_page_cache(dir, 2 * tree.bytes)?;
    fixture::sync_fs(dir)
}

/// What `replctl import --json` prints.
#[derive(Debug, Deserialize)]
struct ImportJson {
    files: u64,
    bytes: u64,
    transactions: u64,
}

/// `replctl import TREE PFS` into a fresh node.
pub fn import_side(ctx: &Ctx, bins: &Binaries, tree: &Tree) -> Result<ImportSide> {
    let dir = ctx.scratch("import-node")?;
    // Sparse: only what is written takes space.
    let device = (4 * tree.bytes).max(4 << 30);
    let node = Node::start(bins, dir.path(), device)?;
    node.replctl_ok(&["pfs", "create", PFS])?;
    let pid = node.pid().context("the node is running")?;
    level_the_field(tree, dir.path())?;

    let mut cmd = node.replctl();
    cmd.args(["import", "--json"]).arg(&tree.root).arg(PFS);
    let server = ProcCpu::of(pid);
    let client = ProcCpu::children();
    let t = Instant::now();
    let out = node::run(&mut cmd)?;
    let secs = t.elapsed().as_secs_f64();
    let client_cpu = ProcCpu::children() - client;
    let server = ProcCpu::of(pid).since(&server);
    ensure!(
        out.status.success(),
        "replctl import failed ({}): {}\nrepld's log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        node.log_tail()
    );
    let report: ImportJson = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "read replctl import --json: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    ensure!(
        report.files == tree.files && report.bytes == tree.bytes,
        "replctl import reports {} files and {} bytes; the tree has {} and {}",
        report.files,
        report.bytes,
        tree.files,
        tree.bytes
    );
    let data_dir = node.data_dir();
    node.stop()?;
    Ok(ImportSide {
        secs,
        transactions: report.transactions,
        client_cpu,
        server_cpu: server.cpu,
        server_wait: server.wait,
        stored_bytes: allocated_bytes(&data_dir)?,
    })
}

/// `cp -a TREE DEST && sync -f DEST`, DEST a new directory on the same file system.
pub fn cp_side(ctx: &Ctx, tree: &Tree) -> Result<CpSide> {
    let dir = ctx.scratch("import-cp")?;
    let dest = dir.path().join("copy");
    level_the_field(tree, dir.path())?;
    let cpu = ProcCpu::children();
    let t = Instant::now();
    let cp = node::run(Command::new("cp").arg("-a").arg(&tree.root).arg(&dest))?;
    let copied = t.elapsed().as_secs_f64();
    ensure!(
        cp.status.success(),
        "cp -a failed ({}): {}",
        cp.status,
        String::from_utf8_lossy(&cp.stderr).trim()
    );
    let sync = node::run(Command::new("sync").arg("-f").arg(&dest))?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = ProcCpu::children() - cpu;
    ensure!(
        sync.status.success(),
        "sync -f failed ({}): {}",
        sync.status,
        String::from_utf8_lossy(&sync.stderr).trim()
    );
    Ok(CpSide {
        secs,
        sync_secs: secs - copied,
        cpu,
    })
}

/// Bytes allocated on disk to the files below `dir` (`st_blocks`, so sparse images count only
/// what was written).
fn allocated_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("list {}", d.display()))? {
            let e = e.with_context(|| format!("list {}", d.display()))?;
            let m = e
                .metadata()
                .with_context(|| format!("stat {}", e.path().display()))?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    Ok(total)
}

/// Decimal megabytes per second, as `replctl import` prints its rate.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}
