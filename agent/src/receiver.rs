//! The slave side of a stream: checks every batch before anything is written, hands it to the
//! [`Sink`] to apply durably, and acknowledges with the new checkpoint.
//!
//! Batches are applied one at a time, in order, but the work on a batch that needs no
//! checkpoint (the sink's [`Prepare`]: decoding, hashing chunks) runs ahead, on blocking
//! threads, for the batches read while the previous one is made durable. A slave's CPU work
//! then overlaps its `fdatasync` instead of waiting for it.

use std::future::Future;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use repl_proto::pb::{self, receiver_message, sender_message};
use repl_types::Tid;
use tokio::sync::mpsc;
use tonic::Status;

use crate::position::Position;
use crate::{PROTOCOL_VERSION, payload_crc};

/// Messages read (and batches prepared) ahead of the batch being applied.
const READ_AHEAD: usize = 2;

/// Limits the receiver enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest batch payload accepted, in bytes.
    pub max_batch_bytes: u64,
}

/// What a sender asks for in its `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The master PFS on the sender's node.
    pub master_pfs: String,
    /// The slave PFS on this node.
    pub slave_pfs: String,
    /// The pair's shared UUID.
    pub shared_uuid: [u8; 16],
}

/// A batch that passed every check the receiver makes without storage: sequence, checksum, size
/// and bounds. The sink decodes and applies it.
#[derive(Debug, Clone)]
pub struct CheckedBatch {
    /// Its sequence number in the stream.
    pub seq: u64,
    /// The checkpoint it applies on.
    pub from: Position,
    /// The checkpoint it leads to.
    pub to: Position,
    /// The master's head when it was made.
    pub master_head: Tid,
    /// Framed records, their CRC checked.
    pub payload: Bytes,
    /// How many records the sender says `payload` holds.
    pub records: u32,
}

/// Why a batch or a stream was refused: the label of the rejected-batches metric, and the status
/// the sender sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Not a well-formed message.
    Malformed,
    /// A sequence number other than the next one.
    Sequence,
    /// The payload does not match its CRC32C.
    Checksum,
    /// Above [`Limits::max_batch_bytes`].
    TooLarge,
    /// Does not start at the slave's checkpoint.
    Order,
    /// The sink refused or failed to apply it.
    Apply,
}

impl Rejection {
    /// Every reason, for metrics that show zero counts too.
    pub const ALL: [Rejection; 6] = [
        Rejection::Malformed,
        Rejection::Sequence,
        Rejection::Checksum,
        Rejection::TooLarge,
        Rejection::Order,
        Rejection::Apply,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Sequence => "sequence",
            Rejection::Checksum => "checksum",
            Rejection::TooLarge => "too_large",
            Rejection::Order => "order",
            Rejection::Apply => "apply",
        }
    }
}

/// The slave's storage, as the receiver needs it.
pub trait Sink: Send + Sync + 'static {
    /// One stream's view of a slave PFS.
    type Session: Session;

    /// Checks a `Hello` from the peer whose certificate names `peer`: the slave PFS exists, is a
    /// slave, has the same shared UUID, and `peer` may push to it. Errors go to the sender as
    /// they are (`PERMISSION_DENIED`, `FAILED_PRECONDITION`, `NOT_FOUND`, ...).
    fn open(
        &self,
        peer: &str,
        hello: &Hello,
    ) -> impl Future<Output = Result<Self::Session, Status>> + Send;
}

/// The work on a batch that does not depend on the slave's checkpoint: decoding it and hashing
/// its chunks. It must write nothing. The receiver calls it on a blocking thread for batches read
/// ahead, so it may run while an earlier batch is being applied, and for batches that turn out to
/// be applied already (then its result is dropped).
pub trait Prepare: Send + Sync + 'static {
    /// A batch ready for [`Session::apply`].
    type Ready: Send + 'static;

    /// Prepares `batch`. An error refuses the batch (as an apply error would) once the batches
    /// before it are applied.
    fn prepare(&self, batch: &CheckedBatch) -> Result<Self::Ready, Status>;
}

/// One open stream into a slave PFS.
pub trait Session: Send + 'static {
    /// What prepares this stream's batches.
    type Prepare: Prepare;

    /// The preparer of this stream's batches, which the receiver moves to the task that reads
    /// ahead.
    fn preparer(&self) -> Self::Prepare;

    /// The slave's durable checkpoint.
    fn checkpoint(&self) -> Position;

    /// The slave's history chain link at its synced TID, which the sender compares with its own
    /// link there before it sends anything (a slave whose history is not a prefix of the
    /// master's is refused).
    fn synced_link(&self) -> [u8; 32];

    /// Durably applies `batch`, which starts at the checkpoint the receiver last saw, as
    /// `ready` prepared it. Must itself refuse a batch that does not start at the durable
    /// checkpoint (another stream may have moved it), and must write nothing unless the whole
    /// batch is valid. Returns the new checkpoint, which is `batch.to`.
    fn apply(
        &mut self,
        batch: CheckedBatch,
        ready: <Self::Prepare as Prepare>::Ready,
    ) -> impl Future<Output = Result<Position, Status>> + Send;

    /// The master's head and its oldest TID this slave lacks (`None`: in sync), from a heartbeat.
    fn heartbeat(&mut self, head: Tid, pending_since: Option<Tid>);

    /// A batch or the stream was refused, for the metrics.
    fn rejected(&mut self, why: Rejection);
}

