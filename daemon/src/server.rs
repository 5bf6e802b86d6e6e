//! The serving machinery: listeners, the router, and the daemon's life from bind to exit.
//!
//! - [`Services`] collects the gRPC services the node serves, each registered as *admin*
//!   (Storage, Admin: over TCP only identities in `tls.admins`) or *peer* (Replication: any
//!   verified node; the handler checks per PFS). Health and reflection are added by the daemon.
//! - [`Daemon::bind`] validates the config, loads TLS, binds the TCP listener (mutual TLS, or
//!   plaintext on loopback when explicitly allowed) and the admin socket (mode 0600), and builds
//!   the router: [`crate::auth`] (identity, admin check) → [`deadline`] (`request_timeout`) →
//!   [`message_limit`] (`RESOURCE_EXHAUSTED` for oversized messages) → services.
//! - [`Daemon::run`] serves both listeners as essential tasks, tells systemd `READY=1`, and on
//!   cancellation (or when an essential task dies) stops accepting, drains calls in flight
//!   (bounded by `shutdown_timeout`), runs the shutdown hooks (engine flush/close) and returns.

pub mod deadline;
pub mod message_limit;

use std::convert::Infallible;
use std::fs;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{Stream, StreamExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;
use tracing::{debug, info, warn};

use crate::auth::{AccessPolicy, AuthorizeLayer};
use crate::config::{Config, HumanDuration, LimitsConfig, plaintext_refusal};
use crate::supervisor::{EssentialTaskFailed, Supervisor};
use crate::systemd;
use crate::tls::{ServerTls, tls_incoming};
use deadline::DeadlineLayer;
use message_limit::MessageLimitStatusLayer;

/// Applies the message size limit (`limits.max_message_bytes`) to a tonic-generated server, in
/// both directions. Generated servers have these as inherent methods, so this is a macro:
///
/// ```ignore
/// let limit = services.max_message_bytes();
/// services.add_admin_service(repld::with_message_limits!(StorageServer::new(svc), limit));
/// ```
#[macro_export]
macro_rules! with_message_limits {
    ($server:expr, $limit:expr) => {{
        let limit: usize = $limit;
        $server
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }};
}

/// The gRPC services a node serves, and how each is authorized.
///
/// Services are registered with one line each; health and reflection are added by
/// [`Daemon::bind`]. Apply the message size limit with [`with_message_limits!`].
pub struct Services {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    peer_services: Vec<&'static str>,
    long_running: Vec<String>,
    descriptor_sets: Vec<&'static [u8]>,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("names", &self.names)
            .field("peer_services", &self.peer_services)
            .field("long_running", &self.long_running)
            .finish_non_exhaustive()
    }
}

/// What a tonic-generated server is, as far as the router cares.
pub trait GrpcService:
    tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

