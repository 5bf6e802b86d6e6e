//! Typed clients and connection set-up.
//!
//! [`Endpoint`] says where a node is and how to reach it: its local Unix socket (the default for
//! `replctl` on the same node), `https://host:port` with mutual TLS, or plaintext `http://` (which
//! the daemon accepts on loopback only). [`Endpoint::connect`] gives a [`Channel`] that any number
//! of clients can share.
//!
//! [`StorageClient`] and [`AdminClient`] take the domain request types of [`crate::convert`] and
//! return validated results, so callers never build raw requests or read raw answers. Both set
//! the message size limits to [`MAX_MESSAGE_SIZE`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use repl_types::{PfsName, Tid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::convert::*;
use crate::error::{ClientError, ProtocolError};
use crate::{CHUNK_SIZE, MAX_MESSAGE_SIZE, pb};

/// How long connecting (TCP or socket, plus TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files a client needs for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate that signed the server's certificate (`ca.pem`).
    pub ca: PathBuf,
    /// This client's certificate, signed by the same CA.
    pub cert: PathBuf,
    /// This client's private key.
    pub key: PathBuf,
    /// The name to check the server's certificate against: the server's node name (its
    /// certificate's CN and SAN). `None` = the host part of the URL.
    pub server_name: Option<String>,
}

/// Where a node is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The node's local Unix socket (mode 0600 on the daemon's side).
    Unix(PathBuf),
    /// `https://host:port` with mutual TLS.
    Https {
        /// The URL.
        uri: http::Uri,
        /// CA, client certificate and key.
        tls: TlsFiles,
    },
    /// Plaintext `http://host:port`; the daemon serves it on loopback addresses only.
    Http(http::Uri),
}

impl Endpoint {
    /// Parses `unix:PATH`, a bare path (containing `/`), `https://host:port` (which needs `tls`)
    /// or `http://host:port`.
    pub fn parse(s: &str, tls: Option<TlsFiles>) -> Result<Endpoint, ClientError> {
        let bad = |reason: String| ClientError::Connect {
            endpoint: s.to_owned(),
            reason,
        };
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if !s.contains("://") && s.contains('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let mut uri: http::Uri = s.parse().map_err(|e| bad(format!("not a URL: {e}")))?;
        let Some(authority) = uri.authority() else {
            return Err(bad("the URL has no host".to_owned()));
        };
        if authority.port().is_none() {
            // No port: the daemon's default, not the scheme's.
            let with_port = format!("{}:{}", authority.host(), crate::DEFAULT_PORT);
            let mut parts = uri.into_parts();
            parts.authority = Some(
                with_port
                    .parse()
                    .map_err(|e| bad(format!("not a host: {e}")))?,
            );
            uri = http::Uri::from_parts(parts).map_err(|e| bad(format!("not a URL: {e}")))?;
        }
        match uri.scheme_str() {
            Some("https") => match tls {
                Some(tls) => Ok(Endpoint::Https { uri, tls }),
                None => Err(bad(
                    "an https:// endpoint needs the CA certificate, a client certificate and its key"
                        .to_owned(),
                )),
            },
            Some("http") => Ok(Endpoint::Http(uri)),
            _ => Err(bad(
                "use unix:/path/to/socket, https://host:port (mutual TLS) or http://127.0.0.1:port"
                    .to_owned(),
            )),
        }
    }

    /// Connects, and fails at once if the node cannot be reached.
    pub async fn connect(&self) -> Result<Channel, ClientError> {
        let endpoint = self.tonic_endpoint().await?;
        endpoint.connect().await.map_err(|e| self.connect_error(&e))
    }

    /// A channel that connects on first use (and reconnects after a failure), for long-lived
    /// callers such as a replication sender.
    pub async fn connect_lazy(&self) -> Result<Channel, ClientError> {
        Ok(self.tonic_endpoint().await?.connect_lazy())
    }

    async fn tonic_endpoint(&self) -> Result<tonic::transport::Endpoint, ClientError> {
        let bad = |reason: String| ClientError::Connect {
            endpoint: self.to_string(),
            reason,
        };
        let endpoint = match self {
            Endpoint::Unix(path) => {
                let path = path
                    .to_str()
                    .ok_or_else(|| bad("the socket path is not valid UTF-8".to_owned()))?;
                tonic::transport::Endpoint::from_shared(format!("unix:{path}"))
                    .map_err(|e| bad(e.to_string()))?
            }
            Endpoint::Http(uri) => tonic::transport::Endpoint::from(uri.clone()),
            Endpoint::Https { uri, tls } => {
                let ca = read_pem(&tls.ca, "CA certificate").await.map_err(&bad)?;
                let cert = read_pem(&tls.cert, "client certificate")
                    .await
                    .map_err(&bad)?;
                let key = read_pem(&tls.key, "client key").await.map_err(&bad)?;
                let server_name = match &tls.server_name {
                    Some(name) => name.clone(),
                    None => uri
                        .host()
                        .unwrap_or_default()
                        .trim_matches(['[', ']'])
                        .to_owned(),
                };
                let config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .identity(Identity::from_pem(cert, key))
                    .domain_name(server_name)
                    .assume_http2(true);
                tonic::transport::Endpoint::from(uri.clone())
                    .tls_config(config)
                    .map_err(|e| bad(format!("bad TLS files: {}", error_chain(&e))))?
            }
        };
        Ok(endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true))
    }

    fn connect_error(&self, e: &tonic::transport::Error) -> ClientError {
        let chain = error_chain(e);
        let io_kind = io_error_kind(e);
        let hint = match (self, io_kind) {
            (Endpoint::Unix(_), Some(std::io::ErrorKind::NotFound)) => {
                " (the socket does not exist: is repld running, and is this its admin socket path?)"
            }
            (Endpoint::Unix(_), Some(std::io::ErrorKind::PermissionDenied)) => {
                " (the socket is mode 0600: run replctl as the user repld runs as, or as root)"
            }
            (_, Some(std::io::ErrorKind::ConnectionRefused)) => {
                " (nothing listens there: is repld running, and is this its listen address?)"
            }
            (Endpoint::Https { .. }, _)
                if chain.contains("certificate") || chain.contains("Certificate") =>
            {
                " (check that both sides' certificates come from the same CA and that the server \
                 name matches the server's node name)"
            }
            _ => "",
        };
        ClientError::Connect {
            endpoint: self.to_string(),
            reason: format!("{chain}{hint}"),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Https { uri, .. } | Endpoint::Http(uri) => write!(f, "{uri}"),
        }
    }
}

async fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

fn io_error_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

/// A generated Replication client on `channel`, with the message size limits set. The agent
/// drives the stream itself.
pub fn replication_client(channel: Channel) -> pb::replication_client::ReplicationClient<Channel> {
    pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

// =============================================================================================
// Storage

/// A typed client of the Storage service.
#[derive(Clone, Debug)]
pub struct StorageClient {
    inner: pb::storage_client::StorageClient<Channel>,
}

impl StorageClient {
    /// A client on an existing channel.
    pub fn new(channel: Channel) -> StorageClient {
        StorageClient {
            inner: pb::storage_client::StorageClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        }
    }

    /// Connects to `endpoint`.
    pub async fn connect(endpoint: &Endpoint) -> Result<StorageClient, ClientError> {
        Ok(StorageClient::new(endpoint.connect().await?))
    }

    /// The generated client underneath, for tests that need to send what the typed API does not
    /// (malformed or oversized messages).
    pub fn into_inner(self) -> pb::storage_client::StorageClient<Channel> {
        self.inner
    }

    /// Writes a file from `reader`, in chunks of [`CHUNK_SIZE`]. If `header.size` is set and the
    /// input has another length, or reading fails, the upload is aborted (the stream is reset)
    /// and nothing is committed.
    pub async fn put<R>(
        &mut self,
        header: PutHeader,
        mut reader: R,
    ) -> Result<PutResult, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let expected = header.size;
        let (tx, stream) = until_end::<pb::PutRequest>(4);
        let mut request = tonic::Request::new(stream);
        let cancel = request.cancellation_handle();
        let (err_tx, err_rx) = oneshot::channel::<std::io::Error>();
        let pump = tokio::spawn(async move {
            if tx
                .send(Some(PutMessage::Header(header).into()))
                .await
                .is_err()
            {
                return;
            }
            let mut total = 0u64;
            let failure = loop {
                let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
                match read_chunk(&mut reader, &mut buf).await {
                    Ok(0) => match expected {
                        Some(size) if size != total => {
                            break std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("the input has {total} bytes, but {size} were announced"),
                            );
                        }
                        _ => {
                            // The explicit end: only now may the server commit.
                            if tx.send(Some(PutMessage::End.into())).await.is_ok() {
                                let _ = tx.send(None).await;
                            }
                            return;
                        }
                    },
                    Ok(n) => {
                        total += n as u64;
                        if tx
                            .send(Some(PutMessage::Data(buf.freeze()).into()))
                            .await
                            .is_err()
                        {
                            return; // The call ended (the server answered early); it reports why.
                        }
                    }
                    Err(e) => break e,
                }
            };
            // No `End` is sent, and the stream is never closed normally; the caller resets it.
            let _ = err_tx.send(failure);
        });
        let call = self.inner.put(request);
        let result = tokio::select! {
            biased;
            Ok(e) = err_rx => {
                cancel.cancel();
                Err(ClientError::Input(e))
            }
            r = call => match r {
                Ok(resp) => Ok(PutResult::try_from(resp.into_inner())?),
                Err(status) => Err(status.into()),
            },
        };
        pump.abort();
        result
    }

    /// Writes a file whose whole content is in memory.
    pub async fn put_bytes(
        &mut self,
        mut header: PutHeader,
        data: Bytes,
    ) -> Result<PutResult, ClientError> {
        header.size = Some(data.len() as u64);
        let mut msgs: Vec<pb::PutRequest> = vec![PutMessage::Header(header).into()];
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(CHUNK_SIZE));
            msgs.push(PutMessage::Data(chunk).into());
        }
        msgs.push(PutMessage::End.into());
        let resp = self.inner.put(tokio_stream::iter(msgs)).await?;
        Ok(PutResult::try_from(resp.into_inner())?)
    }

    /// Reads an entry: its metadata, and a stream of its content (empty for directories and
    /// symlinks).
    pub async fn get(&mut self, req: ReadRequest) -> Result<(Entry, ByteStream), ClientError> {
        let mut stream = self
            .inner
            .get(pb::GetRequest::from(req))
            .await?
            .into_inner();
        let first = stream.message().await?.ok_or(ProtocolError::Sequence(
            "the Get stream ended before the metadata",
        ))?;
        let entry = match GetMessage::try_from(first)? {
            GetMessage::Meta(entry) => entry,
            GetMessage::Data(_) => {
                return Err(ProtocolError::Sequence(
                    "the Get stream sent data before the metadata",
                )
                .into());
            }
        };
        let expected = if entry.kind == EntryKind::File {
            entry.size
        } else {
            0
        };
        Ok((entry, ByteStream::new(Source::Get(stream), Some(expected))))
    }

    /// Reads the metadata of an entry.
    pub async fn stat(&mut self, req: ReadRequest) -> Result<StatResult, ClientError> {
        let resp = self.inner.stat(pb::StatRequest::from(req)).await?;
        Ok(StatResult::try_from(resp.into_inner())?)
    }

    /// Lists a directory (or subtree), collecting every page.
    pub async fn list(&mut self, req: ListRequest) -> Result<Listing, ClientError> {
        let mut stream = self
            .inner
            .list(pb::ListRequest::from(req))
            .await?
            .into_inner();
        let mut listing = Listing::default();
        let mut first = true;
        while let Some(page) = stream.message().await? {
            let page = Listing::try_from(page)?;
            if first {
                listing.tid = page.tid;
                first = false;
            }
            listing.entries.extend(page.entries);
        }
        Ok(listing)
    }

    /// Deletes an entry.
    pub async fn delete(&mut self, req: DeleteRequest) -> Result<DeleteResult, ClientError> {
        let resp = self.inner.delete(pb::DeleteRequest::from(req)).await?;
        Ok(DeleteResult::from(resp.into_inner()))
    }

    /// Moves an entry; returns the commit's TID.
    pub async fn rename(&mut self, req: RenameRequest) -> Result<Tid, ClientError> {
        let resp = self.inner.rename(pb::RenameRequest::from(req)).await?;
        Ok(Tid::from(resp.into_inner()))
    }

    /// Creates a directory; returns the commit's TID.
    pub async fn mkdir(&mut self, req: MkdirRequest) -> Result<Tid, ClientError> {
        let resp = self.inner.mkdir(pb::MkdirRequest::from(req)).await?;
        Ok(Tid::from(resp.into_inner()))
    }

    /// Creates a symbolic link; returns the commit's TID.
    pub async fn symlink(&mut self, req: SymlinkRequest) -> Result<Tid, ClientError> {
        let resp = self.inner.symlink(pb::SymlinkRequest::from(req)).await?;
        Ok(Tid::from(resp.into_inner()))
    }

    /// Every retained version of a path, oldest first.
    pub async fn history(&mut self, req: HistoryRequest) -> Result<History, ClientError> {
        let resp = self.inner.history(pb::HistoryRequest::from(req)).await?;
        Ok(History::try_from(resp.into_inner())?)
    }

    /// Exports a subtree as a tar stream: the TID it shows, and the archive's bytes.
    pub async fn export(&mut self, req: ExportRequest) -> Result<(Tid, ByteStream), ClientError> {
        let mut stream = self
            .inner
            .export(pb::ExportRequest::from(req))
            .await?
            .into_inner();
        let first = stream.message().await?.ok_or(ProtocolError::Sequence(
            "the Export stream ended before its header",
        ))?;
        match ExportMessage::try_from(first)? {
            ExportMessage::Header { tid } => {
                Ok((tid, ByteStream::new(Source::Export(stream), None)))
            }
            ExportMessage::Data(_) => {
                Err(ProtocolError::Sequence("the Export stream sent data before its header").into())
            }
        }
    }

    /// Starts an import. Feed it with [`ImportSession::send`], end it with
    /// [`ImportSession::finish`].
    pub async fn import(&mut self, begin: ImportBegin) -> Result<ImportSession, ClientError> {
        Ok(ImportSession::start(self.inner.clone(), begin))
    }
}

