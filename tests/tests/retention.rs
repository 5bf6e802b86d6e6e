//! End-to-end retention: `replctl pfs set --retention`, `replctl prune` (dry run, holds,
//! `--force`) on real nodes, reads at pruned TIDs, a prune that survives an index rebuild, and a
//! stopped slave that a prune on its master must not leave behind.

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use repl_tests::cluster::{CLI_TIMEOUT, Cluster};
use repl_tests::node::{NodeOptions, run_ok, run_output};
use serde_json::Value;

/// Puts `data` at `target` and returns the commit's TID.
fn put(c: &Cluster, data: &[u8], target: &str) -> Result<String> {
    let file = c.work.path().join("payload");
    fs::write(&file, data)?;
    let out = c.ok(&[&"--json", &"put", &file, &target])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["tid"].as_str().context("put's TID")?.to_owned())
}

fn json(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = c.ok_str(&all)?;
    serde_json::from_str(&out).with_context(|| format!("{args:?}: {out}"))
}

/// `replctl cat TARGET@TID` fails with "pruned" (exit 1) rather than showing anything.
fn read_says_pruned(c: &Cluster, target: &str, tid: &str) -> Result<()> {
    let out = run_output(
        &mut c.replctl(&[&"cat", &format!("{target}@{tid}")]),
        CLI_TIMEOUT,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && stderr.contains("has been pruned") && out.stdout.is_empty(),
        "a read of {target} at pruned {tid}: {:?} {stderr} {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

fn pruned_of(v: &Value) -> usize {
    v["pruned"].as_array().map_or(0, Vec::len)
}

#[test]
fn prune_applies_the_policy_reads_say_pruned_and_an_index_rebuild_agrees() -> Result<()> {
    let mut c = Cluster::start(1, |_| NodeOptions::default())?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    let refused = run_output(
        &mut c.replctl(&[&"pfs", &"set", &"node1:data", &"--retention", &"1d,2d:1d"]),
        CLI_TIMEOUT,
    )?;
    ensure!(
        refused.status.code() == Some(2)
            && String::from_utf8_lossy(&refused.stderr).contains("must be longer than"),
        "a contradictory policy is refused: {refused:?}"
    );
    let tids: Vec<String> = (0..4)
        .map(|i| put(&c, format!("version {i}").as_bytes(), "node1:data/f"))
        .collect::<Result<_>>()?;
    let snap = &tids[1];
    c.ok(&[
        &"snapshot",
        &"create",
        &format!("node1:data@{snap}"),
        &"keep",
    ])?;

    // The default keeps everything; a dry run of a `0s` policy names what would go.
    let none = json(&c, &["prune", "node1:data"])?;
    ensure!(none["commits"] == 0, "forever prunes nothing: {none}");
    let set = json(&c, &["pfs", "set", "node1:data", "--retention", "0s"])?;
    ensure!(set["retention"] == "0s", "{set}");
    let dry = json(&c, &["prune", "node1:data", "--dry-run"])?;
    ensure!(
        dry["dry_run"] == true && dry["commits"] == 2 && dry["bytes"].as_u64() > Some(0),
        "the dry run names the two commits neither the head nor the snapshot keeps: {dry}"
    );
    c.ok(&[&"cat", &format!("node1:data/f@{}", tids[0])])?;
    let done = json(&c, &["prune", "node1:data"])?;
    ensure!(
        done["commits"] == dry["commits"] && done["pruned"] == dry["pruned"],
        "the prune did what the dry run said: {dry} then {done}"
    );

    let check = |c: &Cluster, when: &str| -> Result<()> {
        read_says_pruned(c, "node1:data/f", &tids[0])?;
        read_says_pruned(c, "node1:data/f", &tids[2])?;
        let kept = c.ok(&[&"cat", &"node1:data/f@keep"])?;
        ensure!(kept == "version 1", "{when}: the snapshot reads {kept:?}");
        let head = c.ok(&[&"cat", &"node1:data/f"])?;
        ensure!(head == "version 3", "{when}: the head reads {head:?}");
        let history = json(c, &["history", "node1:data/f"])?;
        ensure!(
            history["versions"].as_array().map(Vec::len) == Some(2) && pruned_of(&history) == 2,
            "{when}: history keeps the two kept versions and names the pruned ranges: {history}"
        );
        let status = json(c, &["pfs", "status", "node1:data"])?;
        ensure!(
            status["retention"] == "0s" && pruned_of(&status) == 2,
            "{when}: {status}"
        );
        Ok(())
    };
    check(&c, "after the prune")?;

    let node = c.node(1);
    node.stop()?;
    run_ok(node.repld("fsck").arg("--rebuild-index"), CLI_TIMEOUT)?;
    node.launch()?;
    check(&c, "after an index rebuild")?;
    Ok(())
}

#[test]
fn a_prune_keeps_what_a_stopped_slave_needs_and_force_makes_it_need_a_resync() -> Result<()> {
    let mut c = Cluster::start(2, |_| NodeOptions::default())?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    for i in 0..8 {
        put(&c, &vec![b'a' + i; 200_000], &format!("node1:data/big{i}"))?;
    }
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", false)?;
    // Each side has its own policy.
    c.ok(&[&"pfs", &"set", &"node1:data", &"--retention", &"0s"])?;
    c.ok(&[&"pfs", &"set", &"node2:data", &"--retention", &"30d"])?;
    let slave = json(&c, &["pfs", "status", "node2:data"])?;
    ensure!(
        slave["retention"] == "30d",
        "the slave's own policy: {slave}"
    );
    let sent_before = c.pairing("node1", "node2:data")?["bytes_sent"]
        .as_u64()
        .context("bytes_sent")?;

    // While the slave is down, the master changes a file four times and prunes: the hold keeps
    // every change after the slave's checkpoint.
    c.node(2).stop()?;
    let while_down: Vec<String> = (0..4)
        .map(|i| put(&c, format!("down {i}").as_bytes(), "node1:data/f"))
        .collect::<Result<_>>()?;
    let held = json(&c, &["prune", "node1:data"])?;
    ensure!(
        held["held_commits"] == 4 && held["needs_resync"] == serde_json::json!([]),
        "the hold keeps the slave's checkpoint and the three changes after it: {held}"
    );
    ensure!(
        held["commits"].as_u64() >= Some(7),
        "what the slave confirmed is pruned: {held}"
    );
    let hold = held["hold_tid"].as_str().context("hold_tid")?;
    ensure!(
        c.pairing("node1", "node2:data")?["hold_tid"] == hold,
        "status shows the hold"
    );
    c.ok(&[&"cat", &format!("node1:data/f@{}", while_down[0])])?;

    // The slave comes back, catches up incrementally, and matches.
    c.node(2).launch()?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", false)?;
    let sent_after = c.pairing("node1", "node2:data")?["bytes_sent"]
        .as_u64()
        .context("bytes_sent")?;
    ensure!(
        sent_after - sent_before < 100_000,
        "the catch-up sent {} bytes: not incremental",
        sent_after - sent_before
    );
    // The slave kept its own history (its policy is not the master's).
    let first = c.ok(&[&"cat", &format!("node2:data/f@{}", while_down[0])])?;
    ensure!(first == "down 0", "the slave's history: {first:?}");
    // Confirmed now, the master's old changes go.
    c.wait_pairing("node1", "node2:data", "the hold to move", |r| {
        r["synced_tid"] == *while_down.last().expect("four")
    })?;
    let released = json(&c, &["prune", "node1:data"])?;
    ensure!(
        released["held_commits"] == 0 && released["commits"] == 4,
        "{released}"
    );
    read_says_pruned(&c, "node1:data/f", &while_down[0])?;

    // --force prunes what a stopped slave has not confirmed, and says who needs a resync.
    c.node(2).stop()?;
    put(&c, b"forced 0", "node1:data/f")?;
    put(&c, b"forced 1", "node1:data/f")?;
    let dry = json(&c, &["prune", "node1:data", "--dry-run", "--force"])?;
    ensure!(
        dry["needs_resync"] == serde_json::json!(["node2:data"]),
        "the dry run warns: {dry}"
    );
    ensure!(
        c.pairing("node1", "node2:data")?["needs_resync"] == false,
        "a dry run marks nothing"
    );
    let forced = json(&c, &["prune", "node1:data", "--force"])?;
    ensure!(
        forced["needs_resync"] == serde_json::json!(["node2:data"]) && forced["commits"] == 2,
        "{forced}"
    );
    let row = c.pairing("node1", "node2:data")?;
    ensure!(
        row["state"] == "needs-resync" && row["needs_resync"] == true,
        "the pairing shows it: {row}"
    );
    let (_, metrics) = c.node(1).metrics_get("/metrics")?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("repld_replication_needs_resync{")
                && l.contains("peer_pfs=\"data\"")
                && l.ends_with(" 1")),
        "the metric shows it: {}",
        metrics
            .lines()
            .filter(|l| l.contains("needs_resync"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // It stays so across a restart of the master.
    c.node(1).stop()?;
    c.node(1).launch()?;
    std::thread::sleep(Duration::from_millis(200));
    ensure!(c.pairing("node1", "node2:data")?["state"] == "needs-resync");
    Ok(())
}
