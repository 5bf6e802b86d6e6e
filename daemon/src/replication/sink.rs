//! The slave side's [`Sink`]: checks who pushes, and applies batches to the engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use repl_agent::{CheckedBatch, Hello, Position, Prepare, Rejection, SLAVE_FULL, Session, Sink};
use repld_engine::{ApplyBatch, Engine, Partial, PfsInfo, PfsName, ReadyBatch, Role, Tid};
use tonic::Status;

use super::store::Upstream;
use super::wire;
use crate::service::status;

/// The peer name of a caller on plaintext loopback (allowed only when the operator asked for
/// it), which may push to any slave PFS that has an accepted master.
pub const LOCAL_PEER: &str = "(plaintext loopback)";

/// What the slave side knows about one slave PFS, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct SlaveView {
    /// The master's head, from the last heartbeat.
    pub master_head: Tid,
    /// The oldest master TID this slave lacks, from the last heartbeat.
    pub pending_since: Option<Tid>,
    /// When the last heartbeat came.
    pub heartbeat_at: Option<Instant>,
    /// Batches applied (duplicates not counted).
    pub applied: u64,
    /// Refusals by reason.
    pub rejected: HashMap<&'static str, u64>,
    /// Time to apply a batch durably.
    pub apply_latency: Arc<repld_engine::LatencyHistogram>,
    /// Streams open into the PFS now.
    pub streams: usize,
    /// Why the last apply failed, until one succeeds.
    pub last_error: Option<String>,
    /// The last apply found this node's device full (nothing of it was written): the master
    /// retries until space is freed here.
    pub full: bool,
}

impl SlaveView {
    /// Whether a master is feeding the PFS: a stream is open, or a heartbeat came within
    /// `recent` (a stream that is reconnecting). `pfs upgrade` refuses then, unless forced.
    pub fn receiving(&self, recent: std::time::Duration) -> bool {
        self.streams > 0 || self.heartbeat_at.is_some_and(|t| t.elapsed() < recent)
    }

    /// The word status shows: `slave-full`, `receiving` (a stream is open) or `idle`.
    pub fn state(&self) -> &'static str {
        if self.full {
            "slave-full"
        } else if self.streams > 0 {
            "receiving"
        } else {
            "idle"
        }
    }
}

/// The engine as the receiver of every stream on this node.
#[derive(Clone)]
pub struct EngineSink {
    /// The node's engine.
    pub engine: Engine,
    /// Masters allowed per slave PFS (shared with the admin calls that change them).
    pub upstreams: Arc<Mutex<Vec<Upstream>>>,
    /// One apply at a time per slave PFS, whatever the stream.
    pub locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Per slave PFS.
    pub views: Arc<Mutex<HashMap<String, SlaveView>>>,
}

impl EngineSink {
    /// The lock that one apply into `pfs` holds at a time (an upgrade takes it too, so that it
    /// never lands in the middle of an apply).
    pub fn lock_for(&self, pfs: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(pfs.to_owned()).or_default())
    }
}

/// A slave PFS's checkpoint as a position.
pub fn checkpoint(p: &PfsInfo) -> Position {
    Position {
        synced: p.head,
        partial: p.partial.map(|x| (x.tid, x.chunks_done)),
    }
}

impl Sink for EngineSink {
    type Session = EngineSession;

    async fn open(&self, peer: &str, hello: &Hello) -> Result<EngineSession, Status> {
        let name = PfsName::new(hello.slave_pfs.clone())
            .map_err(|e| Status::invalid_argument(format!("slave PFS: {e}")))?;
        let bound = self
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|u| u.slave_pfs == hello.slave_pfs)
            .cloned();
        let allowed = bound.as_ref().is_some_and(|u| {
            u.master_pfs == hello.master_pfs && (u.master_node == peer || peer == LOCAL_PEER)
        });
        if let Some(u) = bound.filter(|_| !allowed) {
            // Split brain: another master (perhaps with the same shared UUID, after a failover)
            // pushes to a slave bound to one master. A slave follows one history only.
            return Err(Status::permission_denied(format!(
                "node {peer:?} may not push {} to PFS {:?} on this node: it replicates from {}:{}, \
                 and a slave follows one master's history and never takes a second master's \
                 changes. If {peer} is the master now, unpair {}:{} first and pair {peer}:{} with it",
                hello.master_pfs,
                hello.slave_pfs,
                u.master_node,
                u.master_pfs,
                u.master_node,
                u.master_pfs,
                hello.master_pfs
            )));
        }
        if !allowed {
            return Err(Status::permission_denied(format!(
                "node {peer:?} may not push to PFS {:?} on this node: pair them with `replctl pair {peer}:{} NODE:{}`",
                hello.slave_pfs, hello.master_pfs, hello.slave_pfs
            )));
        }
        self.session(name, hello.shared_uuid).await
    }
}

