//! The Admin service: node information, PFS lifecycle, snapshots, and the online fsck.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use repl_proto::{
    PfsCreateRequest, PfsDestroyRequest, SnapshotCreateRequest, SnapshotDeleteRequest, pb,
};
use repld_engine::{Engine, PfsInfo, PfsName, PfsOptions};
use tonic::{Request, Response, Status};

use super::{blocking, failover, pairing};
use crate::replication::Replication;

/// The Admin service over one engine.
#[derive(Clone)]
pub struct AdminService {
    engine: Engine,
    node_name: String,
    device: PathBuf,
    started: Instant,
    replication: Arc<Replication>,
}

impl AdminService {
    /// Serves `engine`, which owns `device`, as node `node_name`.
    pub fn new(
        engine: Engine,
        node_name: String,
        device: PathBuf,
        replication: Arc<Replication>,
    ) -> AdminService {
        AdminService {
            engine,
            node_name,
            device,
            started: Instant::now(),
            replication,
        }
    }
}

/// The wire form of a PFS.
pub(crate) fn pfs_info(p: &PfsInfo) -> pb::PfsInfo {
    repl_proto::PfsInfo {
        name: p.name.clone(),
        role: p.role,
        nohistory: p.nohistory,
        shared_uuid: uuid::Uuid::from_bytes(p.shared_uuid),
        head_tid: (p.head != repld_engine::Tid::ZERO).then_some(p.head),
        created_tid: p.created,
        retention: p.retention.clone(),
    }
    .into()
}

/// The longest a `PfsWaitHead` call waits.
const MAX_WAIT_HEAD_MS: u32 = 60_000;

