//! A real `repld` node for the scenarios that measure what an operator runs, and `replctl`
//! commands against it.
//!
//! [`Binaries::locate`] finds `repld` and `replctl` in the target directory `repl-bench` itself
//! was built into. [`Node::start`] sets a node up as `scripts/quickstart` does, without root:
//! certificates from `replctl certs init`, a config with a data directory, a sparse image file
//! formatted on first start, free loopback ports for gRPC and metrics, and an admin socket;
//! then `repld run --config FILE`, waiting until `replctl node info` answers on the socket.
//! [`Node::replctl`] gives a `replctl` command aimed at that socket (`REPLCTL_SOCKET`).
//! [`Node::stop`] sends SIGTERM and waits for a clean exit; dropping a node that was not stopped
//! kills it.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

/// How to build the binaries when they are missing.
pub const BUILD_HINT: &str = "build them: cargo build --release -p repld -p replctl";
/// Overrides the directory the binaries are looked up in.
pub const BIN_DIR_ENV: &str = "REPL_BENCH_BIN_DIR";
/// How long a node may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest path a Unix socket can be bound at.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// The `repld` and `replctl` executables.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The daemon.
    pub repld: PathBuf,
    /// The CLI.
    pub replctl: PathBuf,
}

impl Binaries {
    /// The binaries beside the running executable (`target/<profile>/`; a test executable in
    /// `target/<profile>/deps/` looks one level up), or in `$REPL_BENCH_BIN_DIR`.
    pub fn locate() -> Result<Binaries> {
        let dir = match std::env::var_os(BIN_DIR_ENV) {
            Some(d) => PathBuf::from(d),
            None => {
                let exe = std::env::current_exe().context("find the repl-bench executable")?;
                let dir = exe
                    .parent()
                    .context("the repl-bench executable is in a directory")?;
                if dir.file_name().is_some_and(|n| n == "deps") {
                    dir.parent().unwrap_or(dir).to_owned()
                } else {
                    dir.to_owned()
                }
            }
        };
        Binaries::in_dir(&dir)
    }

    /// The binaries in `dir`, which must both be there.
    pub fn in_dir(dir: &Path) -> Result<Binaries> {
        let b = Binaries {
            repld: dir.join("repld"),
            replctl: dir.join("replctl"),
        };
        let missing: Vec<&str> = [("repld", &b.repld), ("replctl", &b.replctl)]
            .into_iter()
            .filter(|(_, p)| !p.is_file())
            .map(|(n, _)| n)
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} not found in {} (the target directory repl-bench runs from, or ${BIN_DIR_ENV}): \
                 {BUILD_HINT} (with the same CARGO_TARGET_DIR as repl-bench)",
                missing.join(" and "),
                dir.display()
            );
        }
        Ok(b)
    }
}

