//! The append-only log: segments, flush units, recovery scan, and the unit planner.
//!
//! The device's segment slots hold log segments. Each segment starts with a 4 KiB header; flush
//! units follow. A flush unit is what one group-commit write puts on the device: a 64-byte header
//! and then records, zero-padded to a 4 KiB boundary, so that a later write never rewrites a
//! block of an earlier, durable unit.
//!
//! A log sequence number (LSN) is `segment seq * segment_size + offset in segment`. Segment
//! seqs only grow, so LSNs are ordered as the log is, even when slots are reused.
//!
//! Recovery reads units in order. The first unit that fails its checks ends the log, unless a
//! valid unit further on says (through its `durable_before` field) that the failing one had been
//! made durable before: then the log is damaged in the middle, which is reported with its
//! location and never skipped. See `docs/on-disk-format.md`.

use std::collections::BTreeMap;

use crate::codec::{Dec, Enc};
use crate::device::{BLOCK, Device, Superblock};
use crate::error::{Error, Result};
use crate::record::{Framed, FramedChunk, parse_frame};

/// Bytes in a flush unit header.
pub(crate) const UNIT_HEADER: usize = 64;
/// The largest body of one flush unit.
pub(crate) const MAX_UNIT_BODY: usize = 32 << 20;

const SEG_MAGIC: &[u8; 8] = b"REPLDSG\x01";
const UNIT_MAGIC: &[u8; 4] = b"RLU\x01";

pub(crate) fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// The header of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegHeader {
    pub seq: u64,
    pub slot: u64,
    /// Offset where the previous segment's units ended.
    pub prev_end: u64,
    /// Seq of the previous segment's last unit.
    pub prev_unit_seq: u64,
}

impl SegHeader {
    pub fn encode(&self, volume: &[u8; 16]) -> Vec<u8> {
        let mut e = Enc::new();
        e.raw(SEG_MAGIC)
            .raw(volume)
            .u64(self.seq)
            .u64(self.slot)
            .u64(self.prev_end)
            .u64(self.prev_unit_seq);
        let crc = crc32c::crc32c(&e.0);
        e.u32(crc);
        let mut b = e.finish();
        b.resize(BLOCK as usize, 0);
        b
    }

    pub fn decode(block: &[u8], volume: &[u8; 16]) -> Option<SegHeader> {
        let mut d = Dec::new(block);
        if d.take(8).ok()? != SEG_MAGIC || d.uuid().ok()? != *volume {
            return None;
        }
        let h = SegHeader {
            seq: d.u64().ok()?,
            slot: d.u64().ok()?,
            prev_end: d.u64().ok()?,
            prev_unit_seq: d.u64().ok()?,
        };
        let body = block.len() - d.rest().len();
        (crc32c::crc32c(&block[..body]) == d.u32().ok()?).then_some(h)
    }
}

/// The header of a flush unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UnitHeader {
    pub seq: u64,
    pub lsn: u64,
    pub body_len: u32,
    pub count: u32,
    /// The highest unit seq that was durable when this unit was written.
    pub durable_before: u64,
}

impl UnitHeader {
    pub fn encode(&self, volume: &[u8; 16]) -> [u8; UNIT_HEADER] {
        let mut e = Enc::new();
        e.raw(UNIT_MAGIC)
            .u16(1)
            .u16(0)
            .u64(self.seq)
            .u64(self.lsn)
            .u32(self.body_len)
            .u32(self.count);
        e.u64(self.durable_before).raw(&volume[..8]);
        let crc = crc32c::crc32c(&e.0);
        e.u32(crc);
        let mut out = [0u8; UNIT_HEADER];
        out[..e.0.len()].copy_from_slice(&e.0);
        out
    }

