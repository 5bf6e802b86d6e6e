//! Space reclaim: cleaning the oldest segment of the log and freeing it.
//!
//! - Cleaning with live and dead chunks, commits (kept and pruned), PFS events and checkpoints,
//!   and then reopening (incremental replay) or rebuilding the index from the device, gives the
//!   same index, entry for entry, as the engine kept while it ran; every kept TID reads back as
//!   it was written.
//! - A reader that took an LSN from the index while reclaim moves the record and frees (and
//!   reuses) its segment never returns wrong data.
//! - Chunks written ahead by a transaction that is still open, chunks a transaction found stored
//!   (deduplicated) that were dead, and the chunks of a slave's partly received TID, survive
//!   cleaning, and the commit that references them reads back.
//! - Space: a 256 MiB working set overwritten 10 times on a 1 GiB device with a retention of the
//!   head only never fills the device and keeps its used space within twice the working set.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{file_attrs, mem_options, name, options, p, pattern, put, tree};
use rand::{Rng, SeedableRng};
use repld_engine::{
    ApplyBatch, At, Engine, Partial, PfsName, PfsOptions, PruneOptions, Retention, Role, Tid,
};

const MIB: usize = 1 << 20;

/// Runs reclaim steps until the pass under way (if any) is done; returns the segments freed.
fn finish_pass(e: &Engine, budget: u64) -> u64 {
    let mut freed = 0;
    loop {
        let s = e.reclaim_step(budget).expect("reclaim step");
        freed += s.freed_segments;
        if !s.in_pass {
            return freed;
        }
    }
}

/// Cleans until `segments` segments were freed (or the log is down to one segment).
fn reclaim(e: &Engine, segments: u64) -> u64 {
    let mut freed = 0;
    while freed < segments {
        let s = e.reclaim_step(1 << 20).expect("reclaim step");
        freed += s.freed_segments;
        if s.idle {
            break;
        }
    }
    freed
}

fn prune_now(e: &Engine, pfs: &PfsName) {
    e.prune(
        pfs,
        PruneOptions {
            now: Tid(Tid::now().get() + 3_600_000_000_000),
            hold: None,
            force: false,
        },
    )
    .expect("prune");
}

type Dump = Vec<(Vec<u8>, Vec<u8>)>;

fn assert_same_index(a: &Dump, b: &Dump, what: &str) {
    if a == b {
        return;
    }
    let am: BTreeMap<_, _> = a.iter().cloned().collect();
    let bm: BTreeMap<_, _> = b.iter().cloned().collect();
    let mut diffs = Vec::new();
    for (k, v) in &am {
        match bm.get(k) {
            None => diffs.push(format!("only before: {}", show(k))),
            Some(w) if w != v => diffs.push(format!("differs: {}", show(k))),
            _ => {}
        }
    }
    for k in bm.keys() {
        if !am.contains_key(k) {
            diffs.push(format!("only after: {}", show(k)));
        }
    }
    diffs.truncate(20);
    panic!("{what}: the index differs:\n{}", diffs.join("\n"));
}

fn show(k: &[u8]) -> String {
    format!("{}:{}", k[0] as char, String::from_utf8_lossy(&k[1..]))
}

/// A workload over three PFSes: `keep` keeps all history and names snapshots, `head` keeps only
/// its head (pruned often), `gone` is destroyed half way. Files of 10 KiB to 1.5 MiB are put,
/// overwritten and deleted; reclaim runs in between. Returns the TIDs of `keep` and what each
/// read, and the head trees.
struct Workload {
    keep: PfsName,
    head: PfsName,
    states: Vec<(Tid, common::Tree)>,
}

fn workload(e: &Engine, rounds: usize, seed: u64, reclaim_every: usize) -> Workload {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keep = name("keep");
    let head = name("head");
    let gone = name("gone");
    e.create_pfs(&keep, PfsOptions::default()).expect("create");
    e.create_pfs(&head, PfsOptions::default()).expect("create");
    e.create_pfs(&gone, PfsOptions::default()).expect("create");
    e.set_retention(&head, head_only()).expect("retention");
    let mut states = Vec::new();
    for round in 0..rounds {
        let target = if rng.random_bool(0.7) { &head } else { &keep };
        let path = format!("f{}", rng.random_range(0..8));
        let mut tx = e.begin(target).expect("begin");
        if rng.random_bool(0.15) && e.stat(target, &p(&path), &At::Head).is_ok() {
            tx.delete(&p(&path), false).expect("delete");
        } else {
            let len = rng.random_range(10_000..(3 * MIB / 2));
            tx.put_bytes(
                &p(&path),
                file_attrs(),
                &pattern(seed * 1000 + round as u64, len),
            )
            .expect("put");
        }
        let tid = tx.commit().expect("commit");
        if target == &keep
            && let Some(tid) = tid
        {
            states.push((tid, tree(e, &keep, &At::Tid(tid))));
        }
        if round % 5 == 0 && round < rounds / 2 {
            put(e, &gone, "x", &pattern(round as u64, 200_000));
        }
        if round == rounds / 2 {
            e.destroy_pfs(&gone).expect("destroy");
        }
        if round % 7 == 3 && !states.is_empty() {
            let (tid, _) = states[states.len() / 2];
            e.snapshot_create(&keep, &format!("s{round}"), Some(tid))
                .expect("snapshot");
        }
        if round % 4 == 0 {
            prune_now(e, &head);
        }
        if reclaim_every > 0 && round % reclaim_every == 0 {
            reclaim(e, 1);
        }
    }
    Workload { keep, head, states }
}

