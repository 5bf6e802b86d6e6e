//! End-to-end cascades and offline seeding: real `repld` nodes over mutual TLS on loopback,
//! driven by `replctl`. A slave that feeds a further slave (A -> B -> C) under a write load on A;
//! `replctl dump` / `replctl restore` seeding a slave, damaged and truncated dump files, and
//! incremental (`--since`) dumps.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use repl_tests::cluster::{CLI_TIMEOUT, Cluster};
use repl_tests::node::{NodeOptions, StoredState, run_output};
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

/// A slave's synced TID, from its node's status.
fn synced(c: &Cluster, node: &str, pfs: &str) -> Result<Tid> {
    tid_of(&c.slave_row(node, pfs)?["synced_tid"], "synced_tid")
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
    let on2 = c.slave_row("node2", "data")?;
    ensure!(on2["masters"][0] == "node1", "{on2}");
    // The master's head on node3 comes from node2's heartbeats (one a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on3 = c.slave_row("node3", "data")?;
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

/// `replctl --json dump ARGS -o FILE`: the dump's summary.
fn dump(c: &Cluster, target: &str, since: Option<Tid>, file: &Path) -> Result<Value> {
    let since = since.map(|t| t.to_string());
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--json", &"dump", &target];
    if let Some(t) = &since {
        args.push(&"--since");
        args.push(t);
    }
    args.push(&"-o");
    args.push(&file);
    let out = c.ok(&args)?;
    serde_json::from_str(&out).with_context(|| format!("dump JSON: {out}"))
}

/// `replctl --json restore FILE TARGET`: the restore's summary.
fn restore(c: &Cluster, file: &Path, target: &str) -> Result<Value> {
    let out = c.ok(&[&"--json", &"restore", &file, &target])?;
    serde_json::from_str(&out).with_context(|| format!("restore JSON: {out}"))
}

/// `replctl restore FILE TARGET` must fail; returns its stderr.
fn restore_refused(c: &Cluster, file: &Path, target: &str) -> Result<String> {
    let out = run_output(&mut c.replctl(&[&"restore", &file, &target]), CLI_TIMEOUT)?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "restore of {} into {target} passed: {err}",
        file.display()
    );
    Ok(err)
}

/// A PFS's head TID, from `pfs list`.
fn head(c: &Cluster, node: &str, pfs: &str) -> Result<Tid> {
    let out = c.ok(&[&"--json", &"pfs", &"list", &node])?;
    let v: Value = serde_json::from_str(&out)?;
    let row = v
        .as_array()
        .or_else(|| v["pfses"].as_array())
        .and_then(|rows| rows.iter().find(|r| r["name"] == pfs))
        .cloned()
        .with_context(|| format!("no PFS {pfs} on {node}: {out}"))?;
    tid_of(&row["head_tid"], "head_tid")
}

/// The restore spool files left in a node's data directory.
fn spools(c: &mut Cluster, i: usize) -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir(c.node(i).dir().join("data"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".spool"))
        .collect())
}

#[test]
fn a_restored_dump_seeds_a_slave_and_the_pairing_sends_only_later_changes() -> Result<()> {
    let c = Cluster::start(2, opts)?;
    let src = c.work.path().join("src");
    let content = tree::bulk_tree(&src, 80, 12 << 20, 5)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    let file = c.work.path().join("full.dump");
    let d = dump(&c, "node1:data", None, &file)?;
    let dumped_to = tid_of(&d["to_tid"], "to_tid")?;
    ensure!(
        dumped_to == head(&c, "node1", "data")?,
        "the dump ends at {dumped_to}, not at the head: {d}"
    );

    // Changes after the dump: only these may cross the network.
    let small = c.work.path().join("small");
    fs::write(&small, vec![3u8; 4096])?;
    c.ok(&[&"put", &small, &"node1:data/after-the-dump"])?;
    c.ok(&[&"mkdir", &"node1:data/later"])?;

    let r = restore(&c, &file, "node2:data")?;
    ensure!(r["created"] == true, "{r}");
    ensure!(
        head(&c, "node2", "data")? == dumped_to,
        "the restored slave is not at the dump's end {dumped_to}"
    );
    c.verify_match("node1:data", "node2:data", false)?;

    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", true)?;
    let row = c.pairing("node1", "node2:data")?;
    let sent = row["bytes_sent"].as_u64().unwrap_or(u64::MAX);
    // One chunk and two changes (the file and the mkdir) came after the dump.
    ensure!(
        (4096..64 << 10).contains(&sent)
            && row["batches_sent"].as_u64() <= Some(2)
            && row["records_sent"].as_u64() == Some(3),
        "after a restore of {content} bytes the pairing sent {sent} bytes; only the 4 KiB file \
         and a mkdir came after the dump: {row}"
    );
    exports_equal(&c, "node1:data", "node2:data", head(&c, "node2", "data")?)?;
    tree::make_writable(c.work.path());
    Ok(())
}

