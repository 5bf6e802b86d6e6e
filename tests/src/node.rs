//! A real `repld` process for end-to-end tests, and the binaries the tests run.
//!
//! [`TestNode`] writes a config into a temporary directory (data directory, a small image file
//! formatted on first start, an admin socket, a loopback `listen` port leased below the ephemeral
//! range (see [`crate::port`]), and TLS files made by `replctl certs init`), starts `repld run`,
//! checks the bound address in its "repld is serving" log line, and waits until the health check
//! answers SERVING on the admin socket. It can be stopped with SIGTERM and started again on the
//! same data. Dropping it kills the process.
//!
//! The binaries are those the workspace build put beside the test executable: `cargo test` and
//! `cargo nextest run --workspace` build every package's binaries into the same target
//! directory. [`bin`] finds them there (or in `$REPLD_BIN_DIR`).

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use repl_proto::{AdminClient, Endpoint, StorageClient, TlsFiles};
use tempfile::TempDir;

use crate::port::PortLease;

/// How long a node may take from spawn to SERVING (a debug build formats its image first).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown may take.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of a workspace binary (`repld`, `replctl`), built into the same target directory as
/// the running test: `target/<profile>/deps/<test>` → `target/<profile>/<name>`.
/// `$REPLD_BIN_DIR` overrides the directory.
///
/// # Panics
/// When the binary is not there: the message says how to build it.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("REPLD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test knows its own executable");
            let deps = exe.parent().expect("the test executable is in a directory");
            // Test executables are in target/<profile>/deps; binaries one level up.
            if deps.file_name().is_some_and(|n| n == "deps") {
                deps.parent()
                    .expect("deps is inside the profile directory")
                    .to_owned()
            } else {
                deps.to_owned()
            }
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "the `{name}` binary is not at {}: build it first with `cargo build --workspace` (with the \
         same CARGO_TARGET_DIR and profile as the tests), or point REPLD_BIN_DIR at it",
        path.display()
    );
    path
}

/// Runs a command to completion within `timeout`, with stdin closed; returns its output.
pub fn run_output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {what}"))?;
    // Drain the pipes on threads, so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().context("stdout is piped")?;
    let mut err = child.stderr.take().context("stderr is piped")?;
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("poll the child")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// Runs a command and fails (with its output) unless it exits 0; returns its stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = run_output(cmd, timeout)?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A CA with node and admin certificates, made by `replctl certs init`.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The directory holding `ca.pem` and `NAME.pem`/`NAME.key` for each name.
    pub dir: PathBuf,
}

impl Certs {
    /// `replctl certs init DIR --node N... --admin A...`.
    pub fn init(dir: &Path, nodes: &[&str], admins: &[&str]) -> Result<Certs> {
        let mut cmd = Command::new(bin("replctl"));
        cmd.args(["certs", "init"]).arg(dir);
        for n in nodes {
            cmd.args(["--node", n]);
        }
        for a in admins {
            cmd.args(["--admin", a]);
        }
        run_ok(&mut cmd, Duration::from_secs(30))?;
        let certs = Certs {
            dir: dir.to_owned(),
        };
        for name in nodes.iter().chain(admins) {
            ensure!(
                certs.cert(name).is_file() && certs.key(name).is_file(),
                "replctl certs init made no certificate for {name} in {}",
                dir.display()
            );
        }
        Ok(certs)
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate of `name`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// The private key of `name`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// Client TLS files for identity `who`, checking the server's certificate against `server`.
    pub fn client(&self, who: &str, server: &str) -> TlsFiles {
        TlsFiles {
            ca: self.ca(),
            cert: self.cert(who),
            key: self.key(who),
            server_name: Some(server.to_owned()),
        }
    }
}

/// What a [`TestNode`] is configured with.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// `node_name`, also its certificate's CN.
    pub name: String,
    /// `tls.admins`: the admin certificate names made with the node's certificates.
    pub admins: Vec<String>,
    /// Further certificates (not admins) to make with the same CA: other nodes.
    pub other_nodes: Vec<String>,
    /// The image file's size.
    pub device_size: String,
    /// `limits.max_message_bytes`, when set.
    pub max_message_bytes: Option<String>,
    /// Serve plaintext on loopback (`tls.allow_plaintext_loopback`) instead of mutual TLS.
    pub plaintext: bool,
    /// `shutdown_timeout`.
    pub shutdown_timeout: String,
    /// Use the certificates in this directory (made by another node's `replctl certs init`,
    /// so both share a CA) instead of making new ones.
    pub shared_certs: Option<PathBuf>,
    /// TOML appended to the config (such as a `[replication]` table).
    pub extra_config: String,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            name: "node1".to_owned(),
            admins: vec!["alice".to_owned()],
            other_nodes: vec!["node2".to_owned()],
            device_size: "256MiB".to_owned(),
            max_message_bytes: None,
            plaintext: false,
            shutdown_timeout: "20s".to_owned(),
            shared_certs: None,
            extra_config: String::new(),
        }
    }
}

