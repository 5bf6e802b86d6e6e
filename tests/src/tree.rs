//! Directory trees for import/export tests: generating them, and comparing two of them.
//!
//! [`TreeBuilder`] makes files (seeded, incompressible content), directories and symlinks, then
//! sets every entry's mode and mtime (nanoseconds) children first, so that later steps do not
//! disturb what was set. [`scan`] reads a tree back as a map of [`Node`]s, [`compare`] reports
//! every difference between two trees, and [`diff_r`] runs GNU `diff -r` on them.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};

/// The kind of a tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

struct Planned {
    rel: PathBuf,
    kind: Kind,
    mode: u32,
    mtime_ns: i64,
}

/// Builds a tree under a root directory; call [`TreeBuilder::finish`] to set modes and mtimes.
pub struct TreeBuilder {
    root: PathBuf,
    rng: StdRng,
    planned: Vec<Planned>,
    next_mtime: i64,
    bytes: u64,
}

impl TreeBuilder {
    /// A builder for a tree under `root` (created if missing), with content from `seed`.
    pub fn new(root: &Path, seed: u64) -> Result<TreeBuilder> {
        fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
        Ok(TreeBuilder {
            root: root.to_owned(),
            rng: StdRng::seed_from_u64(seed),
            planned: Vec::new(),
            // 2020-09-13T12:26:40.123456789Z, then odd steps so that every entry differs.
            next_mtime: 1_600_000_000_123_456_789,
            bytes: 0,
        })
    }

    fn mtime(&mut self) -> i64 {
        let t = self.next_mtime;
        self.next_mtime += 86_400_000_000_007;
        t
    }

    /// A directory with `mode`, and its missing parents with mode 0755 (each with its own
    /// mtime, so that the same calls always make the same tree).
    pub fn dir(&mut self, rel: &str, mode: u32) -> Result<&mut Self> {
        let mut partial = PathBuf::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for name in &parts[..parts.len() - 1] {
            partial.push(name);
            let path = self.root.join(&partial);
            if !path.exists() {
                fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
                let mtime_ns = self.mtime();
                self.planned.push(Planned {
                    rel: partial.clone(),
                    kind: Kind::Dir,
                    mode: 0o755,
                    mtime_ns,
                });
            }
        }
        let path = self.root.join(rel);
        fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        let mtime_ns = self.mtime();
        self.planned.push(Planned {
            rel: rel.into(),
            kind: Kind::Dir,
            mode,
            mtime_ns,
        });
        Ok(self)
    }

    /// A file of `size` random bytes with `mode`. Its parent must exist.
    pub fn file(&mut self, rel: &str, size: usize, mode: u32) -> Result<&mut Self> {
        let mut data = vec![0u8; size];
        self.rng.fill_bytes(&mut data);
        self.file_with(rel, &data, mode)
    }

    /// A file with the given content and `mode`. Its parent must exist.
    pub fn file_with(&mut self, rel: &str, data: &[u8], mode: u32) -> Result<&mut Self> {
        let path = self.root.join(rel);
        fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
        self.bytes += data.len() as u64;
        let mtime_ns = self.mtime();
        self.planned.push(Planned {
            rel: rel.into(),
            kind: Kind::File,
            mode,
            mtime_ns,
        });
        Ok(self)
    }

    /// A symlink at `rel` pointing to `target` (which need not exist).
    pub fn symlink(&mut self, rel: &str, target: &str) -> Result<&mut Self> {
        let path = self.root.join(rel);
        std::os::unix::fs::symlink(target, &path)
            .with_context(|| format!("symlink {} -> {target}", path.display()))?;
        let mtime_ns = self.mtime();
        self.planned.push(Planned {
            rel: rel.into(),
            kind: Kind::Symlink,
            mode: 0o777,
            mtime_ns,
        });
        Ok(self)
    }

    /// Gives the entry made last this mtime instead of the generated one.
    pub fn mtime_ns(&mut self, mtime_ns: i64) -> Result<&mut Self> {
        let last = self
            .planned
            .last_mut()
            .context("no entry to set the mtime of")?;
        last.mtime_ns = mtime_ns;
        Ok(self)
    }

    /// Content bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Sets modes and mtimes, last entry first (so children before their parents); an entry
    /// planned twice gets its last attributes.
    pub fn finish(&mut self) -> Result<()> {
        let mut done = std::collections::HashSet::new();
        for p in self.planned.iter().rev() {
            if !done.insert(p.rel.clone()) {
                continue;
            }
            let path = self.root.join(&p.rel);
            if p.kind != Kind::Symlink {
                fs::set_permissions(&path, fs::Permissions::from_mode(p.mode))
                    .with_context(|| format!("chmod {}", path.display()))?;
            }
            set_mtime(&path, p.mtime_ns)?;
        }
        self.planned.clear();
        Ok(())
    }
}

