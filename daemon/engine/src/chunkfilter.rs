//! A Bloom filter of the chunk hashes the index holds: the writer's fast "certainly new".
//!
//! Every chunk the writer places is first looked up by hash, so that a chunk stored once is
//! never stored again. For new data the answer is almost always "absent", and an absent key is
//! the dearest lookup sled has: chunk hashes are uniformly random, so each probe lands on a
//! different leaf, which sled must materialize (measured on a slave applying 1,000 changed 4 KiB
//! files into a 100,000-file PFS: a quarter of the writer's time went to these misses).
//!
//! The filter answers "maybe stored" or "certainly not stored". Only "maybe" goes to the index.
//! Its errors are one-sided and harmless: a false "maybe" costs one index lookup; a "certainly
//! not" is never wrong, because every chunk the index holds was either there when the filter was
//! built ([`ChunkFilter::build`]) or inserted by the writer as it placed it. Removing chunks
//! (space reclaim) leaves stale bits, which only cost lookups. The filter is memory only, and
//! rebuilt at every open.
//!
//! Chunk hashes are BLAKE3 digests, so their bytes already are independent uniform bits: the
//! probe positions are taken from the hash itself, with no further hashing.

use crate::error::Result;
use crate::index::KvRead;
use crate::record::Hash;
use crate::schema;

/// Bits per expected chunk: with [`PROBES`] probes about a 1% false "maybe".
const BITS_PER_CHUNK: usize = 10;
/// Probes per hash; each takes 4 bytes of the hash.
const PROBES: usize = 7;
/// The smallest layer, in chunks.
const MIN_CAPACITY: usize = 1 << 16;
/// Index entries read per step while building.
const BUILD_STEP: usize = 4096;

/// One fixed-size Bloom filter.
struct Layer {
    bits: Vec<u64>,
    capacity: usize,
    len: usize,
}

impl Layer {
    fn new(capacity: usize) -> Layer {
        let words = (capacity * BITS_PER_CHUNK).div_ceil(64).next_power_of_two();
        Layer {
            bits: vec![0; words],
            capacity,
            len: 0,
        }
    }

    /// The bit positions of `hash`.
    /// The bit positions of `hash`: word index and mask.
    fn probes(&self, hash: &Hash) -> [(usize, u64); PROBES] {
        let mask = self.bits.len() * 64 - 1;
        std::array::from_fn(|i| {
            let b = &hash[4 * i..4 * i + 4];
            let bit = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize & mask;
            (bit / 64, 1u64 << (bit % 64))
        })
    }

    fn contains(&self, hash: &Hash) -> bool {
        self.probes(hash)
            .iter()
            .all(|&(w, m)| self.bits[w] & m != 0)
    }

    fn insert(&mut self, hash: &Hash) {
        for (w, m) in self.probes(hash) {
            self.bits[w] |= m;
        }
        self.len += 1;
    }
}

/// A scalable Bloom filter: when the newest layer is full, a layer twice its size is added, so
/// the false "maybe" rate stays bounded however many chunks arrive.
pub(crate) struct ChunkFilter {
    layers: Vec<Layer>,
}

impl ChunkFilter {
    /// An empty filter sized for `expected` chunks.
    pub fn with_capacity(expected: usize) -> ChunkFilter {
        ChunkFilter {
            layers: vec![Layer::new(expected.max(MIN_CAPACITY))],
        }
    }

    /// A filter holding every chunk hash in `kv`.
    pub fn build(kv: &dyn KvRead) -> Result<ChunkFilter> {
        let mut hashes = Vec::new();
        let (start, end) = (schema::chunk_key(&[0; 32]), schema::chunk_key(&[0xFF; 32]));
        let mut from = start;
        loop {
            let page = kv.range(&from, &end, BUILD_STEP)?;
            for (key, _) in &page {
                if let Some(hash) = key.get(1..).and_then(|h| Hash::try_from(h).ok()) {
                    hashes.push(hash);
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == BUILD_STEP => {
                    from = last.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        // The all-0xFF hash is the range's exclusive end; it cannot be skipped silently.
        if kv.get(&end)?.is_some() {
            hashes.push([0xFF; 32]);
        }
        let mut filter = ChunkFilter::with_capacity(2 * hashes.len());
        for h in &hashes {
            filter.insert(h);
        }
        Ok(filter)
    }

    /// False only when `hash` is certainly not stored.
    pub fn may_contain(&self, hash: &Hash) -> bool {
        self.layers.iter().any(|l| l.contains(hash))
    }

    /// Records that `hash` is (or is about to be) stored.
    pub fn insert(&mut self, hash: &Hash) {
        let last = self.layers.last().expect("a filter has a layer");
        if last.len >= last.capacity {
            let bigger = Layer::new(2 * last.capacity);
            self.layers.push(bigger);
        }
        self.layers
            .last_mut()
            .expect("a filter has a layer")
            .insert(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{IndexStore, MemIndex, Writes};

    fn hash(n: u64) -> Hash {
        *blake3::hash(&n.to_le_bytes()).as_bytes()
    }

    #[test]
    fn never_denies_an_inserted_hash_and_rarely_admits_others() {
        let mut f = ChunkFilter::with_capacity(1000);
        // Far past the first layer's capacity, so that growth is exercised.
        let n = 5 * MIN_CAPACITY as u64;
        for i in 0..n {
            f.insert(&hash(i));
        }
        assert!(f.layers.len() > 1, "the filter grew");
        assert!((0..n).all(|i| f.may_contain(&hash(i))), "no false negative");
        let false_maybe = (n..n + 100_000)
            .filter(|&i| f.may_contain(&hash(i)))
            .count();
        assert!(
            false_maybe < 5_000,
            "{false_maybe} of 100,000 absent hashes were admitted"
        );
    }

    #[test]
    fn build_holds_every_chunk_of_the_index_and_nothing_else_of_it() {
        let index = MemIndex::default();
        let mut writes = Writes::new();
        let n = 3 * BUILD_STEP as u64 + 17;
        for i in 0..n {
            writes.insert(schema::chunk_key(&hash(i)), Some(vec![1]));
        }
        writes.insert(schema::chunk_key(&[0xFF; 32]), Some(vec![1]));
        writes.insert(schema::chunk_key(&[0; 32]), Some(vec![1]));
        index.apply(&writes).expect("apply");
        let f = ChunkFilter::build(&index).expect("build");
        assert!((0..n).all(|i| f.may_contain(&hash(i))));
        assert!(f.may_contain(&[0xFF; 32]) && f.may_contain(&[0; 32]));
        assert_eq!(
            f.layers.iter().map(|l| l.len).sum::<usize>(),
            n as usize + 2
        );
    }
}
