//! Single entries: `put`, `get`, `cat`, `ls`, `stat`, `rm`, `mv`, `mkdir`, `history`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use comfy_table::Cell;
use repl_proto::{
    Attrs, ClientError, DeleteRequest, Entry, EntryKind, HistoryRequest, ListRequest, MkdirRequest,
    PutHeader, ReadAt, ReadRequest, RenameRequest, StorageClient,
};
use repl_types::{EntryPath, Tid};
use serde::Serialize;

use crate::output::{self, CommitJson, EntryJson};
use crate::target::{Target, parse_at};
use crate::{Ctx, UsageError};

// =============================================================================================
// Arguments

/// `replctl put LOCAL TARGET`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  replctl put report.pdf data/docs/\n  \
                        tar c dir | replctl put - node1:data/backups/dir.tar")]
pub struct PutArgs {
    /// The local file, or - for standard input. Its mode and mtime are kept.
    pub local: PathBuf,
    /// [NODE:]PFS/PATH. A trailing / or an existing directory puts the file inside it under
    /// its own name.
    #[arg(value_parser = Target::parse)]
    pub target: Target,
    /// Create missing parent directories (mode 0755).
    #[arg(short = 'p', long)]
    pub parents: bool,
    /// The mode to store, in octal [default: the local file's, or 0644 for stdin].
    #[arg(long, value_parser = output::parse_mode)]
    pub mode: Option<u32>,
}

/// `replctl get TARGET [-o FILE]`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  replctl get data/docs/report.pdf\n  \
                        replctl get data/docs/report.pdf@2026-11-22T10:00:00Z -o old.pdf")]
pub struct GetArgs {
    /// [NODE:]PFS/PATH[@AT]
    #[arg(value_parser = Target::parse)]
    pub target: Target,
    /// Where to write: a file, a directory, or - for stdout [default: ./NAME].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Read the state at this TID, time or snapshot (instead of @AT).
    #[arg(long, value_parser = parse_at, value_name = "TID")]
    pub at: Option<ReadAt>,
}

/// `replctl cat TARGET`
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  replctl cat data/etc/motd@nightly")]
pub struct CatArgs {
    /// [NODE:]PFS/PATH[@AT]
    #[arg(value_parser = Target::parse)]
    pub target: Target,
    /// Read the state at this TID, time or snapshot (instead of @AT).
    #[arg(long, value_parser = parse_at, value_name = "TID")]
    pub at: Option<ReadAt>,
}

/// `replctl ls [-l] [-R] TARGET`
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  replctl ls data\n  replctl ls -l node1:data/docs --at 0x0000018f2c000001"
)]
pub struct LsArgs {
    /// [NODE:]PFS[/PATH][@AT]
    #[arg(value_parser = Target::parse)]
    pub target: Target,
    /// Long listing: mode, size, mtime, creating TID.
    #[arg(short, long)]
    pub long: bool,
    /// The whole subtree.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Read the state at this TID, time or snapshot (instead of @AT).
    #[arg(long, value_parser = parse_at, value_name = "TID")]
    pub at: Option<ReadAt>,
}

/// `replctl stat TARGET`
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  replctl stat data/docs/report.pdf")]
pub struct StatArgs {
    /// [NODE:]PFS[/PATH][@AT]
    #[arg(value_parser = Target::parse)]
    pub target: Target,
    /// Read the state at this TID, time or snapshot (instead of @AT).
    #[arg(long, value_parser = parse_at, value_name = "TID")]
    pub at: Option<ReadAt>,
}

/// `replctl rm [-r] TARGET`
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  replctl rm -r data/tmp")]
pub struct RmArgs {
    /// [NODE:]PFS/PATH
    #[arg(value_parser = Target::parse)]
    pub target: Target,
    /// Delete a non-empty directory with everything below it.
    #[arg(short, long)]
    pub recursive: bool,
    /// A missing entry is not an error.
    #[arg(short, long)]
    pub force: bool,
}

