//! repld under systemd's notify protocol: READY=1 once serving, WATCHDOG=1 pings at half the
//! watchdog interval, STOPPING=1 on SIGTERM, then a clean exit.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use repl_tests::node::{NodeOptions, TestNode, bin};

#[test]
fn repld_notifies_ready_watchdog_and_stopping() {
    let node = TestNode::create(NodeOptions::default()).expect("node config");
    let sock_path = node.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut child = Command::new(bin("repld"))
        .args(["run", "--config"])
        .arg(node.config_path())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start repld");

    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    // READY=1, then at least three watchdog pings.
    while Instant::now() < deadline && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 3
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let ready = seen
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("READY=1 was sent");
    let first_ping = seen
        .iter()
        .position(|m| m.contains("WATCHDOG=1"))
        .expect("WATCHDOG=1 was sent");
    assert!(
        ready < first_ping,
        "READY=1 comes before the pings: {seen:?}"
    );
    assert!(
        seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "periodic WATCHDOG=1: {seen:?}"
    );

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stopping = false;
    while Instant::now() < deadline && !stopping {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    assert!(stopping, "STOPPING=1 was sent after SIGTERM");
    let status = child.wait().expect("wait for repld");
    assert_eq!(status.code(), Some(0), "repld exits 0 after SIGTERM");
}
