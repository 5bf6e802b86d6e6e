//! Both ends of the protocol in memory: a master history, a slave that records every record it
//! applies, and a link between them that can cut, hold, corrupt or duplicate messages. Time is
//! paused, so timeouts and back-offs run in virtual time.

#![allow(clippy::unwrap_used)] // A poisoned lock or a failed test double is a failed test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use repl_proto::pb::{self, sender_message};
use repl_types::Tid;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::receiver::{self, CheckedBatch, Hello, Limits, Prepare, Rejection, Session, Sink};
use crate::sender::{self, Connect, Inbound, PairingStatus, Payload, SenderConfig, Source};
use crate::{Limiter, Position, Throttle};

/// Bytes per chunk record and per commit record in the test encoding.
const CHUNK: usize = 100;
const COMMIT: usize = 20;
const UUID: [u8; 16] = [7; 16];

// ----- the master -----

/// A history of changes, each with some chunks.
struct Master {
    changes: Mutex<Vec<(Tid, u64)>>,
    head: watch::Sender<Tid>,
}

impl Master {
    fn new(changes: &[(u64, u64)]) -> Arc<Master> {
        let changes: Vec<_> = changes.iter().map(|&(t, n)| (Tid(t), n)).collect();
        let head = changes.last().map_or(Tid::ZERO, |c| c.0);
        Arc::new(Master {
            changes: Mutex::new(changes),
            head: watch::Sender::new(head),
        })
    }

    fn commit(&self, tid: u64, chunks: u64) {
        self.changes.lock().unwrap().push((Tid(tid), chunks));
        self.head.send_replace(Tid(tid));
    }

    /// Every record of the history, in order: `(tid, Some(i))` for chunk i, `(tid, None)` for
    /// the commit.
    fn records(&self) -> Vec<(Tid, Option<u64>)> {
        let mut out = Vec::new();
        for &(tid, n) in self.changes.lock().unwrap().iter() {
            out.extend((0..n).map(|i| (tid, Some(i))));
            out.push((tid, None));
        }
        out
    }
}

impl Source for Master {
    fn head(&self) -> watch::Receiver<Tid> {
        self.head.subscribe()
    }

    async fn next_batch(&self, from: Position, max_bytes: u64) -> Result<Option<Payload>, String> {
        let changes = self.changes.lock().unwrap().clone();
        let mut buf = BytesMut::new();
        let (mut to, mut first, mut records) = (from, None, 0u32);
        for (tid, n) in changes.into_iter().filter(|c| c.0 > from.synced) {
            let mut done = match from.partial {
                Some((t, d)) if t == tid => d,
                _ => 0,
            };
            first.get_or_insert(tid);
            while done < n {
                if buf.len() + CHUNK > max_bytes as usize && records > 0 {
                    return Ok(Some(payload(to, first, buf, records)));
                }
                put_record(&mut buf, tid, Some(done), CHUNK);
                done += 1;
                records += 1;
                to = Position {
                    synced: to.synced,
                    partial: Some((tid, done)),
                };
            }
            if buf.len() + COMMIT > max_bytes as usize && records > 0 {
                return Ok(Some(payload(to, first, buf, records)));
            }
            put_record(&mut buf, tid, None, COMMIT);
            records += 1;
            to = Position::at(tid);
        }
        Ok((records > 0).then(|| payload(to, first, buf, records)))
    }

    async fn next_tid(&self, after: Tid) -> Result<Option<Tid>, String> {
        let changes = self.changes.lock().unwrap();
        Ok(changes.iter().map(|c| c.0).find(|&t| t > after))
    }

    async fn link_at(&self, tid: Tid) -> Result<[u8; 32], String> {
        let changes = self.changes.lock().unwrap();
        let last = changes.iter().map(|c| c.0).rfind(|&t| t <= tid);
        Ok(link_of(last.unwrap_or(Tid::ZERO)))
    }
}

/// The test histories' chain link after the commit at `tid`: the TID itself, as every history
/// here is a prefix of the master's unless a slave says otherwise.
fn link_of(tid: Tid) -> [u8; 32] {
    let mut l = [0; 32];
    l[..8].copy_from_slice(&tid.get().to_be_bytes());
    l
}

fn payload(to: Position, first: Option<Tid>, buf: BytesMut, records: u32) -> Payload {
    Payload {
        to,
        first_tid: first.expect("a batch holds records"),
        bytes: buf.freeze(),
        records,
    }
}

