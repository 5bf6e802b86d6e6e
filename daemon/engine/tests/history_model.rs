//! History against a model: random transactions of puts, overwrites, mkdirs, renames and
//! (recursive) deletes, invalid ones included, are run against the engine and against an
//! in-memory model. Every committed TID must then read back exactly as the model was after that
//! commit (and so must any time between two commits), before and after a reopen and after an
//! index rebuild; every transaction the model refuses, the engine refuses with the same error
//! and without a trace.
//!
//! Retention against the same model: random transactions, snapshots and pauses, with prunes
//! (at advancing times, some with a hold) applied repeatedly. Every commit the policy keeps must
//! read back exactly as the model was; every commit it dropped must report "pruned"; and both
//! must stay so after a reopen and after an index rebuild from the log.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use common::{dir_attrs, file_attrs, mem_options, name, options, p};
use proptest::prelude::*;
use repld_engine::{At, Engine, EntryKind, Error, PfsName, PfsOptions, Tid};

/// The paths operations pick from: nested directories, so that a parent may be missing, a file,
/// or a directory with children.
const PATHS: [&str; 9] = ["a", "b", "d", "d/a", "d/b", "d/e", "d/e/a", "e", "e/a"];

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Vec<u8>),
    Mkdir(usize, bool),
    Delete(usize, bool),
    Rename(usize, usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

type Model = BTreeMap<String, Node>;

/// Why the model refuses an operation: the engine must give the same error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    ParentMissing,
    NotADirectory,
    IsADirectory,
    AlreadyExists,
    NotFound,
    DirectoryNotEmpty,
    IntoItself,
}

fn refusal_of(e: &Error) -> Option<Refusal> {
    Some(match e {
        Error::ParentMissing(_) => Refusal::ParentMissing,
        Error::NotADirectory(_) => Refusal::NotADirectory,
        Error::IsADirectory(_) => Refusal::IsADirectory,
        Error::AlreadyExists(_) => Refusal::AlreadyExists,
        Error::NotFound { .. } => Refusal::NotFound,
        Error::DirectoryNotEmpty(_) => Refusal::DirectoryNotEmpty,
        Error::Invalid(m) if m.contains("into itself") => Refusal::IntoItself,
        _ => return None,
    })
}

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(dir, _)| dir)
}

