//! Index writes kept in memory and applied to the backend by a thread of their own.
//!
//! The writer thread used to apply each group's index changes to sled itself, after the group's
//! `fdatasync` and before acknowledging it: for a commit of 1,000 small files that took about
//! 45 ms of the 60 the commit cost, and a slave paid it again for every batch. The index may lag
//! the log (it records the position it covers, and the engine replays the log from there), so
//! nothing needs those changes in sled before the acknowledgement; readers need only to see them.
//!
//! [`Deferred`] keeps them in in-memory layers over the backend: `active` takes each
//! [`IndexStore::apply`], and the flusher thread swaps it out as `flushing`, applies that to the
//! backend as one atomic batch, and keeps it as `recent` (a read cache: a sender reads back what a
//! commit has just written) until the next batch replaces it. Readers look in `active`, then
//! `flushing`, then `recent`, then the backend; a key is in at least one of them from the moment
//! it is applied, because the flusher moves `flushing` out only after the backend holds it, and
//! readers copy what the layers hold under the lock before they read the backend.
//!
//! Memory is bounded: an `apply` waits while `active` holds more than
//! [`Deferred::MAX_ACTIVE_BYTES`]. [`IndexStore::flush`] waits until everything applied before it
//! is in the backend, then flushes the backend. A backend failure is kept and returned by every
//! later `apply` and `flush`; the layers stay, so reads go on seeing the data.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::{IndexStore, KvRead, Overlay, Writes};
use crate::error::{Error, Result};

/// An [`IndexStore`] whose backend is written behind: see the module documentation.
pub(crate) struct Deferred {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

struct Shared {
    base: Arc<dyn IndexStore>,
    max_active_bytes: usize,
    state: Mutex<State>,
    /// Signalled when `active` gains writes or the store is dropped (the flusher waits on it),
    /// and when a flush ends (`apply` and `flush` wait on it).
    changed: Condvar,
}

#[derive(Default)]
struct State {
    active: Writes,
    active_bytes: usize,
    /// The writes the flusher is applying to the backend.
    flushing: Option<Arc<Writes>>,
    /// The last writes the backend took, kept as a read cache until the next: a sender reads
    /// back the chunks and versions a commit has just written.
    recent: Option<Arc<Writes>>,
    /// Applies taken so far, and how many of them the backend holds.
    applied: u64,
    flushed: u64,
    /// Why the backend refused a batch; nothing more is flushed.
    failed: Option<String>,
    stop: bool,
}

impl Deferred {
    /// How many bytes of keys and values `active` may hold before an `apply` waits for the
    /// flusher.
    pub const MAX_ACTIVE_BYTES: usize = 64 << 20;

    /// Starts the flusher thread over `base`.
    pub fn new(base: Arc<dyn IndexStore>) -> Result<Deferred> {
        Self::with_limit(base, Self::MAX_ACTIVE_BYTES)
    }