/// `replctl mv FROM TO`
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  replctl mv data/incoming/a.txt data/archive/")]
pub struct MvArgs {
    /// [NODE:]PFS/PATH to move.
    #[arg(value_parser = Target::parse)]
    pub from: Target,
    /// The new [NODE:]PFS/PATH, in the same PFS. A trailing / or an existing directory moves
    /// FROM into it.
    #[arg(value_parser = Target::parse)]
    pub to: Target,
    /// Replace an existing file or empty directory at TO.
    #[arg(short, long)]
    pub force: bool,
}

/// `replctl mkdir [-p] TARGET...`
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  replctl mkdir -p data/projects/2026")]
pub struct MkdirArgs {
    /// [NODE:]PFS/PATH, one or more.
    #[arg(value_parser = Target::parse, required = true)]
    pub targets: Vec<Target>,
    /// Create missing parents, and accept an existing directory.
    #[arg(short = 'p', long)]
    pub parents: bool,
    /// The mode, in octal.
    #[arg(long, value_parser = output::parse_mode, default_value = "755")]
    pub mode: u32,
}

/// `replctl history TARGET`
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  replctl history data/etc/config.toml")]
pub struct HistoryArgs {
    /// [NODE:]PFS/PATH
    #[arg(value_parser = Target::parse)]
    pub target: Target,
}

// =============================================================================================
// put

/// `replctl put`.
pub async fn put(ctx: &Ctx, a: PutArgs) -> Result<()> {
    let mut target = a.target.for_write("put")?;
    let stdin = a.local.as_os_str() == "-";
    let (attrs, size, local_name) = if stdin {
        let now = i64::try_from(Tid::now().get()).unwrap_or(i64::MAX);
        (
            Attrs {
                mode: a.mode.unwrap_or(0o644),
                mtime_ns: now,
            },
            None,
            None,
        )
    } else {
        let meta = std::fs::metadata(&a.local)
            .with_context(|| format!("cannot read {}", a.local.display()))?;
        if meta.is_dir() {
            return Err(UsageError(format!(
                "{} is a directory: load a tree with `replctl import {} {}`",
                a.local.display(),
                a.local.display(),
                target
            ))
            .into());
        }
        if !meta.is_file() {
            bail!("{} is not a regular file", a.local.display());
        }
        let name = a
            .local
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned);
        (
            Attrs {
                mode: a.mode.unwrap_or(meta.mode() & repl_proto::MODE_MASK),
                mtime_ns: mtime_ns(&meta),
            },
            Some(meta.len()),
            name,
        )
    };

    let mut client = ctx.nodes.storage(target.node.as_ref()).await?;
    if target.trailing_slash || target.path.is_root() || is_dir(&mut client, &target).await? {
        let Some(name) = local_name else {
            return Err(UsageError(format!(
                "{} is a directory: name the file, for example {}/NAME",
                target.location(),
                target.location()
            ))
            .into());
        };
        target.path = target
            .path
            .join(&name)
            .map_err(|e| anyhow!("cannot store `{name}` in {}: {e}", target.location()))?;
    }
    let header = PutHeader {
        pfs: target.pfs.clone(),
        path: target.path.clone(),
        attrs,
        size,
        parents: a.parents,
    };
    let result = if stdin {
        client.put(header, tokio::io::stdin()).await
    } else {
        let file = tokio::fs::File::open(&a.local)
            .await
            .with_context(|| format!("cannot open {}", a.local.display()))?;
        client.put(header, file).await
    }
    .map_err(|e| not_found_hint(e, &target, a.parents))?;
    ctx.out
        .emit(&CommitJson::put(target.location(), &result), || {
            format!(
                "{} -> {}: {}, TID {}\n",
                a.local.display(),
                target.location(),
                output::bytes(result.size),
                output::tid(result.tid)
            )
        })
}

