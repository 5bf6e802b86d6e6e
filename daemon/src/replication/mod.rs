//! Replication on a node: the senders of the pairings it feeds, the receiver of the streams it
//! accepts, and the settings that say which are which.
//!
//! - [`store`]: `replication.json` in the data directory (pairings and accepted masters).
//! - [`source`] / [`sink`]: the engine behind the agent's [`repl_agent::Source`] and
//!   [`repl_agent::Sink`].
//! - [`wire`]: the record frames inside a batch payload.
//! - [`seed`]: offline seeding, a PFS's record stream to a dump file and back
//!   (`replctl dump` / `replctl restore`).
//! - [`Replication`]: starts a sender task per pairing at start-up and on `pair`, stops it on
//!   `unpair` or shutdown, changes its bandwidth in place, and reports status.
//! - [`ReplicationService`]: the gRPC Replication service (peers only) over the sink.

pub mod seed;
pub mod sink;
pub mod source;
pub mod store;
pub mod wire;

use std::sync::{Arc, Mutex};

use repl_agent::{Connect, Inbound, Limiter, PairingStatus, Progress, SenderConfig, Throttle};
use repl_proto::{Endpoint, TlsFiles, pb};
use repld_engine::{Engine, PfsInfo, PfsName, Tid};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::auth::PeerIdentity;
use crate::config::Config;
pub use sink::{EngineSink, SlaveView};
pub use store::{Pairing, Settings, Store, Upstream};

/// The batch payload a sender makes by default (`replication.batch_bytes`) and a dump file's
/// batches hold; a receiver accepts at least this much.
pub const MAX_BATCH_BYTES: u64 = 4 << 20;

/// A slave PFS that had a heartbeat this recently is still receiving from its master (senders
/// send one a second and reconnect within 5 s).
pub const RECEIVING: std::time::Duration = std::time::Duration::from_secs(10);

/// A running pairing.
struct Running {
    pairing: Pairing,
    status: Arc<PairingStatus>,
    limiter: Arc<Limiter>,
    stop: watch::Sender<bool>,
}

/// Replication on this node.
pub struct Replication {
    engine: Engine,
    config: Config,
    store: Mutex<Store>,
    node_limiter: Arc<Limiter>,
    running: Mutex<Vec<Running>>,
    verifies: Mutex<Vec<VerifyRecord>>,
    /// The receiver side, shared with the Replication service.
    pub sink: EngineSink,
    shutdown: CancellationToken,
}

/// The last `replctl verify` of a pairing, as reported by replctl.
#[derive(Debug, Clone)]
pub struct VerifyRecord {
    /// The master PFS.
    pub master_pfs: String,
    /// The slave's node.
    pub slave_node: String,
    /// The slave PFS.
    pub slave_pfs: String,
    /// When, in seconds since the epoch.
    pub at_secs: f64,
    /// Whether the digests matched.
    pub matched: bool,
}

/// A slave PFS's status row.
#[derive(Debug, Clone)]
pub struct SlaveRow {
    /// The accepted master.
    pub upstream: Upstream,
    /// What the receiver saw.
    pub view: SlaveView,
    /// The slave PFS's synced TID.
    pub synced: Tid,
    /// Seconds behind by the last heartbeat (0 in sync).
    pub lag_secs: f64,
}

/// A pairing's status row.
#[derive(Debug, Clone)]
pub struct PairingRow {
    /// The pairing.
    pub pairing: Pairing,
    /// Its sender's progress.
    pub progress: Progress,
    /// Seconds behind (0 in sync).
    pub lag_secs: f64,
    /// The checkpoint the slave confirmed, which holds the master's history.
    pub hold: Tid,
}

/// The newer of a pairing's saved confirmed checkpoint and the one its sender last saw.
fn confirmed(p: &Pairing, progress: &Progress) -> Tid {
    let live = progress.acked.map_or(Tid::ZERO, |a| a.synced);
    p.confirmed.unwrap_or(Tid::ZERO).max(live)
}

