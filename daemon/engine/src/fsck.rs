//! Offline checks of a device: `repld fsck`.

use std::path::Path;

use crate::device::Device;
use crate::error::Result;
use crate::log::{self, LogPos, ScanEvent, SegmentMap};
use crate::record::Record;

/// What a full read of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckReport {
    /// Segments holding log.
    pub segments: usize,
    /// Valid units read.
    pub units: u64,
    /// Valid records read, by kind: chunks, commits, PFS events, checkpoints.
    pub records: [u64; 4],
    /// Bytes of record payload read.
    pub payload_bytes: u64,
    /// Where the log ends.
    pub end_lsn: u64,
    /// A torn tail that a start-up would cut, if any.
    pub torn_tail: Option<String>,
}

/// Reads every unit and record of the log and checks every checksum, without changing anything.
/// Damage in the middle of the log is returned as [`crate::Error::Corruption`] with its location.
pub fn check(device: &Path) -> Result<FsckReport> {
    let dev = Device::open(device)?;
    let map = SegmentMap::load(&dev)?;
    let mut report = FsckReport {
        segments: map.by_seq.len(),
        units: 0,
        records: [0; 4],
        payload_bytes: 0,
        end_lsn: 0,
        torn_tail: None,
    };
    let start = log::log_start(&map).unwrap_or(LogPos {
        lsn: 0,
        prev_seq: 0,
    });
    let end = log::scan(&dev, &map, start, 0, |ev| {
        match ev {
            ScanEvent::Record(_, f) => {
                let i = match Record::decode(f.kind, f.payload) {
                    Ok(Record::Chunk { .. }) => 0,
                    Ok(Record::Commit { .. }) => 1,
                    Ok(Record::Pfs(_)) => 2,
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