/// Serves one stream: reads the `Hello`, opens a session, then checks, applies and acknowledges
/// batches until the sender ends the stream or something is refused. A refusal is sent to the
/// sender as the stream's final status.
pub async fn serve<S, In>(
    sink: &S,
    peer: &str,
    limits: Limits,
    mut inbound: In,
    out: mpsc::Sender<Result<pb::ReceiverMessage, Status>>,
) where
    S: Sink,
    In: Stream<Item = Result<pb::SenderMessage, Status>> + Unpin + Send + 'static,
{
    let first = inbound.next().await;
    let hello = match first {
        Some(Ok(pb::SenderMessage {
            msg: Some(sender_message::Msg::Hello(h)),
        })) => h,
        Some(Err(_)) | None => return,
        Some(Ok(_)) => {
            let _ = out
                .send(Err(Status::invalid_argument(
                    "a replication stream starts with a Hello",
                )))
                .await;
            return;
        }
    };
    let mut session = match open(sink, peer, &hello).await {
        Ok(s) => s,
        Err(status) => {
            tracing::warn!(peer, master = %hello.master_pfs, slave = %hello.slave_pfs, error = %status.message(), "replication stream refused");
            let _ = out.send(Err(status)).await;
            return;
        }
    };
    // Read and prepare the next batches while one is applied, so that the sender's window keeps
    // the link busy and the slave's CPU work overlaps its writes.
    let (ahead_tx, ahead) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(read_ahead(
        inbound,
        limits,
        std::sync::Arc::new(session.preparer()),
        ahead_tx,
    ));
    let result = stream(&mut session, limits, ahead, &out).await;
    reader.abort();
    if let Err((why, status)) = result {
        session.rejected(why);
        tracing::warn!(peer, slave = %hello.slave_pfs, reason = why.label(), error = %status.message(), "replication stream ended by a refusal");
        let _ = out.send(Err(status)).await;
    }
}

async fn open<S: Sink>(sink: &S, peer: &str, hello: &pb::Hello) -> Result<S::Session, Status> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "replication protocol {} is not spoken here (this node speaks {PROTOCOL_VERSION}); run the same repld version on both nodes",
            hello.protocol_version
        )));
    }
    let shared_uuid = <[u8; 16]>::try_from(&hello.shared_uuid[..])
        .map_err(|_| Status::invalid_argument("shared_uuid must be 16 bytes"))?;
    let hello = Hello {
        master_pfs: hello.master_pfs.clone(),
        slave_pfs: hello.slave_pfs.clone(),
        shared_uuid,
    };
    sink.open(peer, &hello).await
}

type Refusal = (Rejection, Status);

/// A batch that is being prepared, with the batch itself.
type Preparing<R> = tokio::task::JoinHandle<(CheckedBatch, Result<R, Status>)>;

/// What the read-ahead task hands to the applying loop, in the order the sender sent it.
enum Ahead<R> {
    Batch(Preparing<R>),
    Heartbeat(pb::Heartbeat),
    /// The stream is refused here; nothing after it is read.
    Refused(Refusal),
}

/// Reads the stream, checks each batch and starts preparing it, and passes everything on in
/// order. Stops reading at a refusal, and ends when the sender goes away (a transport error
/// needs no answer).
async fn read_ahead<P: Prepare, In>(
    mut inbound: In,
    limits: Limits,
    preparer: std::sync::Arc<P>,
    ahead: mpsc::Sender<Ahead<P::Ready>>,
) where
    In: Stream<Item = Result<pb::SenderMessage, Status>> + Unpin + Send,
{
    let mut next_seq = 1;
    while let Some(Ok(msg)) = inbound.next().await {
        let (item, last) = match msg.msg {
            Some(sender_message::Msg::Batch(b)) => match check(b, next_seq, limits) {
                Ok(batch) => {
                    next_seq += 1;
                    let preparer = preparer.clone();
                    let job = tokio::task::spawn_blocking(move || {
                        let ready = preparer.prepare(&batch);
                        (batch, ready)
                    });
                    (Ahead::Batch(job), false)
                }
                Err(refusal) => (Ahead::Refused(refusal), true),
            },
            Some(sender_message::Msg::Heartbeat(h)) => (Ahead::Heartbeat(h), false),
            Some(sender_message::Msg::Hello(_)) | None => (
                Ahead::Refused((
                    Rejection::Malformed,
                    Status::invalid_argument("expected a Batch or a Heartbeat"),
                )),
                true,
            ),
        };
        if ahead.send(item).await.is_err() {
            return;
        }
        if last {
            // Keep the inbound stream open until the refusal has been sent (the caller aborts
            // this task then): dropping it first would close the stream under the sender, which
            // would see that instead of why.
            std::future::pending::<()>().await;
        }
    }
}

