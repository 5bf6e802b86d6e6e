//! Engine behaviour through its public API: nohistory PFSes, directory renames and recursive
//! deletes as single TIDs, invalid input refused with its specific error and nothing written,
//! all-or-nothing transactions, group commit under concurrency, the change scan's cost, and
//! head notifications.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use common::{device_bytes, dir_attrs, file_attrs, image, name, options, p, pattern, put, tree};
use repl_types::PathError;
use repld_engine::{At, Attrs, Engine, EntryPath, Error, Op, PfsName, PfsOptions, Tid, Txn};

const DEVICE: u64 = 256 << 20;

fn engine(dir: &std::path::Path) -> Engine {
    Engine::open(options(dir, DEVICE)).expect("open")
}

fn head(e: &Engine, pfs: &PfsName) -> Tid {
    e.pfs(pfs).expect("pfs").head
}

#[test]
fn a_nohistory_pfs_keeps_only_its_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let scratch = name("scratch");
    e.create_pfs(
        &scratch,
        PfsOptions {
            nohistory: true,
            ..PfsOptions::default()
        },
    )
    .expect("create");
    let t1 = put(&e, &scratch, "f", b"one");
    let t2 = put(&e, &scratch, "f", b"two");
    let t3 = put(&e, &scratch, "g", b"other");
    assert_eq!(
        e.read_file(&scratch, &p("f"), &At::Head)
            .expect("head read"),
        b"two"
    );
    assert_eq!(
        e.read_file(&scratch, &p("f"), &At::Tid(t3))
            .expect("a read at the head TID"),
        b"two"
    );
    for old in [t1, t2] {
        match e.read_file(&scratch, &p("f"), &At::Tid(old)) {
            Err(Error::Pruned { tid, next }) => {
                assert_eq!((tid, next), (old, t3));
            }
            other => panic!("a read at {old} of a nohistory PFS gave {other:?}"),
        }
        assert!(matches!(
            e.list(&scratch, &EntryPath::root(), &At::Tid(old)),
            Err(Error::Pruned { .. })
        ));
    }
    assert_eq!(
        e.history(&scratch, &p("f")).expect("history").len(),
        1,
        "only the current version is kept"
    );
    assert!(
        e.snapshot_create(&scratch, "old", Some(t1)).is_err(),
        "no snapshot of pruned history"
    );
}

/// Builds `d/x`, `d/sub/y`, `d/sub/z`, `top`; returns the TID.
fn tree_of_four(e: &Engine, pfs: &PfsName) -> Tid {
    let mut tx = e.begin(pfs).expect("begin");
    tx.mkdir(&p("d"), dir_attrs(), false).expect("mkdir");
    tx.mkdir(&p("d/sub"), dir_attrs(), false).expect("mkdir");
    tx.put_bytes(&p("d/x"), file_attrs(), b"x").expect("put");
    tx.put_bytes(&p("d/sub/y"), file_attrs(), b"y")
        .expect("put");
    tx.symlink(&p("d/sub/z"), "../x", file_attrs())
        .expect("symlink");
    tx.put_bytes(&p("top"), file_attrs(), b"top").expect("put");
    tx.commit().expect("commit").expect("changed")
}

fn paths(t: &common::Tree) -> Vec<&str> {
    t.keys().map(String::as_str).collect()
}

#[test]
fn renaming_a_directory_moves_its_subtree_in_one_tid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let data = name("data");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let before = tree_of_four(&e, &data);
    let old = tree(&e, &data, &At::Head);
    let mut tx = e.begin(&data).expect("begin");
    tx.rename(&p("d"), &p("moved")).expect("rename");
    let t = tx.commit().expect("commit").expect("changed");
    let new = tree(&e, &data, &At::Head);
    assert_eq!(
        paths(&new),
        [
            "moved",
            "moved/sub",
            "moved/sub/y",
            "moved/sub/z",
            "moved/x",
            "top"
        ]
    );
    for (path, content) in &old {
        if let Some(rest) = path.strip_prefix('d') {
            assert_eq!(
                new.get(&format!("moved{rest}")),
                Some(content),
                "`{path}` moved with its content"
            );
        }
    }
    assert_eq!(
        tree(&e, &data, &At::Tid(before)),
        old,
        "the old TID keeps the old layout"
    );
    assert_eq!(
        tree(&e, &data, &At::Tid(Tid(t.get() - 1))),
        old,
        "nothing moved before the rename's TID"
    );
    let changes = e.changes_since(&data, before, 10).expect("scan");
    assert_eq!(changes.len(), 1, "one TID");
    assert_eq!(changes[0].tid, t);
    let deleted: Vec<&str> = changes[0]
        .ops
        .iter()
        .filter(|op| matches!(op, Op::Delete { .. }))
        .map(|op| op.path().as_str())
        .collect();
    assert_eq!(deleted, ["d", "d/sub", "d/sub/y", "d/sub/z", "d/x"]);
    assert_eq!(changes[0].ops.len(), 10, "five deletes and five puts");
}

