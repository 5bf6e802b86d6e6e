//! The master side: one task per pairing that keeps a stream to the slave going for as long as
//! the pairing exists.
//!
//! Each stream: connect, say `Hello`, learn the slave's checkpoint from its `Welcome`, then run
//! a producer (reads batches from the [`Source`] after that checkpoint and waits on the
//! [`Throttle`] for their bytes) beside the stream loop (sends what the producer made while
//! fewer than `window` batches are unacknowledged, matches acks, sends heartbeats, and resets a
//! stream whose sent batches get no ack within `stall_timeout`). Whatever ends a stream, the
//! next one resumes from the slave's durable checkpoint after a back-off.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use repl_proto::pb::{self, receiver_message, sender_message};
use repl_types::Tid;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;

use crate::backoff::Backoff;
use crate::position::Position;
use crate::throttle::Throttle;
use crate::{PROTOCOL_VERSION, payload_crc};

/// How a sender behaves.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The master PFS (on this node).
    pub master_pfs: String,
    /// The slave PFS (on the peer).
    pub slave_pfs: String,
    /// The pair's shared UUID.
    pub shared_uuid: [u8; 16],
    /// The largest batch payload, in bytes (the slave may ask for less).
    pub max_batch_bytes: u64,
    /// Batches sent and not yet acknowledged, at most.
    pub window: usize,
    /// How often a heartbeat goes out.
    pub heartbeat: Duration,
    /// A stream whose oldest unacknowledged batch waits this long is reset.
    pub stall_timeout: Duration,
    /// How long connecting and the `Welcome` may take.
    pub connect_timeout: Duration,
    /// Reconnect delays.
    pub backoff_initial: Duration,
    /// The longest reconnect delay.
    pub backoff_max: Duration,
}

impl SenderConfig {
    /// The defaults for a pairing.
    pub fn new(master_pfs: String, slave_pfs: String, shared_uuid: [u8; 16]) -> SenderConfig {
        SenderConfig {
            master_pfs,
            slave_pfs,
            shared_uuid,
            max_batch_bytes: 4 << 20,
            window: 2,
            heartbeat: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// A batch's content as the source made it.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The position the batch leads to.
    pub to: Position,
    /// The first TID the batch carries (all of it or part of it).
    pub first_tid: Tid,
    /// Framed records.
    pub bytes: Bytes,
    /// How many records.
    pub records: u32,
}

/// The master's storage, as a sender needs it.
pub trait Source: Send + Sync + 'static {
    /// The master PFS's head TID, updated on every commit.
    fn head(&self) -> watch::Receiver<Tid>;

    /// The next batch after `from`: whole changes and their chunks, a large change split by
    /// chunks, in at most `max_bytes` of payload (or one chunk and its framing, if that is
    /// more). `None` when nothing follows `from`.
    fn next_batch(
        &self,
        from: Position,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Option<Payload>, String>> + Send;

    /// The first TID after `after`, if any (for the lag).
    fn next_tid(&self, after: Tid) -> impl Future<Output = Result<Option<Tid>, String>> + Send;

    /// The master's history chain link at `tid`: that of its newest commit at or before `tid`
    /// (zeros for the empty history).
    fn link_at(&self, tid: Tid) -> impl Future<Output = Result<[u8; 32], String>> + Send;
}

/// How the error of a stream refused for divergence starts (the pairing shows `diverged`).
pub const DIVERGED: &str = "diverged:";

/// How the message of the `RESOURCE_EXHAUSTED` status starts that a slave ends a stream with
/// when its device is full (the pairing shows `slave-full`, and the sender retries with
/// back-off until the slave has room again).
pub const SLAVE_FULL: &str = "slave device full:";

/// What the slave sends back.
pub type Inbound = Pin<Box<dyn Stream<Item = Result<pb::ReceiverMessage, Status>> + Send>>;

/// How a sender reaches its slave.
pub trait Connect: Send + Sync + 'static {
    /// Opens a stream that carries `outbound` to the slave's node.
    fn connect(
        &self,
        outbound: mpsc::Receiver<pb::SenderMessage>,
    ) -> impl Future<Output = Result<Inbound, Status>> + Send;
}

/// Where a pairing's stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Connecting, or waiting for the slave's `Welcome`.
    Connecting,
    /// Up.
    Streaming,
    /// Waiting before the next attempt.
    Backoff,
    /// The slave's history is not a prefix of the master's: nothing is sent until the operator
    /// pairs again (with `--rollback`) or unpairs. Retried with back-off meanwhile.
    Diverged,
    /// The slave's device is full: its last apply was refused and nothing of it was written.
    /// Retried with back-off, so that the stream resumes by itself once space is freed there.
    SlaveFull,
    /// The master PFS was downgraded to a slave: the pairing sends nothing.
    Downgraded,
    /// The pairing was removed or the node is stopping.
    Stopped,
}