impl Replication {
    /// Loads the settings and starts a sender for every stored pairing.
    pub async fn start(
        engine: Engine,
        config: &Config,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Replication>> {
        let store = Store::load(&config.data_dir)?;
        seed::remove_stale_spools(&config.data_dir);
        let sink = EngineSink {
            engine: engine.clone(),
            upstreams: Arc::new(Mutex::new(store.settings.upstreams.clone())),
            locks: Arc::default(),
            views: Arc::default(),
        };
        let pairings = store.settings.pairings.clone();
        let r = Arc::new(Replication {
            engine,
            config: config.clone(),
            store: Mutex::new(store),
            node_limiter: Arc::new(Limiter::new(
                config.replication.node_bandwidth.map(|b| b.bytes()),
            )),
            running: Mutex::new(Vec::new()),
            verifies: Mutex::new(Vec::new()),
            sink,
            shutdown,
        });
        for p in pairings {
            if let Err(e) = r.spawn(p.clone()).await {
                tracing::error!(master = %p.master_pfs, slave = %format!("{}:{}", p.slave_node, p.slave_pfs), error = %e, "a stored pairing cannot start");
            }
        }
        Ok(r)
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the sender of `p` (a halted pairing, or one that needs a resync, only shows in
    /// status).
    async fn spawn(&self, p: Pairing) -> Result<(), Status> {
        if p.needs_resync {
            self.park(p);
            return Ok(());
        }
        let parked = p.halted.as_ref().map(|why| repl_agent::Progress {
            state: repl_agent::StreamState::Downgraded,
            last_error: Some(why.clone()),
            ..repl_agent::Progress::default()
        });
        if let Some(progress) = parked {
            self.lock_running().push(Running {
                limiter: Arc::new(Limiter::new(p.bandwidth)),
                pairing: p,
                status: Arc::new(PairingStatus::fixed(progress)),
                stop: watch::channel(true).0,
            });
            return Ok(());
        }
        let pfs = PfsName::new(p.master_pfs.clone())
            .map_err(|e| Status::invalid_argument(format!("master PFS: {e}")))?;
        let info = self.engine.pfs(&pfs).map_err(crate::service::status)?;
        let head = self
            .engine
            .subscribe(&pfs)
            .map_err(crate::service::status)?;
        let endpoint = self.slave_endpoint(&p)?;
        let channel = endpoint
            .connect_lazy()
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut cfg =
            SenderConfig::new(p.master_pfs.clone(), p.slave_pfs.clone(), info.shared_uuid);
        cfg.max_batch_bytes = self
            .config
            .replication
            .stream_batch_bytes(self.config.limits.max_message_bytes);
        cfg.stall_timeout = self.config.replication.stall_timeout.0;
        let limiter = Arc::new(Limiter::new(p.bandwidth));
        if let Some(rate) = p.bandwidth {
            // Batches of at most a quarter second at the limit keep the rate smooth.
            cfg.max_batch_bytes = cfg.max_batch_bytes.min((rate / 4).max(64 << 10));
        }
        let status = Arc::new(PairingStatus::default());
        let (stop, stop_rx) = watch::channel(false);
        let source = Arc::new(source::EngineSource {
            engine: self.engine.clone(),
            pfs,
            head,
            base: p.resync_base.map(source::Base::new),
        });
        let throttle = Throttle {
            pairing: Arc::clone(&limiter),
            node: Arc::clone(&self.node_limiter),
        };
        let task_status = Arc::clone(&status);
        let shutdown = self.shutdown.clone();
        let mut stop_on_shutdown = stop_rx.clone();
        let stop_tx = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => { stop_tx.send_replace(true); }
                _ = stop_on_shutdown.wait_for(|s| *s) => {}
            }
        });
        tokio::spawn(repl_agent::sender::run(
            cfg,
            source,
            TonicConnect(channel),
            throttle,
            task_status,
            stop_rx,
        ));
        self.lock_running().push(Running {
            pairing: p,
            status,
            limiter,
            stop,
        });
        Ok(())
    }

    fn slave_endpoint(&self, p: &Pairing) -> Result<Endpoint, Status> {
        let tls = TlsFiles {
            ca: self.config.tls.ca.clone(),
            cert: self.config.tls.cert.clone(),
            key: self.config.tls.key.clone(),
            server_name: Some(p.slave_node.clone()),
        };
        let e = Endpoint::parse(&p.slave_endpoint, Some(tls))
            .map_err(|e| Status::invalid_argument(format!("slave endpoint: {e}")))?;
        match e {
            Endpoint::Unix(_) => Err(Status::invalid_argument(
                "slave endpoint: give the slave node's https://HOST:PORT, not a socket",
            )),
            e => Ok(e),
        }
    }

