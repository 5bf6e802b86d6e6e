//! `replctl pair`, `unpair`, `status`, `wait-sync` and `verify`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use repl_proto::{Endpoint, pb};
use repl_types::Tid;
use serde::Serialize;

use crate::target::Target;
use crate::{Ctx, UsageError};

/// `verify` found a difference (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub String);

pub(crate) fn parse_tid(s: &str) -> Result<Tid, String> {
    s.parse::<Tid>().map_err(|e| e.to_string())
}

/// `replctl pair MASTER SLAVE`, or `replctl pair set MASTER SLAVE --bandwidth RATE`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PairArgs {
    /// Change an existing pairing.
    #[command(subcommand)]
    pub set: Option<PairSetCommand>,
    /// NODE:PFS of the master.
    #[arg(value_parser = Target::parse, required = true)]
    pub master: Option<Target>,
    /// NODE:PFS of the slave (created as a slave of the master if absent).
    #[arg(value_parser = Target::parse, required = true)]
    pub slave: Option<Target>,
    /// Bytes per second on the wire, such as 4MiB [default: unlimited].
    #[arg(long, value_parser = crate::output::parse_size, value_name = "RATE")]
    pub bandwidth: Option<u64>,
    /// Where the master reaches the slave's node [default: the slave's endpoint in the replctl
    /// config].
    #[arg(long, value_name = "URL")]
    pub slave_endpoint: Option<String>,
    /// If the slave's history diverged from the master's (fail-back after the old master
    /// committed what never reached the new one), discard the slave's diverging commits and
    /// continue from the last common TID. Without it such a pairing is refused.
    #[arg(long)]
    pub rollback: bool,
}

/// `replctl pair set`.
#[derive(Debug, clap::Subcommand)]
pub enum PairSetCommand {
    /// Change a pairing's bandwidth; a running stream follows within a second.
    ///
    /// Example: replctl pair set node1:data node2:data --bandwidth 20MiB
    Set {
        /// NODE:PFS of the master.
        #[arg(value_parser = Target::parse)]
        master: Target,
        /// NODE:PFS of the slave.
        #[arg(value_parser = Target::parse)]
        slave: Target,
        /// Bytes per second on the wire, such as 4MiB; 0 = unlimited.
        #[arg(long, value_parser = crate::output::parse_size, value_name = "RATE")]
        bandwidth: u64,
    },
    /// Full resync of a slave that needs one (state `needs-resync`, after a forced prune on the
    /// master): the slave PFS is emptied, receives a full copy of the master at its current head,
    /// then streams incrementally again. The slave's old content (and its snapshots) are gone;
    /// it reads nothing until the copy has wholly arrived. Run it again if it was interrupted.
    ///
    /// Example: replctl pair resync node1:data node2:data
    Resync {
        /// NODE:PFS of the master.
        #[arg(value_parser = Target::parse)]
        master: Target,
        /// NODE:PFS of the slave.
        #[arg(value_parser = Target::parse)]
        slave: Target,
    },
}

/// `replctl unpair MASTER SLAVE`.
#[derive(Debug, clap::Args)]
pub struct UnpairArgs {
    /// NODE:PFS of the master.
    #[arg(value_parser = Target::parse)]
    pub master: Target,
    /// NODE:PFS of the slave.
    #[arg(value_parser = Target::parse)]
    pub slave: Target,
}

/// `replctl status [NODE]`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The node whose pairings to show (a node name from the replctl config).
    pub node: Option<String>,
    /// Redraw every N seconds until interrupted.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
}

/// `replctl wait-sync MASTER SLAVE`.
#[derive(Debug, clap::Args)]
pub struct WaitSyncArgs {
    /// NODE:PFS of the master.
    #[arg(value_parser = Target::parse)]
    pub master: Target,
    /// NODE:PFS of the slave.
    #[arg(value_parser = Target::parse)]
    pub slave: Target,
    /// Give up after this many seconds (exit 1).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

/// `replctl verify MASTER SLAVE`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// NODE:PFS of the master.
    #[arg(value_parser = Target::parse)]
    pub master: Target,
    /// NODE:PFS of the slave.
    #[arg(value_parser = Target::parse)]
    pub slave: Target,
    /// The TID to compare at [default: the slave's synced TID].
    #[arg(long, value_parser = parse_tid, value_name = "TID")]
    pub at: Option<Tid>,
    /// Re-read and re-hash every byte on both sides (finds silent corruption).
    #[arg(long)]
    pub deep: bool,
    /// Name at most this many differing paths.
    #[arg(long, default_value_t = 20)]
    pub max_paths: usize,
}