impl StreamState {
    /// The word shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Connecting => "connecting",
            StreamState::Streaming => "streaming",
            StreamState::Backoff => "backoff",
            StreamState::Diverged => "diverged",
            StreamState::SlaveFull => "slave-full",
            StreamState::Downgraded => "downgraded",
            StreamState::Stopped => "stopped",
        }
    }
}

/// A pairing's progress, as status and metrics show it.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The stream's state.
    pub state: StreamState,
    /// The slave's checkpoint, as last acknowledged (or reported in a `Welcome`).
    pub acked: Option<Position>,
    /// When `acked` last advanced.
    pub acked_at: Option<SystemTime>,
    /// The master's head.
    pub head: Tid,
    /// The oldest master TID the slave lacks; `None` when in sync.
    pub pending_since: Option<Tid>,
    /// Payload bytes sent, in all streams.
    pub bytes_sent: u64,
    /// Payload bytes of batches sent again after a reconnect (they were sent before and not
    /// acknowledged).
    pub bytes_resent: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Records sent.
    pub records_sent: u64,
    /// Streams that ended and were started again.
    pub reconnects: u64,
    /// Why the last stream ended.
    pub last_error: Option<String>,
    /// Time spent waiting on the throttle.
    pub throttle_wait: Duration,
    /// Payload bytes per second over the last heartbeat interval.
    pub rate: f64,
    /// The last time a batch was acknowledged or a stream was welcomed.
    pub last_progress: Option<Instant>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    fn new() -> Progress {
        Progress {
            state: StreamState::Connecting,
            acked: None,
            acked_at: None,
            head: Tid::ZERO,
            pending_since: None,
            bytes_sent: 0,
            bytes_resent: 0,
            batches_sent: 0,
            records_sent: 0,
            reconnects: 0,
            last_error: None,
            throttle_wait: Duration::ZERO,
            rate: 0.0,
            last_progress: None,
        }
    }

    /// How far the slave is behind, in seconds: the age of the oldest change it lacks, 0 when in
    /// sync.
    pub fn lag_secs(&self, now: Tid) -> f64 {
        self.pending_since.map_or(0.0, |t| t.lag_secs(now))
    }
}

/// A pairing's shared progress.
pub struct PairingStatus {
    progress: Mutex<Progress>,
}

impl Default for PairingStatus {
    fn default() -> PairingStatus {
        PairingStatus {
            progress: Mutex::new(Progress::new()),
        }
    }
}

impl PairingStatus {
    /// A status that shows `progress` and no sender updates: a pairing that does not run.
    pub fn fixed(progress: Progress) -> PairingStatus {
        PairingStatus {
            progress: Mutex::new(progress),
        }
    }

    /// A copy of the progress.
    pub fn snapshot(&self) -> Progress {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.lock());
    }
}