/// A retention that keeps only the head.
fn head_only() -> Retention {
    "0s".parse().expect("a valid policy")
}

fn check_reads(e: &Engine, w: &Workload, heads: &BTreeMap<String, common::Tree>, what: &str) {
    for (tid, want) in &w.states {
        assert_eq!(
            &tree(e, &w.keep, &At::Tid(*tid)),
            want,
            "{what}: keep at {tid}"
        );
    }
    for pfs in [&w.keep, &w.head] {
        assert_eq!(
            &tree(e, pfs, &At::Head),
            &heads[pfs.as_str()],
            "{what}: head of {pfs}"
        );
    }
}

#[test]
fn cleaned_segments_rebuild_to_the_same_index_as_the_engine_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 96 << 20;
    let e = Engine::open(options(dir.path(), size)).expect("open");
    let w = workload(&e, 120, 7, 3);
    assert!(
        e.stats().segments_freed.load(Ordering::Relaxed) >= 5,
        "reclaim freed segments during the workload"
    );
    // Stop in the middle of a pass: copies exist and the segment is not freed yet.
    let s = e.reclaim_step(256 << 10).expect("step");
    assert!(s.in_pass || s.idle);
    let heads: BTreeMap<String, common::Tree> = [&w.keep, &w.head]
        .iter()
        .map(|n| (n.to_string(), tree(&e, n, &At::Head)))
        .collect();
    check_reads(&e, &w, &heads, "while running");
    let kept = e.index_dump().expect("dump");
    drop(e);

    let e = Engine::open(options(dir.path(), size)).expect("reopen");
    assert_same_index(&kept, &e.index_dump().expect("dump"), "reopen (replay)");
    check_reads(&e, &w, &heads, "after reopen");
    // Finish the pass and clean more, then rebuild from the device alone.
    finish_pass(&e, 1 << 20);
    reclaim(&e, 3);
    let kept = e.index_dump().expect("dump");
    drop(e);
    let e = Engine::open(mem_options(dir.path(), size)).expect("open with a rebuilt index");
    assert_same_index(
        &kept,
        &e.index_dump().expect("dump"),
        "rebuild from scratch",
    );
    check_reads(&e, &w, &heads, "after a rebuild");
    drop(e);
    let mut o = options(dir.path(), size);
    o.rebuild_index = true;
    let e = Engine::open(o).expect("open with --rebuild-index");
    assert_same_index(&kept, &e.index_dump().expect("dump"), "--rebuild-index");
}

#[test]
fn a_relocated_record_reads_back_after_its_segment_is_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(options(dir.path(), 64 << 20)).expect("open");
    let pfs = name("data");
    e.create_pfs(&pfs, PfsOptions::default()).expect("create");
    let data = pattern(1, 300_000);
    let tid = put(&e, &pfs, "kept", &data);
    // Fill past the first segment, so that it becomes a tail that can be cleaned.
    for i in 0..6 {
        put(&e, &pfs, "filler", &pattern(100 + i, MIB));
    }
    let first = e.space().segments_used;
    assert_eq!(finish_pass(&e, 1 << 20), 1, "the tail segment is freed");
    assert!(e.space().segments_used <= first, "no segment more in use");
    assert_eq!(
        e.read_file(&pfs, &p("kept"), &At::Head).expect("read"),
        data
    );
    let changes = e.changes_since(&pfs, Tid::ZERO, 100).expect("changes");
    assert_eq!(changes.first().map(|c| c.tid), Some(tid));
    // The sender's read of the relocated chunks, straight into a batch.
    let mut batch = b"head".to_vec();
    for r in changes[0].chunk_refs() {
        e.read_chunk_append(&r.hash, &mut batch)
            .expect("a relocated chunk read into a batch");
    }
    assert_eq!(batch, [&b"head"[..], &data].concat());
    drop(e);
    let e = Engine::open(mem_options(dir.path(), 64 << 20)).expect("rebuild");
    assert_eq!(
        e.read_file(&pfs, &p("kept"), &At::Tid(tid)).expect("read"),
        data
    );
}