/// A record: tid, chunk index (u64::MAX for the commit), padded to `size`.
fn put_record(buf: &mut BytesMut, tid: Tid, chunk: Option<u64>, size: usize) {
    buf.put_u64(tid.get());
    buf.put_u64(chunk.unwrap_or(u64::MAX));
    buf.put_bytes(0xAB, size - 16);
}

fn parse_records(mut p: &[u8]) -> Vec<(Tid, Option<u64>)> {
    let mut out = Vec::new();
    while p.len() >= 16 {
        let tid = Tid(u64::from_be_bytes(p[..8].try_into().unwrap()));
        let chunk = u64::from_be_bytes(p[8..16].try_into().unwrap());
        let size = if chunk == u64::MAX { COMMIT } else { CHUNK };
        out.push((tid, (chunk != u64::MAX).then_some(chunk)));
        p = &p[size..];
    }
    out
}

// ----- the slave -----

#[derive(Default)]
struct SlaveState {
    checkpoint: Position,
    applied: Vec<(Tid, Option<u64>)>,
    rejected: HashMap<Rejection, u32>,
    heartbeats: Vec<(Tid, Option<Tid>)>,
    /// Open refuses with this, while set.
    refuse: Option<Status>,
    /// The slave's history diverged from the master's: its link is not the master's.
    diverged: bool,
    /// Preparing the batch with this seq fails, once.
    fail_prepare: Option<u64>,
    /// The highest batch seq prepared on the current stream.
    prepared_seq: u64,
    /// While set, the first apply waits (for up to 10 s of real time) until a later batch has
    /// been prepared, and records whether one was.
    overlap_gate: Option<Arc<tokio::sync::Notify>>,
    overlapped: Option<bool>,
    /// Batches applied, and how many had been when each refusal came.
    batches_applied: u64,
    applied_at_refusal: Vec<u64>,
    /// Records the slave's device still has room for (`None`: plenty). A batch that does not
    /// fit is refused whole, as the engine refuses it.
    room: Option<usize>,
}

#[derive(Clone, Default)]
struct Slave(Arc<Mutex<SlaveState>>);

impl Slave {
    fn state(&self) -> std::sync::MutexGuard<'_, SlaveState> {
        self.0.lock().unwrap()
    }
}

impl Sink for Slave {
    type Session = Slave;

    async fn open(&self, peer: &str, hello: &Hello) -> Result<Slave, Status> {
        if let Some(s) = self.state().refuse.clone() {
            return Err(s);
        }
        assert_eq!(peer, "master-node");
        if hello.shared_uuid != UUID {
            return Err(Status::failed_precondition("another shared UUID"));
        }
        Ok(self.clone())
    }
}

/// The double prepares a batch by parsing its records.
struct SlavePrepare(Slave);

impl Prepare for SlavePrepare {
    type Ready = Vec<(Tid, Option<u64>)>;

    fn prepare(&self, batch: &CheckedBatch) -> Result<Self::Ready, Status> {
        let mut s = self.0.state();
        if s.fail_prepare == Some(batch.seq) {
            s.fail_prepare = None;
            return Err(Status::invalid_argument("the batch does not decode"));
        }
        s.prepared_seq = s.prepared_seq.max(batch.seq);
        if let Some(gate) = &s.overlap_gate {
            gate.notify_one();
        }
        Ok(parse_records(&batch.payload))
    }
}

impl Session for Slave {
    type Prepare = SlavePrepare;

    fn preparer(&self) -> SlavePrepare {
        self.state().prepared_seq = 0;
        SlavePrepare(self.clone())
    }

    fn checkpoint(&self) -> Position {
        self.state().checkpoint
    }

    fn synced_link(&self) -> [u8; 32] {
        let s = self.state();
        let mut l = link_of(s.checkpoint.synced);
        if s.diverged {
            l[31] ^= 1;
        }
        l
    }

