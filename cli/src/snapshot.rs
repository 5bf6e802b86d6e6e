//! `replctl snapshot create|list|delete`: named TIDs of a PFS.

use anyhow::{Result, anyhow};
use comfy_table::Cell;
use repl_proto::{AdminClient, ReadAt, SnapshotCreateRequest, SnapshotDeleteRequest, SnapshotName};
use repl_types::{PfsName, Tid};
use serde::Serialize;

use crate::Ctx;
use crate::output::{self, SnapshotJson};
use crate::target::{Target, parse_at, parse_snapshot_name};

/// `replctl snapshot ...`
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Name a TID of a PFS (the head, or PFS@AT / --at), so reads can use PFS@NAME.
    ///
    /// Example: replctl snapshot create node1:data before-upgrade
    Create {
        /// [NODE:]PFS[@AT]
        #[arg(value_parser = Target::parse)]
        target: Target,
        /// The snapshot's name: 1-64 of A-Z a-z 0-9 . _ -, not a TID.
        #[arg(value_parser = parse_snapshot_name)]
        name: SnapshotName,
        /// The TID to name: hex, decimal, RFC 3339 time or another snapshot [default: the head].
        #[arg(long, value_parser = parse_at, value_name = "TID")]
        at: Option<ReadAt>,
    },
    /// List the snapshots of a PFS, oldest first.
    ///
    /// Example: replctl snapshot list node1:data
    List {
        /// [NODE:]PFS
        #[arg(value_parser = Target::parse)]
        target: Target,
    },
    /// Delete a snapshot (the data it names goes when nothing else keeps it).
    ///
    /// Example: replctl snapshot delete node1:data before-upgrade
    Delete {
        /// [NODE:]PFS
        #[arg(value_parser = Target::parse)]
        target: Target,
        /// The snapshot's name.
        #[arg(value_parser = parse_snapshot_name)]
        name: SnapshotName,
    },
}

#[derive(Debug, Serialize)]
struct SnapshotListJson {
    pfs: String,
    snapshots: Vec<SnapshotJson>,
}

#[derive(Debug, Serialize)]
struct SnapshotOneJson {
    pfs: String,
    #[serde(flatten)]
    snapshot: SnapshotJson,
}

/// Runs a `snapshot` command.
pub async fn run(ctx: &Ctx, cmd: SnapshotCommand) -> Result<()> {
    match cmd {
        SnapshotCommand::Create { target, name, at } => {
            let target = target.whole_pfs("snapshot create")?;
            let at = target.read_at(at.as_ref())?;
            let mut admin = ctx.nodes.admin(target.node.as_ref()).await?;
            let tid = match at {
                ReadAt::Head => None,
                ReadAt::Tid(t) => Some(t),
                ReadAt::Snapshot(other) => Some(resolve(&mut admin, &target.pfs, &other).await?),
            };
            let snap = admin
                .snapshot_create(SnapshotCreateRequest {
                    pfs: target.pfs.clone(),
                    name,
                    tid,
                })
                .await?;
            let json = SnapshotOneJson {
                pfs: target.location(),
                snapshot: SnapshotJson::from(&snap),
            };
            ctx.out.emit(&json, || {
                format!(
                    "snapshot {} of {} names TID {}\nread it with {}@{}\n",
                    snap.name,
                    target.location(),
                    output::tid(snap.tid),
                    target.location(),
                    snap.name
                )
            })
        }
        SnapshotCommand::List { target } => {
            let target = target.whole_pfs("snapshot list")?;
            let list = ctx
                .nodes
                .admin(target.node.as_ref())
                .await?
                .snapshot_list(&target.pfs)
                .await?;
            let json = SnapshotListJson {
                pfs: target.location(),
                snapshots: list.iter().map(SnapshotJson::from).collect(),
            };
            ctx.out.emit(&json, || {
                if list.is_empty() {
                    return format!(
                        "{} has no snapshots: make one with `replctl snapshot create {} NAME`\n",
                        target.location(),
                        target.location()
                    );
                }
                let mut t = output::table(&["name", "tid", "time"]);
                for s in &list {
                    t.add_row(vec![
                        Cell::new(&s.name),
                        Cell::new(s.tid),
                        Cell::new(s.tid.to_rfc3339()),
                    ]);
                }
                output::render(&t)
            })
        }
        SnapshotCommand::Delete { target, name } => {
            let target = target
                .whole_pfs("snapshot delete")?
                .for_write("snapshot delete")?;
            ctx.nodes
                .admin(target.node.as_ref())
                .await?
                .snapshot_delete(SnapshotDeleteRequest {
                    pfs: target.pfs.clone(),
                    name: name.clone(),
                })
                .await?;
            #[derive(Serialize)]
            struct Deleted {
                pfs: String,
                deleted: String,
            }
            ctx.out.emit(
                &Deleted {
                    pfs: target.location(),
                    deleted: name.to_string(),
                },
                || format!("deleted snapshot {name} of {}\n", target.location()),
            )
        }
    }
}

/// The TID a snapshot names.
async fn resolve(admin: &mut AdminClient, pfs: &PfsName, name: &SnapshotName) -> Result<Tid> {
    admin
        .snapshot_list(pfs)
        .await?
        .into_iter()
        .find(|s| &s.name == name)
        .map(|s| s.tid)
        .ok_or_else(|| {
            anyhow!("PFS {pfs} has no snapshot `{name}`: see `replctl snapshot list {pfs}`")
        })
}