#[test]
fn a_truncated_or_damaged_dump_is_refused_and_nothing_is_written() -> Result<()> {
    let mut c = Cluster::start(2, opts)?;
    let src = c.work.path().join("src");
    tree::bulk_tree(&src, 40, 6 << 20, 9)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    let file = c.work.path().join("full.dump");
    dump(&c, "node1:data", None, &file)?;
    let bytes = fs::read(&file)?;
    let truncated = c.work.path().join("truncated.dump");
    fs::write(&truncated, &bytes[..bytes.len() - 100])?;
    let flipped = c.work.path().join("flipped.dump");
    let mut f = bytes.clone();
    f[bytes.len() / 2] ^= 0x10;
    fs::write(&flipped, &f)?;
    // A slave already holding something: a refused restore must not touch it either.
    c.ok(&[&"pfs", &"create", &"node1:other"])?;
    c.ok(&[&"mkdir", &"node1:other/kept"])?;
    c.ok(&[&"pair", &"node1:other", &"node2:other"])?;
    c.wait_sync("node1:other", "node2:other")?;

    let rt = repl_tests::node::runtime();
    let before = rt.block_on(StoredState::read(c.node(2)))?;
    let err = restore_refused(&c, &truncated, "node2:data")?;
    ensure!(err.contains("truncated"), "truncated: {err}");
    let err = restore_refused(&c, &flipped, "node2:data")?;
    ensure!(err.contains("damaged"), "bit flip: {err}");
    let err = restore_refused(&c, &file, "node2:other")?;
    ensure!(err.contains("another pair"), "another shared UUID: {err}");

    // The node checks too, whatever a client sends: the pieces without the trailer, and a
    // piece whose frame checksum was made to fit a flipped payload bit.
    let mut pieces = Vec::new();
    let mut reader = repl_proto::dump::PieceReader::new(&bytes[..]);
    while let Some((piece, frame)) = reader.next_piece()? {
        pieces.push((piece, frame));
    }
    let without_trailer: Vec<Vec<u8>> = pieces[..pieces.len() - 1]
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    let mut forged: Vec<Vec<u8>> = pieces.iter().map(|(p, _)| p.clone()).collect();
    if let repl_proto::dump::Frame::Batch(b) = &pieces[1].1 {
        let mut b = b.clone();
        let mut payload = b.payload.to_vec();
        let mid = payload.len() / 2;
        payload[mid] ^= 0x01;
        b.payload = payload.into();
        forged[1] = repl_proto::dump::Frame::Batch(b).piece();
    }
    for (what, sent) in [("no trailer", without_trailer), ("forged", forged)] {
        let res = rt.block_on(async {
            let mut admin = c.node(2).admin().await?.into_inner();
            let msgs =
                sent.into_iter()
                    .enumerate()
                    .map(|(i, data)| repl_proto::pb::RestoreRequest {
                        pfs: if i == 0 { "data".into() } else { String::new() },
                        data: data.into(),
                    });
            anyhow::Ok(admin.restore(tokio_stream::iter(msgs)).await)
        })?;
        let status = res
            .err()
            .with_context(|| format!("{what}: the node took it"))?;
        ensure!(
            status.code() == tonic::Code::InvalidArgument
                && status.message().contains("nothing was written"),
            "{what}: {status:?}"
        );
    }
    let after = rt.block_on(StoredState::read(c.node(2)))?;
    before.assert_unchanged(&after, "refused restores")?;
    ensure!(
        spools(&mut c, 2)?.is_empty(),
        "a spool file was left behind"
    );
    tree::make_writable(c.work.path());
    Ok(())
}