/// Whether `path` is `dir` or lies below it.
fn below(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

fn require_parent_dir(m: &Model, path: &str) -> Result<(), Refusal> {
    match parent(path) {
        None => Ok(()),
        Some(dir) => match m.get(dir) {
            Some(Node::Dir) => Ok(()),
            Some(Node::File(_)) => Err(Refusal::NotADirectory),
            None => Err(Refusal::ParentMissing),
        },
    }
}

/// Applies one operation as the engine's rules say.
fn apply(m: &mut Model, op: &Op) -> Result<(), Refusal> {
    match op {
        Op::Put(i, content) => {
            let path = PATHS[*i];
            require_parent_dir(m, path)?;
            if m.get(path) == Some(&Node::Dir) {
                return Err(Refusal::IsADirectory);
            }
            m.insert(path.to_owned(), Node::File(content.clone()));
        }
        Op::Mkdir(i, exist_ok) => {
            let path = PATHS[*i];
            require_parent_dir(m, path)?;
            match m.get(path) {
                None => {
                    m.insert(path.to_owned(), Node::Dir);
                }
                Some(Node::Dir) if *exist_ok => {}
                Some(_) => return Err(Refusal::AlreadyExists),
            }
        }
        Op::Delete(i, recursive) => {
            let path = PATHS[*i];
            let node = m.get(path).ok_or(Refusal::NotFound)?;
            if *node == Node::Dir && !recursive && m.keys().any(|k| k != path && below(k, path)) {
                return Err(Refusal::DirectoryNotEmpty);
            }
            m.retain(|k, _| !below(k, path));
        }
        Op::Rename(f, t) => {
            let (from, to) = (PATHS[*f], PATHS[*t]);
            let node = m.get(from).cloned().ok_or(Refusal::NotFound)?;
            if from == to {
                return Ok(());
            }
            if below(to, from) {
                return Err(Refusal::IntoItself);
            }
            require_parent_dir(m, to)?;
            match (m.get(to), &node) {
                (Some(Node::Dir), _) | (Some(_), Node::Dir) => return Err(Refusal::AlreadyExists),
                _ => {}
            }
            let moved: Vec<(String, Node)> = m
                .iter()
                .filter(|(k, _)| below(k, from))
                .map(|(k, v)| (format!("{to}{}", &k[from.len()..]), v.clone()))
                .collect();
            m.retain(|k, _| !below(k, from));
            m.extend(moved);
        }
    }
    Ok(())
}

/// The random choices behind one operation. They are turned into an [`Op`] against the state
/// the transaction has reached, so that most transactions are valid and the history grows deep,
/// while some pick their paths blindly and so are often refused.
#[derive(Debug, Clone)]
struct Seed {
    kind: u8,
    a: usize,
    b: usize,
    flag: bool,
    content: Vec<u8>,
}

fn seed() -> impl Strategy<Value = Seed> {
    let content = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..40),
        // A few fixed contents, so that overwrites with the same bytes (no change) happen.
        1 => (0..3u8).prop_map(|c| vec![c; 3]),
    ];
    (
        0..5u8,
        any::<usize>(),
        any::<usize>(),
        any::<bool>(),
        content,
    )
        .prop_map(|(kind, a, b, flag, content)| Seed {
            kind,
            a,
            b,
            flag,
            content,
        })
}

/// A transaction: whether its operations aim at paths where they are valid, and their seeds.
fn txn() -> impl Strategy<Value = (bool, Vec<Seed>)> {
    (
        prop::bool::weighted(0.8),
        prop::collection::vec(seed(), 0..5),
    )
}

fn pick<T: Clone>(candidates: &[T], n: usize) -> Option<T> {
    (!candidates.is_empty()).then(|| candidates[n % candidates.len()].clone())
}

/// Turns a seed into an operation: aimed at a path where it is valid in `m` when `aim` is set
/// (and such a path exists), at any path otherwise.
fn resolve(m: &Model, s: &Seed, aim: bool) -> Op {
    let idx = |path: &str| PATHS.iter().position(|x| *x == path).expect("a known path");
    let all: Vec<usize> = (0..PATHS.len()).collect();
    let fit = |ok: &dyn Fn(&str) -> bool| -> Vec<usize> {
        all.iter().copied().filter(|i| ok(PATHS[*i])).collect()
    };
    let parent_ok = |path: &str| require_parent_dir(m, path).is_ok();
    let blind = s.a % PATHS.len();
    match s.kind {
        0 | 1 => {
            let cands = if s.kind == 1 {
                // Overwrites of existing files.
                fit(&|x| matches!(m.get(x), Some(Node::File(_))))
            } else {
                fit(&|x| parent_ok(x) && m.get(x) != Some(&Node::Dir))
            };
            let i = if aim {
                pick(&cands, s.a).unwrap_or(blind)
            } else {
                blind
            };
            Op::Put(i, s.content.clone())
        }
        2 => {
            let cands = fit(&|x| {
                parent_ok(x) && (m.get(x).is_none() || (s.flag && m.get(x) == Some(&Node::Dir)))
            });
            let i = if aim {
                pick(&cands, s.a).unwrap_or(blind)
            } else {
                blind
            };
            Op::Mkdir(i, s.flag)
        }
        3 => {
            let cands = fit(&|x| m.contains_key(x));
            let i = if aim {
                pick(&cands, s.a).unwrap_or(blind)
            } else {
                blind
            };
            let non_empty = m.keys().any(|k| k != PATHS[i] && below(k, PATHS[i]));
            Op::Delete(i, s.flag || (aim && non_empty))
        }
        _ => {
            let mut pairs = Vec::new();
            // Subtree moves can take entries outside PATHS; operations name only PATHS.
            for from in m.keys().filter(|k| PATHS.contains(&k.as_str())) {
                for to in PATHS {
                    let mut probe = m.clone();
                    if from != to && apply(&mut probe, &Op::Rename(idx(from), idx(to))).is_ok() {
                        pairs.push((idx(from), idx(to)));
                    }
                }
            }
            let (f, t) = if aim {
                pick(&pairs, s.a).unwrap_or((blind, s.b % PATHS.len()))
            } else {
                (blind, s.b % PATHS.len())
            };
            Op::Rename(f, t)
        }
    }
}