    pub fn decode(buf: &[u8], volume: &[u8; 16]) -> Option<UnitHeader> {
        let mut d = Dec::new(buf.get(..UNIT_HEADER)?);
        if d.take(4).ok()? != UNIT_MAGIC || d.u16().ok()? != 1 {
            return None;
        }
        let _flags = d.u16().ok()?;
        let h = UnitHeader {
            seq: d.u64().ok()?,
            lsn: d.u64().ok()?,
            body_len: d.u32().ok()?,
            count: d.u32().ok()?,
            durable_before: d.u64().ok()?,
        };
        if d.take(8).ok()? != &volume[..8] {
            return None;
        }
        let body = UNIT_HEADER - d.rest().len();
        (crc32c::crc32c(&buf[..body]) == d.u32().ok()? && h.body_len as usize <= MAX_UNIT_BODY)
            .then_some(h)
    }
}

/// Which slot holds which segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMap {
    pub seg_size: u64,
    pub by_seq: BTreeMap<u64, SegHeader>,
    slot_seq: Vec<Option<u64>>,
    sb_slot_offsets: (u64, u64),
}

impl SegmentMap {
    /// Reads every slot's header.
    pub fn load(dev: &Device) -> Result<SegmentMap> {
        let sb = dev.superblock();
        let mut map = SegmentMap {
            seg_size: sb.segment_size,
            by_seq: BTreeMap::new(),
            slot_seq: vec![None; sb.slot_count as usize],
            sb_slot_offsets: (sb.slot_offset(0), sb.segment_size),
        };
        let mut block = vec![0u8; BLOCK as usize];
        for slot in 0..sb.slot_count {
            dev.read_at(&mut block, sb.slot_offset(slot))?;
            if let Some(h) = SegHeader::decode(&block, &sb.volume_uuid)
                && h.slot == slot
            {
                if let Some(other) = map.by_seq.get(&h.seq) {
                    return Err(Error::Corruption {
                        lsn: h.seq * sb.segment_size,
                        slot,
                        offset: sb.slot_offset(slot),
                        detail: format!(
                            "slots {} and {slot} both claim segment seq {}",
                            other.slot, h.seq
                        ),
                    });
                }
                map.by_seq.insert(h.seq, h);
                map.slot_seq[slot as usize] = Some(h.seq);
            }
        }
        Ok(map)
    }

    pub fn insert(&mut self, h: SegHeader) {
        self.slot_seq[h.slot as usize] = Some(h.seq);
        self.by_seq.insert(h.seq, h);
    }

    pub fn remove(&mut self, seq: u64) {
        if let Some(h) = self.by_seq.remove(&seq) {
            self.slot_seq[h.slot as usize] = None;
        }
    }

    /// The device offset of `lsn`.
    pub fn locate(&self, lsn: u64) -> Option<(u64, u64)> {
        let h = self.by_seq.get(&(lsn / self.seg_size))?;
        Some((
            h.slot,
            self.sb_slot_offsets.0 + h.slot * self.sb_slot_offsets.1 + lsn % self.seg_size,
        ))
    }

    pub fn free_slots(&self) -> usize {
        self.slot_seq.iter().filter(|s| s.is_none()).count()
    }

    pub fn slot_count(&self) -> usize {
        self.slot_seq.len()
    }

    pub fn max_seq(&self) -> u64 {
        self.by_seq.keys().next_back().copied().unwrap_or(0)
    }
}

/// Where a scan starts: the LSN of a unit, and the seq of the unit before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogPos {
    pub lsn: u64,
    pub prev_seq: u64,
}

/// Where the log ends, as recovery found it.
#[derive(Clone, Debug)]
pub(crate) struct LogEnd {
    /// Where the next unit goes, or `None` when the log has no segment yet.
    pub tail: Option<LogPos>,
    /// The greatest unit seq seen anywhere, valid or stale; new units must exceed it.
    pub max_seen_seq: u64,
    /// Segments after the end that hold no part of the log; their headers must be cleared.
    pub stale_segments: Vec<u64>,
    /// Bytes of a torn tail that were cut, and where, for the warning.
    pub torn: Option<(u64, String)>,
}

impl LogPos {
    /// The segment seq and the offset in it. The end of a full segment, `seq * segment_size +
    /// segment_size`, is also the start of segment `seq + 1` (its header, never a unit): it is
    /// taken as the end of segment `seq`, which may have no successor yet.
    pub fn split(self, seg_size: u64) -> (u64, u64) {
        match (self.lsn / seg_size, self.lsn % seg_size) {
            (seq, 0) if seq > 0 => (seq - 1, seg_size),
            at => at,
        }
    }
}