/// A `repld` process on a temporary directory. Killed (SIGKILL) when dropped.
pub struct TestNode {
    dir: TempDir,
    opts: NodeOptions,
    certs: Certs,
    config: PathBuf,
    proc: Option<std::process::Child>,
    addr: Option<SocketAddr>,
    /// The listen address of every start (peers store it), reserved while the node lives.
    listen: PortLease,
    log: PathBuf,
    starts: u32,
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNode")
            .field("dir", &self.dir.path())
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestNode {
    /// Writes the config and certificates and starts the node; returns once it is SERVING.
    pub fn start(opts: NodeOptions) -> Result<TestNode> {
        let mut node = TestNode::create(opts)?;
        node.launch()?;
        Ok(node)
    }

    /// Writes the config and certificates without starting the node.
    pub fn create(opts: NodeOptions) -> Result<TestNode> {
        let dir = tempfile::Builder::new()
            .prefix("repld-e2e-")
            .tempdir()
            .context("make the node's temporary directory")?;
        let nodes: Vec<&str> = std::iter::once(opts.name.as_str())
            .chain(opts.other_nodes.iter().map(String::as_str))
            .collect();
        let admins: Vec<&str> = opts.admins.iter().map(String::as_str).collect();
        let certs = match &opts.shared_certs {
            Some(shared) => Certs {
                dir: shared.clone(),
            },
            None => Certs::init(&dir.path().join("tls"), &nodes, &admins)?,
        };
        let config = dir.path().join("repld.toml");
        let node = TestNode {
            log: dir.path().join("repld.log"),
            dir,
            opts,
            certs,
            config,
            proc: None,
            addr: None,
            listen: PortLease::take()?,
            starts: 0,
        };
        fs::write(&node.config, node.config_text()).context("write repld.toml")?;
        Ok(node)
    }

    fn config_text(&self) -> String {
        let d = self.dir.path();
        let o = &self.opts;
        let admins: Vec<String> = o.admins.iter().map(|a| format!("{a:?}")).collect();
        let mut limits = String::new();
        if let Some(m) = &o.max_message_bytes {
            limits.push_str(&format!("max_message_bytes = {m:?}\n"));
        }
        format!(
            "# Written by repl_tests::node::TestNode.\n\
             node_name = {name:?}\n\
             data_dir = {data:?}\n\
             listen = \"{listen}\"\n\
             admin_socket = {sock:?}\n\
             metrics_listen = \"127.0.0.1:0\"\n\
             log_filter = \"info\"\n\
             shutdown_timeout = {shutdown:?}\n\
             \n\
             [[devices]]\n\
             path = \"repld.img\"\n\
             size = {size:?}\n\
             format_if_missing = true\n\
             \n\
             [tls]\n\
             ca = {ca:?}\n\
             cert = {cert:?}\n\
             key = {key:?}\n\
             admins = [{admins}]\n\
             allow_plaintext_loopback = {plain}\n\
             \n\
             [limits]\n\
             {limits}\n\
             {extra}",
            name = o.name,
            listen = self.listen.addr(),
            data = d.join("data"),
            sock = d.join("admin.sock"),
            shutdown = o.shutdown_timeout,
            size = o.device_size,
            ca = self.certs.ca(),
            cert = self.certs.cert(&o.name),
            key = self.certs.key(&o.name),
            admins = admins.join(", "),
            plain = o.plaintext,
            extra = o.extra_config,
        )
    }

    /// Starts `repld run` (again) on the same config and data, and waits until it is SERVING.
    pub fn launch(&mut self) -> Result<()> {
        ensure!(self.proc.is_none(), "the node is already running");
        self.starts += 1;
        self.log = self.dir.path().join(format!("repld-{}.log", self.starts));
        let log = File::create(&self.log).context("create the node's log file")?;
        let proc = Command::new(bin("repld"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove("REPLD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("start repld")?;
        self.proc = Some(proc);
        self.addr = None;
        let deadline = Instant::now() + START_TIMEOUT;
        // The bound port is in the "repld is serving" line: `listen=127.0.0.1:PORT`.
        let addr = loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "repld exited ({status}) before serving; its log:\n{}",
                    self.log_text()
                );
            }
            let text = self.log_text();
            if let Some(line) = text.lines().find(|l| l.contains("repld is serving")) {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                    .with_context(|| format!("no listen= in the serving line: {line}"))?;
                break addr
                    .parse::<SocketAddr>()
                    .with_context(|| format!("bad listen address in: {line}"))?;
            }
            if Instant::now() >= deadline {
                bail!("repld did not say it is serving within {START_TIMEOUT:?}; its log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ensure!(
            addr == self.listen.addr(),
            "repld serves on {addr}, not on its configured {}",
            self.listen.addr()
        );
        self.addr = Some(addr);
        let endpoint = self.unix();
        let status = block_on(async move {
            let channel = endpoint.connect().await?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let resp = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            anyhow::Ok(resp.into_inner().status)
        })
        .with_context(|| {
            format!(
                "health check on the admin socket; log:\n{}",
                self.log_text()
            )
        })?;
        ensure!(
            status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "the health check answered {status}, not SERVING"
        );
        Ok(())
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.proc {
            Some(p) => p.try_wait().context("poll repld"),
            None => bail!("the node is not running"),
        }
    }

    /// The metrics endpoint's address, from the daemon's log of this start.
    pub fn metrics_addr(&self) -> Result<SocketAddr> {
        let text = self.log_text();
        let line = text
            .lines()
            .find(|l| l.contains("metrics on http://"))
            .with_context(|| format!("no metrics line in the log:\n{text}"))?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("metrics="))
            .with_context(|| format!("no metrics= in: {line}"))?
            .parse()
            .with_context(|| format!("bad metrics address in: {line}"))
    }

    /// `GET path` on the metrics endpoint: the status code and the body.
    pub fn metrics_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.metrics_addr()?, path)
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(std::process::Child::id)
    }

