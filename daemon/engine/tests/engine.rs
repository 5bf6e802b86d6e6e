//! Engine behaviour through its public API, on real image files.

mod common;

use std::path::Path;

use common::batch_of;

use repld_engine::{
    At, Attrs, Engine, EngineOptions, EntryKind, EntryPath, Error, FormatOptions, PfsName,
    PfsOptions, Role, Tid,
};

fn p(s: &str) -> EntryPath {
    EntryPath::new(s).expect("valid path")
}

fn name(s: &str) -> PfsName {
    PfsName::new(s).expect("valid name")
}

fn options(dir: &Path) -> EngineOptions {
    let mut o = EngineOptions::new(dir.join("dev.img"), dir.join("index"));
    o.create = Some(FormatOptions {
        force: false,
        segment_size: Some(4 << 20),
        create_size: Some(256 << 20),
    });
    o
}

fn attrs() -> Attrs {
    Attrs {
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
    }
}

#[test]
fn put_get_list_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = name("data");
    let big: Vec<u8> = (0..3_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let t1;
    {
        let e = Engine::open(options(dir.path())).expect("open");
        e.create_pfs(&data, PfsOptions::default()).expect("create");
        let mut tx = e.begin(&data).expect("begin");
        tx.mkdir(
            &p("docs"),
            Attrs {
                mode: 0o755,
                ..attrs()
            },
            false,
        )
        .expect("mkdir");
        tx.put_bytes(&p("docs/a.txt"), attrs(), b"hello")
            .expect("put");
        tx.put_bytes(&p("big.bin"), attrs(), &big).expect("put big");
        tx.symlink(&p("link"), "docs/a.txt", attrs())
            .expect("symlink");
        t1 = tx.commit().expect("commit").expect("changed");
        assert_eq!(
            e.read_file(&data, &p("docs/a.txt"), &At::Head)
                .expect("read"),
            b"hello"
        );
        e.close();
    }
    let e = Engine::open(options(dir.path())).expect("reopen");
    assert_eq!(e.pfs(&data).expect("pfs").head, t1);
    assert_eq!(
        e.read_file(&data, &p("big.bin"), &At::Head)
            .expect("read big"),
        big
    );
    let names: Vec<String> = e
        .list(&data, &EntryPath::root(), &At::Head)
        .expect("list")
        .into_iter()
        .map(|x| x.path.to_string())
        .collect();
    assert_eq!(names, ["big.bin", "docs", "link"]);
    let link = e.stat(&data, &p("link"), &At::Head).expect("stat");
    assert_eq!(
        (link.kind(), link.meta.target.as_str()),
        (EntryKind::Symlink, "docs/a.txt")
    );
}

