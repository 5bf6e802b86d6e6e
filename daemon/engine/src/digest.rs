//! Canonical Merkle digests of a PFS at a TID: what `replctl verify` compares between a master
//! and its slave, and how it names the paths that differ.
//!
//! Every entry has a node hash; a directory's covers its children's, so the root hash covers
//! the whole PFS. The hashes cover content and attributes only — never TIDs, PFS ids or where
//! data lies on the device — so two nodes that hold the same state at a TID agree, however they
//! came to hold it (a master and a slave that applied its changes, or two independent imports
//! with the same modes and mtimes).
//!
//! # Encoding (version 1)
//!
//! A node hash is BLAKE3 of the bytes below. Integers are little-endian; `str` is a `u32` byte
//! length followed by the UTF-8 bytes; `‖` is concatenation.
//!
//! ```text
//! DOMAIN   = "repld-digest-v1"                    (15 bytes, the start of every node)
//! header   = kind u8 (1 file, 2 dir, 3 symlink) ‖ mode u32 ‖ mtime_ns i64 ‖ size u64
//! file     = DOMAIN ‖ header ‖ count u64 ‖ count × chunk
//! chunk    = 0x00 ‖ hash [32] ‖ len u32           (a chunk, in file order)
//!          | 0x01 ‖ index u64                     (deep only: chunk `index` is unreadable)
//! symlink  = DOMAIN ‖ header ‖ target str
//! dir      = DOMAIN ‖ header ‖ children
//! root     = DOMAIN ‖ 0x00 ‖ children
//! children = count u64 ‖ count × (name str ‖ node hash [32]), sorted by name (byte order)
//! ```
//!
//! The root has no header: its mode and mtime are not stored but made up from the PFS's create
//! TID, which differs between a master and its slave.
//!
//! A shallow digest takes each chunk's hash from the index and reads no data. A deep digest (a
//! scrub) re-reads every chunk and checks its record checksum, its length and its BLAKE3 hash;
//! a chunk that passes contributes the hash of its actual bytes (equal to the stored one, by the
//! check), and one that fails contributes the `0x01` form instead. A healthy file never hashes
//! that form, so a damaged file's hash differs from a healthy one's and a descent names it,
//! while the digest itself runs on.
//!
//! A change to the encoding must change `DOMAIN`, so that nodes of different versions disagree
//! loudly instead of by accident.
//!
//! Memory is one directory's listing at a time, plus a compact `(name, hash)` list for each
//! directory on the path from the root to it.

use repl_types::{EntryPath, PfsName, Tid};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::read::At;
use crate::record::{ChunkRef, EntryKind, EntryMeta, Hash};
use crate::schema::{self, PfsRecord};

/// The prefix of every node hash of the digest: names the encoding and its version.
pub const DIGEST_DOMAIN: &[u8] = b"repld-digest-v1";

/// The Merkle digest of a whole PFS at a TID, from [`Engine::digest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PfsDigest {
    /// The TID digested (`at`, resolved).
    pub tid: Tid,
    /// The root hash: equal on two nodes exactly when they hold the same state.
    pub root: Hash,
    /// Entries covered, not counting the root.
    pub entries: u64,
    /// File content bytes covered (the sum of the file sizes).
    pub bytes: u64,
    /// Chunks a deep digest could not read or found damaged (always 0 for a shallow one). Each
    /// also changed the hash of its file.
    pub unreadable_chunks: u64,
}

/// One child of a directory and the hash of its subtree, from [`Engine::digest_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildDigest {
    /// Its name in the directory.
    pub name: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Its node hash (for a directory, covering everything below it).
    pub hash: Hash,
}

impl Engine {
    /// The canonical Merkle digest of the PFS as it stands at `at`. With `deep`, every chunk is
    /// re-read and re-hashed (a scrub); a damaged chunk does not stop the digest but changes its
    /// file's hash and is counted in [`PfsDigest::unreadable_chunks`]. Costs one index read per
    /// entry (and, deep, one read per chunk).
    pub fn digest(&self, name: &PfsName, at: &At, deep: bool) -> Result<PfsDigest> {
        let (p, tid) = self.resolve(name, at)?;
        let mut w = Walker::new(self, name, &p, tid, deep);
        let root = w.tree(EntryPath::root(), DirHead::Root)?;
        Ok(PfsDigest {
            tid,
            root,
            entries: w.entries,
            bytes: w.bytes,
            unreadable_chunks: w.unreadable,
        })
    }

