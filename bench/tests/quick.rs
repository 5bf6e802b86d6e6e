//! The harness runs end to end in quick mode: the binary, a real engine, a scratch directory,
//! and for the import and replication scenarios real `repld` and `replctl` processes.

use std::path::PathBuf;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_repl-bench"))
}

#[test]
fn quick_commit_rate_prints_its_figures_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bench()
        .args(["--quick", "--scenario", "commit-rate", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run repl-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}\n{stdout}\n{stderr}",
        out.status
    );
    for needle in [
        "machine:",
        "data:",
        "commit-rate",
        "1 writer",
        "16 writers",
        "16 writers / 1 writer",
        "commits/s",
        ">= 5",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in\n{stdout}");
    }
    assert!(
        stdout.contains("PASS") || stdout.contains("BELOW"),
        "the ratio has no verdict:\n{stdout}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read the data dir")
        .collect();
    assert!(left.is_empty(), "the harness left data behind: {left:?}");
}

/// Runs one scenario with `--quick --json` on `dir` and returns its report; it must succeed.
fn quick_json(scenario: &str, dir: &std::path::Path) -> serde_json::Value {
    let out = bench()
        .args(["--quick", "--json", "-s", scenario, "--dir"])
        .arg(dir)
        .output()
        .expect("run repl-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn json_report_carries_positive_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = quick_json("commit-rate", dir.path());
    let figures = v["scenarios"][0]["figures"].as_array().expect("figures");
    let rate = |name: &str| {
        figures
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["median"].as_f64())
            .unwrap_or_else(|| panic!("no figure `{name}` in {v}"))
    };
    assert!(rate("1 writer") > 0.0);
    assert!(rate("16 writers") > 0.0);
    assert!(
        v["data_fs"]["fs_type"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
}

#[test]
fn quick_reclaim_writes_measures_both_phases_while_reclaim_frees_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = quick_json("reclaim-writes", dir.path());
    let figures = v["scenarios"][0]["figures"].as_array().expect("figures");
    let figure = |name: &str| {
        figures
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no figure `{name}` in {v}"))
    };
    let median = |name: &str| figure(name)["median"].as_f64().expect("a median");
    assert!(median("reclaim idle: write throughput") > 0.0);
    assert!(median("reclaim running: write throughput") > 0.0);
    assert!(median("reclaim: read from cleaned segments") > 0.0);
    for ratio in ["throughput: running / idle", "commit p99: running / idle"] {
        assert!(
            figure(ratio)["verdict"].is_string(),
            "`{ratio}` has no verdict: {v}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read the data dir")
        .collect();
    assert!(left.is_empty(), "the harness left data behind: {left:?}");
}

#[test]
fn an_unknown_scenario_is_refused_with_the_known_names() {
    let out = bench()
        .args(["--scenario", "no-such-thing"])
        .output()
        .expect("run repl-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-thing") && stderr.contains("commit-rate"),
        "{stderr}"
    );
}

/// The directory `repld` and `replctl` are looked up in: beside `repl-bench`.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_repl-bench"))
        .parent()
        .expect("repl-bench is in a directory")
        .to_owned()
}

#[test]
fn quick_import_scenarios_run_a_real_node_and_cp_and_clean_up() {
    let bins = bin_dir();
    if !bins.join("repld").is_file() || !bins.join("replctl").is_file() {
        eprintln!(
            "skipped: repld and replctl are not in {} (build them with the same profile and \
             CARGO_TARGET_DIR: cargo build -p repld -p replctl)",
            bins.display()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bench()
        .args(["--quick", "--json"])
        .args([
            "-s",
            "import-throughput",
            "-s",
            "import-small-files",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run repl-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let figure = |scenario: usize, name: &str| {
        v["scenarios"][scenario]["figures"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no figure `{name}` in {v}"))
    };
    assert_eq!(v["scenarios"][0]["name"], "import-throughput");
    for name in [
        "import: replctl import",
        "cp: cp -a + sync -f",
        "import / cp",
    ] {
        assert!(figure(0, name)["median"].as_f64().is_some_and(|m| m > 0.0));
    }
    let ratio = figure(0, "import / cp");
    assert_eq!(ratio["target"]["at_least"], 0.7, "{ratio}");
    assert!(ratio["verdict"].is_string(), "{ratio}");
    assert!(figure(0, "import: transactions")["median"].as_f64() >= Some(1.0));
    assert_eq!(v["scenarios"][1]["name"], "import-small-files");
    assert_eq!(figure(1, "import: replctl import")["unit"], "files/s");
    assert!(figure(1, "import: replctl import")["median"].as_f64() > Some(0.0));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read the data dir")
        .collect();
    assert!(left.is_empty(), "the harness left data behind: {left:?}");
}

#[test]
fn import_scenarios_without_the_binaries_say_how_to_build_them() {
    let empty = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bench()
        .env("REPL_BENCH_BIN_DIR", empty.path())
        .args(["--quick", "-s", "import-small-files", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run repl-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("build them: cargo build --release -p repld -p replctl"),
        "{stderr}"
    );
}

#[test]
fn quick_replication_scenarios_sync_two_nodes_verify_and_clean_up() {
    let bins = bin_dir();
    if !bins.join("repld").is_file() || !bins.join("replctl").is_file() {
        eprintln!(
            "skipped: repld and replctl are not in {} (build them with the same profile and \
             CARGO_TARGET_DIR: cargo build -p repld -p replctl)",
            bins.display()
        );
        return;
    }
    let rsync = std::process::Command::new("rsync")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut scenarios = vec!["initial-sync", "lag"];
    if rsync {
        scenarios.push("incremental-sync");
    } else {
        eprintln!("incremental-sync skipped: rsync is not installed (scripts/setup installs it)");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bench()
        .args(["--quick", "--json", "-s", &scenarios.join(","), "--dir"])
        .arg(dir.path())
        .output()
        .expect("run repl-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let figure = |scenario: &str, name: &str| {
        v["scenarios"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == scenario))
            .and_then(|s| s["figures"].as_array())
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no figure `{name}` of {scenario} in {v}"))
    };
    let median = |scenario: &str, name: &str| figure(scenario, name)["median"].as_f64();

    let ratio = figure("initial-sync", "replication / lower limit");
    assert_eq!(ratio["target"]["at_least"], 0.5, "{ratio}");
    assert!(ratio["median"].as_f64() > Some(0.0), "{ratio}");
    assert!(median("initial-sync", "limit: TLS loopback") > Some(0.0));
    assert!(median("initial-sync", "limit: write + fdatasync") > Some(0.0));
    assert!(median("initial-sync", "verify: entries (MATCH)") > Some(1.0));
    assert_eq!(median("initial-sync", "replication: reconnects"), Some(0.0));

    let p99 = figure("lag", "lag p99");
    assert_eq!(p99["target"]["at_most"], 1.0, "{p99}");
    assert!(median("lag", "writer: commits/s") > Some(10.0));
    assert!(median("lag", "verify: entries (MATCH)") > Some(10.0));

    if rsync {
        let ratio = figure("incremental-sync", "rsync / repld");
        assert_eq!(ratio["target"]["at_least"], 10.0, "{ratio}");
        assert!(ratio["median"].as_f64() > Some(0.0), "{ratio}");
        // 5,000 files in quick mode, one in 100 rewritten: only they make new versions.
        assert_eq!(
            median("incremental-sync", "repld: versions the change added"),
            Some(50.0)
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read the data dir")
        .collect();
    assert!(left.is_empty(), "the harness left data behind: {left:?}");
}
