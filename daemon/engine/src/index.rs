//! The index: an ordered key-value cache of the log, behind a small trait.
//!
//! The index may lag the log; it records the log position it covers ([`schema::COVERED`]) in
//! the same atomic batch as the changes, and the engine replays the log from there at open. Its
//! own flush is never what makes a write durable: the device log is. Two backends: sled for
//! nodes, and an in-memory map for tests. The engine puts [`Deferred`] over either: it keeps the
//! writes in memory, visible at once, and applies them to the backend on a thread of its own.
//!
//! [`schema::COVERED`]: crate::schema::COVERED

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;

use crate::error::{Error, Result};

mod deferred;

pub(crate) use deferred::Deferred;

/// A set of index changes: `None` removes the key.
pub(crate) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Ordered reads.
pub(crate) trait KvRead {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Up to `limit` entries with `start <= key < end`, ascending.
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The greatest entry with `start <= key < end`.
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
}

/// An index backend.
pub(crate) trait IndexStore: KvRead + Send + Sync {
    /// Applies `writes` atomically: after a crash, all of them or none are visible.
    fn apply(&self, writes: &Writes) -> Result<()>;
    /// [`IndexStore::apply`] of writes the caller has no more use for.
    fn apply_owned(&self, writes: Writes) -> Result<()> {
        self.apply(&writes)
    }
    /// Removes everything.
    fn clear(&self) -> Result<()>;
    /// Persists what the backend buffers. Only shortens the next replay; never needed for
    /// durability.
    fn flush(&self) -> Result<()>;
}

/// The sled backend: one tree, keys prefixed by their keyspace.
pub(crate) struct SledIndex {
    db: sled::Db,
}

impl SledIndex {
    /// Opens the index in `dir`. sled releases its lock file only after its background threads
    /// have stopped, so an index closed a moment ago (an engine reopened in the same process)
    /// can still be locked: that is retried for a while, and never taken for corruption.
    pub fn open(dir: &Path) -> sled::Result<SledIndex> {
        let mut waited = std::time::Duration::ZERO;
        loop {
            match Self::try_open(dir) {
                Err(sled::Error::Io(e)) if is_locked(&e) => {
                    if waited >= std::time::Duration::from_secs(5) {
                        return Err(sled::Error::Io(e));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    waited += std::time::Duration::from_millis(20);
                }
                other => return other,
            }
        }
    }

    fn try_open(dir: &Path) -> sled::Result<SledIndex> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(256 << 20)
            .flush_every_ms(Some(2000))
            .mode(sled::Mode::HighThroughput)
            .open()?;
        Ok(SledIndex { db })
    }
}

impl KvRead for SledIndex {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.db
            .range(start..end)
            .take(limit)
            .map(|kv| {
                kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(Error::from)
            })
            .collect()
    }
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(None);
        }
        Ok(self
            .db
            .range(start..end)
            .next_back()
            .transpose()?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }
}

impl IndexStore for SledIndex {
    fn apply(&self, writes: &Writes) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        Ok(self.db.apply_batch(batch)?)
    }
    fn clear(&self) -> Result<()> {
        Ok(self.db.clear()?)
    }
    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

/// Whether an error opening sled says another instance holds its lock.
pub(crate) fn is_locked(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

/// The in-memory backend, for tests.
#[derive(Default)]
pub(crate) struct MemIndex {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl KvRead for MemIndex {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read().get(key).cloned())
    }
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .read()
            .range(start.to_vec()..end.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(None);
        }
        Ok(self
            .read()
            .range(start.to_vec()..end.to_vec())
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }
}

impl IndexStore for MemIndex {
    fn apply(&self, writes: &Writes) -> Result<()> {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (k, v) in writes {
            match v {
                Some(v) => map.insert(k.clone(), v.clone()),
                None => map.remove(k),
            };
        }
        Ok(())
    }
    fn clear(&self) -> Result<()> {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Changes not yet applied, seen on top of a base: the writer's view of its own batch.
pub(crate) struct Overlay<'a> {
    base: &'a dyn KvRead,
    pub writes: Writes,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a dyn KvRead, writes: Writes) -> Overlay<'a> {
        Overlay { base, writes }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    fn merged(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let ours = self.writes.range(start.to_vec()..end.to_vec());
        let removed = ours.clone().filter(|(_, v)| v.is_none()).count();
        let base = self.base.range(start, end, limit.saturating_add(removed))?;
        let mut out = BTreeMap::new();
        for (k, v) in base {
            out.insert(k, v);
        }
        for (k, v) in ours {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out.into_iter().take(limit).collect())
    }
}