    fn with_limit(base: Arc<dyn IndexStore>, max_active_bytes: usize) -> Result<Deferred> {
        let shared = Arc::new(Shared {
            base,
            max_active_bytes,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let flusher = std::thread::Builder::new()
            .name("index flusher".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.run()
            })
            .map_err(|e| Error::Index(format!("start the index flusher thread: {e}")))?;
        Ok(Deferred {
            shared,
            flusher: Some(flusher),
        })
    }

    /// The writes not yet in the backend that fall in `[start, end)`, a newer write of a key
    /// winning, in key order up to the `live`-th one that is not a removal: the first `live`
    /// entries of the merged view lie at or below it, so a paged scan copies about a page of
    /// each layer, not the rest of the range every time.
    fn pending(&self, start: &[u8], end: &[u8], live: usize) -> Writes {
        let st = self.shared.lock();
        // Newest first: the first layer to hold a key has its latest write.
        let mut layers: Vec<_> = [
            Some(&st.active),
            st.flushing.as_deref(),
            st.recent.as_deref(),
        ]
        .into_iter()
        .flatten()
        .map(|l| l.range(start.to_vec()..end.to_vec()).peekable())
        .collect();
        let mut out = Writes::new();
        let mut seen = 0;
        while seen < live {
            let Some(key) = layers
                .iter_mut()
                .filter_map(|l| l.peek().map(|(k, _)| *k))
                .min()
            else {
                break;
            };
            let mut newest = None;
            for layer in &mut layers {
                if let Some((_, v)) = layer.next_if(|(k, _)| *k == key) {
                    newest.get_or_insert(v);
                }
            }
            let value = newest.expect("some layer holds the least key").clone();
            seen += usize::from(value.is_some());
            out.insert(key.clone(), value);
        }
        out
    }

    /// Waits until the backend holds every apply taken before the call.
    fn drain(&self) -> Result<()> {
        let mut st = self.shared.lock();
        let target = st.applied;
        loop {
            if let Some(why) = &st.failed {
                return Err(Error::Index(why.clone()));
            }
            if st.flushed >= target {
                return Ok(());
            }
            st = self.shared.wait(st);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(st)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The flusher: takes `active` whole, applies it to the backend, drops it; on a stop, ends
    /// once everything is applied.
    fn run(&self) {
        let mut st = self.lock();
        loop {
            if st.failed.is_some() || (st.active.is_empty() && st.stop) {
                return;
            }
            if st.active.is_empty() {
                st = self.wait(st);
                continue;
            }
            let batch = Arc::new(std::mem::take(&mut st.active));
            st.active_bytes = 0;
            st.flushing = Some(Arc::clone(&batch));
            let upto = st.applied;
            // `apply` may be waiting for room in `active`.
            self.changed.notify_all();
            drop(st);
            let result = self.base.apply(&batch);
            st = self.lock();
            match result {
                Ok(()) => {
                    st.recent = st.flushing.take();
                    st.flushed = upto;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the index backend refused a batch; the writer stops");
                    st.failed = Some(format!("index backend: {e}"));
                }
            }
            self.changed.notify_all();
        }
    }
}

impl KvRead for Deferred {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        {
            let st = self.shared.lock();
            if let Some(v) = st.active.get(key) {
                return Ok(v.clone());
            }
            for layer in [&st.flushing, &st.recent].into_iter().flatten() {
                if let Some(v) = layer.get(key) {
                    return Ok(v.clone());
                }
            }
        }
        self.shared.base.get(key)
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        Overlay::new(&*self.shared.base, self.pending(start, end, limit)).range(start, end, limit)
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(None);
        }
        Overlay::new(&*self.shared.base, self.pending(start, end, usize::MAX)).last(start, end)
    }
}

impl IndexStore for Deferred {
    fn apply(&self, writes: &Writes) -> Result<()> {
        self.apply_owned(writes.clone())
    }

    fn apply_owned(&self, writes: Writes) -> Result<()> {
        if writes.is_empty() {
            // Nothing for the flusher to take: counted, it would never be flushed.
            return self
                .shared
                .lock()
                .failed
                .as_ref()
                .map_or(Ok(()), |why| Err(Error::Index(why.clone())));
        }
        let bytes: usize = writes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        let mut st = self.shared.lock();
        loop {
            if let Some(why) = &st.failed {
                return Err(Error::Index(why.clone()));
            }
            if st.active_bytes < self.shared.max_active_bytes {
                break;
            }
            st = self.shared.wait(st);
        }
        if st.active.is_empty() {
            st.active = writes;
        } else {
            st.active.extend(writes);
        }
        st.active_bytes += bytes;
        st.applied += 1;
        self.shared.changed.notify_all();
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        self.drain()?;
        self.shared.lock().recent = None;
        self.shared.base.clear()
    }

