//! `replctl import DIR TARGET`: loads a local tree into a PFS.
//!
//! # What is sent
//!
//! A walker thread reads DIR depth-first, each directory's entries sorted by name (bytes), so
//! the same tree always gives the same sequence of operations:
//!
//! - a directory: `Mkdir` with its mode and mtime (also when empty), before its contents;
//! - a regular file: `File` with mode, mtime (ns) and size, and its content in 1 MiB chunks;
//! - a symlink: `Symlink` with its target, never followed (only DIR itself is followed);
//! - sockets, FIFOs and devices are skipped with a warning; hard links become separate files.
//!
//! The contents of DIR go below PATH of the target; when PATH is not the root, it gets DIR's
//! own mode and mtime (the PFS root has none). Nothing in the PFS that DIR lacks is deleted.
//!
//! # Transactions and resuming
//!
//! The server commits the operations in bounded transactions (`--txn-ops`, `--txn-bytes`, or
//! its defaults) and reports each commit; the last report confirms that everything is in. An
//! interrupted import (Ctrl-C or SIGTERM, the server stopping, a cut connection) keeps every committed
//! transaction, says how far it got, and exits 1. Running the same command again sends
//! everything again: entries that are already stored identically are no-ops in the engine, so
//! the second run costs reading DIR and the wire, and finishes the job.
//!
//! # Files that change while they are read
//!
//! A file is opened (without following symlinks), its size taken, and exactly that many bytes
//! are sent. If it shrinks meanwhile, the rest is sent as zeros (as GNU tar does); if it grows,
//! the extra bytes are not sent; either way a warning names it, the import ends with exit 1,
//! and running it again imports the file's content as it then is. A file that cannot be read is
//! not left behind half-written: its entry is deleted again in the same import.

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use repl_proto::{
    Attrs, CHUNK_SIZE, ClientError, ImportBegin, ImportCommits, ImportOp, ImportProgress, MODE_MASK,
};
use repl_types::{EntryPath, Tid};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::output;
use crate::progress::{Mode, Progress};
use crate::target::Target;
use crate::{Ctx, Reported, UsageError};

/// `replctl import DIR TARGET`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  replctl import ./photos data/photos\n  \
                        replctl import /srv/www node1:web --txn-bytes 256MiB\n\n\
                        Interrupted? Run the same command again: what is already stored is not \
                        written twice.")]
pub struct ImportArgs {
    /// The local directory to load (followed if it is a symlink; nothing below it is).
    pub dir: PathBuf,
    /// [NODE:]PFS[/PATH]: where DIR's contents go.
    #[arg(value_parser = Target::parse)]
    pub target: Target,
    /// The most operations per transaction [default: the server's].
    #[arg(long, value_name = "N")]
    pub txn_ops: Option<u32>,
    /// The most content bytes per transaction, such as 256MiB [default: the server's].
    #[arg(long, value_name = "SIZE", value_parser = output::parse_size)]
    pub txn_bytes: Option<u64>,
}

// =============================================================================================
// The walk

/// What the walker produces.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// An operation to send.
    Op(ImportOp),
    /// Something the operator should know; `problem` makes the import end with exit 1.
    Warning {
        /// The local path concerned.
        path: PathBuf,
        /// What happened.
        message: String,
        /// Whether this is a problem (unreadable, changed) or expected (a special file).
        problem: bool,
    },
}

/// Where the walker puts what it produces; `false` means "stop" (the import was abandoned).
pub trait Sink {
    /// Takes one item.
    fn put(&mut self, item: Item) -> bool;
}

/// What the walk saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WalkStats {
    /// Regular files sent.
    pub files: u64,
    /// Directories sent.
    pub dirs: u64,
    /// Symlinks sent.
    pub symlinks: u64,
    /// Content bytes sent.
    pub bytes: u64,
    /// Sockets, FIFOs and devices skipped.
    pub special_skipped: u64,
    /// Entries that could not be read (skipped or removed again).
    pub errors: u64,
    /// Files that changed while they were read.
    pub changed: u64,
    /// The walk stopped early because the sink refused more.
    pub stopped: bool,
}

struct Walker<'a> {
    sink: &'a mut dyn Sink,
    stats: WalkStats,
}

/// Checks that `dir` is a readable directory, before anything is sent.
pub fn check_dir(dir: &Path) -> Result<Metadata> {
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() {
        return Err(UsageError(format!(
            "{} is not a directory: upload a single file with `replctl put`",
            dir.display()
        ))
        .into());
    }
    std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(meta)
}

