//! Helpers shared by the engine's property tests: engines on small sparse images, deterministic
//! content, and raw access to the image file for damaging it the way a crash or a disk would.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use repld_engine::{
    ApplyBatch, At, Attrs, Engine, EngineOptions, EntryKind, EntryPath, FormatOptions, PfsName, Tid,
};

/// Bytes per segment in every test device.
pub const SEGMENT: u64 = 4 << 20;
/// Where segment slot 0 starts on the device.
pub const DATA_START: u64 = repld_engine::device::DATA_START;
/// The device block, and the alignment of every flush unit.
pub const BLOCK: u64 = repld_engine::device::BLOCK;
/// Bytes in a flush unit header.
pub const UNIT_HEADER: u64 = 64;
/// Bytes before a chunk's data in its record: the record header and the BLAKE3 hash.
pub const CHUNK_RECORD_PREFIX: usize = 12 + 32;

/// A valid path.
pub fn p(s: &str) -> EntryPath {
    EntryPath::new(s).expect("a valid test path")
}

/// A valid PFS name.
pub fn name(s: &str) -> PfsName {
    PfsName::new(s).expect("a valid test PFS name")
}

/// The image file of a test directory.
pub fn image(dir: &Path) -> std::path::PathBuf {
    dir.join("dev.img")
}

/// Options for a sparse image of `size` bytes in `dir`, with its sled index beside it.
pub fn options(dir: &Path, size: u64) -> EngineOptions {
    let mut o = EngineOptions::new(image(dir), dir.join("index"));
    o.create = Some(FormatOptions {
        force: false,
        segment_size: Some(SEGMENT),
        create_size: Some(size),
    });
    o
}

/// Like [`options`], but with the index in memory: every open rebuilds it from the log alone,
/// which is what the engine does after a crash when the index lags the log.
pub fn mem_options(dir: &Path, size: u64) -> EngineOptions {
    let mut o = options(dir, size);
    o.index_dir = None;
    o
}

/// Attributes of a test file.
pub fn file_attrs() -> Attrs {
    Attrs {
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
    }
}

/// Attributes of a test directory.
pub fn dir_attrs() -> Attrs {
    Attrs {
        mode: 0o755,
        mtime_ns: 1_700_000_000_000_000_000,
    }
}

/// `len` pseudo-random bytes determined by `seed` (xorshift), so that every file is distinct and
/// a search of the image for them finds exactly one place.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Commits one file in its own transaction and returns the TID.
pub fn put(e: &Engine, pfs: &PfsName, path: &str, data: &[u8]) -> Tid {
    let mut tx = e.begin(pfs).expect("begin");
    tx.put_bytes(&p(path), file_attrs(), data).expect("put");
    tx.commit()
        .expect("commit")
        .expect("the put changes the PFS")
}

/// What a PFS holds at one TID: path → `None` for a directory, `Some(content)` for a file,
/// `Some(b"-> target")` for a symlink.
pub type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// Reads the whole PFS at `at`, file contents included.
pub fn tree(e: &Engine, pfs: &PfsName, at: &At) -> Tree {
    let mut out = Tree::new();
    e.walk(pfs, at, |entry| {
        let v = match entry.kind() {
            EntryKind::Dir => None,
            EntryKind::Symlink => Some(format!("-> {}", entry.meta.target).into_bytes()),
            EntryKind::File => {
                let data = e.read_file(pfs, &entry.path, at)?;
                assert_eq!(
                    data.len() as u64,
                    entry.meta.size,
                    "size of `{}`",
                    entry.path
                );
                Some(data)
            }
        };
        out.insert(entry.path.as_str().to_owned(), v);
        Ok(())
    })
    .expect("walk");
    out
}

/// The whole image file.
pub fn device_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read the image file")
}

/// Writes `bytes` at `offset` of the image, behind the engine's back.
pub fn write_bytes(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the image for writing");
    f.write_all_at(bytes, offset).expect("damage the image");
    f.sync_all().expect("fsync the image");
}

/// Reads `len` bytes at `offset` of the image.
pub fn read_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).expect("open the image");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("read the image");
    buf
}

/// Flips one bit of the byte at `offset` of the image.
pub fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut b = read_bytes(path, offset, 1);
    b[0] ^= 1 << bit;
    write_bytes(path, offset, &b);
}

