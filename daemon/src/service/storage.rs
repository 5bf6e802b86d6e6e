//! The Storage service: files, directories and symlinks of a PFS, read at any kept TID.

use bytes::Bytes;
use repl_proto::{
    DeleteRequest, ExportRequest, HistoryRequest, ListRequest, MkdirRequest, PutMessage,
    ReadRequest, RenameRequest, SymlinkRequest, pb,
};
use repld_engine::{At, Attrs, Engine, EntryKind, EntryPath, Tid, Txn};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{
    BoxStream, ChannelReader, ChannelWriter, at, attrs, blocking, blocking_stream, entry,
    send_blocking,
};

/// Entries per List page.
const LIST_PAGE: usize = 1000;

/// The Storage service over one engine.
#[derive(Clone)]
pub struct StorageService {
    engine: Engine,
    shutdown: CancellationToken,
}

impl StorageService {
    /// Serves `engine`; long streams (uploads, imports) end when `shutdown` is cancelled.
    pub fn new(engine: Engine, shutdown: CancellationToken) -> StorageService {
        StorageService { engine, shutdown }
    }
}

/// Adds the missing ancestors of `path` (mode 0755), as `mkdir -p` does.
pub(crate) fn ensure_parents(txn: &mut Txn, path: &EntryPath) -> repld_engine::Result<()> {
    let mut ancestors = Vec::new();
    let mut p = path.parent();
    while let Some(dir) = p.filter(|d| !d.is_root()) {
        p = dir.parent();
        ancestors.push(dir);
    }
    for dir in ancestors.into_iter().rev() {
        txn.ensure_dir(&dir, Attrs::now(0o755))?;
    }
    Ok(())
}

fn commit_response(tid: Tid) -> Response<pb::CommitResponse> {
    Response::new(pb::CommitResponse { tid: tid.get() })
}

fn shutting_down() -> Status {
    Status::unavailable(
        "the node is shutting down; nothing of this request was committed: retry when it is back",
    )
}

