//! Offline seeding: a PFS's replication record stream written to a dump file, and a dump file
//! applied to a slave PFS. The file format is [`repl_proto::dump`]; its batches are the ones a
//! sender makes ([`source::batch`]), and a restore applies them through the stream's own checks
//! ([`repl_agent::receiver::check`]) and apply path ([`EngineSink::session`]).
//!
//! A restore writes nothing to the PFS until the whole file has checked out: every piece is
//! checked as it arrives (frame checksum, order, the batch checks, the payload's record frames)
//! and kept in a spool file in the data directory, and only after the trailer is checked are the
//! spooled batches applied, each as one durable step with its checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use repl_agent::{Position, Prepare as _, Session as _};
use repl_proto::dump::{Checker, DumpError, Frame, PieceReader, parse_piece};
use repl_proto::pb;
use repld_engine::{Engine, PfsName, PfsOptions, Role, Tid};
use tokio_stream::StreamExt;
use tonic::Status;

use super::sink::{EngineSink, checkpoint};
use super::{MAX_BATCH_BYTES, source, wire};
use crate::service::{BoxStream, blocking, blocking_stream, send_blocking};

/// The prefix of spool files in the data directory; leftovers of a crash are removed at start.
const SPOOL_PREFIX: &str = "restore-";
const SPOOL_SUFFIX: &str = ".spool";

fn invalid(e: DumpError) -> Status {
    match e {
        DumpError::Io(e) => Status::internal(format!("the restore spool: {e}")),
        e => Status::invalid_argument(format!("{e}; nothing was written")),
    }
}

/// Streams the dump of `pfs` after `since`: the header, a batch frame per sender batch up to
/// the head at the start, and the trailer.
pub fn dump(engine: Engine, pfs: PfsName, since: Tid) -> BoxStream<pb::DumpResponse> {
    blocking_stream(move |tx| {
        let info = engine.pfs(&pfs)?;
        // The last TID a change carries: a master with no commit has only its creation TID.
        let end = if info.role == Role::Master && info.head == info.created {
            Tid::ZERO
        } else {
            info.head
        };
        if since > end {
            return Err(repld_engine::Error::Invalid(format!(
                "--since {since} is after the last TID of PFS {pfs} ({end}): nothing to dump"
            )));
        }
        let (from, to) = (Position::at(since), Position::at(end));
        let piece = |f: Frame| pb::DumpResponse {
            data: f.piece().into(),
        };
        send_blocking(
            tx,
            piece(Frame::Header(pb::DumpHeader {
                format_version: repl_proto::dump::FORMAT_VERSION,
                shared_uuid: info.shared_uuid.to_vec().into(),
                pfs: pfs.to_string(),
                from: Some(from.into()),
                to: Some(to.into()),
                made_ns: Tid::now().get(),
            })),
        )?;
        let (mut at, mut seq, mut records) = (from, 0u64, 0u64);
        while let Some(p) = source::batch(&engine, &pfs, at, MAX_BATCH_BYTES, end)? {
            seq += 1;
            records += u64::from(p.records);
            send_blocking(
                tx,
                piece(Frame::Batch(pb::Batch {
                    seq,
                    from: Some(at.into()),
                    to: Some(p.to.into()),
                    master_head: end.get(),
                    crc32c: repl_agent::payload_crc(&p.bytes),
                    payload: p.bytes,
                    records: p.records,
                })),
            )?;
            at = p.to;
        }
        tracing::info!(pfs = %pfs, %since, %end, batches = seq, "dumped a PFS");
        send_blocking(
            tx,
            piece(Frame::Trailer(pb::DumpTrailer {
                batches: seq,
                records,
                to: Some(to.into()),
            })),
        )
    })
}

/// A spool file, removed when dropped.
struct Spool {
    path: PathBuf,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a restore spool file");
        }
    }
}

