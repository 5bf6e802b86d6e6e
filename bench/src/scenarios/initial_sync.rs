//! Initial sync of a mixed 1 GiB tree from one node to another over mutual TLS on loopback,
//! against the lower of two limits measured in the same run (issue 4).
//!
//! Set-up, not timed: the tree of `import-throughput` ([`tree::mixed`]: 1 GiB, 64 MiB with
//! `--quick`, half incompressible), two nodes sharing a CA ([`Cluster`]), `replctl pfs create
//! node1:data` and `replctl import TREE node1:data`.
//!
//! Timed: from spawning `replctl pair node1:data node2:data` until `replctl wait-sync node1:data
//! node2:data` exits 0, when the slave's synced TID, which only moves once a batch is durable
//! on the slave, has reached the master's head. Before the clock starts the slave's file system
//! gets the page-cache warm-up of the other scenarios and a `syncfs`. The master's image is
//! left in the page cache where the import put it, as the limits read from memory too.
//!
//! The limits, each moving the same number of bytes in the same run:
//! - **TLS**: one rustls connection on loopback with the nodes' certificates
//!   ([`tls_loopback`]);
//! - **disk**: a sequential write + `fdatasync` to the slave's file system (`large-write`'s plain
//!   side).
//!
//! The replication is measured first in even runs and last in odd ones. Afterwards `replctl
//! verify` must say MATCH, or the run fails.

use std::time::Instant;

use anyhow::{Context as _, Result, ensure};

use crate::cluster::Cluster;
use crate::data::Incompressible;
use crate::fixture;
use crate::node::{Binaries, Metrics, ProcCpu};
use crate::operator::mb_per_s;
use crate::scenario::{Ctx, Figure, Scenario, Target};
use crate::scenarios::{import_throughput::seed, large_write};
use crate::tls_loopback;
use crate::tree;

/// The target for replication / the lower limit.
pub const TARGET: f64 = 0.5;
/// Random bytes generated for the limits (streams reuse them with per-MiB stamps).
const POOL_BYTES: usize = 256 << 20;

/// See the module documentation.
pub struct InitialSync;

impl Scenario for InitialSync {
    fn name(&self) -> &'static str {
        "initial-sync"
    }

    fn description(&self) -> &'static str {
        "replctl pair + wait-sync of a mixed 1 GiB tree between two nodes (mutual TLS, loopback) vs the lower of TLS loopback and write + fdatasync throughput"
    }

    fn run(&self, ctx: &Ctx) -> Result<Vec<Figure>> {
        let bins = Binaries::locate()?;
        let total: u64 = ctx.pick(64 << 20, 1 << 30);
        let work = ctx.scratch("initial-sync")?;
        ctx.progress(format_args!(
            "generating {} MiB of mixed files",
            total >> 20
        ));
        let tree = tree::mixed(&work.path().join("tree"), total, seed())?;
        let cluster = Cluster::start(
            &bins,
            &work.path().join("c"),
            2,
            (4 * tree.bytes).max(4 << 30),
        )?;
        cluster.replctl_ok(&["pfs", "create", "node1:data"])?;
        ctx.progress("importing the tree into node1:data (not timed)");
        let mut import = cluster.replctl();
        import
            .args(["--quiet", "import"])
            .arg(&tree.root)
            .arg("node1:data");
        let out = crate::node::run(&mut import)?;
        ensure!(
            out.status.success(),
            "replctl import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pool = Incompressible::fresh((tree.bytes as usize).min(POOL_BYTES));

        let (repl, tls, disk) = if ctx.run_index() & 1 == 0 {
            let r = replicate(ctx, &cluster, &tree)?;
            let t = tls_limit(ctx, &cluster, &pool, tree.bytes)?;
            (r, t, disk_limit(ctx, &pool, tree.bytes)?)
        } else {
            let t = tls_limit(ctx, &cluster, &pool, tree.bytes)?;
            let d = disk_limit(ctx, &pool, tree.bytes)?;
            (replicate(ctx, &cluster, &tree)?, t, d)
        };
        let verify = cluster.verify_match("node1:data", "node2:data")?;
        cluster.stop()?;

        let r_rate = mb_per_s(tree.bytes, repl.secs);
        let t_rate = mb_per_s(tree.bytes, tls.secs);
        let d_rate = mb_per_s(tree.bytes, disk);
        let (limit, which) = if t_rate <= d_rate {
            (t_rate, "TLS")
        } else {
            (d_rate, "disk")
        };
        ctx.progress(format_args!(
            "replication {r_rate:.0} MB/s; TLS {t_rate:.0} MB/s ({}), write + fdatasync {d_rate:.0} MB/s: {:.2} of the lower ({which}); verify {} ({} entries)",
            tls.suite,
            r_rate / limit,
            verify.result,
            verify.entries
        ));
        Ok(vec![
            Figure::new("replication: pair + wait-sync", r_rate, "MB/s").note(format!(
                "{} files, {} MiB ({:.0}% incompressible) in {} dirs, imported into node1 before; wall time from spawning `replctl pair node1:data node2:data` until `replctl wait-sync` exited 0 (slave durable at the master's head; wait-sync polls every 100 ms); replctl reaches both nodes over https; MB = 10^6 bytes",
                tree.files,
                tree.bytes >> 20,
                100.0 * tree.random_bytes as f64 / tree.bytes as f64,
                tree.dirs
            )),
            Figure::new("limit: TLS loopback", t_rate, "MB/s").note(format!(
                "one tokio-rustls connection on 127.0.0.1 with the nodes' certificates (mutual TLS, ring, {}), the same byte count of incompressible data in 1 MiB writes, connect until the server read the last byte",
                tls.suite
            )),
            Figure::new("limit: write + fdatasync", d_rate, "MB/s").note(
                "the same byte count, sequential 1 MiB writes to a new file on the slave's file system and one fdatasync (large-write's plain side); warm-up + syncfs before",
            ),
            Figure::ratio(
                "replication / lower limit",
                r_rate / limit,
                Target::AtLeast(TARGET),
            )
            .note(format!("the lower limit in this run: {which}")),
            Figure::new("replication: wall time", repl.secs, "s"),
            Figure::new(
                "replication: slave durable (5 ms poll)",
                mb_per_s(tree.bytes, repl.slave_secs),
                "MB/s",
            )
            .note("from spawning pair until an in-process poll of the slave's head (admin socket, every 5 ms) saw the master's head"),
            Figure::new("replication: node1 (master) CPU", repl.cpu[0].cpu, "s")
                .note("reads, frames, sends over TLS; all of repld's threads"),
            Figure::new("replication: node2 (slave) CPU", repl.cpu[1].cpu, "s")
                .note("receives over TLS, checks, hashes, writes, fdatasync"),
            Figure::new(
                "replication: repld waiting for a CPU, both",
                repl.cpu[0].wait + repl.cpu[1].wait,
                "s",
            ),
            Figure::new(
                "replication: payload bytes sent / data bytes",
                repl.bytes_sent as f64 / tree.bytes as f64,
                "x",
            ),
            Figure::new("replication: batches", repl.batches as f64, "batches"),
            Figure::new("slave: fdatasyncs", repl.slave.fsyncs, "calls")
                .note("node2's metrics (repld_fsyncs_total), before and after"),
            Figure::new("slave: time in fdatasync", repl.slave.fsync_secs, "s"),
            Figure::new("slave: time applying batches", repl.slave.apply_secs, "s").note(format!(
                "the sum over {:.0} batches of repld_replication_apply_duration_seconds (write, fdatasync, index; decoding and hashing run ahead, outside it)",
                repl.slave.batches
            )),
            Figure::new(
                "slave: log bytes / data bytes",
                repl.slave.written / tree.bytes as f64,
                "x",
            ),
            Figure::new("replication: reconnects", repl.reconnects as f64, "streams"),
            Figure::new("limit: TLS CPU (both ends)", tls.cpu, "s"),
            Figure::new("verify: entries (MATCH)", verify.entries as f64, "entries")
                .note("replctl verify node1:data node2:data said MATCH (a mismatch fails the run)"),
        ])
    }
}