    /// Sends SIGTERM to the running daemon (and does not wait).
    pub fn sigterm(&self) -> Result<()> {
        let pid = self.pid().context("the node is not running")?;
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).context("pid fits i32")?)
            .context("a child's pid is positive")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("send SIGTERM to repld")
    }

    /// Waits up to `timeout` for the daemon to exit; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                self.proc = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "repld did not exit within {timeout:?}; its log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash: no shutdown, no flush. `launch` starts it again.
    pub fn kill(&mut self) -> Result<()> {
        let mut p = self.proc.take().context("the node is not running")?;
        p.kill().context("SIGKILL repld")?;
        p.wait().context("reap repld")?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit; fails unless it exited 0.
    pub fn stop(&mut self) -> Result<()> {
        self.sigterm()?;
        let status = self.wait_exit(STOP_TIMEOUT)?;
        ensure!(
            status.success(),
            "repld exited with {status} after SIGTERM; its log:\n{}",
            self.log_text()
        );
        Ok(())
    }

    /// The daemon's log (stderr) of its current or last run.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The node's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The image file.
    pub fn device_path(&self) -> PathBuf {
        self.dir.path().join("data").join("repld.img")
    }

    /// The certificates made with the node's CA.
    pub fn certs(&self) -> &Certs {
        &self.certs
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// The admin socket's path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The TCP address the daemon is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the node has been started")
    }

    /// The admin socket endpoint.
    pub fn unix(&self) -> Endpoint {
        Endpoint::Unix(self.socket())
    }

    /// The mutual TLS endpoint, as certificate `who` of the node's CA.
    pub fn https(&self, who: &str) -> Endpoint {
        self.https_with(self.certs.client(who, self.name()))
    }

    /// The mutual TLS endpoint with the given client files.
    pub fn https_with(&self, tls: TlsFiles) -> Endpoint {
        Endpoint::parse(&format!("https://{}", self.addr()), Some(tls))
            .expect("an https URL with TLS files is a valid endpoint")
    }

    /// The plaintext loopback endpoint (for a node with `plaintext`).
    pub fn http(&self) -> Endpoint {
        Endpoint::parse(&format!("http://{}", self.addr()), None)
            .expect("an http URL is a valid endpoint")
    }

    /// A `replctl` command that talks to this node over its admin socket.
    pub fn replctl(&self) -> Command {
        let mut cmd = Command::new(bin("replctl"));
        cmd.arg("--socket").arg(self.socket());
        clean_replctl_env(&mut cmd);
        cmd
    }

    /// A `replctl` command that talks to this node over mutual TLS as `who`.
    pub fn replctl_tls(&self, who: &str) -> Command {
        let mut cmd = Command::new(bin("replctl"));
        clean_replctl_env(&mut cmd);
        cmd.arg("--endpoint")
            .arg(format!("https://{}", self.addr()))
            .arg("--ca")
            .arg(self.certs.ca())
            .arg("--cert")
            .arg(self.certs.cert(who))
            .arg("--key")
            .arg(self.certs.key(who))
            .arg("--server-name")
            .arg(self.name());
        cmd
    }

    /// A `repld SUBCOMMAND --config FILE` command on this node's config.
    pub fn repld(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(bin("repld"));
        cmd.arg(subcommand).arg("--config").arg(&self.config);
        cmd.env_remove("RUST_LOG").env_remove("REPLD_CONFIG");
        cmd
    }

    /// Typed Storage client on the admin socket.
    pub async fn storage(&self) -> Result<StorageClient> {
        Ok(StorageClient::connect(&self.unix()).await?)
    }

    /// Typed Admin client on the admin socket.
    pub async fn admin(&self) -> Result<AdminClient> {
        Ok(AdminClient::connect(&self.unix()).await?)
    }
}

