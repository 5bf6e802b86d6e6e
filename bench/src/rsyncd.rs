//! An `rsync --daemon` on loopback, the baseline the incremental replication is compared with.
//!
//! [`Rsyncd::start`] writes an `rsyncd.conf` into a scratch directory (no chroot, the module
//! writable and run as the current user, so it works with or without root), starts
//! `rsync --daemon --no-detach` on a free port of `127.0.0.1`, and waits until it accepts
//! connections. [`Rsyncd::push`] runs `rsync -a --stats SRC/ rsync://127.0.0.1:PORT/MODULE/` and
//! returns what `--stats` reports. The daemon is killed when the guard is dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::node;

/// The module the daemon serves.
pub const MODULE: &str = "bench";

/// Fails with what to do when `rsync` is not installed.
pub fn check_installed() -> Result<()> {
    match Command::new("rsync")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("`rsync --version` exited {s}: install rsync (scripts/setup does)"),
        Err(e) => bail!(
            "rsync is not installed ({e}); this scenario compares with an rsync daemon on \
             loopback: run scripts/setup (as root), or apt-get install rsync"
        ),
    }
}

/// A running `rsync --daemon`.
#[derive(Debug)]
pub struct Rsyncd {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

/// What `rsync --stats` reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// "Number of regular files transferred".
    pub files_transferred: u64,
    /// "Total transferred file size".
    pub bytes_transferred: u64,
    /// "Number of files" (all kinds) examined.
    pub files_examined: u64,
}

impl Rsyncd {
    /// Starts a daemon whose module [`MODULE`] is the directory `dest`, with its config and log
    /// in `dir`.
    pub fn start(dir: &Path, dest: &Path) -> Result<Rsyncd> {
        check_installed()?;
        let addr = node::free_loopback_addr()?;
        let log = dir.join("rsyncd.log");
        let conf = dir.join("rsyncd.conf");
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        std::fs::write(
            &conf,
            format!(
                "pid file = {pid}\n\
                 log file = {log}\n\
                 use chroot = false\n\
                 \n\
                 [{MODULE}]\n\
                 path = {dest}\n\
                 read only = false\n\
                 uid = {uid}\n\
                 gid = {gid}\n",
                pid = dir.join("rsyncd.pid").display(),
                log = log.display(),
                dest = dest.display(),
            ),
        )
        .with_context(|| format!("write {}", conf.display()))?;
        let child = Command::new("rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--address={}", addr.ip()))
            .arg(format!("--port={}", addr.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start rsync --daemon")?;
        let mut d = Rsyncd {
            child: Some(child),
            addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(addr).is_ok() {
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "rsync --daemon exited {status} at start; its log:\n{}",
                    d.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "rsync --daemon did not listen on {addr} within 10 s; its log:\n{}",
                    d.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The module's URL.
    pub fn url(&self) -> String {
        format!("rsync://{}/{MODULE}/", self.addr)
    }

    /// `rsync -a --stats SRC/ URL`, to completion.
    pub fn push(&self, src: &Path) -> Result<Stats> {
        let mut arg = src.as_os_str().to_owned();
        arg.push("/");
        let out = node::run(
            Command::new("rsync")
                .args(["-a", "--stats"])
                .arg(arg)
                .arg(self.url()),
        )?;
        ensure!(
            out.status.success(),
            "rsync -a {}/ {} failed ({}): {}\nthe daemon's log:\n{}",
            src.display(),
            self.url(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            self.log_text()
        );
        Ok(parse_stats(&String::from_utf8_lossy(&out.stdout)))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rsyncd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads the counts of `rsync --stats` (numbers may have thousands separators).
fn parse_stats(text: &str) -> Stats {
    let num = |line: &str| -> u64 {
        let after = line.split_once(':').map_or("", |(_, v)| v);
        let digits: String = after
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',' || *c == '.')
            .filter(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap_or(0)
    };
    let mut s = Stats::default();
    for line in text.lines() {
        if line.starts_with("Number of regular files transferred:") {
            s.files_transferred = num(line);
        } else if line.starts_with("Total transferred file size:") {
            s.bytes_transferred = num(line);
        } else if line.starts_with("Number of files:") {
            s.files_examined = num(line);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_read_with_separators() {
        let text = "\nNumber of files: 100,401 (reg: 100,000, dir: 401)\n\
                    Number of created files: 0\n\
                    Number of regular files transferred: 1,000\n\
                    Total file size: 409,600,000 bytes\n\
                    Total transferred file size: 4,096,000 bytes\n";
        let s = parse_stats(text);
        assert_eq!(s.files_transferred, 1000);
        assert_eq!(s.bytes_transferred, 4_096_000);
        assert_eq!(s.files_examined, 100_401);
    }
}
