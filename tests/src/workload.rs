//! The engine crash tests' workload and logs.
//!
//! Transaction `seq` is a pure function of `seq` and of which of its lane's paths exist before
//! it: [`plan`]. Each transaction also writes its lane's marker file (`l<lane>-seq`) holding
//! `seq`, so a checker can tell, for any commit it finds, which `seq` made it and recompute
//! exactly what that commit must contain. Lane `seq % LANES` belongs to one writer thread, so its
//! paths change only in that thread's (sequential) commits.
//!
//! The writer keeps an acknowledgement log ([`AckLog`]): `BEGIN` before it calls commit, `ACK`
//! with the TID and content digests after commit returned (then fsync). That log is the ground
//! truth of what was acknowledged. The replicator keeps a log of what it sent ([`SentLog`]).
//! Every line ends with ` END`, so a line torn by SIGKILL is never taken for a whole one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use repld_engine::{Attrs, CHUNK_SIZE, Tid};

/// The PFS the workload writes.
pub const PFS: &str = "data";
/// Writer threads, each owning one lane of paths.
pub const LANES: u64 = 4;
/// File paths per lane (besides the marker).
pub const SLOTS: u64 = 12;
/// Most chunks the replicator puts in one batch.
pub const BATCH_CHUNKS: usize = 2;
/// Most whole changes the replicator puts in one batch.
pub const BATCH_CHANGES: usize = 6;

const MTIME_BASE: i64 = 1_700_000_000_000_000_000;

/// The lane of `seq`.
pub fn lane(seq: u64) -> u64 {
    seq % LANES
}

/// The marker file of `lane`: holds the `seq` of the lane's latest commit.
pub fn marker_path(lane: u64) -> String {
    format!("l{lane}-seq")
}

/// The lane a marker path belongs to, if `path` is a marker.
pub fn marker_lane(path: &str) -> Option<u64> {
    path.strip_prefix('l')?.strip_suffix("-seq")?.parse().ok()
}

/// The content of the marker written by `seq`.
pub fn marker_content(seq: u64) -> Vec<u8> {
    format!("seq={seq}\n").into_bytes()
}

/// The `seq` a marker's content names.
pub fn parse_marker(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data)
        .ok()?
        .strip_prefix("seq=")?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

/// File `slot` of `lane`.
pub fn slot_path(lane: u64, slot: u64) -> String {
    format!("l{lane}-f{slot:02}")
}

/// The attributes of every file `seq` writes. The mtime is unique to `seq`, so every put makes a
/// new version, even of an empty file.
pub fn attrs(seq: u64) -> Attrs {
    Attrs {
        mode: 0o644,
        mtime_ns: MTIME_BASE + i64::try_from(seq).expect("seq fits in i64"),
    }
}

/// BLAKE3 of `data`, in hex.
pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// One operation of a planned transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOp {
    /// The path it changes.
    pub path: String,
    /// The new content, or `None` for a delete.
    pub data: Option<Vec<u8>>,
}

/// What the acknowledgement log records of a deleted path.
pub const DELETED: &str = "DELETED";

impl PlannedOp {
    /// The BLAKE3 of the content in hex, or [`DELETED`].
    pub fn digest(&self) -> String {
        self.data
            .as_deref()
            .map_or_else(|| DELETED.to_owned(), blake3_hex)
    }
}