/// Where a flush unit lies on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Device offset of the unit header.
    pub start: u64,
    /// Bytes of the unit, padding included (a multiple of 4 KiB).
    pub len: u64,
}

impl Unit {
    /// The segment slot holding the unit.
    pub fn slot(&self) -> u64 {
        (self.start - DATA_START) / SEGMENT
    }

    /// Whether `offset` lies inside the unit.
    pub fn contains(&self, offset: u64) -> bool {
        (self.start..self.start + self.len).contains(&offset)
    }
}

/// The one flush unit that turned `before` into `after`: the bytes that changed, starting at a
/// unit header (after a segment header, when the unit opened a new segment).
pub fn written_unit(before: &[u8], after: &[u8]) -> Unit {
    assert_eq!(before.len(), after.len(), "the image changed size");
    // Block by block first (a memcmp each), then byte by byte inside the differing blocks.
    let b = BLOCK as usize;
    let differs = |i: &usize| before[i * b..(i + 1) * b] != after[i * b..(i + 1) * b];
    let blocks = before.len() / b;
    let first_block = (0..blocks)
        .find(differs)
        .expect("the commit wrote something");
    let last_block = (0..blocks).rev().find(differs).expect("it wrote something");
    let byte_differs = |i: &usize| before[*i] != after[*i];
    let first = (first_block * b..(first_block + 1) * b)
        .find(byte_differs)
        .expect("a differing byte") as u64;
    let last = (last_block * b..(last_block + 1) * b)
        .rev()
        .find(byte_differs)
        .expect("a differing byte") as u64;
    let mut start = first;
    if (start - DATA_START).is_multiple_of(SEGMENT) {
        assert_eq!(
            &after[start as usize..start as usize + 8],
            b"REPLDSG\x01",
            "a write at a slot start is a segment header"
        );
        start += BLOCK;
    }
    assert_eq!(start % BLOCK, 0, "units are 4 KiB aligned");
    assert_eq!(
        &after[start as usize..start as usize + 4],
        b"RLU\x01",
        "the first changed block is a unit header"
    );
    let end = (last + 1).div_ceil(BLOCK) * BLOCK;
    Unit {
        start,
        len: end - start,
    }
}

/// Runs `f` (which must make exactly one commit) and returns its result and the unit it wrote.
pub fn locate<T>(dev: &Path, f: impl FnOnce() -> T) -> (T, Unit) {
    let before = device_bytes(dev);
    let out = f();
    let after = device_bytes(dev);
    (out, written_unit(&before, &after))
}

/// The only offset of `needle` in `hay`.
pub fn find_unique(hay: &[u8], needle: &[u8]) -> u64 {
    let mut hits = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i as u64);
    let first = hits.next().expect("the pattern is on the device");
    assert!(hits.next().is_none(), "the pattern is on the device once");
    first
}

/// A batch that takes a slave of `m` through `changes`, with their chunks read from `e`.
pub fn batch_of(e: &Engine, m: &PfsName, changes: &[repld_engine::Change]) -> ApplyBatch {
    let chunks = changes
        .iter()
        .flat_map(|c| c.chunk_refs())
        .map(|r| e.read_chunk(&r.hash).expect("chunk").into())
        .collect();
    ApplyBatch {
        master_head: e.pfs(m).expect("pfs").head,
        changes: changes.to_vec(),
        chunks,
        ..ApplyBatch::default()
    }
}

/// Runs this test binary's test `child` as a child process, with `env` set to `dir` (its stderr
/// goes to `dir/child.err`), and waits until it prints READY. Returns it with its stdout.
#[expect(
    clippy::zombie_processes,
    reason = "the caller reaps the child returned; a panic here ends the test"
)]
pub fn start_child(
    exe: &Path,
    child: &str,
    env: &str,
    dir: &Path,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let mut proc = std::process::Command::new(exe)
        .args(["--exact", child, "--nocapture"])
        .env(env, dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("child.err")).expect("stderr file"))
        .spawn()
        .expect("start the child");
    let mut out = std::io::BufReader::new(proc.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).expect("read the child");
        if n == 0 {
            let status = proc.wait().expect("reap");
            panic!(
                "the child ended ({status}) before it was ready: {}",
                std::fs::read_to_string(dir.join("child.err")).unwrap_or_default()
            );
        }
        if line.trim() == "READY" {
            return (proc, out);
        }
    }
}