impl Services {
    /// No services yet; limits from the config.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            peer_services: Vec::new(),
            long_running: Vec::new(),
            descriptor_sets: vec![tonic_health::pb::FILE_DESCRIPTOR_SET],
            max_message_bytes: usize::try_from(limits.max_message_bytes.bytes())
                .unwrap_or(usize::MAX),
        }
    }

    /// `limits.max_message_bytes`, for [`with_message_limits!`].
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Adds a service that over TCP only admins (`tls.admins`) may call: Storage, Admin.
    /// Callers on the admin socket may always call it.
    pub fn add_admin_service<S: GrpcService>(&mut self, svc: S) -> &mut Self {
        self.routes.add_service(svc);
        self.names.push(S::NAME);
        self
    }

    /// Adds a service that every verified peer may call: Replication. Its handlers authorize
    /// each call themselves with [`crate::auth::PeerIdentity::of`].
    pub fn add_peer_service<S: GrpcService>(&mut self, svc: S) -> &mut Self {
        self.routes.add_service(svc);
        self.names.push(S::NAME);
        self.peer_services.push(S::NAME);
        self
    }

    /// Exempts calls whose path starts with `path_prefix` (such as `/repld.v1.Replication/` or
    /// `/repld.v1.Storage/Import`) from `limits.request_timeout`.
    pub fn long_running(&mut self, path_prefix: impl Into<String>) -> &mut Self {
        self.long_running.push(path_prefix.into());
        self
    }

    /// Makes reflection describe the services in an encoded `FileDescriptorSet`
    /// (such as `repl_proto::FILE_DESCRIPTOR_SET`).
    pub fn add_file_descriptor_set(&mut self, encoded: &'static [u8]) -> &mut Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Names of the services registered so far (`package.Service`).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

type ShutdownHook = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type EssentialTask = Box<dyn FnOnce(CancellationToken) -> ShutdownHook + Send>;

/// A node with its listeners bound, ready to [`run`](Daemon::run).
pub struct Daemon {
    config: Arc<Config>,
    tcp: TcpListener,
    tcp_addr: SocketAddr,
    tls: Option<ServerTls>,
    admin: AdminSocket,
    routes: Routes,
    policy: AccessPolicy,
    long_running: Vec<String>,
    health: HealthReporter,
    service_names: Vec<&'static str>,
    essential: Vec<(String, EssentialTask)>,
    shutdown_hooks: Vec<(String, ShutdownHook)>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("tcp_addr", &self.tcp_addr)
            .field("admin_socket", &self.admin.path)
            .field("tls", &self.tls.is_some())
            .field("services", &self.service_names)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Validates `config`, loads TLS, binds the TCP listener and the admin socket, and builds the
    /// router over `services` plus health and reflection. Nothing is served until
    /// [`run`](Daemon::run). Errors say which setting is at fault and what to do.
    pub async fn bind(config: Config, mut services: Services) -> anyhow::Result<Daemon> {
        config.validate()?;
        if let Some(why) = plaintext_refusal(&config) {
            anyhow::bail!("refusing to start: tls.allow_plaintext_loopback: {why}");
        }
        let tls = if config.plaintext() {
            warn!(
                listen = %config.listen,
                "serving plaintext gRPC without TLS (tls.allow_plaintext_loopback): every local \
                 user can call every service; use only for tests"
            );
            None
        } else {
            let tls = ServerTls::load(&config.tls)?;
            match tls.identity() {
                Some(id) if id != config.node_name => warn!(
                    certificate = id,
                    node_name = %config.node_name,
                    "the node certificate's name differs from node_name; peers know this node by \
                     its certificate name"
                ),
                _ => {}
            }
            Some(tls)
        };

        fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("data_dir: cannot create {}", config.data_dir.display()))?;

        let tcp = bind_tcp(config.listen)?;
        let tcp_addr = tcp
            .local_addr()
            .context("listen: cannot read the bound address")?;
        let admin = AdminSocket::bind(&config.admin_socket)?;

        // Health: SERVING is set by `run` once everything is up.
        let (health, health_svc) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let limit = services.max_message_bytes();
        services.add_peer_service(with_message_limits!(health_svc, limit));

        let reflection = |sets: &[&'static [u8]]| {
            sets.iter()
                .fold(tonic_reflection::server::Builder::configure(), |b, set| {
                    b.register_encoded_file_descriptor_set(set)
                })
        };
        let v1 = reflection(&services.descriptor_sets)
            .build_v1()
            .context("building the reflection service (v1)")?;
        let v1alpha = reflection(&services.descriptor_sets)
            .build_v1alpha()
            .context("building the reflection service (v1alpha)")?;
        services.add_peer_service(with_message_limits!(v1, limit));
        services.add_peer_service(with_message_limits!(v1alpha, limit));

        let mut policy = AccessPolicy::new(config.node_name.clone(), config.tls.admins.clone());
        for name in &services.peer_services {
            policy.allow_peers(name);
        }

        Ok(Daemon {
            config: Arc::new(config),
            tcp,
            tcp_addr,
            tls,
            admin,
            routes: services.routes.routes().prepare(),
            policy,
            long_running: services.long_running,
            health,
            service_names: services.names,
            essential: Vec::new(),
            shutdown_hooks: Vec::new(),
        })
    }

    /// The address the TCP listener is bound to (with the real port when `listen` had port 0).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The admin socket's path.
    pub fn admin_socket(&self) -> &Path {
        &self.admin.path
    }

    /// The config the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs `hook` after the servers have drained, during shutdown: flush and close the engine
    /// here. Hooks run in reverse order of registration; an error is logged and makes the daemon
    /// exit non-zero, but later hooks still run.
    pub fn on_shutdown<F>(&mut self, name: impl Into<String>, hook: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.shutdown_hooks.push((name.into(), Box::pin(hook)));
    }

    /// Registers an essential task, started by [`run`](Daemon::run) with the shutdown token: the
    /// replication supervisor. It must run until the token is cancelled; if it fails, panics or
    /// returns early, the daemon shuts down and exits non-zero.
    pub fn add_essential<F, Fut>(&mut self, name: impl Into<String>, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.essential
            .push((name.into(), Box::new(move |token| Box::pin(task(token)))));
    }

    /// Serves until `shutdown` is cancelled or an essential task dies, then drains calls in
    /// flight (at most `shutdown_timeout`), runs the shutdown hooks and returns. Returns an
    /// error if an essential task died or a hook failed.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Daemon {
            config,
            tcp,
            tcp_addr,
            tls,
            admin,
            routes,
            policy,
            long_running,
            mut health,
            service_names,
            essential,
            shutdown_hooks,
        } = self;

        // Our own child: an essential task's death cancels it without touching the caller's token.
        let token = shutdown.child_token();
        let mut supervisor = Supervisor::new(token.clone());
        let limits = &config.limits;
        let layers = ServiceBuilder::new()
            .layer(AuthorizeLayer::new(policy))
            .layer(DeadlineLayer::new(
                limits.request_timeout.get(),
                long_running,
            ))
            .layer(MessageLimitStatusLayer)
            .into_inner();
        let server = server_builder(limits).layer(layers);

        // TCP: mutual TLS, or plaintext on loopback.
        let incoming = TcpIncoming::from(tcp)
            .with_nodelay(Some(true))
            .with_keepalive(nonzero(limits.tcp_keepalive));
        let tcp_stream = log_accept_errors(incoming, "tcp");
        let transport = if tls.is_some() {
            "mutual TLS"
        } else {
            "plaintext"
        };
        match &tls {
            Some(tls) => {
                let incoming =
                    tls_incoming(tcp_stream, tls.acceptor(), limits.handshake_timeout.get());
                let (server, routes, t) = (server.clone(), routes.clone(), token.clone());
                supervisor.spawn_essential("tcp server", async move {
                    server
                        .serve_with_incoming_shutdown(routes, incoming, t.cancelled_owned())
                        .await
                        .context("the TCP gRPC server failed")
                });
            }
            None => {
                let incoming = tcp_stream.map(Ok::<_, io::Error>);
                let (server, routes, t) = (server.clone(), routes.clone(), token.clone());
                supervisor.spawn_essential("tcp server", async move {
                    server
                        .serve_with_incoming_shutdown(routes, incoming, t.cancelled_owned())
                        .await
                        .context("the TCP gRPC server failed")
                });
            }
        }

        // The admin socket.
        let AdminSocket {
            path: admin_path,
            listener: admin_listener,
            id: admin_id,
        } = admin;
        let incoming = log_accept_errors(UnixListenerStream::new(admin_listener), "admin socket")
            .map(Ok::<_, io::Error>);
        let t = token.clone();
        supervisor.spawn_essential("admin socket server", async move {
            server
                .serve_with_incoming_shutdown(routes, incoming, t.cancelled_owned())
                .await
                .context("the admin socket server failed")
        });

        for (name, task) in essential {
            supervisor.spawn_essential(name, task(token.clone()));
        }
        if let Some(interval) = systemd::watchdog_interval() {
            supervisor.spawn(systemd::watchdog(interval, token.clone()));
        }

        health.set_service_status("", ServingStatus::Serving).await;
        for name in &service_names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        let status = format!(
            "serving on {tcp_addr} ({transport}) and {}",
            admin_path.display()
        );
        info!(
            node = %config.node_name,
            listen = %tcp_addr,
            transport,
            admin_socket = %admin_path.display(),
            services = ?service_names,
            "repld is serving"
        );
        systemd::ready(&status);

        let failure: Option<EssentialTaskFailed> = tokio::select! {
            _ = token.cancelled() => None,
            failure = supervisor.failed() => Some(failure),
        };

        systemd::stopping("draining calls in flight");
        // Tell health watchers, then end their Watch streams (dropping the status senders), so
        // that an open Watch does not hold the drain up until shutdown_timeout.
        for name in std::iter::once("").chain(service_names.iter().copied()) {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
            health.clear_service_status(name).await;
        }
        let grace = config.shutdown_timeout;
        info!(timeout = %grace, "draining calls in flight");
        if tokio::time::timeout(grace.get(), supervisor.drain())
            .await
            .is_err()
        {
            warn!(
                timeout = %grace,
                "calls still in flight after shutdown_timeout: abandoning them and closing anyway"
            );
        }

        systemd::status("flushing");
        let mut hook_error = None;
        for (name, hook) in shutdown_hooks.into_iter().rev() {
            info!(hook = %name, "running shutdown hook");
            if let Err(e) = hook.await {
                tracing::error!(hook = %name, error = format!("{e:#}"), "shutdown hook failed");
                hook_error.get_or_insert(e.context(format!("shutdown hook `{name}` failed")));
            }
        }
        remove_if_ours(&admin_path, admin_id);

        match (failure, hook_error) {
            (Some(failure), _) => Err(failure.into()),
            (None, Some(e)) => Err(e),
            (None, None) => {
                info!("repld stopped cleanly");
                Ok(())
            }
        }
    }
}

