//! The dump file of offline seeding (`replctl dump` / `replctl restore`): a PFS's replication
//! record stream in a file.
//!
//! ```text
//! file  = MAGIC "REPLDUMP" ‖ header frame ‖ batch frame* ‖ trailer frame
//! frame = kind u8 ‖ len u32 LE ‖ body ‖ CRC32C(kind ‖ len ‖ body) u32 LE
//! ```
//!
//! Kind `H` holds a [`pb::DumpHeader`] (format version, shared UUID, TID range), kind `B` a
//! [`pb::Batch`] exactly as the replication stream carries it (its payload has its own CRC32C),
//! kind `T` a [`pb::DumpTrailer`] (batch and record counts, the end position), so that a file
//! cut short is told apart from a complete one. A *piece* is what one gRPC message of `Dump` or
//! `Restore` carries: the magic with the header frame, then one frame each.
//!
//! [`Checker`] holds the rules both ends apply to the pieces in order: each frame's checksum,
//! the header first, batches numbered 1, 2, ... each starting where the previous one ended, each
//! payload matching its CRC32C, and a trailer that agrees with all of it and ends the file.

use std::io::Read;

use prost::Message;

use crate::pb;

/// The first bytes of a dump file.
pub const MAGIC: &[u8; 8] = b"REPLDUMP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest frame body accepted: a batch in the largest gRPC message a node may be set to
/// take (`limits.max_message_bytes` at most 1 GiB). A reader allocates as the bytes arrive, so a
/// damaged length costs no more memory than the file holds.
pub const MAX_FRAME: usize = 1 << 30;

const HEADER: u8 = b'H';
const BATCH: u8 = b'B';
const TRAILER: u8 = b'T';
const FRAME_HEAD: usize = 5;

/// Why a dump file (or a piece of one) is refused.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The file is not a dump, is damaged, or breaks the format's rules.
    #[error("{0}")]
    Invalid(String),
    /// The file ends before its trailer.
    #[error("the dump is truncated: {0}")]
    Truncated(String),
    /// Reading it failed.
    #[error("read the dump: {0}")]
    Io(#[from] std::io::Error),
}

/// One frame of a dump file.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The header.
    Header(pb::DumpHeader),
    /// A replication batch.
    Batch(pb::Batch),
    /// The trailer.
    Trailer(pb::DumpTrailer),
}

impl Frame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            Frame::Header(h) => (HEADER, h.encode_to_vec()),
            Frame::Batch(b) => (BATCH, b.encode_to_vec()),
            Frame::Trailer(t) => (TRAILER, t.encode_to_vec()),
        };
        let mut out = Vec::with_capacity(FRAME_HEAD + body.len() + 4);
        out.push(kind);
        out.extend_from_slice(
            &u32::try_from(body.len())
                .expect("frames are at most a gRPC message")
                .to_le_bytes(),
        );
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32c::crc32c(&out).to_le_bytes());
        out
    }

    /// The piece that carries this frame: the first one (the header) with the magic before it.
    pub fn piece(&self) -> Vec<u8> {
        match self {
            Frame::Header(_) => [&MAGIC[..], &self.encode()].concat(),
            _ => self.encode(),
        }
    }

    fn decode(kind: u8, body: &[u8]) -> Result<Frame, DumpError> {
        let bad = |what: &str, e: prost::DecodeError| {
            DumpError::Invalid(format!("a {what} frame does not decode: {e}"))
        };
        match kind {
            HEADER => pb::DumpHeader::decode(body)
                .map(Frame::Header)
                .map_err(|e| bad("header", e)),
            BATCH => pb::Batch::decode(body)
                .map(Frame::Batch)
                .map_err(|e| bad("batch", e)),
            TRAILER => pb::DumpTrailer::decode(body)
                .map(Frame::Trailer)
                .map_err(|e| bad("trailer", e)),
            other => Err(DumpError::Invalid(format!(
                "unknown frame kind {other:#04x}"
            ))),
        }
    }
}

