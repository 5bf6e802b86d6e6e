//! `replctl`: the command-line interface to repld nodes.
//!
//! A clap [`Cli`] with one [`Command`] per area; each area lives in its own module and exposes
//! `run(ctx, args)`:
//!
//! - [`target`]: the argument grammar `[NODE:]PFS[/PATH][@AT]`.
//! - [`endpoint`]: how a node is reached: local admin socket, `--endpoint`, the replctl config
//!   that names nodes.
//! - [`output`]: tables, `--json` shapes, TID/time/size formatting.
//! - [`progress`]: progress bars on a terminal, plain periodic lines otherwise.
//! - [`node`]: `node info`.
//! - [`pfs`]: `pfs create|list|status|destroy|upgrade|downgrade`.
//! - [`failover`]: `pfs upgrade|downgrade` and the history check of `pair` (`--rollback`).
//! - [`files`]: `put`, `get`, `cat`, `ls`, `stat`, `rm`, `mv`, `mkdir`, `history`.
//! - [`snapshot`]: `snapshot create|list|delete`.
//! - [`import`]: `import DIR TARGET`.
//! - [`export`]: `export TARGET [-o FILE]`.
//! - [`replication`]: `pair`, `unpair`, `status`, `wait-sync`, `verify`.
//! - [`seeding`]: `dump NODE:PFS [--since TID] [-o FILE]`, `restore FILE NODE:PFS`.
//! - `certs`: `replctl certs init`, a CA and node and admin certificates for a first setup.
//!
//! Exit codes: 0 ok, 1 error, 2 usage (clap's own, and a bad target), 3 verify mismatch
//! (reserved for `verify`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use repl_proto::ClientError;

mod certs;
mod endpoint;
mod export;
mod failover;
mod files;
mod import;
mod node;
mod output;
mod pfs;
mod progress;
mod replication;
mod seeding;
mod snapshot;
mod target;

use endpoint::{Connector, EndpointArgs};
use output::Output;

/// Exit code: an error.
const EXIT_ERROR: u8 = 1;
/// Exit code: bad usage (arguments).
const EXIT_USAGE: u8 = 2;
/// Exit code: `verify` found a mismatch.
pub const EXIT_MISMATCH: u8 = 3;

/// replctl: operate repld storage nodes.
///
/// Targets are written [NODE:]PFS[/PATH][@AT], where AT is a TID (0x..., decimal), an RFC 3339
/// time or a snapshot name. Without NODE, replctl talks to the local admin socket
/// (/run/repld/admin.sock), or to --endpoint, or to the config's default_node.
#[derive(Debug, Parser)]
#[command(name = "replctl", version, about, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Print results as JSON (stable shapes, see docs/cli.md).
    #[arg(long, global = true, help_heading = "Output (global)")]
    json: bool,
    /// No progress bars or progress lines.
    #[arg(short, long, global = true, help_heading = "Output (global)")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// The commands of replctl.
#[derive(Debug, Subcommand)]
enum Command {
    /// Node information: name, version, devices.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// PFS lifecycle: create, list, status, set, destroy, upgrade, downgrade.
    #[command(subcommand)]
    Pfs(pfs::PfsCommand),
    /// Upload a local file (or - for stdin) to [NODE:]PFS/PATH.
    Put(files::PutArgs),
    /// Download a file to a local file.
    Get(files::GetArgs),
    /// Write a file's content to stdout.
    Cat(files::CatArgs),
    /// List a directory.
    Ls(files::LsArgs),
    /// Show one entry's metadata.
    Stat(files::StatArgs),
    /// Delete an entry.
    Rm(files::RmArgs),
    /// Move an entry inside a PFS.
    Mv(files::MvArgs),
    /// Create a directory.
    Mkdir(files::MkdirArgs),
    /// Every retained version of a path.
    History(files::HistoryArgs),
    /// Apply a PFS's retention policy now (--dry-run lists what would go).
    Prune(pfs::PruneArgs),
    /// Named TIDs of a PFS: create, list, delete.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Load a local directory tree into a PFS (resumable: run it again to finish).
    Import(import::ImportArgs),
    /// Write a deterministic tar archive of a PFS (or a subtree) at a TID.
    Export(export::ExportArgs),
    /// Certificates for mutual TLS between nodes and admins.
    Certs(certs::CertsArgs),
    /// Pair a master PFS with a slave PFS on another node; streaming starts at once.
    ///
    /// Example: replctl pair node1:data node2:data --bandwidth 50MiB
    Pair(Box<replication::PairArgs>),
    /// Remove a pairing on both nodes.
    Unpair(replication::UnpairArgs),
    /// Replication status: one row per pairing this node feeds, and per slave it holds.
    Status(replication::StatusArgs),
    /// Wait until a slave has the master's head as of now.
    WaitSync(replication::WaitSyncArgs),
    /// Prove a slave equals its master: compare Merkle digests at a TID (exit 3 on a mismatch).
    Verify(replication::VerifyArgs),
    /// Write a PFS's replication record stream to a file, for seeding a slave offline.
    ///
    /// Example: replctl dump node1:data -o /mnt/usb/data.dump
    Dump(seeding::DumpArgs),
    /// Apply a dump file to a slave PFS (checked whole first); pair afterwards to continue.
    ///
    /// Example: replctl restore /mnt/usb/data.dump node3:data
    Restore(seeding::RestoreArgs),
}