/// A running `repld` on its own data directory.
#[derive(Debug)]
pub struct Node {
    bins: Binaries,
    dir: PathBuf,
    socket: PathBuf,
    listen: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Sets up a node in the empty directory `dir` (certificates, config, a sparse image of
    /// `device_bytes`) and starts it; returns once it answers on its admin socket.
    pub fn start(bins: &Binaries, dir: &Path, device_bytes: u64) -> Result<Node> {
        let certs = dir.join("certs");
        certs_init(bins, &certs, &["bench"], &["admin"])?;
        Node::start_with(bins, dir, "bench", &certs, device_bytes)
    }

    /// Sets up a node named `name` in the empty directory `dir`, with the certificates in
    /// `certs` (made by [`certs_init`] with `name` among its nodes and `admin` among its
    /// admins, possibly shared with other nodes), and starts it; returns once it answers on its
    /// admin socket.
    pub fn start_with(
        bins: &Binaries,
        dir: &Path,
        name: &str,
        certs: &Path,
        device_bytes: u64,
    ) -> Result<Node> {
        let socket = dir.join("admin.sock");
        ensure!(
            socket.as_os_str().len() <= MAX_SOCKET_PATH_BYTES,
            "the admin socket path {} is longer than {MAX_SOCKET_PATH_BYTES} bytes: use a shorter --dir",
            socket.display()
        );
        let listen = free_loopback_addr()?;
        let metrics = free_loopback_addr()?;
        let config = dir.join("repld.toml");
        let text = format!(
            "node_name = {name}\n\
             data_dir = {data}\n\
             listen = \"{listen}\"\n\
             admin_socket = {socket}\n\
             metrics_listen = \"{metrics}\"\n\
             log_filter = \"warn\"\n\
             \n\
             [[devices]]\n\
             path = \"repld.img\"\n\
             size = {device_bytes}\n\
             format_if_missing = true\n\
             \n\
             [tls]\n\
             ca = {ca}\n\
             cert = {cert}\n\
             key = {key}\n\
             admins = [\"admin\"]\n",
            name = serde_json::to_string(name).context("quote the node name")?,
            data = toml_path(&dir.join("data"))?,
            socket = toml_path(&socket)?,
            ca = toml_path(&certs.join("ca.pem"))?,
            cert = toml_path(&certs.join(format!("{name}.pem")))?,
            key = toml_path(&certs.join(format!("{name}.key")))?,
        );
        std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
        let replctl_config = dir.join("replctl.toml");
        std::fs::write(
            &replctl_config,
            "# empty: the node is reached through REPLCTL_SOCKET\n",
        )
        .with_context(|| format!("write {}", replctl_config.display()))?;
        let log = dir.join("repld.log");
        let log_file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new(&bins.repld)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicate the log file")?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("start {}", bins.repld.display()))?;
        let mut node = Node {
            bins: bins.clone(),
            dir: dir.to_owned(),
            socket,
            listen,
            metrics,
            log,
            child: Some(child),
        };
        node.wait_until_serving()?;
        Ok(node)
    }

    fn wait_until_serving(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child_mut()?.try_wait().context("poll repld")? {
                bail!(
                    "repld exited with {status} while starting; its log:\n{}",
                    self.log_tail()
                );
            }
            if self.socket.exists() {
                let out = run(self.replctl().args(["node", "info"]))?;
                if out.status.success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "repld did not answer on {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.socket.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A `replctl` command aimed at this node's admin socket.
    pub fn replctl(&self) -> Command {
        let mut c = Command::new(&self.bins.replctl);
        c.env("REPLCTL_SOCKET", &self.socket)
            // An empty replctl config: one of the person running the benchmark must not apply.
            .env("REPLCTL_CONFIG", self.dir.join("replctl.toml"))
            .stdin(Stdio::null());
        c
    }

    /// Runs `replctl ARGS` to completion and fails unless it exits 0.
    pub fn replctl_ok(&self, args: &[&str]) -> Result<Output> {
        let out = run(self.replctl().args(args))?;
        ensure!(
            out.status.success(),
            "replctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }

    /// The node's admin socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The loopback address its gRPC listener (mutual TLS) is bound to.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.listen
    }

    /// The node's Prometheus metrics (`GET /metrics` on `metrics_listen`), each value summed
    /// over its label sets, by name (a histogram as `NAME_sum` and `NAME_count`).
    pub fn metrics(&self) -> Result<Metrics> {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(self.metrics)
            .with_context(|| format!("connect to the metrics endpoint {}", self.metrics))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        c.read_to_string(&mut text)
            .context("read the metrics response")?;
        Ok(Metrics::parse(&text))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node's data directory (index and device image).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stops the node with SIGTERM and waits for it; fails unless it exits 0.
    pub fn stop(mut self) -> Result<()> {
        let mut child = self.child.take().context("the node was already stopped")?;
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        )
        .context("send SIGTERM to repld")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().context("wait for repld")? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "repld did not stop within {STOP_TIMEOUT:?} of SIGTERM (killed); its log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ensure!(
            status.success(),
            "repld exited with {status} after SIGTERM; its log:\n{}",
            self.log_tail()
        );
        Ok(())
    }

    fn child_mut(&mut self) -> Result<&mut Child> {
        self.child.as_mut().context("the node was stopped")
    }

    /// The end of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `replctl certs init DIR --node N... --admin A...`: a CA and a certificate for each name,
/// `DIR/NAME.pem` and `DIR/NAME.key`.
pub fn certs_init(bins: &Binaries, dir: &Path, nodes: &[&str], admins: &[&str]) -> Result<()> {
    let mut cmd = Command::new(&bins.replctl);
    cmd.args(["certs", "init"]).arg(dir);
    for n in nodes {
        cmd.args(["--node", n]);
    }
    for a in admins {
        cmd.args(["--admin", a]);
    }
    let out = run(&mut cmd)?;
    ensure!(
        out.status.success(),
        "replctl certs init failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Runs a command to completion (stdin closed), capturing its output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))
}

/// A loopback address with a port no one listens on now (the kernel picks it).
pub fn free_loopback_addr() -> Result<std::net::SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0 to find a free port")?;
    l.local_addr().context("the address of a bound socket")
}

/// A path as a TOML string (JSON string escapes are valid TOML basic-string escapes).
fn toml_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))?;
    serde_json::to_string(s).context("quote a path")
}

/// A node's metrics, by name, summed over their label sets.
#[derive(Debug, Clone, Default)]
pub struct Metrics(std::collections::HashMap<String, f64>);

impl Metrics {
    /// Reads the Prometheus text format (the HTTP header lines do not parse as samples).
    pub fn parse(text: &str) -> Metrics {
        let mut m = std::collections::HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (name_labels, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let name = name_labels.split('{').next().unwrap_or_default();
            if !name.starts_with("repld_") {
                continue;
            }
            if let Ok(v) = value.parse::<f64>() {
                *m.entry(name.to_owned()).or_insert(0.0) += v;
            }
        }
        Metrics(m)
    }