/// The engine's whole PFS at `at`, as a model.
fn read_model(e: &Engine, pfs: &PfsName, at: &At) -> Model {
    common::tree(e, pfs, at)
        .into_iter()
        .map(|(path, v)| {
            let node = match v {
                None => Node::Dir,
                Some(c) => Node::File(c),
            };
            (path, node)
        })
        .collect()
}

/// Every committed TID reads back as its model; so does the last instant before the next
/// commit; the head is the last model.
fn check_all(e: &Engine, pfs: &PfsName, states: &[(Tid, Model)], when: &str) {
    for (i, (tid, want)) in states.iter().enumerate() {
        let got = read_model(e, pfs, &At::Tid(*tid));
        assert_eq!(&got, want, "{when}: the PFS at commit {i} ({tid})");
        if let Some((next, _)) = states.get(i + 1)
            && next.get() > tid.get() + 1
        {
            let just_before = Tid(next.get() - 1);
            assert_eq!(
                &read_model(e, pfs, &At::Tid(just_before)),
                want,
                "{when}: the PFS just before commit {}",
                i + 1
            );
        }
    }
    let (head, last) = states.last().expect("at least the creation");
    assert_eq!(e.pfs(pfs).expect("pfs").head, *head, "{when}: head");
    assert_eq!(&read_model(e, pfs, &At::Head), last, "{when}: head state");
    // Every path's version history is consistent with the model: each version's create TID is
    // a commit at which the model holds it.
    let paths: std::collections::BTreeSet<&String> =
        states.iter().flat_map(|(_, m)| m.keys()).collect();
    for path in paths {
        for v in e.history(pfs, &p(path)).expect("history") {
            let (_, m) = states
                .iter()
                .find(|(t, _)| *t == v.created)
                .expect("versions are created at commits");
            let node = m.get(path).expect("the model holds the version at its TID");
            assert_eq!(
                v.kind() == EntryKind::Dir,
                *node == Node::Dir,
                "{when}: kind of `{path}` at {}",
                v.created
            );
        }
    }
}