/// Whether the target exists as a directory at the head.
async fn is_dir(client: &mut StorageClient, target: &Target) -> Result<bool> {
    match client
        .stat(ReadRequest {
            pfs: target.pfs.clone(),
            path: target.path.clone(),
            at: ReadAt::Head,
        })
        .await
    {
        Ok(s) => Ok(s.entry.kind == EntryKind::Dir),
        Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Adds "use -p" when a write fails because a parent directory is missing.
fn not_found_hint(e: ClientError, target: &Target, parents: bool) -> anyhow::Error {
    let missing_parent = match &e {
        ClientError::Status(s) => {
            s.code() == tonic::Code::NotFound
                || (s.code() == tonic::Code::FailedPrecondition && s.message().contains("parent"))
        }
        _ => false,
    };
    if missing_parent && !parents && !target.path.is_root() {
        let parent = target.path.parent().unwrap_or_default();
        anyhow::Error::new(e).context(format!(
            "cannot write {}: add -p to create its missing directory `{parent}`",
            target.location()
        ))
    } else {
        e.into()
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

// =============================================================================================
// get, cat

async fn read_entry(
    ctx: &Ctx,
    target: &Target,
    at: ReadAt,
) -> Result<(Entry, repl_proto::ByteStream)> {
    let mut client = ctx.nodes.storage(target.node.as_ref()).await?;
    let (entry, stream) = client
        .get(ReadRequest {
            pfs: target.pfs.clone(),
            path: target.path.clone(),
            at,
        })
        .await?;
    match entry.kind {
        EntryKind::File => Ok((entry, stream)),
        EntryKind::Dir => Err(UsageError(format!(
            "{} is a directory: list it with `replctl ls {}`, or fetch the subtree as tar with \
             `replctl export {} -o FILE.tar`",
            target.location(),
            target,
            target
        ))
        .into()),
        EntryKind::Symlink => Ok((entry, stream)),
    }
}

/// `replctl get`.
pub async fn get(ctx: &Ctx, a: GetArgs) -> Result<()> {
    let at = a.target.read_at(a.at.as_ref())?;
    let target = a.target.not_root("get")?;
    let to_stdout = a.output.as_deref() == Some(Path::new("-"));
    let (entry, stream) = read_entry(ctx, &target, at).await?;
    if to_stdout {
        if let Some(link) = &entry.symlink_target {
            bail!(
                "{} is a symlink to `{link}`: nothing to write",
                target.location()
            );
        }
        stream.copy_to(&mut tokio::io::stdout()).await?;
        return Ok(());
    }
    let name = entry.path.name().to_owned();
    let dest = match a.output {
        Some(p) if p.is_dir() => p.join(&name),
        Some(p) => p,
        None => PathBuf::from(&name),
    };
    let written = write_local(&dest, &entry, stream).await?;
    #[derive(Serialize)]
    struct Got {
        target: String,
        file: String,
        size: u64,
        create_tid: String,
        create_time: String,
    }
    let json = Got {
        target: target.to_string(),
        file: dest.display().to_string(),
        size: written,
        create_tid: entry.create_tid.to_string(),
        create_time: entry.create_tid.to_rfc3339(),
    };
    ctx.out.emit(&json, || {
        format!(
            "{} -> {}: {}, the version created at TID {}\n",
            target,
            dest.display(),
            match &entry.symlink_target {
                Some(t) => format!("symlink to {t}"),
                None => output::bytes(written),
            },
            output::tid(entry.create_tid)
        )
    })
}

/// Writes an entry to `dest` through a temporary file in the same directory, then sets its
/// mode and mtime and renames it into place, so `dest` is never half-written.
async fn write_local(dest: &Path, entry: &Entry, stream: repl_proto::ByteStream) -> Result<u64> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", dest.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file_name}.replctl-{}", std::process::id()));
    let mtime = SystemTime::UNIX_EPOCH
        + std::time::Duration::from_nanos(u64::try_from(entry.mtime_ns).unwrap_or(0));
    if let Some(link) = &entry.symlink_target {
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(link, &tmp)
            .with_context(|| format!("cannot create a symlink in {}", dir.display()))?;
        std::fs::rename(&tmp, dest).with_context(|| format!("cannot write {}", dest.display()))?;
        return Ok(0);
    }
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        let n = stream.copy_to(&mut file).await?;
        let file = file.into_std().await;
        file.set_permissions(std::fs::Permissions::from_mode(entry.mode))?;
        file.set_modified(mtime)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, dest).with_context(|| format!("cannot write {}", dest.display()))?;
        Ok::<u64, anyhow::Error>(n)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `replctl cat`.
pub async fn cat(ctx: &Ctx, a: CatArgs) -> Result<()> {
    let at = a.target.read_at(a.at.as_ref())?;
    let target = a.target.not_root("cat")?;
    let (entry, stream) = read_entry(ctx, &target, at).await?;
    if let Some(link) = &entry.symlink_target {
        bail!(
            "{} is a symlink to `{link}`: replctl does not follow links; cat the target's path",
            target.location()
        );
    }
    stream.copy_to(&mut tokio::io::stdout()).await?;
    Ok(())
}

// =============================================================================================
// ls, stat

/// `ls --json`.
#[derive(Debug, Serialize)]
struct LsJson {
    target: String,
    tid: String,
    tid_time: String,
    entries: Vec<EntryJson>,
}

/// `replctl ls`.
pub async fn ls(ctx: &Ctx, a: LsArgs) -> Result<()> {
    let at = a.target.read_at(a.at.as_ref())?;
    let target = a.target;
    let mut client = ctx.nodes.storage(target.node.as_ref()).await?;
    // A file or symlink is shown as itself, as ls does.
    if !target.path.is_root() {
        let s = client
            .stat(ReadRequest {
                pfs: target.pfs.clone(),
                path: target.path.clone(),
                at: at.clone(),
            })
            .await?;
        if s.entry.kind != EntryKind::Dir {
            let base = s.entry.path.parent().unwrap_or_default();
            return print_listing(ctx, &target, s.tid, &[s.entry], &base, a.long);
        }
    }
    let listing = client
        .list(ListRequest {
            pfs: target.pfs.clone(),
            path: target.path.clone(),
            at,
            recursive: a.recursive,
        })
        .await?;
    print_listing(
        ctx,
        &target,
        listing.tid,
        &listing.entries,
        &target.path,
        a.long,
    )
}

fn print_listing(
    ctx: &Ctx,
    target: &Target,
    tid: Tid,
    entries: &[Entry],
    base: &EntryPath,
    long: bool,
) -> Result<()> {
    let json = LsJson {
        target: target.to_string(),
        tid: tid.to_string(),
        tid_time: tid.to_rfc3339(),
        entries: entries.iter().map(EntryJson::from).collect(),
    };
    ctx.out.emit(&json, || {
        let name = |e: &Entry| {
            let rel = e
                .path
                .rebase(base, &EntryPath::root())
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|_| e.path.as_str().to_owned());
            match e.kind {
                EntryKind::Dir => format!("{rel}/"),
                _ => rel,
            }
        };
        if !long {
            return entries.iter().map(|e| name(e) + "\n").collect();
        }
        let mut t = output::table(&["mode", "size", "modified (utc)", "tid", "name"]);
        for e in entries {
            let mut n = name(e);
            if let Some(link) = &e.symlink_target {
                n = format!("{n} -> {link}");
            }
            t.add_row(vec![
                Cell::new(output::mode_string(e.kind, e.mode)),
                Cell::new(e.size),
                Cell::new(output::time_short(e.mtime_ns)),
                Cell::new(e.create_tid),
                Cell::new(n),
            ]);
        }
        output::align_right(&mut t, &[1]);
        format!("at TID {}\n{}", output::tid(tid), output::render(&t))
    })
}