#[test]
fn readers_holding_old_lsns_never_see_wrong_data_while_slots_are_freed_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(options(dir.path(), 40 << 20)).expect("open");
    let stable = name("stable");
    let churn = name("churn");
    e.create_pfs(&stable, PfsOptions::default())
        .expect("create");
    e.create_pfs(&churn, PfsOptions::default()).expect("create");
    e.set_retention(&churn, head_only()).expect("retention");
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("s{i}"),
                pattern(500 + i, 200_000 + i as usize * 90_000),
            )
        })
        .collect();
    for (path, data) in &files {
        put(&e, &stable, path, data);
    }
    let changes = e.changes_since(&stable, Tid::ZERO, 100).expect("changes");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (e, stable, files, changes, stop) = (
                e.clone(),
                stable.clone(),
                files.clone(),
                changes.clone(),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (path, data) in &files {
                        let got = e
                            .read_file(&stable, &p(path), &At::Head)
                            .unwrap_or_else(|err| panic!("reader {r}: read {path}: {err}"));
                        assert!(&got == data, "reader {r}: `{path}` read back wrong data");
                        reads += 1;
                    }
                    let got = e
                        .changes_since(&stable, Tid::ZERO, 100)
                        .unwrap_or_else(|err| panic!("reader {r}: changes: {err}"));
                    assert_eq!(got, changes, "reader {r}: the change scan");
                }
                reads
            })
        })
        .collect();
    // Each lap of the log moves the stable files to the head and frees (and reuses) their old
    // slots: 40 MiB is 9 slots, and this writes far more.
    let mut freed = 0;
    for i in 0..80u64 {
        put(&e, &churn, "big", &pattern(1000 + i, 3 * MIB / 2));
        prune_now(&e, &churn);
        freed += reclaim(&e, 1);
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader") > 0);
    }
    assert!(
        freed > 20,
        "the log lapped the device several times: {freed}"
    );
}

#[test]
fn chunks_of_an_open_transaction_and_deduplicated_dead_chunks_survive_cleaning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 48 << 20;
    let e = Engine::open(options(dir.path(), size)).expect("open");
    let pfs = name("data");
    e.create_pfs(&pfs, PfsOptions::default()).expect("create");
    e.set_retention(&pfs, head_only()).expect("retention");
    // A chunk that becomes dead: written, deleted, pruned.
    let old = pattern(42, 700_000);
    put(&e, &pfs, "old", &old);
    let mut tx = e.begin(&pfs).expect("begin");
    tx.delete(&p("old"), false).expect("delete");
    tx.commit().expect("commit");
    prune_now(&e, &pfs);
    // An open transaction: 12 MiB sent ahead (not committed), then the dead content again,
    // which it finds stored and does not write.
    let big = pattern(43, 12 * MIB + 5);
    let mut open = e.begin(&pfs).expect("begin");
    open.put_bytes(&p("big"), file_attrs(), &big).expect("put");
    open.put_bytes(&p("again"), file_attrs(), &old)
        .expect("put");
    // Lap the log while it stays open.
    for i in 0..30u64 {
        put(&e, &pfs, "churn", &pattern(2000 + i, 3 * MIB / 2));
        prune_now(&e, &pfs);
        reclaim(&e, 1);
    }
    assert!(e.stats().segments_freed.load(Ordering::Relaxed) >= 10);
    let tid = open
        .commit()
        .expect("the commit after cleaning")
        .expect("tid");
    assert_eq!(e.read_file(&pfs, &p("big"), &At::Head).expect("read"), big);
    assert_eq!(
        e.read_file(&pfs, &p("again"), &At::Head).expect("read"),
        old
    );
    for i in 0..8u64 {
        put(&e, &pfs, "churn", &pattern(5000 + i, 3 * MIB / 2));
        reclaim(&e, 1);
    }
    drop(e);
    let e = Engine::open(mem_options(dir.path(), size)).expect("rebuild");
    assert_eq!(
        e.read_file(&pfs, &p("big"), &At::Tid(tid)).expect("read"),
        big
    );
    assert_eq!(
        e.read_file(&pfs, &p("again"), &At::Tid(tid)).expect("read"),
        old
    );
}

