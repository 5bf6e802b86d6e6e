//! Crash during a slave's apply: a child process applies a master's history to a slave, batch
//! after batch, and is killed with SIGKILL at random moments, over and over, on the same
//! devices. After every kill: the slave reopens, its checkpoint is at or past every batch the
//! child saw acknowledged, it equals its master at that checkpoint (deep digests), and an index
//! rebuilt from the device is the same as the one the reopened engine replayed. The last round
//! runs the child until the slave has all of the master's history.
//!
//! The child is this test binary itself, run as `apply_crash_child` with `APPLY_CRASH_DIR` set.
//! `REPLD_APPLY_CRASH_ROUNDS` (default 8) sets the number of kills.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{batch_of, file_attrs, name, options, p, pattern, start_child};
use rand::{Rng, SeedableRng};
use repld_engine::{At, Engine, Error, PfsName, PfsOptions, Role, Tid};

const SIZE: u64 = 256 << 20;
const COMMITS: u64 = 150;
/// Changes per batch.
const PER_BATCH: usize = 3;
const CHILD_ENV: &str = "APPLY_CRASH_DIR";

fn open(dir: &Path, side: &str) -> Engine {
    Engine::open(options(&dir.join(side), SIZE)).expect("open an engine")
}

fn data() -> PfsName {
    name("data")
}

/// The last TID the child saw acknowledged (durable), from its log.
fn last_ack(dir: &Path) -> Tid {
    std::fs::read_to_string(dir.join("acks.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ACK ")?.parse::<u64>().ok())
        .max()
        .map_or(Tid::ZERO, Tid)
}

/// The child: applies until the slave has everything, then prints DONE.
#[test]
fn apply_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let (master, slave) = (open(dir, "master"), open(dir, "slave"));
    let shared_uuid = master.pfs(&data()).expect("master").shared_uuid;
    match slave.pfs(&data()) {
        Ok(_) => {}
        Err(Error::NoSuchPfs(_)) => {
            slave
                .create_pfs(
                    &data(),
                    PfsOptions {
                        role: Role::Slave,
                        nohistory: false,
                        shared_uuid: Some(shared_uuid),
                    },
                )
                .expect("child: create the slave");
        }
        Err(err) => panic!("child: {err}"),
    }
    let mut log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("acks.log"))
        .expect("open the ack log");
    println!("READY");
    loop {
        let head = slave.pfs(&data()).expect("slave").head;
        let changes = master
            .changes_since(&data(), head, PER_BATCH)
            .expect("child: scan");
        if changes.is_empty() {
            break;
        }
        let cp = slave
            .apply(&data(), batch_of(&master, &data(), &changes))
            .expect("child: apply");
        log.write_all(format!("ACK {}\n", cp.synced.get()).as_bytes())
            .expect("log");
        log.sync_data().expect("fsync the log");
    }
    println!("DONE");
}

/// The slave after a kill: nothing acknowledged lost, equal to its master at its checkpoint,
/// and its replayed index the same as one rebuilt from the device.
fn check(dir: &Path, when: &str) -> Tid {
    let acked = last_ack(dir);
    let master = open(dir, "master");
    let slave = open(dir, "slave");
    let head = slave.pfs(&data()).expect("slave").head;
    assert!(
        head >= acked,
        "{when}: the slave is at {head}, but {acked} was acknowledged"
    );
    if head > Tid::ZERO {
        let at = At::Tid(head);
        assert_eq!(
            slave.digest(&data(), &at, true).expect("slave digest").root,
            master
                .digest(&data(), &at, true)
                .expect("master digest")
                .root,
            "{when}: the slave differs from its master at {head}"
        );
    }
    let replayed = slave.index_dump().expect("dump");
    drop(slave);
    let mut o = options(&dir.join("slave"), SIZE);
    o.rebuild_index = true;
    let rebuilt = Engine::open(o).expect("rebuild the index");
    assert!(
        rebuilt.index_dump().expect("dump") == replayed,
        "{when}: the index rebuilt from the device differs from the replayed one"
    );
    head
}

#[test]
fn kill_during_apply_loses_no_acknowledged_batch_and_the_slave_equals_its_master() {
    let rounds: usize = std::env::var("REPLD_APPLY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let dir = tmp.path();
    let last = {
        let master = open(dir, "master");
        master
            .create_pfs(&data(), PfsOptions::default())
            .expect("master");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut last = Tid::ZERO;
        for seq in 0..COMMITS {
            let mut tx = master.begin(&data()).expect("begin");
            let len = rng.random_range(20_000..600_000usize);
            tx.put_bytes(
                &p(&format!("f{}", seq % 9)),
                file_attrs(),
                &pattern(seq, len),
            )
            .expect("put");
            last = tx.commit().expect("commit").expect("a change");
        }
        last
    };
    let exe = std::env::current_exe().expect("the test binary");
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let mut kills = 0;
    for round in 0..rounds {
        let (mut child, _out) = start_child(&exe, "apply_crash_child", CHILD_ENV, dir);
        // Kill it a few acknowledgements in, a moment after one, while later batches are
        // queued, written or syncing.
        let acks = |dir: &Path| {
            std::fs::read_to_string(dir.join("acks.log")).map_or(0, |t| t.lines().count())
        };
        let until = acks(dir) + rng.random_range(1..6);
        while acks(dir) < until {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3_000)));
        if let Ok(Some(_)) = child.try_wait() {
            // It finished the whole history before the kill: nothing more to interrupt.
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        let at = check(dir, &format!("round {round}, after a kill"));
        eprintln!("round {round}: killed at {at}");
    }
    let (mut child, mut out) = start_child(&exe, "apply_crash_child", CHILD_ENV, dir);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("read the child");
    let status = child.wait().expect("reap");
    assert!(
        status.success() && rest.contains("DONE"),
        "the last round failed ({status}): {}",
        std::fs::read_to_string(dir.join("child.err")).unwrap_or_default()
    );
    assert_eq!(
        check(dir, "at the end"),
        last,
        "the slave has the whole history"
    );
    assert!(kills >= 1, "no kill landed during the apply");
}
