//! Damage to the device log: a torn or bit-flipped tail is cut at open with every acknowledged
//! commit intact and nothing of the damaged one visible; damage in the middle of the log is
//! reported with its place (by open, by a rebuild and by fsck) and never skipped; a damaged chunk
//! read at run time is an error, never wrong bytes.

mod common;

use std::path::Path;

use common::{
    BLOCK, CHUNK_RECORD_PREFIX, SEGMENT, Tree, Unit, device_bytes, find_unique, flip_bit, image,
    locate, mem_options, name, options, p, pattern, put, read_bytes, tree, write_bytes,
};
use repld_engine::{At, Engine, EngineOptions, Error, PfsOptions, Tid, fsck};

const DEVICE: u64 = 32 << 20;

/// A log of several acknowledged commits and the flush unit of the last one.
struct Built {
    /// The state at every TID before the last commit, oldest first.
    history: Vec<(Tid, Tree)>,
    /// The last commit's unit.
    last: Unit,
}

/// Which index the engine is reopened with after the damage.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IndexAtReopen {
    /// None at all: the whole log is replayed (what a lost or rebuilt index does).
    InMemory,
    /// A sled index that covers everything but the last commit, as after a crash in which
    /// the index lagged the log: only the tail is replayed.
    LaggingSled,
}

fn opts(dir: &Path, index: IndexAtReopen) -> EngineOptions {
    match index {
        IndexAtReopen::InMemory => mem_options(dir, DEVICE),
        IndexAtReopen::LaggingSled => options(dir, DEVICE),
    }
}

/// Writes six commits (with overwrites, in a directory too), then a last commit of a 30 KB
/// file (a unit of eight 4 KiB blocks), and closes the engine.
fn build(dir: &Path, index: IndexAtReopen) -> Built {
    let data = name("data");
    let mut e = Engine::open(opts(dir, index)).expect("open");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let mut tx = e.begin(&data).expect("begin");
    tx.mkdir(&p("d"), common::dir_attrs(), false)
        .expect("mkdir");
    let t = tx.commit().expect("commit").expect("changed");
    let mut history = vec![(t, tree(&e, &data, &At::Head))];
    for i in 0..6u64 {
        let path = ["a", "b", "d/c"][i as usize % 3];
        let t = put(&e, &data, path, &pattern(i, 3000 + 500 * i as usize));
        history.push((t, tree(&e, &data, &At::Head)));
    }
    if index == IndexAtReopen::LaggingSled {
        // Keep the index as it is now, to put it back after the last commit.
        drop(e);
        copy_dir(&dir.join("index"), &dir.join("index.before"));
        e = Engine::open(opts(dir, index)).expect("reopen");
    }
    let (_, last) = locate(&image(dir), || put(&e, &data, "last", &pattern(99, 30_000)));
    assert_eq!(last.len, 8 * BLOCK, "the last unit spans eight blocks");
    drop(e);
    if index == IndexAtReopen::LaggingSled {
        std::fs::remove_dir_all(dir.join("index")).expect("remove the index");
        std::fs::rename(dir.join("index.before"), dir.join("index")).expect("restore the index");
    }
    Built { history, last }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the index directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy an index file");
        }
    }
}

/// Reopens after damage to the last unit and checks that the last commit is gone entirely,
/// that every earlier TID reads back byte-identical, and that the log takes new commits that
/// survive another reopen.
fn assert_tail_cut(dir: &Path, index: IndexAtReopen, b: &Built) {
    let data = name("data");
    let (prev_tid, prev_tree) = b.history.last().expect("history").clone();
    let e = Engine::open(opts(dir, index)).expect("a damaged tail must not stop the open");
    if index == IndexAtReopen::LaggingSled {
        assert_eq!(
            e.stats()
                .index_rebuilds
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "the lagging index is brought up to date by replay, not rebuilt"
        );
    }
    assert_eq!(
        e.pfs(&data).expect("pfs").head,
        prev_tid,
        "the head is the last intact commit"
    );
    assert!(
        matches!(
            e.stat(&data, &p("last"), &At::Head),
            Err(Error::NotFound { .. })
        ),
        "nothing of the damaged commit is visible"
    );
    assert!(e.history(&data, &p("last")).expect("history").is_empty());
    assert!(
        e.changes_since(&data, prev_tid, 100)
            .expect("scan")
            .is_empty(),
        "the change scan does not see the damaged commit"
    );
    for (tid, want) in &b.history {
        assert_eq!(&tree(&e, &data, &At::Tid(*tid)), want, "state at {tid}");
    }
    assert_eq!(tree(&e, &data, &At::Head), prev_tree);

    let after = pattern(1234, 5000);
    let t = put(&e, &data, "after", &after);
    assert!(t > prev_tid);
    drop(e);
    let report = fsck::check(&image(dir)).expect("fsck after the repair");
    assert_eq!(
        report.torn_tail, None,
        "the new commit replaced the torn unit"
    );

    let e = Engine::open(opts(dir, index)).expect("reopen after a new commit");
    assert_eq!(e.pfs(&data).expect("pfs").head, t);
    for (tid, want) in &b.history {
        assert_eq!(&tree(&e, &data, &At::Tid(*tid)), want, "state at {tid}");
    }
    let mut want = prev_tree;
    want.insert("after".into(), Some(after));
    assert_eq!(tree(&e, &data, &At::Head), want);
}