/// Parses one piece: exactly one frame (after the magic when `first`).
pub fn parse_piece(first: bool, piece: &[u8]) -> Result<Frame, DumpError> {
    let rest = if first {
        piece.strip_prefix(&MAGIC[..]).ok_or_else(|| {
            DumpError::Invalid("not a repld dump file (no REPLDUMP magic at its start)".into())
        })?
    } else {
        piece
    };
    let (head, _) = rest
        .split_at_checked(FRAME_HEAD)
        .ok_or_else(|| DumpError::Truncated("a frame is cut short".into()))?;
    let len = frame_len(head)?;
    if rest.len() < FRAME_HEAD + len + 4 {
        return Err(DumpError::Truncated("a frame is cut short".into()));
    }
    if rest.len() > FRAME_HEAD + len + 4 {
        return Err(DumpError::Invalid(
            "a piece holds more than one frame".into(),
        ));
    }
    check_crc(&rest[..FRAME_HEAD + len], &rest[FRAME_HEAD + len..])?;
    Frame::decode(rest[0], &rest[FRAME_HEAD..FRAME_HEAD + len])
}

fn frame_len(head: &[u8]) -> Result<usize, DumpError> {
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(DumpError::Invalid(format!(
            "a frame claims {len} bytes, more than the {MAX_FRAME} a frame may hold: the file is damaged"
        )));
    }
    Ok(len)
}

fn check_crc(covered: &[u8], crc: &[u8]) -> Result<(), DumpError> {
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(covered) != want {
        return Err(DumpError::Invalid(
            "a frame does not match its CRC32C: the file is damaged".into(),
        ));
    }
    Ok(())
}

/// Reads a dump file piece by piece.
pub struct PieceReader<R> {
    inner: R,
    first: bool,
}

impl<R: Read> PieceReader<R> {
    /// A reader at the start of a dump file.
    pub fn new(inner: R) -> PieceReader<R> {
        PieceReader { inner, first: true }
    }

    /// The next piece and its frame; `None` at the end of the file.
    pub fn next_piece(&mut self) -> Result<Option<(Vec<u8>, Frame)>, DumpError> {
        let lead = if self.first { MAGIC.len() } else { 0 };
        let mut head = Vec::with_capacity(lead + FRAME_HEAD);
        let got = (&mut self.inner)
            .take((lead + FRAME_HEAD) as u64)
            .read_to_end(&mut head)?;
        if got == 0 && !self.first {
            return Ok(None);
        }
        if got < lead + FRAME_HEAD {
            if self.first && !head[..got].starts_with(&MAGIC[..got.min(MAGIC.len())]) {
                return Err(DumpError::Invalid(
                    "not a repld dump file (no REPLDUMP magic at its start)".into(),
                ));
            }
            return Err(DumpError::Truncated("a frame is cut short".into()));
        }
        if self.first && &head[..lead] != MAGIC {
            return Err(DumpError::Invalid(
                "not a repld dump file (no REPLDUMP magic at its start)".into(),
            ));
        }
        let len = frame_len(&head[lead..])?;
        let mut piece = head;
        let want = len as u64 + 4;
        if (&mut self.inner).take(want).read_to_end(&mut piece)? as u64 != want {
            return Err(DumpError::Truncated("a frame is cut short".into()));
        }
        let frame = parse_piece(self.first, &piece)?;
        self.first = false;
        Ok(Some((piece, frame)))
    }
}

/// The order rules of a dump, fed its frames one by one.
#[derive(Debug, Default)]
pub struct Checker {
    header: Option<pb::DumpHeader>,
    last_to: Option<pb::Position>,
    batches: u64,
    records: u64,
    done: bool,
}

impl Checker {
    /// A checker at the start of a file.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// The header, once seen.
    pub fn header(&self) -> Option<&pb::DumpHeader> {
        self.header.as_ref()
    }

    /// Whether the trailer has been seen (and checked).
    pub fn complete(&self) -> bool {
        self.done
    }