    /// The children of directory `dir` (the root is [`EntryPath::root`]) at `at`, sorted by name,
    /// each with its node hash, as [`Engine::digest`] computes them. Two nodes compare these
    /// lists and descend only into directories whose hashes differ; a directory that differs
    /// while all its children agree differs in its own mode or mtime. Each child directory's
    /// subtree is hashed anew.
    pub fn digest_dir(
        &self,
        name: &PfsName,
        dir: &EntryPath,
        at: &At,
        deep: bool,
    ) -> Result<Vec<ChildDigest>> {
        let (p, tid) = self.resolve(name, at)?;
        if !dir.is_root() {
            match schema::version_at(self.kv(), p.id, dir, tid)? {
                None => {
                    return Err(Error::NotFound {
                        path: dir.clone(),
                        at: (tid != p.head).then_some(tid),
                    });
                }
                Some((_, v)) if v.meta.kind != EntryKind::Dir => {
                    return Err(Error::NotADirectory(dir.clone()));
                }
                Some(_) => {}
            }
        }
        let mut w = Walker::new(self, name, &p, tid, deep);
        let children = w.listing(dir)?;
        children
            .into_iter()
            .map(|c| {
                let hash = match c.node {
                    Node::Hashed(h) => h,
                    Node::Dir(head) => w.tree(dir.join(&c.name)?, head)?,
                };
                Ok(ChildDigest {
                    name: c.name,
                    kind: c.kind,
                    hash,
                })
            })
            .collect()
    }
}

/// What starts a directory's node.
#[derive(Debug, Clone, Copy)]
enum DirHead {
    /// The PFS root: no header.
    Root,
    /// Any other directory: its mode, mtime and size.
    Dir { mode: u32, mtime_ns: i64, size: u64 },
}

impl DirHead {
    fn hasher(self) -> blake3::Hasher {
        let mut h = blake3::Hasher::new();
        h.update(DIGEST_DOMAIN);
        match self {
            DirHead::Root => {
                h.update(&[0]);
            }
            DirHead::Dir {
                mode,
                mtime_ns,
                size,
            } => header(&mut h, EntryKind::Dir, mode, mtime_ns, size),
        }
        h
    }
}

/// A child as a listing leaves it: a file or symlink is hashed at once, a directory waits to
/// be descended into.
enum Node {
    Hashed(Hash),
    Dir(DirHead),
}

struct Child {
    name: String,
    kind: EntryKind,
    node: Node,
}

/// A directory being hashed: its hasher has taken the header and the child count, and takes
/// each child's name and hash in turn.
struct Frame {
    path: EntryPath,
    hasher: blake3::Hasher,
    rest: std::vec::IntoIter<Child>,
}

/// One digest run: the PFS and TID read, and the counts so far.
struct Walker<'a> {
    engine: &'a Engine,
    pfs: &'a PfsName,
    id: u32,
    tid: Tid,
    deep: bool,
    entries: u64,
    bytes: u64,
    unreadable: u64,
}

impl<'a> Walker<'a> {
    fn new(engine: &'a Engine, pfs: &'a PfsName, p: &PfsRecord, tid: Tid, deep: bool) -> Self {
        Walker {
            engine,
            pfs,
            id: p.id,
            tid,
            deep,
            entries: 0,
            bytes: 0,
            unreadable: 0,
        }
    }