/// A torn write: the unit's first half reached the disk, its second half did not.
fn zero_second_half(dev: &Path, u: Unit) {
    let half = u.len / BLOCK / 2 * BLOCK;
    write_bytes(dev, u.start + half, &vec![0u8; (u.len - half) as usize]);
}

fn fsck_sees_a_torn_tail(dev: &Path, u: Unit) {
    let report = fsck::check(dev).expect("a torn tail is not corruption");
    let torn = report.torn_tail.expect("fsck reports the torn tail");
    let lsn = torn
        .strip_prefix("at LSN 0x")
        .and_then(|rest| rest.split(':').next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .expect("the report starts with the LSN");
    assert_eq!(
        lsn % SEGMENT,
        (u.start - common::DATA_START) % SEGMENT,
        "fsck names the torn unit: {torn}"
    );
    assert_eq!(report.end_lsn, lsn, "the log ends where the tail was torn");
}

#[test]
fn a_torn_tail_is_cut_and_every_acknowledged_commit_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = build(dir.path(), IndexAtReopen::InMemory);
    zero_second_half(&image(dir.path()), b.last);
    fsck_sees_a_torn_tail(&image(dir.path()), b.last);
    assert_tail_cut(dir.path(), IndexAtReopen::InMemory, &b);
}

#[test]
fn a_torn_tail_is_cut_when_the_index_lags_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = build(dir.path(), IndexAtReopen::LaggingSled);
    zero_second_half(&image(dir.path()), b.last);
    assert_tail_cut(dir.path(), IndexAtReopen::LaggingSled, &b);
}

#[test]
fn a_tail_whose_header_block_was_lost_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = build(dir.path(), IndexAtReopen::InMemory);
    write_bytes(&image(dir.path()), b.last.start, &vec![0u8; BLOCK as usize]);
    assert_tail_cut(dir.path(), IndexAtReopen::InMemory, &b);
}

#[test]
fn a_flipped_bit_in_the_tail_is_detected_and_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = build(dir.path(), IndexAtReopen::InMemory);
    // In the middle of the file's data, well inside the unit body.
    flip_bit(&image(dir.path()), b.last.start + 5 * BLOCK + 123, 3);
    fsck_sees_a_torn_tail(&image(dir.path()), b.last);
    assert_tail_cut(dir.path(), IndexAtReopen::InMemory, &b);
}

#[test]
fn a_flipped_bit_in_the_tail_is_cut_when_the_index_lags_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = build(dir.path(), IndexAtReopen::LaggingSled);
    flip_bit(&image(dir.path()), b.last.start + 2 * BLOCK + 7, 0);
    assert_tail_cut(dir.path(), IndexAtReopen::LaggingSled, &b);
}

#[test]
fn a_flipped_bit_in_the_tail_unit_header_is_detected_and_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = build(dir.path(), IndexAtReopen::InMemory);
    // Byte 16 lies in the header's LSN field; the header checksum fails.
    flip_bit(&image(dir.path()), b.last.start + 16, 5);
    assert_tail_cut(dir.path(), IndexAtReopen::InMemory, &b);
}

// ----- damage in the middle -----