/// Walks `dir` into `base`, giving every item to `sink` (see the module documentation).
pub fn walk(dir: &Path, base: &EntryPath, sink: &mut dyn Sink) -> Result<WalkStats> {
    let meta = check_dir(dir)?;
    let mut w = Walker {
        sink,
        stats: WalkStats::default(),
    };
    if !base.is_root() {
        w.stats.dirs += 1;
        if !w.op(ImportOp::Mkdir {
            path: base.clone(),
            attrs: attrs(&meta),
        }) {
            return Ok(w.stats);
        }
    }
    // Depth first with an explicit stack (paths may be 2048 levels deep): each frame holds a
    // directory's remaining names, sorted, the next one last.
    let mut stack = vec![(dir.to_owned(), base.clone(), sorted_names(dir)?)];
    while let Some((local_dir, remote_dir, names)) = stack.last_mut() {
        let Some(name) = names.pop() else {
            stack.pop();
            continue;
        };
        let local = local_dir.join(&name);
        let remote_dir = remote_dir.clone();
        let Some(remote) = w.remote_path(&local, &remote_dir, &name) else {
            continue;
        };
        let meta = match std::fs::symlink_metadata(&local) {
            Ok(m) => m,
            Err(e) => {
                w.problem(&local, format!("cannot read it, skipped: {e}"));
                continue;
            }
        };
        let ft = meta.file_type();
        let go_on = if ft.is_dir() {
            w.stats.dirs += 1;
            let sent = w.op(ImportOp::Mkdir {
                path: remote.clone(),
                attrs: attrs(&meta),
            });
            match sorted_names(&local) {
                Ok(names) => stack.push((local, remote, names)),
                Err(e) => w.problem(
                    &local,
                    format!("cannot list it, its contents are skipped: {e:#}"),
                ),
            }
            sent
        } else if ft.is_file() {
            w.file(&local, remote)
        } else if ft.is_symlink() {
            w.symlink(&local, remote, &meta)
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "FIFO"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "special file"
            };
            w.stats.special_skipped += 1;
            w.sink.put(Item::Warning {
                path: local,
                message: format!(
                    "skipping a {kind}: only files, directories and symlinks are imported"
                ),
                problem: false,
            })
        };
        if !go_on || w.stats.stopped {
            w.stats.stopped = true;
            break;
        }
    }
    Ok(w.stats)
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    // Reverse order: the stack pops the smallest name first.
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}

fn attrs(meta: &Metadata) -> Attrs {
    Attrs {
        mode: meta.mode() & MODE_MASK,
        mtime_ns: mtime_ns(meta),
    }
}

fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

impl Walker<'_> {
    fn op(&mut self, op: ImportOp) -> bool {
        let ok = self.sink.put(Item::Op(op));
        if !ok {
            self.stats.stopped = true;
        }
        ok
    }

    fn problem(&mut self, path: &Path, message: String) {
        self.stats.errors += 1;
        if !self.sink.put(Item::Warning {
            path: path.to_owned(),
            message,
            problem: true,
        }) {
            self.stats.stopped = true;
        }
    }

    fn remote_path(&mut self, local: &Path, dir: &EntryPath, name: &OsString) -> Option<EntryPath> {
        let Some(name) = name.to_str() else {
            self.problem(
                local,
                "its name is not valid UTF-8, which PFS paths must be: skipped (rename it)"
                    .to_owned(),
            );
            return None;
        };
        match dir.join(name) {
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(local, format!("skipped: {e}"));
                None
            }
        }
    }

    fn symlink(&mut self, local: &Path, remote: EntryPath, meta: &Metadata) -> bool {
        let target = match std::fs::read_link(local) {
            Ok(t) => t,
            Err(e) => {
                self.problem(local, format!("cannot read the link, skipped: {e}"));
                return true;
            }
        };
        let Some(target) = target.to_str() else {
            self.problem(local, "its target is not valid UTF-8: skipped".to_owned());
            return true;
        };
        self.stats.symlinks += 1;
        self.op(ImportOp::Symlink {
            path: remote,
            target: target.to_owned(),
            mtime_ns: mtime_ns(meta),
        })
    }

    /// Sends a regular file: `File` with the first chunk, then `Data` until `size` bytes.
    fn file(&mut self, local: &Path, remote: EntryPath) -> bool {
        // O_NOFOLLOW: a file swapped for a symlink is not followed; O_NONBLOCK: a file swapped
        // for a FIFO does not hang the open (and changes nothing for a regular file).
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(local)
            .and_then(|f| Ok((f.metadata()?, f)));
        let (meta, mut file) = match opened {
            Ok((m, f)) if m.is_file() => (m, f),
            Ok(_) => {
                self.problem(
                    local,
                    "it stopped being a regular file while read: skipped".to_owned(),
                );
                return true;
            }
            Err(e) => {
                self.problem(local, format!("cannot read it, skipped: {e}"));
                return true;
            }
        };
        let size = meta.len();
        let mut left = size;
        let mut failure: Option<std::io::Error> = None;
        let mut short = false;
        let mut first = true;
        self.stats.files += 1;
        loop {
            let want = usize::try_from(left.min(CHUNK_SIZE as u64)).unwrap_or(CHUNK_SIZE);
            let mut buf = Vec::with_capacity(want);
            if failure.is_none() && !short {
                if let Err(e) = read_chunk(&file, &mut buf) {
                    failure = Some(e);
                }
                if buf.len() < want && failure.is_none() {
                    short = true;
                }
            }
            // Past a failure or the end, the rest is zeros: the server needs `size` bytes.
            buf.resize(want, 0);
            let data = Bytes::from(buf);
            left -= want as u64;
            self.stats.bytes += want as u64;
            let op = if first {
                first = false;
                ImportOp::File {
                    path: remote.clone(),
                    attrs: attrs(&meta),
                    size,
                    data,
                }
            } else {
                ImportOp::Data(data)
            };
            if !self.op(op) {
                return false;
            }
            if left == 0 {
                break;
            }
        }
        if let Some(e) = failure {
            self.problem(
                local,
                format!("reading it failed, so it was not imported: {e}"),
            );
            return self.op(ImportOp::Delete {
                path: remote,
                recursive: false,
            });
        }
        let grew = !short && matches!(file.read(&mut [0u8; 1]), Ok(n) if n > 0);
        let touched = file
            .metadata()
            .map(|m| mtime_ns(&m) != mtime_ns(&meta))
            .unwrap_or(false);
        if short || grew || touched {
            self.stats.changed += 1;
            let what = if short {
                "it shrank while it was read; the missing end was sent as zeros".to_owned()
            } else if grew {
                format!("it grew while it was read; only its first {size} bytes were sent")
            } else {
                "it was modified while it was read".to_owned()
            };
            if !self.sink.put(Item::Warning {
                path: local.to_owned(),
                message: format!("{what}: run the import again to store its current content"),
                problem: true,
            }) {
                return false;
            }
        }
        true
    }
}

