//! The canonical digest of a PFS at a TID: equal on nodes that hold the same state however they
//! came to hold it (independent writes, or a slave's apply), different after any change of
//! content, attributes, names or link targets; stable for old TIDs; and, deep, a scrub that names
//! the file whose stored bytes were damaged while the shallow digest cannot see it.

mod common;

use common::{
    CHUNK_RECORD_PREFIX, device_bytes, dir_attrs, file_attrs, find_unique, flip_bit, image, name,
    options, p, pattern, read_bytes, write_bytes,
};
use repld_engine::{
    ApplyBatch, At, Attrs, CHUNK_SIZE, ChildDigest, DIGEST_DOMAIN, Engine, EntryKind, EntryPath,
    Error, PfsDigest, PfsName, PfsOptions, Role, Tid, Txn,
};

const DEVICE: u64 = 64 << 20;

/// A file of two full chunks and a short third one.
const BIG: usize = 2 * CHUNK_SIZE + 12_345;

fn link_attrs() -> Attrs {
    Attrs {
        mode: 0o777,
        mtime_ns: 1_700_000_000_000_000_000,
    }
}

fn open(dir: &tempfile::TempDir) -> Engine {
    Engine::open(options(dir.path(), DEVICE)).expect("open")
}

fn create(e: &Engine, pfs: &PfsName) {
    e.create_pfs(pfs, PfsOptions::default()).expect("create");
}

fn commit(tx: Txn) -> Tid {
    tx.commit()
        .expect("commit")
        .expect("the commit changes the PFS")
}

/// Every kind of entry: nested and empty directories, an empty file, a file of three chunks,
/// symlinks, and names whose byte order is not their order by any other rule.
const TREE: &[(&str, Kind)] = &[
    ("a", Kind::Dir),
    ("a/b", Kind::Dir),
    ("a/b/deep.txt", Kind::File(1, 3000)),
    ("a/big.bin", Kind::File(2, BIG)),
    ("a/empty", Kind::File(0, 0)),
    ("a/link", Kind::Link("b/deep.txt")),
    ("B", Kind::File(3, 100)),
    ("a b", Kind::File(4, 10)),
    ("a.b", Kind::Dir),
    ("ä", Kind::File(5, 1)),
    ("z", Kind::Link("/an/absolute/target")),
];

#[derive(Clone, Copy)]
enum Kind {
    Dir,
    /// Seed and length of the content.
    File(u64, usize),
    Link(&'static str),
}

fn add(tx: &mut Txn, path: &str, kind: Kind) {
    match kind {
        Kind::Dir => tx.mkdir(&p(path), dir_attrs(), false).expect("mkdir"),
        Kind::File(seed, len) => tx
            .put_bytes(&p(path), file_attrs(), &pattern(seed, len))
            .expect("put"),
        Kind::Link(target) => tx.symlink(&p(path), target, link_attrs()).expect("symlink"),
    }
}

/// Writes [`TREE`] in one commit.
fn build_at_once(e: &Engine, pfs: &PfsName) -> Tid {
    let mut tx = e.begin(pfs).expect("begin");
    for (path, kind) in TREE {
        add(&mut tx, path, *kind);
    }
    commit(tx)
}

/// Writes [`TREE`] another way: one entry per commit in another order, with detours (a file
/// first written with other content, a file that comes and goes, a directory renamed into
/// place) that leave the same final state. Returns every TID.
fn build_by_detours(e: &Engine, pfs: &PfsName) -> Vec<Tid> {
    let mut tids = Vec::new();
    let mut step = |f: &dyn Fn(&mut Txn)| {
        let mut tx = e.begin(pfs).expect("begin");
        f(&mut tx);
        tids.push(commit(tx));
    };
    step(&|tx| add(tx, "z", Kind::Link("/an/absolute/target")));
    step(&|tx| add(tx, "B", Kind::File(99, 100)));
    step(&|tx| add(tx, "tmp", Kind::File(98, 5000)));
    step(&|tx| tx.mkdir(&p("staging"), dir_attrs(), false).expect("mkdir"));
    step(&|tx| add(tx, "staging/b", Kind::Dir));
    step(&|tx| add(tx, "staging/b/deep.txt", Kind::File(1, 3000)));
    step(&|tx| tx.rename(&p("staging"), &p("a")).expect("rename"));
    for (path, kind) in TREE.iter().rev() {
        if !["a", "a/b", "a/b/deep.txt", "z"].contains(path) {
            step(&|tx| add(tx, path, *kind));
        }
    }
    step(&|tx| tx.delete(&p("tmp"), false).expect("delete"));
    tids
}

/// One side of a comparison: a PFS of an engine at a TID.
struct Side<'a> {
    e: &'a Engine,
    pfs: &'a PfsName,
    at: At,
}

