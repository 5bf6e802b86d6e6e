//! Recycled chunk buffers.
//!
//! [`Txn::put_file`](crate::Txn::put_file) reads every chunk of a file straight into the record
//! buffer that the writer puts on the device. Allocating and freeing one such buffer per MiB
//! makes the allocator hand the memory back to the kernel and fault it in again, zeroed, for the
//! next chunk: on the large-write benchmark that churn cost about as much writer CPU as the
//! write itself. The writer gives each full-size buffer back after writing it, and the next
//! chunk reuses it; a bounded number are kept, so an idle engine holds at most [`KEEP`] of them.

use std::sync::Mutex;

use crate::engine::{MAX_INFLIGHT, SEND_AHEAD};
use crate::record::{CHUNK_DATA_OFFSET, CHUNK_SIZE};

/// The length of a full chunk record, and of every buffer in the pool.
pub(crate) const CHUNK_RECORD_LEN: usize = CHUNK_DATA_OFFSET + CHUNK_SIZE;

/// Buffers kept for reuse: more than one transaction can have on its way to the device (the
/// chunks it has sent ahead and not yet seen written, plus the batch it is filling), so that a
/// large file never allocates after its first window. 64 MiB in all.
const KEEP: usize = 64;
const _: () = assert!(KEEP * CHUNK_SIZE >= (MAX_INFLIGHT + 2) * SEND_AHEAD);

/// A pool of [`CHUNK_RECORD_LEN`]-byte buffers.
#[derive(Default)]
pub(crate) struct ChunkBufs {
    free: Mutex<Vec<Vec<u8>>>,
}

impl ChunkBufs {
    /// A buffer of [`CHUNK_RECORD_LEN`] bytes with arbitrary content: a recycled one when there
    /// is one, else a new zeroed one.
    pub fn take(&self) -> Vec<u8> {
        let recycled = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        recycled.unwrap_or_else(|| vec![0; CHUNK_RECORD_LEN])
    }

    /// Takes `buf` back for reuse if it is a full-size chunk record and the pool has room;
    /// drops it otherwise.
    pub fn give(&self, buf: Vec<u8>) {
        if buf.len() != CHUNK_RECORD_LEN {
            return;
        }
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if free.len() < KEEP {
            free.push(buf);
        }
    }

    /// How many buffers wait for reuse.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_buffer_is_the_next_one_taken() {
        let pool = ChunkBufs::default();
        let buf = pool.take();
        assert_eq!(buf.len(), CHUNK_RECORD_LEN);
        let addr = buf.as_ptr();
        pool.give(buf);
        let again = pool.take();
        assert_eq!(again.as_ptr(), addr, "the buffer was not reused");
    }

    #[test]
    fn only_full_size_buffers_are_kept_and_at_most_keep_of_them() {
        let pool = ChunkBufs::default();
        pool.give(vec![0; 100]);
        pool.give(vec![0; CHUNK_RECORD_LEN - 1]);
        assert_eq!(pool.kept(), 0);
        for _ in 0..KEEP + 3 {
            pool.give(vec![0; CHUNK_RECORD_LEN]);
        }
        assert_eq!(pool.kept(), KEEP);
    }
}