impl EngineSink {
    /// A session into slave PFS `name`, which must be a slave with `shared_uuid`: what a stream
    /// opens once its peer is allowed, and what a restore from a dump file applies through.
    pub async fn session(
        &self,
        name: PfsName,
        shared_uuid: [u8; 16],
    ) -> Result<EngineSession, Status> {
        let engine = self.engine.clone();
        let info = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || engine.pfs(&name))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(status)?
        };
        if info.role != Role::Slave {
            return Err(Status::failed_precondition(format!(
                "PFS {name} on this node is a master: replication only writes to slaves"
            )));
        }
        if info.shared_uuid != shared_uuid {
            return Err(Status::failed_precondition(format!(
                "PFS {name} on this node belongs to another pair (shared UUID {} here, {} on the master)",
                uuid::Uuid::from_bytes(info.shared_uuid),
                uuid::Uuid::from_bytes(shared_uuid)
            )));
        }
        let session = EngineSession {
            sink: self.clone(),
            pfs: name,
            checkpoint: checkpoint(&info),
            synced_link: info.head_chain,
        };
        session.view(|v| v.streams += 1);
        Ok(session)
    }
}

/// One stream into one slave PFS.
pub struct EngineSession {
    sink: EngineSink,
    pfs: PfsName,
    checkpoint: Position,
    synced_link: [u8; 32],
}

impl Drop for EngineSession {
    fn drop(&mut self) {
        self.view(|v| v.streams = v.streams.saturating_sub(1));
    }
}

impl EngineSession {
    fn view(&self, f: impl FnOnce(&mut SlaveView)) {
        let mut views = self
            .sink
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(views.entry(self.pfs.to_string()).or_default());
    }
}

/// Decodes a stream's batches and hashes their chunks, ahead of the apply.
pub struct EnginePrepare {
    engine: Engine,
}

impl Prepare for EnginePrepare {
    type Ready = ReadyBatch;

    fn prepare(&self, batch: &CheckedBatch) -> Result<ReadyBatch, Status> {
        let decoded = wire::decode(&batch.payload)
            .map_err(|e| Status::invalid_argument(format!("batch {}: {e}", batch.seq)))?;
        self.engine
            .prepare_apply(ApplyBatch {
                chunks: decoded.chunks,
                changes: decoded.changes,
                partial: batch
                    .to
                    .partial
                    .map(|(tid, chunks_done)| Partial { tid, chunks_done }),
                master_head: batch.master_head,
            })
            .map_err(status)
    }
}

impl Session for EngineSession {
    type Prepare = EnginePrepare;

    fn preparer(&self) -> EnginePrepare {
        EnginePrepare {
            engine: self.sink.engine.clone(),
        }
    }

    fn checkpoint(&self) -> Position {
        self.checkpoint
    }

    fn synced_link(&self) -> [u8; 32] {
        self.synced_link
    }

    async fn apply(&mut self, batch: CheckedBatch, ready: ReadyBatch) -> Result<Position, Status> {
        let started = Instant::now();
        let lock = self.sink.lock_for(self.pfs.as_str());
        let _one_at_a_time = lock.lock().await;
        let engine = self.sink.engine.clone();
        let pfs = self.pfs.clone();
        let (from, to) = (batch.from, batch.to);
        let seq = batch.seq;
        let now = tokio::task::spawn_blocking(move || -> Result<Position, Status> {
            // Another stream may have moved the checkpoint since this one read it.
            let current = checkpoint(&engine.pfs(&pfs).map_err(status)?);
            if to <= current {
                return Ok(current);
            }
            if from != current {
                return Err(Status::failed_precondition(format!(
                    "batch {seq} starts at {from} but the slave is at {current}"
                )));
            }
            let ends_at = ready.changes().last().map_or(current.synced, |c| c.tid);
            if ends_at != to.synced {
                return Err(Status::invalid_argument(format!(
                    "batch {seq} says it leads to {to} but its changes end at {ends_at}"
                )));
            }
            let cp = engine.apply_ready(&pfs, ready).map_err(|e| match e {
                // Nothing of the batch was written: the master keeps it and retries.
                repld_engine::Error::DeviceFull { .. } => Status::resource_exhausted(format!(
                    "{SLAVE_FULL} batch {seq} does not fit on the slave's node ({e}); the \
                     slave applies nothing more until space is freed there, and the master \
                     retries by itself"
                )),
                e => status(e),
            })?;
            let reached = Position {
                synced: cp.synced,
                partial: cp.partial.map(|p| (p.tid, p.chunks_done)),
            };
            if reached != to {
                return Err(Status::data_loss(format!(
                    "batch {seq} should lead to {to} but its content led to {reached}"
                )));
            }
            Ok(reached)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let now = match now {
            Ok(now) => now,
            Err(s) => {
                let full = s.code() == tonic::Code::ResourceExhausted
                    && s.message().starts_with(SLAVE_FULL);
                if full {
                    tracing::warn!(pfs = %self.pfs, error = %s.message(), "the device is full: a replicated batch was refused");
                }
                self.view(|v| {
                    v.full = full;
                    v.last_error = Some(s.message().to_owned());
                });
                return Err(s);
            }
        };
        self.checkpoint = now;
        self.view(|v| {
            v.applied += 1;
            v.apply_latency.observe(started.elapsed());
            v.full = false;
            v.last_error = None;
        });
        Ok(now)
    }

    fn heartbeat(&mut self, head: Tid, pending_since: Option<Tid>) {
        self.view(|v| {
            v.master_head = head;
            v.pending_since = pending_since;
            v.heartbeat_at = Some(Instant::now());
        });
    }

    fn rejected(&mut self, why: Rejection) {
        self.view(|v| *v.rejected.entry(why.label()).or_default() += 1);
    }
}
