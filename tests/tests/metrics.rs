//! The metrics endpoint of real nodes: valid exposition (checked by `promtool`), the metric set
//! for a pairing on both ends, and `/healthz`.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use repl_tests::cluster::Cluster;
use repl_tests::node::NodeOptions;

/// `promtool check metrics` on `text`: its verdict and what it printed.
fn promtool_check(text: &str) -> Result<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run promtool (installed by scripts/setup: Debian's prometheus package)")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), said))
}

/// The value of the sample whose line starts with `series` (name and labels as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn paired_nodes_expose_a_valid_metric_set_and_healthz() -> Result<()> {
    let c = Cluster::start(2, |_| NodeOptions::default())?;
    let (master, slave) = (&c.nodes[0], &c.nodes[1]);
    let replctl = |args: &[&str]| c.ok_str(args);
    replctl(&["pfs", "create", "node1:data"])?;
    replctl(&["mkdir", "node1:data/a"])?;
    replctl(&["pair", "node1:data", "node2:data"])?;
    replctl(&["wait-sync", "node1:data", "node2:data", "--timeout", "60"])?;
    replctl(&["verify", "node1:data", "node2:data"])?;

    let (code, m) = master.metrics_get("/metrics")?;
    ensure!(code == 200, "GET /metrics answered {code}: {m}");
    let (ok, said) = promtool_check(&m)?;
    ensure!(
        ok && said.trim().is_empty(),
        "promtool check metrics on the master: {said}"
    );
    let pairing = r#"{peer="node2",peer_pfs="data",pfs="data",role="master"}"#;
    for series in [
        format!("repld_replication_lag_seconds{pairing}"),
        format!("repld_replication_stream_up{pairing}"),
        format!("repld_replication_sent_bytes_total{pairing}"),
        format!("repld_replication_synced_tid_seconds{pairing}"),
        format!("repld_replication_head_tid_seconds{pairing}"),
        format!("repld_replication_bandwidth_limit_bytes_per_second{pairing}"),
        "repld_verify_last_match{peer=\"node2\",peer_pfs=\"data\",pfs=\"data\"}".into(),
        "repld_commit_duration_seconds_count".into(),
        "repld_fsync_duration_seconds_count".into(),
        "repld_device_free_bytes".into(),
        "repld_device_reclaimable_bytes".into(),
        "repld_reclaim_freed_segments_total".into(),
        "repld_up".into(),
        "process_cpu_seconds_total".into(),
    ] {
        ensure!(
            sample(&m, &series).is_some(),
            "no {series} in the master's metrics:\n{m}"
        );
    }
    ensure!(sample(&m, &format!("repld_replication_stream_up{pairing}")) == Some(1.0));
    ensure!(
        sample(
            &m,
            "repld_verify_last_match{peer=\"node2\",peer_pfs=\"data\",pfs=\"data\"}"
        ) == Some(1.0),
        "the verify's MATCH was not recorded"
    );
    ensure!(sample(&m, "repld_commits_total").is_some_and(|n| n >= 1.0));
    ensure!(m.contains("repld_build_info{"), "no build info");

    let (code, s) = slave.metrics_get("/metrics")?;
    ensure!(code == 200, "GET /metrics on the slave answered {code}");
    let (ok, said) = promtool_check(&s)?;
    ensure!(
        ok && said.trim().is_empty(),
        "promtool check metrics on the slave: {said}"
    );
    ensure!(
        sample(
            &s,
            r#"repld_replication_applied_batches_total{peer="node1",pfs="data"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "the slave applied no batch, by its metrics:\n{s}"
    );
    ensure!(
        sample(
            &s,
            r#"repld_replication_rejected_batches_total{peer="node1",pfs="data",reason="checksum"}"#
        ) == Some(0.0)
    );
    ensure!(s.contains("repld_replication_apply_duration_seconds_bucket{"));
    ensure!(
        sample(
            &s,
            r#"repld_replication_lag_seconds{peer="node1",peer_pfs="data",pfs="data",role="slave"}"#
        )
        .is_some(),
        "no slave-side lag:\n{s}"
    );

    let (code, body) = master.metrics_get("/healthz")?;
    ensure!(
        code == 200 && body.trim() == "ok",
        "/healthz: {code} {body}"
    );
    let (code, _) = master.metrics_get("/nope")?;
    ensure!(code == 404);
    Ok(())
}