fn nonzero(d: HumanDuration) -> Option<Duration> {
    (!d.is_zero()).then(|| d.get())
}

/// The tonic server with the config's HTTP/2 limits. TCP options are set on the listener.
fn server_builder(limits: &LimitsConfig) -> Server {
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(nonzero(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout.get()))
        // Room for a replication sender's window of batches (and large uploads) in flight,
        // instead of HTTP/2's 64 KiB default.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(2 * STREAM_WINDOW))
        // A peer may send DATA frames of up to 1 MiB instead of 16 KiB: a 4 MiB batch costs the
        // receiving slave 4 frames, not 256 (its CPU for a 1 GiB initial sync: 1.77 and 1.62 s ->
        // 1.58 and 1.54 s, docs/benchmarks.md).
        .max_frame_size(Some(MAX_FRAME))
}

/// The largest HTTP/2 frame a peer may send this server.
const MAX_FRAME: u32 = 1 << 20;

/// The HTTP/2 flow-control window a stream starts with: two 4 MiB replication batches.
const STREAM_WINDOW: u32 = 8 << 20;

fn bind_tcp(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let std = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => " (is another repld running? change `listen` or stop it)",
            io::ErrorKind::AddrNotAvailable => " (no interface has that address; check `listen`)",
            io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges; use 7420)",
            _ => "",
        };
        anyhow::anyhow!("listen: cannot bind {addr}: {e}{hint}")
    })?;
    std.set_nonblocking(true)
        .context("listen: cannot make the socket non-blocking")?;
    TcpListener::from_std(std).context("listen: cannot register the socket with the runtime")
}