    async fn apply(
        &mut self,
        batch: CheckedBatch,
        records: Vec<(Tid, Option<u64>)>,
    ) -> Result<Position, Status> {
        let gate = {
            let s = self.state();
            s.overlapped
                .is_none()
                .then(|| s.overlap_gate.clone())
                .flatten()
        };
        if let Some(gate) = gate {
            let seq = batch.seq;
            let mut overlapped = false;
            for _ in 0..100 {
                if self.state().prepared_seq > seq {
                    overlapped = true;
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), gate.notified()).await;
            }
            self.state().overlapped = Some(overlapped);
        }
        let mut s = self.state();
        if batch.from != s.checkpoint {
            return Err(Status::failed_precondition("not at the checkpoint"));
        }
        if let Some(room) = s.room.as_mut() {
            if records.len() > *room {
                return Err(Status::resource_exhausted(format!(
                    "{} batch {} does not fit",
                    sender::SLAVE_FULL,
                    batch.seq
                )));
            }
            *room -= records.len();
        }
        s.applied.extend(records);
        s.batches_applied += 1;
        s.checkpoint = batch.to;
        Ok(batch.to)
    }

    fn heartbeat(&mut self, head: Tid, pending_since: Option<Tid>) {
        self.state().heartbeats.push((head, pending_since));
    }

    fn rejected(&mut self, why: Rejection) {
        let mut s = self.state();
        let applied = s.batches_applied;
        s.applied_at_refusal.push(applied);
        *s.rejected.entry(why).or_default() += 1;
    }
}

// ----- the link -----

/// What the link does to the next batch it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Close the connection before delivering batch `n` (counted over all connections).
    CutBefore(u64),
    /// Flip a payload byte of batch `n`.
    Corrupt(u64),
    /// Deliver batch `n` twice.
    Duplicate(u64),
    /// Hold every message from batch `n` on, until `resume`.
    HoldFrom(u64),
}

#[derive(Default)]
struct LinkState {
    faults: Vec<Fault>,
    batches: u64,
    connects: u64,
    /// Batches delivered minus acks seen, at most, over the run.
    max_in_flight: usize,
    held: bool,
}

#[derive(Clone)]
struct Link {
    slave: Slave,
    state: Arc<Mutex<LinkState>>,
    resume: Arc<tokio::sync::Notify>,
    /// Closes the live connection when notified.
    cut: Arc<tokio::sync::Notify>,
    /// Connections fail while this is above 0 (counted down per attempt).
    fail_connects: Arc<Mutex<u32>>,
}

impl Link {
    fn new(slave: &Slave, faults: &[Fault]) -> Link {
        Link {
            slave: slave.clone(),
            state: Arc::new(Mutex::new(LinkState {
                faults: faults.to_vec(),
                ..LinkState::default()
            })),
            resume: Arc::new(tokio::sync::Notify::new()),
            cut: Arc::new(tokio::sync::Notify::new()),
            fail_connects: Arc::new(Mutex::new(0)),
        }
    }

    fn connects(&self) -> u64 {
        self.state.lock().unwrap().connects
    }
}

