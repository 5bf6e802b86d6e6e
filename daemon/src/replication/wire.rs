//! A batch payload: the records that take a slave from one position to the next.
//!
//! A sequence of frames `kind u8 ‖ len u32 LE ‖ body`: kind 1 is a chunk's data, kind 2 a change
//! ([`Change::encode`]). The batch's CRC32C covers the payload on the wire; on the slave each
//! chunk is hashed again (BLAKE3) and each change must continue the PFS's history chain, so a
//! payload that decodes but lies is refused by the engine's apply.

use std::ops::Range;

use bytes::{BufMut, Bytes};
use repld_engine::Change;

const KIND_CHUNK: u8 = 1;
const KIND_CHANGE: u8 = 2;
/// Bytes of framing per record.
pub const FRAME: usize = 5;

/// Appends a chunk's data from memory (the sender reads it in place with [`put_chunk_with`]).
#[cfg(test)]
pub fn put_chunk(buf: &mut Vec<u8>, data: &[u8]) {
    put(buf, KIND_CHUNK, data);
}

/// Appends a chunk whose data `read` appends to `buf` itself (the sender reads it from the
/// device straight into the batch). When `read` fails, `buf` is as it was.
pub fn put_chunk_with<E>(
    buf: &mut Vec<u8>,
    read: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let mark = buf.len();
    buf.put_u8(KIND_CHUNK);
    buf.put_u32_le(0);
    if let Err(e) = read(buf) {
        buf.truncate(mark);
        return Err(e);
    }
    let len = u32::try_from(buf.len() - mark - FRAME).expect("records are at most a few MiB");
    buf[mark + 1..mark + FRAME].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Appends a change.
pub fn put_change(buf: &mut Vec<u8>, encoded: &[u8]) {
    put(buf, KIND_CHANGE, encoded);
}

fn put(buf: &mut Vec<u8>, kind: u8, body: &[u8]) {
    buf.reserve(FRAME + body.len());
    buf.put_u8(kind);
    buf.put_u32_le(u32::try_from(body.len()).expect("records are at most a few MiB"));
    buf.put_slice(body);
}

/// A decoded payload.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Chunk data, in order: slices of the payload, not copies.
    pub chunks: Vec<Bytes>,
    /// Changes, in order.
    pub changes: Vec<Change>,
}

/// Decodes a payload; any malformed frame refuses all of it.
pub fn decode(payload: &Bytes) -> Result<Decoded, String> {
    // A first pass checks the framing and counts, so that each vector is allocated once: a
    // batch of small files holds thousands of chunks.
    let (mut chunks, mut changes) = (0, 0);
    for frame in frames(payload) {
        match frame?.0 {
            KIND_CHUNK => chunks += 1,
            _ => changes += 1,
        }
    }
    let mut out = Decoded {
        chunks: Vec::with_capacity(chunks),
        changes: Vec::with_capacity(changes),
    };
    for frame in frames(payload) {
        let (kind, body) = frame?;
        if kind == KIND_CHUNK {
            out.chunks.push(payload.slice(body));
        } else {
            let change = Change::decode(&payload[body]).map_err(|e| format!("a change: {e}"))?;
            out.changes.push(change);
        }
    }
    Ok(out)
}

/// The frames of a payload: each one's kind (a chunk or a change) and its body's byte range.
fn frames(payload: &[u8]) -> impl Iterator<Item = Result<(u8, Range<usize>), String>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at == payload.len() {
            return None;
        }
        let frame = (|| {
            let head = payload
                .get(at..at + FRAME)
                .ok_or("a record frame is cut short")?;
            let kind = head[0];
            let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let body = at + FRAME..at + FRAME + len;
            if body.end > payload.len() {
                return Err("a record runs past the end of the batch".to_owned());
            }
            match kind {
                KIND_CHUNK if len > repld_engine::CHUNK_SIZE => Err(format!(
                    "a chunk of {len} bytes is larger than a chunk may be"
                )),
                KIND_CHUNK | KIND_CHANGE => Ok((kind, body)),
                other => Err(format!("unknown record kind {other}")),
            }
        })();
        // A bad frame ends the walk: nothing after it can be found.
        at = frame.as_ref().map_or(payload.len(), |(_, body)| body.end);
        Some(frame)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let mut buf = Vec::new();
        put_chunk(&mut buf, b"hello");
        put_chunk(&mut buf, b"");
        let buf = Bytes::from(buf);
        let d = decode(&buf).expect("decode");
        assert_eq!(d.chunks, vec![Bytes::from_static(b"hello"), Bytes::new()]);
        assert!(decode(&buf.slice(..buf.len() - 1)).is_err(), "cut short");
        let mut bad = buf.to_vec();
        bad[0] = 9;
        assert!(decode(&Bytes::from(bad)).is_err(), "unknown kind");
        let mut change = Vec::new();
        put_change(&mut change, b"not a change");
        assert!(decode(&Bytes::from(change)).is_err());
        let mut big = Vec::new();
        put_chunk(&mut big, b"fine");
        put_chunk(&mut big, &vec![0; repld_engine::CHUNK_SIZE + 1]);
        let err = decode(&Bytes::from(big)).expect_err("an oversized chunk");
        assert!(err.contains("larger than a chunk may be"), "{err}");
    }

    #[test]
    fn a_chunk_read_into_the_batch_is_framed_with_its_length_and_a_failed_read_leaves_nothing() {
        let mut buf = Vec::new();
        put_change(&mut buf, b"x");
        let before = buf.clone();
        let failed: Result<(), &str> = put_chunk_with(&mut buf, |b| {
            b.extend_from_slice(b"half");
            Err("the read failed")
        });
        assert_eq!(failed, Err("the read failed"));
        assert_eq!(buf, before, "a failed read leaves the batch as it was");
        put_chunk_with(&mut buf, |b| {
            b.extend_from_slice(b"hello");
            Ok::<_, ()>(())
        })
        .expect("read");
        let mut want = before;
        put_chunk(&mut want, b"hello");
        assert_eq!(buf, want, "the same frame as a copied chunk");
    }
}