impl Side<'_> {
    fn digest(&self, deep: bool) -> PfsDigest {
        self.e.digest(self.pfs, &self.at, deep).expect("digest")
    }

    fn children(&self, dir: &EntryPath, deep: bool) -> Vec<ChildDigest> {
        let list = self
            .e
            .digest_dir(self.pfs, dir, &self.at, deep)
            .expect("digest_dir");
        assert!(
            list.windows(2).all(|w| w[0].name < w[1].name),
            "children of `{dir}` are sorted by name"
        );
        list
    }
}

/// What `replctl verify` does after the roots differ: compares two listings, descends into the
/// directories whose hashes differ and names the paths that differ. A directory whose children
/// all agree differs itself.
fn differing(a: &Side, b: &Side, deep: bool) -> Vec<String> {
    let mut out = Vec::new();
    descend(a, b, &EntryPath::root(), deep, &mut out);
    out
}

fn descend(a: &Side, b: &Side, dir: &EntryPath, deep: bool, out: &mut Vec<String>) {
    let (la, lb) = (a.children(dir, deep), b.children(dir, deep));
    let (mut ia, mut ib) = (la.iter().peekable(), lb.iter().peekable());
    loop {
        let (ca, cb) = match (ia.peek(), ib.peek()) {
            (None, None) => return,
            (Some(ca), Some(cb)) if ca.name == cb.name => (ia.next(), ib.next()),
            (Some(ca), Some(cb)) if ca.name < cb.name => (ia.next(), None),
            (Some(_), None) => (ia.next(), None),
            _ => (None, ib.next()),
        };
        let child = ca.or(cb).expect("one side has the name");
        let path = dir.join(&child.name).expect("a valid name");
        match (ca, cb) {
            (Some(x), Some(y)) if x.hash == y.hash => {}
            (Some(x), Some(y)) if x.kind == EntryKind::Dir && y.kind == EntryKind::Dir => {
                let before = out.len();
                descend(a, b, &path, deep, out);
                if out.len() == before {
                    out.push(path.to_string());
                }
            }
            _ => out.push(path.to_string()),
        }
    }
}

fn head<'a>(e: &'a Engine, pfs: &'a PfsName) -> Side<'a> {
    Side {
        e,
        pfs,
        at: At::Head,
    }
}

#[test]
fn independent_engines_with_the_same_content_have_equal_roots() {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (ea, eb) = (open(&da), open(&db));
    let data = name("data");
    create(&ea, &data);
    // Other PFS ids, other TIDs, another creation time of the root.
    create(&eb, &name("other"));
    build_at_once(&eb, &name("other"));
    create(&eb, &data);
    let ta = build_at_once(&ea, &data);
    let tb = *build_by_detours(&eb, &data).last().expect("commits");
    assert_ne!(ta, tb, "the engines' TIDs differ");

    let (a, b) = (head(&ea, &data), head(&eb, &data));
    let want_bytes = TREE
        .iter()
        .map(|(_, k)| match k {
            Kind::File(_, len) => *len as u64,
            _ => 0,
        })
        .sum::<u64>();
    for deep in [false, true] {
        let (x, y) = (a.digest(deep), b.digest(deep));
        assert_eq!(x.root, y.root, "deep {deep}: equal state, equal roots");
        assert_eq!((x.tid, y.tid), (ta, tb), "the digest names the TID it read");
        for d in [x, y] {
            assert_eq!(d.entries, TREE.len() as u64);
            assert_eq!(d.bytes, want_bytes);
            assert_eq!(d.unreadable_chunks, 0);
        }
        assert!(differing(&a, &b, deep).is_empty());
    }
    assert_eq!(
        a.digest(false),
        a.digest(true),
        "deep equals shallow on healthy data"
    );
    assert_eq!(
        b.digest(false).root,
        head(&eb, &name("other")).digest(false).root,
        "two PFSes of one engine with the same content agree too"
    );
}

