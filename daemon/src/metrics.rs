//! The Prometheus endpoint: `GET /metrics` (text exposition format) and `GET /healthz`, plain
//! HTTP on `metrics_listen`.
//!
//! Process metrics and build info live in a `prometheus` registry. Everything else is read at
//! scrape time from where it is kept anyway (engine counters and latency histograms, device
//! space, each pairing's sender progress, each slave PFS's receiver view, the last verify), so
//! there is no second set of books to keep in step. docs/operations.md lists every metric.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder as _, Registry, TextEncoder};
use repld_engine::{Engine, HistogramSnapshot};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::replication::Replication;

/// What the endpoint reads.
pub struct Metrics {
    registry: Registry,
    engine: Engine,
    replication: Arc<Replication>,
}

impl Metrics {
    /// Metrics of `engine` and `replication`, with process metrics and build info.
    pub fn new(engine: Engine, replication: Arc<Replication>) -> anyhow::Result<Metrics> {
        let registry = Registry::new();
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("repld_build_info", "The running repld build (always 1)."),
            &["version", "commit"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("REPLD_COMMIT")])
            .set(1);
        registry.register(Box::new(build))?;
        Ok(Metrics {
            registry,
            engine,
            replication,
        })
    }

    /// Every metric family, sorted by name.
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut out = self.registry.gather();
        self.storage(&mut out);
        self.replication(&mut out);
        // A family with no series yet (no pairing, no slave) is left out, as the format wants.
        out.retain(|f| !f.get_metric().is_empty());
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }

    /// The text exposition of [`Metrics::gather`].
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Why the node is not healthy, if it is not.
    pub fn unhealthy(&self) -> Option<String> {
        self.engine
            .failure()
            .map(|why| format!("the storage engine stopped: {why}"))
    }

    fn storage(&self, out: &mut Vec<MetricFamily>) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.engine.stats();
        let none: &[(&str, &str)] = &[];
        out.push(counter(
            "repld_commits_total",
            "Transactions committed durably (local and replicated).",
            vec![(none.to_vec(), s.commits.load(Relaxed) as f64)],
        ));
        out.push(counter(
            "repld_fsyncs_total",
            "fdatasync calls on the device.",
            vec![(none.to_vec(), s.fsyncs.load(Relaxed) as f64)],
        ));
        out.push(counter(
            "repld_device_written_bytes_total",
            "Bytes written to the device log.",
            vec![(none.to_vec(), s.bytes_written.load(Relaxed) as f64)],
        ));
        out.push(counter(
            "repld_index_rebuilds_total",
            "Index rebuilds from the device log since start.",
            vec![(none.to_vec(), s.index_rebuilds.load(Relaxed) as f64)],
        ));
        out.push(counter(
            "repld_log_corruption_detected_total",
            "Corrupt records found in the device log since start.",
            vec![(none.to_vec(), s.corruption_detected.load(Relaxed) as f64)],
        ));
        out.push(histogram(
            "repld_commit_duration_seconds",
            "Local commits, from the commit call until durable.",
            vec![(none.to_vec(), s.commit_latency.snapshot())],
        ));
        out.push(histogram(
            "repld_fsync_duration_seconds",
            "fdatasync calls on the device.",
            vec![(none.to_vec(), s.fsync_latency.snapshot())],
        ));
        let space = self.engine.space();
        out.push(gauge(
            "repld_device_size_bytes",
            "Size of the device.",
            vec![(none.to_vec(), space.device_bytes as f64)],
        ));
        out.push(gauge(
            "repld_device_used_bytes",
            "Bytes of the device in segments that are in use.",
            vec![(none.to_vec(), space.used_bytes() as f64)],
        ));
        out.push(gauge(
            "repld_device_free_bytes",
            "Bytes of the device in free segments.",
            vec![(none.to_vec(), space.free_bytes() as f64)],
        ));
        out.push(gauge(
            "repld_device_reclaimable_bytes",
            "Bytes of used segments that space reclaim can give back (pruned and deleted data), as last estimated.",
            vec![(none.to_vec(), space.reclaimable_bytes as f64)],
        ));
        out.push(counter(
            "repld_reclaim_freed_segments_total",
            "Segments space reclaim freed since start.",
            vec![(none.to_vec(), s.segments_freed.load(Relaxed) as f64)],
        ));
        out.push(counter(
            "repld_reclaim_copied_bytes_total",
            "Bytes of live records space reclaim copied to the head of the log since start.",
            vec![(none.to_vec(), s.reclaim_copied_bytes.load(Relaxed) as f64)],
        ));
        let usage = self.engine.last_space_usage();
        out.push(gauge(
            "repld_pfs_used_bytes",
            "Bytes of file data the PFS's kept versions reference (a chunk shared by two PFSes counts in each), as last estimated.",
            usage
                .iter()
                .flat_map(|u| u.pfs_used.iter())
                .map(|(pfs, bytes)| (vec![("pfs", pfs.as_str())], *bytes as f64))
                .collect(),
        ));
        out.push(gauge(
            "repld_up",
            "1 while the storage engine accepts writes, 0 after a failure stopped it.",
            vec![(
                none.to_vec(),
                f64::from(u8::from(self.engine.failure().is_none())),
            )],
        ));
    }

    fn replication(&self, out: &mut Vec<MetricFamily>) {
        let rows = self.replication.pairings();
        let verifies = self.replication.verifies();
        let slaves = self.replication.slaves();

        let mut lag = Vec::new();
        let mut synced = Vec::new();
        let mut head = Vec::new();
        let mut sent_bytes = Vec::new();
        let mut sent_records = Vec::new();
        let mut sent_batches = Vec::new();
        let mut resent = Vec::new();
        let mut up = Vec::new();
        let mut reconnects = Vec::new();
        let mut throttle = Vec::new();
        let mut limit = Vec::new();
        let mut since = Vec::new();
        let mut resync = Vec::new();
        let mut hold = Vec::new();
        let mut full = Vec::new();
        for r in &rows {
            let l = vec![
                ("role", "master"),
                ("pfs", r.pairing.master_pfs.as_str()),
                ("peer", r.pairing.slave_node.as_str()),
                ("peer_pfs", r.pairing.slave_pfs.as_str()),
            ];
            let p = &r.progress;
            lag.push((l.clone(), r.lag_secs));
            synced.push((l.clone(), p.acked.map_or(0.0, |a| a.synced.as_secs_f64())));
            head.push((l.clone(), p.head.as_secs_f64()));
            sent_bytes.push((l.clone(), p.bytes_sent as f64));
            sent_records.push((l.clone(), p.records_sent as f64));
            sent_batches.push((l.clone(), p.batches_sent as f64));
            resent.push((l.clone(), p.bytes_resent as f64));
            up.push((
                l.clone(),
                f64::from(u8::from(p.state == repl_agent::StreamState::Streaming)),
            ));
            reconnects.push((l.clone(), p.reconnects as f64));
            throttle.push((l.clone(), p.throttle_wait.as_secs_f64()));
            limit.push((l.clone(), r.pairing.bandwidth.unwrap_or(0) as f64));
            resync.push((l.clone(), f64::from(u8::from(r.pairing.needs_resync))));
            full.push((
                l.clone(),
                f64::from(u8::from(p.state == repl_agent::StreamState::SlaveFull)),
            ));
            hold.push((l.clone(), r.hold.as_secs_f64()));
            since.push((
                l,
                p.last_progress.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            ));
        }
        let mut applied = Vec::new();
        let mut rejected = Vec::new();
        let mut apply_latency = Vec::new();
        for row in &slaves {
            let (up_, view) = (&row.upstream, &row.view);
            let l = vec![
                ("role", "slave"),
                ("pfs", up_.slave_pfs.as_str()),
                ("peer", up_.master_node.as_str()),
                ("peer_pfs", up_.master_pfs.as_str()),
            ];
            lag.push((l.clone(), row.lag_secs));
            synced.push((l.clone(), row.synced.as_secs_f64()));
            head.push((l.clone(), view.master_head.as_secs_f64()));
            full.push((l.clone(), f64::from(u8::from(view.full))));
            applied.push((
                vec![
                    ("pfs", up_.slave_pfs.as_str()),
                    ("peer", up_.master_node.as_str()),
                ],
                view.applied as f64,
            ));
            for reason in repl_agent::Rejection::ALL {
                let n = view.rejected.get(reason.label()).copied().unwrap_or(0);
                rejected.push((
                    vec![
                        ("pfs", up_.slave_pfs.as_str()),
                        ("peer", up_.master_node.as_str()),
                        ("reason", reason.label()),
                    ],
                    n as f64,
                ));
            }
            apply_latency.push((
                vec![
                    ("pfs", up_.slave_pfs.as_str()),
                    ("peer", up_.master_node.as_str()),
                ],
                view.apply_latency.snapshot(),
            ));
        }
        out.push(gauge(
            "repld_replication_needs_resync",
            "1 when a forced prune removed changes this slave had not confirmed: the pairing does not stream until the slave is resynced (docs/operations.md).",
            resync,
        ));
        out.push(gauge(
            "repld_replication_slave_full",
            "1 when the slave's device is full: its last apply was refused, nothing of it was written, and the master retries until space is freed on the slave (role=master: as the sender saw it; role=slave: as the slave's node saw it).",
            full,
        ));
        out.push(gauge(
            "repld_replication_hold_tid_seconds",
            "The checkpoint the slave confirmed, as seconds since the epoch: prune keeps the master's history after it.",
            hold,
        ));
        out.push(gauge(
            "repld_replication_lag_seconds",
            "How far a slave is behind: the age of the oldest change it lacks (0 in sync). From the sender (role=master) or from heartbeats (role=slave).",
            lag,
        ));
        out.push(gauge(
            "repld_replication_synced_tid_seconds",
            "The slave's synced TID, as seconds since the epoch.",
            synced,
        ));
        out.push(gauge(
            "repld_replication_head_tid_seconds",
            "The master's head TID, as seconds since the epoch.",
            head,
        ));
        out.push(counter(
            "repld_replication_sent_bytes_total",
            "Batch payload bytes sent to the slave.",
            sent_bytes,
        ));
        out.push(counter(
            "repld_replication_sent_records_total",
            "Records (chunks and changes) sent to the slave.",
            sent_records,
        ));
        out.push(counter(
            "repld_replication_sent_batches_total",
            "Batches sent to the slave.",
            sent_batches,
        ));
        out.push(counter(
            "repld_replication_resent_bytes_total",
            "Payload bytes sent again after a reconnect (sent before, never acknowledged).",
            resent,
        ));
        out.push(gauge(
            "repld_replication_stream_up",
            "1 while the pairing's stream is up.",
            up,
        ));
        out.push(counter(
            "repld_replication_reconnects_total",
            "Streams that ended and were started again.",
            reconnects,
        ));
        out.push(counter(
            "repld_replication_throttle_wait_seconds_total",
            "Time the sender waited on its bandwidth limits.",
            throttle,
        ));
        out.push(gauge(
            "repld_replication_bandwidth_limit_bytes_per_second",
            "The pairing's bandwidth limit (0 = unlimited).",
            limit,
        ));
        out.push(gauge(
            "repld_replication_seconds_since_progress",
            "Seconds since the slave last acknowledged a batch (or the stream started).",
            since,
        ));
        out.push(counter(
            "repld_replication_applied_batches_total",
            "Batches applied durably on this slave.",
            applied,
        ));
        out.push(counter(
            "repld_replication_rejected_batches_total",
            "Batches or streams this slave refused, by reason.",
            rejected,
        ));
        out.push(histogram(
            "repld_replication_apply_duration_seconds",
            "Time to apply one batch durably on this slave (the decoding and hashing done ahead of it not counted).",
            apply_latency,
        ));
        let mut last = Vec::new();
        let mut matched = Vec::new();
        for v in &verifies {
            let l = vec![
                ("pfs", v.master_pfs.as_str()),
                ("peer", v.slave_node.as_str()),
                ("peer_pfs", v.slave_pfs.as_str()),
            ];
            last.push((l.clone(), v.at_secs));
            matched.push((l, f64::from(u8::from(v.matched))));
        }
        out.push(gauge(
            "repld_verify_last_timestamp_seconds",
            "When `replctl verify` last compared this pairing (since the node started).",
            last,
        ));
        out.push(gauge(
            "repld_verify_last_match",
            "1 if the last verify of the pairing matched, 0 if it found a difference.",
            matched,
        ));
    }
}

