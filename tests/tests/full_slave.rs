//! End-to-end full devices. A PFS on a full device refuses new writes with a clear error (the
//! filler below is a master PFS). A slave whose device is full stops taking its master's
//! changes with a clear state on both nodes (`slave-full` in `replctl status`, the
//! `repld_replication_slave_full` metric), the master keeps committing, and the slave holds a
//! state the master had (nothing half-applied), also after a SIGKILL of its node. Once space is
//! freed on the slave's node (the filler PFS destroyed, its segments given back by space
//! reclaim), the stream resumes by itself, with no command, and the slave matches the master.

use std::fs;

use anyhow::{Context, Result, ensure};
use repl_tests::cluster::{CLI_TIMEOUT, Cluster};
use repl_tests::node::{NodeOptions, run_output};
use serde_json::Value;

/// Distinct bytes for every `seed` (content is deduplicated by hash, so repeats take no space).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `replctl put` of `data` at `target`: its output, success or not.
fn try_put(c: &Cluster, data: &[u8], target: &str) -> Result<std::process::Output> {
    let file = c.work.path().join("payload");
    fs::write(&file, data)?;
    run_output(&mut c.replctl(&[&"put", &file, &target]), CLI_TIMEOUT)
}

fn put(c: &Cluster, data: &[u8], target: &str) -> Result<()> {
    let out = try_put(c, data, target)?;
    ensure!(out.status.success(), "put {target}: {out:?}");
    Ok(())
}

fn wait_slave_full(c: &Cluster) -> Result<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let row = c.slave_row("node2", "data")?;
        if row["state"] == "slave-full" {
            return Ok(row);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the slave never said it is full: {row}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The value of the `repld_replication_slave_full` line for `role` on node `i`.
fn slave_full_metric(c: &mut Cluster, i: usize, role: &str) -> Result<String> {
    let (_, metrics) = c.node(i).metrics_get("/metrics")?;
    metrics
        .lines()
        .find(|l| {
            l.starts_with("repld_replication_slave_full{")
                && l.contains(&format!("role=\"{role}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
        .with_context(|| format!("no repld_replication_slave_full for {role} on node{i}"))
}

#[test]
fn a_full_slave_stops_with_a_clear_state_while_the_master_keeps_going() -> Result<()> {
    // node2's image: 32 MiB, seven 4 MiB segments, one kept for deletes. Its reclaim worker
    // looks every second instead of every 30 s, so that the test need not wait.
    let mut c = Cluster::start(2, |i| NodeOptions {
        device_size: if i == 2 { "32MiB" } else { "256MiB" }.to_owned(),
        extra_config: if i == 2 {
            "[reclaim]\ncheck_interval = \"1s\"\n".to_owned()
        } else {
            String::new()
        },
        ..NodeOptions::default()
    })?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    put(&c, &pattern(1, 300_000), "node1:data/first")?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    ensure!(slave_full_metric(&mut c, 1, "master")? == "0");
    ensure!(slave_full_metric(&mut c, 2, "slave")? == "0");

    // Another PFS on the slave's node fills its device; a write that does not fit is refused
    // with an error that says what happened and what to do.
    c.ok(&[&"pfs", &"create", &"node2:filler"])?;
    let mut n = 0;
    let refusal = loop {
        n += 1;
        ensure!(n < 100, "node2's device never filled");
        let out = try_put(
            &c,
            &pattern(100 + n, 1 << 20),
            &format!("node2:filler/f{n}"),
        )?;
        if !out.status.success() {
            break out;
        }
    };
    let stderr = String::from_utf8_lossy(&refusal.stderr);
    ensure!(
        refusal.status.code() == Some(1)
            && stderr.contains("device full")
            && stderr.contains("segments are in use")
            && stderr.contains("free space"),
        "a full device refuses clearly: {refusal:?}"
    );

    // The master writes more than fits on the slave: its own commits succeed.
    for i in 0..3 {
        put(
            &c,
            &pattern(1000 + i, 1 << 20),
            &format!("node1:data/more{i}"),
        )?;
    }
    let row = c.wait_pairing("node1", "node2:data", "the slave-full state", |r| {
        r["state"] == "slave-full"
    })?;
    let err = row["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.contains("slave device full") && err.contains("segments are in use"),
        "the master says why: {row}"
    );
    let slave = wait_slave_full(&c)?;
    ensure!(
        slave["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("device full")),
        "the slave says why: {slave}"
    );
    ensure!(slave_full_metric(&mut c, 1, "master")? == "1");
    ensure!(slave_full_metric(&mut c, 2, "slave")? == "1");
    let human = c.ok(&[&"status", &"node2"])?;
    ensure!(
        human.contains("slave-full") && human.contains("until space is freed here"),
        "{human}"
    );

    // The master keeps going; the slave holds a state the master had, whole.
    put(&c, b"still committing", "node1:data/g")?;
    c.verify_match("node1:data", "node2:data", false)?;
    let master = c.pairing("node1", "node2:data")?;
    ensure!(
        master["synced_tid"] != master["head_tid"],
        "the slave lags: {master}"
    );

    // A crash of the slave's node changes nothing: it reports the same stop again.
    let reconnects = c.pairing("node1", "node2:data")?["reconnects"]
        .as_u64()
        .context("reconnects")?;
    c.node(2).kill()?;
    c.node(2).launch()?;
    c.wait_pairing("node1", "node2:data", "slave-full after the restart", |r| {
        r["state"] == "slave-full" && r["reconnects"].as_u64() > Some(reconnects)
    })?;
    wait_slave_full(&c)?;
    put(&c, b"and still", "node1:data/g")?;
    c.verify_match("node1:data", "node2:data", true)?;

    // Free space on the slave's node: destroy the filler. Reclaim gives its segments back, and
    // the stream resumes by itself; no command touches the pairing.
    c.ok(&[&"pfs", &"destroy", &"node2:filler", &"--yes"])?;
    c.wait_pairing(
        "node1",
        "node2:data",
        "streaming again after space was freed",
        |r| r["state"] == "streaming" && r["synced_tid"] == r["head_tid"],
    )?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", true)?;
    ensure!(slave_full_metric(&mut c, 1, "master")? == "0");
    ensure!(slave_full_metric(&mut c, 2, "slave")? == "0");
    ensure!(
        c.slave_row("node2", "data")?["state"] != "slave-full",
        "the slave still says it is full"
    );
    Ok(())
}