/// A small, fast, deterministic generator (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> SplitMix {
        SplitMix(seed ^ 0x5DEE_CE66_D1CE_F00D)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The size of a file: mostly small, one in thirty of several chunks (up to ~3.25 MiB, some an
/// exact multiple of the chunk size), one in five hundred of 8–10 MiB, a few empty.
fn file_size(rng: &mut SplitMix) -> usize {
    let chunk = CHUNK_SIZE as u64;
    let size = match rng.below(1000) {
        0..50 => 0,
        50..650 => 1 + rng.below(4096),
        650..970 => 4096 + rng.below(60 << 10),
        970..978 => (1 + rng.below(3)) * chunk,
        978..998 => (256 << 10) + rng.below(3 * chunk),
        // More than a transaction buffers before it sends its chunks ahead of the commit.
        _ => 8 * chunk + rng.below(2 * chunk),
    };
    usize::try_from(size).expect("sizes are small")
}

/// The content `seq` writes to `slot`: a readable header, then pseudo-random bytes.
pub fn content(seq: u64, slot: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    out.extend(format!("seq={seq} slot={slot}\n").bytes().take(size));
    let mut rng = SplitMix::new(seq.wrapping_mul(0x1000_0000_01B3) ^ slot);
    while out.len() < size {
        let word = rng.next().to_le_bytes();
        let n = (size - out.len()).min(word.len());
        out.extend_from_slice(&word[..n]);
    }
    out
}

/// The operations of transaction `seq`, sorted by path, given which paths of its lane exist
/// before it: the marker, then 1–5 distinct files of the lane, each put (new content) or, one
/// time in ten when it exists, deleted.
pub fn plan(seq: u64, mut exists: impl FnMut(&str) -> Result<bool>) -> Result<Vec<PlannedOp>> {
    let lane = lane(seq);
    let mut rng = SplitMix::new(seq);
    let files = 1 + rng.below(5);
    let mut slots = BTreeSet::new();
    while (slots.len() as u64) < files {
        slots.insert(rng.below(SLOTS));
    }
    let mut ops = vec![PlannedOp {
        path: marker_path(lane),
        data: Some(marker_content(seq)),
    }];
    for slot in slots {
        let path = slot_path(lane, slot);
        // Draw both numbers whatever the answer of `exists`, so that the rest of the plan does
        // not depend on it.
        let delete = rng.below(10) == 0;
        let size = file_size(&mut rng);
        let data = if delete && exists(&path)? {
            None
        } else {
            Some(content(seq, slot, size))
        };
        ops.push(PlannedOp { path, data });
    }
    ops.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(ops)
}

/// A transaction's content bytes (what rate and size limits count).
pub fn plan_bytes(ops: &[PlannedOp]) -> u64 {
    ops.iter()
        .map(|o| o.data.as_ref().map_or(0, |d| d.len() as u64))
        .sum()
}

// ----- the acknowledgement log -----

/// The first line a writer process appends.
pub fn run_line(pid: u32) -> String {
    format!("RUN {pid} END\n")
}

/// Appended before commit is called for `seq`.
pub fn begin_line(seq: u64) -> String {
    format!("BEGIN {seq} END\n")
}

/// Appended after the commit of `seq` returned `tid`.
pub fn ack_line(seq: u64, tid: Tid, ops: &[PlannedOp]) -> String {
    let mut line = format!("ACK {seq} {tid}");
    for op in ops {
        line.push_str(&format!(" {}={}", op.path, op.digest()));
    }
    line.push_str(" END\n");
    line
}

/// An acknowledged transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Its workload sequence number.
    pub seq: u64,
    /// The TID its commit returned.
    pub tid: Tid,
    /// Its paths with their content digests (or [`DELETED`]), sorted by path.
    pub ops: Vec<(String, String)>,
}

/// What one writer process logged.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// The `seq`s it began, in order.
    pub begins: Vec<u64>,
    /// The transactions it acknowledged, in order.
    pub acks: Vec<Ack>,
    /// Lines cut short by the kill (at most one expected).
    pub torn: usize,
}

impl Run {
    /// The last `seq` this run began in each lane.
    pub fn last_begun(&self) -> BTreeMap<u64, u64> {
        let mut last = BTreeMap::new();
        for &s in &self.begins {
            last.insert(lane(s), s);
        }
        last
    }
}

/// The parsed acknowledgement log.
#[derive(Debug, Clone, Default)]
pub struct AckLog {
    /// One entry per writer process, in order.
    pub runs: Vec<Run>,
}