/// A request stream that ends normally only when `None` is sent. If every sender is dropped
/// without that (input failed, caller gave up), the stream stays open, so the server can never
/// mistake an aborted upload for a complete one; the call is then cancelled, which resets it.
fn until_end<T>(capacity: usize) -> (mpsc::Sender<Option<T>>, UntilEnd<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, UntilEnd { rx, ended: false })
}

struct UntilEnd<T> {
    rx: mpsc::Receiver<Option<T>>,
    ended: bool,
}

impl<T> Stream for UntilEnd<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(Some(msg)) => Poll::Ready(Some(msg)),
            Some(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            // Closed without an explicit end: never end (the call gets cancelled instead).
            None => Poll::Pending,
        }
    }
}

async fn read_chunk<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    while buf.len() < CHUNK_SIZE {
        if reader.read_buf(buf).await? == 0 {
            break;
        }
    }
    Ok(buf.len())
}

enum Source {
    Get(tonic::Streaming<pb::GetResponse>),
    Export(tonic::Streaming<pb::ExportResponse>),
}

/// The content of a Get or the archive of an Export, as a stream of chunks. It checks what the
/// server sends: chunk sizes, message order, and for a file that exactly its size arrives.
pub struct ByteStream {
    source: Source,
    expected: Option<u64>,
    received: u64,
    done: bool,
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteStream")
            .field("expected", &self.expected)
            .field("received", &self.received)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ByteStream {
    fn new(source: Source, expected: Option<u64>) -> ByteStream {
        ByteStream {
            source,
            expected,
            received: 0,
            done: false,
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next chunk, or `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }

    /// Writes the rest of the stream to `out` and flushes it; returns the bytes written.
    pub async fn copy_to<W: AsyncWrite + Unpin>(mut self, out: &mut W) -> Result<u64, ClientError> {
        let mut n = 0;
        while let Some(chunk) = self.chunk().await? {
            out.write_all(&chunk).await.map_err(ClientError::Output)?;
            n += chunk.len() as u64;
        }
        out.flush().await.map_err(ClientError::Output)?;
        Ok(n)
    }

    /// Collects the rest of the stream in memory.
    pub async fn read_to_end(mut self) -> Result<Vec<u8>, ClientError> {
        let mut v = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            v.extend_from_slice(&chunk);
        }
        Ok(v)
    }

    fn next_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ClientError>>> {
        let item = match &mut self.source {
            Source::Get(s) => {
                ready!(Pin::new(s).poll_next(cx)).map(|r| match GetMessage::try_from(r?)? {
                    GetMessage::Data(d) => Ok(d),
                    GetMessage::Meta(_) => Err(ProtocolError::Sequence(
                        "the Get stream sent its metadata twice",
                    )
                    .into()),
                })
            }
            Source::Export(s) => {
                ready!(Pin::new(s).poll_next(cx)).map(|r| match ExportMessage::try_from(r?)? {
                    ExportMessage::Data(d) => Ok(d),
                    ExportMessage::Header { .. } => Err(ProtocolError::Sequence(
                        "the Export stream sent its header twice",
                    )
                    .into()),
                })
            }
        };
        Poll::Ready(item)
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = ready!(self.next_data(cx));
        let this = &mut *self;
        Poll::Ready(match item {
            None => {
                this.done = true;
                match this.expected {
                    Some(size) if size != this.received => {
                        Some(Err(short_stream(size, this.received)))
                    }
                    _ => None,
                }
            }
            Some(Ok(data)) => {
                this.received += data.len() as u64;
                match this.expected {
                    Some(size) if this.received > size => {
                        this.done = true;
                        Some(Err(short_stream(size, this.received)))
                    }
                    _ => Some(Ok(data)),
                }
            }
            Some(Err(e)) => {
                this.done = true;
                Some(Err(e))
            }
        })
    }
}

fn short_stream(expected: u64, received: u64) -> ClientError {
    ProtocolError::Invalid {
        field: "GetResponse.data",
        reason: format!("the entry has {expected} bytes but the stream carried {received}"),
    }
    .into()
}

// =============================================================================================
// Import

/// Operations per Import message (several small files travel in one message).
const IMPORT_BATCH_OPS: usize = 1024;
/// Bytes per Import message, well under [`MAX_MESSAGE_SIZE`].
const IMPORT_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The commits an import has reported, accumulated (unlike [`ImportSession::watch_progress`],
/// which shows only the newest report, this loses none of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportCommits {
    /// Transactions committed.
    pub transactions: u64,
    /// The TID of the first commit.
    pub first_tid: Option<Tid>,
    /// The TID of the newest commit.
    pub last_tid: Option<Tid>,
}

/// A running import. Operations are batched into messages; the server commits them in bounded
/// transactions and reports each commit, which [`ImportSession::progress`] shows.
///
/// If the stream breaks (the server shuts down, the network fails), every transaction reported
/// as committed stays committed, and [`ImportSession::progress`] still says how far it got.
pub struct ImportSession {
    tx: Option<mpsc::Sender<Option<pb::ImportRequest>>>,
    cancel: Option<tonic::CancellationHandle>,
    begin: Option<pb::ImportBegin>,
    batch: Vec<pb::ImportOp>,
    batch_bytes: usize,
    progress: watch::Receiver<ImportProgress>,
    commits: watch::Receiver<ImportCommits>,
    task: Option<JoinHandle<Result<ImportProgress, ClientError>>>,
}

impl fmt::Debug for ImportSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportSession")
            .field("progress", &*self.progress.borrow())
            .field("batched_ops", &self.batch.len())
            .finish_non_exhaustive()
    }
}

impl ImportSession {
    fn start(
        mut client: pb::storage_client::StorageClient<Channel>,
        begin: ImportBegin,
    ) -> ImportSession {
        let (tx, stream) = until_end::<pb::ImportRequest>(4);
        let mut request = tonic::Request::new(stream);
        let cancel = request.cancellation_handle();
        let (progress_tx, progress) = watch::channel(ImportProgress::default());
        let (commits_tx, commits) = watch::channel(ImportCommits::default());
        let task = tokio::spawn(async move {
            let mut responses = client.import(request).await?.into_inner();
            while let Some(msg) = responses.message().await? {
                let p = ImportProgress::try_from(msg)?;
                if let Some(tid) = p.tid {
                    commits_tx.send_modify(|c| {
                        c.transactions += 1;
                        c.first_tid.get_or_insert(tid);
                        c.last_tid = Some(tid);
                    });
                }
                progress_tx.send_replace(p.clone());
                if p.done {
                    return Ok(p);
                }
            }
            Err(ProtocolError::Sequence(
                "the server ended the import without confirming that everything was committed",
            )
            .into())
        });
        ImportSession {
            tx: Some(tx),
            cancel: Some(cancel),
            begin: Some(begin.into()),
            batch: Vec::new(),
            batch_bytes: 0,
            progress,
            commits,
            task: Some(task),
        }
    }

    /// Queues an operation; sends a message when a batch is full.
    pub async fn send(&mut self, op: ImportOp) -> Result<(), ClientError> {
        let size = op.wire_size();
        if !self.batch.is_empty()
            && (self.batch.len() >= IMPORT_BATCH_OPS
                || self.batch_bytes + size > IMPORT_BATCH_BYTES)
        {
            self.flush().await?;
        }
        self.batch.push(op.into());
        self.batch_bytes += size;
        Ok(())
    }

    /// Sends the queued operations now.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.batch.is_empty() && self.begin.is_none() {
            return Ok(());
        }
        self.send_batch(false).await
    }

    async fn send_batch(&mut self, finish: bool) -> Result<(), ClientError> {
        let msg = pb::ImportRequest {
            begin: self.begin.take(),
            ops: std::mem::take(&mut self.batch),
            finish,
        };
        self.batch_bytes = 0;
        self.send_raw(Some(msg)).await
    }

    async fn send_raw(&mut self, msg: Option<pb::ImportRequest>) -> Result<(), ClientError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(msg).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.failure().await)
        }
    }

    /// What the server has committed so far.
    pub fn progress(&self) -> ImportProgress {
        self.progress.borrow().clone()
    }

    /// A receiver that sees each commit report, for a progress display running beside the
    /// sender.
    pub fn watch_progress(&self) -> watch::Receiver<ImportProgress> {
        self.progress.clone()
    }

    /// Every commit reported so far, accumulated; it keeps counting until the session ends, so
    /// it still tells after a failure how far the import got.
    pub fn watch_commits(&self) -> watch::Receiver<ImportCommits> {
        self.commits.clone()
    }

    /// Sends what is queued, ends the stream and waits until the server confirms that
    /// everything is committed.
    pub async fn finish(mut self) -> Result<ImportProgress, ClientError> {
        self.send_batch(true).await?;
        // A server that has the `finish` batch may answer and end the call before the end of
        // the request stream is queued: then there is nothing left to end, and the task's
        // result says whether everything was committed.
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(None).await;
        }
        match self.task.take() {
            Some(task) => join(task).await,
            None => Err(gone()),
        }
    }

    /// Abandons the import: the stream is reset, so the server commits nothing more (what it
    /// has reported as committed stays committed). Dropping the session does the same.
    pub fn abort(mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel.cancel();
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.tx = None;
    }

    /// The reason the import call ended early.
    async fn failure(&mut self) -> ClientError {
        self.tx = None;
        match self.task.take() {
            Some(task) => match join(task).await {
                Err(e) => e,
                Ok(_) => {
                    ProtocolError::Sequence("the server ended the import before the client did")
                        .into()
                }
            },
            None => gone(),
        }
    }
}

impl Drop for ImportSession {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.reset();
        }
    }
}

async fn join(
    task: JoinHandle<Result<ImportProgress, ClientError>>,
) -> Result<ImportProgress, ClientError> {
    match task.await {
        Ok(r) => r,
        Err(e) => Err(ClientError::Status(tonic::Status::cancelled(format!(
            "the import task ended: {e}"
        )))),
    }
}

fn gone() -> ClientError {
    ClientError::Status(tonic::Status::cancelled(
        "the import stream has already failed",
    ))
}

// =============================================================================================
// Admin

/// A typed client of the Admin service.
#[derive(Clone, Debug)]
pub struct AdminClient {
    inner: pb::admin_client::AdminClient<Channel>,
}

impl AdminClient {
    /// A client on an existing channel.
    pub fn new(channel: Channel) -> AdminClient {
        AdminClient {
            inner: pb::admin_client::AdminClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        }
    }

    /// Connects to `endpoint`.
    pub async fn connect(endpoint: &Endpoint) -> Result<AdminClient, ClientError> {
        Ok(AdminClient::new(endpoint.connect().await?))
    }

    /// The generated client underneath.
    pub fn into_inner(self) -> pb::admin_client::AdminClient<Channel> {
        self.inner
    }

    /// The node's name, version and devices.
    pub async fn node_info(&mut self) -> Result<NodeInfo, ClientError> {
        let resp = self.inner.node_info(pb::NodeInfoRequest {}).await?;
        Ok(NodeInfo::try_from(resp.into_inner())?)
    }

    /// Creates a PFS.
    pub async fn pfs_create(&mut self, req: PfsCreateRequest) -> Result<PfsInfo, ClientError> {
        let resp = self
            .inner
            .pfs_create(pb::PfsCreateRequest::from(req))
            .await?
            .into_inner();
        Ok(PfsInfo::try_from(
            resp.pfs
                .ok_or(ProtocolError::missing("PfsCreateResponse.pfs"))?,
        )?)
    }

    /// The node's PFSes, sorted by name.
    pub async fn pfs_list(&mut self) -> Result<Vec<PfsInfo>, ClientError> {
        let resp = self
            .inner
            .pfs_list(pb::PfsListRequest {})
            .await?
            .into_inner();
        Ok(resp
            .pfses
            .into_iter()
            .map(PfsInfo::try_from)
            .collect::<Result<_, _>>()?)
    }

    /// Details of one PFS.
    pub async fn pfs_status(&mut self, name: &PfsName) -> Result<PfsStatus, ClientError> {
        let req = pb::PfsStatusRequest {
            name: name.to_string(),
        };
        let resp = self.inner.pfs_status(req).await?;
        Ok(PfsStatus::try_from(resp.into_inner())?)
    }

    /// Sets a PFS's retention policy.
    pub async fn pfs_set_retention(
        &mut self,
        name: &PfsName,
        retention: &crate::Retention,
    ) -> Result<PfsInfo, ClientError> {
        let req = pb::PfsSetRequest {
            name: name.to_string(),
            retention: Some(retention.to_string()),
        };
        let resp = self.inner.pfs_set(req).await?.into_inner();
        Ok(PfsInfo::try_from(
            resp.pfs
                .ok_or(ProtocolError::missing("PfsSetResponse.pfs"))?,
        )?)
    }

    /// Prunes a PFS by its retention policy (or, with `dry_run`, says what would go).
    pub async fn prune(
        &mut self,
        name: &PfsName,
        dry_run: bool,
        force: bool,
    ) -> Result<crate::PruneResult, ClientError> {
        let req = pb::PruneRequest {
            name: name.to_string(),
            dry_run,
            force,
        };
        Ok(self.inner.prune(req).await?.into_inner().into())
    }

    /// Destroys a PFS.
    pub async fn pfs_destroy(&mut self, req: PfsDestroyRequest) -> Result<(), ClientError> {
        self.inner
            .pfs_destroy(pb::PfsDestroyRequest::from(req))
            .await?;
        Ok(())
    }

    /// Creates a snapshot.
    pub async fn snapshot_create(
        &mut self,
        req: SnapshotCreateRequest,
    ) -> Result<Snapshot, ClientError> {
        let resp = self
            .inner
            .snapshot_create(pb::SnapshotCreateRequest::from(req))
            .await?
            .into_inner();
        Ok(Snapshot::try_from(resp.snapshot.ok_or(
            ProtocolError::missing("SnapshotCreateResponse.snapshot"),
        )?)?)
    }

    /// The snapshots of a PFS, oldest TID first.
    pub async fn snapshot_list(&mut self, pfs: &PfsName) -> Result<Vec<Snapshot>, ClientError> {
        let req = pb::SnapshotListRequest {
            pfs: pfs.to_string(),
        };
        let resp = self.inner.snapshot_list(req).await?.into_inner();
        Ok(resp
            .snapshots
            .into_iter()
            .map(Snapshot::try_from)
            .collect::<Result<_, _>>()?)
    }

    /// Deletes a snapshot.
    pub async fn snapshot_delete(&mut self, req: SnapshotDeleteRequest) -> Result<(), ClientError> {
        self.inner
            .snapshot_delete(pb::SnapshotDeleteRequest::from(req))
            .await?;
        Ok(())
    }

    /// Checks the device log and the index, online; `deep` also re-hashes every data chunk.
    pub async fn fsck(&mut self, deep: bool) -> Result<FsckReport, ClientError> {
        let resp = self.inner.fsck(pb::FsckRequest { deep }).await?;
        Ok(FsckReport::from(resp.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    //! The typed clients against an in-process fake Storage server on a Unix socket.

    use std::sync::Arc;

    use repl_types::EntryPath;
    use tokio::net::UnixListener;
    use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::pb::storage_server::{Storage, StorageServer};

    #[derive(Debug, PartialEq, Eq)]
    enum Event {
        Committed {
            path: String,
            size: usize,
            max_chunk: usize,
        },
        Aborted,
    }

    struct Fake {
        events: mpsc::UnboundedSender<Event>,
        content: Arc<Vec<u8>>,
    }

    type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

    fn entry(path: &str, size: u64) -> pb::Entry {
        pb::Entry {
            path: path.into(),
            kind: pb::EntryKind::File.into(),
            mode: 0o644,
            size,
            create_tid: 1,
            content_hash: Bytes::from_static(&[0; 32]),
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl Storage for Fake {
        async fn put(
            &self,
            request: Request<Streaming<pb::PutRequest>>,
        ) -> Result<Response<pb::PutResponse>, Status> {
            let mut stream = request.into_inner();
            let mut header = None;
            let (mut size, mut max_chunk, mut ended) = (0, 0, false);
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => match PutMessage::try_from(msg)? {
                        PutMessage::End => ended = true,
                        PutMessage::Header(h) => header = Some(h),
                        PutMessage::Data(d) => {
                            size += d.len();
                            max_chunk = max_chunk.max(d.len());
                        }
                    },
                    // A client's cancellation also looks like this, hence `End`.
                    Ok(None) if ended => break,
                    Ok(None) => {
                        let _ = self.events.send(Event::Aborted);
                        return Err(Status::cancelled("the upload stopped before its end"));
                    }
                    Err(e) => {
                        let _ = self.events.send(Event::Aborted);
                        return Err(e);
                    }
                }
            }
            let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
            let path = header.path.to_string();
            let _ = self.events.send(Event::Committed {
                path,
                size,
                max_chunk,
            });
            Ok(Response::new(pb::PutResponse {
                tid: 7,
                size: size as u64,
                content_hash: Bytes::from_static(&[1; 32]),
            }))
        }

        type GetStream = Stream<pb::GetResponse>;
        async fn get(
            &self,
            request: Request<pb::GetRequest>,
        ) -> Result<Response<Self::GetStream>, Status> {
            let req = ReadRequest::try_from(request.into_inner())?;
            let content = self.content.clone();
            // `short` claims more bytes than it sends.
            let claimed = if req.path.as_str() == "short" {
                content.len() + 1
            } else {
                content.len()
            };
            let mut msgs = vec![Ok(GetMessage::Meta(Entry::try_from(entry(
                req.path.as_str(),
                claimed as u64,
            ))?)
            .into())];
            for c in content.chunks(CHUNK_SIZE) {
                msgs.push(Ok(GetMessage::Data(Bytes::copy_from_slice(c)).into()));
            }
            Ok(Response::new(Box::pin(tokio_stream::iter(msgs))))
        }

        async fn stat(
            &self,
            _: Request<pb::StatRequest>,
        ) -> Result<Response<pb::StatResponse>, Status> {
            Err(Status::unimplemented("stat"))
        }

        type ListStream = Stream<pb::ListResponse>;
        async fn list(
            &self,
            _: Request<pb::ListRequest>,
        ) -> Result<Response<Self::ListStream>, Status> {
            let pages = (0..3).map(|i| {
                Ok(pb::ListResponse {
                    tid: 9,
                    entries: vec![entry(&format!("f{i}"), 0), entry(&format!("g{i}"), 0)],
                })
            });
            Ok(Response::new(Box::pin(tokio_stream::iter(
                pages.collect::<Vec<_>>(),
            ))))
        }

        async fn delete(
            &self,
            _: Request<pb::DeleteRequest>,
        ) -> Result<Response<pb::DeleteResponse>, Status> {
            Err(Status::unimplemented("delete"))
        }

        async fn rename(
            &self,
            _: Request<pb::RenameRequest>,
        ) -> Result<Response<pb::CommitResponse>, Status> {
            Err(Status::unimplemented("rename"))
        }

        async fn mkdir(
            &self,
            request: Request<pb::MkdirRequest>,
        ) -> Result<Response<pb::CommitResponse>, Status> {
            let req = MkdirRequest::try_from(request.into_inner())?;
            Err(Status::failed_precondition(format!(
                "PFS `{}` is a slave",
                req.pfs
            )))
        }

        async fn symlink(
            &self,
            _: Request<pb::SymlinkRequest>,
        ) -> Result<Response<pb::CommitResponse>, Status> {
            Err(Status::unimplemented("symlink"))
        }

        async fn history(
            &self,
            _: Request<pb::HistoryRequest>,
        ) -> Result<Response<pb::HistoryResponse>, Status> {
            Err(Status::unimplemented("history"))
        }

        type ExportStream = Stream<pb::ExportResponse>;
        async fn export(
            &self,
            _: Request<pb::ExportRequest>,
        ) -> Result<Response<Self::ExportStream>, Status> {
            let msgs = vec![
                Ok(ExportMessage::Header { tid: Tid(5) }.into()),
                Ok(ExportMessage::Data(Bytes::from_static(b"tar")).into()),
                Ok(ExportMessage::Data(Bytes::from_static(b"ball")).into()),
            ];
            Ok(Response::new(Box::pin(tokio_stream::iter(msgs))))
        }

        type ImportStream = Stream<pb::ImportResponse>;
        async fn import(
            &self,
            request: Request<Streaming<pb::ImportRequest>>,
        ) -> Result<Response<Self::ImportStream>, Status> {
            // Commits every 3 operations, as a server with max_txn_ops = 3 would.
            let mut stream = request.into_inner();
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                let mut total = ImportCounts::default();
                let mut txn = ImportCounts::default();
                let mut tid = 100;
                let mut last = None;
                let mut first = true;
                loop {
                    let msg = match stream.message().await {
                        Ok(Some(m)) => m,
                        // Stopped without `finish`: abandoned; the rest is discarded.
                        Ok(None) => return,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let req = match ImportRequest::try_from(msg) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    if first != req.begin.is_some() {
                        let _ = tx
                            .send(Err(Status::invalid_argument("begin must come first, once")))
                            .await;
                        return;
                    }
                    first = false;
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
                            last = Some(p.clone());
                        }
                        if txn.ops() == 3 {
                            tid += 1;
                            total = add(total, txn);
                            let p = ImportProgress {
                                tid: Some(Tid(tid)),
                                txn,
                                total,
                                last_path: last.clone(),
                                done: false,
                            };
                            let _ = tx.send(Ok(p.into())).await;
                            txn = ImportCounts::default();
                        }
                    }
                    if req.finish {
                        break;
                    }
                }
                let tid = (txn.ops() > 0).then(|| Tid(tid + 1));
                total = add(total, txn);
                let _ = tx
                    .send(Ok(ImportProgress {
                        tid,
                        txn,
                        total,
                        last_path: last,
                        done: true,
                    }
                    .into()))
                    .await;
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    fn add(a: ImportCounts, b: ImportCounts) -> ImportCounts {
        ImportCounts {
            files: a.files + b.files,
            dirs: a.dirs + b.dirs,
            symlinks: a.symlinks + b.symlinks,
            deletes: a.deletes + b.deletes,
            bytes: a.bytes + b.bytes,
        }
    }

    /// Starts the fake on a socket in a fresh directory.
    async fn serve(
        content: Vec<u8>,
    ) -> (tempfile::TempDir, Endpoint, mpsc::UnboundedReceiver<Event>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("repld.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let (events, rx) = mpsc::unbounded_channel();
        let fake = Fake {
            events,
            content: Arc::new(content),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(StorageServer::new(fake))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let endpoint = Endpoint::parse(&format!("unix:{}", socket.display()), None).expect("valid");
        (dir, endpoint, rx)
    }

    fn header(path: &str, size: Option<u64>) -> PutHeader {
        PutHeader {
            pfs: PfsName::new("data").expect("valid"),
            path: EntryPath::new(path).expect("valid"),
            attrs: Attrs {
                mode: 0o644,
                mtime_ns: 0,
            },
            size,
            parents: false,
        }
    }

    /// Reads `good` bytes, then fails.
    struct FailingReader {
        good: std::io::Cursor<Vec<u8>>,
    }

    impl AsyncRead for FailingReader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.good).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Err(std::io::Error::other("disk on fire")));
            }
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("/run/repld/admin.sock", None).expect("path"),
            Endpoint::Unix("/run/repld/admin.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:rel/sock", None).expect("unix:"),
            Endpoint::Unix("rel/sock".into())
        );
        assert!(matches!(
            Endpoint::parse("http://127.0.0.1:7443", None),
            Ok(Endpoint::Http(_))
        ));
        let err = Endpoint::parse("https://node1:7443", None).expect_err("needs TLS files");
        assert!(err.to_string().contains("CA certificate"), "{err}");
        let tls = TlsFiles {
            ca: "ca.pem".into(),
            cert: "a.pem".into(),
            key: "a.key".into(),
            server_name: None,
        };
        assert!(matches!(
            Endpoint::parse("https://node1:7443", Some(tls.clone())),
            Ok(Endpoint::Https { .. })
        ));
        let Ok(Endpoint::Https { uri, .. }) = Endpoint::parse("https://node1", Some(tls)) else {
            panic!("https without a port");
        };
        assert_eq!(uri.port_u16(), Some(crate::DEFAULT_PORT));
        let Ok(Endpoint::Http(uri)) = Endpoint::parse("http://[::1]", None) else {
            panic!("http to ::1");
        };
        assert_eq!(uri.to_string(), "http://[::1]:7420/");
        assert!(Endpoint::parse("node1:7443", None).is_err());
    }

    #[tokio::test]
    async fn missing_socket_says_what_to_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let endpoint = Endpoint::Unix(dir.path().join("nope.sock"));
        let err = endpoint.connect().await.expect_err("no socket");
        let msg = err.to_string();
        assert!(
            msg.contains("nope.sock") && msg.contains("is repld running"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn put_streams_chunks_of_at_most_one_mib() {
        let (_dir, endpoint, mut events) = serve(Vec::new()).await;
        let mut client = StorageClient::connect(&endpoint).await.expect("connect");
        let data = vec![7u8; 2 * CHUNK_SIZE + 12345];
        let len = data.len();
        let r = client
            .put(
                header("a/big", Some(len as u64)),
                std::io::Cursor::new(data),
            )
            .await
            .expect("put");
        assert_eq!((r.tid, r.size), (Tid(7), len as u64));
        assert_eq!(
            events.recv().await,
            Some(Event::Committed {
                path: "a/big".into(),
                size: len,
                max_chunk: CHUNK_SIZE
            })
        );

        let r = client
            .put_bytes(header("small", None), Bytes::from_static(b"hello"))
            .await
            .expect("put_bytes");
        assert_eq!(r.size, 5);
    }

    #[tokio::test]
    async fn a_failing_input_resets_the_upload_so_nothing_commits() {
        let (_dir, endpoint, mut events) = serve(Vec::new()).await;
        let mut client = StorageClient::connect(&endpoint).await.expect("connect");
        let reader = FailingReader {
            good: std::io::Cursor::new(vec![1u8; CHUNK_SIZE + 10]),
        };
        let err = client
            .put(header("f", None), reader)
            .await
            .expect_err("input fails");
        assert!(matches!(err, ClientError::Input(_)), "{err:?}");
        assert!(err.to_string().contains("nothing was committed"), "{err}");
        assert_eq!(events.recv().await, Some(Event::Aborted));

        // Announcing a size the input does not have aborts too.
        let err = client
            .put(header("g", Some(100)), std::io::Cursor::new(vec![0u8; 10]))
            .await
            .expect_err("short input");
        assert!(err.to_string().contains("10 bytes, but 100"), "{err}");
        assert_eq!(events.recv().await, Some(Event::Aborted));
    }

    #[tokio::test]
    async fn get_returns_meta_then_checked_content() {
        let content: Vec<u8> = (0..3 * CHUNK_SIZE as u32 / 2).map(|i| i as u8).collect();
        let (_dir, endpoint, _events) = serve(content.clone()).await;
        let mut client = StorageClient::connect(&endpoint).await.expect("connect");
        let req = |p: &str| ReadRequest {
            pfs: PfsName::new("data").expect("valid"),
            path: EntryPath::new(p).expect("valid"),
            at: ReadAt::Head,
        };
        let (entry, stream) = client.get(req("f")).await.expect("get");
        assert_eq!(entry.size, content.len() as u64);
        assert_eq!(stream.read_to_end().await.expect("content"), content);

        let (_, stream) = client.get(req("short")).await.expect("get");
        let err = stream.read_to_end().await.expect_err("one byte short");
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    }

    #[tokio::test]
    async fn list_collects_pages_and_export_gives_tid_and_bytes() {
        let (_dir, endpoint, _events) = serve(Vec::new()).await;
        let mut client = StorageClient::connect(&endpoint).await.expect("connect");
        let pfs = PfsName::new("data").expect("valid");
        let listing = client
            .list(ListRequest {
                pfs: pfs.clone(),
                path: EntryPath::root(),
                at: ReadAt::Head,
                recursive: false,
            })
            .await
            .expect("list");
        assert_eq!(listing.tid, Tid(9));
        assert_eq!(listing.entries.len(), 6);

        let (tid, stream) = client
            .export(ExportRequest {
                pfs,
                path: EntryPath::root(),
                at: ReadAt::Tid(Tid(5)),
            })
            .await
            .expect("export");
        assert_eq!(tid, Tid(5));
        let mut out = Vec::new();
        assert_eq!(stream.copy_to(&mut out).await.expect("copy"), 7);
        assert_eq!(out, b"tarball");
    }

    #[tokio::test]
    async fn server_errors_keep_their_code() {
        let (_dir, endpoint, _events) = serve(Vec::new()).await;
        let mut client = StorageClient::connect(&endpoint).await.expect("connect");
        let err = client
            .mkdir(MkdirRequest {
                pfs: PfsName::new("replica").expect("valid"),
                path: EntryPath::new("d").expect("valid"),
                attrs: Attrs {
                    mode: 0o755,
                    mtime_ns: 0,
                },
                parents: false,
            })
            .await
            .expect_err("slave");
        assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition));
        assert_eq!(
            err.to_string(),
            "PFS `replica` is a slave (FAILED_PRECONDITION)"
        );
    }

    #[tokio::test]
    async fn import_batches_ops_and_reports_each_commit() {
        let (_dir, endpoint, _events) = serve(Vec::new()).await;
        let mut client = StorageClient::connect(&endpoint).await.expect("connect");
        let mut session = client
            .import(ImportBegin::new(PfsName::new("data").expect("valid")))
            .await
            .expect("import");
        let mut watch = session.watch_progress();
        let attrs = Attrs {
            mode: 0o644,
            mtime_ns: 1,
        };
        session
            .send(ImportOp::Mkdir {
                path: EntryPath::new("d").expect("valid"),
                attrs,
            })
            .await
            .expect("send");
        for i in 0..6 {
            let path = EntryPath::new(format!("d/f{i}")).expect("valid");
            session
                .send(ImportOp::File {
                    path,
                    attrs,
                    size: 4,
                    data: Bytes::from_static(b"abcd"),
                })
                .await
                .expect("send");
        }
        session.flush().await.expect("flush");
        // Seven operations: two full transactions of three are reported before the end.
        watch
            .wait_for(|p| p.total.ops() >= 6)
            .await
            .expect("progress");
        assert_eq!(session.progress().total.ops(), 6);

        let big = EntryPath::new("d/big").expect("valid");
        let size = (CHUNK_SIZE + 1) as u64;
        session
            .send(ImportOp::File {
                path: big,
                attrs,
                size,
                data: Bytes::from(vec![0; CHUNK_SIZE]),
            })
            .await
            .expect("send");
        session
            .send(ImportOp::Data(Bytes::from_static(b"x")))
            .await
            .expect("send");
        let commits = session.watch_commits();
        let done = session.finish().await.expect("finish");
        assert!(done.done);
        let commits = *commits.borrow();
        assert!(commits.transactions >= 2, "{commits:?}");
        assert!(commits.first_tid.is_some() && commits.last_tid >= commits.first_tid);
        assert_eq!(done.total.files, 7);
        assert_eq!(done.total.dirs, 1);
        assert_eq!(done.total.bytes, 6 * 4 + size);
        assert_eq!(
            done.last_path.as_ref().map(EntryPath::as_str),
            Some("d/big")
        );
    }

    /// A CA, and certificates for `node1` (SANs node1, 127.0.0.1) and a client, written to `dir`.
    fn make_certs(dir: &Path) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
        let issuer = Issuer::new(ca, ca_key);
        for (name, sans) in [
            ("node1", vec!["node1".to_owned(), "127.0.0.1".to_owned()]),
            ("client", vec![]),
        ] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(sans).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer).expect("sign");
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
        }
    }

    #[tokio::test]
    async fn https_endpoint_does_mutual_tls_with_the_node_name() {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        make_certs(d);
        let read = |f: &str| std::fs::read(d.join(f)).expect("read");
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read("node1.pem"), read("node1.key")))
            .client_ca_root(Certificate::from_pem(read("ca.pem")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events, _rx) = mpsc::unbounded_channel();
        let fake = Fake {
            events,
            content: Arc::new(b"over TLS".to_vec()),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .expect("TLS")
                .add_service(StorageServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let files = |server_name: Option<&str>| TlsFiles {
            ca: d.join("ca.pem"),
            cert: d.join("client.pem"),
            key: d.join("client.key"),
            server_name: server_name.map(str::to_owned),
        };
        let url = format!("https://127.0.0.1:{}", addr.port());
        let req = ReadRequest {
            pfs: PfsName::new("data").expect("valid"),
            path: EntryPath::new("f").expect("valid"),
            at: ReadAt::Head,
        };

        // The server name is the node name (and 127.0.0.1 is a SAN too).
        for name in [Some("node1"), None] {
            let endpoint = Endpoint::parse(&url, Some(files(name))).expect("valid");
            let mut client = StorageClient::connect(&endpoint).await.expect("mutual TLS");
            let (_, stream) = client.get(req.clone()).await.expect("get");
            assert_eq!(stream.read_to_end().await.expect("content"), b"over TLS");
        }

        // A name the certificate does not carry is refused, with a hint.
        let endpoint = Endpoint::parse(&url, Some(files(Some("node2")))).expect("valid");
        let err = StorageClient::connect(&endpoint)
            .await
            .expect_err("wrong name");
        assert!(err.to_string().contains("server name"), "{err}");

        // Missing key file: named.
        let mut bad = files(Some("node1"));
        bad.key = d.join("nope.key");
        let err = StorageClient::connect(&Endpoint::parse(&url, Some(bad)).expect("valid"))
            .await
            .expect_err("no key");
        assert!(err.to_string().contains("nope.key"), "{err}");
    }
}
