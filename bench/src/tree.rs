//! Directory trees to import: generated on disk before anything is timed.
//!
//! - [`mixed`]: files from a few KiB to tens of MiB (sizes log-uniform, so most files are small
//!   and most bytes are in large files), half of the bytes incompressible ([`crate::data`]) and
//!   half compressible text, spread over nested directories.
//! - [`small_files`]: many files of one small size, incompressible, in a few hundred
//!   directories.
//!
//! No two 1 MiB chunks of a tree are equal, in either kind of data: the engine dedupes chunks by
//! BLAKE3, and a tree that deduped would be stored with fewer writes than `cp` makes. The text
//! repeats its words but numbers every line, so it compresses (about 30× with zlib) without
//! repeating a chunk.
//!
//! [`evict`] drops a tree's file data from the page cache, so that every measured side starts
//! reading it from the disk.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::data::Incompressible;

/// A generated tree.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Its root directory.
    pub root: PathBuf,
    /// Regular files in it.
    pub files: u64,
    /// Directories below the root.
    pub dirs: u64,
    /// Content bytes of all files.
    pub bytes: u64,
    /// Of those, incompressible bytes.
    pub random_bytes: u64,
    /// Every file, for [`evict`].
    paths: Vec<PathBuf>,
}

/// Smallest file of a [`mixed`] tree.
pub const MIXED_MIN: u64 = 4 << 10;
/// Largest file of a [`mixed`] tree.
pub const MIXED_MAX: u64 = 48 << 20;
/// Subdirectories per directory level of a [`mixed`] tree (two levels).
const MIXED_FANOUT: u64 = 6;

/// A tree of about `total` bytes of mixed files in `root` (created), see the module
/// documentation. `seed` picks sizes and data; every run should use a new one.
pub fn mixed(root: &Path, total: u64, seed: u64) -> Result<Tree> {
    let pool = Incompressible::new(64 << 20, seed);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut tree = Tree::new(root)?;
    let dirs = tree.make_dirs(MIXED_FANOUT, MIXED_FANOUT)?;
    let (lo, hi) = ((MIXED_MIN as f64).ln(), (MIXED_MAX as f64).ln());
    let mut text = TextGen::new(seed);
    while tree.bytes < total {
        // Whichever kind is behind gets the next file, up to its half of the total, so the
        // bytes split evenly.
        let random = tree.random_bytes * 2 <= tree.bytes;
        let budget = if random {
            total / 2 - tree.random_bytes
        } else {
            total - total / 2 - (tree.bytes - tree.random_bytes)
        };
        let size = (rng.random_range(lo..hi).exp() as u64).clamp(1, budget.max(1));
        let n = tree.files;
        let dir = &dirs[rng.random_range(0..dirs.len())];
        let path = dir.join(format!(
            "{}-{n:05}.{}",
            if random { "blob" } else { "text" },
            if random { "bin" } else { "txt" }
        ));
        let mut f = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?,
        );
        if random {
            std::io::copy(&mut pool.reader(n, size), &mut f).map(drop)
        } else {
            text.write(n, size, &mut f)
        }
        .and_then(|_| f.flush())
        .with_context(|| format!("write {}", path.display()))?;
        tree.add_file(path, size, random);
    }
    Ok(tree)
}

/// `count` incompressible files of `size` bytes in `root` (created), spread evenly over `dirs`
/// directories.
pub fn small_files(root: &Path, count: u64, size: usize, dirs: u64, seed: u64) -> Result<Tree> {
    let pool = Incompressible::new(crate::data::BLOCK, seed);
    let mut tree = Tree::new(root)?;
    let dirs = tree.make_dirs(dirs, 0)?;
    let per_dir = count.div_ceil(dirs.len() as u64);
    for n in 0..count {
        let dir = &dirs[(n / per_dir) as usize];
        let path = dir.join(format!("f{n:07}"));
        std::fs::write(&path, pool.bytes(n, size))
            .with_context(|| format!("write {}", path.display()))?;
        tree.add_file(path, size as u64, true);
    }
    Ok(tree)
}

