//! `replctl export TARGET[@TID|@SNAPSHOT] [-o FILE]`: a deterministic tar archive of a PFS, or
//! of a subtree, as it stood at a TID.
//!
//! The node builds the archive (entries sorted by path, PAX headers with nanosecond mtimes), so
//! the same state always gives the same bytes: `export | md5sum` on a master and its slave at
//! the same TID give the same sum. replctl writes it to FILE (through a temporary file renamed
//! into place at the end, so FILE is never a truncated archive) or to stdout, but never to a
//! terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use repl_proto::{ExportRequest, ReadAt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::output;
use crate::progress::{Mode, Progress};
use crate::target::{Target, parse_at};
use crate::{Ctx, UsageError};

/// `replctl export TARGET [-o FILE]`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  replctl export data@nightly -o data-nightly.tar\n  \
                        replctl export node1:data/docs@2026-11-22T10:00:00Z | tar x -C restore/\n  \
                        replctl export node1:data@0x0000018f2c000001 | md5sum"
)]
pub struct ExportArgs {
    /// [NODE:]PFS[/PATH][@AT]: what to export, and at which TID, time or snapshot.
    #[arg(value_parser = Target::parse)]
    pub target: Target,
    /// The archive file, or - for stdout [default: stdout, which must not be a terminal].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Export the state at this TID, time or snapshot (instead of @AT).
    #[arg(long, value_parser = parse_at, value_name = "TID")]
    pub at: Option<ReadAt>,
}

/// `export --json` (with `-o FILE` only).
#[derive(Debug, Serialize)]
struct ExportJson {
    target: String,
    file: String,
    tid: String,
    tid_time: String,
    bytes: u64,
    elapsed_seconds: f64,
}

/// `replctl export`.
pub async fn run(ctx: &Ctx, a: ExportArgs) -> Result<()> {
    let at = a.target.read_at(a.at.as_ref())?;
    let target = a.target;
    let file = a.output.filter(|p| p.as_os_str() != "-");
    if file.is_none() {
        if std::io::stdout().is_terminal() {
            return Err(UsageError(format!(
                "refusing to write a binary tar archive to the terminal: give -o FILE, or pipe \
                 it (replctl export {target} | tar x -C DIR)"
            ))
            .into());
        }
        if ctx.out.json {
            return Err(UsageError(
                "--json needs -o FILE: the archive itself goes to stdout otherwise".to_owned(),
            )
            .into());
        }
    }
    let mut client = ctx.nodes.storage(target.node.as_ref()).await?;
    let (tid, mut stream) = client
        .export(ExportRequest {
            pfs: target.pfs.clone(),
            path: target.path.clone(),
            at,
        })
        .await?;

    let mode = if file.is_some() {
        Mode::detect(ctx.quiet)
    } else {
        Mode::Off
    };
    let progress = Progress::new(mode, "export", None);
    let label = format!("{}@{tid}", target.location());

    let Some(path) = file else {
        let mut out = tokio::io::stdout();
        let n = copy(&mut stream, &mut out, &progress).await?;
        if std::io::stderr().is_terminal() && !ctx.quiet {
            eprintln!(
                "exported {label} ({}): {}",
                tid.to_rfc3339(),
                output::bytes(n)
            );
        }
        return Ok(());
    };

    let (write_to, rename) = staging_path(&path);
    let result = async {
        let mut out = tokio::fs::File::create(&write_to)
            .await
            .with_context(|| format!("cannot create {}", write_to.display()))?;
        let n = tokio::select! {
            n = copy(&mut stream, &mut out, &progress) => n?,
            () = crate::interrupted() => anyhow::bail!("interrupted"),
        };
        out.sync_all()
            .await
            .with_context(|| format!("cannot write {}", write_to.display()))?;
        if rename {
            std::fs::rename(&write_to, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok::<u64, anyhow::Error>(n)
    }
    .await;
    progress.finish();
    let n = match result {
        Ok(n) => n,
        Err(e) => {
            if rename {
                let _ = std::fs::remove_file(&write_to);
            }
            return Err(e.context(format!(
                "export of {label} failed; {} was not written",
                path.display()
            )));
        }
    };
    let elapsed = progress.elapsed();
    let json = ExportJson {
        target: target.location(),
        file: path.display().to_string(),
        tid: tid.to_string(),
        tid_time: tid.to_rfc3339(),
        bytes: n,
        elapsed_seconds: elapsed.as_secs_f64(),
    };
    ctx.out.emit(&json, || {
        format!(
            "exported {} at TID {} -> {}: {} in {} ({})\n",
            target.location(),
            output::tid(tid),
            path.display(),
            output::bytes(n),
            output::duration(elapsed),
            output::rate(n, elapsed)
        )
    })
}

/// Where to write before the final name: a temporary file beside a regular (or new) file, the
/// path itself for anything else (`/dev/null`, a FIFO).
pub(crate) fn staging_path(path: &Path) -> (PathBuf, bool) {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => (path.to_owned(), false),
        _ => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "export".to_owned());
            let tmp = path.with_file_name(format!(".{name}.replctl-{}.part", std::process::id()));
            (tmp, true)
        }
    }
}

async fn copy<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut repl_proto::ByteStream,
    out: &mut W,
    progress: &Progress,
) -> Result<u64> {
    let mut n = 0u64;
    while let Some(chunk) = stream.chunk().await? {
        out.write_all(&chunk)
            .await
            .map_err(repl_proto::ClientError::Output)?;
        n += chunk.len() as u64;
        progress.update(n, String::new);
    }
    out.flush().await.map_err(repl_proto::ClientError::Output)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_staged_and_special_files_written_directly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tmp, rename) = staging_path(&dir.path().join("out.tar"));
        assert!(rename);
        assert_eq!(tmp.parent(), Some(dir.path()));
        assert!(
            tmp.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".out.tar.replctl-"))
        );
        let (p, rename) = staging_path(Path::new("/dev/null"));
        assert_eq!((p.as_path(), rename), (Path::new("/dev/null"), false));
    }
}