/// A change to the base tree: what it changes, the paths a descent must name for it, and the
/// change itself.
type Variant = (&'static str, &'static [&'static str], Box<dyn Fn(&mut Txn)>);

/// Every kind of change to the base tree.
fn variants() -> Vec<Variant> {
    let attrs = |mode, mtime_ns| Attrs { mode, mtime_ns };
    vec![
        (
            "one byte of the third chunk",
            &["a/big.bin"],
            Box::new(|tx: &mut Txn| {
                let mut data = pattern(2, BIG);
                data[2 * CHUNK_SIZE + 7] ^= 1;
                tx.put_bytes(&p("a/big.bin"), file_attrs(), &data)
                    .expect("put");
            }),
        ),
        (
            "one byte of a small file",
            &["B"],
            Box::new(|tx: &mut Txn| {
                let mut data = pattern(3, 100);
                data[99] = data[99].wrapping_add(1);
                tx.put_bytes(&p("B"), file_attrs(), &data).expect("put");
            }),
        ),
        (
            "a file's mode",
            &["a/b/deep.txt"],
            Box::new(move |tx: &mut Txn| {
                tx.put_bytes(
                    &p("a/b/deep.txt"),
                    attrs(0o600, file_attrs().mtime_ns),
                    &pattern(1, 3000),
                )
                .expect("put");
            }),
        ),
        (
            "a file's mtime, by one nanosecond",
            &["a/empty"],
            Box::new(move |tx: &mut Txn| {
                tx.put_bytes(&p("a/empty"), attrs(0o644, file_attrs().mtime_ns + 1), b"")
                    .expect("put");
            }),
        ),
        (
            "a directory's mode",
            &["a/b"],
            Box::new(move |tx: &mut Txn| {
                tx.mkdir(&p("a/b"), attrs(0o700, dir_attrs().mtime_ns), true)
                    .expect("mkdir");
            }),
        ),
        (
            "an empty directory's mtime",
            &["a.b"],
            Box::new(move |tx: &mut Txn| {
                tx.mkdir(&p("a.b"), attrs(0o755, dir_attrs().mtime_ns - 1), true)
                    .expect("mkdir");
            }),
        ),
        (
            "a name",
            &["ä", "ö"],
            Box::new(|tx: &mut Txn| tx.rename(&p("ä"), &p("ö")).expect("rename")),
        ),
        (
            "a symlink's target",
            &["a/link"],
            Box::new(|tx: &mut Txn| {
                tx.delete(&p("a/link"), false).expect("delete");
                tx.symlink(&p("a/link"), "b/deep.txT", link_attrs())
                    .expect("symlink");
            }),
        ),
        (
            "a symlink that becomes a file holding its target",
            &["z"],
            Box::new(|tx: &mut Txn| {
                tx.delete(&p("z"), false).expect("delete");
                tx.put_bytes(&p("z"), link_attrs(), b"/an/absolute/target")
                    .expect("put");
            }),
        ),
        (
            "a new empty file in an empty directory",
            &["a.b/new"],
            Box::new(|tx: &mut Txn| tx.put_bytes(&p("a.b/new"), file_attrs(), b"").expect("put")),
        ),
        (
            "a deleted empty file",
            &["a/empty"],
            Box::new(|tx: &mut Txn| tx.delete(&p("a/empty"), false).expect("delete")),
        ),
    ]
}

#[test]
fn every_change_changes_the_root_and_a_descent_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(&dir);
    let base = name("base");
    create(&e, &base);
    build_at_once(&e, &base);
    let want = head(&e, &base).digest(false);
    for (i, (what, paths, change)) in variants().into_iter().enumerate() {
        let pfs = name(&format!("v{i}"));
        create(&e, &pfs);
        let before = build_at_once(&e, &pfs);
        assert_eq!(
            e.digest(&pfs, &At::Tid(before), false)
                .expect("digest")
                .root,
            want.root,
            "{what}: the copy starts equal"
        );
        let mut tx = e.begin(&pfs).expect("begin");
        change(&mut tx);
        commit(tx);
        let changed = head(&e, &pfs);
        for deep in [false, true] {
            assert_ne!(
                changed.digest(deep).root,
                want.root,
                "{what} (deep {deep}): the root changes"
            );
            assert_eq!(
                differing(&head(&e, &base), &changed, deep),
                *paths,
                "{what} (deep {deep}): the descent names exactly the changed paths"
            );
        }
    }
}

#[test]
fn a_digest_at_an_old_tid_equals_the_one_taken_then() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(&dir);
    let data = name("data");
    create(&e, &data);
    let mut taken = vec![(Tid::ZERO, e.digest(&data, &At::Head, false).expect("empty"))];
    let mut record = |e: &Engine| {
        let d = e.digest(&data, &At::Head, false).expect("digest");
        assert_eq!(d.tid, e.pfs(&data).expect("pfs").head);
        assert!(
            taken.iter().all(|(_, old)| old.root != d.root),
            "every commit below changes the state"
        );
        taken.push((d.tid, d));
    };
    build_at_once(&e, &data);
    record(&e);
    e.snapshot_create(&data, "built", None).expect("snapshot");
    for (_, _, change) in variants() {
        let mut tx = e.begin(&data).expect("begin");
        change(&mut tx);
        commit(tx);
        record(&e);
    }
    let mut tx = e.begin(&data).expect("begin");
    tx.delete(&p("a"), true).expect("delete a tree");
    commit(tx);
    record(&e);

    for (tid, then) in taken.iter().skip(1) {
        for deep in [false, true] {
            assert_eq!(
                &e.digest(&data, &At::Tid(*tid), deep).expect("digest"),
                then,
                "deep {deep}: the state at {tid} digests as it did then"
            );
        }
    }
    assert_eq!(
        e.digest(&data, &At::Snapshot("built".into()), false)
            .expect("digest"),
        taken[1].1
    );
    let empty = &taken[0].1;
    assert_eq!((empty.entries, empty.bytes), (0, 0));
}