/// Removes spool files a crash left in `data_dir`.
pub fn remove_stale_spools(data_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(data_dir) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SPOOL_PREFIX) && name.ends_with(SPOOL_SUFFIX) {
            tracing::info!(path = %e.path().display(), "removing a restore spool left by a crash");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What a restore did.
pub struct Restored {
    /// Whether the slave PFS was created.
    pub created: bool,
    /// Batches applied.
    pub applied: u64,
    /// Batches the slave already had.
    pub skipped: u64,
}

/// Applies the dump file that arrives on `inbound` to a slave PFS; see the module docs.
pub async fn restore(
    sink: &EngineSink,
    data_dir: &Path,
    limits: repl_agent::Limits,
    mut inbound: tonic::Streaming<pb::RestoreRequest>,
) -> Result<(PfsName, Restored), Status> {
    let first = inbound
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("an empty restore: send the dump file"))??;
    let name = crate::service::admin::pfs_name("pfs", first.pfs)?;
    let mut checker = Checker::new();
    let frame = parse_piece(true, &first.data).map_err(invalid)?;
    checker.next(&frame).map_err(invalid)?;
    let header = checker
        .header()
        .cloned()
        .ok_or_else(|| Status::internal("a checked dump has a header"))?;
    let shared_uuid = <[u8; 16]>::try_from(&header.shared_uuid[..])
        .map_err(|_| Status::invalid_argument("the dump's shared UUID is not 16 bytes"))?;
    let from = Position::try_from(header.from.as_ref())
        .map_err(|e| Status::invalid_argument(format!("the dump's start: {e}")))?;
    let to = Position::try_from(header.to.as_ref())
        .map_err(|e| Status::invalid_argument(format!("the dump's end: {e}")))?;

    // Refuse an unusable target before reading the rest.
    let existing = {
        let (engine, name) = (sink.engine.clone(), name.clone());
        blocking(move || match engine.pfs(&name) {
            Ok(p) => Ok(Some(p)),
            Err(repld_engine::Error::NoSuchPfs(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .await?
    };
    match &existing {
        Some(_) => drop(sink.session(name.clone(), shared_uuid).await?),
        None if from != Position::at(Tid::ZERO) => {
            return Err(Status::failed_precondition(format!(
                "the dump starts at {from} (made with --since): restore it onto the slave PFS that is at {from}; \
                 there is no PFS {name} here, and a new one can only take a dump from the beginning"
            )));
        }
        None => {}
    }

    // Check every piece and spool it; nothing is written to the PFS yet.
    let spool = Spool {
        path: data_dir.join(format!(
            "{SPOOL_PREFIX}{}-{}{SPOOL_SUFFIX}",
            std::process::id(),
            Tid::now().get()
        )),
    };
    let mut out = BufWriter::new(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&spool.path)
            .map_err(|e| Status::internal(format!("create {}: {e}", spool.path.display())))?,
    );
    let spool_err = |e: std::io::Error| Status::internal(format!("the restore spool: {e}"));
    out.write_all(&first.data).map_err(spool_err)?;
    // A dump larger than the device's free space cannot be applied: refuse it before it fills
    // the data directory with a spool. (Chunks the device already holds are not stored twice,
    // so this is conservative for an incremental dump of content the slave mostly has.)
    let free = sink.engine.space().free_bytes();
    let mut spooled = first.data.len() as u64;
    let mut boundaries = vec![from];
    while let Some(msg) = inbound.next().await {
        let msg = msg?;
        spooled += msg.data.len() as u64;
        if spooled > free {
            return Err(Status::resource_exhausted(format!(
                "the dump holds more than the {:.1} MiB free on this node's device ({:.1} MiB of it read so far): \
                 free space on the device (prune, destroy a PFS) or restore onto a larger node; nothing was written",
                free as f64 / f64::from(1 << 20),
                spooled as f64 / f64::from(1 << 20),
            )));
        }
        let frame = parse_piece(false, &msg.data).map_err(invalid)?;
        checker.next(&frame).map_err(invalid)?;
        if let Frame::Batch(b) = frame {
            let seq = b.seq;
            let checked = repl_agent::receiver::check(b, seq, limits).map_err(|(_, s)| {
                Status::invalid_argument(format!("{}; nothing was written", s.message()))
            })?;
            wire::decode(&checked.payload).map_err(|e| {
                Status::invalid_argument(format!("batch {seq}: {e}; nothing was written"))
            })?;
            boundaries.push(checked.to);
        }
        out.write_all(&msg.data).map_err(spool_err)?;
    }
    checker.finish().map_err(invalid)?;
    out.flush().map_err(spool_err)?;
    drop(out);

    // The slave must be at the dump's start or at a batch boundary inside it.
    let created = existing.is_none();
    let at = match &existing {
        Some(p) => checkpoint(p),
        None => Position::at(Tid::ZERO),
    };
    if !boundaries.contains(&at) {
        return Err(Status::failed_precondition(format!(
            "PFS {name} is at {at}, and the dump covers {from} to {to}: it does not continue the slave's history; \
             make one with `replctl dump NODE:PFS --since {}`; nothing was written",
            at.synced
        )));
    }
    if created {
        let (engine, name) = (sink.engine.clone(), name.clone());
        blocking(move || {
            engine.create_pfs(
                &name,
                PfsOptions {
                    role: Role::Slave,
                    nohistory: false,
                    shared_uuid: Some(shared_uuid),
                },
            )
        })
        .await?;
    }
    let mut session = sink.session(name.clone(), shared_uuid).await?;
    // The spool is read on a blocking thread, a batch or two ahead of the apply.
    let file = File::open(&spool.path).map_err(spool_err)?;
    let (tx, mut batches) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut reader = PieceReader::new(BufReader::new(file));
        loop {
            let next = match reader.next_piece() {
                Ok(Some((_, Frame::Batch(b)))) => Ok(b),
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(e) => Err(invalid(e)),
            };
            if tx.blocking_send(next).is_err() {
                return;
            }
        }
    });
    let (mut applied, mut skipped) = (0, 0);
    while let Some(b) = batches.recv().await {
        let b = b?;
        let seq = b.seq;
        let batch = repl_agent::receiver::check(b, seq, limits).map_err(|(_, s)| s)?;
        if batch.to <= session.checkpoint() {
            skipped += 1;
            continue;
        }
        let preparer = session.preparer();
        let (batch, ready) = tokio::task::spawn_blocking(move || {
            let ready = preparer.prepare(&batch);
            (batch, ready)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        session.apply(batch, ready?).await?;
        applied += 1;
    }
    tracing::info!(pfs = %name, created, applied, skipped, synced = %session.checkpoint(), "restored a dump");
    Ok((
        name,
        Restored {
            created,
            applied,
            skipped,
        },
    ))
}