#[test]
fn a_recursive_delete_removes_the_subtree_in_one_tid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let data = name("data");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let before = tree_of_four(&e, &data);
    let old = tree(&e, &data, &At::Head);

    let mut tx = e.begin(&data).expect("begin");
    tx.delete(&p("d"), false).expect("delete");
    assert!(matches!(
        tx.commit(),
        Err(Error::DirectoryNotEmpty(path)) if path == p("d")
    ));
    assert_eq!(head(&e, &data), before, "the refused delete wrote nothing");

    let mut tx = e.begin(&data).expect("begin");
    tx.delete(&p("d"), true).expect("delete");
    let t = tx.commit().expect("commit").expect("changed");
    assert_eq!(paths(&tree(&e, &data, &At::Head)), ["top"]);
    assert_eq!(tree(&e, &data, &At::Tid(before)), old);
    let changes = e.changes_since(&data, before, 10).expect("scan");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].tid, t);
    assert_eq!(changes[0].ops.len(), 5);
    assert!(
        changes[0]
            .ops
            .iter()
            .all(|op| matches!(op, Op::Delete { .. }))
    );
}

#[test]
fn malformed_paths_are_refused_with_their_specific_error() {
    type Check = fn(&PathError) -> bool;
    let cases: [(String, Check); 9] = [
        ("/etc/passwd".into(), |e| {
            matches!(e, PathError::Absolute(_))
        }),
        ("/".into(), |e| matches!(e, PathError::Absolute(_))),
        ("..".into(), |e| matches!(e, PathError::DotComponent(_))),
        ("a/../b".into(), |e| matches!(e, PathError::DotComponent(_))),
        ("a/./b".into(), |e| matches!(e, PathError::DotComponent(_))),
        ("a//b".into(), |e| matches!(e, PathError::EmptyComponent(_))),
        ("a/".into(), |e| matches!(e, PathError::EmptyComponent(_))),
        ("a\0b".into(), |e| matches!(e, PathError::Nul(_))),
        ("n".repeat(256), |e| matches!(e, PathError::NameTooLong(_))),
    ];
    for (path, expected) in cases {
        let err = EntryPath::new(path.clone()).expect_err("malformed");
        assert!(expected(&err), "{path:?} gave {err:?}");
        // The engine's error wraps it as it is.
        assert!(matches!(Error::from(err), Error::Path(_)));
    }
    let long = vec!["n".repeat(200); 25].join("/");
    assert!(matches!(
        EntryPath::new(long),
        Err(PathError::PathTooLong(_))
    ));
    assert!(
        EntryPath::new("n".repeat(255)).is_ok(),
        "255 bytes is the limit"
    );
}