/// Checks that `err` is corruption located at `u`, and that its message names the place.
fn assert_corruption_at(err: Error, u: Unit, what: &str) {
    let msg = err.to_string();
    match err {
        Error::Corruption {
            lsn, slot, offset, ..
        } => {
            assert_eq!(
                offset, u.start,
                "{what}: the offset is the damaged unit's: {msg}"
            );
            assert_eq!(slot, u.slot(), "{what}: the slot holds the damaged unit");
            assert_eq!(
                lsn % SEGMENT,
                (u.start - common::DATA_START) % SEGMENT,
                "{what}: the LSN is the damaged unit's"
            );
            for part in [
                format!("LSN {lsn:#x}"),
                format!("segment slot {slot}"),
                format!("device offset {offset}"),
            ] {
                assert!(msg.contains(&part), "{what}: message names {part}: {msg}");
            }
        }
        other => panic!("{what}: expected corruption at {u:?}, got: {other}"),
    }
}

/// Every way of reading the whole log must report the damage at `u`: an open that replays the
/// whole log, an open that rebuilds the sled index, and fsck. None may succeed.
fn assert_reported_everywhere(dir: &Path, u: Unit) {
    match Engine::open(mem_options(dir, DEVICE)) {
        Ok(_) => panic!("the open succeeded over damage in the middle of the log"),
        Err(e) => assert_corruption_at(e, u, "open"),
    }
    let mut rebuild = options(dir, DEVICE);
    rebuild.rebuild_index = true;
    match Engine::open(rebuild) {
        Ok(_) => panic!("the index rebuild succeeded over damage in the middle of the log"),
        Err(e) => assert_corruption_at(e, u, "rebuild"),
    }
    match fsck::check(&image(dir)) {
        Ok(r) => panic!("fsck accepted a log damaged in the middle: {r:?}"),
        Err(e) => assert_corruption_at(e, u, "fsck"),
    }
    // A second attempt finds the same: nothing was "repaired" by cutting the log there.
    match Engine::open(mem_options(dir, DEVICE)) {
        Ok(_) => panic!("the second open succeeded over damage in the middle of the log"),
        Err(e) => assert_corruption_at(e, u, "second open"),
    }
}

/// Writes `n` commits of `size`-byte files in their own units, and returns the units.
fn commits(dir: &Path, n: u64, size: usize) -> Vec<(Unit, Vec<u8>)> {
    let data = name("data");
    let e = Engine::open(options(dir, DEVICE)).expect("open");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let units = (0..n)
        .map(|i| {
            let content = pattern(i + 1, size);
            let (_, u) = locate(&image(dir), || put(&e, &data, &format!("f{i}"), &content));
            (u, content)
        })
        .collect();
    drop(e);
    units
}

#[test]
fn a_flipped_bit_in_an_early_commits_data_is_reported_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = commits(dir.path(), 5, 20_000);
    let (first, content) = &units[0];
    let dev = image(dir.path());
    let at = find_unique(&device_bytes(&dev), &content[..64]) + 10_000;
    assert!(first.contains(at), "the file's data lies in its unit");
    flip_bit(&dev, at, 6);
    assert_reported_everywhere(dir.path(), *first);
}

#[test]
fn a_flipped_bit_in_an_early_unit_header_is_reported_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = commits(dir.path(), 4, 1000);
    // The header's seq field (bytes 8..16).
    flip_bit(&image(dir.path()), units[1].0.start + 9, 1);
    assert_reported_everywhere(dir.path(), units[1].0);
}

#[test]
fn a_lost_write_in_the_middle_is_reported_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = commits(dir.path(), 4, 9000);
    let u = units[2].0;
    write_bytes(&image(dir.path()), u.start, &vec![0u8; u.len as usize]);
    assert_reported_everywhere(dir.path(), u);
}

#[test]
fn damage_to_the_last_unit_of_a_segment_is_reported_when_only_later_segments_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1 MiB files: three fit a 4 MiB segment, the fourth starts the next one.
    let units = commits(dir.path(), 6, 1 << 20);
    let last_of_first = units
        .iter()
        .rev()
        .map(|(u, _)| *u)
        .find(|u| u.slot() == units[0].0.slot())
        .expect("a unit in the first segment");
    assert!(
        units.iter().any(|(u, _)| u.slot() != last_of_first.slot()),
        "later units lie in another segment"
    );
    flip_bit(&image(dir.path()), last_of_first.start + 100_000, 2);
    assert_reported_everywhere(dir.path(), last_of_first);
}

// ----- damage found at run time -----

