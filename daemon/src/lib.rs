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
//! Plugging the engine in happens in [`run`]: open it, register its services on [`Services`]
//! (one line each), register its flush/close with [`Daemon::on_shutdown`] and long-lived work
//! (the replication supervisor) with [`Daemon::add_essential`].

pub mod auth;
pub mod cli;
pub mod config;
pub mod server;
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
    let mut services = Services::new(&config.limits);
    // Reflection describes the repld services (and health, which Services always registers).
    services.add_file_descriptor_set(repl_proto::FILE_DESCRIPTOR_SET);

    // ENGINE HOOK: open the engine (blocking work in spawn_blocking) and register its services,
    // one line each, with the message size limit:
    //     let engine = Engine::open(&config).await?;
    //     let limit = services.max_message_bytes();
    //     services.add_admin_service(with_message_limits!(StorageServer::new(StorageSvc::new(engine.clone())), limit));
    //     services.add_admin_service(with_message_limits!(AdminServer::new(AdminSvc::new(engine.clone())), limit));
    //     services.add_peer_service(with_message_limits!(ReplicationServer::new(ReplSvc::new(engine.clone())), limit));
    //     services.long_running("/repld.v1.Replication/");
    //     services.long_running("/repld.v1.Storage/Import");
    let daemon = Daemon::bind(config, services).await?;

    // ENGINE HOOK: after the servers have drained, flush and close the engine (make `daemon` mut):
    //     daemon.on_shutdown("engine", async move { engine.close().await });
    // and supervise the replication tasks:
    //     daemon.add_essential("replication", move |token| supervisor.run(token));
    daemon.run(shutdown).await
}
