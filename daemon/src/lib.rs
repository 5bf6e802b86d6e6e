//! The repld node daemon: owns the devices, serves the gRPC services, supervises replication.
//!
//! `main` parses flags ([`cli`]), sets up tracing and calls [`run`] with a [`CancellationToken`]
//! that SIGTERM/SIGINT cancel ([`signals`]). Tests call [`run`], or [`Daemon::bind`] +
//! [`Daemon::run`] to learn the bound port, with `listen = "127.0.0.1:0"`.
//!
//! Modules:
//! - [`config`]: the TOML config (`Config`), sizes and durations, validation naming each field.
//! - [`cli`]: the `repld` subcommands, flag overrides, `check-config`.
//! - [`server`]: listeners (mutual TLS TCP, admin Unix socket 0600), the router ([`Services`]),
//!   health and reflection, limits, the daemon's life from bind to drained shutdown ([`Daemon`]).
//! - [`tls`]: the rustls server config from PEM files, TLS handshakes, certificate identities.
//! - [`auth`]: [`PeerIdentity`] of each caller, admin authorization over TCP.
//! - [`supervisor`]: essential tasks whose death stops the daemon with a non-zero exit.
//! - [`systemd`]: `READY=1`, `STOPPING=1`, watchdog pings.
//! - [`signals`]: SIGTERM and SIGINT.
//!
//! - [`node`]: opening the storage engine from the config; `repld format` and `repld fsck`.
//! - [`service`]: the Storage and Admin gRPC services over the engine.
//! - [`replication`]: the pairings this node feeds and accepts, and the Replication service.
//! - [`retention`]: `replctl prune` (with the slaves' holds) and the scheduled prune worker.
//! - [`reclaim`]: the space reclaim worker, which gives back the space of pruned and deleted data.
//! - [`metrics`]: the Prometheus endpoint (`/metrics`, `/healthz`) on `metrics_listen`.
//!
//! [`run`] opens the engine, registers its services on [`Services`] (one line each), and closes
//! the engine with [`Daemon::on_shutdown`] once the servers have drained; long-lived work (the
//! replication supervisor) goes in with [`Daemon::add_essential`].

pub mod auth;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod node;
pub mod reclaim;
pub mod replication;
pub mod retention;
pub mod server;
pub mod service;
pub mod signals;
pub mod supervisor;
pub mod systemd;
pub mod tls;

pub use auth::PeerIdentity;
pub use config::Config;
pub use server::{Daemon, Services};
pub use supervisor::EssentialTaskFailed;
pub use tokio_util::sync::CancellationToken;

/// Runs a node with `config` until `shutdown` is cancelled, then drains, flushes and returns.
/// Returns an error if start-up fails (with the setting at fault named), if an essential task
/// dies, or if flushing fails; the caller exits non-zero then.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    use repl_proto::pb::{
        admin_server::AdminServer, replication_server::ReplicationServer,
        storage_server::StorageServer,
    };

    let engine = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || node::open_engine(&config)).await??
    };
    let device = node::device(&config)?.path.clone();
    let mut services = Services::new(&config.limits);
    // Reflection describes the repld services (and health, which Services always registers).
    services.add_file_descriptor_set(repl_proto::FILE_DESCRIPTOR_SET);
    let limit = services.max_message_bytes();
    let storage = service::StorageService::new(engine.clone(), shutdown.clone());
    let replication =
        replication::Replication::start(engine.clone(), &config, shutdown.child_token()).await?;
    let admin = service::AdminService::new(
        engine.clone(),
        config.node_name.clone(),
        device,
        std::sync::Arc::clone(&replication),
    );
    let metrics_listener = metrics::bind(config.metrics_listen).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    let metrics = std::sync::Arc::new(metrics::Metrics::new(
        engine.clone(),
        std::sync::Arc::clone(&replication),
    )?);
    let receiver = replication::ReplicationService::new(
        replication.sink.clone(),
        shutdown.child_token(),
        limit,
    );
    services.add_admin_service(with_message_limits!(StorageServer::new(storage), limit));
    services.add_admin_service(with_message_limits!(AdminServer::new(admin), limit));
    services.add_peer_service(with_message_limits!(
        ReplicationServer::new(receiver),
        limit
    ));
    services.long_running("/repld.v1.Replication/");
    services.long_running("/repld.v1.Storage/Import");
    services.long_running("/repld.v1.Storage/Put");
    services.long_running("/repld.v1.Storage/Export");
    services.long_running("/repld.v1.Storage/Get");
    services.long_running("/repld.v1.Admin/Dump");
    services.long_running("/repld.v1.Admin/Restore");
    let mut daemon = Daemon::bind(config, services).await?;
    tracing::info!(metrics = %metrics_addr, "metrics on http://{metrics_addr}/metrics and /healthz");
    daemon.add_essential("metrics endpoint", move |token| {
        metrics::serve(metrics_listener, metrics, token)
    });
    {
        let (engine, replication) = (engine.clone(), std::sync::Arc::clone(&replication));
        let interval = daemon.config().retention.prune_interval.get();
        daemon.add_essential("prune worker", move |token| {
            retention::worker(engine, replication, interval, token)
        });
    }
    {
        let (engine, cfg) = (engine.clone(), daemon.config().reclaim.clone());
        daemon.add_essential("reclaim worker", move |token| {
            reclaim::worker(engine, cfg, token)
        });
    }
    // After the servers have drained: make everything durable and release the device.
    daemon.on_shutdown("engine", async move {
        tokio::task::spawn_blocking(move || engine.close())
            .await
            .map_err(|e| anyhow::anyhow!("closing the engine failed: {e}"))
    });
    daemon.run(shutdown).await
}