/// `replctl stat`.
pub async fn stat(ctx: &Ctx, a: StatArgs) -> Result<()> {
    let at = a.target.read_at(a.at.as_ref())?;
    let target = a.target;
    let s = ctx
        .nodes
        .storage(target.node.as_ref())
        .await?
        .stat(ReadRequest {
            pfs: target.pfs.clone(),
            path: target.path.clone(),
            at,
        })
        .await?;
    #[derive(Serialize)]
    struct StatJson {
        target: String,
        tid: String,
        tid_time: String,
        entry: EntryJson,
    }
    let json = StatJson {
        target: target.to_string(),
        tid: s.tid.to_string(),
        tid_time: s.tid.to_rfc3339(),
        entry: EntryJson::from(&s.entry),
    };
    ctx.out.emit(&json, || {
        let e = &s.entry;
        let mut out = format!(
            "path      {}\nkind      {}\nmode      {} ({})\nsize      {}\nmodified  {}\n",
            target.location(),
            e.kind,
            output::mode_octal(e.mode),
            output::mode_string(e.kind, e.mode),
            e.size,
            output::time_ns(e.mtime_ns),
        );
        if let Some(link) = &e.symlink_target {
            out.push_str(&format!("target    {link}\n"));
        }
        out.push_str(&format!("created   {}\n", output::tid(e.create_tid)));
        if let Some(h) = &json.entry.content_hash {
            out.push_str(&format!("blake3    {h}\n"));
        }
        out.push_str(&format!("read at   {}\n", output::tid(s.tid)));
        out
    })
}

