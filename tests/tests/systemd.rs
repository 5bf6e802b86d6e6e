//! repld under systemd's notify protocol: READY=1 once serving, WATCHDOG=1 pings at half the
//! watchdog interval (`WATCHDOG_USEC`, set by the unit's `WatchdogSec=`), STOPPING=1 on SIGTERM,
//! then a clean exit.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use repl_tests::node::{NodeOptions, TestNode, bin};

/// The watchdog timeout the test asks for: pings are due every half of it.
const WATCHDOG: Duration = Duration::from_millis(1000);

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
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start repld");

    let mut seen: Vec<String> = Vec::new();
    let mut pings: Vec<Instant> = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    // READY=1, then at least four watchdog pings.
    while Instant::now() < deadline && pings.len() < 4 {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.contains("WATCHDOG=1") {
                pings.push(Instant::now());
            }
            seen.push(msg);
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
    assert!(pings.len() >= 4, "periodic WATCHDOG=1: {seen:?}");
    // Every half interval: never as late as the timeout (systemd would kill the service), and
    // not a busy stream either.
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = (pings[pings.len() - 1] - pings[0]) / u32::try_from(gaps.len()).expect("few gaps");
    assert!(
        gaps.iter().all(|g| *g < WATCHDOG) && mean >= WATCHDOG / 4,
        "WATCHDOG=1 about every {:?} (half of WATCHDOG_USEC): gaps {gaps:?}",
        WATCHDOG / 2
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