/// A PFS name from a request field, or `INVALID_ARGUMENT` naming the field.
pub(crate) fn pfs_name(field: &str, name: String) -> Result<PfsName, Status> {
    PfsName::new(name).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn node_info(
        &self,
        _: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        let space = self.engine.space();
        let sb = self.engine.superblock();
        let info = repl_proto::NodeInfo {
            node_name: self.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            devices: vec![repl_proto::DeviceInfo {
                path: self.device.display().to_string(),
                volume_uuid: uuid::Uuid::from_bytes(sb.volume_uuid),
                size_bytes: space.device_bytes,
                used_bytes: space.used_bytes(),
                free_bytes: space.free_bytes(),
            }],
            uptime: self.started.elapsed(),
        };
        Ok(Response::new(info.into()))
    }

    async fn pfs_create(
        &self,
        req: Request<pb::PfsCreateRequest>,
    ) -> Result<Response<pb::PfsCreateResponse>, Status> {
        let r = PfsCreateRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let opts = PfsOptions {
            role: r.role,
            nohistory: r.nohistory,
            shared_uuid: r.shared_uuid.map(|u| *u.as_bytes()),
        };
        let p = blocking(move || engine.create_pfs(&r.name, opts)).await?;
        tracing::info!(pfs = %p.name, role = ?p.role, "created a PFS");
        Ok(Response::new(pb::PfsCreateResponse {
            pfs: Some(pfs_info(&p)),
        }))
    }

    async fn pfs_list(
        &self,
        _: Request<pb::PfsListRequest>,
    ) -> Result<Response<pb::PfsListResponse>, Status> {
        let engine = self.engine.clone();
        let all = blocking(move || engine.list_pfs()).await?;
        Ok(Response::new(pb::PfsListResponse {
            pfses: all.iter().map(pfs_info).collect(),
        }))
    }

    async fn pfs_wait_head(
        &self,
        req: Request<pb::PfsWaitHeadRequest>,
    ) -> Result<Response<pb::PfsWaitHeadResponse>, Status> {
        let r = req.into_inner();
        let name = pfs_name("PfsWaitHeadRequest.name", r.name)?;
        let engine = self.engine.clone();
        let mut heads = blocking(move || engine.subscribe(&name)).await?;
        let want = repld_engine::Tid(r.tid);
        let limit = Duration::from_millis(u64::from(r.timeout_ms.min(MAX_WAIT_HEAD_MS)));
        // A timeout, or a PFS destroyed meanwhile (its sender gone), answers the head as it is.
        let _ = tokio::time::timeout(limit, heads.wait_for(|h| *h >= want)).await;
        let head = *heads.borrow();
        Ok(Response::new(pb::PfsWaitHeadResponse {
            head_tid: head.get(),
        }))
    }

    async fn pfs_status(
        &self,
        req: Request<pb::PfsStatusRequest>,
    ) -> Result<Response<pb::PfsStatusResponse>, Status> {
        let name = pfs_name("PfsStatusRequest.name", req.into_inner().name)?;
        let engine = self.engine.clone();
        let (p, st) = blocking(move || {
            let p = engine.pfs(&name)?;
            let st = match engine.pfs_stats(&name) {
                // A slave in the middle of a resync's full copy reads nothing yet (its head lies
                // in its pruned history): it shows no content, and its pruned range.
                Err(repld_engine::Error::Pruned { .. }) => repld_engine::PfsStats::default(),
                r => r?,
            };
            Ok((p, st))
        })
        .await?;
        let space = self.engine.space();
        let used = self
            .engine
            .last_space_usage()
            .and_then(|u| u.pfs_used.into_iter().find(|(n, _)| *n == p.name))
            .map_or(0, |(_, b)| b);
        Ok(Response::new(pb::PfsStatusResponse {
            used_bytes: used,
            device_used_bytes: space.used_bytes(),
            device_reclaimable_bytes: space.reclaimable_bytes,
            device_free_bytes: space.free_bytes(),
            pfs: Some(pfs_info(&p)),
            files: st.files,
            dirs: st.dirs,
            symlinks: st.symlinks,
            logical_bytes: st.bytes,
            versions: st.versions,
            snapshots: st.snapshots,
            oldest_tid: p.history_floor.max(p.created).get(),
            pruned: repl_proto::ranges_to_pb(&p.pruned),
        }))
    }

    async fn pfs_destroy(
        &self,
        req: Request<pb::PfsDestroyRequest>,
    ) -> Result<Response<pb::PfsDestroyResponse>, Status> {
        let r = PfsDestroyRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        blocking(move || {
            let snapshots = engine.snapshot_list(&r.name)?;
            if !snapshots.is_empty() && !r.force {
                return Err(repld_engine::Error::Invalid(format!(
                    "PFS `{}` has {} snapshot(s); delete them or pass --force to destroy it with its history",
                    r.name,
                    snapshots.len()
                )));
            }
            engine.destroy_pfs(&r.name)
        })
        .await?;
        Ok(Response::new(pb::PfsDestroyResponse {}))
    }

    async fn pfs_set(
        &self,
        req: Request<pb::PfsSetRequest>,
    ) -> Result<Response<pb::PfsSetResponse>, Status> {
        let r = req.into_inner();
        let name = pfs_name("PfsSetRequest.name", r.name)?;
        let retention = r
            .retention
            .map(|t| repl_proto::retention("PfsSetRequest.retention", &t))
            .transpose()?;
        let engine = self.engine.clone();
        let p = blocking(move || match retention {
            Some(policy) => engine.set_retention(&name, policy),
            None => engine.pfs(&name),
        })
        .await?;
        tracing::info!(pfs = %p.name, retention = %p.retention, "PFS settings changed");
        Ok(Response::new(pb::PfsSetResponse {
            pfs: Some(pfs_info(&p)),
        }))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let r = req.into_inner();
        let name = pfs_name("PruneRequest.name", r.name)?;
        let result =
            crate::retention::prune(&self.engine, &self.replication, name, r.dry_run, r.force)
                .await?;
        Ok(Response::new(result.into()))
    }

    async fn snapshot_create(
        &self,
        req: Request<pb::SnapshotCreateRequest>,
    ) -> Result<Response<pb::SnapshotCreateResponse>, Status> {
        let r = SnapshotCreateRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        let name = String::from(r.name.clone());
        let tid = blocking(move || engine.snapshot_create(&r.pfs, &name, r.tid)).await?;
        let snapshot = repl_proto::Snapshot { name: r.name, tid };
        Ok(Response::new(pb::SnapshotCreateResponse {
            snapshot: Some(snapshot.into()),
        }))
    }

    async fn snapshot_list(
        &self,
        req: Request<pb::SnapshotListRequest>,
    ) -> Result<Response<pb::SnapshotListResponse>, Status> {
        let name = pfs_name("SnapshotListRequest.pfs", req.into_inner().pfs)?;
        let engine = self.engine.clone();
        let mut snaps = blocking(move || engine.snapshot_list(&name)).await?;
        snaps.sort_by_key(|(n, t)| (*t, n.clone()));
        let snapshots = snaps
            .into_iter()
            .map(|(name, tid)| pb::Snapshot {
                name,
                tid: tid.get(),
            })
            .collect();
        Ok(Response::new(pb::SnapshotListResponse { snapshots }))
    }

    async fn snapshot_delete(
        &self,
        req: Request<pb::SnapshotDeleteRequest>,
    ) -> Result<Response<pb::SnapshotDeleteResponse>, Status> {
        let r = SnapshotDeleteRequest::try_from(req.into_inner())?;
        let engine = self.engine.clone();
        blocking(move || engine.snapshot_delete(&r.pfs, &String::from(r.name))).await?;
        Ok(Response::new(pb::SnapshotDeleteResponse {}))
    }

    async fn fsck(
        &self,
        req: Request<pb::FsckRequest>,
    ) -> Result<Response<pb::FsckResponse>, Status> {
        let deep = req.into_inner().deep;
        let engine = self.engine.clone();
        let r = blocking(move || engine.check_log(deep)).await?;
        let problems = r
            .problems
            .iter()
            .map(|p| pb::FsckProblem {
                location: self.device.display().to_string(),
                message: p.clone(),
            })
            .collect();
        Ok(Response::new(pb::FsckResponse {
            clean: r.is_clean(),
            records_checked: r.total_records() + r.chunks_verified,
            bytes_checked: r.payload_bytes,
            problems,
        }))
    }

    async fn pair_accept(
        &self,
        req: Request<pb::PairAcceptRequest>,
    ) -> Result<Response<pb::PairAcceptResponse>, Status> {
        pairing::accept(&self.engine, &self.replication, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pair_create(
        &self,
        req: Request<pb::PairCreateRequest>,
    ) -> Result<Response<pb::PairCreateResponse>, Status> {
        pairing::create(&self.replication, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn unpair(
        &self,
        req: Request<pb::UnpairRequest>,
    ) -> Result<Response<pb::UnpairResponse>, Status> {
        pairing::unpair(&self.replication, req.into_inner()).map(Response::new)
    }

    async fn pair_set(
        &self,
        req: Request<pb::PairSetRequest>,
    ) -> Result<Response<pb::PairSetResponse>, Status> {
        let r = req.into_inner();
        let bandwidth = (r.bandwidth > 0).then_some(r.bandwidth);
        self.replication
            .set_bandwidth(&r.master_pfs, &r.slave_node, &r.slave_pfs, bandwidth)?;
        Ok(Response::new(pb::PairSetResponse {}))
    }

    async fn replication_status(
        &self,
        _: Request<pb::ReplicationStatusRequest>,
    ) -> Result<Response<pb::ReplicationStatusResponse>, Status> {
        pairing::status(&self.replication).map(Response::new)
    }

    async fn digest(
        &self,
        req: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        pairing::digest(&self.engine, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn verify_record(
        &self,
        req: Request<pb::VerifyRecordRequest>,
    ) -> Result<Response<pb::VerifyRecordResponse>, Status> {
        let r = req.into_inner();
        self.replication
            .record_verify(crate::replication::VerifyRecord {
                master_pfs: r.master_pfs,
                slave_node: r.slave_node,
                slave_pfs: r.slave_pfs,
                at_secs: repld_engine::Tid::now().as_secs_f64(),
                matched: r.matched,
            });
        Ok(Response::new(pb::VerifyRecordResponse {}))
    }

    async fn digest_dir(
        &self,
        req: Request<pb::DigestDirRequest>,
    ) -> Result<Response<pb::DigestDirResponse>, Status> {
        pairing::digest_dir(&self.engine, req.into_inner())
            .await
            .map(Response::new)
    }

    type DumpStream = super::BoxStream<pb::DumpResponse>;

    async fn dump(
        &self,
        req: Request<pb::DumpRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        let r = req.into_inner();
        let name = pfs_name("pfs", r.pfs)?;
        Ok(Response::new(
            self.replication.dump(name, repld_engine::Tid(r.since_tid)),
        ))
    }

    async fn restore(
        &self,
        req: Request<tonic::Streaming<pb::RestoreRequest>>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let (name, done) = self.replication.restore(req.into_inner()).await?;
        let engine = self.engine.clone();
        let p = blocking(move || engine.pfs(&name)).await?;
        Ok(Response::new(pb::RestoreResponse {
            slave: Some(pfs_info(&p)),
            created: done.created,
            batches_applied: done.applied,
            batches_skipped: done.skipped,
        }))
    }

    async fn pfs_upgrade(
        &self,
        req: Request<pb::PfsUpgradeRequest>,
    ) -> Result<Response<pb::PfsUpgradeResponse>, Status> {
        failover::upgrade(&self.replication, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pfs_downgrade(
        &self,
        req: Request<pb::PfsDowngradeRequest>,
    ) -> Result<Response<pb::PfsDowngradeResponse>, Status> {
        failover::downgrade(&self.replication, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pfs_links(
        &self,
        req: Request<pb::PfsLinksRequest>,
    ) -> Result<Response<pb::PfsLinksResponse>, Status> {
        failover::links(&self.engine, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pair_resync(
        &self,
        req: Request<pb::PairResyncRequest>,
    ) -> Result<Response<pb::PairResyncResponse>, Status> {
        pairing::resync(&self.replication, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pfs_resync_reset(
        &self,
        req: Request<pb::PfsResyncResetRequest>,
    ) -> Result<Response<pb::PfsResyncResetResponse>, Status> {
        pairing::resync_reset(&self.replication, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pfs_rollback(
        &self,
        req: Request<pb::PfsRollbackRequest>,
    ) -> Result<Response<pb::PfsRollbackResponse>, Status> {
        failover::rollback(&self.engine, &self.replication, req.into_inner())
            .await
            .map(Response::new)
    }
}