#[test]
fn a_damaged_chunk_is_an_error_at_read_time_never_wrong_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = image(dir.path());
    let data = name("data");
    let victim = pattern(7, 50_000);
    let bystander = pattern(8, 5000);
    let e = Engine::open(options(dir.path(), DEVICE)).expect("open");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let (_, unit) = locate(&dev, || put(&e, &data, "victim", &victim));
    put(&e, &data, "bystander", &bystander);
    let at = find_unique(&device_bytes(&dev), &victim[..64]);
    let record = at - CHUNK_RECORD_PREFIX as u64;
    let len = read_bytes(&dev, record + 8, 4);
    assert_eq!(
        u32::from_le_bytes(len.try_into().expect("four bytes")) as usize,
        32 + victim.len(),
        "the chunk record starts {CHUNK_RECORD_PREFIX} bytes before its data"
    );
    let chunk = e
        .stat(&data, &p("victim"), &At::Head)
        .expect("stat")
        .meta
        .chunks[0];

    // Damage it under the running engine, after the index was built.
    flip_bit(&dev, at + 1000, 4);
    let check = |e: &Engine, when: &str| {
        match e.read_file(&data, &p("victim"), &At::Head) {
            Ok(bytes) => panic!(
                "{when}: read_file returned {} bytes of a damaged file",
                bytes.len()
            ),
            Err(Error::Corruption { offset, .. }) => {
                assert_eq!(offset, record, "{when}: the error names the chunk record")
            }
            Err(other) => panic!("{when}: expected corruption, got: {other}"),
        }
        assert!(
            matches!(e.read_chunk(&chunk.hash), Err(Error::Corruption { .. })),
            "{when}: read_chunk"
        );
        assert!(
            matches!(e.read_chunk_verified(&chunk), Err(Error::Corruption { .. })),
            "{when}: read_chunk_verified"
        );
        let mut batch = b"earlier records".to_vec();
        assert!(
            matches!(
                e.read_chunk_append(&chunk.hash, &mut batch),
                Err(Error::Corruption { .. })
            ),
            "{when}: read_chunk_append (the sender's read)"
        );
        assert_eq!(
            batch, b"earlier records",
            "{when}: nothing of it is appended"
        );
        assert_eq!(
            e.read_file(&data, &p("bystander"), &At::Head)
                .expect("other files read on"),
            bystander
        );
        assert!(
            e.stats()
                .corruption_detected
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 3,
            "{when}: every detection is counted"
        );
    };
    check(&e, "engine open");
    drop(e);
    let e = Engine::open(options(dir.path(), DEVICE)).expect("reopen with the index intact");
    check(&e, "after reopen");
    drop(e);
    match fsck::check(&dev) {
        Ok(r) => panic!("fsck accepted a damaged chunk: {r:?}"),
        Err(err) => assert_corruption_at(err, unit, "fsck"),
    }
}

#[test]
fn the_scrub_finds_a_chunk_whose_record_checksum_was_recomputed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = image(dir.path());
    let data = name("data");
    let victim = pattern(17, 40_000);
    let e = Engine::open(options(dir.path(), DEVICE)).expect("open");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    put(&e, &data, "victim", &victim);
    let chunk = e
        .stat(&data, &p("victim"), &At::Head)
        .expect("stat")
        .meta
        .chunks[0];
    assert_eq!(e.read_chunk_verified(&chunk).expect("intact chunk"), victim);
    // Silent corruption: one data byte changes and the record checksum is made to match, so
    // only the BLAKE3 hash can tell.
    let at = find_unique(&device_bytes(&dev), &victim[..64]);
    let start = at - CHUNK_RECORD_PREFIX as u64;
    let mut rec = read_bytes(&dev, start, CHUNK_RECORD_PREFIX + victim.len());
    rec[CHUNK_RECORD_PREFIX + 500] ^= 0x40;
    let crc = crc32c::crc32c(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
    write_bytes(&dev, start, &rec);
    match e.read_chunk_verified(&chunk) {
        Ok(_) => panic!("the scrub returned a chunk that does not match its hash"),
        Err(Error::Corruption { offset, detail, .. }) => {
            assert_eq!(offset, start, "the error names the chunk record");
            assert!(detail.contains("BLAKE3"), "{detail}");
        }
        Err(other) => panic!("expected corruption, got: {other}"),
    }
}
