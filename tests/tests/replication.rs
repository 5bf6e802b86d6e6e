//! End-to-end replication: real `repld` nodes over mutual TLS on loopback, driven by `replctl`,
//! killed with SIGKILL, and connected through a fault-injecting proxy.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use repl_tests::cluster::{CLI_TIMEOUT, Cluster};
use repl_tests::node::{NodeOptions, run_output};
use repl_tests::proxy::FaultProxy;
use repl_tests::tree::{self, TreeBuilder};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The largest batch payload (the daemon's `MAX_BATCH_BYTES`).
const BATCH: u64 = 4 * MIB;

fn big_opts(_: usize) -> NodeOptions {
    NodeOptions {
        device_size: "1GiB".into(),
        ..NodeOptions::default()
    }
}

/// A tree of `files` incompressible files of `each` bytes, plus a symlink and an empty dir.
fn tree_of(dir: &Path, files: usize, each: usize) -> Result<PathBuf> {
    let src = dir.join("src");
    let mut t = TreeBuilder::new(&src, 7)?;
    t.dir("d", 0o755)?.dir("empty", 0o700)?;
    for i in 0..files {
        t.file(&format!("d/f{i:03}"), each, 0o644)?;
    }
    t.symlink("link", "d/f000")?;
    t.finish()?;
    Ok(src)
}

fn bytes_of(row: &Value, field: &str) -> u64 {
    row[field].as_u64().unwrap_or(0)
}

#[test]
fn a_paired_slave_catches_up_and_verifies_equal_to_its_master() -> Result<()> {
    let c = Cluster::start(2, |_| NodeOptions::default())?;
    let src = c.work.path().join("src");
    tree::round_trip_tree(&src)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", false)?;
    c.verify_match("node1:data", "node2:data", true)?;

    // A master with no commit is in sync at once, with no lag.
    c.ok(&[&"pfs", &"create", &"node1:empty"])?;
    c.ok(&[&"pair", &"node1:empty", &"node2:empty"])?;
    c.ok(&[
        &"wait-sync",
        &"node1:empty",
        &"node2:empty",
        &"--timeout",
        &"10",
    ])?;
    let row = c.wait_pairing("node1", "node2:empty", "the stream up", |r| {
        r["state"] == "streaming"
    })?;
    std::thread::sleep(Duration::from_millis(1500));
    let row2 = c.pairing("node1", "node2:empty")?;
    ensure!(
        row2["lag_seconds"].as_f64() == Some(0.0),
        "an empty master shows lag: {row} then {row2}"
    );

    // A later change streams with no command, and the exports agree at the synced TID.
    c.ok(&[&"mkdir", &"node1:data/later"])?;
    c.wait_sync("node1:data", "node2:data")?;
    let tid = c.status("node2")?["slaves"][0]["synced_tid"]
        .as_str()
        .context("the slave's synced TID in status")?
        .to_owned();
    let m = c.work.path().join("m.tar");
    let s = c.work.path().join("s.tar");
    c.ok(&[&"export", &format!("node1:data@{tid}"), &"-o", &m])?;
    c.ok(&[&"export", &format!("node2:data@{tid}"), &"-o", &s])?;
    ensure!(
        fs::read(&m)? == fs::read(&s)?,
        "the exports at {tid} differ"
    );
    tree::make_writable(c.work.path());
    Ok(())
}

#[test]
fn refusals_write_nothing_and_say_why() -> Result<()> {
    let mut c = Cluster::start(3, |_| NodeOptions::default())?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"mkdir", &"node1:data/x"])?;

    // A master as the target.
    c.ok(&[&"pfs", &"create", &"node2:mine"])?;
    let out = run_output(
        &mut c.replctl(&[&"pair", &"node1:data", &"node2:mine"]),
        CLI_TIMEOUT,
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("is a master"),
        "pairing into a master: {err}"
    );

    // A slave of another master (another shared UUID), with data in it.
    c.ok(&[&"pfs", &"create", &"node1:other"])?;
    c.ok(&[&"mkdir", &"node1:other/y"])?;
    c.ok(&[&"pair", &"node1:other", &"node2:taken"])?;
    c.wait_sync("node1:other", "node2:taken")?;
    let before = c.versions("node2:taken")?;
    let out = run_output(
        &mut c.replctl(&[&"pair", &"node1:data", &"node2:taken"]),
        CLI_TIMEOUT,
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("another master"),
        "pairing into another master's slave: {err}"
    );
    ensure!(
        c.versions("node2:taken")? == before,
        "the refused pairing wrote"
    );

    // A certificate not allowed for the PFS: node3 pushes to node2:taken without an accept.
    c.ok(&[&"pfs", &"create", &"node3:rogue"])?;
    c.ok(&[&"mkdir", &"node3:rogue/z"])?;
    let shared = c.ok(&[&"--json", &"pfs", &"status", &"node1:other"])?;
    let shared: Value = serde_json::from_str(&shared)?;
    let slave_addr = c.node(2).addr();
    let rt = repl_tests::node::runtime();
    rt.block_on(async {
        let mut admin = c.node(3).admin().await?.into_inner();
        admin
            .pair_create(repl_proto::pb::PairCreateRequest {
                master_pfs: "rogue".into(),
                slave_node: "node2".into(),
                slave_endpoint: format!("https://{slave_addr}"),
                slave_pfs: "taken".into(),
                bandwidth: 0,
            })
            .await?;
        anyhow::Ok(())
    })?;
    let row = c.wait_pairing("node3", "node2:taken", "a refusal", |r| {
        r["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("may not push"))
    })?;
    ensure!(bytes_of(&row, "batches_sent") == 0, "{row}");
    ensure!(
        c.versions("node2:taken")? == before,
        "the refused node wrote; shared UUID was {}",
        shared["shared_uuid"]
    );
    Ok(())
}

