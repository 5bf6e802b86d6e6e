//! The shipped deployment files: the systemd unit (`deploy/systemd/repld.service`) passes
//! `systemd-analyze verify` without a warning and rates at most 2.0 in
//! `systemd-analyze security --offline=true`, alone and with the block-device drop-in; the
//! sysusers file creates the repld user; and the example config `deploy/repld.toml` passes
//! `repld check-config` once its TLS files exist, naming the directories the unit creates.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use repl_tests::node::{Certs, bin, run_output};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The highest exposure `systemd-analyze security` may give the unit (0 safest, 10 worst).
const MAX_EXPOSURE: f64 = 2.0;

/// The workspace root (the tests crate is one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned()
}

fn read(rel: &str) -> Result<String> {
    fs::read_to_string(root().join(rel)).with_context(|| format!("read {rel}"))
}

fn text(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A tool from the systemd package, with a message that says how to get it.
fn systemd_tool(name: &str) -> Command {
    let found = ["/usr/bin", "/bin", "/usr/sbin"]
        .iter()
        .any(|d| Path::new(d).join(name).is_file());
    assert!(
        found,
        "`{name}` is not installed: run scripts/setup (or apt-get install systemd)"
    );
    Command::new(name)
}

/// The unit as shipped, or with the drop-in `devices.conf` appended (what systemd merges when
/// it is installed as `repld.service.d/devices.conf`), written as `repld.service` in `dir`.
/// `ExecStart` points at the built `repld`, since `verify` checks that the binary exists.
fn unit_copy(dir: &Path, with_dropin: bool) -> Result<PathBuf> {
    let unit = read("deploy/systemd/repld.service")?;
    let shipped = "ExecStart=/usr/local/bin/repld ";
    ensure!(
        unit.lines().any(|l| l.starts_with(shipped)),
        "the unit's ExecStart is not {shipped}...:\n{unit}"
    );
    let mut text = unit.replace(shipped, &format!("ExecStart={} ", bin("repld").display()));
    if with_dropin {
        text.push('\n');
        text.push_str(&read("deploy/systemd/devices.conf")?);
    }
    let sub = dir.join(if with_dropin { "dropin" } else { "plain" });
    fs::create_dir_all(&sub)?;
    let path = sub.join("repld.service");
    fs::write(&path, text)?;
    Ok(path)
}

/// `Key=value` settings of the unit, in order (comments and sections left out).
fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_unit_runs_repld_as_a_notify_service_with_a_watchdog_and_closed_devices() -> Result<()> {
    let s = settings(&read("deploy/systemd/repld.service")?);
    let get = |key: &str| -> Vec<&str> {
        s.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, want) in [
        ("Type", "notify"),
        (
            "ExecStart",
            "/usr/local/bin/repld run --config /etc/repld/repld.toml",
        ),
        ("User", "repld"),
        ("Group", "repld"),
        ("StateDirectory", "repld"),
        ("RuntimeDirectory", "repld"),
        ("ConfigurationDirectory", "repld"),
        ("DevicePolicy", "closed"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("UMask", "0077"),
    ] {
        ensure!(
            get(key) == [want],
            "{key}= is {:?}, want {want:?}",
            get(key)
        );
    }
    ensure!(
        get("WatchdogSec").len() == 1,
        "the unit sets WatchdogSec= once"
    );
    ensure!(
        get("PrivateDevices").is_empty(),
        "PrivateDevices= would hide the block devices"
    );
    ensure!(
        get("SystemCallFilter").first() == Some(&"@system-service"),
        "SystemCallFilter= starts from @system-service: {:?}",
        get("SystemCallFilter")
    );

    // The example config uses the directories the unit creates, and shuts down in time.
    let config = read("deploy/repld.toml")?;
    for line in [
        "data_dir = \"/var/lib/repld\"",
        "admin_socket = \"/run/repld/admin.sock\"",
        "ca = \"/etc/repld/tls/ca.pem\"",
        "shutdown_timeout = \"30s\"",
    ] {
        ensure!(
            config.lines().any(|l| l.starts_with(line)),
            "deploy/repld.toml lacks {line}"
        );
    }
    ensure!(
        get("TimeoutStopSec") == ["90s"],
        "TimeoutStopSec= stays above shutdown_timeout (30s)"
    );
    Ok(())
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_a_warning() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for with_dropin in [false, true] {
        let unit = unit_copy(dir.path(), with_dropin)?;
        let out = run_output(
            systemd_tool("systemd-analyze").arg("verify").arg(&unit),
            TIMEOUT,
        )?;
        // verify exits 0 on unknown keys and bad values (it only warns), so any output fails.
        ensure!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "systemd-analyze verify {} (drop-in: {with_dropin}):\n{}",
            unit.display(),
            text(&out)
        );
    }
    Ok(())
}

#[test]
fn systemd_analyze_security_rates_the_unit_at_most_2_0() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for with_dropin in [false, true] {
        let unit = unit_copy(dir.path(), with_dropin)?;
        // --threshold counts tenths: 20 is an exposure of 2.0 (systemd 252 refuses "2.0").
        let out = run_output(
            systemd_tool("systemd-analyze")
                .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
                .arg(&unit),
            TIMEOUT,
        )?;
        let report = text(&out);
        let exposure: f64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for repld.service:"))
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no overall exposure level in:\n{report}"))?;
        ensure!(
            out.status.success() && exposure <= MAX_EXPOSURE,
            "systemd-analyze security rates the unit {exposure} (drop-in: {with_dropin}), more \
             than {MAX_EXPOSURE}:\n{report}"
        );
        eprintln!("exposure of repld.service (drop-in: {with_dropin}): {exposure}");
    }
    Ok(())
}

