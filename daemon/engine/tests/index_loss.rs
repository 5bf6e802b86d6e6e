//! Losing the index loses nothing: after the index directory is deleted, overwritten with
//! garbage, truncated, or discarded on request, the engine rebuilds it from the device alone,
//! says so in its counters, and every PFS reads back identical at every TID.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use common::{dir_attrs, file_attrs, name, options, p, pattern, put};
use repld_engine::{ApplyBatch, At, Engine, EntryKind, PfsOptions, Role, Tid};

const DEVICE: u64 = 128 << 20;

/// Builds content of every kind the index holds: files (one over a chunk), directories,
/// symlinks, overwrites, deletes and a rename over several TIDs, snapshots (one deleted), a
/// nohistory PFS, a PFS switched to nohistory, a destroyed PFS, and a slave PFS with applied
/// changes and a partly received one.
fn build(e: &Engine) {
    let data = name("data");
    let info = e.create_pfs(&data, PfsOptions::default()).expect("create");
    let mut tx = e.begin(&data).expect("begin");
    tx.mkdir(&p("docs"), dir_attrs(), false).expect("mkdir");
    tx.mkdir(&p("docs/old"), dir_attrs(), false).expect("mkdir");
    tx.put_bytes(&p("docs/a.txt"), file_attrs(), b"alpha")
        .expect("put");
    tx.put_bytes(&p("docs/old/b.txt"), file_attrs(), b"beta")
        .expect("put");
    tx.put_bytes(&p("big.bin"), file_attrs(), &pattern(1, 2_500_000))
        .expect("put");
    tx.symlink(&p("link"), "docs/a.txt", file_attrs())
        .expect("symlink");
    tx.commit().expect("commit");
    put(e, &data, "docs/a.txt", b"alpha, second version");
    let mut tx = e.begin(&data).expect("begin");
    tx.rename(&p("docs/old"), &p("archive")).expect("rename");
    tx.delete(&p("link"), false).expect("delete");
    tx.symlink(&p("link2"), "archive/b.txt", file_attrs())
        .expect("symlink");
    tx.commit().expect("commit");
    e.snapshot_create(&data, "before-delete", None)
        .expect("snapshot");
    e.snapshot_create(&data, "dropped", None).expect("snapshot");
    e.snapshot_delete(&data, "dropped")
        .expect("delete snapshot");
    let mut tx = e.begin(&data).expect("begin");
    tx.delete(&p("archive"), true).expect("delete");
    tx.commit().expect("commit");
    put(e, &data, "big.bin", &pattern(2, 1_200_000));

    let scratch = name("scratch");
    e.create_pfs(
        &scratch,
        PfsOptions {
            nohistory: true,
            ..PfsOptions::default()
        },
    )
    .expect("create nohistory");
    for i in 0..3u64 {
        put(e, &scratch, "tmp", &pattern(10 + i, 3000));
    }
    put(e, &scratch, "keep", b"kept");

    let later = name("later");
    e.create_pfs(&later, PfsOptions::default()).expect("create");
    put(e, &later, "x", b"one");
    put(e, &later, "x", b"two");
    e.configure_pfs(&later, None, Some(true))
        .expect("switch to nohistory");
    put(e, &later, "x", b"three");

    let gone = name("gone");
    e.create_pfs(&gone, PfsOptions::default()).expect("create");
    put(e, &gone, "f", b"destroyed with its PFS");
    e.destroy_pfs(&gone).expect("destroy");

    let mirror = name("mirror");
    e.create_pfs(
        &mirror,
        PfsOptions {
            role: Role::Slave,
            nohistory: false,
            shared_uuid: Some(info.shared_uuid),
        },
    )
    .expect("create slave");
    let changes = e.changes_since(&data, Tid::ZERO, 100).expect("scan");
    assert!(changes.len() >= 4);
    let (done, rest) = changes.split_at(changes.len() - 1);
    let mut batch = ApplyBatch {
        master_head: e.pfs(&data).expect("pfs").head,
        changes: done.to_vec(),
        partial: Some(repld_engine::Partial {
            tid: rest[0].tid,
            chunks_done: 0,
        }),
        ..ApplyBatch::default()
    };
    for c in done {
        for r in c.chunk_refs() {
            batch
                .chunks
                .push(e.read_chunk(&r.hash).expect("chunk").into());
        }
    }
    let cp = e.apply(&mirror, batch).expect("apply");
    assert_eq!(cp.synced, done[done.len() - 1].tid);
    assert!(
        cp.partial.is_some(),
        "the slave is inside a partly sent TID"
    );
}

/// Everything a reader can learn from the engine, as lines: every PFS with its catalog record
/// and snapshots, its full change scan, the whole tree with metadata and content at every TID it
/// committed (or the error a read there gives), and the history of every path ever seen. File
/// contents go into the second list, in the order the lines name them.
fn describe(e: &Engine) -> Description {
    let mut out = Vec::new();
    let mut contents = Vec::new();
    let space = e.space();
    out.push(format!("space {space:?}"));
    for info in e.list_pfs().expect("list") {
        let pfs = &info.name;
        out.push(format!("pfs {info:?}"));
        out.push(format!(
            "snapshots {:?}",
            e.snapshot_list(pfs).expect("snapshots")
        ));
        let changes = e.changes_since(pfs, Tid::ZERO, usize::MAX).expect("scan");
        let mut tids: BTreeSet<Tid> = changes.iter().map(|c| c.tid).collect();
        out.push(format!("changes {changes:?}"));
        tids.insert(info.created);
        tids.insert(info.head);
        let mut paths = BTreeSet::new();
        for tid in tids {
            let at = At::Tid(tid);
            let mut lines = Vec::new();
            let walked = e.walk(pfs, &at, |entry| {
                paths.insert(entry.path.clone());
                if entry.kind() == EntryKind::File {
                    let content = e.read_file(pfs, &entry.path, &at)?;
                    lines.push(format!(
                        "  {entry:?} content #{} of {} bytes",
                        contents.len(),
                        content.len()
                    ));
                    contents.push(content);
                } else {
                    lines.push(format!("  {entry:?}"));
                }
                Ok(())
            });
            match walked {
                Ok(_) => {
                    out.push(format!("{pfs} at {tid}:"));
                    out.extend(lines);
                }
                Err(err) => out.push(format!("{pfs} at {tid}: {err}")),
            }
        }
        for path in paths {
            out.push(format!(
                "history {pfs} {path}: {:?}",
                e.history(pfs, &path).expect("history")
            ));
        }
    }
    Description {
        lines: out,
        contents,
    }
}