/// Accepted connections, with accept errors logged and skipped. After an error that is not about
/// one connection (such as running out of file descriptors) it pauses briefly rather than spin.
fn log_accept_errors<S, IO>(incoming: S, listener: &'static str) -> impl Stream<Item = IO> + Send
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: Send + 'static,
{
    incoming.filter_map(move |accepted| async move {
        match accepted {
            Ok(io) => Some(io),
            Err(e) => {
                let per_connection = matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                );
                if per_connection {
                    debug!(listener, error = %e, "accept failed");
                } else {
                    warn!(listener, error = %e, "accept failed; pausing the listener for 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None
            }
        }
    })
}

/// The admin socket: bound at its path with mode 0600, removed again at shutdown.
struct AdminSocket {
    path: PathBuf,
    listener: UnixListener,
    /// Device and inode of the socket file we created, so we never remove someone else's.
    id: (u64, u64),
}

impl AdminSocket {
    /// Binds the socket so that it is never reachable with looser permissions than 0600: it is
    /// bound inside a fresh private (0700) directory, chmodded, then renamed into place. A stale
    /// socket from an earlier run is removed first; a live one (another daemon) or a non-socket
    /// file at the path is refused.
    fn bind(path: &Path) -> anyhow::Result<AdminSocket> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&parent)
            .with_context(|| {
                format!(
                    "admin_socket: cannot create the directory {}",
                    parent.display()
                )
            })?;
        remove_stale_socket(path)?;

        let private = parent.join(format!(".repld-{}", std::process::id()));
        let tmp = private.join("s");
        let listener = if tmp.as_os_str().len() <= crate::config::MAX_SOCKET_PATH_BYTES {
            let _ = fs::remove_dir_all(&private);
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&private)
                .with_context(|| format!("admin_socket: cannot create {}", private.display()))?;
            let bound = bind_private(&tmp, path);
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_dir(&private);
            bound?
        } else {
            // The detour would not fit in a socket address; bind in place and chmod at once.
            let listener = std::os::unix::net::UnixListener::bind(path)
                .with_context(|| format!("admin_socket: cannot bind {}", path.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("admin_socket: cannot chmod {}", path.display()))?;
            listener
        };
        listener
            .set_nonblocking(true)
            .context("admin_socket: cannot make the socket non-blocking")?;
        let meta = fs::symlink_metadata(path)
            .with_context(|| format!("admin_socket: {} vanished", path.display()))?;
        Ok(AdminSocket {
            path: path.to_owned(),
            listener: UnixListener::from_std(listener)
                .context("admin_socket: cannot register the socket with the runtime")?,
            id: (meta.dev(), meta.ino()),
        })
    }
}

