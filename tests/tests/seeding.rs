//! End-to-end cascades and offline seeding: real `repld` nodes over mutual TLS on loopback,
//! driven by `replctl`. A slave that feeds a further slave (A -> B -> C) under a write load on A.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use repl_tests::cluster::Cluster;
use repl_tests::node::NodeOptions;
use repl_tests::tree;
use repl_types::Tid;
use serde_json::Value;

fn opts(_: usize) -> NodeOptions {
    NodeOptions {
        device_size: "512MiB".into(),
        ..NodeOptions::default()
    }
}

fn tid_of(v: &Value, what: &str) -> Result<Tid> {
    v.as_str()
        .and_then(|s| s.parse::<Tid>().ok())
        .with_context(|| format!("{what}: not a TID: {v}"))
}

/// The slave row of `pfs` in `node`'s status.
fn slave_row(c: &Cluster, node: &str, pfs: &str) -> Result<Value> {
    let s = c.status(node)?;
    s["slaves"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["slave"] == pfs))
        .cloned()
        .with_context(|| format!("no slave {pfs} on {node}: {s}"))
}

/// A slave's synced TID, from its node's status.
fn synced(c: &Cluster, node: &str, pfs: &str) -> Result<Tid> {
    tid_of(&slave_row(c, node, pfs)?["synced_tid"], "synced_tid")
}

/// The exports of `a` and `b` at `tid` are the same bytes.
fn exports_equal(c: &Cluster, a: &str, b: &str, tid: Tid) -> Result<()> {
    let (fa, fb) = (c.work.path().join("a.tar"), c.work.path().join("b.tar"));
    c.ok(&[&"export", &format!("{a}@{tid}"), &"-o", &fa])?;
    c.ok(&[&"export", &format!("{b}@{tid}"), &"-o", &fb])?;
    ensure!(
        fs::read(&fa)? == fs::read(&fb)?,
        "the exports of {a} and {b} at {tid} differ"
    );
    Ok(())
}

#[test]
fn a_cascade_feeds_a_third_node_that_matches_the_first_under_load() -> Result<()> {
    let c = Cluster::start(3, opts)?;
    let src = c.work.path().join("src");
    tree::bulk_tree(&src, 120, 40 << 20, 11)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    // A throttled first hop splits the large files across batches, so node2 often holds a
    // partly received TID while it feeds node3.
    c.ok(&[
        &"pair",
        &"node1:data",
        &"node2:data",
        &"--bandwidth",
        &"16MiB",
    ])?;
    c.ok(&[&"pair", &"node2:data", &"node3:data"])?;

    let small = c.work.path().join("small");
    fs::write(&small, vec![9u8; 4096])?;
    let started = Instant::now();
    let (mut samples, mut commits) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(8) {
        c.ok(&[&"put", &small, &format!("node1:data/load-f{commits}")])?;
        commits += 1;
        // node3 never gets ahead of node2: read node3 first, node2 after.
        let third = synced(&c, "node3", "data")?;
        let second = synced(&c, "node2", "data")?;
        ensure!(
            third <= second,
            "node3 is at {third}, past its master node2 at {second}"
        );
        samples += 1;
    }
    ensure!(samples >= 5, "only {samples} samples under load");

    c.ok(&[
        &"pair",
        &"set",
        &"node1:data",
        &"node2:data",
        &"--bandwidth",
        &"0",
    ])?;
    c.wait_sync("node1:data", "node3:data")?;
    c.verify_match("node1:data", "node3:data", false)?;
    c.verify_match("node2:data", "node3:data", true)?;
    let at = synced(&c, "node3", "data")?;
    exports_equal(&c, "node1:data", "node3:data", at)?;

    // Every hop reports: node2 shows both its master and the slave it feeds, in sync.
    let hop2 = c.wait_pairing("node2", "node3:data", "the second hop in sync", |r| {
        r["state"] == "streaming" && r["lag_seconds"].as_f64() == Some(0.0)
    })?;
    ensure!(
        tid_of(&hop2["synced_tid"], "synced_tid")? == at
            && tid_of(&hop2["head_tid"], "head_tid")? == at,
        "node2's pairing row does not show node3 at node2's head {at}: {hop2}"
    );
    let on2 = slave_row(&c, "node2", "data")?;
    ensure!(on2["masters"][0] == "node1", "{on2}");
    // The master's head on node3 comes from node2's heartbeats (one a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on3 = slave_row(&c, "node3", "data")?;
        ensure!(on3["masters"][0] == "node2", "{on3}");
        if tid_of(&on3["master_head_tid"], "master_head_tid")? == at {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node3 does not see node2's head {at} as its master's after 10 s: {on3}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let hop1 = c.pairing("node1", "node2:data")?;
    ensure!(tid_of(&hop1["synced_tid"], "synced_tid")? == at, "{hop1}");
    tree::make_writable(c.work.path());
    Ok(())
}