/// Runs one random transaction against the engine and the model; a commit appends its state.
fn step(e: &Engine, pfs: &PfsName, states: &mut Vec<(Tid, Model)>, aim: bool, seeds: &[Seed]) {
    let mut model = states.last().expect("at least the creation").1.clone();
    {
        let mut next = model.clone();
        let mut ops = Vec::new();
        let mut expected = Ok(());
        for s in seeds {
            let op = resolve(&next, s, aim);
            if expected.is_ok() {
                expected = apply(&mut next, &op);
            }
            ops.push(op);
        }
        let head = e.pfs(pfs).expect("pfs").head;
        let written = e.stats().bytes_written.load(Ordering::Relaxed);
        let mut tx = e.begin(pfs).expect("begin");
        for op in &ops {
            match op {
                Op::Put(i, c) => tx.put_bytes(&p(PATHS[*i]), file_attrs(), c),
                Op::Mkdir(i, ok) => tx.mkdir(&p(PATHS[*i]), dir_attrs(), *ok),
                Op::Delete(i, r) => tx.delete(&p(PATHS[*i]), *r),
                Op::Rename(f, t) => tx.rename(&p(PATHS[*f]), &p(PATHS[*t])),
            }
            .expect("adding an operation only checks its own arguments");
        }
        match (tx.commit(), expected) {
            (Ok(Some(tid)), Ok(())) => {
                assert_ne!(
                    next, model,
                    "the engine committed {ops:?}, which changes nothing"
                );
                assert!(tid > head, "TIDs increase");
                model = next;
                states.push((tid, model.clone()));
            }
            (Ok(None), Ok(())) => {
                assert_eq!(next, model, "the engine found no change in {ops:?}");
            }
            (Err(err), Err(refusal)) => {
                assert_eq!(
                    refusal_of(&err),
                    Some(refusal),
                    "the engine refused {ops:?} with: {err}"
                );
                assert_eq!(
                    e.pfs(pfs).expect("pfs").head,
                    head,
                    "a refusal commits nothing"
                );
                assert_eq!(
                    e.stats().bytes_written.load(Ordering::Relaxed),
                    written,
                    "a refusal writes nothing"
                );
            }
            (Ok(tid), Err(refusal)) => {
                panic!("the engine committed {ops:?} ({tid:?}); the model refuses it: {refusal:?}")
            }
            (Err(err), Ok(())) => panic!("the engine refused {ops:?}: {err}"),
        }
    }
}

fn run(txns: Vec<(bool, Vec<Seed>)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pfs = name("data");
    let size = 64 << 20;
    let e = Engine::open(options(dir.path(), size)).expect("open");
    let created = e
        .create_pfs(&pfs, PfsOptions::default())
        .expect("create")
        .created;
    let mut states = vec![(created, Model::new())];
    for (aim, seeds) in &txns {
        step(&e, &pfs, &mut states, *aim, seeds);
    }
    check_all(&e, &pfs, &states, "running");
    drop(e);
    let e = Engine::open(options(dir.path(), size)).expect("reopen");
    check_all(&e, &pfs, &states, "after reopen");
    drop(e);
    let e = Engine::open(mem_options(dir.path(), size)).expect("open with a rebuilt index");
    check_all(&e, &pfs, &states, "after an index rebuild");
}

/// Cases per run: 24 keeps CI at a few seconds; `PROPTEST_CASES=500` searches harder.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn every_committed_tid_reads_back_as_the_model(
        txns in prop::collection::vec(txn(), 1..30)
    ) {
        run(txns);
    }
}

/// What the retention test does between transactions.
#[derive(Debug, Clone)]
enum Action {
    Txn(bool, Vec<Seed>),
    /// Prune with `now` this many ms after the head, and a hold at the commit this far back
    /// from the head (none when `None`).
    Prune(u64, Option<usize>),
    /// Name a snapshot at a commit this far back from the head (if it is still readable).
    Snapshot(usize),
    /// Let the clock move on, so that commits spread over the policy's slots.
    Sleep(u64),
    /// Write a MiB to another PFS that keeps only its head, prune it, and let space reclaim
    /// clean until it freed a segment: the log laps the device, and the model PFS's records are
    /// copied (again and again) to its head.
    Fill(u64),
    /// Run this many steps of space reclaim of 256 KiB each (which may stop in the middle of a
    /// pass).
    Reclaim(usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        12 => txn().prop_map(|(aim, seeds)| Action::Txn(aim, seeds)),
        2 => (0..4000u64, prop::option::weighted(0.4, 0..8usize))
            .prop_map(|(ms, hold)| Action::Prune(ms, hold)),
        1 => (0..8usize).prop_map(Action::Snapshot),
        2 => (1..120u64).prop_map(Action::Sleep),
        3 => any::<u64>().prop_map(Action::Fill),
        2 => (1..12usize).prop_map(Action::Reclaim),
    ]
}