/// The first position of the log, or `None` for an empty log.
pub(crate) fn log_start(map: &SegmentMap) -> Option<LogPos> {
    map.by_seq.values().next().map(|h| LogPos {
        lsn: h.seq * map.seg_size + BLOCK,
        prev_seq: h.prev_unit_seq,
    })
}

/// A window over one segment's bytes, refilled in large reads.
struct SegReader<'a> {
    dev: &'a Device,
    base: u64,
    seg_size: u64,
    win_start: u64,
    win: Vec<u8>,
}

const WINDOW: u64 = 8 << 20;

impl<'a> SegReader<'a> {
    fn new(dev: &'a Device, sb: &Superblock, slot: u64) -> SegReader<'a> {
        SegReader {
            dev,
            base: sb.slot_offset(slot),
            seg_size: sb.segment_size,
            win_start: 0,
            win: Vec::new(),
        }
    }

    /// The bytes `[off, off + len)` of the segment.
    fn get(&mut self, off: u64, len: u64) -> Result<&[u8]> {
        let end = off + len;
        if end > self.seg_size {
            return Err(Error::Invalid("read past segment end".into()));
        }
        if off < self.win_start || end > self.win_start + self.win.len() as u64 {
            let want = len.max(WINDOW).min(self.seg_size - off);
            self.win.resize(want as usize, 0);
            self.dev.read_at(&mut self.win, self.base + off)?;
            self.win_start = off;
        }
        let s = (off - self.win_start) as usize;
        Ok(&self.win[s..s + len as usize])
    }
}

/// Why the unit at a position is not part of the log.
type Reject = String;

/// Validates the unit at `off` of segment `seq` and returns its header and body.
fn read_unit<'r>(
    r: &'r mut SegReader<'_>,
    seq: u64,
    off: u64,
    prev_seq: u64,
    volume: &[u8; 16],
) -> Result<std::result::Result<(UnitHeader, &'r [u8]), Reject>> {
    if off + UNIT_HEADER as u64 > r.seg_size {
        return Ok(Err("segment is full".into()));
    }
    let lsn = seq * r.seg_size + off;
    let Some(h) = UnitHeader::decode(r.get(off, UNIT_HEADER as u64)?, volume) else {
        return Ok(Err("no valid unit header".into()));
    };
    if h.lsn != lsn {
        return Ok(Err(format!(
            "unit header is for LSN {:#x}, a stale unit",
            h.lsn
        )));
    }
    if h.seq <= prev_seq {
        return Ok(Err(format!(
            "unit seq {} does not follow {prev_seq}",
            h.seq
        )));
    }
    if off + UNIT_HEADER as u64 + u64::from(h.body_len) > r.seg_size {
        return Ok(Err("unit runs past the segment end".into()));
    }
    let body = r.get(off + UNIT_HEADER as u64, u64::from(h.body_len))?;
    let mut at = 0usize;
    for i in 0..h.count {
        match parse_frame(&body[at..]) {
            Ok(f) => at += f.total_len,
            Err(why) => return Ok(Err(format!("record {i} at unit offset {at}: {why}"))),
        }
    }
    if at != body.len() {
        return Ok(Err("unit body length does not match its records".into()));
    }
    Ok(Ok((h, body)))
}

/// What [`scan`] reports as it reads.
pub(crate) enum ScanEvent<'s, 'b> {
    /// A valid record and its LSN.
    Record(u64, &'s Framed<'b>),
    /// The end of a valid unit: the log is whole up to this position.
    UnitEnd(LogPos),
}