/// Splits a log into its whole lines: those that end with a newline and with ` END`. Returns
/// the fields of whole lines (without `END`) and the number of torn ones.
fn whole_lines(text: &str) -> (Vec<Vec<&str>>, Vec<usize>) {
    let mut lines = Vec::new();
    let mut torn_at = Vec::new();
    let mut pieces: Vec<&str> = text.split('\n').collect();
    // The piece after the last newline was never terminated.
    let last = pieces.pop().unwrap_or_default();
    for piece in pieces {
        let fields: Vec<&str> = piece.split(' ').collect();
        if fields.len() >= 2 && fields.last() == Some(&"END") {
            lines.push(fields[..fields.len() - 1].to_vec());
        } else {
            torn_at.push(lines.len());
        }
    }
    if !last.is_empty() {
        torn_at.push(lines.len());
    }
    (lines, torn_at)
}

impl AckLog {
    /// Reads the log at `path`; an absent log is empty.
    pub fn read(path: &Path) -> Result<AckLog> {
        match std::fs::read_to_string(path) {
            Ok(text) => AckLog::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AckLog::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Parses the log. Torn lines are counted, not taken; a whole line that does not parse is an
    /// error.
    pub fn parse(text: &str) -> Result<AckLog> {
        let (lines, torn_at) = whole_lines(text);
        let mut log = AckLog::default();
        let mut torn = torn_at.into_iter().peekable();
        for (i, f) in lines.iter().enumerate() {
            while torn.next_if(|&t| t <= i).is_some() {
                if let Some(run) = log.runs.last_mut() {
                    run.torn += 1;
                }
            }
            let bad = || format!("bad acknowledgement log line {:?}", f.join(" "));
            match f[0] {
                "RUN" => log.runs.push(Run::default()),
                "BEGIN" => {
                    let seq = f.get(1).and_then(|s| s.parse().ok()).with_context(bad)?;
                    log.runs.last_mut().with_context(bad)?.begins.push(seq);
                }
                "ACK" => {
                    let seq = f.get(1).and_then(|s| s.parse().ok()).with_context(bad)?;
                    let tid = f.get(2).and_then(|s| s.parse().ok()).with_context(bad)?;
                    let mut ops = Vec::new();
                    for kv in &f[3..] {
                        let (p, d) = kv.split_once('=').with_context(bad)?;
                        ops.push((p.to_owned(), d.to_owned()));
                    }
                    log.runs
                        .last_mut()
                        .with_context(bad)?
                        .acks
                        .push(Ack { seq, tid, ops });
                }
                _ => bail!(bad()),
            }
        }
        if torn.next().is_some()
            && let Some(run) = log.runs.last_mut()
        {
            run.torn += 1;
        }
        Ok(log)
    }

    /// Every acknowledged transaction, in log order.
    pub fn acks(&self) -> impl Iterator<Item = &Ack> {
        self.runs.iter().flat_map(|r| r.acks.iter())
    }

    /// Every `seq` ever begun.
    pub fn begun(&self) -> BTreeSet<u64> {
        self.runs
            .iter()
            .flat_map(|r| r.begins.iter().copied())
            .collect()
    }

    /// The next `seq` of each lane: past every `seq` ever begun, so that a `seq` whose commit
    /// became durable without an acknowledgement is never used twice.
    pub fn next_seqs(&self) -> Vec<u64> {
        (0..LANES)
            .map(|l| {
                self.runs
                    .iter()
                    .flat_map(|r| r.begins.iter())
                    .filter(|&&s| lane(s) == l)
                    .max()
                    .map_or(l, |&s| s + LANES)
            })
            .collect()
    }
}

// ----- the replicator's log -----

/// The first line a replicator process appends.
pub fn sent_run_line(pid: u32) -> String {
    run_line(pid)
}

/// What one apply batch carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentBatch {
    /// Chunk ranges sent: (TID, first chunk index, end chunk index), indexes in the order of
    /// `Change::chunk_refs`.
    pub chunks: Vec<(Tid, u64, u64)>,
    /// Whole changes sent.
    pub changes: Vec<Tid>,
}

impl SentBatch {
    /// The line appended before the batch is applied.
    pub fn line(&self) -> String {
        let mut line = "BATCH".to_owned();
        for (t, a, b) in &self.chunks {
            line.push_str(&format!(" chunks={t}:{a}-{b}"));
        }
        for t in &self.changes {
            line.push_str(&format!(" change={t}"));
        }
        line.push_str(" END\n");
        line
    }

