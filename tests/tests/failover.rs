//! Failover end to end, with real `repld` processes over mutual TLS: a slave upgraded after its
//! master is killed, the old master downgraded and fed back only what it lacks (prefix case), a
//! diverged old master refused with the TIDs named and rolled back on request, and split brain
//! (a second master with the same shared UUID) refused by the slave.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use repl_tests::cluster::{CLI_TIMEOUT, Cluster};
use repl_tests::node::{NodeOptions, run_output};
use repl_tests::tree::{self, TreeBuilder};
use serde_json::Value;

/// A tree of `files` incompressible files of `each` bytes.
fn load(c: &Cluster, target: &str, files: usize, each: usize) -> Result<()> {
    let src = c
        .work
        .path()
        .join(format!("src-{}", target.replace(':', "-")));
    let mut t = TreeBuilder::new(&src, 11)?;
    t.dir("d", 0o755)?;
    for i in 0..files {
        t.file(&format!("d/f{i:02}"), each, 0o644)?;
    }
    t.finish()?;
    c.ok(&[&"import", &src, &target])?;
    Ok(())
}

/// `replctl put` of `len` distinct bytes to `target` (one commit: one chunk, one change);
/// returns the commit's TID.
fn put(c: &Cluster, target: &str, seed: u8, len: usize) -> Result<String> {
    let f = c.work.path().join(format!("put-{seed}"));
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(&f, data)?;
    let out = c.ok(&[&"--json", &"put", &f, &target])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["tid"].as_str().context("put's TID")?.to_owned())
}

/// A PFS's row in `pfs list --json` on its node.
fn pfs_row(c: &Cluster, node: &str, pfs: &str) -> Result<Value> {
    let out = c.ok(&[&"--json", &"pfs", &"list", &node])?;
    let v: Value = serde_json::from_str(&out)?;
    v["pfses"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == pfs))
        .cloned()
        .with_context(|| format!("no {pfs} on {node}: {out}"))
}

fn head(c: &Cluster, node: &str, pfs: &str) -> Result<String> {
    Ok(pfs_row(c, node, pfs)?["head_tid"]
        .as_str()
        .context("head TID")?
        .to_owned())
}

/// Runs replctl expecting a failure; returns its stderr.
fn fails(c: &Cluster, args: &[&str]) -> Result<String> {
    let argv: Vec<&dyn AsRef<std::ffi::OsStr>> = args
        .iter()
        .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
        .collect();
    let out = run_output(&mut c.replctl(&argv), CLI_TIMEOUT)?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!out.status.success(), "{args:?} succeeded; stderr: {err}");
    Ok(err)
}

