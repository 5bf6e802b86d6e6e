//! A child process under test: killed with SIGKILL when dropped, its stdout read line by line
//! on a thread, its stderr kept in a file for the failure message.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running child process. Dropping it kills it (SIGKILL) and reaps it.
pub struct Child {
    proc: Option<std::process::Child>,
    lines: Receiver<String>,
    seen: RefCell<Vec<String>>,
    stderr_path: PathBuf,
    what: String,
}

/// How a child ended when the test killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// It was still running: the SIGKILL interrupted it.
    WhileRunning,
    /// It had already exited by itself, with this status.
    AlreadyExited(ExitStatus),
}

impl Child {
    /// Starts `cmd` with stdout piped to the test and stderr written to `stderr_to`.
    pub fn spawn(mut cmd: Command, stderr_to: &Path) -> Result<Child> {
        let what = format!("{cmd:?}");
        let err =
            File::create(stderr_to).with_context(|| format!("create {}", stderr_to.display()))?;
        let mut proc = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("start {what}"))?;
        let stdout = proc.stdout.take().context("the child's stdout is piped")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Child {
            proc: Some(proc),
            lines,
            seen: RefCell::new(Vec::new()),
            stderr_path: stderr_to.to_owned(),
            what,
        })
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for the next stdout line that starts with `prefix` (skipping others). `Ok(None)`
    /// when stdout ended first (the child exited); an error after `timeout`.
    pub fn next_line(&self, prefix: &str, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.borrow_mut().push(line.clone());
                    if line.starts_with(prefix) {
                        return Ok(Some(line));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} printed no `{prefix}` line within {timeout:?}; its stderr:\n{}",
                    self.what,
                    self.stderr()
                ),
            }
        }
    }

    /// Every stdout line received so far, including those [`Child::next_line`] skipped. After
    /// [`Child::kill`], this waits (up to `timeout`) for the lines still in the pipe.
    pub fn lines(&self, timeout: Duration) -> Vec<String> {
        if self.proc.is_none() {
            let deadline = Instant::now() + timeout;
            while let Ok(line) = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                self.seen.borrow_mut().push(line);
            }
        }
        self.seen.borrow().clone()
    }

    /// Waits for a line starting with `prefix`; an error (with the child's stderr) when the child
    /// exits first.
    pub fn expect_line(&self, prefix: &str, timeout: Duration) -> Result<String> {
        match self.next_line(prefix, timeout)? {
            Some(line) => Ok(line),
            None => bail!(
                "{} exited before printing `{prefix}`; its stderr:\n{}",
                self.what,
                self.stderr()
            ),
        }
    }

    /// Kills the child with SIGKILL (what `std::process::Child::kill` sends on Unix) and reaps it.
    pub fn kill(&mut self) -> Result<Killed> {
        let mut proc = self
            .proc
            .take()
            .context("the child was already killed or waited for")?;
        if let Some(status) = proc.try_wait().context("poll the child")? {
            return Ok(Killed::AlreadyExited(status));
        }
        proc.kill().context("SIGKILL the child")?;
        proc.wait().context("reap the child")?;
        Ok(Killed::WhileRunning)
    }

    /// Waits up to `timeout` for the child to exit by itself; kills it and fails after that.
    pub fn wait(mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut proc = self.proc.take().context("the child was already killed")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = proc.try_wait().context("poll the child")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = proc.kill();
                let _ = proc.wait();
                bail!(
                    "{} did not finish within {timeout:?}; its stderr:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the child to exit and fails unless it exited with status 0.
    pub fn wait_success(self, timeout: Duration) -> Result<()> {
        let what = self.what.clone();
        let path = self.stderr_path.clone();
        let status = self.wait(timeout)?;
        if !status.success() {
            bail!(
                "{what} failed ({status}); its stderr:\n{}",
                std::fs::read_to_string(path).unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.kill();
            let _ = proc.wait();
        }
    }
}