/// Calls `visit` for every record from `start` to the end of the log, in order.
///
/// The scan stops at the first unit at or after `until` (`u64::MAX` to read to the end), for
/// checks of a log that is being written.
///
/// `known_durable` is an LSN below which the log is known to have been durable (the position an
/// index covered): a failing unit below it is corruption even when nothing valid follows it.
pub(crate) fn scan(
    dev: &Device,
    map: &SegmentMap,
    start: LogPos,
    known_durable: u64,
    until: u64,
    mut visit: impl FnMut(ScanEvent<'_, '_>) -> Result<()>,
) -> Result<LogEnd> {
    let sb = dev.superblock();
    let volume = sb.volume_uuid;
    let seg = sb.segment_size;
    let (mut seq, mut off) = start.split(seg);
    let mut prev = start.prev_seq;
    if !map.by_seq.contains_key(&seq) {
        if map.by_seq.is_empty() && start.lsn == 0 {
            return Ok(LogEnd {
                tail: None,
                max_seen_seq: 0,
                stale_segments: Vec::new(),
                torn: None,
            });
        }
        return Err(Error::Index(format!(
            "log position {:#x} names a segment that is not on the device",
            start.lsn
        )));
    }
    loop {
        let h = map.by_seq[&seq];
        let mut r = SegReader::new(dev, sb, h.slot);
        let reject = loop {
            if seq * seg + off >= until {
                let tail = LogPos {
                    lsn: seq * seg + off,
                    prev_seq: prev,
                };
                return Ok(LogEnd {
                    tail: Some(tail),
                    max_seen_seq: prev,
                    stale_segments: Vec::new(),
                    torn: None,
                });
            }
            match read_unit(&mut r, seq, off, prev, &volume)? {
                Ok((uh, body)) => {
                    let mut at = 0usize;
                    for _ in 0..uh.count {
                        let f = parse_frame(&body[at..]).expect("validated by read_unit");
                        visit(ScanEvent::Record(uh.lsn + (UNIT_HEADER + at) as u64, &f))?;
                        at += f.total_len;
                    }
                    prev = uh.seq;
                    off = align_up(off + UNIT_HEADER as u64 + u64::from(uh.body_len));
                    visit(ScanEvent::UnitEnd(LogPos {
                        lsn: seq * seg + off,
                        prev_seq: prev,
                    }))?;
                }
                Err(why) => break why,
            }
        };
        // The units of this segment end at `off`. Continue in the next segment if its header
        // says the log moved there from exactly here.
        if let Some((&next, nh)) = map.by_seq.range(seq + 1..).next()
            && nh.prev_end == off
            && nh.prev_unit_seq == prev
        {
            seq = next;
            off = BLOCK;
            continue;
        }
        return finish_at(dev, map, seq, off, prev, known_durable, reject);
    }
}

/// The log ends at `(seq, off)`. Decide whether that is a torn tail or damage in the middle.
fn finish_at(
    dev: &Device,
    map: &SegmentMap,
    seq: u64,
    off: u64,
    prev: u64,
    known_durable: u64,
    reject: Reject,
) -> Result<LogEnd> {
    let sb = dev.superblock();
    let seg = sb.segment_size;
    let lsn = seq * seg + off;
    let (slot, offset) = map.locate(lsn).unwrap_or((0, 0));
    let corruption = |detail: String| Error::Corruption {
        lsn,
        slot,
        offset,
        detail,
    };
    if lsn < known_durable {
        return Err(corruption(format!(
            "{reject}, below the durable position {known_durable:#x}"
        )));
    }
    let mut max_seen = prev;
    let mut stale_segments = Vec::new();
    let mut later_bytes = 0u64;
    let candidates = std::iter::once((seq, off + BLOCK))
        .chain(map.by_seq.range(seq + 1..).map(|(&s, _)| (s, BLOCK)));
    for (s, from) in candidates {
        if s != seq {
            stale_segments.push(s);
            max_seen = max_seen.max(map.by_seq[&s].prev_unit_seq);
        }
        let mut r = SegReader::new(dev, sb, map.by_seq[&s].slot);
        let mut at = align_up(from);
        while at + UNIT_HEADER as u64 <= seg {
            let hdr = r.get(at, UNIT_HEADER as u64)?;
            if let Some(h) = UnitHeader::decode(hdr, &sb.volume_uuid)
                && h.lsn == s * seg + at
            {
                max_seen = max_seen.max(h.seq);
                if h.seq > prev && read_unit(&mut r, s, at, prev, &sb.volume_uuid)?.is_ok() {
                    if h.durable_before > prev {
                        return Err(corruption(format!(
                            "{reject}; a later unit (seq {}, at LSN {:#x}) was written after this one was durable",
                            h.seq, h.lsn
                        )));
                    }
                    later_bytes += UNIT_HEADER as u64 + u64::from(h.body_len);
                }
            }
            at += BLOCK;
        }
    }
    let torn = (later_bytes > 0 || reject != "no valid unit header" && reject != "segment is full")
        .then(|| {
            (
                lsn,
                format!("{reject}; {later_bytes} bytes of unacknowledged units after it dropped"),
            )
        });
    Ok(LogEnd {
        tail: Some(LogPos {
            lsn,
            prev_seq: prev,
        }),
        max_seen_seq: max_seen,
        stale_segments,
        torn,
    })
}

