//! Two or more real `repld` nodes that replicate to each other over mutual TLS on loopback, as
//! the replication scenarios use them.
//!
//! [`Cluster::start`] makes one CA with `replctl certs init DIR --node node1 --node node2
//! --admin admin`, starts each node on its own fresh data directory with its own certificate
//! (see [`Node::start_with`]), and writes a replctl config that names every node by its
//! `https://127.0.0.1:PORT` endpoint with the admin's certificate, as an operator's would be.
//! [`Cluster::replctl`] gives a `replctl --config FILE` command, so targets are written
//! `node1:data`; `replctl pair` tells the master to reach the slave at that endpoint.
//!
//! For what should not pay for a process spawn per call, [`runtime`], [`admin`] and [`storage`]
//! give in-process gRPC clients on a node's admin socket, and [`SlaveWatch`] notes the moment a
//! slave's head reaches a TID.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use repl_proto::{Endpoint, pb};
use serde::Deserialize;

use crate::node::{self, Binaries, Metrics, Node, ProcCpu};

/// The admin identity the replctl config uses.
pub const ADMIN: &str = "admin";
/// Environment variables that would make replctl talk to another node than the config names.
const REPLCTL_ENV: [&str; 7] = [
    "REPLCTL_SOCKET",
    "REPLCTL_ENDPOINT",
    "REPLCTL_CA",
    "REPLCTL_CERT",
    "REPLCTL_KEY",
    "REPLCTL_SERVER_NAME",
    "REPLCTL_CONFIG",
];

/// Nodes `node1`, `node2`, ... sharing one CA, and a replctl config that names them all.
#[derive(Debug)]
pub struct Cluster {
    bins: Binaries,
    nodes: Vec<Node>,
    certs: PathBuf,
    config: PathBuf,
}

