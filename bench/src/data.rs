//! Incompressible test data that never repeats a 1 MiB chunk.
//!
//! The engine stores data in 1 MiB chunks deduplicated by BLAKE3, and some file systems compress,
//! so benchmark data must be both random and free of repeated chunks. Generating gigabytes with a
//! PRNG inside the timed section would measure the PRNG, so a pool of random bytes is generated
//! once up front; a stream is read from it block by block (1 MiB each), with the first
//! [`STAMP_LEN`] bytes of every block overwritten by a stamp of (generator seed, stream, block
//! number). Every block of every stream is therefore distinct (so no two chunks dedupe), while
//! reading costs one `memcpy`, as reading from a page-cached file would.

use std::io::Read;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// Bytes per block: the engine's chunk size, so that chunk boundaries fall on block boundaries.
pub const BLOCK: usize = repld_engine::CHUNK_SIZE;
/// Bytes at the start of each block that carry its stamp.
pub const STAMP_LEN: usize = 32;

/// A pool of random bytes that streams are cut from.
pub struct Incompressible {
    pool: Vec<u8>,
    seed: u64,
}

impl Incompressible {
    /// A pool of at least `pool_bytes` (rounded up to whole blocks, at least one) random bytes.
    pub fn new(pool_bytes: usize, seed: u64) -> Incompressible {
        let blocks = pool_bytes.div_ceil(BLOCK).max(1);
        let mut pool = vec![0u8; blocks * BLOCK];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut pool);
        Incompressible { pool, seed }
    }

    /// A pool seeded from the clock, so that separate runs never share chunks.
    pub fn fresh(pool_bytes: usize) -> Incompressible {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Incompressible::new(pool_bytes, seed)
    }

    /// Bytes in the pool.
    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// A reader of `len` bytes of stream `stream`. Different streams (and different blocks of
    /// one stream) never share a block.
    pub fn reader(&self, stream: u64, len: u64) -> StreamReader<'_> {
        StreamReader {
            pool: self,
            stream,
            pos: 0,
            len,
        }
    }

    /// The first `len` bytes of stream `stream`, as a vector (for small files).
    pub fn bytes(&self, stream: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(stream, 0, &mut v);
        v
    }

    /// Fills `buf` with the stream's bytes from `pos` on.
    fn fill(&self, stream: u64, mut pos: u64, buf: &mut [u8]) {
        let nblocks = (self.pool.len() / BLOCK) as u64;
        let mut done = 0;
        while done < buf.len() {
            let block = pos / BLOCK as u64;
            let off = (pos % BLOCK as u64) as usize;
            let n = (buf.len() - done).min(BLOCK - off);
            // Streams start at different pool blocks, so short streams differ beyond the stamp.
            let src = ((block + stream.wrapping_mul(7)) % nblocks) as usize * BLOCK + off;
            let out = &mut buf[done..done + n];
            out.copy_from_slice(&self.pool[src..src + n]);
            if off < STAMP_LEN {
                let stamp = self.stamp(stream, block);
                let k = n.min(STAMP_LEN - off);
                out[..k].copy_from_slice(&stamp[off..off + k]);
            }
            done += n;
            pos += n as u64;
        }
    }

    fn stamp(&self, stream: u64, block: u64) -> [u8; STAMP_LEN] {
        let mut s = [0u8; STAMP_LEN];
        s[..8].copy_from_slice(&self.seed.to_le_bytes());
        s[8..16].copy_from_slice(&stream.to_le_bytes());
        s[16..24].copy_from_slice(&block.to_le_bytes());
        s[24..].copy_from_slice(b"replbnch");
        s
    }
}

/// A stream of incompressible bytes; see [`Incompressible::reader`].
pub struct StreamReader<'a> {
    pool: &'a Incompressible,
    stream: u64,
    pos: u64,
    len: u64,
}

impl Read for StreamReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len - self.pos) as usize;
        self.pool.fill(self.stream, self.pos, &mut buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn blocks_never_repeat_across_blocks_and_streams() {
        let g = Incompressible::new(2 * BLOCK, 42);
        let mut seen = HashSet::new();
        for stream in 0..3 {
            let mut r = g.reader(stream, 5 * BLOCK as u64);
            let mut buf = vec![0u8; BLOCK];
            for _ in 0..5 {
                r.read_exact(&mut buf).expect("read a block");
                assert!(
                    seen.insert(blake3::hash(&buf)),
                    "block repeated in stream {stream}"
                );
            }
            assert_eq!(r.read(&mut buf).expect("eof"), 0);
        }
    }

    #[test]
    fn odd_sized_reads_see_the_same_bytes_as_whole_blocks() {
        let g = Incompressible::new(BLOCK, 7);
        let len = 3 * BLOCK as u64 + 123;
        let mut whole = Vec::new();
        g.reader(9, len).read_to_end(&mut whole).expect("read");
        let mut pieces = Vec::new();
        let mut r = g.reader(9, len);
        let mut buf = vec![0u8; 4099];
        loop {
            let n = r.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(whole.len() as u64, len);
        assert_eq!(whole, pieces);
        assert_eq!(g.bytes(9, 1000), whole[..1000]);
    }

    #[test]
    fn data_is_incompressible() {
        // Byte frequencies of random data are flat: no byte value is much more common than 1/256.
        let g = Incompressible::new(BLOCK, 1);
        let data = g.bytes(0, BLOCK);
        let mut counts = [0usize; 256];
        for b in &data {
            counts[*b as usize] += 1;
        }
        let max = counts.iter().max().copied().unwrap_or(0);
        assert!(
            max < BLOCK / 256 * 11 / 10,
            "skewed byte distribution: {max}"
        );
    }
}