/// A PFS's catalog entry (role, head TID, ...), from the cheap listing: `PfsStatus` also
/// counts every entry, which a poll cannot afford on a large PFS.
async fn pfs_info(admin: &mut Admin, t: &Target) -> Result<pb::PfsInfo> {
    let name = t.pfs.to_string();
    admin
        .pfs_list(pb::PfsListRequest {})
        .await?
        .into_inner()
        .pfses
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| anyhow!("no PFS {name} on that node: check `replctl pfs list`"))
}

/// Both nodes of a pairing, and their names (their certificates' CNs).
struct Ends {
    m: Admin,
    s: Admin,
    master_node: String,
    slave_node: String,
}

impl Ends {
    async fn connect(ctx: &Ctx, master: &Target, slave: &Target) -> Result<Ends> {
        let mut m = admin(ctx, master).await?;
        let mut s = admin(ctx, slave).await?;
        let master_node = m
            .node_info(pb::NodeInfoRequest {})
            .await?
            .into_inner()
            .node_name;
        let slave_node = s
            .node_info(pb::NodeInfoRequest {})
            .await?
            .into_inner()
            .node_name;
        Ok(Ends {
            m,
            s,
            master_node,
            slave_node,
        })
    }
}

async fn admin(
    ctx: &Ctx,
    t: &Target,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>> {
    Ok(ctx.nodes.admin(t.node.as_ref()).await?.into_inner())
}

/// Pairs: the slave's node accepts the master (creating the slave PFS), then the master's node
/// stores the pairing and starts streaming.
pub async fn pair(ctx: &Ctx, a: PairArgs) -> Result<()> {
    match a.set {
        Some(PairSetCommand::Set {
            master,
            slave,
            bandwidth,
        }) => return pair_set(ctx, &master, &slave, bandwidth).await,
        Some(PairSetCommand::Resync { master, slave }) => {
            return resync(ctx, &master, &slave).await;
        }
        None => {}
    }
    let (Some(master), Some(slave)) = (a.master, a.slave) else {
        bail!(UsageError("give MASTER and SLAVE, as NODE:PFS".into()));
    };
    let Ends {
        mut m,
        mut s,
        master_node,
        slave_node,
    } = Ends::connect(ctx, &master, &slave).await?;
    let slave_endpoint = match a.slave_endpoint {
        Some(u) => u,
        None => match ctx.nodes.resolve(slave.node.as_ref())?.endpoint {
            Endpoint::Https { uri, .. } => format!("https://{}", uri.authority().map_or("", |x| x.as_str())),
            Endpoint::Http(uri) => format!("http://{}", uri.authority().map_or("", |x| x.as_str())),
            Endpoint::Unix(_) => bail!(UsageError(
                "the slave is reached over its admin socket here: give --slave-endpoint https://HOST:PORT so the master can reach it".into()
            )),
        },
    };
    let shared_uuid = pfs_info(&mut m, &master)
        .await
        .context("look up the master PFS")?
        .shared_uuid;
    crate::failover::check_before_pairing(
        ctx,
        (&mut m, &master, &master_node),
        (&mut s, &slave),
        a.rollback,
    )
    .await?;
    let accepted = s
        .pair_accept(pb::PairAcceptRequest {
            slave_pfs: slave.pfs.to_string(),
            master_node: master_node.clone(),
            master_pfs: master.pfs.to_string(),
            shared_uuid,
        })
        .await
        .context("the slave's node refused the pairing")?
        .into_inner();
    m.pair_create(pb::PairCreateRequest {
        master_pfs: master.pfs.to_string(),
        slave_node: slave_node.clone(),
        slave_endpoint: slave_endpoint.clone(),
        slave_pfs: slave.pfs.to_string(),
        bandwidth: a.bandwidth.unwrap_or(0),
    })
    .await
    .context("the master's node refused the pairing")?;
    if !ctx.quiet {
        eprintln!(
            "paired {master_node}:{} -> {slave_node}:{} at {slave_endpoint}{}; streaming starts now. Watch it with `replctl status {}`.",
            master.pfs,
            slave.pfs,
            if accepted.created {
                " (slave PFS created)"
            } else {
                ""
            },
            master
                .node
                .as_ref()
                .map_or(String::new(), |n| n.to_string())
        );
    }
    Ok(())
}

async fn pair_set(ctx: &Ctx, master: &Target, slave: &Target, bandwidth: u64) -> Result<()> {
    let mut m = admin(ctx, master).await?;
    let mut s = admin(ctx, slave).await?;
    let slave_node = s
        .node_info(pb::NodeInfoRequest {})
        .await?
        .into_inner()
        .node_name;
    m.pair_set(pb::PairSetRequest {
        master_pfs: master.pfs.to_string(),
        slave_node,
        slave_pfs: slave.pfs.to_string(),
        bandwidth,
    })
    .await?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct ResyncJson {
    master: String,
    slave: String,
    base_tid: String,
    entries: u64,
    bytes: u64,
    replaced: bool,
}

/// `pair resync`: the master parks the pairing and fixes the copy's TID (held from then on),
/// the slave's node empties the slave PFS for that copy, and the master streams the copy, then
/// what follows. Each step is durable before the next; a crash between them leaves the pairing
/// in `needs-resync`, and running the command again starts over.
async fn resync(ctx: &Ctx, master: &Target, slave: &Target) -> Result<()> {
    let Ends {
        mut m,
        mut s,
        master_node,
        slave_node,
    } = Ends::connect(ctx, master, slave).await?;
    let request = |start: bool, base_tid: u64| pb::PairResyncRequest {
        master_pfs: master.pfs.to_string(),
        slave_node: slave_node.clone(),
        slave_pfs: slave.pfs.to_string(),
        start,
        base_tid,
    };
    let plan = m
        .pair_resync(request(false, 0))
        .await
        .context("the master's node refused the resync")?
        .into_inner();
    let base = Tid(plan.base_tid);
    let (ml, sl) = (
        format!("{master_node}:{}", master.pfs),
        format!("{slave_node}:{}", slave.pfs),
    );
    if !ctx.quiet {
        eprintln!(
            "resync {ml} -> {sl}: {sl} is emptied and receives a full copy of {ml} at {} \
             ({} entries, {} of file content), then streams incrementally",
            crate::output::tid(base),
            plan.entries,
            crate::output::bytes(plan.bytes),
        );
    }
    let reset = s
        .pfs_resync_reset(pb::PfsResyncResetRequest {
            name: slave.pfs.to_string(),
            shared_uuid: plan.shared_uuid.clone(),
            base_tid: plan.base_tid,
        })
        .await
        .context("the slave's node refused to empty the slave PFS")?
        .into_inner();
    m.pair_resync(request(true, plan.base_tid))
        .await
        .context("the master's node did not start the resync (run the command again)")?;
    let json = ResyncJson {
        master: ml.clone(),
        slave: sl.clone(),
        base_tid: base.to_string(),
        entries: plan.entries,
        bytes: plan.bytes,
        replaced: reset.replaced,
    };
    ctx.out.emit(&json, || {
        format!(
            "{sl} {} and streaming the full copy; `replctl status` shows `resyncing` until it \
             reaches {base}, `replctl wait-sync {ml} {sl}` waits for it\n",
            if reset.replaced { "emptied" } else { "created" }
        )
    })
}

/// Unpairs on both nodes.
pub async fn unpair(ctx: &Ctx, a: UnpairArgs) -> Result<()> {
    let Ends {
        mut m,
        mut s,
        master_node,
        slave_node,
    } = Ends::connect(ctx, &a.master, &a.slave).await?;
    let on_master = m
        .unpair(pb::UnpairRequest {
            master_pfs: a.master.pfs.to_string(),
            slave_node,
            slave_pfs: a.slave.pfs.to_string(),
            master_node: String::new(),
        })
        .await?
        .into_inner()
        .removed;
    let on_slave = s
        .unpair(pb::UnpairRequest {
            master_pfs: a.master.pfs.to_string(),
            slave_node: String::new(),
            slave_pfs: a.slave.pfs.to_string(),
            master_node,
        })
        .await?
        .into_inner()
        .removed;
    if !on_master && !on_slave {
        bail!("{} and {} were not paired", a.master.pfs, a.slave.pfs);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct StatusJson {
    pairings: Vec<PairingJson>,
    slaves: Vec<SlaveJson>,
}

#[derive(Debug, Serialize)]
struct PairingJson {
    master: String,
    slave: String,
    state: String,
    synced_tid: String,
    synced_time: String,
    head_tid: String,
    lag_seconds: f64,
    rate_bytes_per_second: f64,
    bytes_sent: u64,
    bytes_resent: u64,
    batches_sent: u64,
    records_sent: u64,
    reconnects: u64,
    bandwidth: Option<u64>,
    last_error: Option<String>,
    needs_resync: bool,
    hold_tid: String,
    resync_tid: Option<String>,
}

#[derive(Debug, Serialize)]
struct SlaveJson {
    slave: String,
    masters: Vec<String>,
    synced_tid: String,
    master_head_tid: String,
    lag_seconds: f64,
    batches_applied: u64,
    batches_rejected: u64,
    state: String,
    last_error: Option<String>,
}

/// Shows the pairings a node feeds and the slaves it holds.
pub async fn status(ctx: &Ctx, a: StatusArgs) -> Result<()> {
    let node = a
        .node
        .as_deref()
        .map(crate::target::NodeName::new)
        .transpose()
        .map_err(|e| anyhow!(UsageError(e.to_string())))?;
    loop {
        let mut admin = ctx.nodes.admin(node.as_ref()).await?.into_inner();
        let r = admin
            .replication_status(pb::ReplicationStatusRequest {})
            .await?
            .into_inner();
        let json = StatusJson {
            pairings: r
                .pairings
                .iter()
                .map(|p| PairingJson {
                    master: p.master_pfs.clone(),
                    slave: format!("{}:{}", p.slave_node, p.slave_pfs),
                    state: p.state.clone(),
                    synced_tid: Tid(p.synced_tid).to_string(),
                    synced_time: Tid(p.synced_tid).to_rfc3339(),
                    head_tid: Tid(p.head_tid).to_string(),
                    lag_seconds: p.lag_seconds,
                    rate_bytes_per_second: p.rate,
                    bytes_sent: p.bytes_sent,
                    bytes_resent: p.bytes_resent,
                    batches_sent: p.batches_sent,
                    records_sent: p.records_sent,
                    reconnects: p.reconnects,
                    bandwidth: (p.bandwidth > 0).then_some(p.bandwidth),
                    last_error: (!p.last_error.is_empty()).then(|| p.last_error.clone()),
                    needs_resync: p.needs_resync,
                    hold_tid: Tid(p.hold_tid).to_string(),
                    resync_tid: (p.resync_tid != 0).then(|| Tid(p.resync_tid).to_string()),
                })
                .collect(),
            slaves: r
                .slaves
                .iter()
                .map(|s| SlaveJson {
                    slave: s.slave_pfs.clone(),
                    masters: s.master_nodes.clone(),
                    synced_tid: Tid(s.synced_tid).to_string(),
                    master_head_tid: Tid(s.master_head_tid).to_string(),
                    lag_seconds: s.lag_seconds,
                    batches_applied: s.batches_applied,
                    batches_rejected: s.batches_rejected,
                    state: s.state.clone(),
                    last_error: (!s.last_error.is_empty()).then(|| s.last_error.clone()),
                })
                .collect(),
        };
        if ctx.out.json {
            println!("{}", serde_json::to_string(&json)?);
        } else {
            print_status(&json);
        }
        let Some(every) = a.watch else { return Ok(()) };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
            () = crate::interrupted() => return Ok(()),
        }
    }
}

fn print_status(s: &StatusJson) {
    if s.pairings.is_empty() && s.slaves.is_empty() {
        println!("no pairings on this node: pair with `replctl pair NODE:PFS NODE:PFS`");
        return;
    }
    for p in &s.pairings {
        println!(
            "{} -> {}  {}  synced {} ({})  lag {:.1}s  {:.1} MiB/s  sent {} B  reconnects {}{}",
            p.master,
            p.slave,
            p.state,
            p.synced_tid,
            p.synced_time,
            p.lag_seconds,
            p.rate_bytes_per_second / f64::from(1 << 20),
            p.bytes_sent,
            p.reconnects,
            p.last_error
                .as_ref()
                .map_or(String::new(), |e| format!("  last error: {e}"))
        );
        if p.needs_resync {
            println!(
                "  {} needs a full resync: a forced prune removed changes it had not confirmed; \
                 it does not stream. Run `replctl pair resync NODE:{} {}` (docs/operations.md, Holds)",
                p.slave, p.master, p.slave
            );
        }
    }
    for v in &s.slaves {
        println!(
            "{} <- {}  {}  synced {}  master head {}  lag {:.1}s  applied {}  rejected {}{}",
            v.slave,
            v.masters.join(","),
            v.state,
            v.synced_tid,
            v.master_head_tid,
            v.lag_seconds,
            v.batches_applied,
            v.batches_rejected,
            v.last_error
                .as_ref()
                .map_or(String::new(), |e| format!("  last error: {e}"))
        );
        if v.state == "slave-full" {
            println!(
                "  this node's device is full: {} receives nothing until space is freed here; \
                 the master retries by itself (docs/operations.md, Full device)",
                v.slave
            );
        }
    }
}

/// Waits until the slave has the master's head as of the call.
pub async fn wait_sync(ctx: &Ctx, a: WaitSyncArgs) -> Result<()> {
    let mut m = admin(ctx, &a.master).await?;
    let mut s = admin(ctx, &a.slave).await?;
    let master_info = pfs_info(&mut m, &a.master).await?;
    // A master with no commit yet has only its creation TID, which no change carries: there is
    // nothing to wait for.
    let head = if master_info.head_tid == master_info.created_tid {
        0
    } else {
        master_info.head_tid
    };
    let started = Instant::now();
    let deadline = a.timeout.map(|t| started + Duration::from_secs(t));
    let mut bar = None;
    let mut synced = pfs_info(&mut s, &a.slave).await?.head_tid;
    let first = synced;
    loop {
        if synced >= head {
            drop(bar);
            if !ctx.quiet {
                eprintln!(
                    "in sync at {} after {:.1}s",
                    Tid(head),
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        // Progress is the share of the history's time span (TIDs are times) replicated since
        // the call.
        let bar = bar.get_or_insert_with(|| sync_bar(ctx.quiet, head - first));
        bar.set_position(synced.saturating_sub(first));
        bar.set_message(format!(
            "slave at {}, {:.1}s of history behind",
            Tid(synced),
            Tid(synced).lag_secs(Tid(head))
        ));
        let step = match deadline {
            Some(d) if Instant::now() >= d => bail!(
                "the slave is at {} after {}s, the master's head was {}; check `replctl status`",
                Tid(synced),
                a.timeout.unwrap_or_default(),
                Tid(head)
            ),
            Some(d) => WAIT_STEP.min(d - Instant::now()),
            None => WAIT_STEP,
        };
        synced = wait_head(&mut s, &a.slave, head, step).await?;
    }
}

/// How long one `PfsWaitHead` call may wait: the progress bar and `--timeout` act this often.
const WAIT_STEP: Duration = Duration::from_secs(1);

/// The PFS's head once it reaches `tid` or `step` has passed. The node answers as soon as the
/// head moves past `tid`; a node without `PfsWaitHead` (an older repld) is polled instead.
async fn wait_head(admin: &mut Admin, t: &Target, tid: u64, step: Duration) -> Result<u64> {
    let req = pb::PfsWaitHeadRequest {
        name: t.pfs.to_string(),
        tid,
        timeout_ms: u32::try_from(step.as_millis()).unwrap_or(u32::MAX),
    };
    match admin.pfs_wait_head(req).await {
        Ok(r) => Ok(r.into_inner().head_tid),
        Err(e) if e.code() == tonic::Code::Unimplemented => {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(pfs_info(admin, t).await?.head_tid)
        }
        Err(e) => Err(e).with_context(|| format!("wait for the head of {}", t.location())),
    }
}

/// A bar on a terminal (nothing otherwise, or with `--quiet`).
fn sync_bar(quiet: bool, span: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(span.max(1));
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} wait-sync [{elapsed_precise}] {wide_bar} {percent}% {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[derive(Debug, Serialize)]
struct VerifyJson {
    tid: String,
    result: &'static str,
    master_root: String,
    slave_root: String,
    entries: u64,
    differing_paths: Vec<String>,
}

/// Compares the two digests at a TID, naming differing paths on a mismatch (exit 3).
pub async fn verify(ctx: &Ctx, a: VerifyArgs) -> Result<()> {
    let mut m = admin(ctx, &a.master).await?;
    let mut s = admin(ctx, &a.slave).await?;
    let tid = match a.at {
        Some(t) => t.get(),
        None => Some(pfs_info(&mut s, &a.slave).await?.head_tid)
            .filter(|&t| t != 0)
            .ok_or_else(|| anyhow!("the slave has no synced TID yet: wait for the first sync"))?,
    };
    let req = |pfs: &Target| pb::DigestRequest {
        pfs: pfs.pfs.to_string(),
        tid,
        deep: a.deep,
    };
    let md = m
        .digest(req(&a.master))
        .await
        .context("the master's digest")?
        .into_inner();
    let sd = s
        .digest(req(&a.slave))
        .await
        .context("the slave's digest")?
        .into_inner();
    let matched = md.root == sd.root;
    let mut differing = Vec::new();
    if !matched {
        descend(&mut m, &mut s, &a, tid, String::new(), &mut differing).await?;
    }
    // The master's node keeps the result for its metrics; a node that cannot take it (an older
    // repld) does not change the verdict.
    let slave_node = s
        .node_info(pb::NodeInfoRequest {})
        .await
        .map(|r| r.into_inner().node_name)
        .unwrap_or_default();
    if let Err(e) = m
        .verify_record(pb::VerifyRecordRequest {
            master_pfs: a.master.pfs.to_string(),
            slave_node,
            slave_pfs: a.slave.pfs.to_string(),
            tid,
            matched,
            deep: a.deep,
        })
        .await
    {
        eprintln!(
            "replctl: warning: the master's node did not record the result: {}",
            e.message()
        );
    }
    let out = VerifyJson {
        tid: Tid(tid).to_string(),
        result: if matched { "MATCH" } else { "MISMATCH" },
        master_root: hex(&md.root),
        slave_root: hex(&sd.root),
        entries: md.entries,
        differing_paths: differing,
    };
    if ctx.out.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "{} at {} ({} entries{})",
            out.result,
            out.tid,
            out.entries,
            if a.deep { ", deep" } else { "" }
        );
        for p in &out.differing_paths {
            println!("differs: /{p}");
        }
    }
    if matched {
        Ok(())
    } else {
        Err(anyhow!(Mismatch(format!(
            "{} and {} differ at {}",
            a.master.pfs, a.slave.pfs, out.tid
        ))))
    }
}

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

/// Walks down the directories whose digests differ, collecting differing paths.
async fn descend(
    m: &mut Admin,
    s: &mut Admin,
    a: &VerifyArgs,
    tid: u64,
    dir: String,
    out: &mut Vec<String>,
) -> Result<()> {
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        let req = |t: &Target| pb::DigestDirRequest {
            pfs: t.pfs.to_string(),
            dir: dir.clone(),
            tid,
            deep: a.deep,
        };
        let mc = m.digest_dir(req(&a.master)).await?.into_inner().children;
        let sc = s.digest_dir(req(&a.slave)).await?.into_inner().children;
        let join = |n: &str| {
            if dir.is_empty() {
                n.to_owned()
            } else {
                format!("{dir}/{n}")
            }
        };
        let mut names: Vec<&str> = mc.iter().chain(&sc).map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut own = true;
        for name in names {
            let x = mc.iter().find(|c| c.name == name);
            let y = sc.iter().find(|c| c.name == name);
            match (x, y) {
                (Some(x), Some(y)) if x.hash == y.hash => {}
                (Some(x), Some(y)) if x.kind == y.kind && x.kind == pb::EntryKind::Dir as i32 => {
                    own = false;
                    stack.push(join(name));
                }
                _ => {
                    own = false;
                    out.push(join(name));
                }
            }
            if out.len() >= a.max_paths {
                return Ok(());
            }
        }
        if own {
            // Every child matches: the directory's own mode or mtime differs.
            out.push(if dir.is_empty() {
                ".".into()
            } else {
                dir.clone()
            });
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
