//! The space reclaim worker: gives back the space of pruned and deleted data.
//!
//! Every `check_interval` it asks the engine where the device's bytes go
//! ([`Engine::space_usage`], which also feeds the metrics and `replctl pfs status`). Reclaim is
//! **due** when the reclaimable bytes exceed `threshold_percent` of the used bytes, or free
//! space is below `min_free_percent` of the device (and there is something to reclaim). While it
//! is due, the worker runs [`Engine::reclaim_step`]s of [`STEP_BYTES`] each, paced by a token
//! bucket at `rate` bytes per second (counted on the bytes each step reads), until the estimate
//! drops below half the threshold. Each step is a short piece of work on the engine's writer
//! thread between ordinary commits, so writers and replication see no pause.
//!
//! The worker has the shape of the prune worker: work, wait for work, watch for shutdown. A step
//! under way finishes before it returns (each step is durable by itself; a pass that is cut
//! short is taken up again at the next start).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{Quota, RateLimiter};
use repld_engine::Engine;
use tokio_util::sync::CancellationToken;

use crate::config::ReclaimConfig;
use crate::service::blocking;

/// Bytes of the cleaned segment one step reads at most.
pub const STEP_BYTES: u64 = 1 << 20;

/// Whether reclaim is due for this usage and device, by the thresholds of `cfg`.
pub fn due(cfg: &ReclaimConfig, space: &repld_engine::SpaceInfo, reclaimable: u64) -> bool {
    if reclaimable < space.segment_bytes {
        return false;
    }
    let used = space.used_bytes().max(1);
    let free_low =
        space.free_bytes() * 100 < space.device_bytes.max(1) * u64::from(cfg.min_free_percent);
    reclaimable * 100 > used * u64::from(cfg.threshold_percent) || free_low
}

/// Runs until `token` is cancelled.
pub async fn worker(
    engine: Engine,
    cfg: ReclaimConfig,
    token: CancellationToken,
) -> anyhow::Result<()> {
    // The usage estimate runs even with reclaim off: metrics and `pfs status` show it.
    let interval = cfg.check_interval.get().max(Duration::from_secs(1));
    let kib_per_sec = (cfg.rate.bytes() / 1024).clamp(1, u64::from(u32::MAX)) as u32;
    let step_kib = (STEP_BYTES / 1024) as u32;
    let quota = Quota::per_second(NonZeroU32::new(kib_per_sec).expect("clamped to at least 1"))
        .allow_burst(NonZeroU32::new(step_kib).expect("non-zero"));
    let limiter = RateLimiter::direct(quota);
    if !cfg.enabled {
        tracing::info!("space reclaim is off (reclaim.enabled = false)");
    }
    loop {
        let usage = {
            let engine = engine.clone();
            blocking(move || engine.space_usage()).await
        };
        let mut estimate = match usage {
            Ok(u) => u.reclaimable_bytes,
            Err(e) => {
                tracing::warn!(error = %e.message(), "space reclaim: cannot work out the device's usage; trying again later");
                0
            }
        };
        let space = engine.space();
        if cfg.enabled && due(&cfg, &space, estimate) {
            tracing::info!(
                reclaimable = estimate,
                used = space.used_bytes(),
                free = space.free_bytes(),
                "space reclaim starts"
            );
            let stop_below = space.used_bytes() * u64::from(cfg.threshold_percent) / 200;
            let mut freed = 0u64;
            loop {
                // Pace by the bytes a step may read: at most STEP_BYTES.
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    r = limiter.until_n_ready(NonZeroU32::new(step_kib).expect("non-zero")) => {
                        if r.is_err() {
                            anyhow::bail!("the reclaim rate cannot admit a step of {STEP_BYTES} bytes");
                        }
                    }
                }
                let step = {
                    let engine = engine.clone();
                    blocking(move || engine.reclaim_step(STEP_BYTES)).await
                };
                let step = match step {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e.message(), "space reclaim step failed; trying again later");
                        break;
                    }
                };
                if step.freed_segments > 0 {
                    freed += step.freed_segments;
                    estimate = estimate
                        .saturating_sub(space.segment_bytes * step.freed_segments)
                        .saturating_add(step.copied_bytes);
                }
                if step.idle || (!step.in_pass && estimate <= stop_below) {
                    break;
                }
            }
            tracing::info!(segments = freed, "space reclaim pauses");
            continue;
        }
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repld_engine::{At, Attrs, EntryPath, PfsName, PruneOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_gives_back_pruned_space_and_stops_at_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts =
            repld_engine::EngineOptions::new(dir.path().join("dev.img"), dir.path().join("index"));
        opts.create = Some(repld_engine::FormatOptions {
            force: false,
            segment_size: Some(4 << 20),
            create_size: Some(64 << 20),
        });
        let e = Engine::open(opts).expect("open");
        let pfs = PfsName::new("data").expect("name");
        e.create_pfs(&pfs, repld_engine::PfsOptions::default())
            .expect("create");
        e.set_retention(&pfs, "0s".parse().expect("policy"))
            .expect("retention");
        let path = EntryPath::new("f").expect("path");
        let mut last = Vec::new();
        for i in 0..24u8 {
            last = vec![i; 2 << 20];
            let mut tx = e.begin(&pfs).expect("begin");
            tx.put_bytes(&path, Attrs::now(0o644), &last).expect("put");
            tx.commit().expect("commit");
        }
        e.prune(&pfs, PruneOptions::now()).expect("prune");
        let used_before = e.space().used_bytes();
        let cfg = ReclaimConfig {
            check_interval: crate::config::HumanDuration::secs(1),
            ..ReclaimConfig::default()
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(worker(e.clone(), cfg, token.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while e.space().used_bytes() > used_before / 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker gave back the space of the pruned versions"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            e.last_space_usage().is_some(),
            "the worker estimated the usage"
        );
        assert!(!task.is_finished(), "the worker runs until shutdown");
        token.cancel();
        task.await.expect("joins").expect("a clean stop");
        assert_eq!(e.read_file(&pfs, &path, &At::Head).expect("read"), last);
    }

    fn space(used_segments: u64) -> repld_engine::SpaceInfo {
        repld_engine::SpaceInfo {
            device_bytes: 100 << 20,
            segment_bytes: 4 << 20,
            segments_total: 25,
            segments_used: used_segments,
            reclaimable_bytes: 0,
        }
    }

    #[test]
    fn reclaim_is_due_past_the_threshold_or_when_free_space_is_low() {
        let cfg = ReclaimConfig::default();
        // 40 MiB used, 25% is 10 MiB.
        assert!(!due(&cfg, &space(10), 8 << 20));
        assert!(due(&cfg, &space(10), 12 << 20));
        // Less than a segment is never worth a pass.
        assert!(!due(&cfg, &space(24), 3 << 20));
        // 96 MiB used of 100: free space is low, so a little reclaimable space is enough.
        assert!(due(&cfg, &space(24), 5 << 20));
    }
}