/// What every command gets: how to print, and how to reach nodes.
#[derive(Debug)]
pub struct Ctx {
    /// Table or JSON.
    pub out: Output,
    /// No progress display.
    pub quiet: bool,
    /// Endpoint resolution and connections.
    pub nodes: Connector,
}

/// An error in how replctl was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// An error that was already reported in full on stderr; only the exit code remains.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Reported {
    /// A one-line summary (printed only if nothing else was).
    pub message: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Ctx {
        out: Output { json: cli.json },
        quiet: cli.quiet,
        nodes: Connector::new(cli.endpoint),
    };
    let result = match cli.command {
        Command::Certs(args) => certs::run(args),
        command => match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(dispatch(&ctx, command)),
            Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(report(&e)),
    }
}

async fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Node(c) => node::run(ctx, c).await,
        Command::Pfs(c) => pfs::run(ctx, c).await,
        Command::Put(a) => files::put(ctx, a).await,
        Command::Get(a) => files::get(ctx, a).await,
        Command::Cat(a) => files::cat(ctx, a).await,
        Command::Ls(a) => files::ls(ctx, a).await,
        Command::Stat(a) => files::stat(ctx, a).await,
        Command::Rm(a) => files::rm(ctx, a).await,
        Command::Mv(a) => files::mv(ctx, a).await,
        Command::Mkdir(a) => files::mkdir(ctx, a).await,
        Command::History(a) => files::history(ctx, a).await,
        Command::Prune(a) => pfs::prune(ctx, a).await,
        Command::Snapshot(c) => snapshot::run(ctx, c).await,
        Command::Import(a) => import::run(ctx, a).await,
        Command::Export(a) => export::run(ctx, a).await,
        Command::Pair(a) => replication::pair(ctx, *a).await,
        Command::Unpair(a) => replication::unpair(ctx, a).await,
        Command::Status(a) => replication::status(ctx, a).await,
        Command::WaitSync(a) => replication::wait_sync(ctx, a).await,
        Command::Verify(a) => replication::verify(ctx, a).await,
        Command::Dump(a) => seeding::dump(ctx, a).await,
        Command::Restore(a) => seeding::restore(ctx, a).await,
        Command::Certs(_) => unreachable!("handled before the runtime starts"),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Prints an error with a hint on what to do, and returns the exit code.
fn report(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Reported>().is_some() {
        return EXIT_ERROR;
    }
    if let Some(m) = e.downcast_ref::<replication::Mismatch>() {
        eprintln!("replctl: {m}");
        return EXIT_MISMATCH;
    }
    if let Some(ClientError::Output(io)) = e.downcast_ref::<ClientError>()
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return EXIT_ERROR; // The reader went away (`| head`): nothing to say.
    }
    eprintln!("replctl: {}", message(e));
    if let Some(hint) = hint(e) {
        eprintln!("hint: {hint}");
    }
    if e.downcast_ref::<UsageError>().is_some() || e.downcast_ref::<target::TargetError>().is_some()
    {
        EXIT_USAGE
    } else {
        EXIT_ERROR
    }
}

/// The error and its causes, down to the first protocol-level error (whose own sources, such
/// as tonic's status details, repeat what it says).
fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
        if cause.downcast_ref::<ClientError>().is_some() {
            break;
        }
    }
    msg
}

/// What to do about a server's answer, by its code.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let code = e
        .chain()
        .find_map(|c| c.downcast_ref::<ClientError>())?
        .code()?;
    use tonic::Code;
    Some(match code {
        Code::PermissionDenied => {
            "over TCP, your certificate's name (CN) must be listed in the node's tls.admins; \
             add it there and restart repld, or run replctl on the node, on its admin socket"
        }
        Code::Unavailable => {
            "the node is unreachable or shutting down; check that repld runs there \
             (`systemctl status repld`) and try again"
        }
        Code::Unimplemented => {
            "the node's repld does not know this call: upgrade repld on the node to the \
             version of this replctl"
        }
        Code::Unauthenticated => "check the --ca, --cert and --key files (or the replctl config)",
        Code::DeadlineExceeded => "the node took too long; it may be overloaded: try again",
        Code::ResourceExhausted => "the node refused the size of the request or is out of space",
        Code::OutOfRange => {
            "that TID was pruned by the PFS's retention policy: read a kept TID (`replctl pfs \
             status` lists the pruned ranges, `replctl snapshot list` the named ones)"
        }
        _ => return None,
    })
}