/// A flush unit being assembled.
pub(crate) struct UnitBuf {
    /// Device offset of the unit (or of the segment header, when `seg_header` is set).
    pub device_offset: u64,
    pub seg_header: Option<Vec<u8>>,
    pub header: UnitHeader,
    pub body: Body,
}

impl UnitBuf {
    /// What goes around the body on the device: the bytes before it (segment header, if any, and
    /// unit header) and the length of the zero padding after it. Head, body pieces and padding
    /// are written with one vectored write, so record data is never copied into the unit.
    pub fn frame(&self, volume: &[u8; 16]) -> (Vec<u8>, usize) {
        let mut head = self.seg_header.clone().unwrap_or_default();
        head.extend_from_slice(&self.header.encode(volume));
        let len = (head.len() + self.body.len) as u64;
        (head, (align_up(len) - len) as usize)
    }
}

/// Records smaller than this are copied together into one piece; larger ones (file chunks)
/// are kept as the buffers they were encoded in.
const COALESCE_BELOW: usize = 64 << 10;

/// One buffer of a unit's body.
pub(crate) enum Piece {
    /// Records encoded on this node (several small ones share one).
    Owned(Vec<u8>),
    /// A received chunk's data, shared with the batch it arrived in.
    Shared(bytes::Bytes),
}

impl Piece {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Piece::Owned(v) => v,
            Piece::Shared(b) => b,
        }
    }
}

/// The records of a unit, in order, as the buffers they arrived in.
#[derive(Default)]
pub(crate) struct Body {
    pub pieces: Vec<Piece>,
    pub len: usize,
    /// Whether the last piece collects small records and may grow.
    small_tail: bool,
}

impl Body {
    fn push(&mut self, record: Vec<u8>) {
        self.len += record.len();
        match self.pieces.last_mut() {
            Some(Piece::Owned(tail)) if self.small_tail && record.len() < COALESCE_BELOW => {
                tail.extend_from_slice(&record);
            }
            _ => {
                self.small_tail = record.len() < COALESCE_BELOW;
                self.pieces.push(Piece::Owned(record));
            }
        }
    }

    /// Appends data that stays in its own buffer.
    fn push_shared(&mut self, data: bytes::Bytes) {
        self.len += data.len();
        self.pieces.push(Piece::Shared(data));
        self.small_tail = false;
    }

    /// Where [`Body::truncate`] can come back to.
    fn mark(&self) -> (usize, usize, usize, bool) {
        (
            self.pieces.len(),
            self.pieces.last().map_or(0, |p| p.as_slice().len()),
            self.len,
            self.small_tail,
        )
    }

    fn truncate(&mut self, (pieces, last, len, small_tail): (usize, usize, usize, bool)) {
        self.pieces.truncate(pieces);
        match self.pieces.last_mut() {
            Some(Piece::Owned(p)) => p.truncate(last),
            Some(Piece::Shared(p)) => p.truncate(last),
            None => {}
        }
        self.len = len;
        self.small_tail = small_tail;
    }
}