#[test]
fn two_slaves_match_and_a_stopped_one_does_not_stop_the_other() -> Result<()> {
    let mut c = Cluster::start(3, |_| NodeOptions::default())?;
    let src = tree_of(c.work.path(), 8, 300_000)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.ok(&[&"pair", &"node1:data", &"node3:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.wait_sync("node1:data", "node3:data")?;
    c.verify_match("node1:data", "node2:data", false)?;
    c.verify_match("node1:data", "node3:data", false)?;

    c.node(3).stop()?;
    c.ok(&[&"mkdir", &"node1:data/while-node3-is-down"])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", false)?;

    c.node(3).launch()?;
    c.wait_sync("node1:data", "node3:data")?;
    c.verify_match("node1:data", "node3:data", false)?;
    tree::make_writable(c.work.path());
    Ok(())
}

#[test]
fn a_master_configured_for_1_mib_batches_sends_no_larger_ones() -> Result<()> {
    let c = Cluster::start(2, |i| NodeOptions {
        extra_config: if i == 1 {
            "[replication]\nbatch_bytes = \"1MiB\"\n".into()
        } else {
            String::new()
        },
        ..NodeOptions::default()
    })?;
    let src = tree_of(c.work.path(), 2, 6 << 20)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", false)?;
    let row = c.pairing("node1", "node2:data")?;
    let (sent, batches) = (bytes_of(&row, "bytes_sent"), bytes_of(&row, "batches_sent"));
    ensure!(sent >= 12 * MIB, "{row}");
    ensure!(
        sent <= batches * MIB,
        "{sent} bytes in {batches} batches: some batch was larger than 1 MiB: {row}"
    );
    tree::make_writable(c.work.path());
    Ok(())
}

/// Imports `files` x `each` bytes on node1, pairs at `rate`, SIGKILLs node `victim` once more
/// than `after` bytes went out, restarts it, lifts the limit, and requires a deep MATCH. Returns
/// the master's status row for the pairing.
fn crash_mid_sync(
    victim: usize,
    files: usize,
    each: usize,
    rate: &str,
    after: u64,
) -> Result<Value> {
    let mut c = Cluster::start(2, big_opts)?;
    let src = tree_of(c.work.path(), files, each)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    c.ok(&[&"pair", &"node1:data", &"node2:data", &"--bandwidth", &rate])?;
    c.wait_pairing("node1", "node2:data", "the sync under way", |r| {
        bytes_of(r, "bytes_sent") > after
    })?;
    c.node(victim).kill()?;
    c.node(victim).launch()?;
    c.ok(&[
        &"pair",
        &"set",
        &"node1:data",
        &"node2:data",
        &"--bandwidth",
        &"0",
    ])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", true)?;
    let row = c.pairing("node1", "node2:data")?;
    tree::make_writable(c.work.path());
    Ok(row)
}

#[test]
fn a_slave_killed_mid_initial_sync_resumes_without_resending_more_than_two_batches() -> Result<()> {
    // 210 MiB at 40 MiB/s, the slave killed after 60 MiB.
    let row = crash_mid_sync(2, 7, 30 << 20, "40MiB", 60 * MIB)?;
    let resent = bytes_of(&row, "bytes_resent");
    ensure!(
        resent <= 2 * (BATCH + MIB),
        "{resent} bytes were sent twice; at most 2 batches may be: {row}"
    );
    ensure!(bytes_of(&row, "reconnects") >= 1, "{row}");
    Ok(())
}

#[test]
fn a_master_killed_mid_stream_resumes_after_restart() -> Result<()> {
    // 80 MiB at 20 MiB/s, the master killed after 20 MiB; its pairing restarts from its store.
    crash_mid_sync(1, 4, 20 << 20, "20MiB", 20 * MIB).map(drop)
}

#[test]
fn the_stream_survives_cuts_stalls_truncation_and_flipped_bytes() -> Result<()> {
    let mut c = Cluster::start(2, |i| NodeOptions {
        device_size: "512MiB".into(),
        extra_config: if i == 1 {
            "[replication]\nstall_timeout = \"2s\"\n".into()
        } else {
            String::new()
        },
        ..NodeOptions::default()
    })?;
    let src = tree_of(c.work.path(), 6, 10 << 20)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    let proxy = FaultProxy::start(c.node(2).addr())?;
    let via = format!("https://{}", proxy.addr());
    c.ok(&[
        &"pair",
        &"node1:data",
        &"node2:data",
        &"--bandwidth",
        &"8MiB",
        &"--slave-endpoint",
        &via,
    ])?;
    let sent = |c: &Cluster| -> Result<u64> {
        Ok(bytes_of(&c.pairing("node1", "node2:data")?, "bytes_sent"))
    };
    c.wait_pairing("node1", "node2:data", "a first batch", |r| {
        bytes_of(r, "bytes_sent") > 0
    })?;
    proxy.cut();
    let mark = sent(&c)?;
    c.wait_pairing("node1", "node2:data", "progress after the cut", |r| {
        bytes_of(r, "bytes_sent") > mark + MIB
    })?;
    proxy.pause();
    std::thread::sleep(Duration::from_secs(4));
    proxy.resume();
    proxy.corrupt_after(300_000);
    let mark = sent(&c)?;
    c.wait_pairing(
        "node1",
        "node2:data",
        "progress after a flipped byte",
        |r| bytes_of(r, "bytes_sent") > mark + 2 * MIB,
    )?;
    proxy.truncate_after(500_000);
    c.ok(&[
        &"pair",
        &"set",
        &"node1:data",
        &"node2:data",
        &"--bandwidth",
        &"0",
    ])?;
    c.wait_sync("node1:data", "node2:data")?;
    c.verify_match("node1:data", "node2:data", true)?;
    let row = c.pairing("node1", "node2:data")?;
    ensure!(
        bytes_of(&row, "reconnects") >= 3,
        "the faults caused fewer than 3 reconnects: {row}"
    );
    ensure!(
        c.versions("node1:data")? == c.versions("node2:data")?,
        "the slave stored another number of versions: something was applied twice"
    );
    tree::make_writable(c.work.path());
    Ok(())
}

#[test]
fn the_throttle_holds_the_rate_and_a_new_rate_takes_effect_within_two_seconds() -> Result<()> {
    let c = Cluster::start(2, |_| NodeOptions {
        device_size: "512MiB".into(),
        ..NodeOptions::default()
    })?;
    let src = tree_of(c.work.path(), 12, 10 << 20)?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    c.ok(&[
        &"pair",
        &"node1:data",
        &"node2:data",
        &"--bandwidth",
        &"4MiB",
    ])?;
    c.wait_pairing("node1", "node2:data", "streaming", |r| {
        bytes_of(r, "bytes_sent") > MIB
    })?;
    let sample = || -> Result<(Instant, u64)> {
        let b = bytes_of(&c.pairing("node1", "node2:data")?, "bytes_sent");
        Ok((Instant::now(), b))
    };
    let rate = |a: (Instant, u64), b: (Instant, u64)| {
        (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64()
    };
    let t0 = sample()?;
    std::thread::sleep(Duration::from_secs(10));
    let t1 = sample()?;
    let r = rate(t0, t1) / MIB as f64;
    ensure!(
        (3.6..=4.4).contains(&r),
        "at 4 MiB/s the measured rate over 10 s was {r:.2} MiB/s"
    );
    c.ok(&[
        &"pair",
        &"set",
        &"node1:data",
        &"node2:data",
        &"--bandwidth",
        &"12MiB",
    ])?;
    std::thread::sleep(Duration::from_secs(2));
    let t2 = sample()?;
    std::thread::sleep(Duration::from_secs(3));
    let t3 = sample()?;
    let r = rate(t2, t3) / MIB as f64;
    ensure!(
        (10.8..=13.2).contains(&r),
        "2 s after the change to 12 MiB/s the rate was {r:.2} MiB/s"
    );
    tree::make_writable(c.work.path());
    Ok(())
}

#[test]
fn under_a_steady_writer_the_lag_stays_under_a_second() -> Result<()> {
    let c = Cluster::start(2, |_| NodeOptions::default())?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    let file = c.work.path().join("small");
    fs::write(&file, vec![7u8; 4096])?;
    let start = Instant::now();
    let mut next_sample = start + Duration::from_secs(1);
    let (mut lags, mut i) = (Vec::new(), 0u32);
    while start.elapsed() < Duration::from_secs(21) {
        c.ok(&[&"put", &file, &format!("node1:data/f{i}")])?;
        i += 1;
        if Instant::now() >= next_sample {
            let row = c.pairing("node1", "node2:data")?;
            lags.push(row["lag_seconds"].as_f64().unwrap_or(f64::MAX));
            next_sample += Duration::from_secs(1);
        }
    }
    ensure!(lags.len() >= 18, "only {} samples in 21 s", lags.len());
    let worst = lags.iter().copied().fold(0.0, f64::max);
    ensure!(
        worst < 1.0,
        "the lag reached {worst:.3} s while {i} commits were written: {lags:?}"
    );
    Ok(())
}

#[test]
fn deep_verify_names_a_chunk_corrupted_on_the_slave_and_exits_3() -> Result<()> {
    let mut c = Cluster::start(2, |_| NodeOptions::default())?;
    let src = c.work.path().join("src");
    let mut t = TreeBuilder::new(&src, 3)?;
    t.dir("docs", 0o755)?
        .file("docs/plain.txt", 100_000, 0o644)?;
    let marker: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    t.file_with("docs/victim.bin", &marker, 0o644)?;
    t.finish()?;
    c.ok(&[&"pfs", &"create", &"node1:data"])?;
    c.ok(&[&"import", &src, &"node1:data"])?;
    c.ok(&[&"pair", &"node1:data", &"node2:data"])?;
    c.wait_sync("node1:data", "node2:data")?;

    c.node(2).stop()?;
    let image = c.node(2).device_path();
    let mut bytes = fs::read(&image)?;
    let at = bytes
        .windows(64)
        .position(|w| w == &marker[1000..1064])
        .context("the victim's data is not in the slave's image")?;
    bytes[at + 10] ^= 0x01;
    fs::write(&image, &bytes)?;
    drop(bytes);
    c.node(2).launch()?;

    c.verify_match("node1:data", "node2:data", false)?;
    let out = run_output(
        &mut c.replctl(&[&"verify", &"--deep", &"node1:data", &"node2:data"]),
        CLI_TIMEOUT,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(3),
        "verify --deep exited {:?}: {stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("differs: /docs/victim.bin") && !stdout.contains("plain.txt"),
        "verify --deep named: {stdout}"
    );
    tree::make_writable(c.work.path());
    Ok(())
}