impl Tree {
    /// Every regular file of the tree, in the order it was generated.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    fn new(root: &Path) -> Result<Tree> {
        std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
        Ok(Tree {
            root: root.to_owned(),
            files: 0,
            dirs: 0,
            bytes: 0,
            random_bytes: 0,
            paths: Vec::new(),
        })
    }

    /// `outer` directories, each with `inner` subdirectories (none when 0); returns the leaves.
    fn make_dirs(&mut self, outer: u64, inner: u64) -> Result<Vec<PathBuf>> {
        let mut leaves = Vec::new();
        for a in 0..outer {
            let d = self.root.join(format!("d{a:03}"));
            std::fs::create_dir(&d).with_context(|| format!("create {}", d.display()))?;
            self.dirs += 1;
            if inner == 0 {
                leaves.push(d);
                continue;
            }
            for b in 0..inner {
                let s = d.join(format!("s{b:03}"));
                std::fs::create_dir(&s).with_context(|| format!("create {}", s.display()))?;
                self.dirs += 1;
                leaves.push(s);
            }
        }
        Ok(leaves)
    }

    fn add_file(&mut self, path: PathBuf, size: u64, random: bool) {
        self.files += 1;
        self.bytes += size;
        if random {
            self.random_bytes += size;
        }
        self.paths.push(path);
    }
}

/// Makes the tree durable (`syncfs`) and drops its files' data from the page cache, so that the
/// next reader reads it from the disk. Directory and inode caches stay, for every side alike.
pub fn evict(tree: &Tree) -> Result<()> {
    crate::fixture::sync_fs(&tree.root)?;
    for p in &tree.paths {
        let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)
            .with_context(|| format!("posix_fadvise(DONTNEED) {}", p.display()))?;
    }
    Ok(())
}

/// Compressible text: the same words on every line, but every line numbered, so no two chunks
/// of any file are equal.
struct TextGen {
    words: Vec<&'static str>,
}

impl TextGen {
    fn new(seed: u64) -> TextGen {
        const WORDS: [&str; 16] = [
            "replica",
            "segment",
            "journal",
            "commit",
            "snapshot",
            "storage",
            "import",
            "export",
            "checksum",
            "transaction",
            "directory",
            "metadata",
            "durable",
            "ordered",
            "stream",
            "chunk",
        ];
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x7e47);
        // Eight words per line, chosen once: the text is as compressible as a log file.
        let words = (0..8)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        TextGen { words }
    }

    fn write(
        &mut self,
        file: u64,
        size: u64,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        let mut left = size;
        let mut line_no = 0u64;
        let mut line = String::with_capacity(128);
        while left > 0 {
            line.clear();
            use std::fmt::Write as _;
            let _ = write!(line, "{file:06}:{line_no:09} ");
            line.push_str(&self.words.join(" "));
            line.push('\n');
            let n = (line.len() as u64).min(left) as usize;
            out.write_all(&line.as_bytes()[..n])?;
            left -= n as u64;
            line_no += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_mixed_tree_has_its_size_half_random_and_no_repeated_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let total = 24 << 20;
        let t = mixed(&dir.path().join("t"), total, 3).expect("generate");
        assert_eq!(t.bytes, total);
        assert!(t.files > 5, "{t:?}");
        assert_eq!(t.random_bytes, total / 2);
        let mut chunks = HashSet::new();
        let mut sizes = Vec::new();
        for p in &t.paths {
            let data = std::fs::read(p).expect("read back");
            sizes.push(data.len() as u64);
            for c in data.chunks(crate::data::BLOCK) {
                assert!(chunks.insert(blake3::hash(c)), "a repeated chunk in {p:?}");
            }
        }
        assert_eq!(sizes.iter().sum::<u64>(), total);
        assert!(sizes.iter().any(|&s| s < 1 << 20), "{sizes:?}");
        evict(&t).expect("evict");
    }

    #[test]
    fn text_compresses_but_lines_differ() {
        let mut g = TextGen::new(1);
        let mut v = Vec::new();
        g.write(7, 10_000, &mut v).expect("write");
        assert_eq!(v.len(), 10_000);
        let text = String::from_utf8(v).expect("text");
        let lines: Vec<&str> = text.lines().collect();
        let distinct: HashSet<&str> = lines.iter().copied().collect();
        assert_eq!(distinct.len(), lines.len());
        // Everything after the line number is the same on every line.
        assert!(lines[0][17..] == lines[1][17..]);
    }

    #[test]
    fn small_files_are_spread_over_the_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = small_files(&dir.path().join("t"), 100, 4096, 7, 1).expect("generate");
        assert_eq!((t.files, t.dirs, t.bytes), (100, 7, 409_600));
        let in_first = std::fs::read_dir(dir.path().join("t/d000"))
            .expect("list")
            .count();
        assert_eq!(in_first, 15);
    }
}