/// The commits (indexes into the states; 0 is the creation) that are still readable, by an
/// oracle that follows the rules of `repld_engine::prune` with `Retention::thin` deciding what
/// the policy alone keeps.
fn oracle_prune(
    policy: &repld_engine::Retention,
    states: &[(Tid, Model)],
    kept: &mut Vec<usize>,
    snapshots: &[Tid],
    now: Tid,
    hold: Option<Tid>,
) -> u64 {
    let commits: Vec<usize> = kept.iter().copied().filter(|i| *i > 0).collect();
    let tids: Vec<Tid> = commits.iter().map(|i| states[*i].0).collect();
    let mut keep = policy.thin(now, &tids);
    if let Some(last) = keep.last_mut() {
        *last = true;
    }
    for s in snapshots {
        if let Some(i) = tids.partition_point(|t| t <= s).checked_sub(1) {
            keep[i] = true;
        }
    }
    for (i, t) in tids.iter().enumerate() {
        if hold.is_some_and(|h| *t >= h) {
            keep[i] = true;
        }
    }
    let dropped = keep.iter().filter(|k| !**k).count() as u64;
    *kept = std::iter::once(0)
        .chain(
            commits
                .into_iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(i, _)| i),
        )
        .collect();
    dropped
}

/// Every kept commit (and the instant before the next commit) reads back as its model; every
/// pruned one, and the instant before the next commit, reports "pruned"; every version that
/// `history` still lists is visible at a kept commit.
fn check_retained(e: &Engine, pfs: &PfsName, states: &[(Tid, Model)], kept: &[usize], when: &str) {
    for (i, (tid, want)) in states.iter().enumerate() {
        let last = states
            .get(i + 1)
            .map_or(*tid, |(next, _)| Tid(next.get() - 1));
        for at in [*tid, last] {
            if kept.contains(&i) {
                assert_eq!(
                    &read_model(e, pfs, &At::Tid(at)),
                    want,
                    "{when}: kept commit {i} read at {at}"
                );
            } else {
                match e.list(pfs, &repld_engine::EntryPath::root(), &At::Tid(at)) {
                    Err(Error::Pruned { tid, next }) => {
                        assert_eq!(tid, at);
                        assert!(next > at, "{when}: the next readable TID lies after {at}");
                    }
                    other => panic!("{when}: pruned commit {i} read at {at} gave {other:?}"),
                }
            }
        }
    }
    let (head, last) = states.last().expect("at least the creation");
    assert_eq!(&read_model(e, pfs, &At::Head), last, "{when}: head state");
    assert_eq!(e.pfs(pfs).expect("pfs").head, *head, "{when}: head");
    let paths: std::collections::BTreeSet<&String> =
        states.iter().flat_map(|(_, m)| m.keys()).collect();
    for path in paths {
        for v in e.history(pfs, &p(path)).expect("history") {
            let seen = kept.iter().any(|i| {
                let t = states[*i].0;
                v.created <= t && v.deleted.is_none_or(|d| d > t)
            });
            assert!(
                seen,
                "{when}: `{path}` version {} is kept but no kept commit sees it",
                v.created
            );
        }
    }
}

