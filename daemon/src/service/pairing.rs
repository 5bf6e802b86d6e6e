//! The Admin calls of replication: accepting a master (slave side), creating and removing
//! pairings (master side), status, and the digests that `replctl verify` compares.

use repl_proto::pb;
use repld_engine::{At, Engine, EntryPath, PfsOptions, Role, Tid};
use tonic::Status;

use super::admin::{pfs_info, pfs_name};
use super::blocking;
use crate::replication::{Pairing, Replication, Upstream};

fn at(tid: u64) -> At {
    if tid == 0 {
        At::Head
    } else {
        At::Tid(Tid(tid))
    }
}

/// On the slave's node: creates the slave PFS if absent, refuses an unrelated or master PFS,
/// and records which master may push to it.
pub async fn accept(
    engine: &Engine,
    replication: &Replication,
    r: pb::PairAcceptRequest,
) -> Result<pb::PairAcceptResponse, Status> {
    let name = pfs_name("slave_pfs", r.slave_pfs.clone())?;
    let shared_uuid = <[u8; 16]>::try_from(&r.shared_uuid[..])
        .map_err(|_| Status::invalid_argument("shared_uuid must be 16 bytes"))?;
    if r.master_node.is_empty() {
        return Err(Status::invalid_argument(
            "master_node must name the master's node",
        ));
    }
    let (info, created) = {
        let engine = engine.clone();
        let name = name.clone();
        blocking(move || match engine.pfs(&name) {
            Ok(info) => Ok((info, false)),
            Err(repld_engine::Error::NoSuchPfs(_)) => {
                let opts = PfsOptions {
                    role: Role::Slave,
                    nohistory: false,
                    shared_uuid: Some(shared_uuid),
                };
                Ok((engine.create_pfs(&name, opts)?, true))
            }
            Err(e) => Err(e),
        })
        .await?
    };
    if info.role != Role::Slave {
        return Err(Status::failed_precondition(format!(
            "PFS {name} on this node is a master: pair into a slave PFS (a new name creates one), \
             or turn it into a slave first with `replctl pfs downgrade`"
        )));
    }
    if info.shared_uuid != shared_uuid {
        let empty = info.head == Tid::ZERO || info.head == info.created;
        return Err(Status::failed_precondition(format!(
            "PFS {name} on this node is a slave of another master (shared UUID {}, the master's is {}){}",
            uuid::Uuid::from_bytes(info.shared_uuid),
            uuid::Uuid::from_bytes(shared_uuid),
            if empty {
                "; it is empty: destroy it with `replctl pfs destroy` and pair again"
            } else {
                "; pair into another slave PFS name"
            }
        )));
    }
    replication.accept(Upstream {
        slave_pfs: r.slave_pfs,
        master_node: r.master_node,
        master_pfs: r.master_pfs,
    })?;
    Ok(pb::PairAcceptResponse {
        slave: Some(pfs_info(&info)),
        created,
    })
}

/// On the master's node: stores the pairing and starts its sender.
pub async fn create(
    replication: &Replication,
    r: pb::PairCreateRequest,
) -> Result<pb::PairCreateResponse, Status> {
    pfs_name("master_pfs", r.master_pfs.clone())?;
    pfs_name("slave_pfs", r.slave_pfs.clone())?;
    if r.slave_node.is_empty() {
        return Err(Status::invalid_argument(
            "slave_node must name the slave's node",
        ));
    }
    let uuid = replication
        .pair(Pairing {
            master_pfs: r.master_pfs,
            slave_node: r.slave_node,
            slave_endpoint: r.slave_endpoint,
            slave_pfs: r.slave_pfs,
            bandwidth: (r.bandwidth > 0).then_some(r.bandwidth),
            halted: None,
            confirmed: None,
            needs_resync: false,
            resync_base: None,
        })
        .await?;
    Ok(pb::PairCreateResponse {
        shared_uuid: bytes::Bytes::copy_from_slice(&uuid),
    })
}

/// `pair resync` on the master's node: prepares (parks the pairing and fixes the copy's TID) or
/// starts streaming the full copy.
pub async fn resync(
    replication: &Replication,
    r: pb::PairResyncRequest,
) -> Result<pb::PairResyncResponse, Status> {
    pfs_name("master_pfs", r.master_pfs.clone())?;
    pfs_name("slave_pfs", r.slave_pfs.clone())?;
    if r.start {
        if r.base_tid == 0 {
            return Err(Status::invalid_argument(
                "base_tid must be the TID the prepare answered",
            ));
        }
        replication
            .resync_start(&r.master_pfs, &r.slave_node, &r.slave_pfs, Tid(r.base_tid))
            .await?;
        return Ok(pb::PairResyncResponse {
            base_tid: r.base_tid,
            ..Default::default()
        });
    }
    let (_, base, uuid, entries, bytes) = replication
        .resync_prepare(&r.master_pfs, &r.slave_node, &r.slave_pfs)
        .await?;
    Ok(pb::PairResyncResponse {
        base_tid: base.get(),
        entries,
        bytes,
        shared_uuid: bytes::Bytes::copy_from_slice(&uuid),
    })
}

