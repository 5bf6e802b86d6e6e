//! A batch payload: the records that take a slave from one position to the next.
//!
//! A sequence of frames `kind u8 ‖ len u32 LE ‖ body`: kind 1 is a chunk's data, kind 2 a change
//! ([`Change::encode`]). The batch's CRC32C covers the payload on the wire; on the slave each
//! chunk is hashed again (BLAKE3) and each change must continue the PFS's history chain, so a
//! payload that decodes but lies is refused by the engine's apply.

use bytes::{BufMut, Bytes, BytesMut};
use repld_engine::Change;

const KIND_CHUNK: u8 = 1;
const KIND_CHANGE: u8 = 2;
/// Bytes of framing per record.
pub const FRAME: usize = 5;

/// Appends a chunk's data.
pub fn put_chunk(buf: &mut BytesMut, data: &[u8]) {
    put(buf, KIND_CHUNK, data);
}

/// Appends a change.
pub fn put_change(buf: &mut BytesMut, encoded: &[u8]) {
    put(buf, KIND_CHANGE, encoded);
}

fn put(buf: &mut BytesMut, kind: u8, body: &[u8]) {
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
    let mut out = Decoded::default();
    let mut p = &payload[..];
    while !p.is_empty() {
        if p.len() < FRAME {
            return Err("a record frame is cut short".into());
        }
        let kind = p[0];
        let len = u32::from_le_bytes([p[1], p[2], p[3], p[4]]) as usize;
        let body = p
            .get(FRAME..FRAME + len)
            .ok_or("a record runs past the end of the batch")?;
        match kind {
            KIND_CHUNK => {
                if len > repld_engine::CHUNK_SIZE {
                    return Err(format!(
                        "a chunk of {len} bytes is larger than a chunk may be"
                    ));
                }
                let start = payload.len() - p.len() + FRAME;
                out.chunks.push(payload.slice(start..start + len));
            }
            KIND_CHANGE => out
                .changes
                .push(Change::decode(body).map_err(|e| format!("a change: {e}"))?),
            other => return Err(format!("unknown record kind {other}")),
        }
        p = &p[FRAME + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let mut buf = BytesMut::new();
        put_chunk(&mut buf, b"hello");
        put_chunk(&mut buf, b"");
        let buf = buf.freeze();
        let d = decode(&buf).expect("decode");
        assert_eq!(d.chunks, vec![Bytes::from_static(b"hello"), Bytes::new()]);
        assert!(decode(&buf.slice(..buf.len() - 1)).is_err(), "cut short");
        let mut bad = buf.to_vec();
        bad[0] = 9;
        assert!(decode(&Bytes::from(bad)).is_err(), "unknown kind");
        let mut change = BytesMut::new();
        put_change(&mut change, b"not a change");
        assert!(decode(&change.freeze()).is_err());
    }
}