#[test]
fn chunks_of_a_partly_received_tid_survive_cleaning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 48 << 20;
    std::fs::create_dir_all(dir.path().join("m")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("s")).expect("mkdir");
    let master = Engine::open(options(&dir.path().join("m"), size)).expect("open master");
    let e = Engine::open(options(&dir.path().join("s"), size)).expect("open slave");
    let m = name("m");
    master
        .create_pfs(&m, PfsOptions::default())
        .expect("create");
    let data = pattern(77, 6 * MIB + 3);
    put(&master, &m, "big", &data);
    let change = master
        .changes_since(&m, Tid::ZERO, 10)
        .expect("changes")
        .remove(0);
    let chunks: Vec<bytes::Bytes> = change
        .chunk_refs()
        .map(|c| master.read_chunk(&c.hash).expect("chunk").into())
        .collect();
    let s = name("s");
    let info = master.pfs(&m).expect("pfs");
    e.create_pfs(
        &s,
        PfsOptions {
            role: Role::Slave,
            nohistory: false,
            shared_uuid: Some(info.shared_uuid),
        },
    )
    .expect("create slave");
    let half = chunks.len() / 2;
    e.apply(
        &s,
        ApplyBatch {
            chunks: chunks[..half].to_vec(),
            changes: Vec::new(),
            partial: Some(Partial {
                tid: change.tid,
                chunks_done: half as u64,
            }),
            master_head: change.tid,
        },
    )
    .expect("first half");
    // Lap the slave's log with data of another PFS while the TID is partly received, and
    // reopen in the middle, so that the pins are not only in memory.
    let other = name("other");
    e.create_pfs(&other, PfsOptions::default()).expect("create");
    e.set_retention(&other, head_only()).expect("retention");
    for i in 0..30u64 {
        put(&e, &other, "churn", &pattern(3000 + i, 3 * MIB / 2));
        prune_now(&e, &other);
        reclaim(&e, 1);
    }
    drop(e);
    let e = Engine::open(options(&dir.path().join("s"), size)).expect("reopen slave");
    // Every chunk is pinned now (the partial TID began before the open): a few laps only.
    for i in 0..6u64 {
        put(&e, &other, "churn", &pattern(4000 + i, 3 * MIB / 2));
        prune_now(&e, &other);
        reclaim(&e, 1);
    }
    assert!(e.stats().segments_freed.load(Ordering::Relaxed) >= 3);
    let cp = e
        .apply(
            &s,
            ApplyBatch {
                chunks: chunks[half..].to_vec(),
                changes: vec![change.clone()],
                partial: None,
                master_head: change.tid,
            },
        )
        .expect("second half");
    assert_eq!(cp.synced, change.tid);
    assert_eq!(e.read_file(&s, &p("big"), &At::Head).expect("read"), data);
}

#[test]
fn a_pruned_commit_is_copied_with_only_the_ops_its_surviving_versions_need() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 48 << 20;
    let e = Engine::open(options(dir.path(), size)).expect("open");
    let pfs = name("data");
    e.create_pfs(&pfs, PfsOptions::default()).expect("create");
    e.set_retention(&pfs, head_only()).expect("retention");
    // c puts a and b; d and then f overwrite a. Pruning to the head drops c and d, and every
    // version of a but f's; b (created by c) survives, so c is still needed, for b only.
    let mut tx = e.begin(&pfs).expect("begin");
    tx.put_bytes(&p("a"), file_attrs(), b"a1").expect("put");
    tx.put_bytes(&p("b"), file_attrs(), b"b1").expect("put");
    let c = tx.commit().expect("commit").expect("tid");
    let d = put(&e, &pfs, "a", b"a2");
    let f = put(&e, &pfs, "a", b"a3");
    let c_link = e.link_at(&pfs, c).expect("link");
    prune_now(&e, &pfs);
    assert_eq!(e.history(&pfs, &p("a")).expect("history").len(), 1);
    let filler = name("filler");
    e.create_pfs(&filler, PfsOptions::default())
        .expect("create");
    for i in 0..4 {
        put(&e, &filler, &format!("f{i}"), &pattern(i, 3 * MIB / 2));
    }
    assert_eq!(finish_pass(&e, 1 << 20), 1, "the first segment is freed");
    // d went with the segment, and so did its chain link: a link lookup there says "pruned"
    // rather than answering with c's link. c was copied; its link still answers.
    assert!(
        matches!(e.link_at(&pfs, d), Err(repld_engine::Error::Pruned { .. })),
        "{:?}",
        e.link_at(&pfs, d)
    );
    assert_eq!(e.link_at(&pfs, c).expect("link"), c_link);
    let kept = e.index_dump().expect("dump");
    drop(e);
    let e = Engine::open(mem_options(dir.path(), size)).expect("rebuild");
    assert_same_index(&kept, &e.index_dump().expect("dump"), "rebuild");
    let a = e.history(&pfs, &p("a")).expect("history");
    assert_eq!(a.iter().map(|v| v.created).collect::<Vec<_>>(), vec![f]);
    let b = e.history(&pfs, &p("b")).expect("history");
    assert_eq!(b.iter().map(|v| v.created).collect::<Vec<_>>(), vec![c]);
    assert_eq!(e.read_file(&pfs, &p("b"), &At::Head).expect("read"), b"b1");
}