type Labels<'a> = Vec<(&'a str, &'a str)>;

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labelled(labels: &Labels<'_>) -> proto::Metric {
    let mut sorted = labels.clone();
    sorted.sort_unstable();
    let pairs = sorted
        .iter()
        .map(|(k, v)| {
            let mut p = proto::LabelPair::default();
            p.set_name((*k).to_owned());
            p.set_value((*v).to_owned());
            p
        })
        .collect();
    proto::Metric::from_label(pairs)
}

fn gauge(name: &str, help: &str, samples: Vec<(Labels<'_>, f64)>) -> MetricFamily {
    let metrics = samples
        .iter()
        .map(|(l, v)| {
            let mut m = labelled(l);
            let mut g = proto::Gauge::default();
            g.set_value(*v);
            m.set_gauge(g);
            m
        })
        .collect();
    family(name, help, MetricType::GAUGE, metrics)
}

fn counter(name: &str, help: &str, samples: Vec<(Labels<'_>, f64)>) -> MetricFamily {
    let metrics = samples
        .iter()
        .map(|(l, v)| {
            let mut m = labelled(l);
            let mut c = proto::Counter::default();
            c.set_value(*v);
            m.set_counter(c);
            m
        })
        .collect();
    family(name, help, MetricType::COUNTER, metrics)
}

fn histogram(
    name: &str,
    help: &str,
    samples: Vec<(Labels<'_>, HistogramSnapshot)>,
) -> MetricFamily {
    let metrics = samples
        .iter()
        .map(|(l, s)| {
            let mut m = labelled(l);
            let mut h = proto::Histogram::default();
            h.set_sample_count(s.count);
            h.set_sample_sum(s.sum_secs);
            h.set_bucket(
                s.buckets
                    .iter()
                    .map(|&(bound, n)| {
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(bound);
                        b.set_cumulative_count(n);
                        b
                    })
                    .collect(),
            );
            m.set_histogram(h);
            m
        })
        .collect();
    family(name, help, MetricType::HISTOGRAM, metrics)
}

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            },
        };
        let metrics = Arc::clone(&metrics);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(respond(&metrics, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if req.method() != hyper::Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => match metrics.render() {
            Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4", text),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        "/healthz" => match metrics.unhealthy() {
            None => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Some(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

/// Binds `addr`, naming the setting when that fails.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics_listen: cannot listen on {addr}: {e}"))
}