    /// Batches seen so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Checks the next frame against what came before.
    pub fn next(&mut self, frame: &Frame) -> Result<(), DumpError> {
        let invalid = |s: String| Err(DumpError::Invalid(s));
        if self.done {
            return invalid("data follows the trailer".into());
        }
        let Some(header) = &self.header else {
            let Frame::Header(h) = frame else {
                return invalid("the dump does not start with its header".into());
            };
            if h.format_version != FORMAT_VERSION {
                return invalid(format!(
                    "dump format {} is not read here (this build reads {FORMAT_VERSION}): restore with the repld version that made it",
                    h.format_version
                ));
            }
            if h.shared_uuid.len() != 16 || h.from.is_none() || h.to.is_none() {
                return invalid("the header lacks its shared UUID or TID range".into());
            }
            self.last_to.clone_from(&h.from);
            self.header = Some(h.clone());
            return Ok(());
        };
        match frame {
            Frame::Header(_) => invalid("a second header".into()),
            Frame::Batch(b) => {
                if b.seq != self.batches + 1 {
                    return invalid(format!(
                        "batch {} where batch {} was due: a batch is missing or repeated",
                        b.seq,
                        self.batches + 1
                    ));
                }
                if b.from != self.last_to {
                    return invalid(format!(
                        "batch {} does not start where the one before it ended",
                        b.seq
                    ));
                }
                if crc32c::crc32c(&b.payload) != b.crc32c {
                    return invalid(format!(
                        "batch {} does not match its CRC32C: the file is damaged",
                        b.seq
                    ));
                }
                self.batches += 1;
                self.records += u64::from(b.records);
                self.last_to.clone_from(&b.to);
                Ok(())
            }
            Frame::Trailer(t) => {
                if t.batches != self.batches || t.records != self.records {
                    return invalid(format!(
                        "the trailer counts {} batches and {} records, the file holds {} and {}",
                        t.batches, t.records, self.batches, self.records
                    ));
                }
                if t.to != self.last_to || t.to != header.to {
                    return invalid("the trailer's end position disagrees with the batches".into());
                }
                self.done = true;
                Ok(())
            }
        }
    }

    /// Fails unless the trailer was seen: call at the end of the input.
    pub fn finish(&self) -> Result<(), DumpError> {
        if self.done {
            Ok(())
        } else {
            Err(DumpError::Truncated(format!(
                "it ends after {} batches without its trailer",
                self.batches
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(t: u64) -> Option<pb::Position> {
        Some(pb::Position {
            synced_tid: t,
            partial_tid: 0,
            partial_chunks: 0,
        })
    }

    fn file() -> Vec<u8> {
        let mut out = Frame::Header(pb::DumpHeader {
            format_version: FORMAT_VERSION,
            shared_uuid: vec![7u8; 16].into(),
            pfs: "data".into(),
            from: pos(0),
            to: pos(20),
            made_ns: 1,
        })
        .piece();
        for (seq, (a, b)) in [(0, 10), (10, 20)].into_iter().enumerate() {
            let payload = bytes::Bytes::from(vec![seq as u8; 100]);
            out.extend(
                Frame::Batch(pb::Batch {
                    seq: seq as u64 + 1,
                    from: pos(a),
                    to: pos(b),
                    master_head: 20,
                    crc32c: crc32c::crc32c(&payload),
                    payload,
                    records: 2,
                })
                .piece(),
            );
        }
        out.extend(
            Frame::Trailer(pb::DumpTrailer {
                batches: 2,
                records: 4,
                to: pos(20),
            })
            .piece(),
        );
        out
    }

    fn check(bytes: &[u8]) -> Result<u64, DumpError> {
        let mut r = PieceReader::new(bytes);
        let mut c = Checker::new();
        while let Some((piece, frame)) = r.next_piece()? {
            assert_eq!(parse_piece(c.header().is_none(), &piece)?, frame);
            c.next(&frame)?;
        }
        c.finish()?;
        Ok(c.batches())
    }

    #[test]
    fn a_whole_file_checks_out() {
        assert_eq!(check(&file()).expect("valid"), 2);
    }

    #[test]
    fn every_cut_and_every_flipped_bit_is_refused() {
        let f = file();
        for cut in 0..f.len() {
            assert!(check(&f[..cut]).is_err(), "cut at {cut} passed");
        }
        for i in 0..f.len() {
            for bit in [0x01u8, 0x80] {
                let mut g = f.clone();
                g[i] ^= bit;
                assert!(
                    check(&g).is_err(),
                    "bit {bit:#x} of byte {i} flipped passed"
                );
            }
        }
    }

    #[test]
    fn reordered_or_extra_frames_are_refused() {
        let f = file();
        let mut extra = f.clone();
        extra.extend(
            Frame::Trailer(pb::DumpTrailer {
                batches: 2,
                records: 4,
                to: pos(20),
            })
            .piece(),
        );
        assert!(check(&extra).is_err(), "data after the trailer");
        assert!(
            matches!(
                check(b"something else entirely"),
                Err(DumpError::Invalid(_))
            ),
            "not a dump"
        );
    }
}