    /// Stores and starts a pairing. Refuses a duplicate.
    pub async fn pair(&self, p: Pairing) -> Result<[u8; 16], Status> {
        let pfs = PfsName::new(p.master_pfs.clone())
            .map_err(|e| Status::invalid_argument(format!("master PFS: {e}")))?;
        // A slave PFS may feed a further slave (a cascade): its sender follows the slave's
        // synced TID, which only moves when a TID has wholly arrived and is readable.
        let info = self.engine.pfs(&pfs).map_err(crate::service::status)?;
        self.slave_endpoint(&p)?;
        {
            let mut store = self.lock_store();
            if store
                .settings
                .pairings
                .iter()
                .any(|x| x.is(&p.master_pfs, &p.slave_node, &p.slave_pfs))
            {
                return Err(Status::already_exists(format!(
                    "{} is already paired with {}:{}",
                    p.master_pfs, p.slave_node, p.slave_pfs
                )));
            }
            let mut next = store.settings.clone();
            next.pairings.push(p.clone());
            store
                .save(next)
                .map_err(|e| Status::internal(format!("{e:#}")))?;
        }
        self.spawn(p).await?;
        Ok(info.shared_uuid)
    }

    /// Stops and forgets a pairing.
    pub fn unpair(
        &self,
        master_pfs: &str,
        slave_node: &str,
        slave_pfs: &str,
    ) -> Result<bool, Status> {
        let mut store = self.lock_store();
        let mut next = store.settings.clone();
        next.pairings
            .retain(|x| !x.is(master_pfs, slave_node, slave_pfs));
        let removed = next.pairings.len() != store.settings.pairings.len();
        if removed {
            store
                .save(next)
                .map_err(|e| Status::internal(format!("{e:#}")))?;
        }
        drop(store);
        self.lock_running().retain(|r| {
            let hit = r.pairing.is(master_pfs, slave_node, slave_pfs);
            if hit {
                r.stop.send_replace(true);
            }
            !hit
        });
        Ok(removed)
    }

    /// Changes a pairing's bandwidth, stored and live.
    pub fn set_bandwidth(
        &self,
        master_pfs: &str,
        slave_node: &str,
        slave_pfs: &str,
        bandwidth: Option<u64>,
    ) -> Result<(), Status> {
        let mut store = self.lock_store();
        let mut next = store.settings.clone();
        let p = next.pairing_mut(master_pfs, slave_node, slave_pfs)?;
        p.bandwidth = bandwidth;
        store
            .save(next)
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        for r in self.lock_running().iter_mut() {
            if r.pairing.is(master_pfs, slave_node, slave_pfs) {
                r.pairing.bandwidth = bandwidth;
                r.limiter.set_rate(bandwidth);
            }
        }
        Ok(())
    }

    /// `pfs downgrade`: turns a master PFS into a read-only slave and halts the pairings it
    /// feeds (stored, so they stay halted across restarts; status shows them `downgraded`).
    /// Returns the PFS and the halted pairings' slaves as NODE:PFS.
    pub async fn downgrade(&self, pfs: &PfsName) -> Result<(PfsInfo, Vec<String>), Status> {
        let info = {
            let engine = self.engine.clone();
            let pfs = pfs.clone();
            crate::service::blocking(move || engine.downgrade(&pfs)).await?
        };
        let why = format!(
            "halted: master PFS {pfs} was downgraded to a slave at {}; upgrade it to stream again, \
             or unpair",
            info.head
        );
        let halted = self.set_halted(pfs, Some(why.clone()))?;
        let mut running = self.lock_running();
        for r in running
            .iter_mut()
            .filter(|r| r.pairing.master_pfs == pfs.as_str())
        {
            r.stop.send_replace(true);
            r.pairing.halted = Some(why.clone());
            let mut progress = r.status.snapshot();
            progress.state = repl_agent::StreamState::Downgraded;
            progress.last_error = Some(why.clone());
            progress.rate = 0.0;
            r.status = Arc::new(PairingStatus::fixed(progress));
        }
        tracing::warn!(pfs = %pfs, halted = halted.len(), "downgraded a master PFS to a slave");
        Ok((info, halted))
    }

