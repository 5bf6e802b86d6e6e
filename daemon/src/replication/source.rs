//! The master side's [`Source`]: batches from the engine's change scan.

use bytes::BytesMut;
use repl_agent::{Payload, Position, Source};
use repld_engine::{Engine, PfsName, Tid};
use tokio::sync::watch;

use super::wire;

/// Changes read per scan step.
const SCAN: usize = 64;

/// A master PFS as a sender reads it.
pub struct EngineSource {
    /// The node's engine.
    pub engine: Engine,
    /// The master PFS.
    pub pfs: PfsName,
    /// Its head, from the engine's commit notifications.
    pub head: watch::Receiver<Tid>,
}

impl Source for EngineSource {
    fn head(&self) -> watch::Receiver<Tid> {
        self.head.clone()
    }

    async fn next_batch(&self, from: Position, max_bytes: u64) -> Result<Option<Payload>, String> {
        let engine = self.engine.clone();
        let pfs = self.pfs.clone();
        tokio::task::spawn_blocking(move || batch(&engine, &pfs, from, max_bytes))
            .await
            .map_err(|e| format!("the scan task failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    async fn next_tid(&self, after: Tid) -> Result<Option<Tid>, String> {
        let engine = self.engine.clone();
        let pfs = self.pfs.clone();
        tokio::task::spawn_blocking(move || engine.changes_since(&pfs, after, 1))
            .await
            .map_err(|e| format!("the scan task failed: {e}"))?
            .map(|c| c.first().map(|c| c.tid))
            .map_err(|e| e.to_string())
    }
}

/// Reads the batch after `from`: whole changes, each after its chunks, until `max_bytes`; a
/// change whose chunks do not fit is split, the batch ending inside it.
fn batch(
    engine: &Engine,
    pfs: &PfsName,
    from: Position,
    max_bytes: u64,
) -> repld_engine::Result<Option<Payload>> {
    let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    let mut buf = BytesMut::new();
    let (mut records, mut first) = (0u32, None);
    let mut to = from;
    let full = |buf: &BytesMut, records: u32, more: usize| {
        records > 0 && buf.len() + wire::FRAME + more > max
    };
    for change in engine.changes_since(pfs, from.synced, SCAN)? {
        let refs: Vec<_> = change.chunk_refs().copied().collect();
        let mut done = match from.partial {
            Some((tid, n)) if tid == change.tid => usize::try_from(n).unwrap_or(usize::MAX),
            _ => 0,
        };
        first.get_or_insert(change.tid);
        while done < refs.len() {
            let r = refs[done];
            if full(&buf, records, r.len as usize) {
                return Ok(Some(payload(to, first, buf, records)));
            }
            wire::put_chunk(&mut buf, &engine.read_chunk(&r.hash)?);
            records += 1;
            done += 1;
            to.partial = Some((change.tid, done as u64));
        }
        let encoded = change.encode();
        if full(&buf, records, encoded.len()) {
            // All its chunks are in; the change itself opens the next batch.
            to.partial = Some((change.tid, refs.len() as u64));
            return Ok(Some(payload(to, first, buf, records)));
        }
        wire::put_change(&mut buf, &encoded);
        records += 1;
        to = Position::at(change.tid);
    }
    Ok((records > 0).then(|| payload(to, first, buf, records)))
}

fn payload(to: Position, first: Option<Tid>, buf: BytesMut, records: u32) -> Payload {
    Payload {
        to,
        first_tid: first.unwrap_or(to.synced),
        bytes: buf.freeze(),
        records,
    }
}