/// One measured initial sync.
struct Replicated {
    secs: f64,
    /// The slave's storage counters over it.
    slave: SlaveIo,
    slave_secs: f64,
    cpu: [ProcCpu; 2],
    bytes_sent: u64,
    batches: u64,
    reconnects: u64,
}

fn replicate(ctx: &Ctx, c: &Cluster, tree: &tree::Tree) -> Result<Replicated> {
    let head = c.head("node1:data")?;
    let slave_dir = c.node(2).data_dir();
    fixture::warm_page_cache(&slave_dir, tree.bytes)?;
    fixture::sync_fs(&slave_dir)?;
    ctx.progress("pair + wait-sync (timed)");
    let watch = crate::cluster::SlaveWatch::start(c.node(2), "data")?;
    watch.target(head);
    let metrics = c.node(2).metrics()?;
    let before = c.cpu();
    let t = Instant::now();
    c.replctl_ok(&["--quiet", "pair", "node1:data", "node2:data"])?;
    c.replctl_ok(&["--quiet", "wait-sync", "node1:data", "node2:data"])?;
    let secs = t.elapsed().as_secs_f64();
    let after = c.cpu();
    let slave = SlaveIo::between(&metrics, &c.node(2).metrics()?);
    let seen = watch
        .finish()?
        .context("the slave's head never reached the master's")?;
    let row = c.pairing("node1", "node2:data")?;
    Ok(Replicated {
        secs,
        slave,
        slave_secs: seen.0.duration_since(t).as_secs_f64(),
        cpu: [after[0].since(&before[0]), after[1].since(&before[1])],
        bytes_sent: row.bytes_sent,
        batches: row.batches_sent,
        reconnects: row.reconnects,
    })
}

/// What a slave's storage did, from its metrics.
pub(crate) struct SlaveIo {
    /// `fdatasync` calls.
    pub(crate) fsyncs: f64,
    /// Seconds in them.
    pub(crate) fsync_secs: f64,
    /// Batches applied.
    pub(crate) batches: f64,
    /// Seconds applying them (the sum over batches).
    pub(crate) apply_secs: f64,
    /// Bytes written to its log.
    pub(crate) written: f64,
}

impl SlaveIo {
    /// From the slave's metrics before and after.
    pub(crate) fn between(before: &Metrics, after: &Metrics) -> SlaveIo {
        let d = |n: &str| after.delta(before, n);
        SlaveIo {
            fsyncs: d("repld_fsyncs_total"),
            fsync_secs: d("repld_fsync_duration_seconds_sum"),
            batches: d("repld_replication_apply_duration_seconds_count"),
            apply_secs: d("repld_replication_apply_duration_seconds_sum"),
            written: d("repld_device_written_bytes_total"),
        }
    }
}

fn tls_limit(
    ctx: &Ctx,
    c: &Cluster,
    pool: &Incompressible,
    bytes: u64,
) -> Result<tls_loopback::TlsRun> {
    ctx.progress("TLS loopback limit");
    let data = pool.bytes(7, pool.pool_len().min(64 << 20));
    tls_loopback::measure(c.certs(), "node2", "node1", &data, bytes)
}

fn disk_limit(ctx: &Ctx, pool: &Incompressible, bytes: u64) -> Result<f64> {
    ctx.progress("write + fdatasync limit");
    Ok(large_write::plain_side(ctx, pool, bytes)?.secs)
}