#[test]
fn digest_dir_lists_sorted_children_whose_hashes_make_the_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(&dir);
    let data = name("data");
    create(&e, &data);
    build_at_once(&e, &data);
    let side = head(&e, &data);
    let root = side.children(&EntryPath::root(), false);
    let names: Vec<&str> = root.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["B", "a", "a b", "a.b", "z", "ä"], "byte order");
    let kinds: Vec<EntryKind> = root.iter().map(|c| c.kind).collect();
    use EntryKind::*;
    assert_eq!(kinds, [File, Dir, File, Dir, Symlink, File]);

    // The root node, as the module documentation spells it out.
    let mut bytes = DIGEST_DOMAIN.to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&(root.len() as u64).to_le_bytes());
    for c in &root {
        bytes.extend_from_slice(&(c.name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(c.name.as_bytes());
        bytes.extend_from_slice(&c.hash);
    }
    assert_eq!(&bytes[..15], b"repld-digest-v1");
    assert_eq!(*blake3::hash(&bytes).as_bytes(), side.digest(false).root);

    let a = side.children(&p("a"), false);
    let names: Vec<&str> = a.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["b", "big.bin", "empty", "link"]);
    assert!(side.children(&p("a.b"), false).is_empty());
    assert!(matches!(
        e.digest_dir(&data, &p("a/big.bin"), &At::Head, false),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        e.digest_dir(&data, &p("nope"), &At::Head, false),
        Err(Error::NotFound { .. })
    ));
}

/// What is done to the stored bytes of a chunk.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// One flipped bit: the record checksum fails.
    FlippedBit,
    /// One changed byte with the record checksum recomputed: only BLAKE3 can tell.
    SilentByte,
}