#[test]
fn history_is_readable_at_every_tid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(options(dir.path())).expect("open");
    let data = name("data");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let mut tids = Vec::new();
    for i in 0..5 {
        let mut tx = e.begin(&data).expect("begin");
        tx.put_bytes(&p("f"), attrs(), format!("v{i}").as_bytes())
            .expect("put");
        tids.push(tx.commit().expect("commit").expect("changed"));
    }
    let mut tx = e.begin(&data).expect("begin");
    tx.delete(&p("f"), false).expect("delete");
    let gone = tx.commit().expect("commit").expect("changed");
    for (i, t) in tids.iter().enumerate() {
        assert_eq!(
            e.read_file(&data, &p("f"), &At::Tid(*t)).expect("old read"),
            format!("v{i}").as_bytes()
        );
    }
    assert!(matches!(
        e.stat(&data, &p("f"), &At::Tid(gone)),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(e.history(&data, &p("f")).expect("history").len(), 5);
    let snap = e
        .snapshot_create(&data, "before-delete", Some(tids[4]))
        .expect("snapshot");
    assert_eq!(snap, tids[4]);
    assert_eq!(
        e.read_file(&data, &p("f"), &At::Snapshot("before-delete".into()))
            .expect("read"),
        b"v4"
    );
}

#[test]
fn invalid_writes_change_nothing_and_name_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(options(dir.path())).expect("open");
    let data = name("data");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let head = e.pfs(&data).expect("pfs").head;
    let mut tx = e.begin(&data).expect("begin");
    tx.put_bytes(&p("ok"), attrs(), b"x").expect("put");
    tx.put_bytes(&p("missing/child"), attrs(), b"x")
        .expect("put");
    assert!(
        matches!(tx.commit(), Err(Error::ParentMissing(path)) if path.as_str() == "missing/child")
    );
    assert_eq!(
        e.pfs(&data).expect("pfs").head,
        head,
        "a failed transaction must not commit anything"
    );
    assert!(matches!(
        e.stat(&data, &p("ok"), &At::Head),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn slave_refuses_writes_and_applies_a_change_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(options(dir.path())).expect("open");
    let (m, s) = (name("master"), name("slave"));
    let info = e
        .create_pfs(&m, PfsOptions::default())
        .expect("create master");
    e.create_pfs(
        &s,
        PfsOptions {
            role: Role::Slave,
            nohistory: false,
            shared_uuid: Some(info.shared_uuid),
        },
    )
    .expect("create slave");
    assert!(matches!(e.begin(&s), Err(Error::ReadOnlySlave(_))));
    for i in 0..3 {
        let mut tx = e.begin(&m).expect("begin");
        tx.put_bytes(&p(&format!("f{i}")), attrs(), &vec![i as u8; 2_000_000])
            .expect("put");
        tx.commit().expect("commit");
    }
    let changes = e.changes_since(&m, Tid::ZERO, 100).expect("scan");
    assert_eq!(changes.len(), 3);
    let batch = batch_of(&e, &m, &changes);
    let cp = e.apply(&s, batch.clone()).expect("apply");
    assert_eq!(cp.synced, changes[2].tid);
    assert_eq!(
        e.apply(&s, batch).expect("re-apply").synced,
        cp.synced,
        "a repeated batch is harmless"
    );
    for c in &changes {
        for name_ in ["f0", "f1", "f2"] {
            let a = e.stat(&m, &p(name_), &At::Tid(c.tid)).map(|x| x.meta).ok();
            let b = e.stat(&s, &p(name_), &At::Tid(c.tid)).map(|x| x.meta).ok();
            assert_eq!(a, b);
        }
    }
}

#[test]
fn sync_and_close_work_before_anything_is_written() {
    // A fresh device has an empty log: syncing it (as close does) must not stop the writer.
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(options(dir.path())).expect("open");
    e.sync().expect("sync an empty log");
    e.close();
    assert_eq!(e.failure(), None);
    let e = Engine::open(options(dir.path())).expect("reopen");
    e.create_pfs(&name("data"), PfsOptions::default())
        .expect("create after a sync of the empty log");
}

#[test]
fn a_device_has_one_owner_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(options(dir.path())).expect("open");
    assert!(matches!(
        Engine::open(options(dir.path())),
        Err(Error::DeviceBusy { .. })
    ));
    assert!(matches!(
        repld_engine::fsck::check(&dir.path().join("dev.img")),
        Err(Error::DeviceBusy { .. })
    ));
    e.close();
    Engine::open(options(dir.path())).expect("free again after close");
}

/// Copies a directory tree (the sled index), to put an older index back later.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).expect("copy a file");
        }
    }
}