/// Sets the mtime (and atime) of `path` itself, not following a symlink.
pub fn set_mtime(path: &Path, mtime_ns: i64) -> Result<()> {
    let ts = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("set the mtime of {}", path.display()))
}

/// Makes every directory under `root` writable again (after a test made some read-only), so
/// that the temporary directory can be removed by a user that is not root.
pub fn make_writable(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o755));
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&e.path());
        }
    }
}

/// One entry of a scanned tree.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    /// File, directory or symlink.
    pub kind: Kind,
    /// Permission bits (`& 0o7777`); not compared for symlinks.
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// A file's size.
    pub size: u64,
    /// A file's BLAKE3 content hash.
    pub hash: Option<[u8; 32]>,
    /// A symlink's target.
    pub target: Option<PathBuf>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} mode {:o} mtime {}",
            self.kind, self.mode, self.mtime_ns
        )?;
        match self.kind {
            Kind::File => write!(
                f,
                " size {} blake3 {}",
                self.size,
                self.hash.map(hex).unwrap_or_default()
            ),
            Kind::Symlink => write!(f, " -> {:?}", self.target),
            Kind::Dir => Ok(()),
        }
    }
}

fn hex(h: [u8; 32]) -> String {
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Every entry under `root` (not `root` itself), by path relative to it.
pub fn scan(root: &Path) -> Result<BTreeMap<PathBuf, Node>> {
    let mut out = BTreeMap::new();
    scan_into(root, Path::new(""), &mut out)?;
    Ok(out)
}

fn scan_into(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) -> Result<()> {
    let dir = root.join(rel);
    for e in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e.with_context(|| format!("read {}", dir.display()))?;
        let rel = rel.join(e.file_name());
        let path = root.join(&rel);
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        let ft = meta.file_type();
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let node = if ft.is_symlink() {
            Node {
                kind: Kind::Symlink,
                mode: 0,
                mtime_ns,
                size: 0,
                hash: None,
                target: Some(
                    fs::read_link(&path).with_context(|| format!("readlink {}", path.display()))?,
                ),
            }
        } else if ft.is_dir() {
            Node {
                kind: Kind::Dir,
                mode: meta.mode() & 0o7777,
                mtime_ns,
                size: 0,
                hash: None,
                target: None,
            }
        } else if ft.is_file() {
            let data = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            Node {
                kind: Kind::File,
                mode: meta.mode() & 0o7777,
                mtime_ns,
                size: meta.len(),
                hash: Some(*blake3::hash(&data).as_bytes()),
                target: None,
            }
        } else {
            bail!(
                "{} is neither a file, a directory nor a symlink",
                path.display()
            );
        };
        let is_dir = node.kind == Kind::Dir;
        out.insert(rel.clone(), node);
        if is_dir {
            scan_into(root, &rel, out)?;
        }
    }
    Ok(())
}

/// Fails, listing every difference, unless `actual` has exactly the entries of `expected` with
/// the same kinds, contents, modes, mtimes (to the nanosecond) and symlink targets.
pub fn compare(expected: &Path, actual: &Path) -> Result<()> {
    compare_maps(&scan(expected)?, &scan(actual)?, false)
}

/// Like [`compare`], but `actual` may lack entries of `expected` (a partial import): every file
/// and symlink it has must be equal to the one in `expected`, and every directory it has must be
/// a directory there (its mode and mtime may not be set yet). Returns `actual`'s entries.
pub fn compare_subset(expected: &Path, actual: &Path) -> Result<BTreeMap<PathBuf, Node>> {
    let actual = scan(actual)?;
    compare_maps(&scan(expected)?, &actual, true)?;
    Ok(actual)
}

