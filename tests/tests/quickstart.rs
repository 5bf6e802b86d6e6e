//! `scripts/quickstart --no-wait`, the README's first command, end to end: two nodes started
//! by the script reach a verified replica (MATCH, equal exports) and stop cleanly; and when
//! verify does not print MATCH, the script fails and still stops both nodes.
//!
//! The script runs in a temporary directory (`--dir`), never in the checkout's `.quickstart`,
//! on the binaries this test run built (`REPLD_BIN_DIR`), so it does not build anything.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use repl_tests::node::{bin, run_output};

const NODES: [&str; 2] = ["node1", "node2"];

/// The quickstart's directory; on drop, SIGKILLs any node the script left running.
struct QuickstartDir {
    dir: tempfile::TempDir,
}

impl QuickstartDir {
    fn new() -> Result<QuickstartDir> {
        Ok(QuickstartDir {
            dir: tempfile::Builder::new().prefix("repld-qs-").tempdir()?,
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("qs")
    }

    /// The pids of the nodes the script started that are still running `repld`.
    fn running_nodes(&self) -> Vec<i32> {
        NODES
            .iter()
            .filter_map(|n| fs::read_to_string(self.path().join(format!("{n}.pid"))).ok())
            .filter_map(|p| p.trim().parse::<i32>().ok())
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| {
                        let (comm, rest) = s.split_once(") ")?;
                        Some(comm.ends_with("(repld") && !rest.starts_with('Z'))
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    /// `scripts/quickstart --no-wait --dir DIR` with the binaries in `bins`.
    fn run(&self, bins: &Path) -> Result<Output> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the tests crate is inside the workspace")?
            .join("scripts/quickstart");
        let mut cmd = Command::new(script);
        cmd.args(["--no-wait", "--dir"])
            .arg(self.path())
            .env("REPLD_BIN_DIR", bins)
            .env_remove("QUICKSTART_DIR")
            .env_remove("REPLCTL_CONFIG");
        let started = Instant::now();
        let out = run_output(&mut cmd, Duration::from_secs(240))?;
        eprintln!("quickstart took {:.1?}", started.elapsed());
        Ok(out)
    }
}

impl Drop for QuickstartDir {
    fn drop(&mut self) {
        for pid in self.running_nodes() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_quickstart_brings_up_two_nodes_to_a_verified_replica_and_stops_them() -> Result<()> {
    let qs = QuickstartDir::new()?;
    let bins = bin("repld")
        .parent()
        .context("the binary is in a directory")?
        .to_owned();
    let out = qs.run(&bins)?;
    let (stdout, stderr) = text(&out);
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    ensure!(
        out.status.success(),
        "the quickstart failed ({}):\n{all}",
        out.status
    );
    let verdict = stdout
        .lines()
        .find(|l| l.starts_with("MATCH at 0x"))
        .with_context(|| format!("verify printed no MATCH:\n{all}"))?;
    ensure!(!stdout.contains("MISMATCH"), "{all}");
    let tid = verdict
        .split_whitespace()
        .nth(2)
        .context("a TID after MATCH at")?;
    for want in [
        format!("the exports of node1:data and node2:data at {tid} are byte for byte equal"),
        "the export at snapshot 'first' equals the imported tree".to_owned(),
        "data -> node2:data  streaming".to_owned(),
        "node1 exited cleanly".to_owned(),
        "node2 exited cleanly".to_owned(),
    ] {
        ensure!(stdout.contains(&want), "the output lacks {want:?}:\n{all}");
    }
    // Both nodes' metrics endpoints are named, and the master's shows the pairing.
    for n in NODES {
        ensure!(
            stdout.lines().any(
                |l| l.starts_with(&format!("{n}: http://127.0.0.1:")) && l.contains("/metrics")
            ),
            "no metrics URL for {n}:\n{all}"
        );
    }
    ensure!(
        stdout.contains("repld_replication_stream_up{"),
        "the master's metrics show no stream:\n{all}"
    );
    ensure!(
        qs.running_nodes().is_empty(),
        "nodes still run after the quickstart"
    );
    Ok(())
}

#[test]
fn the_quickstart_fails_and_stops_its_nodes_when_verify_does_not_match() -> Result<()> {
    let qs = QuickstartDir::new()?;
    // The real binaries, except that `replctl verify` reports a mismatch (and exits 0, so the
    // script's own check of the verdict is what must catch it).
    let bins = qs.dir.path().join("bin");
    fs::create_dir(&bins)?;
    std::os::unix::fs::symlink(bin("repld"), bins.join("repld"))?;
    let fake = bins.join("replctl");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = verify ]; then echo 'MISMATCH at \
             0x18ea4d58da30122e (6 entries)'; echo 'differs: /docs/notes.txt'; exit 0; fi\n\
             done\nexec {:?} \"$@\"\n",
            bin("replctl")
        ),
    )?;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755))?;

    let out = qs.run(&bins)?;
    let (stdout, stderr) = text(&out);
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    ensure!(
        !out.status.success(),
        "the quickstart succeeded despite a mismatch:\n{all}"
    );
    ensure!(
        stderr.contains("verify did not print MATCH") && stderr.contains("FAILED"),
        "the failure does not say why:\n{all}"
    );
    ensure!(
        stdout.contains("node1 exited cleanly") && stdout.contains("node2 exited cleanly"),
        "the nodes were not stopped cleanly after the failure:\n{all}"
    );
    ensure!(
        qs.running_nodes().is_empty(),
        "nodes still run after the failed quickstart"
    );
    Ok(())
}
