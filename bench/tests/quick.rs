//! The harness runs end to end in quick mode: the binary, a real engine, a scratch directory.

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

#[test]
fn json_report_carries_positive_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bench()
        .args(["--quick", "--json", "-s", "commit-rate", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run repl-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
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