fn run_retention(policy: &str, actions: Vec<Action>) {
    let policy: repld_engine::Retention = policy.parse().expect("a valid policy");
    let dir = tempfile::tempdir().expect("tempdir");
    let pfs = name("data");
    let size = 64 << 20;
    let e = Engine::open(options(dir.path(), size)).expect("open");
    let created = e
        .create_pfs(&pfs, PfsOptions::default())
        .expect("create")
        .created;
    e.set_retention(&pfs, policy.clone())
        .expect("set retention");
    assert_eq!(e.pfs(&pfs).expect("pfs").retention, policy);
    let mut states = vec![(created, Model::new())];
    let mut kept = vec![0usize];
    let mut snapshots = Vec::new();
    let filler = name("filler");
    e.create_pfs(&filler, PfsOptions::default())
        .expect("create the filler");
    e.set_retention(&filler, "0s".parse().expect("a valid policy"))
        .expect("set retention");
    let mut fills = 0;
    for a in actions {
        match a {
            Action::Fill(seed) => {
                fills += 1;
                let mut tx = e.begin(&filler).expect("begin");
                let data: Vec<u8> = (0..(1u64 << 20))
                    .map(|i| (seed.wrapping_add(i).wrapping_mul(0x9E37_79B9)) as u8)
                    .collect();
                tx.put_bytes(&p("f"), file_attrs(), &data).expect("put");
                tx.commit().expect("commit");
                e.prune(&filler, repld_engine::PruneOptions::now())
                    .expect("prune the filler");
                loop {
                    let s = e.reclaim_step(1 << 20).expect("reclaim");
                    if s.freed_segments > 0 || s.idle {
                        break;
                    }
                }
            }
            Action::Reclaim(steps) => {
                for _ in 0..steps {
                    e.reclaim_step(256 << 10).expect("reclaim");
                }
                check_retained(&e, &pfs, &states, &kept, "after reclaim steps");
            }
            Action::Txn(aim, seeds) => {
                let before = states.len();
                step(&e, &pfs, &mut states, aim, &seeds);
                kept.extend(before..states.len());
            }
            Action::Sleep(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            Action::Snapshot(back) => {
                let Some(&i) = kept.iter().rev().nth(back) else {
                    continue;
                };
                let name = format!("s{}", snapshots.len());
                let tid = states[i].0;
                e.snapshot_create(&pfs, &name, Some(tid)).expect("snapshot");
                snapshots.push(tid);
            }
            Action::Prune(ms, back) => {
                let head = states.last().expect("states").0;
                let opts = repld_engine::PruneOptions {
                    now: Tid(head.get() + ms * 1_000_000),
                    hold: back
                        .and_then(|b| kept.iter().rev().nth(b))
                        .map(|i| states[*i].0),
                    force: false,
                };
                let dry = e.prune_plan(&pfs, opts).expect("dry run");
                let report = e.prune(&pfs, opts).expect("prune");
                assert_eq!(dry, report, "the dry run names what the prune does");
                let dropped =
                    oracle_prune(&policy, &states, &mut kept, &snapshots, opts.now, opts.hold);
                assert_eq!(report.commits, dropped, "commits pruned");
                check_retained(&e, &pfs, &states, &kept, "after a prune");
            }
        }
    }
    check_retained(&e, &pfs, &states, &kept, "at the end");
    if fills >= 8 {
        assert!(
            e.stats().segments_freed.load(Ordering::Relaxed) > 0,
            "{fills} MiB written and pruned: reclaim freed segments"
        );
    }
    let index = e.index_dump().expect("dump the index");
    drop(e);
    let e = Engine::open(options(dir.path(), size)).expect("reopen");
    check_retained(&e, &pfs, &states, &kept, "after reopen");
    assert!(
        e.index_dump().expect("dump") == index,
        "the index after a reopen is the one the engine kept"
    );
    drop(e);
    let e = Engine::open(mem_options(dir.path(), size)).expect("open with a rebuilt index");
    check_retained(&e, &pfs, &states, &kept, "after an index rebuild");
    assert!(
        e.index_dump().expect("dump") == index,
        "the index rebuilt from the device is the one the engine kept"
    );
    assert_eq!(
        e.pfs(&pfs).expect("pfs").retention,
        policy,
        "policy after rebuild"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn every_kept_tid_reads_back_as_the_model_and_every_pruned_tid_says_pruned(
        policy in prop::sample::select(vec!["0s", "0s,1s:1w", "1s", "1s,1s:3s", "2s,1s:4s,2s:8s"]),
        actions in prop::collection::vec(action(), 1..80)
    ) {
        run_retention(policy, actions);
    }
}
