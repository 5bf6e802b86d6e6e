//! The Import worker: a stream of operations becomes bounded transactions.
//!
//! An async task forwards the client's operations over a bounded channel to a blocking worker
//! that owns the open transaction. The worker commits whenever the transaction reaches its bound
//! (operations or bytes) and answers each commit. Only `finish` commits the last, partial
//! transaction: a stream that breaks, a client that goes away, or a node that shuts down leaves
//! the committed transactions in place and discards the rest, so running the same import again
//! finishes it (entries already stored as sent commit nothing).

use std::collections::HashSet;
use std::io::Read;

use bytes::{Buf, Bytes};
use repl_proto::{ImportCounts, ImportOp, ImportProgress, ImportRequest, pb};
use repld_engine::{Attrs, Engine, EntryPath, PfsName, Txn};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Response, Status, Streaming};

use super::{BoxStream, attrs};

/// Operations per transaction unless the client asks for fewer.
const DEFAULT_TXN_OPS: u64 = 10_000;
/// Content bytes per transaction unless the client asks for fewer.
const DEFAULT_TXN_BYTES: u64 = 256 << 20;

enum Msg {
    Op(ImportOp),
    Finish,
}

/// Starts an import from its request stream and returns the response stream.
pub(crate) async fn start(
    engine: Engine,
    shutdown: CancellationToken,
    mut stream: Streaming<pb::ImportRequest>,
) -> Result<Response<BoxStream<pb::ImportResponse>>, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("an Import stream cannot be empty"))?;
    let first = ImportRequest::try_from(first)?;
    let begin = first
        .begin
        .clone()
        .ok_or_else(|| Status::invalid_argument("the first Import message must carry `begin`"))?;
    let max_ops = begin
        .max_txn_ops
        .map_or(DEFAULT_TXN_OPS, u64::from)
        .clamp(1, DEFAULT_TXN_OPS);
    let max_bytes = begin
        .max_txn_bytes
        .unwrap_or(DEFAULT_TXN_BYTES)
        .clamp(1, DEFAULT_TXN_BYTES);
    let (op_tx, op_rx) = mpsc::channel::<Msg>(256);
    let (resp_tx, resp_rx) = mpsc::channel(16);
    let forward_resp = resp_tx.clone();
    tokio::spawn(async move {
        let mut next = Some(first);
        loop {
            let req = match next.take() {
                Some(r) => r,
                None => {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        () = shutdown.cancelled() => {
                            let _ = forward_resp.send(Err(Status::unavailable(
                                "the node is shutting down: the transactions answered so far are committed; run the same import again to finish",
                            ))).await;
                            return;
                        }
                    };
                    match msg {
                        Ok(Some(m)) => match ImportRequest::try_from(m) {
                            Ok(r) => r,
                            Err(e) => {
                                let _ = forward_resp.send(Err(e.into())).await;
                                return;
                            }
                        },
                        // A stream that ends without `finish` is abandoned.
                        Ok(None) | Err(_) => return,
                    }
                }
            };
            for op in req.ops {
                if op_tx.send(Msg::Op(op)).await.is_err() {
                    return;
                }
            }
            if req.finish {
                let _ = op_tx.send(Msg::Finish).await;
                return;
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        let mut w = Worker {
            engine,
            pfs: begin.pfs,
            max_ops,
            max_bytes,
            rx: op_rx,
            tx: resp_tx,
            txn: None,
            counts: ImportCounts::default(),
            total: ImportCounts::default(),
            last_path: None,
            known_dirs: HashSet::new(),
        };
        if let Err(s) = w.run() {
            let _ = w.tx.blocking_send(Err(s));
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(resp_rx),
    )))
}

struct Worker {
    engine: Engine,
    pfs: PfsName,
    max_ops: u64,
    max_bytes: u64,
    rx: mpsc::Receiver<Msg>,
    tx: mpsc::Sender<Result<pb::ImportResponse, Status>>,
    txn: Option<Txn>,
    counts: ImportCounts,
    total: ImportCounts,
    last_path: Option<EntryPath>,
    /// Directories known to exist, so that parents are not re-checked for every entry.
    known_dirs: HashSet<EntryPath>,
}

impl Worker {
    fn run(&mut self) -> Result<(), Status> {
        loop {
            match self.rx.blocking_recv() {
                // Abandoned: the uncommitted transaction is dropped.
                None => return Ok(()),
                Some(Msg::Finish) => {
                    self.commit()?;
                    let done = ImportProgress {
                        tid: None,
                        txn: ImportCounts::default(),
                        total: self.total,
                        last_path: self.last_path.clone(),
                        done: true,
                    };
                    let _ = self.tx.blocking_send(Ok(done.into()));
                    return Ok(());
                }
                Some(Msg::Op(op)) => {
                    self.apply(op)?;
                    let buffered = self.txn.as_ref().map_or(0, |t| t.buffered_bytes() as u64);
                    if self.counts.ops() >= self.max_ops
                        || self.counts.bytes + buffered >= self.max_bytes
                    {
                        self.commit()?;
                    }
                }
            }
        }
    }