async fn stream<T: Session>(
    session: &mut T,
    limits: Limits,
    mut ahead: mpsc::Receiver<Ahead<<T::Prepare as Prepare>::Ready>>,
    out: &mpsc::Sender<Result<pb::ReceiverMessage, Status>>,
) -> Result<(), Refusal> {
    let mut checkpoint = session.checkpoint();
    let welcome = pb::ReceiverMessage {
        msg: Some(receiver_message::Msg::Welcome(pb::Welcome {
            protocol_version: PROTOCOL_VERSION,
            checkpoint: Some(checkpoint.into()),
            max_batch_bytes: limits.max_batch_bytes,
            synced_link: Bytes::copy_from_slice(&session.synced_link()),
        })),
    };
    if out.send(Ok(welcome)).await.is_err() {
        return Ok(());
    }
    while let Some(item) = ahead.recv().await {
        match item {
            Ahead::Batch(job) => {
                let (batch, ready) = job.await.map_err(|e| {
                    (
                        Rejection::Apply,
                        Status::internal(format!("preparing a batch failed: {e}")),
                    )
                })?;
                let seq = batch.seq;
                if batch.to <= checkpoint {
                    // Already applied (a resent batch after a reconnect): nothing is written.
                    tracing::debug!(seq, to = %batch.to, %checkpoint, "batch already applied");
                } else if batch.from != checkpoint {
                    return Err((
                        Rejection::Order,
                        Status::failed_precondition(format!(
                            "batch {seq} starts at {} but the slave is at {checkpoint}",
                            batch.from
                        )),
                    ));
                } else {
                    let ready = ready.map_err(|s| (Rejection::Apply, s))?;
                    checkpoint = session
                        .apply(batch, ready)
                        .await
                        .map_err(|s| (Rejection::Apply, s))?;
                }
                let ack = pb::ReceiverMessage {
                    msg: Some(receiver_message::Msg::Ack(pb::Ack {
                        seq,
                        checkpoint: Some(checkpoint.into()),
                    })),
                };
                if out.send(Ok(ack)).await.is_err() {
                    return Ok(());
                }
            }
            Ahead::Heartbeat(h) => {
                let pending = (h.pending_since_tid != 0).then_some(Tid(h.pending_since_tid));
                session.heartbeat(Tid(h.head_tid), pending);
            }
            Ahead::Refused(refusal) => return Err(refusal),
        }
    }
    Ok(())
}

/// The checks made before anything is written: `seq` is `expected_seq`, the payload is within
/// the limit and matches its CRC32C, and the positions are valid and advance. A restore from a
/// dump file (whose records are these batches) makes the same checks.
pub fn check(
    b: pb::Batch,
    expected_seq: u64,
    limits: Limits,
) -> Result<CheckedBatch, (Rejection, Status)> {
    if b.seq != expected_seq {
        return Err((
            Rejection::Sequence,
            Status::invalid_argument(format!(
                "batch {} arrived where batch {expected_seq} was due",
                b.seq
            )),
        ));
    }
    if b.payload.len() as u64 > limits.max_batch_bytes {
        return Err((
            Rejection::TooLarge,
            Status::resource_exhausted(format!(
                "batch {} holds {} bytes; this node accepts at most {}",
                b.seq,
                b.payload.len(),
                limits.max_batch_bytes
            )),
        ));
    }
    if payload_crc(&b.payload) != b.crc32c {
        return Err((
            Rejection::Checksum,
            Status::data_loss(format!(
                "batch {} does not match its CRC32C: damaged in transit",
                b.seq
            )),
        ));
    }
    let malformed = |why: String| (Rejection::Malformed, Status::invalid_argument(why));
    let from = Position::try_from(b.from.as_ref())
        .map_err(|e| malformed(format!("batch {}: from: {e}", b.seq)))?;
    let to = Position::try_from(b.to.as_ref())
        .map_err(|e| malformed(format!("batch {}: to: {e}", b.seq)))?;
    if to <= from {
        return Err(malformed(format!(
            "batch {} does not advance: from {from} to {to}",
            b.seq
        )));
    }
    Ok(CheckedBatch {
        seq: b.seq,
        from,
        to,
        master_head: Tid(b.master_head),
        payload: b.payload,
        records: b.records,
    })
}