impl Connect for Link {
    async fn connect(
        &self,
        mut outbound: mpsc::Receiver<pb::SenderMessage>,
    ) -> Result<Inbound, Status> {
        {
            let mut left = self.fail_connects.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(Status::unavailable("connection refused"));
            }
        }
        self.state.lock().unwrap().connects += 1;
        let (to_slave, slave_in) = mpsc::channel::<Result<pb::SenderMessage, Status>>(64);
        let (slave_out, from_slave) = mpsc::channel(64);
        let (to_master, master_in) = mpsc::channel(64);
        let slave = self.slave.clone();
        let limits = Limits {
            max_batch_bytes: 1 << 20,
        };
        tokio::spawn(async move {
            receiver::serve(
                &slave,
                "master-node",
                limits,
                ReceiverStream::new(slave_in),
                slave_out,
            )
            .await;
        });
        let in_flight = Arc::new(Mutex::new(0usize));
        // Slave to master: count acks.
        let acks = Arc::clone(&in_flight);
        tokio::spawn(async move {
            let mut from_slave = from_slave;
            while let Some(m) = from_slave.recv().await {
                if matches!(
                    &m,
                    Ok(pb::ReceiverMessage {
                        msg: Some(pb::receiver_message::Msg::Ack(_))
                    })
                ) {
                    let mut n = acks.lock().unwrap();
                    *n = n.saturating_sub(1);
                }
                if to_master.send(m).await.is_err() {
                    return;
                }
            }
        });
        // Master to slave: apply faults.
        let state = Arc::clone(&self.state);
        let resume = Arc::clone(&self.resume);
        let cut = Arc::clone(&self.cut);
        tokio::spawn(async move {
            loop {
                let mut m = tokio::select! {
                    m = outbound.recv() => match m {
                        Some(m) => m,
                        None => return,
                    },
                    () = cut.notified() => return,
                };
                let mut copies = 1;
                if let Some(sender_message::Msg::Batch(b)) = &mut m.msg {
                    let (n, fault) = {
                        let mut s = state.lock().unwrap();
                        s.batches += 1;
                        let n = s.batches;
                        let i = s.faults.iter().position(|f| match f {
                            Fault::CutBefore(k)
                            | Fault::Corrupt(k)
                            | Fault::Duplicate(k)
                            | Fault::HoldFrom(k) => *k == n,
                        });
                        (n, i.map(|i| s.faults.remove(i)))
                    };
                    match fault {
                        Some(Fault::CutBefore(_)) => return,
                        Some(Fault::Corrupt(_)) => {
                            let mut p = b.payload.to_vec();
                            let mid = p.len() / 2;
                            p[mid] ^= 0xFF;
                            b.payload = Bytes::from(p);
                        }
                        Some(Fault::Duplicate(_)) => copies = 2,
                        Some(Fault::HoldFrom(_)) => {
                            state.lock().unwrap().held = true;
                            resume.notified().await;
                            state.lock().unwrap().held = false;
                        }
                        None => {}
                    }
                    let _ = n;
                    let mut f = in_flight.lock().unwrap();
                    *f += 1;
                    let mut s = state.lock().unwrap();
                    s.max_in_flight = s.max_in_flight.max(*f);
                }
                for _ in 0..copies {
                    if to_slave.send(Ok(m.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(master_in)))
    }
}

// ----- running a pairing -----

struct Run {
    status: Arc<PairingStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn config() -> SenderConfig {
    let mut cfg = SenderConfig::new("data".into(), "data".into(), UUID);
    cfg.max_batch_bytes = 1000;
    cfg.window = 3;
    cfg.stall_timeout = Duration::from_secs(5);
    cfg
}

fn start(master: &Arc<Master>, link: &Link, cfg: SenderConfig) -> Run {
    let status = Arc::new(PairingStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    let throttle = Throttle {
        pairing: Arc::new(Limiter::new(None)),
        node: Arc::new(Limiter::new(None)),
    };
    let task = tokio::spawn(sender::run(
        cfg,
        Arc::clone(master),
        link.clone(),
        throttle,
        Arc::clone(&status),
        stop_rx,
    ));
    Run { status, stop, task }
}

impl Run {
    async fn finish(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap();
    }
}

/// Waits (in virtual time) until the slave reaches the master's head.
async fn wait_synced(master: &Master, slave: &Slave) {
    let head = *master.head.borrow();
    for _ in 0..10_000 {
        if slave.state().checkpoint == Position::at(head) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the slave stayed at {} while the master's head is {head}",
        slave.state().checkpoint
    );
}

/// Changes 1..=n, every fifth one large (30 chunks, about 3 batches), the others 0-2 chunks.
fn history(n: u64) -> Vec<(u64, u64)> {
    (1..=n)
        .map(|t| (t, if t % 5 == 0 { 30 } else { t % 3 }))
        .collect()
}

fn assert_applied_once_in_order(master: &Master, slave: &Slave) {
    assert_eq!(
        slave.state().applied,
        master.records(),
        "the slave must hold every record of the master exactly once, in order"
    );
}

#[tokio::test(start_paused = true)]
async fn a_history_streams_in_order_with_a_bounded_window() {
    let master = Master::new(&history(40));
    let slave = Slave::default();
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    assert_applied_once_in_order(&master, &slave);
    let max_in_flight = link.state.lock().unwrap().max_in_flight;
    assert!(
        max_in_flight <= 3,
        "{max_in_flight} batches were in flight; the window is 3"
    );
    assert!(
        max_in_flight >= 2,
        "the sender never had more than one batch in flight"
    );
    let p = run.status.snapshot();
    assert_eq!(p.reconnects, 0);
    assert_eq!(p.bytes_resent, 0);
    assert_eq!(p.pending_since, None, "in sync, nothing is pending");
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_commit_ships_at_once_not_on_a_timer() {
    let master = Master::new(&history(3));
    let slave = Slave::default();
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    // Let the heartbeat fire, then commit just after it: a timer-driven sender would wait for
    // the next one, a second away.
    tokio::time::sleep(Duration::from_millis(1010)).await;
    let t0 = tokio::time::Instant::now();
    master.commit(4, 1);
    while slave.state().checkpoint != Position::at(Tid(4)) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "the commit took {:?} of virtual time to arrive",
        t0.elapsed()
    );
    assert_applied_once_in_order(&master, &slave);
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_cut_inside_a_large_tid_resumes_from_the_checkpoint_without_resending_acked_batches() {
    let master = Master::new(&[(1, 2), (2, 45), (3, 1)]);
    let slave = Slave::default();
    // Batch 3 is inside TID 2's 45 chunks (10 per batch).
    let link = Link::new(&slave, &[Fault::CutBefore(3)]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    assert_applied_once_in_order(&master, &slave);
    assert_eq!(link.connects(), 2);
    let p = run.status.snapshot();
    assert_eq!(p.reconnects, 1);
    // At most the window (batches sent but not acknowledged when the link was cut) goes twice.
    assert!(
        p.bytes_resent <= 3 * 1000,
        "{} bytes were sent twice; at most a window of 3 batches of 1000 may be",
        p.bytes_resent
    );
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_corrupted_batch_is_refused_before_anything_is_written_and_the_stream_recovers() {
    let master = Master::new(&history(20));
    let slave = Slave::default();
    let link = Link::new(&slave, &[Fault::Corrupt(4)]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    assert_applied_once_in_order(&master, &slave);
    assert_eq!(slave.state().rejected.get(&Rejection::Checksum), Some(&1));
    let p = run.status.snapshot();
    assert_eq!(p.reconnects, 1);
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|e| e.contains("CRC32C")),
        "last error: {:?}",
        p.last_error
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_batch_is_prepared_while_one_is_being_applied() {
    let master = Master::new(&history(20));
    let slave = Slave::default();
    slave.state().overlap_gate = Some(Arc::new(tokio::sync::Notify::new()));
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    assert_eq!(
        slave.state().overlapped,
        Some(true),
        "no later batch was prepared while the first one was being applied"
    );
    assert_applied_once_in_order(&master, &slave);
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_fails_to_prepare_is_refused_after_the_batches_before_it_are_applied() {
    let master = Master::new(&history(20));
    let slave = Slave::default();
    slave.state().fail_prepare = Some(3);
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    assert_applied_once_in_order(&master, &slave);
    assert_eq!(slave.state().rejected.get(&Rejection::Apply), Some(&1));
    assert_eq!(
        slave.state().applied_at_refusal,
        [2],
        "batches 1 and 2 are applied before batch 3 is refused"
    );
    let p = run.status.snapshot();
    assert_eq!(p.reconnects, 1);
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|e| e.contains("does not decode")),
        "last error: {:?}",
        p.last_error
    );
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_duplicated_batch_is_refused_and_never_applied_twice() {
    let master = Master::new(&history(20));
    let slave = Slave::default();
    let link = Link::new(&slave, &[Fault::Duplicate(2)]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    assert_applied_once_in_order(&master, &slave);
    assert_eq!(slave.state().rejected.get(&Rejection::Sequence), Some(&1));
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_resets_a_stream_whose_batches_get_no_ack() {
    let master = Master::new(&history(20));
    let slave = Slave::default();
    let link = Link::new(&slave, &[Fault::HoldFrom(3)]);
    let run = start(&master, &link, config());
    // The link holds batch 3 and everything after it: no ack comes back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        run.status.snapshot().reconnects,
        0,
        "reset before the stall timeout"
    );
    assert!(link.state.lock().unwrap().held);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = run.status.snapshot();
    assert_eq!(
        p.reconnects, 1,
        "not reset after the 5 s stall timeout: {p:?}"
    );
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|e| e.contains("stalled")),
        "{:?}",
        p.last_error
    );
    // The held (stale) connection's messages are released into a stream that is gone; the new
    // stream completes the sync.
    link.resume.notify_one();
    wait_synced(&master, &slave).await;
    assert_applied_once_in_order(&master, &slave);
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn reconnects_back_off_exponentially_until_the_slave_answers() {
    let master = Master::new(&history(5));
    let slave = Slave::default();
    let link = Link::new(&slave, &[]);
    *link.fail_connects.lock().unwrap() = 5;
    let t0 = tokio::time::Instant::now();
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    // Delays of at least 100, 200, 400, 800 and 1600 ms (half of 200 ms doubling) came first.
    assert!(
        t0.elapsed() >= Duration::from_millis(3100),
        "5 failed connects took only {:?}",
        t0.elapsed()
    );
    assert_eq!(run.status.snapshot().reconnects, 5);
    assert_applied_once_in_order(&master, &slave);
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_pairing_writes_nothing_and_reports_why() {
    let master = Master::new(&history(5));
    let slave = Slave::default();
    slave.state().refuse = Some(Status::permission_denied("node-x may not push to data"));
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = run.status.snapshot();
    assert!(p.reconnects >= 1);
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|e| e.contains("may not push")),
        "{:?}",
        p.last_error
    );
    assert!(slave.state().applied.is_empty());
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeats_tell_the_slave_the_head_and_what_it_lacks() {
    let master = Master::new(&history(3));
    let slave = Slave::default();
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let beats = slave.state().heartbeats.clone();
    assert!(beats.len() >= 2, "{} heartbeats in 2.5 s", beats.len());
    assert_eq!(
        beats.last(),
        Some(&(Tid(3), None)),
        "in sync: head 3, nothing pending"
    );
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn stopping_ends_the_pairing_task() {
    let master = Master::new(&history(3));
    let slave = Slave::default();
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    let status = Arc::clone(&run.status);
    run.finish().await;
    assert_eq!(status.snapshot().state, sender::StreamState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn while_the_slave_is_unreachable_the_head_and_the_lag_follow_the_master() {
    let master = Master::new(&history(3));
    let slave = Slave::default();
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    wait_synced(&master, &slave).await;
    // The slave goes away while in sync: the stream is cut and every reconnect fails.
    *link.fail_connects.lock().unwrap() = 1_000;
    link.cut.notify_one();
    while run.status.snapshot().reconnects == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    master.commit(4, 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let p = run.status.snapshot();
    assert_eq!(
        p.head,
        Tid(4),
        "the head froze while the stream was down: {p:?}"
    );
    assert_eq!(
        p.pending_since,
        Some(Tid(4)),
        "nothing pending although the slave lacks TID 4: {p:?}"
    );
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_slave_whose_history_is_not_a_prefix_of_the_masters_gets_nothing() {
    let master = Master::new(&history(8));
    let slave = Slave::default();
    {
        let mut s = slave.state();
        s.checkpoint = Position::at(Tid(3));
        s.diverged = true;
    }
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = run.status.snapshot();
    assert_eq!(p.state.as_str(), "diverged");
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with(sender::DIVERGED) && e.contains("--rollback")),
        "{:?}",
        p.last_error
    );
    assert!(slave.state().applied.is_empty(), "nothing was sent");
    assert_eq!(p.batches_sent, 0);

    // Once the slave's history is the master's prefix (rolled back), streaming resumes from
    // its checkpoint: only what follows it is sent.
    slave.state().diverged = false;
    wait_synced(&master, &slave).await;
    let after: Vec<_> = master
        .records()
        .into_iter()
        .filter(|r| r.0 > Tid(3))
        .collect();
    assert_eq!(slave.state().applied, after);
    run.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_slave_stops_the_stream_clearly_and_it_resumes_by_itself_once_space_is_freed() {
    let master = Master::new(&history(20));
    let slave = Slave::default();
    slave.state().room = Some(40);
    let link = Link::new(&slave, &[]);
    let run = start(&master, &link, config());
    let mut full = false;
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if run.status.snapshot().state.as_str() == "slave-full" {
            full = true;
            break;
        }
    }
    assert!(
        full,
        "the pairing shows slave-full: {:?}",
        run.status.snapshot()
    );
    let p = run.status.snapshot();
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|e| e.contains(sender::SLAVE_FULL)),
        "{:?}",
        p.last_error
    );
    // What the slave holds is whole batches of the master's history, acknowledged as applied.
    let held = slave.state().applied.clone();
    assert!(!held.is_empty() && held.len() <= 40);
    assert_eq!(held[..], master.records()[..held.len()]);
    assert_eq!(
        p.acked,
        Some(slave.state().checkpoint),
        "the master's view of the checkpoint is the slave's durable one"
    );

    // The master goes on committing; the sender retries with back-off, not in a hot loop.
    let connects = link.connects();
    for t in 21..=30 {
        master.commit(t, 1);
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let retries = link.connects() - connects;
    assert!(
        (1..=20).contains(&retries),
        "{retries} attempts in 60 s while the slave was full"
    );
    assert_eq!(run.status.snapshot().state.as_str(), "slave-full");
    assert_eq!(slave.state().applied, held, "nothing was applied meanwhile");

    // Space is freed on the slave: the stream resumes by itself, and every record arrives
    // exactly once.
    slave.state().room = None;
    wait_synced(&master, &slave).await;
    assert_applied_once_in_order(&master, &slave);
    assert_eq!(run.status.snapshot().state.as_str(), "streaming");
    run.finish().await;
}