#[test]
fn a_log_that_ends_exactly_at_a_segment_end_reopens_and_continues() {
    // A flush unit may end in the last block of its segment: the log then ends at the segment's
    // end, the same LSN as the next segment's start. Recovery, the writer and an index that
    // covers exactly that position must all take it as the end of the full segment.
    let data = name("data");
    let mut hits = 0;
    // Three 1 MiB files fill a 4 MiB segment to about 3 MiB + 20 KiB; the fourth file's size
    // walks the end of its unit across the segment's last block.
    for size in (0..48u64).map(|k| (1004 << 10) - k * 512) {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = options(dir.path());
        let e = Engine::open(o.clone()).expect("open");
        e.create_pfs(&data, PfsOptions::default()).expect("create");
        let contents: Vec<(String, Vec<u8>)> = (0..4u8)
            .map(|i| {
                let len = if i < 3 { 1 << 20 } else { size as usize };
                (format!("f{i}"), vec![i + 1; len])
            })
            .collect();
        for (path, bytes) in &contents {
            let mut tx = e.begin(&data).expect("begin");
            tx.put_bytes(&p(path), attrs(), bytes).expect("put");
            tx.commit().expect("commit");
        }
        let one_segment = e.space().segments_used == 1;
        let sb = e.superblock().clone();
        e.close();
        drop(e);
        let mut last_block = vec![0u8; 4096];
        {
            use std::os::unix::fs::FileExt;
            std::fs::File::open(dir.path().join("dev.img"))
                .expect("open the image")
                .read_exact_at(&mut last_block, sb.slot_offset(0) + sb.segment_size - 4096)
                .expect("read the segment's last block");
        }
        if !one_segment || last_block.iter().all(|&b| b == 0) {
            continue;
        }
        hits += 1;
        // The index now covers exactly the end of the full segment. Keep a copy of it.
        copy_dir(&dir.path().join("index"), &dir.path().join("index-then"));
        let e = Engine::open(o.clone()).expect("reopen at a segment end");
        let mut tx = e.begin(&data).expect("begin");
        tx.put_bytes(&p("after"), attrs(), b"in the next segment")
            .expect("put");
        tx.commit().expect("commit after the segment end");
        e.close();
        drop(e);
        // An index that lags the log (as sled may after a kill) replays from that position.
        std::fs::remove_dir_all(dir.path().join("index")).expect("remove the index");
        std::fs::rename(dir.path().join("index-then"), dir.path().join("index"))
            .expect("put the older index back");
        let e = Engine::open(o).expect("reopen with the older index");
        for (path, bytes) in &contents {
            assert_eq!(
                &e.read_file(&data, &p(path), &At::Head).expect("read"),
                bytes
            );
        }
        assert_eq!(
            e.read_file(&data, &p("after"), &At::Head)
                .expect("the commit in the next segment is replayed"),
            b"in the next segment"
        );
        if hits == 2 {
            break;
        }
    }
    assert!(hits > 0, "no size made a unit end at the segment's end");
}

/// Bytes of `path` in the page cache, from util-linux `fincore`.
fn resident_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("run fincore (util-linux; scripts/setup installs it)");
    assert!(
        out.status.success(),
        "fincore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("fincore prints a byte count")
}

#[test]
fn a_slaves_applied_batch_leaves_the_page_cache_once_durable_and_reads_back() {
    const DATA: usize = 16 << 20;
    // Beside the build, on a disk-backed file system: a tmpfs `/tmp` cannot drop its pages.
    let scratch = || tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (md, sd) = (scratch(), scratch());
    let (master, slave) = (
        Engine::open(options(md.path())).expect("open master"),
        Engine::open(options(sd.path())).expect("open slave"),
    );
    let m = name("data");
    let info = master
        .create_pfs(&m, PfsOptions::default())
        .expect("master");
    slave
        .create_pfs(
            &m,
            PfsOptions {
                role: Role::Slave,
                nohistory: false,
                shared_uuid: Some(info.shared_uuid),
            },
        )
        .expect("slave");
    let data: Vec<u8> = (0..DATA).map(|i| (i * 7 % 251) as u8).collect();
    let mut tx = master.begin(&m).expect("begin");
    tx.put_bytes(&p("big"), attrs(), &data).expect("put");
    tx.commit().expect("commit");
    // The master keeps what it committed cached: its sender reads it back soon.
    let master_cached = resident_bytes(&md.path().join("dev.img"));
    assert!(
        master_cached >= DATA as u64 / 2,
        "the master's commit is cached ({master_cached} bytes): fincore sees the cache"
    );

    let changes = master.changes_since(&m, Tid::ZERO, 10).expect("scan");
    slave
        .apply(&m, batch_of(&master, &m, &changes))
        .expect("apply");
    let slave_cached = resident_bytes(&sd.path().join("dev.img"));
    assert!(
        slave_cached < DATA as u64 / 4,
        "{slave_cached} bytes of the slave's image are cached after applying {DATA}"
    );
    let back = slave
        .read_file(&m, &p("big"), &At::Head)
        .expect("read the applied file back");
    assert!(back == data, "the applied file reads back whole");
}
