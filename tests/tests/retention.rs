//! End-to-end retention: `replctl pfs set --retention`, `replctl prune` (dry run, holds,
//! `--force`) on real nodes, reads at pruned TIDs, a prune that survives an index rebuild, a
//! stopped slave that a prune on its master must not leave behind, and the full resync
//! (`replctl pair resync`) of a slave that a forced prune did leave behind, also when either
//! node is killed in the middle of it.

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

/// node1's `repld_replication_needs_resync` for the slave PFS `data` is `value`.
fn needs_resync_metric_is(c: &mut Cluster, value: u8) -> Result<()> {
    let (_, metrics) = c.node(1).metrics_get("/metrics")?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("repld_replication_needs_resync{")
                && l.contains("peer_pfs=\"data\"")
                && l.ends_with(&format!(" {value}"))),
        "repld_replication_needs_resync should be {value}: {}",
        metrics
            .lines()
            .filter(|l| l.contains("needs_resync"))
            .collect::<Vec<_>>()
            .join("\n")
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
fn a_prune_keeps_what_a_stopped_slave_needs_and_force_makes_it_need_a_resync_which_the_resync_repairs()
-> Result<()> {
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
    needs_resync_metric_is(&mut c, 1)?;
    // It stays so across a restart of the master.
    c.node(1).stop()?;
    c.node(1).launch()?;
    std::thread::sleep(Duration::from_millis(200));
    ensure!(c.pairing("node1", "node2:data")?["state"] == "needs-resync");

    // The slave is back but does not stream; the master goes on committing.
    c.node(2).launch()?;
    put(&c, b"after the forced prune", "node1:data/g")?;
    ensure!(c.pairing("node1", "node2:data")?["state"] == "needs-resync");
    // The documented resync: a full copy of the master at its head, then incremental again.
    let resync = json(&c, &["pair", "resync", "node1:data", "node2:data"])?;
    ensure!(
        resync["entries"] == 10
            && resync["bytes"].as_u64() >= Some(8 * 200_000)
            && resync["replaced"] == true,
        "the resync says what it sends: {resync}"
    );
    let base = resync["base_tid"].as_str().context("base_tid")?.to_owned();
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", false)?;
    c.verify_match("node1:data", "node2:data", true)?;
    let row = c.wait_pairing("node1", "node2:data", "streaming after the resync", |r| {
        r["state"] == "streaming"
    })?;
    ensure!(
        row["needs_resync"] == false && row["resync_tid"].is_null(),
        "{row}"
    );
    let g = c.ok(&[&"cat", &"node2:data/g"])?;
    ensure!(g == "after the forced prune", "the slave's copy: {g:?}");
    // What the slave held before the copy's TID is not readable there (never a mix).
    read_says_pruned(&c, "node2:data/f", &while_down[0])?;
    ensure!(
        first_tid_lt(&while_down[0], &base),
        "the copy is newer than the old content"
    );
    needs_resync_metric_is(&mut c, 0)?;
    // And then incrementally, as any pairing.
    let sent_before = c.pairing("node1", "node2:data")?["bytes_sent"]
        .as_u64()
        .context("bytes_sent")?;
    put(&c, b"incremental again", "node1:data/g")?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", false)?;
    let sent = c.pairing("node1", "node2:data")?["bytes_sent"]
        .as_u64()
        .context("bytes_sent")?
        - sent_before;
    ensure!(sent < 10_000, "{sent} bytes for one small change");
    // A healthy pairing is not resynced by mistake.
    let refused = run_output(
        &mut c.replctl(&[&"pair", &"resync", &"node1:data", &"node2:data"]),
        CLI_TIMEOUT,
    )?;
    ensure!(
        refused.status.code() == Some(1)
            && String::from_utf8_lossy(&refused.stderr).contains("does not need a resync"),
        "{refused:?}"
    );
    Ok(())
}

/// Whether TID `a` (as `replctl` prints it) is before `b`.
fn first_tid_lt(a: &str, b: &str) -> bool {
    let n = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(u64::MAX);
    n(a) < n(b)
}

/// A forced prune, then a resync that SIGKILL interrupts on the slave's node and then on the
/// master's: the slave never reads as a mix (nothing is readable there until the copy is
/// whole), and the resync completes after each restart without being run again.
#[test]
fn a_resync_killed_on_either_node_completes_and_never_shows_a_mix() -> Result<()> {
    let mut c = Cluster::start(2, |_| NodeOptions::default())?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    for i in 0..6 {
        put(&c, &vec![b'k' + i; 300_000], &format!("node1:data/big{i}"))?;
    }
    // Slow enough (256 KiB/s, about 7 s for the copy) to be caught in the middle.
    c.ok(&[
        &"pair",
        &"node1:data",
        &"node2:data",
        &"--bandwidth",
        &"256KiB",
    ])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.ok(&[&"pfs", &"set", &"node1:data", &"--retention", &"0s"])?;
    c.node(2).stop()?;
    put(&c, b"one", "node1:data/f")?;
    put(&c, b"two", "node1:data/f")?;
    let forced = json(&c, &["prune", "node1:data", "--force"])?;
    ensure!(
        forced["needs_resync"] == serde_json::json!(["node2:data"]),
        "{forced}"
    );
    c.node(2).launch()?;
    let sent0 = c.pairing("node1", "node2:data")?["bytes_sent"]
        .as_u64()
        .context("bytes_sent")?;
    let resync = json(&c, &["pair", "resync", "node1:data", "node2:data"])?;
    let base = resync["base_tid"].as_str().context("base_tid")?.to_owned();

    let progressed = |c: &Cluster, at_least: u64| -> Result<()> {
        c.wait_pairing("node1", "node2:data", "the copy to progress", |r| {
            r["state"] == "resyncing"
                && r["resync_tid"] == base.as_str()
                && r["bytes_sent"].as_u64() >= Some(sent0 + at_least)
        })
        .map(drop)
    };
    progressed(&c, 300_000)?;
    c.node(2).kill()?;
    c.node(2).launch()?;
    // Part of the copy is there, none of it readable: the head lies before the copy's TID.
    let slave = json(&c, &["status", "node2"])?;
    let synced = slave["slaves"][0]["synced_tid"].as_str().unwrap_or("?");
    ensure!(
        first_tid_lt(synced, &base),
        "the slave is inside the copy: {slave}"
    );
    let st = json(&c, &["pfs", "status", "node2:data"])?;
    ensure!(st["files"] == 0, "status shows no content mid-copy: {st}");
    let out = run_output(&mut c.replctl(&[&"cat", &"node2:data/big0"]), CLI_TIMEOUT)?;
    ensure!(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr).contains("has been pruned")
            && out.stdout.is_empty(),
        "a slave in the middle of its copy reads nothing: {out:?}"
    );
    // The master is killed in its turn, and the copy still completes.
    progressed(&c, 900_000)?;
    c.node(1).kill()?;
    c.node(1).launch()?;
    put(&c, b"after the kills", "node1:data/f")?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", true)?;
    let row = c.pairing("node1", "node2:data")?;
    ensure!(
        row["state"] == "streaming" && row["needs_resync"] == false,
        "{row}"
    );
    Ok(())
}