/// `pair resync` on the slave's node: empties the slave PFS for a full copy.
pub async fn resync_reset(
    replication: &Replication,
    r: pb::PfsResyncResetRequest,
) -> Result<pb::PfsResyncResetResponse, Status> {
    let name = pfs_name("name", r.name)?;
    let shared_uuid = <[u8; 16]>::try_from(&r.shared_uuid[..])
        .map_err(|_| Status::invalid_argument("shared_uuid must be 16 bytes"))?;
    if r.base_tid == 0 {
        return Err(Status::invalid_argument(
            "base_tid must name the copy's TID",
        ));
    }
    let (info, replaced) = replication
        .resync_reset(&name, shared_uuid, Tid(r.base_tid))
        .await?;
    Ok(pb::PfsResyncResetResponse {
        pfs: Some(pfs_info(&info)),
        replaced,
    })
}

/// Removes a pairing (master side, when `slave_node` is given) or an accepted master (slave
/// side, when `master_node` is given).
pub fn unpair(
    replication: &Replication,
    r: pb::UnpairRequest,
) -> Result<pb::UnpairResponse, Status> {
    let removed = match (r.slave_node.is_empty(), r.master_node.is_empty()) {
        (false, true) => replication.unpair(&r.master_pfs, &r.slave_node, &r.slave_pfs)?,
        (true, false) => replication.revoke(&r.slave_pfs, &r.master_node)?,
        _ => {
            return Err(Status::invalid_argument(
                "give slave_node (on the master's node) or master_node (on the slave's node)",
            ));
        }
    };
    Ok(pb::UnpairResponse { removed })
}

/// Every pairing this node feeds and every slave PFS it holds.
pub fn status(replication: &Replication) -> Result<pb::ReplicationStatusResponse, Status> {
    let pairings = replication
        .pairings()
        .into_iter()
        .map(|row| {
            let p = &row.progress;
            let acked = p.acked.unwrap_or_default();
            let (partial_tid, partial_chunks) = acked.partial.map_or((0, 0), |(t, n)| (t.get(), n));
            pb::PairingStatus {
                master_pfs: row.pairing.master_pfs,
                slave_node: row.pairing.slave_node,
                slave_endpoint: row.pairing.slave_endpoint,
                slave_pfs: row.pairing.slave_pfs,
                state: if row.pairing.needs_resync {
                    "needs-resync".to_owned()
                } else if p.state == repl_agent::StreamState::Streaming
                    && row.pairing.resync_base.is_some_and(|b| acked.synced < b)
                {
                    "resyncing".to_owned()
                } else {
                    p.state.as_str().to_owned()
                },
                synced_tid: acked.synced.get(),
                partial_tid,
                partial_chunks,
                head_tid: p.head.get(),
                lag_seconds: row.lag_secs,
                rate: p.rate,
                bytes_sent: p.bytes_sent,
                bytes_resent: p.bytes_resent,
                batches_sent: p.batches_sent,
                records_sent: p.records_sent,
                reconnects: p.reconnects,
                last_error: p.last_error.clone().unwrap_or_default(),
                bandwidth: row.pairing.bandwidth.unwrap_or(0),
                throttle_wait_seconds: p.throttle_wait.as_secs_f64(),
                since_progress_seconds: p.last_progress.map_or(0.0, |t| t.elapsed().as_secs_f64()),
                needs_resync: row.pairing.needs_resync,
                hold_tid: row.hold.get(),
                // Only while the copy is on its way (or being prepared).
                resync_tid: row
                    .pairing
                    .resync_base
                    .filter(|b| row.pairing.needs_resync || acked.synced < *b)
                    .map_or(0, Tid::get),
            }
        })
        .collect();
    let mut slaves = Vec::new();
    for row in replication.slaves() {
        slaves.push(pb::SlaveStatus {
            slave_pfs: row.upstream.slave_pfs,
            master_nodes: vec![row.upstream.master_node],
            synced_tid: row.synced.get(),
            master_head_tid: row.view.master_head.get(),
            lag_seconds: row.lag_secs,
            batches_applied: row.view.applied,
            batches_rejected: row.view.rejected.values().sum(),
            state: row.view.state().to_owned(),
            last_error: row.view.last_error.clone().unwrap_or_default(),
        });
    }
    Ok(pb::ReplicationStatusResponse { pairings, slaves })
}

/// The Merkle digest of a PFS at a TID.
pub async fn digest(engine: &Engine, r: pb::DigestRequest) -> Result<pb::DigestResponse, Status> {
    let name = pfs_name("pfs", r.pfs)?;
    let engine = engine.clone();
    let d = blocking(move || engine.digest(&name, &at(r.tid), r.deep)).await?;
    Ok(pb::DigestResponse {
        tid: d.tid.get(),
        root: bytes::Bytes::copy_from_slice(&d.root),
        entries: d.entries,
        bytes: d.bytes,
        unreadable_chunks: d.unreadable_chunks,
    })
}

/// The digests of one directory's children.
pub async fn digest_dir(
    engine: &Engine,
    r: pb::DigestDirRequest,
) -> Result<pb::DigestDirResponse, Status> {
    let name = pfs_name("pfs", r.pfs)?;
    let dir = if r.dir.is_empty() {
        EntryPath::root()
    } else {
        EntryPath::new(r.dir.clone())
            .map_err(|e| Status::invalid_argument(format!("dir `{}`: {e}", r.dir)))?
    };
    let engine = engine.clone();
    let children = blocking(move || engine.digest_dir(&name, &dir, &at(r.tid), r.deep)).await?;
    Ok(pb::DigestDirResponse {
        children: children
            .into_iter()
            .map(|c| pb::ChildDigest {
                name: c.name,
                kind: pb::EntryKind::from(c.kind).into(),
                hash: bytes::Bytes::copy_from_slice(&c.hash),
            })
            .collect(),
    })
}
