//! The gRPC services over the storage engine.
//!
//! - [`storage`]: the Storage service (put, get, list, import, export, ...).
//! - [`admin`]: the Admin service (node info, PFS lifecycle, snapshots, fsck).
//! - `pairing`: the Admin calls of replication (pair, unpair, status, digests).
//! - `failover`: the Admin calls of failover (upgrade, downgrade, history links, rollback).
//! - `import`: the Import worker, which turns a stream of operations into bounded transactions.
//!
//! Engine calls block on disk I/O, so handlers run them with [`blocking`]; streams are fed from
//! blocking tasks through bounded channels, so a slow client slows its own reader only. Engine
//! errors become gRPC statuses in one place, [`status`].

pub mod admin;
mod failover;
mod import;
mod pairing;
pub mod storage;

use std::io::{Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use repl_proto::{ReadAt, pb};
use repld_engine::{At, Entry, EntryKind, Error as EngineError, ErrorKind};
use tokio::sync::mpsc;
use tonic::Status;

pub use admin::AdminService;
pub use storage::StorageService;

/// The gRPC status for an engine error: the code follows [`EngineError::kind`], the message is
/// the engine's, which says what happened and what to do.
pub fn status(e: EngineError) -> Status {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::InvalidArgument => Status::invalid_argument(msg),
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::AlreadyExists => Status::already_exists(msg),
        ErrorKind::FailedPrecondition => Status::failed_precondition(msg),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(msg),
        // A code of its own, so that clients tell "pruned" apart from "not there".
        ErrorKind::Pruned => Status::out_of_range(msg),
        ErrorKind::DataLoss => Status::data_loss(msg),
        ErrorKind::Unavailable => Status::unavailable(msg),
        ErrorKind::Internal => {
            tracing::error!(error = %msg, "storage request failed");
            Status::internal(msg)
        }
    }
}

/// Runs blocking engine work off the async runtime.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> repld_engine::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(status),
        Err(e) => Err(Status::internal(format!("storage task failed: {e}"))),
    }
}

/// A response stream fed by a blocking task.
pub(crate) type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Runs `produce` on a blocking thread with a sender for the response stream; an engine error it
/// returns ends the stream with that error.
pub(crate) fn blocking_stream<T, F>(produce: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(&mpsc::Sender<Result<T, Status>>) -> repld_engine::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = produce(&tx) {
            let _ = tx.blocking_send(Err(status(e)));
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Sends one item from a blocking producer; fails when the client has gone away.
pub(crate) fn send_blocking<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    item: T,
) -> repld_engine::Result<()> {
    tx.blocking_send(Ok(item))
        .map_err(|_| EngineError::Invalid("the client went away".into()))
}

/// The engine's read point for a wire read point.
pub(crate) fn at(a: &ReadAt) -> At {
    match a {
        ReadAt::Head => At::Head,
        ReadAt::Tid(t) => At::Tid(*t),
        ReadAt::Snapshot(s) => At::Snapshot(String::from(s.clone())),
    }
}

/// The wire form of an engine entry.
pub(crate) fn entry(e: &Entry) -> pb::Entry {
    repl_proto::Entry {
        path: e.path.clone(),
        kind: e.kind(),
        mode: e.meta.mode,
        mtime_ns: e.meta.mtime_ns,
        size: e.meta.size,
        symlink_target: (e.kind() == EntryKind::Symlink).then(|| e.meta.target.clone()),
        create_tid: e.created,
        delete_tid: e.deleted,
        content_hash: (e.kind() == EntryKind::File).then(|| e.meta.content_hash()),
    }
    .into()
}

/// The engine's attributes for wire attributes.
pub(crate) fn attrs(a: repl_proto::Attrs) -> repld_engine::Attrs {
    repld_engine::Attrs {
        mode: a.mode,
        mtime_ns: a.mtime_ns,
    }
}

/// Reads content that an async request stream delivers: `Ok(bytes)` is data, `Err(())` means the
/// sender abandoned the upload (the read fails, so nothing is committed), and the end of the
/// channel is the end of the content.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, ()>>,
    cur: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<Result<Bytes, ()>>) -> ChannelReader {
        ChannelReader {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(())) => {
                    return Err(std::io::Error::other(
                        "the upload was abandoned before its end",
                    ));
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

/// Writes a byte stream (a tar export) into response messages of at most
/// [`repl_proto::CHUNK_SIZE`] bytes.
pub(crate) struct ChannelWriter<T, F: Fn(Bytes) -> T> {
    tx: mpsc::Sender<Result<T, Status>>,
    buf: BytesMut,
    wrap: F,
}

impl<T, F: Fn(Bytes) -> T> ChannelWriter<T, F> {
    pub(crate) fn new(tx: mpsc::Sender<Result<T, Status>>, wrap: F) -> Self {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(repl_proto::CHUNK_SIZE),
            wrap,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let chunk = self.buf.split().freeze();
        self.tx
            .blocking_send(Ok((self.wrap)(chunk)))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl<T, F: Fn(Bytes) -> T> Write for ChannelWriter<T, F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(repl_proto::CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == repl_proto::CHUNK_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}