#[test]
fn invalid_operations_give_their_specific_error_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let data = name("data");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    tree_of_four(&e, &data);
    e.sync().expect("sync");
    let device_before = device_bytes(&image(dir.path()));
    let t0 = head(&e, &data);
    let content_before = tree(&e, &data, &At::Head);

    type Build = fn(&mut Txn) -> repld_engine::Result<()>;
    type Expect = fn(&Error) -> bool;
    let cases: Vec<(&str, Build, Expect)> = vec![
        (
            "put under a missing parent",
            |tx| tx.put_bytes(&p("missing/f"), file_attrs(), b"x"),
            |e| matches!(e, Error::ParentMissing(x) if x.as_str() == "missing/f"),
        ),
        (
            "mkdir under a missing parent",
            |tx| tx.mkdir(&p("missing/d"), dir_attrs(), false),
            |e| matches!(e, Error::ParentMissing(_)),
        ),
        (
            "symlink under a missing parent",
            |tx| tx.symlink(&p("missing/l"), "t", file_attrs()),
            |e| matches!(e, Error::ParentMissing(_)),
        ),
        (
            "rename to a missing parent",
            |tx| tx.rename(&p("top"), &p("missing/top")),
            |e| matches!(e, Error::ParentMissing(_)),
        ),
        (
            "put under a file",
            |tx| tx.put_bytes(&p("top/f"), file_attrs(), b"x"),
            |e| matches!(e, Error::NotADirectory(x) if x.as_str() == "top"),
        ),
        (
            "put over a directory",
            |tx| tx.put_bytes(&p("d"), file_attrs(), b"x"),
            |e| matches!(e, Error::IsADirectory(x) if x.as_str() == "d"),
        ),
        (
            "symlink over a directory",
            |tx| tx.symlink(&p("d/sub"), "t", file_attrs()),
            |e| matches!(e, Error::IsADirectory(_)),
        ),
        (
            "mkdir over a file",
            |tx| tx.mkdir(&p("top"), dir_attrs(), true),
            |e| matches!(e, Error::AlreadyExists(_)),
        ),
        (
            "mkdir of an existing directory",
            |tx| tx.mkdir(&p("d"), dir_attrs(), false),
            |e| matches!(e, Error::AlreadyExists(_)),
        ),
        (
            "rename a directory over a file",
            |tx| tx.rename(&p("d"), &p("top")),
            |e| matches!(e, Error::AlreadyExists(_)),
        ),
        (
            "rename a directory into itself",
            |tx| tx.rename(&p("d"), &p("d/sub/d")),
            |e| matches!(e, Error::Invalid(_)),
        ),
        (
            "rename of a missing entry",
            |tx| tx.rename(&p("nothing"), &p("other")),
            |e| matches!(e, Error::NotFound { .. }),
        ),
        (
            "delete of a missing entry",
            |tx| tx.delete(&p("nothing"), true),
            |e| matches!(e, Error::NotFound { .. }),
        ),
        (
            "delete of the root",
            |tx| tx.delete(&EntryPath::root(), true),
            |e| matches!(e, Error::Path(PathError::Root)),
        ),
        (
            "non-recursive delete of a non-empty directory",
            |tx| tx.delete(&p("d/sub"), false),
            |e| matches!(e, Error::DirectoryNotEmpty(_)),
        ),
        (
            "empty symlink target",
            |tx| tx.symlink(&p("l"), "", file_attrs()),
            |e| matches!(e, Error::Invalid(_)),
        ),
    ];
    for (what, build, expect) in cases {
        let written = e.stats().bytes_written.load(Ordering::Relaxed);
        let mut tx = e.begin(&data).expect("begin");
        // A valid operation first: the transaction is refused as a whole.
        tx.put_bytes(&p("innocent"), file_attrs(), b"bystander")
            .expect("put");
        build(&mut tx).expect("adding the operation");
        match tx.commit() {
            Ok(t) => panic!("{what}: committed as {t:?}"),
            Err(err) => assert!(expect(&err), "{what}: wrong error: {err}"),
        }
        assert_eq!(head(&e, &data), t0, "{what}: no TID");
        assert_eq!(
            e.stats().bytes_written.load(Ordering::Relaxed),
            written,
            "{what}: nothing written to the log"
        );
        assert!(matches!(
            e.stat(&data, &p("innocent"), &At::Head),
            Err(Error::NotFound { .. })
        ));
    }

    // Modes with bits above 0o7777 are refused as soon as they are given.
    let bad = Attrs {
        mode: 0o10644,
        mtime_ns: 0,
    };
    let mut tx = e.begin(&data).expect("begin");
    assert!(matches!(
        tx.put_bytes(&p("f"), bad, b"x"),
        Err(Error::Invalid(m)) if m.contains("7777")
    ));
    assert!(matches!(
        tx.mkdir(&p("dd"), bad, false),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        tx.symlink(&p("ll"), "t", bad),
        Err(Error::Invalid(_))
    ));
    assert!(tx.is_empty(), "refused operations are not added");
    assert_eq!(tx.commit().expect("an empty commit"), None);

    // Writes to a slave and to a missing PFS.
    assert!(matches!(e.begin(&name("nope")), Err(Error::NoSuchPfs(_))));
    let slave = name("slave");
    e.create_pfs(
        &slave,
        PfsOptions {
            role: repld_engine::Role::Slave,
            ..PfsOptions::default()
        },
    )
    .expect("create slave");
    assert!(matches!(e.begin(&slave), Err(Error::ReadOnlySlave(_))));
    e.destroy_pfs(&slave).expect("destroy the slave");

    assert_eq!(tree(&e, &data, &At::Head), content_before);
    drop(e);
    let device_after = device_bytes(&image(dir.path()));
    // Only the slave's creation and destruction touched the device: two one-block units.
    let changed: BTreeSet<u64> = device_before
        .chunks(common::BLOCK as usize)
        .zip(device_after.chunks(common::BLOCK as usize))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(
        changed.len(),
        2,
        "the refused operations left the device untouched"
    );
}