fn scrub_names_the_damaged_file(damage: Damage) {
    let (ds, dh) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (sick, healthy) = (open(&ds), open(&dh));
    let data = name("data");
    for e in [&sick, &healthy] {
        create(e, &data);
        build_at_once(e, &data);
    }
    let (s, h) = (head(&sick, &data), head(&healthy, &data));
    let before = s.digest(true);
    assert_eq!(before.root, h.digest(true).root);

    // The second (full) chunk of a/big.bin.
    let dev = image(ds.path());
    let second = &pattern(2, BIG)[CHUNK_SIZE..CHUNK_SIZE + 64];
    let at = find_unique(&device_bytes(&dev), second);
    match damage {
        Damage::FlippedBit => flip_bit(&dev, at + 4321, 2),
        Damage::SilentByte => {
            let start = at - CHUNK_RECORD_PREFIX as u64;
            let mut rec = read_bytes(&dev, start, CHUNK_RECORD_PREFIX + CHUNK_SIZE);
            rec[CHUNK_RECORD_PREFIX + 4321] ^= 0x40;
            let crc = crc32c::crc32c(&rec[4..]);
            rec[..4].copy_from_slice(&crc.to_le_bytes());
            write_bytes(&dev, start, &rec);
        }
    }

    let (shallow, other) = (s.digest(false), h.digest(false));
    assert_eq!(
        (shallow.root, shallow.unreadable_chunks),
        (other.root, 0),
        "{damage:?}: the shallow digest reads no data and cannot see it"
    );
    assert!(differing(&s, &h, false).is_empty());

    let deep = s.digest(true);
    assert_ne!(deep.root, before.root, "{damage:?}: the scrub sees it");
    assert_eq!(
        deep.unreadable_chunks, 1,
        "{damage:?}: one chunk is damaged"
    );
    assert_eq!(
        (deep.entries, deep.bytes),
        (before.entries, before.bytes),
        "{damage:?}: the scrub ran to the end"
    );
    assert_eq!(
        differing(&s, &h, true),
        ["a/big.bin"],
        "{damage:?}: the descent names exactly the damaged file"
    );
    assert_eq!(s.digest(true), deep, "{damage:?}: the scrub is repeatable");
}

#[test]
fn a_deep_digest_names_a_file_whose_chunk_fails_its_checksum() {
    scrub_names_the_damaged_file(Damage::FlippedBit);
}

#[test]
fn a_deep_digest_names_a_file_whose_chunk_fails_its_blake3_hash() {
    scrub_names_the_damaged_file(Damage::SilentByte);
}

#[test]
fn a_slave_that_applied_the_change_scan_has_the_masters_root_at_every_tid() {
    let (dm, ds) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (em, es) = (open(&dm), open(&ds));
    let (m, s) = (name("master"), name("slave"));
    let info = em.create_pfs(&m, PfsOptions::default()).expect("master");
    let mut tids = build_by_detours(&em, &m);
    for (_, _, change) in variants().into_iter().take(4) {
        let mut tx = em.begin(&m).expect("begin");
        change(&mut tx);
        tids.push(commit(tx));
    }
    // The slave's node has another PFS first: other PFS ids, a later root.
    create(&es, &name("filler"));
    build_at_once(&es, &name("filler"));
    es.create_pfs(
        &s,
        PfsOptions {
            role: Role::Slave,
            nohistory: false,
            shared_uuid: Some(info.shared_uuid),
        },
    )
    .expect("slave");

    let changes = em.changes_since(&m, Tid::ZERO, 1000).expect("scan");
    assert_eq!(changes.len(), tids.len());
    // In two batches, as a stream would send them.
    let (first, second) = changes.split_at(changes.len() / 2);
    for part in [first, second] {
        let mut batch = ApplyBatch {
            master_head: em.pfs(&m).expect("pfs").head,
            changes: part.to_vec(),
            ..ApplyBatch::default()
        };
        for c in part {
            for r in c.chunk_refs() {
                batch
                    .chunks
                    .push(em.read_chunk(&r.hash).expect("chunk").into());
            }
        }
        es.apply(&s, batch).expect("apply");
    }

    assert_eq!(
        head(&es, &s).digest(true),
        head(&em, &m).digest(true),
        "the heads agree, deep"
    );
    for tid in tids {
        let (a, b) = (
            Side {
                e: &em,
                pfs: &m,
                at: At::Tid(tid),
            },
            Side {
                e: &es,
                pfs: &s,
                at: At::Tid(tid),
            },
        );
        assert_eq!(a.digest(false), b.digest(false), "at {tid}");
        assert!(differing(&a, &b, false).is_empty(), "at {tid}");
    }
}