impl KvRead for Overlay<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        if self
            .writes
            .range(start.to_vec()..end.to_vec())
            .next()
            .is_none()
        {
            return self.base.range(start, end, limit);
        }
        self.merged(start, end, limit)
    }
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(None);
        }
        // Our greatest live key, past any removals above it.
        let ours = self
            .writes
            .range(start.to_vec()..end.to_vec())
            .rev()
            .find_map(|(k, v)| Some((k, v.as_ref()?)));
        let base = self.base.last(start, end)?;
        let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        match (ours, base) {
            (ours, None) => Ok(ours.map(clone)),
            // The base's greatest key stands: the answer is it or a greater one of ours.
            (ours, Some((bk, bv))) if !self.writes.contains_key(&bk) => {
                Ok(Some(ours.filter(|(k, _)| **k > bk).map_or((bk, bv), clone)))
            }
            // The base has nothing above its greatest key, which we replace or remove.
            (Some((k, v)), Some((bk, _))) if *k >= bk => Ok(Some(clone((k, v)))),
            // We removed the base's greatest key: what stands below it needs a scan.
            _ => Ok(self.merged(start, end, usize::MAX)?.pop()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MemIndex {
        let m = MemIndex::default();
        let mut w = Writes::new();
        for k in [b"a1", b"a2", b"a3", b"b1"] {
            w.insert(k.to_vec(), Some(k.to_vec()));
        }
        m.apply(&w).expect("apply");
        m
    }

    #[test]
    fn overlay_reads_its_own_writes_over_the_base() {
        let b = base();
        let mut o = Overlay::new(&b, Writes::new());
        o.remove(b"a3".to_vec());
        o.put(b"a0".to_vec(), b"new".to_vec());
        assert_eq!(o.get(b"a3").expect("get"), None);
        assert_eq!(o.get(b"a1").expect("get"), Some(b"a1".to_vec()));
        let keys: Vec<_> = o
            .range(b"a", b"b", 10)
            .expect("range")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"a0".to_vec(), b"a1".to_vec(), b"a2".to_vec()]);
        assert_eq!(
            o.last(b"a", b"b").expect("last").map(|(k, _)| k),
            Some(b"a2".to_vec())
        );
        assert_eq!(o.range(b"a", b"b", 2).expect("range").len(), 2);
        o.put(b"a9".to_vec(), b"x".to_vec());
        assert_eq!(
            o.last(b"a", b"b").expect("last").map(|(k, _)| k),
            Some(b"a9".to_vec())
        );
    }

    #[test]
    fn last_is_our_greatest_live_key_below_a_removal_and_above_the_base() {
        let b = base();
        let mut o = Overlay::new(&b, Writes::new());
        o.put(b"b2".to_vec(), b"new".to_vec());
        o.remove(b"b3".to_vec());
        assert_eq!(
            o.last(b"b", b"c").expect("last").map(|(k, _)| k),
            Some(b"b2".to_vec()),
            "b1 is the base's greatest, b3 is removed, b2 is ours"
        );
        o.remove(b"b2".to_vec());
        assert_eq!(
            o.last(b"b", b"c").expect("last").map(|(k, _)| k),
            Some(b"b1".to_vec())
        );
        o.remove(b"b1".to_vec());
        assert_eq!(o.last(b"b", b"c").expect("last"), None);
    }

    #[test]
    fn sled_and_memory_backends_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledIndex::open(dir.path()).expect("open sled");
        let m = MemIndex::default();
        let mut w = Writes::new();
        for i in 0u32..50 {
            w.insert(i.to_be_bytes().to_vec(), Some(vec![i as u8]));
        }
        w.insert(7u32.to_be_bytes().to_vec(), None);
        s.apply(&w).expect("apply");
        m.apply(&w).expect("apply");
        let (a, b) = (&5u32.to_be_bytes()[..], &20u32.to_be_bytes()[..]);
        assert_eq!(
            s.range(a, b, 100).expect("range"),
            m.range(a, b, 100).expect("range")
        );
        assert_eq!(s.last(a, b).expect("last"), m.last(a, b).expect("last"));
        assert_eq!(s.get(&7u32.to_be_bytes()).expect("get"), None);
    }
}