/// [`compare`] (or with `subset`, [`compare_subset`]) on scanned trees.
pub fn compare_maps(
    expected: &BTreeMap<PathBuf, Node>,
    actual: &BTreeMap<PathBuf, Node>,
    subset: bool,
) -> Result<()> {
    let mut problems = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None if subset => {}
            None => problems.push(format!("{}: missing (expected {want:?})", path.display())),
            Some(got) => {
                let mut want = want.clone();
                let mut got = got.clone();
                if want.kind == Kind::Symlink {
                    // A symlink's own mode is not meaningful on Linux.
                    want.mode = 0;
                    got.mode = 0;
                }
                if subset && want.kind == Kind::Dir && got.kind == Kind::Dir {
                    // A partly imported directory may still have the attributes it was
                    // created with; its files are what must be whole.
                    continue;
                }
                if want != got {
                    problems.push(format!(
                        "{}:\n    expected {want:?}\n    got      {got:?}",
                        path.display()
                    ));
                }
            }
        }
    }
    for path in actual.keys() {
        if !expected.contains_key(path) {
            problems.push(format!("{}: not in the source tree", path.display()));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(40);
        bail!(
            "{n} difference(s) between the trees:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Runs `diff -r --no-dereference a b` (symlinks compared as links, so dangling ones are fine)
/// and fails with its output unless it finds no difference.
pub fn diff_r(a: &Path, b: &Path) -> Result<()> {
    let out = crate::node::run_output(
        Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(a)
            .arg(b),
        Duration::from_secs(60),
    )?;
    ensure!(
        out.status.success(),
        "diff -r {} {} is not clean ({}):\n{}{}",
        a.display(),
        b.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Extracts `tar_file` into `dir` (created) with GNU tar, keeping permissions.
pub fn extract(tar_file: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    crate::node::run_ok(
        Command::new("tar")
            .arg("-xpf")
            .arg(tar_file)
            .arg("-C")
            .arg(dir),
        Duration::from_secs(60),
    )
    .map(drop)
}

/// The round-trip tree: files from 0 B to several MiB, symlinks (relative, absolute, dangling,
/// long), empty directories, odd but legal names, assorted modes and nanosecond mtimes.
pub fn round_trip_tree(root: &Path) -> Result<()> {
    const MIB: usize = 1 << 20;
    let mut t = TreeBuilder::new(root, 0x5eed_0001)?;
    // Sizes around the interesting boundaries: empty, tar blocks (512), pages, content chunks
    // (1 MiB), and several chunks.
    let sizes = [
        0,
        1,
        511,
        512,
        513,
        4095,
        4096,
        65_537,
        MIB - 1,
        MIB,
        MIB + 1,
        3 * MIB + 12_345,
        6 * MIB,
    ];
    t.dir("sizes", 0o755)?;
    for s in sizes {
        t.file(&format!("sizes/f{s:08}"), s, 0o644)?;
    }

    t.dir("modes", 0o750)?;
    for (name, mode) in [
        ("m0600", 0o600),
        ("m0755", 0o755),
        ("m0700", 0o700),
        ("m0444", 0o444),
        ("m0640", 0o640),
        ("m4755-setuid", 0o4755),
    ] {
        t.file(&format!("modes/{name}"), 100, mode)?;
    }
    t.dir("modes/d0700", 0o700)?;
    t.file("modes/d0700/inside", 10, 0o600)?;
    t.dir("modes/d0555", 0o555)?;
    t.file("modes/d0555/inside", 10, 0o444)?;
    t.dir("modes/d0711", 0o711)?;
    t.dir("modes/d1777-sticky", 0o1777)?;

    t.dir("empty", 0o755)?;
    t.dir("nested/a/b/c/empty", 0o700)?;

    t.dir("names", 0o755)?;
    let long_name = format!("{}.bin", "n".repeat(251));
    assert_eq!(long_name.len(), 255);
    // "é" is 2 bytes: 127 of them and a 1-byte suffix make a 255-byte name of 128 characters.
    let long_unicode = format!("{}x", "é".repeat(127));
    assert_eq!(long_unicode.len(), 255);
    for name in [
        "with space",
        " leading space",
        "trailing space ",
        "-leading-dash",
        "--double-dash",
        "ünïcödé ファイル 📁",
        "quote'single\"double",
        "back\\slash",
        "colon:at@hash#percent%",
        "star*question?[brackets]",
        "tab\there",
        "dollar$HOME",
        ".hidden",
        "..dots",
        "UPPER.lower",
        long_name.as_str(),
        long_unicode.as_str(),
    ] {
        t.file(&format!("names/{name}"), 33, 0o644)?;
    }
    // A path far beyond ustar's 100-byte name field (PAX path records).
    let deep = (0..12)
        .map(|i| format!("level-{i:02}-{}", "d".repeat(20)))
        .collect::<Vec<_>>()
        .join("/");
    t.dir(&deep, 0o755)?;
    t.file(&format!("{deep}/deep file"), 5000, 0o600)?;
    let long_dir = format!("names/{}", "d".repeat(255));
    t.dir(&long_dir, 0o755)?;
    t.file(&format!("{long_dir}/{long_unicode}"), 1, 0o644)?;

    // Edge mtimes: whole seconds, the epoch, before the epoch (with and without a fraction),
    // one nanosecond, and the far future.
    t.dir("mtimes", 0o755)?;
    for (name, ns) in [
        ("whole-second", 1_700_000_000_000_000_000),
        ("epoch", 0),
        ("one-ns", 1),
        ("before-epoch", -86_400_000_000_000),
        ("before-epoch-fraction", -1_500_000_000),
        ("year-2200", 7_258_118_400_000_000_123),
    ] {
        t.file(&format!("mtimes/{name}"), 7, 0o644)?.mtime_ns(ns)?;
    }

    t.dir("links", 0o755)?;
    t.symlink("links/relative", "../sizes/f00004096")?;
    t.symlink("links/to-dir", "../nested/a")?;
    t.symlink("links/dangling", "does/not/exist")?;
    t.symlink("links/absolute", "/etc/hostname")?;
    t.symlink("links/self-dot", ".")?;
    t.symlink("links/odd target", "../names/with space")?;
    t.symlink("links/long", &format!("../{deep}/deep file"))?;
    t.symlink("top-link", "links")?;
    t.file_with("empty-file", b"", 0o600)?;
    t.finish()
}

/// A bulk tree for long imports: `files` files in directories of 100, about `total_bytes` of
/// incompressible content in all (every 50th file is large, the others small and varied).
/// Returns the content bytes written.
pub fn bulk_tree(root: &Path, files: usize, total_bytes: u64, seed: u64) -> Result<u64> {
    let mut t = TreeBuilder::new(root, seed)?;
    let large = files.div_ceil(50) as u64;
    // Half of the bytes in the large files, half spread over the small ones.
    let large_size = (total_bytes / 2 / large.max(1)) as usize;
    let small_avg = (total_bytes / 2 / (files as u64 - large).max(1)) as usize;
    let mut seq = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5151);
    for i in 0..files {
        let dir = format!("d{:03}", i / 100);
        if i % 100 == 0 {
            t.dir(&dir, 0o755)?;
        }
        let size = if i % 50 == 25 {
            large_size
        } else {
            (seq.next_u32() as usize) % (2 * small_avg + 1)
        };
        t.file(&format!("{dir}/f{i:05}.bin"), size, 0o644)?;
    }
    t.finish()?;
    Ok(t.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comparison the end-to-end tests rely on notices each kind of difference.
    #[test]
    fn compare_notices_every_kind_of_difference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let make = |name: &str| {
            let root = dir.path().join(name);
            round_trip_tree(&root).expect("generate");
            root
        };
        let a = make("a");
        compare(&a, &make("same")).expect("the same seed gives the same tree");
        diff_r(&a, &make("same-diff")).expect("diff -r of equal trees is clean");

        type Change = (&'static str, Box<dyn Fn(&Path)>);
        let changes: Vec<Change> = vec![
            (
                "content",
                Box::new(|r| fs::write(r.join("sizes/f00000001"), b"X").expect("w")),
            ),
            (
                "mode",
                Box::new(|r| {
                    fs::set_permissions(r.join("modes/m0600"), fs::Permissions::from_mode(0o644))
                        .expect("chmod")
                }),
            ),
            (
                "file mtime ns",
                Box::new(|r| {
                    set_mtime(&r.join("modes/m0755"), 1_600_000_000_000_000_001).expect("t")
                }),
            ),
            (
                "symlink mtime",
                Box::new(|r| set_mtime(&r.join("links/dangling"), 5).expect("t")),
            ),
            (
                "dir mtime",
                Box::new(|r| set_mtime(&r.join("empty"), 5).expect("t")),
            ),
            (
                "symlink target",
                Box::new(|r| {
                    fs::remove_file(r.join("links/relative")).expect("rm");
                    std::os::unix::fs::symlink("elsewhere", r.join("links/relative")).expect("ln");
                }),
            ),
            (
                "missing",
                Box::new(|r| fs::remove_dir(r.join("empty")).expect("rmdir")),
            ),
            (
                "extra",
                Box::new(|r| fs::write(r.join("extra"), b"").expect("w")),
            ),
        ];
        for (i, (what, change)) in changes.iter().enumerate() {
            let b = make(&format!("changed-{i}"));
            change(&b);
            assert!(compare(&a, &b).is_err(), "compare missed a changed {what}");
        }
        make_writable(dir.path());
    }
}
