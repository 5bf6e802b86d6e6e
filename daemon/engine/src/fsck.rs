//! Checks of a device's log: offline (`repld fsck`, [`check`]) and online
//! ([`Engine::check_log`], the Admin `Fsck` call).

use std::path::Path;

use crate::device::Device;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::log::{self, LogPos, ScanEvent, SegmentMap};
use crate::record::{ChunkRef, Record};
use crate::schema;

/// What a read of the log found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FsckReport {
    /// Segments holding log.
    pub segments: usize,
    /// Valid units read.
    pub units: u64,
    /// Valid records read, by kind: chunks, commits, PFS events (and the reclaim records that
    /// say which segment space reclaim freed), checkpoints.
    pub records: [u64; 4],
    /// Bytes of record payload read.
    pub payload_bytes: u64,
    /// Where the log ends (or where the check stopped).
    pub end_lsn: u64,
    /// A torn tail that a start-up would cut, if any.
    pub torn_tail: Option<String>,
    /// Chunks re-read and re-hashed by a deep check.
    pub chunks_verified: u64,
    /// Damage found by an online check, each with its location and what to do.
    pub problems: Vec<String>,
}

impl FsckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Records of every kind.
    pub fn total_records(&self) -> u64 {
        self.records.iter().sum()
    }
}

/// Reads every unit and record of the log and checks every checksum, without changing anything.
/// Damage in the middle of the log is returned as [`Error::Corruption`] with its location. The
/// device must not be in use (it is locked like an open engine's).
pub fn check(device: &Path) -> Result<FsckReport> {
    let dev = Device::open(device)?;
    let map = SegmentMap::load(&dev)?;
    scan_report(&dev, &map, u64::MAX)
}

fn scan_report(dev: &Device, map: &SegmentMap, until: u64) -> Result<FsckReport> {
    let mut report = FsckReport {
        segments: map.by_seq.len(),
        ..FsckReport::default()
    };
    let start = log::log_start(map).unwrap_or(LogPos {
        lsn: 0,
        prev_seq: 0,
    });
    let end = log::scan(dev, map, start, 0, until, |ev| {
        match ev {
            ScanEvent::Record(_, f) => {
                let i = match Record::decode(f.kind, f.payload) {
                    Ok(Record::Chunk { .. }) => 0,
                    Ok(Record::Commit { .. }) => 1,
                    Ok(Record::Pfs(_) | Record::Reclaim { .. }) => 2,
                    Ok(Record::Checkpoint { .. }) => 3,
                    Err(_) => return Ok(()),
                };
                report.records[i] += 1;
                report.payload_bytes += f.payload.len() as u64;
            }
            ScanEvent::UnitEnd(_) => report.units += 1,
        }
        Ok(())
    })?;
    report.end_lsn = end.tail.map_or(0, |t| t.lsn);
    report.torn_tail = end.torn.map(|(lsn, why)| format!("at LSN {lsn:#x}: {why}"));
    Ok(report)
}

impl Engine {
    /// Checks the log up to its durable end while the engine runs. With `deep`, also re-reads
    /// every stored chunk and re-hashes it with BLAKE3, finding silent corruption of data.
    /// Damage is reported in [`FsckReport::problems`], not as an error.
    pub fn check_log(&self, deep: bool) -> Result<FsckReport> {
        // Space reclaim frees no segment while the check reads the log.
        let _no_free = self
            .inner
            .shared
            .free_gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let map = self
            .inner
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let covered = match self.kv().get(schema::COVERED)? {
            Some(v) => schema::decode_pos(&v)?.lsn,
            None => 0,
        };
        let mut report = match scan_report(&self.inner.dev, &map, covered) {
            Ok(r) => r,
            Err(e @ Error::Corruption { .. }) => FsckReport {
                segments: map.by_seq.len(),
                problems: vec![e.to_string()],
                ..FsckReport::default()
            },
            Err(e) => return Err(e),
        };
        if deep {
            let mut from = vec![b'C'];
            loop {
                let page = self.kv().range(&from, b"D", 1024)?;
                let Some((last, _)) = page.last() else { break };
                from = last.clone();
                from.push(0);
                for (k, v) in page {
                    let hash: [u8; 32] = k[1..]
                        .try_into()
                        .map_err(|_| Error::Index("chunk key".into()))?;
                    let loc = schema::ChunkLoc::decode(&v)?;
                    match self.read_chunk_verified(&ChunkRef { hash, len: loc.len }) {
                        Ok(_) => report.chunks_verified += 1,
                        Err(e) => report.problems.push(e.to_string()),
                    }
                }
            }
        }
        Ok(report)
    }
}