/// Fills `buf`'s spare capacity from `file`, stopping early only at the end of the file.
///
/// Reads go straight into the uninitialized capacity, in as few `read` calls as the kernel
/// allows: zero-filling every chunk first cost about a tenth of the client's CPU, and
/// `Read::read_to_end` starts with small reads.
fn read_chunk(file: &File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    while buf.len() < buf.capacity() {
        match rustix::io::read(file, rustix::buffer::spare_capacity(buf)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The total size of the regular files below `dir`, for the progress bar's ETA.
fn scan_total(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

// =============================================================================================
// The import

/// Items per hand-off from the walker thread to the async side.
const HANDOFF_ITEMS: usize = 256;
/// Content bytes after which a hand-off goes at once (so every 1 MiB chunk goes on its own).
const HANDOFF_BYTES: usize = 1 << 20;

/// Sends items from the walker thread to the async side in batches, so that a tree of small
/// files does not cost a thread wake-up per file; stops when the import is abandoned.
/// [`ChannelSink::flush`] sends the last batch.
struct ChannelSink {
    tx: mpsc::Sender<Vec<Item>>,
    batch: Vec<Item>,
    bytes: usize,
}

impl ChannelSink {
    fn new(tx: mpsc::Sender<Vec<Item>>) -> ChannelSink {
        ChannelSink {
            tx,
            batch: Vec::new(),
            bytes: 0,
        }
    }

    /// Sends what is batched; `false` when the import was abandoned.
    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        self.bytes = 0;
        self.tx
            .blocking_send(std::mem::take(&mut self.batch))
            .is_ok()
    }
}

impl Sink for ChannelSink {
    fn put(&mut self, item: Item) -> bool {
        if let Item::Op(ImportOp::File { data, .. } | ImportOp::Data(data)) = &item {
            self.bytes += data.len();
        }
        self.batch.push(item);
        if self.batch.len() >= HANDOFF_ITEMS || self.bytes >= HANDOFF_BYTES {
            self.flush()
        } else {
            true
        }
    }
}

/// `import --json`.
#[derive(Debug, Serialize)]
struct ImportJson {
    source: String,
    target: String,
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    special_skipped: u64,
    errors: u64,
    changed: u64,
    transactions: u64,
    first_tid: Option<String>,
    first_time: Option<String>,
    last_tid: Option<String>,
    last_time: Option<String>,
    elapsed_seconds: f64,
    bytes_per_second: f64,
}

enum Stop {
    Signal,
    Failed(anyhow::Error),
}

/// `replctl import`.
pub async fn run(ctx: &Ctx, a: ImportArgs) -> Result<()> {
    let target = a.target.for_write("import")?;
    check_dir(&a.dir)?;
    let mut client = ctx.nodes.storage(target.node.as_ref()).await?;
    let session = client
        .import(ImportBegin {
            pfs: target.pfs.clone(),
            max_txn_ops: a.txn_ops,
            max_txn_bytes: a.txn_bytes,
        })
        .await?;

    let progress = Arc::new(Progress::new(Mode::detect(ctx.quiet), "import", None));
    if progress.mode() == Mode::Bar {
        let (dir, p) = (a.dir.clone(), Arc::clone(&progress));
        std::thread::spawn(move || p.set_total(scan_total(&dir)));
    }

    let reports = session.watch_progress();
    let commits = session.watch_commits();

    let (tx, mut rx) = mpsc::channel::<Vec<Item>>(16);
    let walker = {
        let (dir, base) = (a.dir.clone(), target.path.clone());
        std::thread::Builder::new()
            .name("import-walk".into())
            .spawn(move || {
                let mut sink = ChannelSink::new(tx);
                let stats = walk(&dir, &base, &mut sink);
                sink.flush();
                stats
            })
            .context("cannot start the directory walker")?
    };

    let feed = {
        let progress = Arc::clone(&progress);
        let commits = commits.clone();
        let mut session = session;
        async move {
            let mut sent = 0u64;
            let mut files = 0u64;
            while let Some(items) = rx.recv().await {
                for item in items {
                    match item {
                        Item::Op(op) => {
                            match &op {
                                ImportOp::File { data, .. } => {
                                    files += 1;
                                    sent += data.len() as u64;
                                }
                                ImportOp::Data(data) => sent += data.len() as u64,
                                _ => {}
                            }
                            session.send(op).await?;
                            progress.update(sent, || {
                                let committed = commits
                                    .borrow()
                                    .last_tid
                                    .map_or_else(|| "-".to_owned(), |t| t.to_string());
                                format!("{files} files, committed up to {committed}")
                            });
                        }
                        Item::Warning { path, message, .. } => {
                            progress.warn(&format!("{}: {message}", path.display()));
                        }
                    }
                }
            }
            session.finish().await
        }
    };
    let outcome = tokio::select! {
        r = feed => r.map_err(|e| Stop::Failed(e.into())),
        () = crate::interrupted() => Err(Stop::Signal),
    };
    progress.finish();
    let elapsed = progress.elapsed();
    // The newest report, and the commits accumulated (read in this order: a report is counted
    // in `commits` before it is published, so `last` never runs ahead of `commits`).
    let last = reports.borrow().clone();
    let commits = *commits.borrow();

    let done = match outcome {
        Ok(done) => done,
        Err(stop) => {
            let signalled = matches!(stop, Stop::Signal);
            let why = match stop {
                Stop::Signal => "interrupted".to_owned(),
                Stop::Failed(e) => describe(&e),
            };
            eprintln!("replctl: import of {} into {target} {why}", a.dir.display());
            eprintln!("{}", interrupted_summary(&last, &commits));
            if signalled && last.tid.is_some() {
                eprintln!(
                    "(Transactions the node was committing at the moment of the interruption may \
                     be in too; `replctl pfs status {}` shows the head.)",
                    target.pfs
                );
            }
            return Err(Reported {
                message: format!("import {why}"),
            }
            .into());
        }
    };
    let stats = match walker.join() {
        Ok(Ok(stats)) => stats,
        Ok(Err(e)) => return Err(e),
        Err(_) => anyhow::bail!("the directory walker crashed"),
    };

    let total = done.total;
    let secs = elapsed.as_secs_f64();
    let json = ImportJson {
        source: a.dir.display().to_string(),
        target: target.location(),
        files: total.files,
        dirs: total.dirs,
        symlinks: total.symlinks,
        bytes: total.bytes,
        special_skipped: stats.special_skipped,
        errors: stats.errors,
        changed: stats.changed,
        transactions: commits.transactions,
        first_tid: commits.first_tid.map(|t| t.to_string()),
        first_time: commits.first_tid.map(Tid::to_rfc3339),
        last_tid: commits.last_tid.map(|t| t.to_string()),
        last_time: commits.last_tid.map(Tid::to_rfc3339),
        elapsed_seconds: secs,
        bytes_per_second: if secs > 0.0 {
            total.bytes as f64 / secs
        } else {
            0.0
        },
    };
    ctx.out.emit(&json, || {
        let mut s = format!(
            "imported {} -> {}\n  files     {} ({})\n  dirs      {}\n  symlinks  {}\n",
            a.dir.display(),
            target.location(),
            total.files,
            output::bytes(total.bytes),
            total.dirs,
            total.symlinks,
        );
        if stats.special_skipped > 0 {
            s.push_str(&format!(
                "  skipped   {} special files\n",
                stats.special_skipped
            ));
        }
        match (commits.first_tid, commits.last_tid) {
            (Some(first), Some(last)) if first != last => s.push_str(&format!(
                "  tids      {} .. {}\n            {} transactions\n",
                output::tid(first),
                output::tid(last),
                commits.transactions
            )),
            (_, Some(last)) => s.push_str(&format!("  tid       {}\n", output::tid(last))),
            _ => s.push_str("  tid       - (nothing new: everything was stored already)\n"),
        }
        s.push_str(&format!(
            "  elapsed   {}, {}\n",
            output::duration(elapsed),
            output::rate(total.bytes, elapsed)
        ));
        s
    })?;
    if stats.errors > 0 || stats.changed > 0 {
        anyhow::bail!(
            "{} entries could not be imported as they are and {} files changed while read (see \
             the warnings above); fix what the warnings name and run the same command again",
            stats.errors,
            stats.changed
        );
    }
    Ok(())
}

/// "committed N transactions up to TID ...; run the same command again".
fn interrupted_summary(last: &ImportProgress, c: &ImportCommits) -> String {
    let t = last.total;
    match last.tid.or(c.last_tid) {
        None => "Nothing was committed. Run the same command again to import.".to_owned(),
        Some(tid) => format!(
            "Committed {} transaction{} up to TID {}: {} files, {} dirs, {} symlinks, {}{}.\n\
             Run the same command again to finish: what is already stored is sent again and \
             written as a no-op.",
            c.transactions,
            if c.transactions == 1 { "" } else { "s" },
            output::tid(tid),
            t.files,
            t.dirs,
            t.symlinks,
            output::bytes(t.bytes),
            last.last_path
                .as_ref()
                .map(|p| format!(", the last being {p}"))
                .unwrap_or_default(),
        ),
    }
}

/// Why an import stopped: "interrupted: ..." when the node or the connection went away (a rerun
/// finishes it), "failed: ..." when the node refused something (a rerun would fail again).
fn describe(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Status(s)) => match s.code() {
            tonic::Code::Unavailable if !s.message().is_empty() => format!("interrupted: {text}"),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                format!("interrupted: the connection to the node was lost ({text})")
            }
            _ => format!("failed: {text}"),
        },
        Some(ClientError::Connect { .. }) => format!("interrupted: {text}"),
        _ => format!("failed: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::Duration;

    use super::*;

    type Hook = Box<dyn FnMut(&Item)>;

    #[derive(Default)]
    struct VecSink {
        items: Vec<Item>,
        /// Called on each item, before it is stored (to change files mid-walk).
        hook: Option<Hook>,
        /// Refuse after this many items.
        limit: Option<usize>,
    }

    impl Sink for VecSink {
        fn put(&mut self, item: Item) -> bool {
            if let Some(h) = &mut self.hook {
                h(&item);
            }
            if self.limit.is_some_and(|l| self.items.len() >= l) {
                return false;
            }
            self.items.push(item);
            true
        }
    }

    fn p(s: &str) -> EntryPath {
        EntryPath::new(s).expect("valid")
    }

    fn set_mtime(path: &Path, secs: u64, nanos: u32) {
        let f = File::options().write(true).open(path).expect("open");
        f.set_modified(std::time::UNIX_EPOCH + Duration::new(secs, nanos))
            .expect("set mtime");
    }

    /// A tree: a/ (0700) with f (0600, 3 bytes), an empty dir e/, a symlink l -> ../outside,
    /// a 2.5 MiB file big, and a socket.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("src");
        std::fs::create_dir_all(root.join("a")).expect("mkdir");
        std::fs::create_dir(root.join("e")).expect("mkdir");
        std::fs::write(root.join("a/f"), b"abc").expect("write");
        std::fs::set_permissions(root.join("a/f"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        set_mtime(&root.join("a/f"), 1_700_000_000, 123_456_789);
        std::fs::set_permissions(root.join("a"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        std::fs::create_dir(tmp.path().join("outside")).expect("mkdir");
        std::fs::write(tmp.path().join("outside/secret"), b"no").expect("write");
        symlink("../outside", root.join("l")).expect("symlink");
        std::fs::write(root.join("big"), vec![7u8; CHUNK_SIZE * 5 / 2]).expect("write");
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).expect("socket");
        (tmp, root)
    }

    fn ops(items: &[Item]) -> Vec<&ImportOp> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Op(op) => Some(op),
                Item::Warning { .. } => None,
            })
            .collect()
    }

    #[test]
    fn walks_sorted_with_modes_mtimes_symlinks_empty_dirs_and_skips_specials() {
        let (_tmp, root) = tree();
        let mut sink = VecSink::default();
        let stats = walk(&root, &EntryPath::root(), &mut sink).expect("walk");
        let ops = ops(&sink.items);
        let paths: Vec<String> = ops
            .iter()
            .map(|op| {
                op.path()
                    .map_or_else(|| "<data>".to_owned(), |p| p.to_string())
            })
            .collect();
        assert_eq!(paths, ["a", "a/f", "big", "<data>", "<data>", "e", "l"]);

        let ImportOp::Mkdir { attrs, .. } = ops[0] else {
            panic!("{:?}", ops[0])
        };
        assert_eq!(attrs.mode, 0o700);
        let ImportOp::File {
            attrs, size, data, ..
        } = ops[1]
        else {
            panic!("{:?}", ops[1])
        };
        assert_eq!(
            (attrs.mode, attrs.mtime_ns, *size),
            (0o600, 1_700_000_000_123_456_789, 3)
        );
        assert_eq!(&data[..], b"abc");
        // A big file: the first chunk with the header, then Data until its size.
        let ImportOp::File { size, data, .. } = ops[2] else {
            panic!("{:?}", ops[2])
        };
        assert_eq!((*size, data.len()), (CHUNK_SIZE as u64 * 5 / 2, CHUNK_SIZE));
        let ImportOp::Data(d) = ops[4] else {
            panic!("{:?}", ops[4])
        };
        assert_eq!(d.len(), CHUNK_SIZE / 2);
        // The empty directory is there; the symlink is sent as a link, not followed.
        assert!(matches!(ops[5], ImportOp::Mkdir { .. }));
        let ImportOp::Symlink { target, .. } = ops[6] else {
            panic!("{:?}", ops[6])
        };
        assert_eq!(target, "../outside");
        assert!(!paths.iter().any(|p| p.contains("secret")));

        // The socket is skipped with a warning that is not a problem.
        let warnings: Vec<&Item> = sink
            .items
            .iter()
            .filter(|i| matches!(i, Item::Warning { .. }))
            .collect();
        assert_eq!(warnings.len(), 1);
        let Item::Warning {
            path,
            message,
            problem,
        } = warnings[0]
        else {
            unreachable!()
        };
        assert!(
            path.ends_with("sock") && message.contains("socket") && !problem,
            "{message}"
        );

        assert_eq!(
            stats,
            WalkStats {
                files: 2,
                dirs: 2,
                symlinks: 1,
                bytes: 3 + CHUNK_SIZE as u64 * 5 / 2,
                special_skipped: 1,
                ..Default::default()
            }
        );

        // The same tree gives the same operations.
        let mut again = VecSink::default();
        walk(&root, &EntryPath::root(), &mut again).expect("walk");
        assert_eq!(again.items, sink.items);
    }

    #[test]
    fn a_subpath_target_gets_the_dirs_mode_and_prefixes_everything() {
        let (_tmp, root) = tree();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let mut sink = VecSink::default();
        walk(&root, &p("x/y"), &mut sink).expect("walk");
        let ops = ops(&sink.items);
        let ImportOp::Mkdir { path, attrs } = ops[0] else {
            panic!("{:?}", ops[0])
        };
        assert_eq!((path.as_str(), attrs.mode), ("x/y", 0o750));
        assert_eq!(ops[1].path().map(EntryPath::as_str), Some("x/y/a"));
    }

    #[test]
    fn fifos_are_skipped_and_unlistable_roots_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mkfifo")
            .arg(tmp.path().join("pipe"))
            .status();
        if matches!(status, Ok(s) if s.success()) {
            let mut sink = VecSink::default();
            let stats = walk(tmp.path(), &EntryPath::root(), &mut sink).expect("walk");
            assert_eq!(stats.special_skipped, 1);
            assert!(ops(&sink.items).is_empty());
        }
        let file = tmp.path().join("plain");
        std::fs::write(&file, b"x").expect("write");
        let e = walk(&file, &EntryPath::root(), &mut VecSink::default()).expect_err("not a dir");
        assert!(e.to_string().contains("replctl put"), "{e}");
        assert!(
            walk(
                &tmp.path().join("missing"),
                &EntryPath::root(),
                &mut VecSink::default()
            )
            .is_err()
        );
    }

    #[test]
    fn a_file_that_shrinks_while_read_still_sends_its_size_and_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let big = tmp.path().join("big");
        std::fs::write(&big, vec![1u8; CHUNK_SIZE * 3]).expect("write");
        let victim = big.clone();
        let mut sink = VecSink {
            hook: Some(Box::new(move |item| {
                if let Item::Op(ImportOp::File { .. }) = item {
                    // Truncate after the first chunk was read.
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&victim)
                        .and_then(|f| f.set_len(100))
                        .expect("truncate");
                }
            })),
            ..Default::default()
        };
        let stats = walk(tmp.path(), &EntryPath::root(), &mut sink).expect("walk");
        let sent: usize = ops(&sink.items)
            .iter()
            .map(|op| match op {
                ImportOp::File { data, .. } | ImportOp::Data(data) => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(sent, CHUNK_SIZE * 3, "exactly the announced size is sent");
        assert_eq!(stats.changed, 1);
        assert!(sink.items.iter().any(|i| matches!(
            i,
            Item::Warning { message, problem: true, .. } if message.contains("shrank")
        )));
    }

    #[test]
    fn unreadable_entries_are_problems_and_a_refusing_sink_stops_the_walk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("ok"), b"x").expect("write");
        let odd = std::ffi::OsStr::from_bytes(b"latin1-\xe9");
        std::fs::write(tmp.path().join(odd), b"x").expect("write");
        let mut sink = VecSink::default();
        let stats = walk(tmp.path(), &EntryPath::root(), &mut sink).expect("walk");
        assert_eq!(stats.errors, 1, "the non-UTF-8 name");
        assert_eq!(stats.files, 1);

        for i in 0..5 {
            std::fs::write(tmp.path().join(format!("f{i}")), b"x").expect("write");
        }
        let mut sink = VecSink {
            limit: Some(2),
            ..Default::default()
        };
        let stats = walk(tmp.path(), &EntryPath::root(), &mut sink).expect("walk");
        assert!(stats.stopped);
        assert_eq!(sink.items.len(), 2);
    }

    #[test]
    fn the_interruption_report_names_transactions_tid_and_files() {
        let last = ImportProgress {
            tid: Some(Tid(12)),
            total: repl_proto::ImportCounts {
                files: 6,
                dirs: 2,
                ..Default::default()
            },
            last_path: Some(p("d/f6")),
            ..Default::default()
        };
        let commits = ImportCommits {
            transactions: 2,
            first_tid: Some(Tid(10)),
            last_tid: Some(Tid(12)),
        };
        let s = interrupted_summary(&last, &commits);
        assert!(
            s.starts_with("Committed 2 transactions up to TID 0x000000000000000c ("),
            "{s}"
        );
        assert!(
            s.contains("): 6 files, 2 dirs, 0 symlinks, 0 B, the last being d/f6."),
            "{s}"
        );
        assert!(s.contains("Run the same command again to finish"), "{s}");
        let none = interrupted_summary(&ImportProgress::default(), &ImportCommits::default());
        assert!(none.contains("Nothing was committed"), "{none}");
    }

    // -----------------------------------------------------------------------------------------
    // The whole command against an in-process fake Storage server on a Unix socket.

    mod fake {
        use std::pin::Pin;
        use std::sync::Mutex;

        use repl_proto::pb::storage_server::{Storage, StorageServer};
        use repl_proto::{ImportCounts, ImportRequest, pb};
        use tokio::net::UnixListener;
        use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
        use tonic::{Request, Response, Status, Streaming};

        use super::*;

        type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

        /// Commits every 4 operations; with `fail_after`, answers UNAVAILABLE (as a node that
        /// shuts down) after that many commits. Records the path of every operation received.
        pub struct Fake {
            pub fail_after: Option<u64>,
            pub received: Arc<Mutex<Vec<String>>>,
        }

        pub async fn serve(
            fail_after: Option<u64>,
        ) -> (tempfile::TempDir, PathBuf, Arc<Mutex<Vec<String>>>) {
            let dir = tempfile::tempdir().expect("tempdir");
            let socket = dir.path().join("admin.sock");
            let listener = UnixListener::bind(&socket).expect("bind");
            let received = Arc::new(Mutex::new(Vec::new()));
            let fake = Fake {
                fail_after,
                received: Arc::clone(&received),
            };
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(StorageServer::new(fake))
                    .serve_with_incoming(UnixListenerStream::new(listener)),
            );
            (dir, socket, received)
        }

        fn no<T>() -> Result<T, Status> {
            Err(Status::unimplemented("not in the fake"))
        }

        #[tonic::async_trait]
        impl Storage for Fake {
            async fn put(
                &self,
                _: Request<Streaming<pb::PutRequest>>,
            ) -> Result<Response<pb::PutResponse>, Status> {
                no()
            }
            type GetStream = Stream<pb::GetResponse>;
            async fn get(
                &self,
                _: Request<pb::GetRequest>,
            ) -> Result<Response<Self::GetStream>, Status> {
                no()
            }
            async fn stat(
                &self,
                _: Request<pb::StatRequest>,
            ) -> Result<Response<pb::StatResponse>, Status> {
                no()
            }
            type ListStream = Stream<pb::ListResponse>;
            async fn list(
                &self,
                _: Request<pb::ListRequest>,
            ) -> Result<Response<Self::ListStream>, Status> {
                no()
            }
            async fn delete(
                &self,
                _: Request<pb::DeleteRequest>,
            ) -> Result<Response<pb::DeleteResponse>, Status> {
                no()
            }
            async fn rename(
                &self,
                _: Request<pb::RenameRequest>,
            ) -> Result<Response<pb::CommitResponse>, Status> {
                no()
            }
            async fn mkdir(
                &self,
                _: Request<pb::MkdirRequest>,
            ) -> Result<Response<pb::CommitResponse>, Status> {
                no()
            }
            async fn symlink(
                &self,
                _: Request<pb::SymlinkRequest>,
            ) -> Result<Response<pb::CommitResponse>, Status> {
                no()
            }
            async fn history(
                &self,
                _: Request<pb::HistoryRequest>,
            ) -> Result<Response<pb::HistoryResponse>, Status> {
                no()
            }
            type ExportStream = Stream<pb::ExportResponse>;
            async fn export(
                &self,
                _: Request<pb::ExportRequest>,
            ) -> Result<Response<Self::ExportStream>, Status> {
                no()
            }
            type ImportStream = Stream<pb::ImportResponse>;
            async fn import(
                &self,
                request: Request<Streaming<pb::ImportRequest>>,
            ) -> Result<Response<Self::ImportStream>, Status> {
                let mut stream = request.into_inner();
                let (tx, rx) = mpsc::channel(16);
                let (fail_after, received) = (self.fail_after, Arc::clone(&self.received));
                tokio::spawn(async move {
                    let (mut total, mut txn) = (ImportCounts::default(), ImportCounts::default());
                    let (mut tid, mut commits, mut last) = (100u64, 0u64, None);
                    let mut commit =
                        |total: &mut ImportCounts,
                         txn: &mut ImportCounts,
                         last: &Option<EntryPath>| {
                            tid += 1;
                            commits += 1;
                            total.files += txn.files;
                            total.dirs += txn.dirs;
                            total.symlinks += txn.symlinks;
                            total.bytes += txn.bytes;
                            let p = ImportProgress {
                                tid: Some(Tid(tid)),
                                txn: *txn,
                                total: *total,
                                last_path: last.clone(),
                                done: false,
                            };
                            *txn = ImportCounts::default();
                            (p, commits)
                        };
                    loop {
                        let req = match stream.message().await {
                            Ok(Some(m)) => ImportRequest::try_from(m).expect("valid request"),
                            _ => return, // abandoned
                        };
                        for op in req.ops {
                            match &op {
                                ImportOp::File { data, .. } => {
                                    txn.files += 1;
                                    txn.bytes += data.len() as u64;
                                }
                                ImportOp::Data(d) => txn.bytes += d.len() as u64,
                                ImportOp::Mkdir { .. } => txn.dirs += 1,
                                ImportOp::Symlink { .. } => txn.symlinks += 1,
                                ImportOp::Delete { .. } => txn.deletes += 1,
                            }
                            if let Some(p) = op.path() {
                                received.lock().expect("lock").push(p.to_string());
                                last = Some(p.clone());
                            }
                            if txn.ops() == 4 {
                                let (p, n) = commit(&mut total, &mut txn, &last);
                                let _ = tx.send(Ok(p.into())).await;
                                if Some(n) == fail_after {
                                    let _ = tx
                                        .send(Err(Status::unavailable(
                                            "the node is shutting down: the transactions \
                                             answered so far are committed",
                                        )))
                                        .await;
                                    return;
                                }
                            }
                        }
                        if req.finish {
                            if txn.ops() > 0 {
                                let (p, _) = commit(&mut total, &mut txn, &last);
                                let _ = tx.send(Ok(p.into())).await;
                            }
                            let done = ImportProgress {
                                total,
                                last_path: last.clone(),
                                done: true,
                                ..Default::default()
                            };
                            let _ = tx.send(Ok(done.into())).await;
                            return;
                        }
                    }
                });
                Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
            }
        }
    }

    fn ctx(socket: &Path, config: &Path) -> crate::Ctx {
        crate::Ctx {
            out: crate::output::Output { json: true },
            quiet: true,
            nodes: crate::endpoint::Connector::new(crate::endpoint::EndpointArgs {
                socket: Some(socket.to_owned()),
                config: Some(config.to_owned()),
                ..Default::default()
            }),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_interrupted_import_reports_and_a_rerun_sends_everything_again() {
        let (tmp, root) = tree();
        for i in 0..20 {
            std::fs::write(root.join(format!("e/n{i:02}")), format!("file {i}")).expect("write");
        }
        let config = tmp.path().join("replctl.toml");
        std::fs::write(&config, "").expect("write");
        let args = || ImportArgs {
            dir: root.clone(),
            target: Target::parse("data/in").expect("valid"),
            txn_ops: None,
            txn_bytes: None,
        };
        let mut expected = VecSink::default();
        walk(&root, &p("in"), &mut expected).expect("walk");
        let expected: Vec<String> = ops(&expected.items)
            .iter()
            .filter_map(|op| op.path().map(|p| p.to_string()))
            .collect();
        assert!(expected.len() > 20, "{expected:?}");

        // The node goes away after two commits: the command fails with exit code 1 and says so.
        let (_d1, socket, received) = fake::serve(Some(2)).await;
        let e = run(&ctx(&socket, &config), args())
            .await
            .expect_err("the node went away");
        assert!(e.downcast_ref::<Reported>().is_some(), "{e:#}");
        assert!(e.to_string().contains("interrupted"), "{e:#}");
        // What reached the node before it went away is the start of the import, in order
        // (how much depends on the scheduling of the two sides, not on the import).
        let got = received.lock().expect("lock").clone();
        assert!(
            !got.is_empty() && expected.starts_with(&got),
            "received {got:?}, expected a prefix of {expected:?}"
        );

        // The rerun sends every entry again, in the same order, and succeeds.
        let (_d2, socket, received) = fake::serve(None).await;
        run(&ctx(&socket, &config), args()).await.expect("rerun");
        assert_eq!(*received.lock().expect("lock"), expected);
    }
}