#[test]
fn the_sysusers_file_creates_the_repld_user_and_group() -> Result<()> {
    let dir = tempfile::tempdir()?;
    fs::create_dir(dir.path().join("etc"))?;
    let out = run_output(
        systemd_tool("systemd-sysusers")
            .arg(format!("--root={}", dir.path().display()))
            .arg(root().join("deploy/systemd/repld.sysusers")),
        TIMEOUT,
    )?;
    ensure!(out.status.success(), "systemd-sysusers:\n{}", text(&out));
    let passwd = fs::read_to_string(dir.path().join("etc/passwd"))?;
    let group = fs::read_to_string(dir.path().join("etc/group"))?;
    let user = passwd
        .lines()
        .find(|l| l.starts_with("repld:"))
        .with_context(|| format!("no repld user in:\n{passwd}"))?;
    ensure!(
        user.ends_with(":/var/lib/repld:/usr/sbin/nologin"),
        "the repld user's home and shell: {user}"
    );
    ensure!(
        group.lines().any(|l| l.starts_with("repld:")),
        "no repld group in:\n{group}"
    );
    Ok(())
}

#[test]
fn the_example_config_passes_check_config_with_its_tls_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let example = read("deploy/repld.toml")?;
    let name = example
        .lines()
        .find_map(|l| l.strip_prefix("node_name = "))
        .map(|v| v.trim_matches('"').to_owned())
        .context("the example names its node")?;

    // As shipped, only the TLS files are missing (unless this machine has them).
    if !Path::new("/etc/repld/tls/ca.pem").exists() {
        let out = run_output(
            Command::new(bin("repld"))
                .args(["check-config", "--config"])
                .arg(root().join("deploy/repld.toml"))
                .env_remove("REPLD_CONFIG"),
            TIMEOUT,
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("/etc/repld/tls/"),
            "check-config on the example without TLS files should fail on them alone:\n{}",
            text(&out)
        );
    }

    // With TLS files from `replctl certs init` (the node's CN is its node_name).
    let certs = Certs::init(&dir.path().join("tls"), &[&name], &["admin"])?;
    let config = example
        .replace("/etc/repld/tls/ca.pem", &certs.ca().display().to_string())
        .replace(
            "/etc/repld/tls/node.pem",
            &certs.cert(&name).display().to_string(),
        )
        .replace(
            "/etc/repld/tls/node.key",
            &certs.key(&name).display().to_string(),
        );
    ensure!(config != example, "the example's TLS paths were not found");
    let path = dir.path().join("repld.toml");
    fs::write(&path, &config)?;
    let out = run_output(
        Command::new(bin("repld"))
            .args(["check-config", "--config"])
            .arg(&path)
            .env_remove("REPLD_CONFIG"),
        TIMEOUT,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.starts_with("OK"),
        "repld check-config on deploy/repld.toml with TLS files:\n{}",
        text(&out)
    );
    for line in [
        "data_dir = \"/var/lib/repld\"",
        "admin_socket = \"/run/repld/admin.sock\"",
        "path = \"/var/lib/repld/repld.img\"",
    ] {
        ensure!(
            stdout.lines().any(|l| l == line),
            "the effective config lacks {line}:\n{stdout}"
        );
    }
    Ok(())
}