/// `pfs upgrade` without --force: refused while the old master was heard from lately, then
/// accepted once it has been silent for the receiving window. Returns the upgrade's output.
fn upgrade_once_silent(c: &Cluster, target: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run_output(&mut c.replctl(&[&"pfs", &"upgrade", &target]), CLI_TIMEOUT)?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        ensure!(
            err.contains("still receiving"),
            "upgrade refused for another reason: {err}"
        );
        if Instant::now() > deadline {
            bail!("the upgrade was still refused after 30 s: {err}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until the pairing has acknowledged `tid` and the master has nothing more to send.
fn synced_to(c: &Cluster, master_node: &str, slave: &str, tid: &str) -> Result<Value> {
    c.wait_pairing(master_node, slave, "the slave to reach the head", |r| {
        r["synced_tid"] == tid && r["state"] == "streaming"
    })
}

#[test]
fn failover_and_fail_back_send_only_the_new_tids() -> Result<()> {
    let mut c = Cluster::start(2, |_| NodeOptions::default())?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    load(&c, "node1:data", 8, 256 << 10)?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    let initial = c.pairing("node1", "node2:data")?;
    ensure!(initial["bytes_sent"].as_u64() > Some(2 << 20), "{initial}");
    let synced = head(&c, "node2", "data")?;

    // Unplanned failover: the master dies; its slave refuses to become a master while the
    // master was heard from lately, then becomes one at its synced TID.
    c.node(1).kill()?;
    let err = fails(&c, &["pfs", "upgrade", "node2:data"])?;
    ensure!(
        err.contains("still receiving") && err.contains("--force"),
        "{err}"
    );
    let out = upgrade_once_silent(&c, "node2:data")?;
    ensure!(
        out.contains("master at its synced TID") && out.contains(&synced),
        "{out}"
    );
    ensure!(out.contains("nothing partly received was dropped"), "{out}");
    ensure!(pfs_row(&c, "node2", "data")?["role"] == "master");

    // The new master takes writes: three commits of one chunk each.
    let mut last = String::new();
    for i in 0..3u8 {
        last = put(&c, &format!("node2:data/new-{i}"), i, 3000 + usize::from(i))?;
    }

    // The old master comes back and is downgraded; its pairing halts, visibly.
    c.node(1).launch()?;
    let out = c.ok(&[&"pfs", &"downgrade", &"node1:data"])?;
    ensure!(
        out.contains("read-only slave") && out.contains("node2:data"),
        "{out}"
    );
    let halted = c.pairing("node1", "node2:data")?;
    ensure!(halted["state"] == "downgraded", "{halted}");
    let err = fails(&c, &["mkdir", "node1:data/x"])?;
    ensure!(err.contains("slave"), "{err}");

    // Fail-back: the old master's history is a prefix of the new one, so only the three new
    // commits travel (3 chunks + 3 changes), and the two verify equal.
    c.ok(&[&"pair", &"node2:data", &"node1:data"])?;
    c.wait_sync("node2:data", "node1:data")?;
    let row = synced_to(&c, "node2", "node1:data", &last)?;
    ensure!(row["records_sent"].as_u64() == Some(6), "{row}");
    ensure!(row["bytes_sent"].as_u64() < Some(64 << 10), "{row}");
    ensure!(row["bytes_resent"].as_u64() == Some(0), "{row}");
    c.verify_match("node2:data", "node1:data", true)?;
    // The halted pairing still sent nothing (node2:data is a master, it would refuse anyway).
    let halted = c.pairing("node1", "node2:data")?;
    ensure!(halted["state"] == "downgraded", "{halted}");
    tree::make_writable(c.work.path());
    Ok(())
}

#[test]
fn a_diverged_old_master_is_refused_with_the_tids_and_rolled_back_on_request() -> Result<()> {
    let mut c = Cluster::start(2, |_| NodeOptions::default())?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    load(&c, "node1:data", 4, 64 << 10)?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    let common = head(&c, "node2", "data")?;

    // The slave goes away; the master commits twice more, which never reach it, and dies.
    c.node(2).kill()?;
    let lost_first = put(&c, "node1:data/lost-a", 1, 5000)?;
    let lost_last = put(&c, "node1:data/lost-b", 2, 5000)?;
    c.node(1).kill()?;

    // The slave is upgraded (no master heard since its restart) and takes writes.
    c.node(2).launch()?;
    c.ok(&[&"pfs", &"upgrade", &"node2:data"])?;
    let new_first = put(&c, "node2:data/new-a", 3, 4000)?;
    let new_last = put(&c, "node2:data/new-b", 4, 4000)?;

    c.node(1).launch()?;
    c.ok(&[&"pfs", &"downgrade", &"node1:data"])?;
    let versions = c.versions("node1:data")?;

    // The reverse pairing is refused, naming the last common TID and both diverging ranges.
    let err = fails(&c, &["pair", "node2:data", "node1:data"])?;
    for (what, tid) in [
        ("the last common TID", &common),
        ("the target's first diverging TID", &lost_first),
        ("the target's last diverging TID", &lost_last),
        ("the master's first diverging TID", &new_first),
        ("the master's last diverging TID", &new_last),
    ] {
        ensure!(
            err.contains(tid.as_str()),
            "{what} {tid} is not named: {err}"
        );
    }
    ensure!(
        err.contains("--rollback") && err.contains("replctl export node1:data@"),
        "{err}"
    );
    ensure!(c.versions("node1:data")? == versions, "the refusal wrote");
    ensure!(
        c.status("node2")?["pairings"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "a refused pairing was stored"
    );

    // With --rollback the target loses its two diverging commits and takes the new master's.
    let out = run_output(
        &mut c.replctl(&[&"pair", &"node2:data", &"node1:data", &"--rollback"]),
        CLI_TIMEOUT,
    )?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{said}");
    ensure!(
        said.contains("discarded 2 commit(s)") && said.contains(&lost_first),
        "{said}"
    );
    c.wait_sync("node2:data", "node1:data")?;
    let row = synced_to(&c, "node2", "node1:data", &new_last)?;
    ensure!(
        row["records_sent"].as_u64() == Some(4),
        "only the two new commits travel: {row}"
    );
    c.verify_match("node2:data", "node1:data", true)?;
    let err = fails(&c, &["stat", "node1:data/lost-a"])?;
    ensure!(err.contains("does not exist"), "{err}");

    // The rollback is durable: after a SIGKILL and an index rebuild the old master still
    // verifies equal.
    c.node(1).kill()?;
    std::fs::remove_dir_all(index_dir(c.node(1).dir()))?;
    c.node(1).launch()?;
    c.verify_match("node2:data", "node1:data", false)?;
    tree::make_writable(c.work.path());
    Ok(())
}

/// The node's sled index directory.
fn index_dir(node_dir: &Path) -> std::path::PathBuf {
    node_dir.join("data").join("index")
}

#[test]
fn a_second_master_with_the_same_shared_uuid_is_refused_by_the_slave() -> Result<()> {
    let c = Cluster::start(3, |_| NodeOptions::default())?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    load(&c, "node1:data", 3, 32 << 10)?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.ok(&[&"pair", &"node1:data", &"node3:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.wait_sync("node1:data", "node3:data")?;

    // node2 becomes a second master with the same shared UUID while node1 still runs (forced),
    // and both take writes.
    let err = fails(&c, &["pfs", "upgrade", "node2:data"])?;
    ensure!(err.contains("still receiving"), "{err}");
    c.ok(&[&"pfs", &"upgrade", &"node2:data", &"--force"])?;
    let uuid =
        |node: &str| -> Result<Value> { Ok(pfs_row(&c, node, "data")?["shared_uuid"].clone()) };
    ensure!(uuid("node1")? == uuid("node2")?, "one shared UUID");
    let versions = c.versions("node3:data")?;
    put(&c, "node1:data/from-1", 1, 2000)?;
    put(&c, "node2:data/from-2", 2, 2000)?;

    // node2 pushing to node3, which follows node1: refused, with or without --rollback, and
    // nothing on node3 changes.
    for extra in [None, Some("--rollback")] {
        let mut args = vec!["pair", "node2:data", "node3:data"];
        args.extend(extra);
        let err = fails(&c, &args)?;
        ensure!(
            err.contains("already replicates from node1") && err.contains("one master"),
            "{err}"
        );
    }
    // The first master's pairing is untouched: node3 equals node1, never node2.
    c.wait_sync("node1:data", "node3:data")?;
    c.verify_match("node1:data", "node3:data", false)?;
    ensure!(
        c.versions("node3:data")? == versions + 1,
        "node3 took node1's commit only"
    );
    let err = fails(&c, &["stat", "node3:data/from-2"])?;
    ensure!(err.contains("does not exist"), "{err}");
    // And node1's stream into node2, which is a master now, is refused there.
    let row = c.wait_pairing("node1", "node2:data", "the stream refused", |r| {
        r["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("may not push") || e.contains("is a master"))
    })?;
    ensure!(row["state"] != "streaming", "{row}");
    tree::make_writable(c.work.path());
    Ok(())
}