    fn txn(&mut self) -> Result<&mut Txn, Status> {
        if self.txn.is_none() {
            self.txn = Some(self.engine.begin(&self.pfs).map_err(super::status)?);
        }
        Ok(self.txn.as_mut().expect("just set"))
    }

    /// Adds the ancestors of `path` that this import has not seen yet.
    fn parents(&mut self, path: &EntryPath) -> Result<(), Status> {
        let mut missing = Vec::new();
        let mut p = path.parent();
        while let Some(dir) = p.filter(|d| !d.is_root() && !self.known_dirs.contains(d)) {
            p = dir.parent();
            missing.push(dir);
        }
        for dir in missing.into_iter().rev() {
            self.txn()?
                .ensure_dir(&dir, Attrs::now(0o755))
                .map_err(super::status)?;
            self.known_dirs.insert(dir);
        }
        Ok(())
    }

    fn apply(&mut self, op: ImportOp) -> Result<(), Status> {
        let e = super::status;
        match op {
            ImportOp::File {
                path,
                attrs: a,
                size,
                data,
            } => {
                self.parents(&path)?;
                // parents() opens no transaction when every parent is known (or the file is at
                // the top), as for the first file after a commit.
                self.txn()?;
                let mut reader = FileReader {
                    first: data,
                    remaining: size,
                    rx: &mut self.rx,
                };
                let txn = self.txn.as_mut().expect("opened just above");
                let n = txn.put_file(&path, attrs(a), &mut reader).map_err(e)?;
                if n != size {
                    return Err(Status::invalid_argument(format!(
                        "`{path}`: {n} bytes arrived, {size} announced"
                    )));
                }
                self.counts.files += 1;
                self.counts.bytes += size;
                self.last_path = Some(path);
            }
            ImportOp::Data(_) => {
                return Err(Status::invalid_argument("file data arrived outside a file"));
            }
            ImportOp::Mkdir { path, attrs: a } => {
                self.parents(&path)?;
                self.txn()?.mkdir(&path, attrs(a), true).map_err(e)?;
                self.known_dirs.insert(path.clone());
                self.counts.dirs += 1;
                self.last_path = Some(path);
            }
            ImportOp::Symlink {
                path,
                target,
                mtime_ns,
            } => {
                self.parents(&path)?;
                self.txn()?
                    .symlink(
                        &path,
                        &target,
                        Attrs {
                            mode: 0o777,
                            mtime_ns,
                        },
                    )
                    .map_err(e)?;
                self.counts.symlinks += 1;
                self.last_path = Some(path);
            }
            ImportOp::Delete { path, recursive } => {
                self.txn()?.delete_if_exists(&path, recursive).map_err(e)?;
                self.known_dirs.clear();
                self.counts.deletes += 1;
                self.last_path = Some(path);
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), Status> {
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        let c = txn.commit_counted().map_err(super::status)?;
        let counts = std::mem::take(&mut self.counts);
        for (t, c) in [
            (&mut self.total.files, counts.files),
            (&mut self.total.dirs, counts.dirs),
            (&mut self.total.symlinks, counts.symlinks),
            (&mut self.total.deletes, counts.deletes),
            (&mut self.total.bytes, counts.bytes),
        ] {
            *t += c;
        }
        let p = ImportProgress {
            tid: c.tid,
            txn: counts,
            total: self.total,
            last_path: self.last_path.clone(),
            done: false,
        };
        self.tx
            .blocking_send(Ok(p.into()))
            .map_err(|_| Status::cancelled("the client went away"))
    }
}

/// The content of one imported file: its first chunk, then `Data` operations until `remaining`
/// bytes have arrived.
struct FileReader<'a> {
    first: Bytes,
    remaining: u64,
    rx: &'a mut mpsc::Receiver<Msg>,
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.first.is_empty() {
            if self.remaining == 0 {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Op(ImportOp::Data(b))) => self.first = b,
                Some(_) => {
                    return Err(std::io::Error::other(
                        "another operation arrived before the file's data was complete",
                    ));
                }
                None => {
                    return Err(std::io::Error::other(
                        "the import was abandoned in the middle of a file",
                    ));
                }
            }
        }
        if self.first.len() as u64 > self.remaining {
            return Err(std::io::Error::other(
                "more file data arrived than the file's announced size",
            ));
        }
        let n = out.len().min(self.first.len());
        out[..n].copy_from_slice(&self.first[..n]);
        self.first.advance(n);
        self.remaining -= n as u64;
        Ok(n)
    }
}