/// What [`describe`] found.
struct Description {
    lines: Vec<String>,
    contents: Vec<Vec<u8>>,
}

fn assert_same(want: &Description, got: &Description, what: &str) {
    for (i, (a, b)) in want.lines.iter().zip(&got.lines).enumerate() {
        assert_eq!(a, b, "{what}: line {i} differs");
    }
    assert_eq!(
        want.lines.len(),
        got.lines.len(),
        "{what}: description length"
    );
    for (i, (a, b)) in want.contents.iter().zip(&got.contents).enumerate() {
        assert!(a == b, "{what}: content #{i} differs");
    }
}

fn rebuilds(e: &Engine) -> u64 {
    e.stats().index_rebuilds.load(Ordering::Relaxed)
}

/// Builds the content, records its description, and checks that a plain reopen keeps it and
/// does not rebuild anything.
fn setup(dir: &Path) -> Description {
    let e = Engine::open(options(dir, DEVICE)).expect("open");
    build(&e);
    let want = describe(&e);
    assert!(
        want.lines.iter().any(|l| l.contains("has been pruned")),
        "the description covers pruned history"
    );
    drop(e);
    let e = Engine::open(options(dir, DEVICE)).expect("reopen");
    assert_eq!(rebuilds(&e), 0, "an intact index is not rebuilt");
    assert_same(&want, &describe(&e), "plain reopen");
    want
}

/// Reopens and checks that the index was rebuilt and nothing changed; then once more, to see
/// that the rebuilt index is itself a good index.
fn assert_rebuilt(dir: &Path, want: &Description, opts: repld_engine::EngineOptions, what: &str) {
    let e = Engine::open(opts).expect("open with a lost index");
    assert!(rebuilds(&e) >= 1, "{what}: the index was rebuilt");
    assert_same(want, &describe(&e), what);
    // The engine writes on after the rebuild, and the new commit is indexed too.
    let t = put(&e, &name("data"), "after-rebuild", b"new");
    drop(e);
    let e = Engine::open(options(dir, DEVICE)).expect("reopen after the rebuild");
    assert_eq!(rebuilds(&e), 0, "{what}: the rebuilt index is kept");
    assert_eq!(
        e.read_file(&name("data"), &p("after-rebuild"), &At::Tid(t))
            .expect("read the new file"),
        b"new"
    );
}

/// Every regular file below `dir`.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the index directory") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_dir() {
            out.extend(files(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn a_deleted_index_is_rebuilt_with_identical_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let want = setup(dir.path());
    std::fs::remove_dir_all(dir.path().join("index")).expect("delete the index");
    assert_rebuilt(dir.path(), &want, options(dir.path(), DEVICE), "deleted");
}

#[test]
fn an_index_overwritten_with_garbage_is_rebuilt_with_identical_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let want = setup(dir.path());
    let index_files = files(&dir.path().join("index"));
    assert!(!index_files.is_empty());
    for (i, f) in index_files.iter().enumerate() {
        let len = std::fs::metadata(f).expect("stat").len().max(64);
        std::fs::write(f, pattern(1000 + i as u64, len as usize)).expect("overwrite");
    }
    assert_rebuilt(dir.path(), &want, options(dir.path(), DEVICE), "garbage");
}

#[test]
fn a_truncated_index_is_rebuilt_with_identical_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let want = setup(dir.path());
    for f in files(&dir.path().join("index")) {
        let len = std::fs::metadata(&f).expect("stat").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .expect("open")
            .set_len(len / 3)
            .expect("truncate");
    }
    assert_rebuilt(dir.path(), &want, options(dir.path(), DEVICE), "truncated");
}

#[test]
fn an_emptied_index_is_rebuilt_with_identical_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let want = setup(dir.path());
    for f in files(&dir.path().join("index")) {
        std::fs::write(&f, b"").expect("empty the file");
    }
    assert_rebuilt(dir.path(), &want, options(dir.path(), DEVICE), "emptied");
}

#[test]
fn rebuild_index_on_request_gives_identical_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let want = setup(dir.path());
    let mut o = options(dir.path(), DEVICE);
    o.rebuild_index = true;
    assert_rebuilt(dir.path(), &want, o, "rebuild_index");
}

#[test]
fn an_index_of_another_volume_is_rebuilt_with_identical_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let want = setup(dir.path());
    // An index left by another device (say, the image was replaced from a backup).
    let other = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(options(other.path(), 64 << 20)).expect("open another device");
    build(&e);
    drop(e);
    std::fs::remove_dir_all(dir.path().join("index")).expect("remove");
    std::fs::rename(other.path().join("index"), dir.path().join("index")).expect("move");
    assert_rebuilt(
        dir.path(),
        &want,
        options(dir.path(), DEVICE),
        "foreign index",
    );
}