    fn flush(&self) -> Result<()> {
        self.drain()?;
        self.shared.base.flush()
    }
}

impl Drop for Deferred {
    /// Applies what is left to the backend, then stops the flusher.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.flusher.take()
            && t.join().is_err()
        {
            tracing::error!("the index flusher thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::index::MemIndex;

    /// A backend whose `apply` waits while the gate is shut, and fails when told to.
    #[derive(Default)]
    struct Gated {
        mem: MemIndex,
        shut: Mutex<bool>,
        opened: Condvar,
        fail: AtomicBool,
        applies: AtomicU64,
    }

    impl Gated {
        fn shut() -> Arc<Gated> {
            let g = Arc::new(Gated::default());
            *g.shut.lock().expect("gate") = true;
            g
        }

        fn open(&self) {
            *self.shut.lock().expect("gate") = false;
            self.opened.notify_all();
        }
    }

    impl KvRead for Gated {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.mem.get(key)
        }
        fn range(&self, s: &[u8], e: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.mem.range(s, e, limit)
        }
        fn last(&self, s: &[u8], e: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
            self.mem.last(s, e)
        }
    }

    impl IndexStore for Gated {
        fn apply(&self, writes: &Writes) -> Result<()> {
            let mut shut = self.shut.lock().expect("gate");
            while *shut {
                shut = self.opened.wait(shut).expect("gate");
            }
            self.applies.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::Index("the disk said no".into()));
            }
            self.mem.apply(writes)
        }
        fn clear(&self) -> Result<()> {
            self.mem.clear()
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
    }

    /// Opens the gate when dropped. Declared after the store, it drops first: a failed assertion
    /// does not leave the store's drop waiting on a shut gate for its last flush.
    struct OpenOnDrop(Arc<Gated>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open();
        }
    }