/// The writer's position and the units it is assembling for one group commit.
pub(crate) struct Appender {
    pub volume: [u8; 16],
    pub seg_size: u64,
    /// The current segment and where the next unit starts in it.
    pub tail: Option<(SegHeader, u64)>,
    pub next_unit_seq: u64,
    pub next_seg_seq: u64,
    pub durable_seq: u64,
    pub last_unit_seq: u64,
    pub units: Vec<UnitBuf>,
    /// Segments started by the units being assembled.
    pub new_segments: Vec<SegHeader>,
    /// Slots that must stay free for work that frees space (deletes, destroys).
    pub reserve_slots: usize,
}

/// A saved state of the appender, to undo one submission's records.
pub(crate) struct Mark {
    tail: Option<(SegHeader, u64)>,
    next_unit_seq: u64,
    next_seg_seq: u64,
    last_unit_seq: u64,
    units: usize,
    last_body: (usize, usize, usize, bool),
    last_count: u32,
    new_segments: usize,
}

impl Appender {
    pub fn mark(&self) -> Mark {
        Mark {
            tail: self.tail,
            next_unit_seq: self.next_unit_seq,
            next_seg_seq: self.next_seg_seq,
            last_unit_seq: self.last_unit_seq,
            units: self.units.len(),
            last_body: self
                .units
                .last()
                .map_or((0, 0, 0, false), |u| u.body.mark()),
            last_count: self.units.last().map_or(0, |u| u.header.count),
            new_segments: self.new_segments.len(),
        }
    }

    pub fn rewind(&mut self, m: Mark) {
        self.tail = m.tail;
        self.next_unit_seq = m.next_unit_seq;
        self.next_seg_seq = m.next_seg_seq;
        self.last_unit_seq = m.last_unit_seq;
        self.units.truncate(m.units);
        if let Some(u) = self.units.last_mut() {
            u.body.truncate(m.last_body);
            u.header.body_len = u.body.len as u32;
            u.header.count = m.last_count;
        }
        self.new_segments.truncate(m.new_segments);
    }

    /// Places one encoded record and returns its LSN. `free_slots` counts the slots still free on
    /// the device (not counting those this batch took); `may_use_reserve` lets work that frees
    /// space use the reserved slots.
    pub fn place(
        &mut self,
        record: Vec<u8>,
        map: &SegmentMap,
        may_use_reserve: bool,
    ) -> Result<u64> {
        self.place_parts(record, None, map, may_use_reserve)
    }

    /// Places a chunk record (see [`Appender::place`]).
    pub fn place_chunk(&mut self, chunk: FramedChunk, map: &SegmentMap) -> Result<u64> {
        match chunk {
            FramedChunk::Whole(record) => self.place_parts(record, None, map, false),
            FramedChunk::Split { head, data } => self.place_parts(head, Some(data), map, false),
        }
    }

    /// Places a record made of `head` followed by `data`, which stays in its own buffer.
    fn place_parts(
        &mut self,
        record: Vec<u8>,
        data: Option<bytes::Bytes>,
        map: &SegmentMap,
        may_use_reserve: bool,
    ) -> Result<u64> {
        let need = (record.len() + data.as_ref().map_or(0, bytes::Bytes::len)) as u64;
        // Once work that frees space has opened a reserved slot, other work must not fill the
        // rest of that segment: the reserve would be gone for the next delete. So the reserve is
        // checked against the slots in use (the open segment included), not only when a segment
        // is opened. Counted from the map, this also holds after a reopen.
        let free = map.free_slots().saturating_sub(self.new_segments.len());
        if !may_use_reserve && free < self.reserve_slots {
            return Err(Self::full(map, self.reserve_slots));
        }
        let max_body = (self.seg_size - BLOCK - UNIT_HEADER as u64).min(MAX_UNIT_BODY as u64);
        if need > max_body {
            return Err(Error::TooLarge {
                what: "record".into(),
                size: need,
                limit: max_body,
            });
        }
        // Does the record fit the open unit (or a new unit at the tail)?
        let fits_open = self.units.last().is_some_and(|u| {
            let unit_off = u.header.lsn % self.seg_size;
            u.body.len as u64 + need <= MAX_UNIT_BODY as u64
                && unit_off + UNIT_HEADER as u64 + u.body.len as u64 + need <= self.seg_size
        });
        if !fits_open {
            self.close_unit();
            let fits_tail = self
                .tail
                .is_some_and(|(_, off)| off + UNIT_HEADER as u64 + need <= self.seg_size);
            if !fits_tail {
                self.roll_segment(map, may_use_reserve)?;
            }
            self.open_unit(map);
        }
        let u = self.units.last_mut().expect("a unit is open");
        let lsn = u.header.lsn + UNIT_HEADER as u64 + u.body.len as u64;
        u.body.push(record);
        if let Some(data) = data {
            u.body.push_shared(data);
        }
        u.header.count += 1;
        u.header.body_len = u.body.len as u32;
        Ok(lsn)
    }