#[test]
fn an_incremental_dump_restores_onto_its_checkpoint_and_a_mismatched_start_is_refused() -> Result<()>
{
    let c = Cluster::start(2, opts)?;
    let small = c.work.path().join("small");
    fs::write(&small, vec![1u8; 10_000])?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    let step = |i: u32| c.ok(&[&"put", &small, &format!("node1:data/f{i}")]);
    for i in 0..3 {
        step(i)?;
    }
    let full = c.work.path().join("full.dump");
    let t1 = tid_of(&dump(&c, "node1:data", None, &full)?["to_tid"], "to_tid")?;
    for i in 3..6 {
        step(i)?;
    }
    let incr = c.work.path().join("incr.dump");
    let d = dump(&c, "node1:data", Some(t1), &incr)?;
    ensure!(tid_of(&d["from_tid"], "from_tid")? == t1, "{d}");
    let t2 = tid_of(&d["to_tid"], "to_tid")?;
    step(6)?;
    let later = c.work.path().join("later.dump");
    dump(&c, "node1:data", Some(t2), &later)?;

    let err = restore_refused(&c, &incr, "node2:data")?;
    ensure!(
        err.contains("--since") && err.contains(&t1.to_string()),
        "an incremental dump onto no PFS: {err}"
    );
    restore(&c, &full, "node2:data")?;
    ensure!(head(&c, "node2", "data")? == t1);
    let err = restore_refused(&c, &later, "node2:data")?;
    ensure!(
        err.contains("does not continue") && err.contains(&t1.to_string()),
        "a dump that starts past the slave: {err}"
    );
    ensure!(
        head(&c, "node2", "data")? == t1,
        "the refused restore wrote"
    );
    let r = restore(&c, &incr, "node2:data")?;
    ensure!(
        r["created"] == false && r["batches_applied"].as_u64() >= Some(1),
        "{r}"
    );
    ensure!(head(&c, "node2", "data")? == t2);
    let again = restore(&c, &incr, "node2:data")?;
    ensure!(
        again["batches_applied"] == 0 && again["batches_skipped"].as_u64() >= Some(1),
        "a second restore of the same dump applied something: {again}"
    );
    c.verify_match("node1:data", "node2:data", false)?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", false)?;
    let sent = c.pairing("node1", "node2:data")?["bytes_sent"]
        .as_u64()
        .unwrap_or(u64::MAX);
    ensure!(
        (10_000..64 << 10).contains(&sent),
        "only f6 came after the incremental dump, yet {sent} bytes were sent"
    );
    Ok(())
}

#[test]
fn a_node_killed_mid_restore_keeps_a_consistent_slave_and_the_restore_finishes_when_run_again()
-> Result<()> {
    let mut c = Cluster::start(2, |_| NodeOptions {
        device_size: "1GiB".into(),
        ..NodeOptions::default()
    })?;
    let src = c.work.path().join("src");
    tree::bulk_tree(&src, 200, 160 << 20, 13)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    let file = c.work.path().join("full.dump");
    dump(&c, "node1:data", None, &file)?;

    // SIGKILL node2 once the restore is under way (its spool file exists).
    let mut child = c
        .replctl(&[&"restore", &file, &"node2:data"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while spools(&mut c, 2)?.is_empty() {
        ensure!(
            Instant::now() < deadline && child.try_wait()?.is_none(),
            "the restore ended before it was seen under way"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    c.node(2).kill()?;
    let _ = child.wait();
    ensure!(
        !spools(&mut c, 2)?.is_empty(),
        "no spool file to be left by the kill"
    );
    c.node(2).launch()?;
    ensure!(
        spools(&mut c, 2)?.is_empty(),
        "the spool file left by the kill was not removed at start-up"
    );
    // Whatever it reached is a state the master had.
    let out = c.ok(&[&"--json", &"pfs", &"list", &"node2"])?;
    if out.contains("\"data\"") && !out.contains("\"head_tid\":null") {
        c.verify_match("node1:data", "node2:data", false)?;
    }

    let r = restore(&c, &file, "node2:data")?;
    ensure!(
        head(&c, "node2", "data")? == head(&c, "node1", "data")?,
        "the second restore did not finish: {r}"
    );
    c.verify_match("node1:data", "node2:data", true)?;
    tree::make_writable(c.work.path());
    Ok(())
}

#[test]
fn a_dump_larger_than_the_devices_free_space_is_refused_before_it_is_spooled() -> Result<()> {
    let mut c = Cluster::start(2, |i| NodeOptions {
        device_size: if i == 2 { "32MiB" } else { "512MiB" }.into(),
        ..NodeOptions::default()
    })?;
    let src = c.work.path().join("src");
    tree::bulk_tree(&src, 20, 96 << 20, 4)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    let file = c.work.path().join("full.dump");
    dump(&c, "node1:data", None, &file)?;
    let size = fs::metadata(&file)?.len();
    ensure!(
        size > 32 << 20,
        "the dump is too small to test: {size} bytes"
    );

    let rt = repl_tests::node::runtime();
    let before = rt.block_on(StoredState::read(c.node(2)))?;
    let err = restore_refused(&c, &file, "node2:data")?;
    ensure!(
        err.contains("free on this node's device") && err.contains("nothing was written"),
        "{err}"
    );
    let after = rt.block_on(StoredState::read(c.node(2)))?;
    before.assert_unchanged(&after, "a restore larger than the device")?;
    ensure!(
        spools(&mut c, 2)?.is_empty(),
        "a spool file was left behind"
    );
    let out = c.ok(&[&"--json", &"pfs", &"list", &"node2"])?;
    ensure!(
        !out.contains("\"data\""),
        "the restore created the PFS: {out}"
    );
    tree::make_writable(c.work.path());
    Ok(())
}