fn clean_replctl_env(cmd: &mut Command) {
    for var in [
        "REPLCTL_SOCKET",
        "REPLCTL_ENDPOINT",
        "REPLCTL_CA",
        "REPLCTL_CERT",
        "REPLCTL_KEY",
        "REPLCTL_SERVER_NAME",
        "REPLCTL_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    // No user config from the machine running the tests.
    cmd.env("XDG_CONFIG_HOME", "/nonexistent-replctl-test-config");
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// A runtime for a test's gRPC calls. Tests are synchronous (they wait for processes) and run
/// their async steps with `rt.block_on`; clients must be used on the runtime that made them.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// Runs one self-contained future on a fresh runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// What a node stores, as far as its API shows: every PFS (with role and head TID) and every
/// entry of each at its head. Two equal states mean that nothing stored changed in between.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredState {
    /// `pfs list`, sorted by name.
    pub pfses: Vec<repl_proto::PfsInfo>,
    /// Each PFS's recursive listing at its head.
    pub entries: std::collections::BTreeMap<String, Vec<repl_proto::Entry>>,
}

impl StoredState {
    /// Reads the state over the admin socket.
    pub async fn read(node: &TestNode) -> Result<StoredState> {
        let mut admin = node.admin().await?;
        let mut storage = node.storage().await?;
        let pfses = admin.pfs_list().await?;
        let mut entries = std::collections::BTreeMap::new();
        for p in &pfses {
            let listing = storage
                .list(repl_proto::ListRequest {
                    pfs: p.name.clone(),
                    path: repl_types::EntryPath::root(),
                    at: repl_proto::ReadAt::Head,
                    recursive: true,
                })
                .await?;
            entries.insert(p.name.to_string(), listing.entries);
        }
        Ok(StoredState { pfses, entries })
    }

    /// Fails, naming `what`, unless `now` equals `self`.
    pub fn assert_unchanged(&self, now: &StoredState, what: &str) -> Result<()> {
        ensure!(
            self == now,
            "{what} changed what the node stores:\nbefore: {self:#?}\nafter: {now:#?}"
        );
        Ok(())
    }
}

/// `GET path` over HTTP/1.0 (so the answer is never chunked): the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read the answer to GET {path}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in: {raw}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in: {head}"))?;
    Ok((code, body.to_owned()))
}