    /// Marks the stored pairings fed by `pfs` halted with `why`, or (`None`) resumes the halted
    /// ones; returns the slaves of those it changed.
    fn set_halted(&self, pfs: &PfsName, why: Option<String>) -> Result<Vec<String>, Status> {
        let mut store = self.lock_store();
        let mut next = store.settings.clone();
        let mut hit = Vec::new();
        for p in next
            .pairings
            .iter_mut()
            .filter(|p| p.master_pfs == pfs.as_str() && p.halted.is_some() != why.is_some())
        {
            p.halted.clone_from(&why);
            hit.push(format!("{}:{}", p.slave_node, p.slave_pfs));
        }
        if !hit.is_empty() {
            store
                .save(next)
                .map_err(|e| Status::internal(format!("{e:#}")))?;
        }
        Ok(hit)
    }

    /// `pfs upgrade`: turns a slave PFS into a master at its synced TID, dropping a partly
    /// received TID. Refused while a master still streams to it (a stream is open or a heartbeat
    /// came within [`RECEIVING`]) unless `force`. The masters it accepted are no longer
    /// accepted, and pairings it fed before a downgrade stream again. Returns what the engine
    /// did and the masters revoked.
    pub async fn upgrade(
        &self,
        pfs: &PfsName,
        force: bool,
    ) -> Result<(repld_engine::Upgraded, Vec<String>), Status> {
        let feeding: Vec<String> = self
            .sink
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|u| u.slave_pfs == pfs.as_str())
            .map(|u| format!("{}:{}", u.master_node, u.master_pfs))
            .collect();
        let view = self
            .sink
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(pfs.as_str())
            .cloned()
            .unwrap_or_default();
        if view.receiving(RECEIVING) && !force {
            return Err(Status::failed_precondition(format!(
                "PFS {pfs} is still receiving from its master {} ({}): upgrading it now would \
                 make two masters. Stop the master (or `replctl pfs downgrade` it) and wait {}s, \
                 or pass --force if the master is really gone",
                if feeding.is_empty() {
                    "(unknown)".to_owned()
                } else {
                    feeding.join(", ")
                },
                if view.streams > 0 {
                    format!("{} stream(s) open", view.streams)
                } else {
                    format!(
                        "last heartbeat {:.1}s ago",
                        view.heartbeat_at.map_or(0.0, |t| t.elapsed().as_secs_f64())
                    )
                },
                RECEIVING.as_secs()
            )));
        }
        let lock = self.sink.lock_for(pfs.as_str());
        let _no_apply = lock.lock().await;
        let up = {
            let engine = self.engine.clone();
            let pfs = pfs.clone();
            crate::service::blocking(move || engine.upgrade(&pfs)).await?
        };
        {
            let mut store = self.lock_store();
            let mut next = store.settings.clone();
            next.upstreams.retain(|u| u.slave_pfs != pfs.as_str());
            if next.upstreams.len() != store.settings.upstreams.len() {
                self.save_upstreams(&mut store, next)?;
            }
        }
        self.sink
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(pfs.as_str());
        // Pairings halted by a downgrade of this PFS stream again.
        let resumed = self.set_halted(pfs, None)?;
        if !resumed.is_empty() {
            let halted: Vec<Pairing> = {
                let mut running = self.lock_running();
                let (mine, rest): (Vec<Running>, Vec<Running>) = running.drain(..).partition(|r| {
                    r.pairing.master_pfs == pfs.as_str() && r.pairing.halted.is_some()
                });
                *running = rest;
                mine.into_iter()
                    .map(|r| {
                        r.stop.send_replace(true);
                        Pairing {
                            halted: None,
                            ..r.pairing
                        }
                    })
                    .collect()
            };
            for p in halted {
                self.spawn(p).await?;
            }
        }
        tracing::warn!(pfs = %pfs, dropped = ?up.dropped, revoked = ?feeding, "upgraded a slave PFS to a master");
        Ok((up, feeding))
    }

    /// Accepts `master_node` as the source of `slave_pfs` (stored).
    pub fn accept(&self, up: Upstream) -> Result<(), Status> {
        let mut store = self.lock_store();
        if let Some(other) = store
            .settings
            .upstreams
            .iter()
            .find(|u| u.slave_pfs == up.slave_pfs && u.master_node != up.master_node)
        {
            return Err(Status::failed_precondition(format!(
                "PFS {} already replicates from {}:{}; unpair that first",
                up.slave_pfs, other.master_node, other.master_pfs
            )));
        }
        let mut next = store.settings.clone();
        next.upstreams.retain(|u| u.slave_pfs != up.slave_pfs);
        next.upstreams.push(up);
        self.save_upstreams(&mut store, next)
    }

    /// Saves settings whose accepted masters changed, and hands those to the receiver.
    fn save_upstreams(&self, store: &mut Store, next: Settings) -> Result<(), Status> {
        let upstreams = next.upstreams.clone();
        store
            .save(next)
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        *self
            .sink
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = upstreams;
        Ok(())
    }

    /// Stops accepting `master_node` for `slave_pfs`.
    pub fn revoke(&self, slave_pfs: &str, master_node: &str) -> Result<bool, Status> {
        let mut store = self.lock_store();
        let mut next = store.settings.clone();
        next.upstreams
            .retain(|u| !(u.slave_pfs == slave_pfs && u.master_node == master_node));
        let removed = next.upstreams.len() != store.settings.upstreams.len();
        if removed {
            self.save_upstreams(&mut store, next)?;
        }
        Ok(removed)
    }

    /// The pairings this node feeds.
    pub fn pairings(&self) -> Vec<PairingRow> {
        let now = Tid::now();
        self.lock_running()
            .iter()
            .map(|r| {
                let progress = r.status.snapshot();
                PairingRow {
                    pairing: r.pairing.clone(),
                    lag_secs: progress.lag_secs(now),
                    hold: confirmed(&r.pairing, &progress),
                    progress,
                }
            })
            .collect()
    }

    /// The holds on `master_pfs`'s history: for each of its pairings that still streams, the
    /// checkpoint its slave has confirmed (saved first, so that a hold survives a restart while
    /// the slave is down).
    pub fn holds(&self, master_pfs: &str) -> Result<Vec<(Pairing, Tid)>, Status> {
        let live: Vec<(Pairing, Progress)> = self
            .lock_running()
            .iter()
            .map(|r| (r.pairing.clone(), r.status.snapshot()))
            .collect();
        let mut store = self.lock_store();
        let mut next = store.settings.clone();
        let mut out = Vec::new();
        // A pairing that needs a resync holds nothing, unless its resync has chosen the TID of
        // its full copy (held from then on).
        for p in next
            .pairings
            .iter_mut()
            .filter(|p| p.master_pfs == master_pfs && (!p.needs_resync || p.resync_base.is_some()))
        {
            let progress = live
                .iter()
                .find(|(x, _)| x.is(&p.master_pfs, &p.slave_node, &p.slave_pfs));
            let tid = progress.map_or(p.confirmed.unwrap_or(Tid::ZERO), |(_, pr)| confirmed(p, pr));
            if tid > Tid::ZERO && Some(tid) != p.confirmed {
                p.confirmed = Some(tid);
            }
            // A resync whose copy the slave has confirmed is over.
            let acked = progress.and_then(|(_, pr)| pr.acked).map(|a| a.synced);
            if !p.needs_resync && p.resync_base.is_some_and(|b| acked.is_some_and(|a| a >= b)) {
                p.resync_base = None;
            }
            out.push((p.clone(), tid));
        }
        if next != store.settings {
            store
                .save(next)
                .map_err(|e| Status::internal(format!("{e:#}")))?;
        }
        Ok(out)
    }

    /// Marks pairings as needing a full resync (a forced prune removed changes their slaves had
    /// not confirmed) and stops their senders.
    pub fn mark_needs_resync(&self, pairings: &[Pairing]) -> Result<(), Status> {
        let hit = |x: &Pairing| {
            pairings
                .iter()
                .any(|p| x.is(&p.master_pfs, &p.slave_node, &p.slave_pfs))
        };
        let mut store = self.lock_store();
        let mut next = store.settings.clone();
        for p in next.pairings.iter_mut().filter(|p| hit(p)) {
            p.needs_resync = true;
            p.resync_base = None;
        }
        store
            .save(next)
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        drop(store);
        let mut parked = Vec::new();
        self.lock_running().retain(|r| {
            if hit(&r.pairing) {
                r.stop.send_replace(true);
                parked.push(Pairing {
                    needs_resync: true,
                    resync_base: None,
                    ..r.pairing.clone()
                });
                return false;
            }
            true
        });
        for p in parked {
            self.park(p);
        }
        Ok(())
    }

    /// Shows `p` (which needs a resync) in status without a sender.
    fn park(&self, p: Pairing) {
        let why = if p.resync_base.is_some() {
            "a full resync is being prepared: if `replctl pair resync` was interrupted, run it again"
                .to_owned()
        } else {
            format!(
                "a forced prune removed changes this slave had not confirmed: it needs a full resync \
                 (`replctl pair resync NODE:{} {}:{}`)",
                p.master_pfs, p.slave_node, p.slave_pfs
            )
        };
        self.lock_running().push(Running {
            limiter: Arc::new(Limiter::new(p.bandwidth)),
            status: Arc::new(PairingStatus::fixed(repl_agent::Progress {
                last_error: Some(why),
                ..repl_agent::Progress::default()
            })),
            pairing: p,
            stop: watch::channel(true).0,
        });
    }

    /// `pair resync`, first step on the master's node: parks the pairing (its sender stops)
    /// and fixes the TID of the slave's full copy at the master PFS's head, held from now on
    /// (saved before anything else happens, so that a crash leaves a pairing that needs a
    /// resync, and running the command again starts over). Refused for a pairing that streams
    /// incrementally: a resync replaces the slave's content. Returns the pairing, and the copy's
    /// TID and size (entries, bytes).
    pub async fn resync_prepare(
        &self,
        master_pfs: &str,
        slave_node: &str,
        slave_pfs: &str,
    ) -> Result<(Pairing, Tid, [u8; 16], u64, u64), Status> {
        let name = PfsName::new(master_pfs.to_owned())
            .map_err(|e| Status::invalid_argument(format!("master PFS: {e}")))?;
        let info = self.engine.pfs(&name).map_err(crate::service::status)?;
        let base = info.head;
        let pairing = {
            let mut store = self.lock_store();
            let mut next = store.settings.clone();
            let p = next.pairing_mut(master_pfs, slave_node, slave_pfs)?;
            let copied = p.resync_base.is_some_and(|b| {
                self.lock_running()
                    .iter()
                    .find(|r| r.pairing.is(master_pfs, slave_node, slave_pfs))
                    .and_then(|r| r.status.snapshot().acked)
                    .is_some_and(|a| a.synced >= b)
            });
            if !p.needs_resync && (p.resync_base.is_none() || copied) {
                return Err(Status::failed_precondition(format!(
                    "the pairing {master_pfs} -> {slave_node}:{slave_pfs} does not need a resync: it \
                     streams incrementally (a resync would replace the slave's content with a full copy)"
                )));
            }
            if p.halted.is_some() {
                return Err(Status::failed_precondition(format!(
                    "{master_pfs} was downgraded to a slave: upgrade it before resyncing its slaves"
                )));
            }
            p.needs_resync = true;
            p.resync_base = Some(base);
            p.confirmed = Some(base);
            let p = p.clone();
            store
                .save(next)
                .map_err(|e| Status::internal(format!("{e:#}")))?;
            p
        };
        let hit = |r: &Running| r.pairing.is(master_pfs, slave_node, slave_pfs);
        self.lock_running().retain(|r| {
            if hit(r) {
                r.stop.send_replace(true);
            }
            !hit(r)
        });
        self.park(pairing.clone());
        let (entries, bytes) = {
            let engine = self.engine.clone();
            crate::service::blocking(move || source::base_size(&engine, &name, base)).await?
        };
        tracing::warn!(master = %master_pfs, slave = %format!("{slave_node}:{slave_pfs}"), base = %base, entries, bytes, "resync prepared: the pairing is parked until the slave is emptied");
        Ok((pairing, base, info.shared_uuid, entries, bytes))
    }

    /// `pair resync`, last step on the master's node, once the slave's node has emptied the
    /// slave PFS for the copy of `base`: the pairing streams again, the full copy first.
    pub async fn resync_start(
        &self,
        master_pfs: &str,
        slave_node: &str,
        slave_pfs: &str,
        base: Tid,
    ) -> Result<Pairing, Status> {
        let pairing = {
            let mut store = self.lock_store();
            let mut next = store.settings.clone();
            let p = next.pairing_mut(master_pfs, slave_node, slave_pfs)?;
            if p.resync_base != Some(base) {
                return Err(Status::failed_precondition(format!(
                    "the resync of {master_pfs} -> {slave_node}:{slave_pfs} was prepared for {} \
                     (or was broken by a forced prune since): run `replctl pair resync` again",
                    p.resync_base
                        .map_or_else(|| "no TID".to_owned(), |t| t.to_string())
                )));
            }
            p.needs_resync = false;
            let p = p.clone();
            store
                .save(next)
                .map_err(|e| Status::internal(format!("{e:#}")))?;
            p
        };
        self.lock_running()
            .retain(|r| !r.pairing.is(master_pfs, slave_node, slave_pfs));
        self.spawn(pairing.clone()).await?;
        tracing::warn!(master = %master_pfs, slave = %format!("{slave_node}:{slave_pfs}"), base = %base, "resync started: the full copy streams first");
        Ok(pairing)
    }

    /// `pair resync` on the slave's node: replaces slave PFS `name` (which must be a slave of
    /// `shared_uuid`, accepted from a master, or absent) by an empty one that takes a full copy
    /// at `base`, keeping its retention policy. Its old content is gone at once: from the
    /// destroy on, the PFS reads nothing until the copy has wholly arrived (a crash in between
    /// leaves a missing or empty slave, and the resync is run again). Returns the new PFS and
    /// whether one was replaced.
    pub async fn resync_reset(
        &self,
        name: &PfsName,
        shared_uuid: [u8; 16],
        base: Tid,
    ) -> Result<(PfsInfo, bool), Status> {
        let accepted = self
            .sink
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|u| u.slave_pfs == name.as_str());
        if !accepted {
            return Err(Status::failed_precondition(format!(
                "PFS {name} on this node accepts no master: pair it with `replctl pair` first"
            )));
        }
        let lock = self.sink.lock_for(name.as_str());
        let _no_apply = lock.lock().await;
        let engine = self.engine.clone();
        let pfs = name.clone();
        let out = crate::service::blocking(move || {
            let old = match engine.pfs(&pfs) {
                Ok(info) => Some(info),
                Err(repld_engine::Error::NoSuchPfs(_)) => None,
                Err(e) => return Err(e),
            };
            if let Some(o) = &old {
                if o.role != repld_engine::Role::Slave || o.shared_uuid != shared_uuid {
                    return Err(repld_engine::Error::Invalid(format!(
                        "PFS `{pfs}` on this node is {}: a resync only replaces a slave of the same pair",
                        if o.role == repld_engine::Role::Slave {
                            "a slave of another master (another shared UUID)"
                        } else {
                            "a master"
                        }
                    )));
                }
                engine.destroy_pfs(&pfs)?;
            }
            engine.create_pfs(
                &pfs,
                repld_engine::PfsOptions {
                    role: repld_engine::Role::Slave,
                    nohistory: false,
                    shared_uuid: Some(shared_uuid),
                },
            )?;
            if let Some(o) = &old
                && o.retention != repld_engine::Retention::Forever
            {
                engine.set_retention(&pfs, o.retention.clone())?;
            }
            Ok((engine.begin_base(&pfs, base)?, old.is_some()))
        })
        .await?;
        self.sink
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name.as_str());
        tracing::warn!(pfs = %name, base = %base, replaced = out.1, "emptied a slave PFS for a full resync");
        Ok(out)
    }

    /// Records the result of a verify of a pairing this node feeds (kept until restart).
    pub fn record_verify(&self, v: VerifyRecord) {
        let mut all = self
            .verifies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|x| {
            !(x.master_pfs == v.master_pfs
                && x.slave_node == v.slave_node
                && x.slave_pfs == v.slave_pfs)
        });
        all.push(v);
    }

    /// The last verify of each pairing since start.
    pub fn verifies(&self) -> Vec<VerifyRecord> {
        self.verifies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The dump file of `pfs` after `since` ([`seed::dump`]).
    pub fn dump(&self, pfs: PfsName, since: Tid) -> crate::service::BoxStream<pb::DumpResponse> {
        seed::dump(self.engine.clone(), pfs, since)
    }

    /// Applies a dump file to a slave PFS ([`seed::restore`]).
    pub async fn restore(
        &self,
        inbound: tonic::Streaming<pb::RestoreRequest>,
    ) -> Result<(PfsName, seed::Restored), Status> {
        let limits = repl_agent::Limits {
            max_batch_bytes: accepted_batch_bytes(self.config.limits.max_message_bytes.bytes()),
        };
        seed::restore(&self.sink, &self.config.data_dir, limits, inbound).await
    }

    /// Every slave PFS with an accepted master: what the receiver saw, its synced TID, and how
    /// far behind it is by the last heartbeat (0 when it has the master's head).
    pub fn slaves(&self) -> Vec<SlaveRow> {
        let ups = self
            .sink
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let views = self
            .sink
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let now = Tid::now();
        ups.into_iter()
            .map(|upstream| {
                let view = views.get(&upstream.slave_pfs).cloned().unwrap_or_default();
                let synced = PfsName::new(upstream.slave_pfs.clone())
                    .ok()
                    .and_then(|n| self.engine.pfs(&n).ok())
                    .map_or(Tid::ZERO, |p| p.head);
                let lag_secs = match view.pending_since {
                    Some(t) if synced < view.master_head => t.lag_secs(now),
                    _ => 0.0,
                };
                SlaveRow {
                    upstream,
                    view,
                    synced,
                    lag_secs,
                }
            })
            .collect()
    }
}