    /// A value, 0 when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// `name`'s increase from `earlier` to `self`.
    pub fn delta(&self, earlier: &Metrics, name: &str) -> f64 {
        self.get(name) - earlier.get(name)
    }
}

/// CPU time of a process and its run-queue delay, from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcCpu {
    /// Seconds on a CPU (user + system), all threads, exited ones included.
    pub cpu: f64,
    /// Seconds its live threads spent runnable but waiting for a CPU.
    pub wait: f64,
}

impl ProcCpu {
    /// Process `pid`'s, or zeros where `/proc` does not tell.
    pub fn of(pid: u32) -> ProcCpu {
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| stat_ticks(&s, 11, 12))
            .map_or(0.0, ticks_to_secs);
        let mut wait = 0.0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Some(w) = std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                {
                    wait += w as f64 / 1e9;
                }
            }
        }
        ProcCpu { cpu, wait }
    }

    /// CPU seconds of this process's children that have been waited for (`cutime + cstime`).
    pub fn children() -> f64 {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| stat_ticks(&s, 13, 14))
            .map_or(0.0, ticks_to_secs)
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &ProcCpu) -> ProcCpu {
        ProcCpu {
            cpu: self.cpu - earlier.cpu,
            wait: self.wait - earlier.wait,
        }
    }
}

/// The sum of two fields of `/proc/PID/stat`, counted from the field after the command name
/// (which may contain spaces and parentheses) as 0.
fn stat_ticks(stat: &str, a: usize, b: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(a)?.parse::<u64>().ok()? + f.get(b)?.parse::<u64>().ok()?)
}

fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_say_how_to_build_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Binaries::in_dir(dir.path()).expect_err("nothing is there");
        let msg = format!("{e:#}");
        assert!(msg.contains(BUILD_HINT), "{msg}");
        assert!(msg.contains("repld and replctl"), "{msg}");
    }

    #[test]
    fn metrics_are_summed_over_labels() {
        let m = Metrics::parse(
            "HTTP/1.0 200 OK\r\n\r\n# HELP repld_fsyncs_total x\nrepld_fsyncs_total 12\n\
             repld_replication_apply_duration_seconds_sum{pfs=\"a\"} 1.5\n\
             repld_replication_apply_duration_seconds_sum{pfs=\"b\"} 0.5\nother 3\n",
        );
        assert_eq!(m.get("repld_fsyncs_total"), 12.0);
        assert_eq!(m.get("repld_replication_apply_duration_seconds_sum"), 2.0);
        assert_eq!(m.get("other"), 0.0);
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let s = "42 (a ) b) S 1 2 3 4 5 6 7 8 9 10 111 222 333 444 20 0";
        assert_eq!(stat_ticks(s, 11, 12), Some(333));
        assert_eq!(stat_ticks(s, 13, 14), Some(777));
        assert!(ProcCpu::of(std::process::id()).cpu >= 0.0);
    }
}