// =============================================================================================
// rm, mv, mkdir

/// `replctl rm`.
pub async fn rm(ctx: &Ctx, a: RmArgs) -> Result<()> {
    let target = a.target.for_write("rm")?.not_root("rm")?;
    let r = ctx
        .nodes
        .storage(target.node.as_ref())
        .await?
        .delete(DeleteRequest {
            pfs: target.pfs.clone(),
            path: target.path.clone(),
            recursive: a.recursive,
        })
        .await;
    let r = match r {
        Ok(r) => r,
        Err(e) if a.force && e.code() == Some(tonic::Code::NotFound) => return Ok(()),
        Err(e) if !a.recursive && e.code() == Some(tonic::Code::FailedPrecondition) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot remove {} (a non-empty directory needs -r)",
                target.location()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    ctx.out
        .emit(&CommitJson::delete(target.location(), &r), || {
            format!(
                "removed {} ({} {}), TID {}\n",
                target.location(),
                r.entries,
                if r.entries == 1 { "entry" } else { "entries" },
                output::tid(r.tid)
            )
        })
}

/// `replctl mv`.
pub async fn mv(ctx: &Ctx, a: MvArgs) -> Result<()> {
    let from = a.from.for_write("mv")?.not_root("mv")?;
    let mut to = a.to.for_write("mv")?;
    if from.node != to.node || from.pfs != to.pfs {
        return Err(UsageError(format!(
            "mv moves inside one PFS, but {} and {} are in different PFSes or nodes: copy with \
             `replctl export` and `replctl import`, then remove the original",
            from.location(),
            to.location()
        ))
        .into());
    }
    let mut client = ctx.nodes.storage(from.node.as_ref()).await?;
    if to.trailing_slash || to.path.is_root() || is_dir(&mut client, &to).await? {
        to.path = to.path.join(from.path.name())?;
    }
    let tid = client
        .rename(RenameRequest {
            pfs: from.pfs.clone(),
            from: from.path.clone(),
            to: to.path.clone(),
            replace: a.force,
        })
        .await
        .map_err(|e| {
            if e.code() == Some(tonic::Code::AlreadyExists) && !a.force {
                anyhow::Error::new(e)
                    .context(format!("{} exists (add -f to replace it)", to.location()))
            } else {
                e.into()
            }
        })?;
    ctx.out.emit(&CommitJson::new(to.location(), tid), || {
        format!(
            "{} -> {}, TID {}\n",
            from.location(),
            to.location(),
            output::tid(tid)
        )
    })
}

/// `replctl mkdir`.
pub async fn mkdir(ctx: &Ctx, a: MkdirArgs) -> Result<()> {
    let mut done = Vec::new();
    for target in a.targets {
        let target = target.for_write("mkdir")?.not_root("mkdir")?;
        let now = i64::try_from(Tid::now().get()).unwrap_or(i64::MAX);
        let tid = ctx
            .nodes
            .storage(target.node.as_ref())
            .await?
            .mkdir(MkdirRequest {
                pfs: target.pfs.clone(),
                path: target.path.clone(),
                attrs: Attrs {
                    mode: a.mode,
                    mtime_ns: now,
                },
                parents: a.parents,
            })
            .await
            .map_err(|e| not_found_hint(e, &target, a.parents))?;
        done.push(CommitJson::new(target.location(), tid));
    }
    #[derive(Serialize)]
    struct MkdirJson {
        created: Vec<CommitJson>,
    }
    let human: String = done
        .iter()
        .map(|c| format!("created {}, TID {} ({})\n", c.target, c.tid, c.tid_time))
        .collect();
    ctx.out.emit(&MkdirJson { created: done }, || human)
}

// =============================================================================================
// history

/// `replctl history`.
pub async fn history(ctx: &Ctx, a: HistoryArgs) -> Result<()> {
    let target = a.target.not_root("history")?;
    if let Some(at) = &target.at
        && *at != ReadAt::Head
    {
        return Err(UsageError(format!(
            "history lists every version of {}; drop @{at}",
            target.location()
        ))
        .into());
    }
    let h = ctx
        .nodes
        .storage(target.node.as_ref())
        .await?
        .history(HistoryRequest {
            pfs: target.pfs.clone(),
            path: target.path.clone(),
        })
        .await?;
    #[derive(Serialize)]
    struct HistoryJson {
        target: String,
        versions: Vec<EntryJson>,
        pruned: Vec<output::TidRangeJson>,
    }
    let json = HistoryJson {
        target: target.location(),
        versions: h.versions.iter().map(EntryJson::from).collect(),
        pruned: output::ranges_json(&h.pruned),
    };
    ctx.out.emit(&json, || {
        let pruned = match h.pruned.as_slice() {
            [] => String::new(),
            [.., newest] => format!(
                "history of this PFS was pruned in {} range(s), the newest {}; versions only \
                 those TIDs saw are gone, and reads there say \"pruned\"\n",
                h.pruned.len(),
                output::range(newest)
            ),
        };
        if h.versions.is_empty() {
            return format!("{}: no retained versions\n{pruned}", target.location());
        }
        let mut t = output::table(&[
            "created tid",
            "created (utc)",
            "deleted tid",
            "kind",
            "mode",
            "size",
            "blake3",
        ]);
        for (e, j) in h.versions.iter().zip(&json.versions) {
            t.add_row(vec![
                Cell::new(e.create_tid),
                Cell::new(e.create_tid.to_rfc3339()),
                Cell::new(
                    e.delete_tid
                        .map_or_else(|| "live".to_owned(), |t| t.to_string()),
                ),
                Cell::new(e.kind),
                Cell::new(output::mode_octal(e.mode)),
                Cell::new(e.size),
                Cell::new(
                    j.content_hash
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), |h| h[..16].to_owned()),
                ),
            ]);
        }
        output::align_right(&mut t, &[5]);
        format!(
            "{}\n{pruned}read a version with `replctl get {}@TID`\n",
            output::render(&t),
            target.location()
        )
    })
}
