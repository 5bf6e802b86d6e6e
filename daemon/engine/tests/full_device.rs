//! A full device: the write that does not fit fails with a clear `DeviceFull` error that says
//! what to do, nothing already committed is lost, reads go on, a delete still fits (one segment
//! is kept for deletes), and the engine reopens with every acknowledged commit.
//!
//! Not covered here: a sparse image on a host file system that is itself full (ENOSPC from the
//! host), which needs a small dedicated file system (a tmpfs or loop mount) to set up.

mod common;

use common::{image, name, options, p, pattern};
use repld_engine::{At, Engine, EntryPath, Error, ErrorKind, PfsName, PfsOptions, Tid, fsck};

/// 32 MiB: seven 4 MiB segment slots, one of them kept for deletes.
const DEVICE: u64 = 32 << 20;

/// An acknowledged file: its path, content and TID.
type Acked = Vec<(String, Vec<u8>, Tid)>;

fn try_put(e: &Engine, pfs: &PfsName, path: &str, data: &[u8]) -> repld_engine::Result<Tid> {
    let mut tx = e.begin(pfs)?;
    tx.put_bytes(&p(path), common::file_attrs(), data)?;
    Ok(tx.commit()?.expect("a new file changes the PFS"))
}

/// Every acknowledged file reads back byte-identical, at the head and at its own TID, and the
/// directory lists exactly them.
fn assert_all_there(e: &Engine, pfs: &PfsName, acked: &Acked) {
    for (path, content, tid) in acked {
        for at in [At::Head, At::Tid(*tid)] {
            let got = e.read_file(pfs, &p(path), &at).expect("read back");
            assert!(got == *content, "`{path}` at {at:?} is intact");
        }
    }
    let listed: Vec<String> = e
        .list(pfs, &EntryPath::root(), &At::Head)
        .expect("list")
        .into_iter()
        .map(|x| x.path.to_string())
        .collect();
    let want: Vec<String> = acked.iter().map(|(path, _, _)| path.clone()).collect();
    assert_eq!(listed, want);
}

fn assert_device_full(err: &Error) {
    assert!(
        matches!(err, Error::DeviceFull { .. }),
        "expected DeviceFull, got: {err}"
    );
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    let msg = err.to_string();
    assert!(msg.starts_with("device full"), "{msg}");
    assert!(
        msg.contains("delete data") && msg.contains("prune history") && msg.contains("free space"),
        "the message says what to do: {msg}"
    );
}

#[test]
fn a_full_device_refuses_writes_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = name("data");
    let e = Engine::open(options(dir.path(), DEVICE)).expect("open");
    let total = e.space().segments_total;
    assert_eq!(total, 7);
    e.create_pfs(&data, PfsOptions::default()).expect("create");

    // Fill with ever smaller files, until even a one-byte file does not fit.
    let mut acked: Acked = Vec::new();
    let mut seed = 0u64;
    for size in [1 << 20, 256 << 10, 64 << 10, 16 << 10, 1] {
        loop {
            seed += 1;
            assert!(seed < 5000, "the device never filled up");
            let path = format!("f{seed:04}");
            let content = pattern(seed, size);
            let head = e.pfs(&data).expect("pfs").head;
            match try_put(&e, &data, &path, &content) {
                Ok(t) => acked.push((path, content, t)),
                Err(err) => {
                    assert_device_full(&err);
                    assert_eq!(e.failure(), None, "a full device does not stop the engine");
                    assert_eq!(
                        e.pfs(&data).expect("pfs").head,
                        head,
                        "the refused commit left no TID"
                    );
                    assert!(
                        matches!(
                            e.stat(&data, &p(&path), &At::Head),
                            Err(Error::NotFound { .. })
                        ),
                        "the refused file is not visible"
                    );
                    assert_all_there(&e, &data, &acked);
                    break;
                }
            }
        }
    }
    assert!(acked.len() > 20, "the device held {} files", acked.len());
    assert_eq!(
        e.space().segments_used,
        total - 1,
        "every segment but the reserve is used"
    );

    // A delete still fits: it takes the reserved segment.
    let (gone, gone_content, gone_tid) = acked.remove(0);
    let mut tx = e.begin(&data).expect("begin");
    tx.delete(&p(&gone), false).expect("delete");
    let deleted_at = tx
        .commit()
        .expect("a delete succeeds on a full device")
        .expect("changed");
    assert_eq!(
        e.space().segments_used,
        total,
        "the delete used the reserve"
    );
    assert!(matches!(
        e.stat(&data, &p(&gone), &At::Tid(deleted_at)),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        e.read_file(&data, &p(&gone), &At::Tid(gone_tid))
            .expect("the deleted file's history stays readable"),
        gone_content
    );
    assert_all_there(&e, &data, &acked);
    // The reserve stays for deletes: other writes may not fill the rest of its segment.
    let err = try_put(&e, &data, "sneaky", b"x").expect_err("the reserve is for deletes");
    assert_device_full(&err);
    let (gone2, _, _) = acked.remove(0);
    let mut tx = e.begin(&data).expect("begin");
    tx.delete(&p(&gone2), false).expect("delete");
    let deleted_at = tx
        .commit()
        .expect("a second delete still fits")
        .expect("changed");
    assert_all_there(&e, &data, &acked);
    drop(e);

    let report = fsck::check(&image(dir.path())).expect("fsck of a full device");
    assert_eq!(report.torn_tail, None);
    let e = Engine::open(options(dir.path(), DEVICE)).expect("a full device reopens");
    assert_eq!(e.pfs(&data).expect("pfs").head, deleted_at);
    assert_all_there(&e, &data, &acked);
    assert_eq!(
        e.read_file(&data, &p(&gone), &At::Tid(gone_tid))
            .expect("old TID after reopen"),
        gone_content
    );
    let err = try_put(&e, &data, "one-more", b"x").expect_err("still full after reopen");
    assert_device_full(&err);
    let (gone3, _, _) = acked.remove(0);
    let mut tx = e.begin(&data).expect("begin");
    tx.delete(&p(&gone3), false).expect("delete");
    tx.commit()
        .expect("deletes still fit after reopen")
        .expect("changed");
    assert_all_there(&e, &data, &acked);
}

#[test]
fn a_file_larger_than_the_free_space_fails_whole_and_the_engine_writes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = name("data");
    let e = Engine::open(options(dir.path(), DEVICE)).expect("open");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let mut acked: Acked = Vec::new();
    for i in 0..3u64 {
        let path = format!("small{i}");
        let content = pattern(100 + i, 100_000);
        let t = try_put(&e, &data, &path, &content).expect("put");
        acked.push((path, content, t));
    }
    let head = e.pfs(&data).expect("pfs").head;
    // 40 MiB, more than the whole device: its chunks stream ahead of the commit.
    let big = pattern(7, 40 << 20);
    let err = try_put(&e, &data, "huge", &big).expect_err("does not fit");
    assert_device_full(&err);
    assert_eq!(e.failure(), None);
    assert_eq!(e.pfs(&data).expect("pfs").head, head);
    assert!(matches!(
        e.stat(&data, &p("huge"), &At::Head),
        Err(Error::NotFound { .. })
    ));
    assert_all_there(&e, &data, &acked);
    // What fits still commits.
    let t = try_put(&e, &data, "small9", b"fits").expect("a small file still fits");
    acked.push(("small9".into(), b"fits".to_vec(), t));
    drop(e);
    let e = Engine::open(options(dir.path(), DEVICE)).expect("reopen");
    assert_eq!(e.pfs(&data).expect("pfs").head, t);
    assert_all_there(&e, &data, &acked);
}