/// Reaches a slave over a tonic channel.
struct TonicConnect(Channel);

impl Connect for TonicConnect {
    async fn connect(
        &self,
        outbound: mpsc::Receiver<pb::SenderMessage>,
    ) -> Result<Inbound, Status> {
        let mut client = repl_proto::replication_client(self.0.clone());
        let resp = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await?;
        Ok(Box::pin(resp.into_inner()))
    }
}

/// The gRPC Replication service: every verified peer may open a stream; the sink decides
/// whether that peer may push to the PFS it names.
#[derive(Clone)]
pub struct ReplicationService {
    sink: EngineSink,
    shutdown: CancellationToken,
    max_batch_bytes: u64,
}

impl ReplicationService {
    /// Serves streams into `sink` until `shutdown`, which ends every stream at once (a stream
    /// never ends by itself, and the server's drain would otherwise wait for it).
    ///
    /// Batches up to `max_message_bytes` less 64 KiB of framing are accepted: senders aim at
    /// [`MAX_BATCH_BYTES`], but a single change record (a transaction of very many operations)
    /// travels whole and may be larger.
    pub fn new(
        sink: EngineSink,
        shutdown: CancellationToken,
        max_message_bytes: usize,
    ) -> ReplicationService {
        ReplicationService {
            sink,
            shutdown,
            max_batch_bytes: accepted_batch_bytes(max_message_bytes as u64),
        }
    }
}