impl Cluster {
    /// Starts `count` nodes in subdirectories of the empty directory `dir`, each with a sparse
    /// image of `device_bytes`; returns once all answer.
    pub fn start(bins: &Binaries, dir: &Path, count: usize, device_bytes: u64) -> Result<Cluster> {
        let names: Vec<String> = (1..=count).map(|i| format!("node{i}")).collect();
        let certs = dir.join("certs");
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        node::certs_init(bins, &certs, &refs, &[ADMIN])?;
        let mut nodes = Vec::new();
        for name in &names {
            let d = dir.join(name);
            std::fs::create_dir(&d).with_context(|| format!("create {}", d.display()))?;
            nodes.push(Node::start_with(bins, &d, name, &certs, device_bytes)?);
        }
        let config = dir.join("replctl.toml");
        let quote = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
        let mut text = format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            quote(&certs.join("ca.pem")),
            quote(&certs.join(format!("{ADMIN}.pem"))),
            quote(&certs.join(format!("{ADMIN}.key"))),
        );
        for (name, n) in names.iter().zip(&nodes) {
            text.push_str(&format!(
                "\n[nodes.{name}]\nendpoint = \"https://{}\"\n",
                n.addr()
            ));
        }
        std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
        Ok(Cluster {
            bins: bins.clone(),
            nodes,
            certs,
            config,
        })
    }

    /// Node `i`, counted from 1 (`node1`).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    /// The directory of `ca.pem` and `NAME.pem`/`NAME.key` of every node and the admin.
    pub fn certs(&self) -> &Path {
        &self.certs
    }

    /// `replctl --config FILE`, which reaches every node by name over mutual TLS.
    pub fn replctl(&self) -> Command {
        let mut c = Command::new(&self.bins.replctl);
        for v in REPLCTL_ENV {
            c.env_remove(v);
        }
        c.arg("--config").arg(&self.config);
        c
    }

    /// Runs `replctl ARGS` to completion and fails unless it exits 0.
    pub fn replctl_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        let out = node::run(self.replctl().args(args))?;
        ensure!(
            out.status.success(),
            "replctl {} failed ({}): {}\nnode1's log:\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            self.nodes.first().map(Node::log_tail).unwrap_or_default()
        );
        Ok(out)
    }

    /// `replctl --json verify MASTER SLAVE`; fails unless the result is MATCH.
    pub fn verify_match(&self, master: &str, slave: &str) -> Result<Verify> {
        let out = node::run(
            self.replctl()
                .args(["--json", "verify", "--max-paths", "5"])
                .args([master, slave]),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Verify = serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "replctl verify {master} {slave} exited {} without a JSON report: {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if v.result != "MATCH" || !out.status.success() {
            bail!(
                "replctl verify {master} {slave}: {} at {} (differing: {:?}); the replica does not equal its master",
                v.result,
                v.tid,
                v.differing_paths
            );
        }
        Ok(v)
    }

    /// The pairing row that `master_node` feeds to `slave` (`node2:data`), from
    /// `replctl --json status`.
    pub fn pairing(&self, master_node: &str, slave: &str) -> Result<PairingRow> {
        let out = self.replctl_ok(&["--json", "status", master_node])?;
        let s: Status = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "replctl --json status: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        s.pairings
            .into_iter()
            .find(|p| p.slave == slave)
            .with_context(|| format!("no pairing to {slave} on {master_node}"))
    }

    /// The head TID of a PFS (`node1:data`), from `replctl --json pfs status`.
    pub fn head(&self, target: &str) -> Result<u64> {
        let out = self.replctl_ok(&["--json", "pfs", "status", target])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        // null before the first commit.
        v["head_tid"].as_str().map_or(Ok(0), parse_tid)
    }

    /// Versions stored in a PFS (`replctl --json pfs status`).
    pub fn versions(&self, target: &str) -> Result<u64> {
        let out = self.replctl_ok(&["--json", "pfs", "status", target])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v["versions"]
            .as_u64()
            .with_context(|| format!("no versions in {v}"))
    }

    /// Every node's metrics, in node order.
    pub fn metrics(&self) -> Result<Vec<Metrics>> {
        self.nodes.iter().map(Node::metrics).collect()
    }

    /// CPU time of every node's process, in node order.
    pub fn cpu(&self) -> Vec<ProcCpu> {
        self.nodes
            .iter()
            .map(|n| n.pid().map_or_else(ProcCpu::default, ProcCpu::of))
            .collect()
    }

    /// Stops every node (SIGTERM, in reverse order) and fails unless each exits 0.
    pub fn stop(mut self) -> Result<()> {
        while let Some(n) = self.nodes.pop() {
            n.stop()?;
        }
        Ok(())
    }
}

/// A TID as replctl prints it (`0x...`) or in decimal.
pub fn parse_tid(s: &str) -> Result<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .with_context(|| format!("`{s}` is not a TID"))
}

/// What `replctl --json verify` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct Verify {
    /// The TID compared at.
    pub tid: String,
    /// MATCH or MISMATCH.
    pub result: String,
    /// Entries compared.
    pub entries: u64,
    /// Paths that differ, on a mismatch.
    #[serde(default)]
    pub differing_paths: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Status {
    pairings: Vec<PairingRow>,
}

/// A row of `replctl --json status` `pairings`.
#[derive(Debug, Clone, Deserialize)]
pub struct PairingRow {
    /// `NODE:PFS` of the slave.
    pub slave: String,
    /// connecting, streaming, backoff or stopped.
    pub state: String,
    /// Seconds behind.
    pub lag_seconds: f64,
    /// Payload bytes sent, in all streams.
    pub bytes_sent: u64,
    /// Payload bytes sent again after a reconnect.
    pub bytes_resent: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Streams started again.
    pub reconnects: u64,
    /// Why the last stream ended.
    pub last_error: Option<String>,
}

/// A tokio runtime for the in-process clients (two workers, like the machine's cores).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start a tokio runtime")
}

