//! `replctl dump` and `replctl restore`: offline seeding (NDMP-style), a PFS's replication
//! record stream carried through a file.
//!
//! `dump` writes the pieces the node streams as they are (checking each on the way, so a file
//! that was written is a whole one), to FILE through a temporary file renamed at the end, or to
//! stdout. `restore` reads the whole file once and checks it (magic, header, every frame's and
//! every batch's checksum, order, trailer) before it sends anything, then streams it to the
//! node, which checks every piece again and writes only after the trailer; see
//! docs/replication.md § Dump files.

use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use repl_proto::dump::{Checker, PieceReader, parse_piece};
use repl_proto::pb;
use repl_types::Tid;
use serde::Serialize;

use crate::export::staging_path;
use crate::target::Target;
use crate::{Ctx, UsageError, output};

/// `replctl dump NODE:PFS [--since TID] [-o FILE]`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  replctl dump node1:data -o /mnt/usb/data.dump\n  \
                  replctl dump node1:data --since 0x187a3c0d5e2f0000 -o data-incr.dump"
)]
pub struct DumpArgs {
    /// NODE:PFS to dump (a master, or a slave: then up to its synced TID).
    #[arg(value_parser = Target::parse)]
    pub target: Target,
    /// Only the changes after this TID: restores onto a slave whose synced TID it is.
    #[arg(long, value_parser = crate::replication::parse_tid, value_name = "TID")]
    pub since: Option<Tid>,
    /// The dump file, or - for stdout [default: stdout, which must not be a terminal].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `replctl restore FILE NODE:PFS`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The dump file (from `replctl dump`).
    pub file: PathBuf,
    /// NODE:PFS of the slave (created with the dump's shared UUID if absent).
    #[arg(value_parser = Target::parse)]
    pub target: Target,
}

#[derive(Debug, Serialize)]
struct DumpJson {
    pfs: String,
    file: String,
    from_tid: String,
    to_tid: String,
    batches: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct RestoreJson {
    pfs: String,
    created: bool,
    synced_tid: String,
    batches_applied: u64,
    batches_skipped: u64,
}

fn synced(p: Option<&pb::Position>) -> Tid {
    Tid(p.map_or(0, |p| p.synced_tid))
}

/// `replctl dump`.
pub async fn dump(ctx: &Ctx, a: DumpArgs) -> Result<()> {
    let file = a.output.filter(|p| p.as_os_str() != "-");
    if file.is_none() && std::io::stdout().is_terminal() {
        return Err(UsageError(format!(
            "refusing to write a binary dump to the terminal: give -o FILE, or pipe it \
             (replctl dump {} > FILE)",
            a.target
        ))
        .into());
    }
    let mut admin = ctx.nodes.admin(a.target.node.as_ref()).await?.into_inner();
    let mut stream = admin
        .dump(pb::DumpRequest {
            pfs: a.target.pfs.to_string(),
            since_tid: a.since.map_or(0, Tid::get),
        })
        .await?
        .into_inner();
    let (write_to, rename) = match &file {
        Some(p) => {
            let (w, r) = staging_path(p);
            (Some(w), r)
        }
        None => (None, false),
    };
    let result = async {
        let mut out: Box<dyn Write> = match &write_to {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Box::new(std::io::stdout()),
        };
        let (mut checker, mut bytes) = (Checker::new(), 0u64);
        while let Some(msg) = stream.message().await? {
            let data = msg.data;
            let frame = parse_piece(checker.header().is_none(), &data)?;
            checker.next(&frame)?;
            out.write_all(&data)?;
            bytes += data.len() as u64;
        }
        checker.finish()?;
        out.flush()?;
        drop(out);
        if let Some(p) = &write_to {
            std::fs::File::open(p)?.sync_all()?;
        }
        let h = checker
            .header()
            .cloned()
            .ok_or_else(|| anyhow!("the dump has no header"))?;
        Ok::<_, anyhow::Error>((h, checker.batches(), bytes))
    }
    .await;
    let (header, batches, bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            if rename && let Some(p) = &write_to {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.context(format!(
                "the dump of {} failed{}",
                a.target,
                file.as_ref().map_or(String::new(), |f| format!(
                    "; {} was not written",
                    f.display()
                ))
            )));
        }
    };
    if let (Some(tmp), Some(path), true) = (&write_to, &file, rename) {
        std::fs::rename(tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let json = DumpJson {
        pfs: a.target.to_string(),
        file: file
            .as_ref()
            .map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
        from_tid: synced(header.from.as_ref()).to_string(),
        to_tid: synced(header.to.as_ref()).to_string(),
        batches,
        bytes,
    };
    if file.is_none() {
        if !ctx.quiet {
            eprintln!(
                "dumped {} from {} to {}: {batches} batches, {}",
                json.pfs,
                json.from_tid,
                json.to_tid,
                output::bytes(bytes)
            );
        }
        return Ok(());
    }
    ctx.out.emit(&json, || {
        format!(
            "dumped {} from {} to {} -> {}: {batches} batches, {}\n",
            json.pfs,
            json.from_tid,
            json.to_tid,
            json.file,
            output::bytes(bytes)
        )
    })
}

/// Reads the whole dump file and checks it; returns its header.
fn check_file(path: &std::path::Path) -> Result<pb::DumpHeader> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = PieceReader::new(BufReader::new(f));
    let mut checker = Checker::new();
    while let Some((_, frame)) = reader.next_piece()? {
        checker.next(&frame)?;
    }
    checker.finish()?;
    checker
        .header()
        .cloned()
        .ok_or_else(|| anyhow!("the dump has no header"))
}

/// `replctl restore`.
pub async fn restore(ctx: &Ctx, a: RestoreArgs) -> Result<()> {
    let path = a.file.clone();
    let header = tokio::task::spawn_blocking(move || check_file(&path))
        .await?
        .with_context(|| {
            format!(
                "{} is not a usable dump; nothing was sent to the node",
                a.file.display()
            )
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (path, pfs) = (a.file.clone(), a.target.pfs.to_string());
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let f = std::fs::File::open(&path)?;
        let mut reader = PieceReader::new(BufReader::new(f));
        let mut first = Some(pfs);
        while let Some((data, _)) = reader.next_piece()? {
            let msg = pb::RestoreRequest {
                pfs: first.take().unwrap_or_default(),
                data: data.into(),
            };
            if tx.blocking_send(msg).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut admin = ctx.nodes.admin(a.target.node.as_ref()).await?.into_inner();
    let resp = admin
        .restore(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    // A read error after the check (the file changed under us) ends the stream early, which
    // the node refuses as truncated; say what happened here.
    reader.await??;
    let r = resp
        .with_context(|| format!("the node refused the restore of {}", a.file.display()))?
        .into_inner();
    let json = RestoreJson {
        pfs: a.target.to_string(),
        created: r.created,
        synced_tid: Tid(r.slave.as_ref().map_or(0, |s| s.head_tid)).to_string(),
        batches_applied: r.batches_applied,
        batches_skipped: r.batches_skipped,
    };
    ctx.out.emit(&json, || {
        format!(
            "restored {} ({} to {}) into {}{}: {} batches applied, {} already there; synced at {}. \
             Pair it with its master to continue: replctl pair NODE:PFS {}\n",
            a.file.display(),
            synced(header.from.as_ref()),
            synced(header.to.as_ref()),
            json.pfs,
            if r.created { " (created)" } else { "" },
            r.batches_applied,
            r.batches_skipped,
            json.synced_tid,
            json.pfs
        )
    })
}