#[tonic::async_trait]
impl pb::storage_server::Storage for StorageService {
    async fn put(
        &self,
        req: Request<Streaming<pb::PutRequest>>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let mut stream = req.into_inner();
        let header = match stream
            .message()
            .await?
            .map(PutMessage::try_from)
            .transpose()?
        {
            Some(PutMessage::Header(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a Put stream must start with a header",
                ));
            }
        };
        let (tx, rx) = mpsc::channel::<Result<Bytes, ()>>(4);
        let (engine, h) = (self.engine.clone(), header.clone());
        let mut writer = tokio::task::spawn_blocking(move || {
            let mut txn = engine.begin(&h.pfs)?;
            if h.parents {
                ensure_parents(&mut txn, &h.path)?;
            }
            let size = txn.put_file(&h.path, attrs(h.attrs), &mut ChannelReader::new(rx))?;
            Ok::<_, repld_engine::Error>((txn, size))
        });
        let failed = |r: Result<repld_engine::Result<(Txn, u64)>, tokio::task::JoinError>| match r {
            Ok(Err(e)) => super::status(e),
            Ok(Ok(_)) => Status::internal("the upload ended early"),
            Err(e) => Status::internal(format!("storage task failed: {e}")),
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                r = &mut writer => return Err(failed(r)),
                () = self.shutdown.cancelled() => {
                    let _ = tx.send(Err(())).await;
                    return Err(shutting_down());
                }
            };
            match msg.map(|m| m.map(PutMessage::try_from).transpose()) {
                Ok(Ok(Some(PutMessage::Data(b)))) => {
                    if tx.send(Ok(b)).await.is_err() {
                        return Err(failed(writer.await));
                    }
                }
                Ok(Ok(Some(PutMessage::End))) => break,
                other => {
                    // Another header, a malformed message, a broken stream, or an end without
                    // the end marker (a cancelled client): abandon the upload.
                    let _ = tx.send(Err(())).await;
                    let _ = writer.await;
                    return Err(match other {
                        Ok(Ok(Some(PutMessage::Header(_)))) => {
                            Status::invalid_argument("a Put stream carries one header")
                        }
                        Ok(Err(e)) => e.into(),
                        Err(s) => s,
                        _ => Status::cancelled(
                            "the upload ended without its end marker: nothing was committed",
                        ),
                    });
                }
            }
        }
        drop(tx);
        let (txn, size) = writer
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(super::status)?;
        if let Some(expected) = header.size
            && expected != size
        {
            return Err(Status::invalid_argument(format!(
                "`{}`: {size} bytes arrived but the header announced {expected}: nothing was committed",
                header.path
            )));
        }
        let engine = self.engine.clone();
        let (tid, hash) = blocking(move || {
            let c = txn.commit_counted()?;
            let read_at = c.tid.map_or(At::Head, At::Tid);
            let e = engine.stat(&header.pfs, &header.path, &read_at)?;
            Ok((c.tid.unwrap_or(e.created), e.meta.content_hash()))
        })
        .await?;
        Ok(Response::new(pb::PutResponse {
            tid: tid.get(),
            size,
            content_hash: Bytes::copy_from_slice(&hash),
        }))
    }

    type GetStream = BoxStream<pb::GetResponse>;

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let r = ReadRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let e = blocking(move || engine.stat(&r.pfs, &r.path, &at(&r.at)).map(|e| (r, e))).await?;
        let engine = self.engine.clone();
        Ok(Response::new(blocking_stream(move |tx| {
            let (r, e) = e;
            send_blocking(
                tx,
                pb::GetResponse {
                    msg: Some(pb::get_response::Msg::Meta(entry(&e))),
                },
            )?;
            if e.kind() != EntryKind::File {
                return Ok(());
            }
            let mut reader = engine.open_file(&r.pfs, &r.path, &At::Tid(e.created))?;
            let mut w = ChannelWriter::new(tx.clone(), |b| pb::GetResponse {
                msg: Some(pb::get_response::Msg::Data(b)),
            });
            std::io::copy(&mut reader, &mut w)
                .and_then(|_| std::io::Write::flush(&mut w))
                .map_err(|err| {
                    repld_engine::Error::Invalid(format!("reading `{}`: {err}", r.path))
                })?;
            Ok(())
        })))
    }

    async fn stat(
        &self,
        req: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let r = ReadRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let (e, tid) = blocking(move || {
            let tid = engine.resolve_tid(&r.pfs, &at(&r.at))?;
            Ok((engine.stat(&r.pfs, &r.path, &At::Tid(tid))?, tid))
        })
        .await?;
        Ok(Response::new(pb::StatResponse {
            entry: Some(entry(&e)),
            tid: tid.get(),
        }))
    }

    type ListStream = BoxStream<pb::ListResponse>;

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = ListRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let tid = blocking({
            let (engine, r) = (engine.clone(), r.clone());
            move || {
                let tid = engine.resolve_tid(&r.pfs, &at(&r.at))?;
                let dir = engine.stat(&r.pfs, &r.path, &At::Tid(tid))?;
                if dir.kind() != EntryKind::Dir {
                    return Err(repld_engine::Error::NotADirectory(r.path.clone()));
                }
                Ok(tid)
            }
        })
        .await?;
        Ok(Response::new(blocking_stream(move |tx| {
            let mut page = Vec::new();
            let flush = |page: &mut Vec<pb::Entry>| {
                let entries = std::mem::take(page);
                send_blocking(
                    tx,
                    pb::ListResponse {
                        tid: tid.get(),
                        entries,
                    },
                )
            };
            if r.recursive {
                engine.walk_under(&r.pfs, &At::Tid(tid), &r.path, |e| {
                    page.push(entry(e));
                    if page.len() == LIST_PAGE {
                        flush(&mut page)
                    } else {
                        Ok(())
                    }
                })?;
            } else {
                for e in engine.list(&r.pfs, &r.path, &At::Tid(tid))? {
                    page.push(entry(&e));
                    if page.len() == LIST_PAGE {
                        flush(&mut page)?;
                    }
                }
            }
            flush(&mut page)
        })))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = DeleteRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let c = blocking(move || {
            let mut txn = engine.begin(&r.pfs)?;
            txn.delete(&r.path, r.recursive)?;
            txn.commit_counted()
        })
        .await?;
        Ok(Response::new(pb::DeleteResponse {
            tid: c.tid.map_or(0, Tid::get),
            entries: c.entries as u64,
        }))
    }

    async fn rename(
        &self,
        req: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let r = RenameRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let tid = blocking(move || {
            let mut txn = engine.begin(&r.pfs)?;
            if r.replace {
                txn.rename(&r.from, &r.to)?;
            } else {
                txn.rename_noreplace(&r.from, &r.to)?;
            }
            match txn.commit()? {
                Some(tid) => Ok(tid),
                None => engine.stat(&r.pfs, &r.to, &At::Head).map(|e| e.created),
            }
        })
        .await?;
        Ok(commit_response(tid))
    }

    async fn mkdir(
        &self,
        req: Request<pb::MkdirRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let r = MkdirRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let tid = blocking(move || {
            let mut txn = engine.begin(&r.pfs)?;
            if r.parents {
                ensure_parents(&mut txn, &r.path)?;
                txn.ensure_dir(&r.path, attrs(r.attrs))?;
            } else {
                txn.mkdir(&r.path, attrs(r.attrs), false)?;
            }
            match txn.commit()? {
                Some(tid) => Ok(tid),
                None => engine.stat(&r.pfs, &r.path, &At::Head).map(|e| e.created),
            }
        })
        .await?;
        Ok(commit_response(tid))
    }

    async fn symlink(
        &self,
        req: Request<pb::SymlinkRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let r = SymlinkRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let tid = blocking(move || {
            let mut txn = engine.begin(&r.pfs)?;
            if r.parents {
                ensure_parents(&mut txn, &r.path)?;
            }
            txn.symlink(
                &r.path,
                &r.target,
                Attrs {
                    mode: 0o777,
                    mtime_ns: r.mtime_ns,
                },
            )?;
            match txn.commit()? {
                Some(tid) => Ok(tid),
                None => engine.stat(&r.pfs, &r.path, &At::Head).map(|e| e.created),
            }
        })
        .await?;
        Ok(commit_response(tid))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let r = HistoryRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let (versions, pfs) =
            blocking(move || Ok((engine.history(&r.pfs, &r.path)?, engine.pfs(&r.pfs)?))).await?;
        Ok(Response::new(pb::HistoryResponse {
            versions: versions.iter().map(entry).collect(),
            pruned: repl_proto::ranges_to_pb(&pfs.pruned),
        }))
    }

    type ExportStream = BoxStream<pb::ExportResponse>;

    async fn export(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let r = ExportRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let tid = blocking({
            let (engine, r) = (engine.clone(), r.clone());
            move || engine.resolve_tid(&r.pfs, &at(&r.at))
        })
        .await?;
        Ok(Response::new(blocking_stream(move |tx| {
            use pb::export_response::Msg;
            send_blocking(
                tx,
                pb::ExportResponse {
                    msg: Some(Msg::Header(pb::ExportHeader { tid: tid.get() })),
                },
            )?;
            let mut w = ChannelWriter::new(tx.clone(), |b| pb::ExportResponse {
                msg: Some(Msg::Data(b)),
            });
            engine.export_tar_under(&r.pfs, &At::Tid(tid), &r.path, &mut w)?;
            std::io::Write::flush(&mut w)
                .map_err(|e| repld_engine::Error::Invalid(format!("export: {e}")))
        })))
    }

    type ImportStream = BoxStream<pb::ImportResponse>;

    async fn import(
        &self,
        req: Request<Streaming<pb::ImportRequest>>,
    ) -> Result<Response<Self::ImportStream>, Status> {
        super::import::start(self.engine.clone(), self.shutdown.clone(), req.into_inner()).await
    }
}