/// The generated Admin client on a node's admin socket.
pub async fn admin(
    node: &Node,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>> {
    let ep = Endpoint::Unix(node.socket().to_owned());
    Ok(repl_proto::AdminClient::connect(&ep)
        .await
        .with_context(|| format!("connect to {}", ep))?
        .into_inner())
}

/// A Storage client on a node's admin socket.
pub async fn storage(node: &Node) -> Result<repl_proto::StorageClient> {
    let ep = Endpoint::Unix(node.socket().to_owned());
    repl_proto::StorageClient::connect(&ep)
        .await
        .with_context(|| format!("connect to {}", ep))
}

/// The head TID of PFS `pfs` on the node `admin` talks to, 0 while it does not exist.
///
/// From `PfsList`, not `PfsStatus`: `PfsStatus` also counts the PFS's entries and versions by
/// walking all of them (a 100,000-file PFS takes tens of milliseconds of the node's CPU per
/// call), which would load the node being measured.
pub async fn head_tid(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    pfs: &str,
) -> Result<u64> {
    let list = admin
        .pfs_list(pb::PfsListRequest {})
        .await
        .context("PfsList")?
        .into_inner();
    Ok(list
        .pfses
        .iter()
        .find(|p| p.name == pfs)
        .map_or(0, |p| p.head_tid))
}

/// Seconds one `PfsStatus` call on `pfs` takes, as `replctl pfs status` makes it (the best of
/// three, in-process on the admin socket).
pub fn pfs_status_secs(node: &Node, pfs: &str) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    rt.block_on(async {
        let mut a = admin(node).await?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            a.pfs_status(pb::PfsStatusRequest { name: pfs.into() })
                .await
                .context("PfsStatus")?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    })
}

/// Polls a slave PFS's head ([`head_tid`]) through its node's admin socket every
/// [`SlaveWatch::EVERY`], on a thread of its own, and notes when it first reaches a target TID.
pub struct SlaveWatch {
    target: Arc<AtomicU64>,
    reached: Arc<std::sync::Mutex<Option<(Instant, SystemTime)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl SlaveWatch {
    /// How often the head is read.
    pub const EVERY: Duration = Duration::from_millis(5);

    /// Starts watching PFS `pfs` on `node`, for a target set later with [`SlaveWatch::target`].
    pub fn start(node: &Node, pfs: &str) -> Result<SlaveWatch> {
        let ep = Endpoint::Unix(node.socket().to_owned());
        let pfs = pfs.to_owned();
        let target = Arc::new(AtomicU64::new(u64::MAX));
        let reached = Arc::new(std::sync::Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, r, s) = (Arc::clone(&target), Arc::clone(&reached), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("slave-watch".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("start a tokio runtime")?;
                rt.block_on(async move {
                    let mut admin = repl_proto::AdminClient::connect(&ep).await?.into_inner();
                    loop {
                        // Read before the poll: a stop asked for meanwhile still gets one last
                        // poll (so a head reached just before the stop is seen, if late).
                        let last = s.load(Ordering::Relaxed);
                        let want = t.load(Ordering::Relaxed);
                        let head = head_tid(&mut admin, &pfs).await?;
                        if head >= want {
                            let mut g = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            if g.is_none() {
                                *g = Some((Instant::now(), SystemTime::now()));
                            }
                        }
                        if last {
                            return anyhow::Ok(());
                        }
                        tokio::time::sleep(SlaveWatch::EVERY).await;
                    }
                })
            })
            .context("start the slave-watch thread")?;
        Ok(SlaveWatch {
            target,
            reached,
            stop,
            thread: Some(thread),
        })
    }

    /// Sets the TID to wait for (and forgets an earlier one reached).
    pub fn target(&self, tid: u64) {
        *self
            .reached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.target.store(tid, Ordering::Relaxed);
    }

    /// Stops polling; returns when the target was first seen reached, if it was.
    pub fn finish(mut self) -> Result<Option<(Instant, SystemTime)>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the slave-watch thread panicked"))??;
        }
        Ok(*self
            .reached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl Drop for SlaveWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
