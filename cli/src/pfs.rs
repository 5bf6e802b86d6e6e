//! `replctl pfs create|list|status|set|destroy|upgrade|downgrade`, and `replctl prune`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use comfy_table::Cell;
use repl_proto::{PfsCreateRequest, PfsDestroyRequest, PfsRole, Retention};
use serde::Serialize;
use uuid::Uuid;

use crate::output::{self, PfsJson, PfsStatusJson};
use crate::target::{NodeName, Target};
use crate::{Ctx, UsageError};

/// `replctl pfs ...`
#[derive(Debug, clap::Subcommand)]
pub enum PfsCommand {
    /// Create a PFS: a master (writable) by default, or a slave with --slave.
    ///
    /// Example: replctl pfs create node1:data
    Create {
        /// [NODE:]PFS
        #[arg(value_parser = Target::parse)]
        target: Target,
        /// Create a read-only slave, to be fed by a master (see `replctl pair`).
        #[arg(long)]
        slave: bool,
        /// Keep no history: old versions are reclaimed at once.
        #[arg(long)]
        nohistory: bool,
        /// The shared UUID of the master this slave will follow [default: a new one].
        #[arg(long, value_name = "UUID")]
        shared_uuid: Option<Uuid>,
    },
    /// List the PFSes of a node.
    ///
    /// Example: replctl pfs list node1
    List {
        /// A node from the replctl config [default: the local admin socket or --endpoint].
        node: Option<NodeName>,
    },
    /// Details of a PFS: role, head TID, contents, history kept.
    ///
    /// Example: replctl pfs status node1:data
    Status {
        /// [NODE:]PFS
        #[arg(value_parser = Target::parse)]
        target: Target,
    },
    /// Change a PFS's settings: its retention policy.
    ///
    /// Example: replctl pfs set node1:data --retention 7d,1h:14d,1d:90d
    Set {
        /// [NODE:]PFS
        #[arg(value_parser = Target::parse)]
        target: Target,
        /// How much history to keep: `forever`, or KEEP[,EVERY:UNTIL]... (all history for KEEP,
        /// then one point per EVERY until UNTIL old; see docs/operations.md). A slave's policy
        /// is its own.
        #[arg(long, value_name = "POLICY")]
        retention: Retention,
    },
    /// Destroy a PFS and all its history. Asks for the name on a terminal; give --yes otherwise.
    ///
    /// Example: replctl pfs destroy node1:scratch --yes
    Destroy {
        /// [NODE:]PFS
        #[arg(value_parser = Target::parse)]
        target: Target,
        /// Destroy it even if it has pairings or snapshots.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Turn a slave into a master at its synced TID (failover). A partly received TID is dropped
    /// and reported. Refused while its master still streams to it, unless --force.
    ///
    /// Example: replctl pfs upgrade node2:data
    Upgrade {
        /// [NODE:]PFS
        #[arg(value_parser = Target::parse)]
        target: Target,
        /// Upgrade even though a master streamed to it within the last 10 s (only when that
        /// master is really gone: two masters make two histories).
        #[arg(long)]
        force: bool,
    },
    /// Turn a master into a read-only slave (before fail-back); the pairings it feeds halt.
    ///
    /// Example: replctl pfs downgrade node1:data
    Downgrade {
        /// [NODE:]PFS
        #[arg(value_parser = Target::parse)]
        target: Target,
    },
}

/// `pfs list` as JSON.
#[derive(Debug, Serialize)]
struct PfsListJson {
    pfses: Vec<PfsJson>,
}

/// Runs a `pfs` command.
pub async fn run(ctx: &Ctx, cmd: PfsCommand) -> Result<()> {
    match cmd {
        PfsCommand::Upgrade { target, force } => {
            crate::failover::upgrade(ctx, &target.whole_pfs("pfs upgrade")?, force).await
        }
        PfsCommand::Downgrade { target } => {
            crate::failover::downgrade(ctx, &target.whole_pfs("pfs downgrade")?).await
        }
        PfsCommand::Create {
            target,
            slave,
            nohistory,
            shared_uuid,
        } => {
            let target = target.whole_pfs("pfs create")?.for_write("pfs create")?;
            let req = PfsCreateRequest {
                name: target.pfs.clone(),
                role: if slave {
                    PfsRole::Slave
                } else {
                    PfsRole::Master
                },
                nohistory,
                shared_uuid,
            };
            let info = ctx
                .nodes
                .admin(target.node.as_ref())
                .await?
                .pfs_create(req)
                .await?;
            ctx.out.emit(&PfsJson::from(&info), || {
                format!(
                    "created {} PFS {} (shared UUID {}{})\n",
                    info.role,
                    target.location(),
                    info.shared_uuid,
                    if info.nohistory { ", no history" } else { "" }
                )
            })
        }
        PfsCommand::List { node } => {
            let list = ctx.nodes.admin(node.as_ref()).await?.pfs_list().await?;
            let json = PfsListJson {
                pfses: list.iter().map(PfsJson::from).collect(),
            };
            ctx.out.emit(&json, || {
                if list.is_empty() {
                    return "no PFS yet: create one with `replctl pfs create NAME`\n".to_owned();
                }
                let mut t = output::table(&[
                    "name",
                    "role",
                    "history",
                    "head tid",
                    "head time",
                    "shared uuid",
                ]);
                for p in &list {
                    t.add_row(vec![
                        Cell::new(&p.name),
                        Cell::new(p.role),
                        Cell::new(if p.nohistory { "no" } else { "yes" }),
                        Cell::new(p.head_tid.map_or_else(|| "-".to_owned(), |t| t.to_string())),
                        Cell::new(
                            p.head_tid
                                .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339()),
                        ),
                        Cell::new(p.shared_uuid),
                    ]);
                }
                output::render(&t)
            })
        }
        PfsCommand::Status { target } => {
            let target = target.whole_pfs("pfs status")?;
            let s = ctx
                .nodes
                .admin(target.node.as_ref())
                .await?
                .pfs_status(&target.pfs)
                .await?;
            ctx.out.emit(&PfsStatusJson::from(&s), || {
                let p = &s.pfs;
                format!(
                    "pfs          {}\nrole         {}\nhistory      {}\nretention    {} ({})\n\
                     shared uuid  {}\nhead         {}\ncreated      {}\noldest       {}\n\
                     files        {}\ndirs         {}\nsymlinks     {}\n\
                     bytes        {} ({})\nversions     {}\nsnapshots    {}\npruned       {}\n\
                     used         {} (data its kept versions reference)\n\
                     device       {} used, {} reclaimable, {} free\n",
                    target.location(),
                    p.role,
                    if p.nohistory {
                        "not kept (nohistory)"
                    } else {
                        "kept"
                    },
                    p.retention,
                    p.retention.describe(),
                    p.shared_uuid,
                    output::opt_tid(p.head_tid),
                    output::tid(p.created_tid),
                    output::opt_tid(s.oldest_tid),
                    s.files,
                    s.dirs,
                    s.symlinks,
                    s.logical_bytes,
                    output::bytes(s.logical_bytes),
                    s.versions,
                    s.snapshots,
                    pruned_lines(&s.pruned),
                    output::bytes(s.used_bytes),
                    output::bytes(s.device_used_bytes),
                    output::bytes(s.device_reclaimable_bytes),
                    output::bytes(s.device_free_bytes),
                )
            })
        }
        PfsCommand::Set { target, retention } => {
            let target = target.whole_pfs("pfs set")?;
            let info = ctx
                .nodes
                .admin(target.node.as_ref())
                .await?
                .pfs_set_retention(&target.pfs, &retention)
                .await?;
            ctx.out.emit(&PfsJson::from(&info), || {
                format!(
                    "retention of {} is now {} ({}); `replctl prune {}` applies it now, the daemon on its schedule\n",
                    target.location(),
                    info.retention,
                    info.retention.describe(),
                    target.location()
                )
            })
        }
        PfsCommand::Destroy { target, force, yes } => {
            let target = target.whole_pfs("pfs destroy")?.for_write("pfs destroy")?;
            if !yes {
                confirm(&target)?;
            }
            ctx.nodes
                .admin(target.node.as_ref())
                .await?
                .pfs_destroy(PfsDestroyRequest {
                    name: target.pfs.clone(),
                    force,
                })
                .await?;
            #[derive(Serialize)]
            struct Destroyed {
                destroyed: String,
            }
            ctx.out.emit(
                &Destroyed {
                    destroyed: target.location(),
                },
                || format!("destroyed PFS {}\n", target.location()),
            )
        }
    }
}