    fn writes(pairs: &[(&str, Option<&str>)]) -> Writes {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    fn keys(kv: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<String> {
        kv.into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect()
    }

    #[test]
    fn applied_writes_are_read_at_once_while_the_backend_has_none_of_them() -> Result<()> {
        let gated = Gated::shut();
        gated.mem.apply(&writes(&[
            ("a1", Some("old")),
            ("a2", Some("old")),
            ("b", Some("b")),
        ]))?;
        let d = Deferred::new(gated.clone())?;
        let _gate = OpenOnDrop(gated.clone());
        d.apply_owned(writes(&[("a1", Some("new")), ("a0", Some("new"))]))?;
        // The flusher has taken the first apply and waits at the gate; this one stays active.
        d.apply_owned(writes(&[("a2", None), ("a3", Some("new"))]))?;
        assert_eq!(
            gated.mem.get(b"a1")?,
            Some(b"old".to_vec()),
            "the backend is behind"
        );
        assert_eq!(d.get(b"a1")?, Some(b"new".to_vec()));
        assert_eq!(d.get(b"a2")?, None, "a removal hides the backend's value");
        assert_eq!(d.get(b"b")?, Some(b"b".to_vec()));
        assert_eq!(
            keys(d.range(b"a", b"b", 10)?),
            ["a0=new", "a1=new", "a3=new"]
        );
        assert_eq!(keys(d.range(b"a", b"b", 2)?), ["a0=new", "a1=new"]);
        assert_eq!(keys(d.last(b"a", b"b")?.into_iter().collect()), ["a3=new"]);
        gated.open();
        d.flush()?;
        assert_eq!(
            keys(gated.mem.range(b"a", b"c", 10)?),
            ["a0=new", "a1=new", "a3=new", "b=b"]
        );
        Ok(())
    }

    #[test]
    fn flush_returns_once_the_backend_holds_every_earlier_apply_even_an_empty_one_and_drop_applies_the_rest()
    -> Result<()> {
        let gated = Arc::new(Gated::default());
        let d = Deferred::new(gated.clone())?;
        for i in 0..100u32 {
            d.apply_owned(writes(&[(&format!("k{i:03}"), Some("v"))]))?;
        }
        d.flush()?;
        assert_eq!(gated.mem.range(b"k", b"l", 1000)?.len(), 100);
        d.apply_owned(Writes::new())?;
        d.flush()?;
        d.apply_owned(writes(&[("z", Some("last"))]))?;
        drop(d);
        assert_eq!(gated.mem.get(b"z")?, Some(b"last".to_vec()));
        Ok(())
    }

    #[test]
    fn a_paged_scan_through_every_layer_matches_the_writes_applied_in_full() -> Result<()> {
        let gated = Gated::shut();
        let reference = MemIndex::default();
        let key = |i: u32| format!("k{i:02}");
        let initial: Writes = (0..50)
            .map(|i| (key(i).into_bytes(), Some(b"base".to_vec())))
            .collect();
        gated.mem.apply(&initial)?;
        reference.apply(&initial)?;
        let d = Deferred::new(gated.clone())?;
        let _gate = OpenOnDrop(gated.clone());
        // The first apply ends up flushing (held at the gate), the second active, over the base.
        let rounds = [
            (0..50)
                .filter(|i| i % 3 == 0)
                .map(|i| (key(i), None))
                .collect::<Vec<_>>(),
            (0..60)
                .filter(|i| i % 4 == 0)
                .map(|i| (key(i), Some("new")))
                .chain((0..50).filter(|i| i % 7 == 1).map(|i| (key(i), None)))
                .collect(),
        ];
        for round in rounds {
            let w: Writes = round
                .into_iter()
                .map(|(k, v)| (k.into_bytes(), v.map(|v| v.as_bytes().to_vec())))
                .collect();
            reference.apply(&w)?;
            d.apply_owned(w)?;
            while d.shared.lock().flushing.is_none() {
                std::thread::yield_now();
            }
        }
        let mut paged = Vec::new();
        let mut from = b"k".to_vec();
        loop {
            let page = d.range(&from, b"l", 3)?;
            let Some((last, _)) = page.last() else { break };
            from = last.iter().copied().chain([0]).collect();
            paged.extend(page);
        }
        assert_eq!(paged, reference.range(b"k", b"l", usize::MAX)?);
        assert_eq!(d.last(b"k", b"l")?, reference.last(b"k", b"l")?);
        Ok(())
    }

    #[test]
    fn clear_leaves_nothing_to_read_in_any_layer() -> Result<()> {
        let gated = Arc::new(Gated::default());
        let d = Deferred::new(gated.clone())?;
        d.apply_owned(writes(&[("a", Some("1"))]))?;
        d.flush()?;
        // Flushed, "a" stays in the recent layer as well as in the backend.
        assert_eq!(d.get(b"a")?, Some(b"1".to_vec()));
        d.apply_owned(writes(&[("b", Some("2"))]))?;
        d.clear()?;
        assert_eq!(d.get(b"a")?, None);
        assert_eq!(d.get(b"b")?, None);
        assert!(d.range(b"a", b"z", 10)?.is_empty());
        Ok(())
    }

    #[test]
    fn a_failed_backend_apply_fails_later_applies_and_flushes_and_reads_keep_the_data() -> Result<()>
    {
        let gated = Arc::new(Gated::default());
        gated.fail.store(true, Ordering::SeqCst);
        let d = Deferred::new(gated.clone())?;
        d.apply_owned(writes(&[("a", Some("1"))]))?;
        let err = d.flush().expect_err("the backend refused the batch");
        assert!(err.to_string().contains("the disk said no"), "{err}");
        let err = d
            .apply_owned(writes(&[("b", Some("2"))]))
            .expect_err("no apply after a failure");
        assert!(err.to_string().contains("the disk said no"), "{err}");
        assert_eq!(d.get(b"a")?, Some(b"1".to_vec()));
        Ok(())
    }

    #[test]
    fn an_apply_waits_for_the_flusher_once_the_active_layer_is_full() -> Result<()> {
        let gated = Gated::shut();
        let d = Arc::new(Deferred::with_limit(gated.clone(), 16)?);
        let _gate = OpenOnDrop(gated.clone());
        // The flusher takes this one and waits at the gate.
        d.apply_owned(writes(&[("first", Some("0123456789abcdef"))]))?;
        while d.shared.lock().flushing.is_none() {
            std::thread::yield_now();
        }
        d.apply_owned(writes(&[("second", Some("0123456789abcdef"))]))?;
        let third = std::thread::spawn({
            let d = Arc::clone(&d);
            move || d.apply_owned(writes(&[("third", Some("x"))]))
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !third.is_finished(),
            "the third apply went past a full layer"
        );
        assert_eq!(gated.applies.load(Ordering::SeqCst), 0);
        gated.open();
        third.join().expect("the apply thread")?;
        d.flush()?;
        assert_eq!(gated.mem.get(b"third")?, Some(b"x".to_vec()));
        Ok(())
    }

    /// Readers never see a key go back to an older value or vanish while the flusher moves the
    /// writes into a slow backend.
    #[test]
    fn concurrent_readers_never_see_a_value_go_back_or_vanish() -> Result<()> {
        struct Slow(MemIndex);
        impl KvRead for Slow {
            fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
                self.0.get(key)
            }
            fn range(&self, s: &[u8], e: &[u8], l: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                self.0.range(s, e, l)
            }
            fn last(&self, s: &[u8], e: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
                self.0.last(s, e)
            }
        }
        impl IndexStore for Slow {
            fn apply(&self, writes: &Writes) -> Result<()> {
                // Applied one key at a time, slowly: a reader can run between any two.
                for (k, v) in writes {
                    self.0.apply(&Writes::from([(k.clone(), v.clone())]))?;
                    std::thread::yield_now();
                }
                Ok(())
            }
            fn clear(&self) -> Result<()> {
                self.0.clear()
            }
            fn flush(&self) -> Result<()> {
                Ok(())
            }
        }
        const KEYS: u64 = 16;
        const ROUNDS: u64 = 2_000;
        let d = Arc::new(Deferred::with_limit(
            Arc::new(Slow(MemIndex::default())),
            512,
        )?);
        let value = |round: u64| round.to_be_bytes().to_vec();
        let key = |k: u64| format!("key{k:02}").into_bytes();
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (d, done) = (Arc::clone(&d), Arc::clone(&done));
                std::thread::spawn(move || -> Result<u64> {
                    let mut seen = vec![0u64; KEYS as usize];
                    let mut reads = 0;
                    while !done.load(Ordering::SeqCst) {
                        let now: Vec<u64> = if r == 0 {
                            (0..KEYS)
                                .map(|k| d.get(&key(k)))
                                .collect::<Result<Vec<_>>>()?
                                .into_iter()
                                .map(|v| {
                                    v.map_or(0, |v| {
                                        u64::from_be_bytes(v.try_into().expect("8 bytes"))
                                    })
                                })
                                .collect()
                        } else {
                            let all = d.range(b"key", b"kez", usize::MAX)?;
                            let mut now = vec![0u64; KEYS as usize];
                            for (k, v) in all {
                                let i: usize =
                                    String::from_utf8_lossy(&k[3..]).parse().expect("key");
                                now[i] = u64::from_be_bytes(v.try_into().expect("8 bytes"));
                            }
                            now
                        };
                        for (i, (was, is)) in seen.iter_mut().zip(now).enumerate() {
                            assert!(is >= *was, "key {i} went from round {was} back to {is}");
                            *was = is;
                        }
                        reads += 1;
                    }
                    Ok(reads)
                })
            })
            .collect();
        for round in 1..=ROUNDS {
            let w = (0..KEYS).map(|k| (key(k), Some(value(round)))).collect();
            d.apply_owned(w)?;
        }
        d.flush()?;
        done.store(true, Ordering::SeqCst);
        for r in readers {
            let reads = r.join().expect("reader")?;
            assert!(reads > 0, "a reader never ran");
        }
        for k in 0..KEYS {
            assert_eq!(d.shared.base.get(&key(k))?, Some(value(ROUNDS)));
        }
        Ok(())
    }
}