/// The largest batch payload a slave accepts (from a stream or a dump file): senders aim at
/// [`MAX_BATCH_BYTES`], but a single change record (a transaction of very many operations)
/// travels whole and may be larger, up to the gRPC message limit less 64 KiB of framing.
pub fn accepted_batch_bytes(max_message_bytes: u64) -> u64 {
    max_message_bytes
        .saturating_sub(64 << 10)
        .max(MAX_BATCH_BYTES)
}

#[tonic::async_trait]
impl pb::replication_server::Replication for ReplicationService {
    type StreamStream = crate::service::BoxStream<pb::ReceiverMessage>;

    async fn stream(
        &self,
        request: Request<tonic::Streaming<pb::SenderMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = match PeerIdentity::of(&request) {
            Some(PeerIdentity::Certificate { name, .. }) => name.clone(),
            // Plaintext loopback, which the operator asked for, is trusted like the admin socket.
            Some(local) if local.is_local() => sink::LOCAL_PEER.to_owned(),
            _ => {
                return Err(Status::unauthenticated(
                    "replication needs a node certificate",
                ));
            }
        };
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let sink = self.sink.clone();
        let shutdown = self.shutdown.clone();
        let max_batch_bytes = self.max_batch_bytes;
        tokio::spawn(async move {
            let limits = repl_agent::Limits { max_batch_bytes };
            let last_word = tx.clone();
            tokio::select! {
                () = repl_agent::receiver::serve(&sink, &peer, limits, inbound, tx) => {}
                () = shutdown.cancelled() => {
                    // An apply under way finishes or not as a whole; the sender resumes from
                    // the durable checkpoint when the node is back.
                    let _ = last_word
                        .send(Err(Status::unavailable("the slave's node is shutting down")))
                        .await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