/// Pruned ranges, one per line (the newest few), or `none`.
fn pruned_lines(r: &[repl_proto::TidRange]) -> String {
    const SHOWN: usize = 5;
    if r.is_empty() {
        return "none".to_owned();
    }
    let mut out: Vec<String> = r.iter().rev().take(SHOWN).map(output::range).collect();
    if r.len() > SHOWN {
        out.push(format!(
            "... and {} older ranges (--json lists all)",
            r.len() - SHOWN
        ));
    }
    out.join("\n             ")
}

/// `replctl prune [NODE:]PFS`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  replctl prune node1:data --dry-run\n  replctl prune node1:data"
)]
pub struct PruneArgs {
    /// [NODE:]PFS
    #[arg(value_parser = Target::parse)]
    target: Target,
    /// List what would go and how many bytes it would free; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also prune history that a paired slave has not confirmed yet; that slave then needs a
    /// full resync.
    #[arg(long)]
    force: bool,
}

/// `replctl prune`: applies the PFS's retention policy now.
pub async fn prune(ctx: &Ctx, a: PruneArgs) -> Result<()> {
    let target = a.target.whole_pfs("prune")?;
    let r = ctx
        .nodes
        .admin(target.node.as_ref())
        .await?
        .prune(&target.pfs, a.dry_run, a.force)
        .await?;
    #[derive(Serialize)]
    struct PruneJson {
        pfs: String,
        dry_run: bool,
        pruned: Vec<output::TidRangeJson>,
        commits: u64,
        versions: u64,
        bytes: u64,
        held_commits: u64,
        hold_tid: Option<String>,
        needs_resync: Vec<String>,
    }
    let json = PruneJson {
        pfs: target.location(),
        dry_run: r.dry_run,
        pruned: output::ranges_json(&r.pruned),
        commits: r.commits,
        versions: r.versions,
        bytes: r.bytes,
        held_commits: r.held_commits,
        hold_tid: r.hold_tid.map(|t| t.to_string()),
        needs_resync: r.needs_resync.clone(),
    };
    ctx.out.emit(&json, || {
        let verb = if r.dry_run { "would prune" } else { "pruned" };
        let mut s = format!(
            "{verb} {} commits and {} versions of {}, freeing {} ({} bytes) once space is reclaimed\n",
            r.commits,
            r.versions,
            target.location(),
            output::bytes(r.bytes),
            r.bytes
        );
        for range in &r.pruned {
            s.push_str(&format!("  {}\n", output::range(range)));
        }
        if r.held_commits > 0 {
            s.push_str(&format!(
                "kept {} commits that a paired slave has not confirmed (hold at {}); --force prunes them and makes that slave need a full resync\n",
                r.held_commits,
                output::opt_tid(r.hold_tid)
            ));
        }
        for slave in &r.needs_resync {
            s.push_str(&format!(
                "slave {slave} {} a full resync: {} changes it had not confirmed (see `replctl status`)\n",
                if r.dry_run { "would need" } else { "now needs" },
                if r.dry_run { "this would prune" } else { "this pruned" }
            ));
        }
        s
    })
}

/// Asks the operator to type the PFS's name; refuses without a terminal.
fn confirm(target: &Target) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(UsageError(format!(
            "destroying {} deletes all its data and history: add --yes to confirm",
            target.location()
        ))
        .into());
    }
    eprint!(
        "Destroy PFS {} with all its data and history? Type its name to confirm: ",
        target.location()
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if line.trim() != target.pfs.as_str() {
        bail!("not confirmed: nothing was destroyed");
    }
    Ok(())
}