#[test]
fn a_transaction_commits_all_of_its_operations_or_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let data = name("data");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let t0 = put(&e, &data, "existing", b"old");
    let fill = |tx: &mut Txn| {
        tx.put_bytes(&p("a"), file_attrs(), b"a").expect("put");
        tx.mkdir(&p("dir"), dir_attrs(), false).expect("mkdir");
        tx.put_bytes(&p("dir/b"), file_attrs(), &pattern(3, 3 << 20))
            .expect("put");
        tx.put_bytes(&p("existing"), file_attrs(), b"new")
            .expect("put");
    };
    let mut tx = e.begin(&data).expect("begin");
    fill(&mut tx);
    tx.put_bytes(&p("nowhere/c"), file_attrs(), b"c")
        .expect("put");
    assert!(matches!(tx.commit(), Err(Error::ParentMissing(_))));
    assert_eq!(head(&e, &data), t0);
    assert_eq!(
        paths(&tree(&e, &data, &At::Head)),
        ["existing"],
        "none of it is visible"
    );
    assert_eq!(
        e.read_file(&data, &p("existing"), &At::Head).expect("read"),
        b"old"
    );

    let mut tx = e.begin(&data).expect("begin");
    fill(&mut tx);
    let t = tx.commit().expect("commit").expect("changed");
    for path in ["a", "dir", "dir/b", "existing"] {
        let entry = e.stat(&data, &p(path), &At::Head).expect("stat");
        assert_eq!(entry.created, t, "`{path}` was created by the one TID");
    }
    let changes = e.changes_since(&data, t0, 10).expect("scan");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].ops.len(), 4);
    assert_eq!(
        e.read_file(&data, &p("dir/b"), &At::Head).expect("read"),
        pattern(3, 3 << 20)
    );
    drop(e);
    let e = engine(dir.path());
    assert_eq!(head(&e, &data), t);
    assert_eq!(
        paths(&tree(&e, &data, &At::Head)),
        ["a", "dir", "dir/b", "existing"]
    );
}

#[test]
fn concurrent_commits_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let data = name("data");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let stats = e.stats();
    let (fsyncs0, commits0) = (
        stats.fsyncs.load(Ordering::Relaxed),
        stats.commits.load(Ordering::Relaxed),
    );
    const THREADS: u64 = 16;
    const EACH: u64 = 50;
    let tids: Vec<Tid> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let e = e.clone();
                let data = data.clone();
                s.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            put(
                                &e,
                                &data,
                                &format!("t{t:02}-{i:02}"),
                                &pattern(t * 1000 + i, 4096),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread"))
            .collect()
    });
    let commits = stats.commits.load(Ordering::Relaxed) - commits0;
    let fsyncs = stats.fsyncs.load(Ordering::Relaxed) - fsyncs0;
    assert_eq!(commits, THREADS * EACH);
    assert_eq!(
        tids.iter().collect::<BTreeSet<_>>().len() as u64,
        THREADS * EACH,
        "every commit has its own TID"
    );
    assert!(
        fsyncs < commits,
        "{commits} concurrent commits took {fsyncs} fsyncs: none were shared"
    );
    let listed = e.list(&data, &EntryPath::root(), &At::Head).expect("list");
    assert_eq!(listed.len() as u64, THREADS * EACH);
    for t in 0..THREADS {
        for i in 0..EACH {
            assert_eq!(
                e.read_file(&data, &p(&format!("t{t:02}-{i:02}")), &At::Head)
                    .expect("read"),
                pattern(t * 1000 + i, 4096)
            );
        }
    }
}