    /// Chunks sent.
    pub fn chunk_count(&self) -> u64 {
        self.chunks.iter().map(|(_, a, b)| b - a).sum()
    }
}

/// The parsed log of a replicator: batches, per process.
#[derive(Debug, Clone, Default)]
pub struct SentLog {
    /// One entry per replicator process, in order, with the batches it started.
    pub runs: Vec<Vec<SentBatch>>,
}

impl SentLog {
    /// Reads and parses the log at `path`.
    pub fn read(path: &Path) -> Result<SentLog> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let (lines, _torn) = whole_lines(&text);
        let mut log = SentLog::default();
        for f in lines {
            let bad = || format!("bad replicator log line {:?}", f.join(" "));
            match f[0] {
                "RUN" => log.runs.push(Vec::new()),
                "BATCH" => {
                    let mut b = SentBatch::default();
                    for item in &f[1..] {
                        if let Some(v) = item.strip_prefix("chunks=") {
                            let (t, range) = v.split_once(':').with_context(bad)?;
                            let (a, z) = range.split_once('-').with_context(bad)?;
                            b.chunks.push((
                                t.parse().ok().with_context(bad)?,
                                a.parse().with_context(bad)?,
                                z.parse().with_context(bad)?,
                            ));
                        } else if let Some(t) = item.strip_prefix("change=") {
                            b.changes.push(t.parse().ok().with_context(bad)?);
                        } else {
                            bail!(bad());
                        }
                    }
                    ensure!(b.chunk_count() <= BATCH_CHUNKS as u64, bad());
                    log.runs.last_mut().with_context(bad)?.push(b);
                }
                _ => bail!(bad()),
            }
        }
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_and_honour_existence() {
        let a = plan(41, |_| Ok(true)).expect("plan");
        let b = plan(41, |_| Ok(true)).expect("plan");
        assert_eq!(a, b);
        assert_eq!(a.last().map(|o| o.path.clone()), Some(marker_path(1)));
        assert!(a.len() >= 2 && a.len() <= 6);
        for s in 0..400 {
            let none = plan(s, |_| Ok(false)).expect("plan");
            assert!(
                none.iter().all(|o| o.data.is_some()),
                "no delete of a missing path"
            );
            let all = plan(s, |_| Ok(true)).expect("plan");
            assert_eq!(
                none.iter().map(|o| &o.path).collect::<Vec<_>>(),
                all.iter().map(|o| &o.path).collect::<Vec<_>>()
            );
        }
        assert_eq!(parse_marker(&marker_content(77)), Some(77));
        assert_eq!(marker_lane("l3-seq"), Some(3));
        assert_eq!(marker_lane("l3-f01"), None);
    }

    #[test]
    fn torn_lines_are_not_taken() {
        let ops = plan(5, |_| Ok(false)).expect("plan");
        let mut text = run_line(1) + &begin_line(5) + &ack_line(5, Tid(9), &ops);
        text.push_str("BEGIN 9");
        text.push('\n');
        text.push_str(&run_line(2));
        text.push_str(&begin_line(13));
        text.push_str("ACK 13 0x00");
        let log = AckLog::parse(&text).expect("parse");
        assert_eq!(log.runs.len(), 2);
        assert_eq!(log.runs[0].begins, [5]);
        assert_eq!(log.runs[0].torn, 1);
        assert_eq!(log.runs[1].torn, 1);
        assert_eq!(log.acks().count(), 1);
        assert_eq!(log.acks().next().expect("one").ops.len(), ops.len());
        assert_eq!(log.next_seqs(), vec![0, 17, 2, 3]);
    }
}