    /// The hash of the directory at `dir` with everything below it. Depth first without
    /// recursion: a path may nest some two thousand directories deep.
    fn tree(&mut self, dir: EntryPath, head: DirHead) -> Result<Hash> {
        let mut stack = vec![self.open(dir, head)?];
        loop {
            let top = stack
                .last_mut()
                .expect("the loop returns when the stack empties");
            match top.rest.next() {
                Some(Child {
                    name,
                    node: Node::Hashed(h),
                    ..
                }) => child(&mut top.hasher, &name, &h),
                Some(Child {
                    name,
                    node: Node::Dir(head),
                    ..
                }) => {
                    let path = top.path.join(&name)?;
                    stack.push(self.open(path, head)?);
                }
                None => {
                    let done = stack.pop().expect("the stack is not empty here");
                    let hash = *done.hasher.finalize().as_bytes();
                    match stack.last_mut() {
                        Some(parent) => child(&mut parent.hasher, done.path.name(), &hash),
                        None => return Ok(hash),
                    }
                }
            }
        }
    }

    fn open(&mut self, path: EntryPath, head: DirHead) -> Result<Frame> {
        let children = self.listing(&path)?;
        let mut hasher = head.hasher();
        hasher.update(&(children.len() as u64).to_le_bytes());
        Ok(Frame {
            path,
            hasher,
            rest: children.into_iter(),
        })
    }