#[test]
fn the_change_scan_costs_what_changed_not_what_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let data = name("data");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let mut tids = Vec::new();
    for batch in 0..50 {
        let mut tx = e.begin(&data).expect("begin");
        for i in 0..100 {
            tx.put_bytes(
                &p(&format!("f{batch:02}-{i:03}")),
                file_attrs(),
                format!("{batch}/{i}").as_bytes(),
            )
            .expect("put");
        }
        tids.push(tx.commit().expect("commit").expect("changed"));
    }
    assert_eq!(
        e.list(&data, &EntryPath::root(), &At::Head)
            .expect("list")
            .len(),
        5000
    );
    let read_before = e.stats().records_read.load(Ordering::Relaxed);
    let changes = e.changes_since(&data, tids[44], usize::MAX).expect("scan");
    let read = e.stats().records_read.load(Ordering::Relaxed) - read_before;
    assert_eq!(
        changes.iter().map(|c| c.tid).collect::<Vec<_>>(),
        tids[45..],
        "exactly the last five commits, in TID order"
    );
    assert!(changes.iter().all(|c| c.ops.len() == 100));
    assert_eq!(
        read, 5,
        "one record read per change, whatever the PFS holds"
    );

    let read_before = e.stats().records_read.load(Ordering::Relaxed);
    assert!(
        e.changes_since(&data, tids[49], usize::MAX)
            .expect("scan")
            .is_empty()
    );
    assert_eq!(
        e.stats().records_read.load(Ordering::Relaxed),
        read_before,
        "nothing to read after the head"
    );
}

#[test]
fn subscribers_see_each_new_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let data = name("data");
    let created = e
        .create_pfs(&data, PfsOptions::default())
        .expect("create")
        .created;
    let mut rx = e.subscribe(&data).expect("subscribe");
    assert_eq!(*rx.borrow_and_update(), created);
    for i in 0..3u8 {
        let t = put(&e, &data, "f", &[i]);
        assert!(
            rx.has_changed().expect("the engine is open"),
            "the commit notified"
        );
        assert_eq!(*rx.borrow_and_update(), t);
    }
    // A refused commit does not move the head.
    let mut tx = e.begin(&data).expect("begin");
    tx.put_bytes(&p("missing/f"), file_attrs(), b"x")
        .expect("put");
    assert!(tx.commit().is_err());
    assert!(!rx.has_changed().expect("the engine is open"));
}

#[test]
fn content_stored_before_a_reopen_is_not_stored_again_after_it() {
    // The writer skips a chunk it already holds; after a reopen it learns which it holds from
    // the index (its Bloom filter is rebuilt from it), so no chunk is written twice.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = name("data");
    let content = pattern(7, 3 << 20);
    {
        let e = engine(dir.path());
        e.create_pfs(&data, PfsOptions::default()).expect("create");
        put(&e, &data, "first.bin", &content);
        e.close();
    }
    let e = engine(dir.path());
    let before = e.stats().bytes_written.load(Ordering::Relaxed);
    put(&e, &data, "second.bin", &content);
    let written = e.stats().bytes_written.load(Ordering::Relaxed) - before;
    assert!(
        written < 64 << 10,
        "{written} bytes written for a copy of 3 MiB already stored: its chunks were stored again"
    );
    let fresh = pattern(8, 3 << 20);
    let before = e.stats().bytes_written.load(Ordering::Relaxed);
    put(&e, &data, "third.bin", &fresh);
    let written = e.stats().bytes_written.load(Ordering::Relaxed) - before;
    assert!(
        written >= 3 << 20,
        "new content is stored ({written} bytes)"
    );
    let t = tree(&e, &data, &At::Head);
    assert_eq!(t.get("second.bin"), t.get("first.bin"));
}