/// Removes the socket file at `path` if it is still the one we created.
fn remove_if_ours(path: &Path, id: (u64, u64)) {
    match fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == id => {
            if let Err(e) = fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "cannot remove the admin socket");
            }
        }
        _ => {}
    }
}

fn bind_private(tmp: &Path, path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind(tmp)
        .with_context(|| format!("admin_socket: cannot bind {}", tmp.display()))?;
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("admin_socket: cannot chmod {}", tmp.display()))?;
    fs::rename(tmp, path).with_context(|| {
        format!(
            "admin_socket: cannot move the socket into place at {}",
            path.display()
        )
    })?;
    Ok(listener)
}

fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "admin_socket: cannot inspect {}: {e}",
                path.display()
            ));
        }
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!(
            "admin_socket: {} exists and is not a socket; refusing to replace it (remove it, or \
             set admin_socket to another path)",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "admin_socket: {} is in use by a running process (another repld?); stop it, or set \
             admin_socket to another path",
            path.display()
        );
    }
    info!(path = %path.display(), "removing a stale admin socket from an earlier run");
    fs::remove_file(path)
        .with_context(|| format!("admin_socket: cannot remove the stale {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_admin_socket_is_owner_only_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/admin.sock");

        let first = AdminSocket::bind(&path).expect("binds");
        let mode = fs::metadata(&path).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        // Only the socket is left in the directory: the private detour is gone.
        let entries: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, ["admin.sock"]);

        // A live socket is refused.
        let e = AdminSocket::bind(&path).err().expect("in use");
        assert!(e.to_string().contains("in use"), "{e}");

        // A stale one (listener gone, file left behind) is replaced.
        drop(first);
        assert!(path.exists());
        let second = AdminSocket::bind(&path).expect("replaces the stale socket");
        remove_if_ours(&second.path, second.id);
        assert!(!path.exists(), "removed at shutdown");
    }

    #[tokio::test]
    async fn a_regular_file_at_the_socket_path_is_not_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.sock");
        fs::write(&path, "precious").expect("write");
        let e = AdminSocket::bind(&path).err().expect("refused");
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(fs::read_to_string(&path).expect("still there"), "precious");
    }

    #[tokio::test]
    async fn plaintext_on_a_non_loopback_address_is_refused_at_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            listen: "0.0.0.0:0".parse().expect("addr"),
            admin_socket: dir.path().join("admin.sock"),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.tls.allow_plaintext_loopback = true;
        config.resolve();
        let e = Daemon::bind(config, Services::new(&LimitsConfig::default()))
            .await
            .expect_err("refused");
        let text = format!("{e:#}");
        assert!(text.contains("tls.allow_plaintext_loopback"), "{text}");
        assert!(text.contains("loopback"), "{text}");
        assert!(
            !dir.path().join("admin.sock").exists(),
            "nothing bound before refusing"
        );
    }
}
