//! Crash during space reclaim: a child process overwrites and deletes files on a small device
//! with a retention of the head only, prunes often, and runs space reclaim without pause on
//! another thread; it is killed with SIGKILL at random moments, over and over, on the same
//! device. After every kill: the engine reopens, every acknowledged commit is there (the head of
//! every path is what its last acknowledged commit made, or what the one unacknowledged commit
//! after it made), and an index rebuilt from the device (`--rebuild-index`) is the same, entry
//! for entry, as the one the reopened engine replayed.
//!
//! The child is this test binary itself, run as `reclaim_crash_child` with `RECLAIM_CRASH_DIR`
//! set. `REPLD_RECLAIM_CRASH_ROUNDS` (default 10) sets the number of kills.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{file_attrs, name, options, p, pattern, start_child};
use rand::{Rng, SeedableRng};
use repld_engine::{At, Engine, EngineOptions, Error, PfsOptions, PruneOptions};

const SIZE: u64 = 48 << 20;
const PATHS: u64 = 6;
const CHILD_ENV: &str = "RECLAIM_CRASH_DIR";

fn engine_options(dir: &Path) -> EngineOptions {
    options(dir, SIZE)
}

/// The child: runs until killed.
#[test]
fn reclaim_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let e = Engine::open(engine_options(dir)).expect("child: open");
    let pfs = name("data");
    match e.pfs(&pfs) {
        Ok(_) => {}
        Err(Error::NoSuchPfs(_)) => {
            e.create_pfs(&pfs, PfsOptions::default()).expect("create");
            e.set_retention(&pfs, "0s".parse().expect("policy"))
                .expect("retention");
        }
        Err(err) => panic!("child: {err}"),
    }
    let log_path = dir.join("acks.log");
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut next = parse(&text).next_seq;
    let mut log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log_path)
        .expect("open the ack log");
    if !text.is_empty() && !text.ends_with('\n') {
        log.write_all(b"\n").expect("end a torn line");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reclaimer = {
        let (e, stop) = (e.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut freed = OpenOptions::new()
                .append(true)
                .create(true)
                .open(dir_of(&e).join("freed.log"))
                .expect("open the freed log");
            while !stop.load(Ordering::Relaxed) {
                let s = e.reclaim_step(512 << 10).expect("child: reclaim step");
                if s.freed_segments > 0 {
                    freed.write_all(b"freed\n").expect("note a freed segment");
                }
                if s.idle {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    println!("READY");
    let mut rng = rand::rngs::StdRng::seed_from_u64(next);
    loop {
        let seq = next;
        next += 1;
        let path = format!("f{}", rng.random_range(0..PATHS));
        let exists = e.stat(&pfs, &p(&path), &At::Head).is_ok();
        let delete = exists && rng.random_bool(0.1);
        let len = rng.random_range(10_000..1_200_000usize);
        // The intent is durable before the commit starts, so that a commit the kill made
        // durable but not acknowledged is known.
        let line = if delete {
            format!("BEGIN {seq} {path} DEL\n")
        } else {
            format!("BEGIN {seq} {path} {len}\n")
        };
        log.write_all(line.as_bytes()).expect("log");
        log.sync_data().expect("fsync the log");
        let mut tx = e.begin(&pfs).expect("begin");
        if delete {
            tx.delete(&p(&path), false).expect("delete");
        } else {
            tx.put_bytes(&p(&path), file_attrs(), &pattern(seq, len))
                .expect("put");
        }
        tx.commit().expect("child: commit");
        log.write_all(format!("ACK {seq}\n").as_bytes())
            .expect("log");
        log.sync_data().expect("fsync the log");
        if seq.is_multiple_of(4) {
            e.prune(&pfs, PruneOptions::now()).expect("child: prune");
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    reclaimer.join().expect("reclaimer");
}

fn dir_of(_e: &Engine) -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var(CHILD_ENV).expect("the child's directory"))
}

/// What a path holds: `None` deleted, `Some((seq, len))` the content of that commit.
type State = Option<(u64, usize)>;

struct Parsed {
    /// Per path, the state after its last acknowledged commit.
    acked: BTreeMap<String, State>,
    /// The last commit begun and not acknowledged, if any: its path and state.
    pending: Option<(String, State)>,
    next_seq: u64,
}

fn parse(text: &str) -> Parsed {
    let mut begun: BTreeMap<u64, (String, State)> = BTreeMap::new();
    let mut acked = BTreeMap::new();
    let mut last_begun = None;
    let mut next_seq = 1;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["BEGIN", seq, path, what] => {
                let (Ok(seq), state) = (seq.parse::<u64>(), *what) else {
                    continue;
                };
                let state = match state {
                    "DEL" => None,
                    n => match n.parse::<usize>() {
                        Ok(len) => Some((seq, len)),
                        Err(_) => continue,
                    },
                };
                begun.insert(seq, ((*path).to_owned(), state));
                last_begun = Some(seq);
                next_seq = next_seq.max(seq + 1);
            }
            ["ACK", seq] => {
                if let Ok(seq) = seq.parse::<u64>()
                    && let Some((path, state)) = begun.get(&seq)
                {
                    acked.insert(path.clone(), *state);
                    if last_begun == Some(seq) {
                        last_begun = None;
                    }
                }
            }
            _ => {}
        }
    }
    Parsed {
        acked,
        pending: last_begun.and_then(|s| begun.get(&s).cloned()),
        next_seq,
    }
}

fn check(e: &Engine, dir: &Path, when: &str) {
    let text = std::fs::read_to_string(dir.join("acks.log")).unwrap_or_default();
    let parsed = parse(&text);
    let pfs = name("data");
    for i in 0..PATHS {
        let path = format!("f{i}");
        let got = match e.read_file(&pfs, &p(&path), &At::Head) {
            Ok(data) => Some(data),
            Err(Error::NotFound { .. }) => None,
            Err(err) => panic!("{when}: read `{path}`: {err}"),
        };
        let want = |s: &State| s.map(|(seq, len)| pattern(seq, len));
        let acked = parsed.acked.get(&path).copied().unwrap_or(None);
        let ok = got == want(&acked)
            || parsed
                .pending
                .as_ref()
                .is_some_and(|(pp, st)| pp == &path && got == want(st));
        assert!(
            ok,
            "{when}: `{path}` is not what its last acknowledged commit ({acked:?}) made"
        );
    }
}

#[test]
fn kill_during_reclaim_loses_nothing_and_the_rebuilt_index_is_the_same() {
    let rounds: usize = std::env::var("REPLD_RECLAIM_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let exe = std::env::current_exe().expect("the test binary");
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    for round in 0..rounds {
        let (mut child, _out) = start_child(&exe, "reclaim_crash_child", CHILD_ENV, dir);
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "round {round}: the child stopped by itself ({status}): {}",
                std::fs::read_to_string(dir.join("child.err")).unwrap_or_default()
            );
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let e = Engine::open(engine_options(dir)).expect("reopen after a kill");
        check(&e, dir, &format!("round {round}, reopened"));
        let replayed = e.index_dump().expect("dump");
        drop(e);
        let mut o = engine_options(dir);
        o.rebuild_index = true;
        let e = Engine::open(o).expect("rebuild the index");
        check(&e, dir, &format!("round {round}, rebuilt"));
        let rebuilt = e.index_dump().expect("dump");
        if rebuilt != replayed {
            let a: BTreeMap<_, _> = replayed.into_iter().collect();
            let b: BTreeMap<_, _> = rebuilt.into_iter().collect();
            let mut diffs: Vec<String> = a
                .iter()
                .filter(|(k, v)| b.get(*k) != Some(v))
                .map(|(k, v)| format!("replayed {k:?} = {v:?}, rebuilt {:?}", b.get(k)))
                .chain(
                    b.keys()
                        .filter(|k| !a.contains_key(*k))
                        .map(|k| format!("only rebuilt {k:?}")),
                )
                .collect();
            diffs.truncate(8);
            panic!(
                "round {round}: the rebuilt index differs from the replayed one:\n{}",
                diffs.join("\n")
            );
        }
    }
    let freed = std::fs::read_to_string(dir.join("freed.log"))
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        freed >= rounds,
        "reclaim freed segments while it was killed: {freed}"
    );
}
