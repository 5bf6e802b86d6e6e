//! The slave side of a stream: checks every batch before anything is written, hands it to the
//! [`Sink`] to apply durably, and acknowledges with the new checkpoint.

use std::future::Future;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use repl_proto::pb::{self, receiver_message, sender_message};
use repl_types::Tid;
use tokio::sync::mpsc;
use tonic::Status;

use crate::position::Position;
use crate::{PROTOCOL_VERSION, payload_crc};

/// Messages read ahead of the batch being applied.
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

/// One open stream into a slave PFS.
pub trait Session: Send + 'static {
    /// The slave's durable checkpoint.
    fn checkpoint(&self) -> Position;

    /// The slave's history chain link at its synced TID, which the sender compares with its own
    /// link there before it sends anything (a slave whose history is not a prefix of the
    /// master's is refused).
    fn synced_link(&self) -> [u8; 32];

    /// Decodes and durably applies `batch`, which starts at the checkpoint the receiver last saw.
    /// Must itself refuse a batch that does not start at the durable checkpoint (another stream
    /// may have moved it), and must write nothing unless the whole batch is valid. Returns the
    /// new checkpoint, which is `batch.to`.
    fn apply(
        &mut self,
        batch: CheckedBatch,
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
    // Read the next batches while one is applied, so the sender's window keeps the link busy.
    let (ahead_tx, ahead) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(async move {
        while let Some(m) = inbound.next().await {
            if ahead_tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut inbound = tokio_stream::wrappers::ReceiverStream::new(ahead);
    let result = stream(&mut session, limits, &mut inbound, &out).await;
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

async fn stream<T: Session, In>(
    session: &mut T,
    limits: Limits,
    inbound: &mut In,
    out: &mpsc::Sender<Result<pb::ReceiverMessage, Status>>,
) -> Result<(), Refusal>
where
    In: Stream<Item = Result<pb::SenderMessage, Status>> + Unpin + Send,
{
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
    let mut next_seq = 1;
    while let Some(msg) = inbound.next().await {
        // A transport error means the sender went away: nothing to answer.
        let Ok(msg) = msg else { return Ok(()) };
        match msg.msg {
            Some(sender_message::Msg::Batch(b)) => {
                let batch = check(b, next_seq, limits)?;
                next_seq += 1;
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
                    checkpoint = session
                        .apply(batch)
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
            Some(sender_message::Msg::Heartbeat(h)) => {
                let pending = (h.pending_since_tid != 0).then_some(Tid(h.pending_since_tid));
                session.heartbeat(Tid(h.head_tid), pending);
            }
            Some(sender_message::Msg::Hello(_)) | None => {
                return Err((
                    Rejection::Malformed,
                    Status::invalid_argument("expected a Batch or a Heartbeat"),
                ));
            }
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