    /// The children of `dir`, sorted by name, files and symlinks hashed. The full listing (with
    /// every file's chunk list) is dropped before the caller descends.
    fn listing(&mut self, dir: &EntryPath) -> Result<Vec<Child>> {
        let mut out = schema::children_at(self.engine.kv(), self.id, dir, self.tid)?
            .into_iter()
            .map(|(name, _created, v)| {
                self.entries += 1;
                let m = v.meta;
                let node = match m.kind {
                    EntryKind::Dir => Node::Dir(DirHead::Dir {
                        mode: m.mode,
                        mtime_ns: m.mtime_ns,
                        size: m.size,
                    }),
                    EntryKind::File => Node::Hashed(self.file(dir, &name, &m)?),
                    EntryKind::Symlink => Node::Hashed(symlink_hash(&m)),
                };
                Ok(Child {
                    name,
                    kind: m.kind,
                    node,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The index lists names in byte order already; the digest does not depend on it.
        out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn file(&mut self, dir: &EntryPath, name: &str, m: &EntryMeta) -> Result<Hash> {
        self.bytes += m.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>();
        if !self.deep {
            return file_hash(m, |_, _| Ok(true));
        }
        file_hash(m, |i, c| match self.engine.read_chunk_verified(c) {
            // Verified: the bytes read are `c.len` long and hash to `c.hash`.
            Ok(_) => Ok(true),
            Err(e @ (Error::Corruption { .. } | Error::Io { .. } | Error::Invalid(_))) => {
                let path = dir
                    .join(name)
                    .map_or_else(|_| name.to_owned(), |p| p.to_string());
                tracing::warn!(pfs = %self.pfs, path, chunk = i, error = %e, "deep digest: a chunk is unreadable or damaged");
                self.unreadable += 1;
                Ok(false)
            }
            Err(e) => Err(e),
        })
    }
}

/// The node hash of a file. `intact(i, chunk)` says whether chunk `i` may be hashed as stored;
/// one that is not is hashed as unreadable.
fn file_hash(
    m: &EntryMeta,
    mut intact: impl FnMut(usize, &ChunkRef) -> Result<bool>,
) -> Result<Hash> {
    let mut h = blake3::Hasher::new();
    h.update(DIGEST_DOMAIN);
    header(&mut h, m.kind, m.mode, m.mtime_ns, m.size);
    h.update(&(m.chunks.len() as u64).to_le_bytes());
    for (i, c) in m.chunks.iter().enumerate() {
        if intact(i, c)? {
            h.update(&[0]);
            h.update(&c.hash);
            h.update(&c.len.to_le_bytes());
        } else {
            h.update(&[1]);
            h.update(&(i as u64).to_le_bytes());
        }
    }
    Ok(*h.finalize().as_bytes())
}

fn header(h: &mut blake3::Hasher, kind: EntryKind, mode: u32, mtime_ns: i64, size: u64) {
    let code: u8 = match kind {
        EntryKind::File => 1,
        EntryKind::Dir => 2,
        EntryKind::Symlink => 3,
    };
    h.update(&[code]);
    h.update(&mode.to_le_bytes());
    h.update(&mtime_ns.to_le_bytes());
    h.update(&size.to_le_bytes());
}

fn symlink_hash(m: &EntryMeta) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(DIGEST_DOMAIN);
    header(&mut h, m.kind, m.mode, m.mtime_ns, m.size);
    put_str(&mut h, &m.target);
    *h.finalize().as_bytes()
}

/// Adds one child to its directory's node.
fn child(h: &mut blake3::Hasher, name: &str, hash: &Hash) {
    put_str(h, name);
    h.update(hash);
}

fn put_str(h: &mut blake3::Hasher, s: &str) {
    let len = u32::try_from(s.len()).expect("names and targets are bounded far below 4 GiB");
    h.update(&len.to_le_bytes());
    h.update(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blake(parts: &[&[u8]]) -> Hash {
        *blake3::hash(&parts.concat()).as_bytes()
    }

    /// Pins the encoding to the bytes the module documentation spells out: a node of another
    /// version would compare unequal with every node of this one.
    #[test]
    fn node_hashes_are_the_documented_bytes() {
        let link = EntryMeta {
            kind: EntryKind::Symlink,
            mode: 0o777,
            mtime_ns: -5,
            size: 3,
            target: "a/b".into(),
            chunks: Vec::new(),
        };
        let want = blake(&[
            b"repld-digest-v1",
            &[3],
            &0o777u32.to_le_bytes(),
            &(-5i64).to_le_bytes(),
            &3u64.to_le_bytes(),
            &3u32.to_le_bytes(),
            b"a/b",
        ]);
        assert_eq!(symlink_hash(&link), want);

        let head = DirHead::Dir {
            mode: 0o755,
            mtime_ns: 7,
            size: 0,
        };
        let mut h = head.hasher();
        h.update(&1u64.to_le_bytes());
        child(&mut h, "x", &want);
        let dir = blake(&[
            b"repld-digest-v1",
            &[2],
            &0o755u32.to_le_bytes(),
            &7i64.to_le_bytes(),
            &0u64.to_le_bytes(),
            &1u64.to_le_bytes(),
            &1u32.to_le_bytes(),
            b"x",
            &want,
        ]);
        assert_eq!(*h.finalize().as_bytes(), dir);

        let mut h = DirHead::Root.hasher();
        h.update(&0u64.to_le_bytes());
        assert_eq!(
            *h.finalize().as_bytes(),
            blake(&[b"repld-digest-v1", &[0], &0u64.to_le_bytes()])
        );
    }

    #[test]
    fn a_files_node_is_its_chunk_list_and_an_unreadable_chunk_is_marked() {
        let c = |b: u8, len| ChunkRef { hash: [b; 32], len };
        let file = EntryMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 1,
            size: 10,
            target: String::new(),
            chunks: vec![c(1, 4), c(2, 6)],
        };
        let prefix: Vec<u8> = [
            &b"repld-digest-v1"[..],
            &[1],
            &0o644u32.to_le_bytes(),
            &1i64.to_le_bytes(),
            &10u64.to_le_bytes(),
            &2u64.to_le_bytes(),
        ]
        .concat();
        let healthy = file_hash(&file, |_, _| Ok(true)).expect("hash");
        assert_eq!(
            healthy,
            blake(&[
                &prefix,
                &[0],
                &[1; 32],
                &4u32.to_le_bytes(),
                &[0],
                &[2; 32],
                &6u32.to_le_bytes(),
            ])
        );
        let damaged = file_hash(&file, |i, _| Ok(i != 1)).expect("hash");
        assert_eq!(
            damaged,
            blake(&[
                &prefix,
                &[0],
                &[1; 32],
                &4u32.to_le_bytes(),
                &[1],
                &1u64.to_le_bytes(),
            ])
        );
        assert_ne!(healthy, damaged);
        // The same chunks with their lengths swapped are another file.
        let swapped = EntryMeta {
            chunks: vec![c(1, 6), c(2, 4)],
            ..file.clone()
        };
        assert_ne!(file_hash(&swapped, |_, _| Ok(true)).expect("hash"), healthy);
    }
}