/// Runs a pairing until `stop` turns true: streams, and after any failure backs off and streams
/// again from the slave's checkpoint.
pub async fn run<S: Source, C: Connect>(
    cfg: SenderConfig,
    source: Arc<S>,
    connect: C,
    throttle: Throttle,
    status: Arc<PairingStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let mut high_water = None;
    loop {
        if *stop.borrow() {
            break;
        }
        status.update(|p| p.state = StreamState::Connecting);
        let before = status.snapshot().acked_at;
        let ended = tokio::select! {
            r = stream(&cfg, &source, &connect, &throttle, &status, &mut high_water) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let err = match ended {
            Ok(()) => "the slave closed the stream".to_owned(),
            Err(e) => e,
        };
        if status.snapshot().acked_at != before {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(master = %cfg.master_pfs, slave = %cfg.slave_pfs, error = %err, retry_in = ?delay, "replication stream ended");
        let state = if err.starts_with(DIVERGED) {
            StreamState::Diverged
        } else if is_slave_full(&err) {
            StreamState::SlaveFull
        } else {
            StreamState::Backoff
        };
        status.update(|p| {
            p.state = state;
            p.reconnects += 1;
            p.last_error = Some(err);
            p.rate = 0.0;
        });
        // While the stream is down the master keeps committing: follow its head, so that the
        // lag shows how far the slave falls behind.
        let until = Instant::now() + delay;
        let mut ticks = tokio::time::interval(cfg.heartbeat);
        loop {
            // (`follow` is awaited outside the select, which holds a non-Send watch guard.)
            let follow = tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                _ = ticks.tick() => true,
                _ = stop.wait_for(|s| *s) => false,
            };
            if !follow {
                status.update(|p| p.state = StreamState::Stopped);
                return;
            }
            follow_head(&source, &status).await;
        }
    }
    status.update(|p| p.state = StreamState::Stopped);
}

/// Updates the head and the oldest pending TID from the source while no stream runs.
async fn follow_head<S: Source>(source: &Arc<S>, status: &PairingStatus) {
    let head = *source.head().borrow();
    let acked = status.snapshot().acked;
    let pending = match acked {
        Some(a) => pending_since(&VecDeque::new(), a, head, source).await,
        None => None,
    };
    status.update(|p| {
        p.head = head;
        if acked.is_some() {
            p.pending_since = pending;
        }
    });
}

/// A batch on its way: sent, not yet acknowledged.
struct InFlight {
    seq: u64,
    to: Position,
    first_tid: Tid,
}

/// Aborts the producer when a stream ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One stream, from connect until it fails. `high_water` is the furthest position ever sent, to
/// count resent bytes.
async fn stream<S: Source, C: Connect>(
    cfg: &SenderConfig,
    source: &Arc<S>,
    connect: &C,
    throttle: &Throttle,
    status: &Arc<PairingStatus>,
    high_water: &mut Option<Position>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(cfg.window + 2);
    let hello = pb::SenderMessage {
        msg: Some(sender_message::Msg::Hello(pb::Hello {
            protocol_version: PROTOCOL_VERSION,
            master_pfs: cfg.master_pfs.clone(),
            slave_pfs: cfg.slave_pfs.clone(),
            shared_uuid: Bytes::copy_from_slice(&cfg.shared_uuid),
            max_batch_bytes: cfg.max_batch_bytes,
        })),
    };
    tx.send(hello).await.map_err(|_| "the stream closed")?;
    let (mut inbound, welcome) = tokio::time::timeout(cfg.connect_timeout, async {
        let mut inbound = connect.connect(rx).await.map_err(describe)?;
        match inbound.next().await {
            Some(Ok(pb::ReceiverMessage {
                msg: Some(receiver_message::Msg::Welcome(w)),
            })) => Ok((inbound, w)),
            Some(Ok(_)) => Err("the slave answered the Hello with something else".to_owned()),
            Some(Err(s)) => Err(describe(s)),
            None => Err("the slave closed the stream before its Welcome".to_owned()),
        }
    })
    .await
    .map_err(|_| format!("no Welcome from the slave within {:?}", cfg.connect_timeout))??;
    let mut acked = Position::try_from(welcome.checkpoint.as_ref())
        .map_err(|e| format!("the slave's checkpoint: {e}"))?;
    check_lineage(source, acked.synced, &welcome.synced_link).await?;
    let max_bytes = match welcome.max_batch_bytes {
        0 => cfg.max_batch_bytes,
        theirs => cfg.max_batch_bytes.min(theirs),
    };
    let mut head_rx = source.head();
    let mut head = *head_rx.borrow_and_update();
    status.update(|p| {
        p.state = StreamState::Streaming;
        p.acked = Some(acked);
        p.head = head;
        p.last_progress = Some(Instant::now());
    });
    tracing::info!(master = %cfg.master_pfs, slave = %cfg.slave_pfs, checkpoint = %acked, "replication stream up");

    let (made_tx, mut made) = mpsc::channel(1);
    let _producer = AbortOnDrop(tokio::spawn(produce(
        Arc::clone(source),
        acked,
        max_bytes,
        throttle.clone(),
        source.head(),
        made_tx,
        Arc::clone(status),
    )));

    let mut window: VecDeque<InFlight> = VecDeque::new();
    let mut seq = 0u64;
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut oldest_wait = Instant::now();
    let mut rate_mark = (Instant::now(), status.snapshot().bytes_sent);
    loop {
        tokio::select! {
            msg = inbound.next() => {
                let ack = match msg {
                    Some(Ok(pb::ReceiverMessage { msg: Some(receiver_message::Msg::Ack(a)) })) => a,
                    Some(Ok(_)) => return Err("the slave sent something other than an Ack".into()),
                    Some(Err(s)) => return Err(describe(s)),
                    None => return Ok(()),
                };
                let front = window.pop_front().ok_or("an Ack for no batch in flight")?;
                let cp = Position::try_from(ack.checkpoint.as_ref())
                    .map_err(|e| format!("the Ack's checkpoint: {e}"))?;
                if ack.seq != front.seq || cp < front.to {
                    return Err(format!(
                        "the slave acknowledged batch {} at {cp}, expected batch {} at {}",
                        ack.seq, front.seq, front.to
                    ));
                }
                acked = cp;
                oldest_wait = Instant::now();
                let pending = pending_since(&window, acked, head, source).await;
                status.update(|p| {
                    p.acked = Some(acked);
                    p.acked_at = Some(SystemTime::now());
                    p.last_progress = Some(Instant::now());
                    p.pending_since = pending;
                });
            }
            made = made.recv(), if window.len() < cfg.window => {
                let payload = made.ok_or("the batch producer stopped")??;
                seq += 1;
                let from = window.back().map_or(acked, |b| b.to);
                let len = payload.bytes.len() as u64;
                let resent = high_water.is_some_and(|hw| from < hw);
                let batch = pb::Batch {
                    seq,
                    from: Some(from.into()),
                    to: Some(payload.to.into()),
                    master_head: head.get(),
                    crc32c: payload_crc(&payload.bytes),
                    payload: payload.bytes,
                    records: payload.records,
                };
                // The window bounds what waits in the channel; a link that takes nothing for the
                // stall timeout is dead.
                let msg = pb::SenderMessage { msg: Some(sender_message::Msg::Batch(batch)) };
                tokio::time::timeout(cfg.stall_timeout, tx.send(msg))
                    .await
                    .map_err(|_| format!("stalled: the link took no batch for {:?}", cfg.stall_timeout))?
                    .map_err(|_| "the stream closed")?;
                if window.is_empty() {
                    oldest_wait = Instant::now();
                }
                window.push_back(InFlight { seq, to: payload.to, first_tid: payload.first_tid });
                *high_water = Some(high_water.map_or(payload.to, |hw| hw.max(payload.to)));
                status.update(|p| {
                    p.bytes_sent += len;
                    p.batches_sent += 1;
                    p.records_sent += u64::from(payload.records);
                    if resent {
                        p.bytes_resent += len;
                    }
                    p.pending_since.get_or_insert(payload.first_tid);
                });
            }
            changed = head_rx.changed() => {
                if changed.is_err() {
                    return Err("the master PFS is gone".into());
                }
                head = *head_rx.borrow_and_update();
                status.update(|p| {
                    p.head = head;
                });
            }
            _ = heartbeat.tick() => {
                if !window.is_empty() && oldest_wait.elapsed() > cfg.stall_timeout {
                    return Err(format!(
                        "stalled: no Ack for {:?} with {} batches in flight",
                        cfg.stall_timeout,
                        window.len()
                    ));
                }
                let pending = pending_since(&window, acked, head, source).await;
                let hb = pb::Heartbeat {
                    head_tid: head.get(),
                    pending_since_tid: pending.map_or(0, Tid::get),
                };
                // A heartbeat that finds the link full is dropped: the link is busy (or stalled,
                // which the check above catches), and the next one carries newer figures.
                match tx.try_send(pb::SenderMessage { msg: Some(sender_message::Msg::Heartbeat(hb)) }) {
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err("the stream closed".into()),
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                }
                let now = Instant::now();
                status.update(|p| {
                    p.pending_since = pending;
                    let secs = now.duration_since(rate_mark.0).as_secs_f64();
                    if secs > 0.0 {
                        p.rate = (p.bytes_sent - rate_mark.1) as f64 / secs;
                    }
                    rate_mark = (now, p.bytes_sent);
                });
            }
        }
    }
}

/// Goes on only if the slave's history (up to its synced TID) is a prefix of the master's: its
/// link there equals the master's. Nothing is ever sent on top of another history.
async fn check_lineage<S: Source>(source: &Arc<S>, synced: Tid, link: &[u8]) -> Result<(), String> {
    let theirs = <[u8; 32]>::try_from(link).map_err(|_| {
        "the slave sent no history link in its Welcome: run the same repld version on both nodes"
            .to_owned()
    })?;
    let ours = source
        .link_at(synced)
        .await
        .map_err(|e| format!("reading the master's history link at {synced}: {e}"))?;
    if ours != theirs {
        return Err(format!(
            "{DIVERGED} the slave's history up to its synced TID {synced} is not this master's \
             (it holds commits the master does not); nothing is sent. Pair again with \
             `replctl pair MASTER SLAVE`, which names the diverging TIDs, and add --rollback to \
             discard the slave's own commits"
        ));
    }
    Ok(())
}

/// The oldest TID the slave lacks: the first batch in flight's, else the first change after the
/// slave's checkpoint, if the head is beyond it.
async fn pending_since<S: Source>(
    window: &VecDeque<InFlight>,
    acked: Position,
    head: Tid,
    source: &Arc<S>,
) -> Option<Tid> {
    if let Some((tid, _)) = acked.partial {
        return Some(tid);
    }
    if acked.synced >= head {
        return None;
    }
    if let Some(b) = window.front() {
        return Some(b.first_tid);
    }
    // The change right after the checkpoint, if there is one: a head that no change carries
    // (a new, empty master's creation TID) leaves nothing pending. If the source cannot say,
    // the head is the safe guess: the lag shows rather than hides.
    match source.next_tid(acked.synced).await {
        Ok(next) => next,
        Err(_) => Some(head),
    }
}

/// Reads batches after `from` and hands them over once the throttle lets their bytes go. Waits
/// on the head when there is nothing to read.
async fn produce<S: Source>(
    source: Arc<S>,
    mut from: Position,
    max_bytes: u64,
    throttle: Throttle,
    mut head: watch::Receiver<Tid>,
    out: mpsc::Sender<Result<Payload, String>>,
    status: Arc<PairingStatus>,
) {
    loop {
        // Marked seen before reading: a commit after this point wakes the wait below, and
        // the engine announces a head only once its commit is readable.
        head.borrow_and_update();
        match source.next_batch(from, max_bytes).await {
            Ok(Some(p)) => {
                let waited = throttle.wait(p.bytes.len() as u64).await;
                status.update(|s| s.throttle_wait += waited);
                from = p.to;
                if out.send(Ok(p)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                if head.changed().await.is_err() {
                    let _ = out.send(Err("the master PFS is gone".into())).await;
                    return;
                }
            }
            Err(e) => {
                let _ = out
                    .send(Err(format!("reading the master's changes failed: {e}")))
                    .await;
                return;
            }
        }
    }
}

/// Whether a stream ended because the slave's device is full ([`SLAVE_FULL`]).
fn is_slave_full(err: &str) -> bool {
    err.strip_prefix("ResourceExhausted: ")
        .is_some_and(|m| m.starts_with(SLAVE_FULL))
}

fn describe(s: Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}
