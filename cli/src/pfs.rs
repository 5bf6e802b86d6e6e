//! `replctl pfs create|list|status|destroy|upgrade|downgrade`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use comfy_table::Cell;
use repl_proto::{PfsCreateRequest, PfsDestroyRequest, PfsRole};
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
                    "pfs          {}\nrole         {}\nhistory      {}\nshared uuid  {}\n\
                     head         {}\ncreated      {}\noldest       {}\n\
                     files        {}\ndirs         {}\nsymlinks     {}\n\
                     bytes        {} ({})\nversions     {}\nsnapshots    {}\n",
                    target.location(),
                    p.role,
                    if p.nohistory {
                        "not kept (nohistory)"
                    } else {
                        "kept"
                    },
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