    fn open_unit(&mut self, map: &SegmentMap) {
        let (seg, off) = self.tail.expect("a segment is open");
        let seq = self.next_unit_seq;
        self.next_unit_seq += 1;
        let lsn = seg.seq * self.seg_size + off;
        let starts_segment =
            self.new_segments.last().is_some_and(|s| s.seq == seg.seq) && off == BLOCK;
        let (slot_off, seg_header) = if starts_segment {
            (lsn - BLOCK, Some(seg.encode(&self.volume)))
        } else {
            (lsn, None)
        };
        let device_offset = map.sb_offset(seg.slot) + slot_off % self.seg_size;
        self.units.push(UnitBuf {
            device_offset,
            seg_header,
            header: UnitHeader {
                seq,
                lsn,
                body_len: 0,
                count: 0,
                durable_before: self.durable_seq,
            },
            body: Body::default(),
        });
    }

    /// Ends the open unit: the tail moves past it, 4 KiB aligned.
    fn close_unit(&mut self) {
        if let (Some(u), Some((_, off))) = (self.units.last(), self.tail.as_mut()) {
            let end =
                align_up(u.header.lsn % self.seg_size + UNIT_HEADER as u64 + u.body.len as u64);
            if end > *off {
                *off = end;
                self.last_unit_seq = u.header.seq;
            }
        }
    }

    fn roll_segment(&mut self, map: &SegmentMap, may_use_reserve: bool) -> Result<()> {
        let taken: Vec<u64> = self.new_segments.iter().map(|s| s.slot).collect();
        let free = map.free_slots().saturating_sub(taken.len());
        let reserve = if may_use_reserve {
            0
        } else {
            self.reserve_slots
        };
        if free <= reserve {
            return Err(Self::full(map, reserve));
        }
        let slot = (0..map.slot_count() as u64)
            .find(|s| map.slot_is_free(*s) && !taken.contains(s))
            .expect("a free slot was counted");
        let (prev_end, prev_unit_seq) = match self.tail {
            Some((_, off)) => (off, self.last_unit_seq),
            None => (0, self.last_unit_seq),
        };
        let h = SegHeader {
            seq: self.next_seg_seq,
            slot,
            prev_end,
            prev_unit_seq,
        };
        self.next_seg_seq += 1;
        self.new_segments.push(h);
        self.tail = Some((h, BLOCK));
        Ok(())
    }

    fn full(map: &SegmentMap, reserve: usize) -> Error {
        Error::DeviceFull {
            detail: format!(
                "all {} segments are in use{}: delete data, destroy a PFS or prune history to free space",
                map.slot_count(),
                if reserve > 0 {
                    " (the last is kept for deletes)"
                } else {
                    ""
                }
            ),
        }
    }

    /// Takes the assembled units, closing the open one.
    pub fn take_units(&mut self) -> Vec<UnitBuf> {
        self.close_unit();
        std::mem::take(&mut self.units)
    }
}

impl SegmentMap {
    pub fn slot_is_free(&self, slot: u64) -> bool {
        self.slot_seq
            .get(slot as usize)
            .is_some_and(Option::is_none)
    }

    pub fn sb_offset(&self, slot: u64) -> u64 {
        self.sb_slot_offsets.0 + slot * self.sb_slot_offsets.1
    }
}
