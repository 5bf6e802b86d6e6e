//! The child process of the engine crash tests (`tests/engine_crash.rs`), killed with SIGKILL
//! at random moments.
//!
//! - `write DIR [--max-bytes N] [--rate-mib N]`: opens (creating if needed) the engine on
//!   `DIR/dev.img` with its index in `DIR/index`, and commits the workload of
//!   [`repl_tests::workload`] from `LANES` concurrent threads (so commits share group flushes).
//!   Each thread appends `BEGIN <seq>` to `DIR/acks.log` before it commits and
//!   `ACK <seq> <tid> <path>=<blake3>...` after the commit returned, then fsyncs the log. Runs
//!   until killed, or until `--max-bytes` of content are committed (then exits 0).
//!   `--rate-mib` caps the content written per second (0: no cap).
//! - `replicate DIR`: replicates PFS `data` of that engine into a slave engine on
//!   `DIR/slave.img` (index `DIR/slave-index`), resuming from the slave's checkpoint, in small
//!   batches that split large changes across batches (partial TIDs). Appends each batch to
//!   `DIR/sent.log` and prints `SENDING <chunks> <bytes>` before applying it, and prints
//!   `APPLIED <synced> <partial>` after. Exits 0 once the slave has caught up.
//!
//! Prints `READY` once the engines are open. Any error ends the process with status 1 and a
//! message on stderr.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use repl_tests::workload::{
    self, AckLog, BATCH_CHANGES, BATCH_CHUNKS, LANES, PFS, PlannedOp, SentBatch,
};
use repld_engine::{
    ApplyBatch, At, Engine, EngineOptions, EntryPath, Error, FormatOptions, Partial, PfsName,
    PfsOptions, Role, Tid,
};

/// The image the `write` mode creates: sparse, so its size costs nothing until written.
const IMAGE_BYTES: u64 = 1 << 30;
const SEGMENT_BYTES: u64 = 4 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine-crash-writer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let usage =
        "usage: engine-crash-writer write DIR [--max-bytes N] [--rate-mib N] | replicate DIR";
    let (mode, dir) = match args {
        [mode, dir, ..] => (mode.as_str(), PathBuf::from(dir)),
        _ => bail!(usage),
    };
    match mode {
        "write" => {
            let mut max_bytes = u64::MAX;
            let mut rate_mib = 0u64;
            let mut rest = args[2..].iter();
            while let Some(flag) = rest.next() {
                let value = rest
                    .next()
                    .with_context(|| format!("{flag} needs a value"))?
                    .parse::<u64>()
                    .with_context(|| format!("{flag} takes a number"))?;
                match flag.as_str() {
                    "--max-bytes" => max_bytes = value,
                    "--rate-mib" => rate_mib = value,
                    _ => bail!(usage),
                }
            }
            write(&dir, max_bytes, rate_mib)
        }
        "replicate" if args.len() == 2 => replicate(&dir),
        _ => bail!(usage),
    }
}

fn options(device: PathBuf, index: PathBuf) -> EngineOptions {
    let mut o = EngineOptions::new(device, index);
    o.create = Some(FormatOptions {
        force: false,
        segment_size: Some(SEGMENT_BYTES),
        create_size: Some(IMAGE_BYTES),
    });
    o
}

fn pfs_name() -> PfsName {
    PfsName::new(PFS).expect("the workload's PFS name is valid")
}

fn ready() -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").context("write to stdout")?;
    out.flush().context("flush stdout")
}

// ----- write -----

/// The acknowledgement log, shared by the writer threads. Every line goes out in one `write`
/// on an append-mode file.
struct Acks {
    file: Mutex<File>,
}

impl Acks {
    fn open(path: &Path) -> Result<(Acks, AckLog)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("read {}", path.display()))?;
        let log = AckLog::parse(&text)?;
        // A line the last kill cut short gets its newline, so that it stays one torn line.
        if !text.is_empty() && !text.ends_with('\n') {
            file.write_all(b"\n").context("terminate a torn line")?;
        }
        file.write_all(workload::run_line(std::process::id()).as_bytes())
            .context("append to the acknowledgement log")?;
        file.sync_data().context("fsync the acknowledgement log")?;
        Ok((
            Acks {
                file: Mutex::new(file),
            },
            log,
        ))
    }

    fn append(&self, line: &str, sync: bool) -> Result<()> {
        let file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (&*file)
            .write_all(line.as_bytes())
            .context("append to the acknowledgement log")?;
        if sync {
            file.sync_data().context("fsync the acknowledgement log")?;
        }
        Ok(())
    }
}

/// Caps the content written per second across threads.
struct Pace {
    start: Instant,
    bytes: AtomicU64,
    rate: u64,
}

impl Pace {
    fn after(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = Duration::from_secs_f64(total as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn write(dir: &Path, max_bytes: u64, rate_mib: u64) -> Result<()> {
    let engine =
        Engine::open(options(dir.join("dev.img"), dir.join("index"))).context("open the engine")?;
    let name = pfs_name();
    match engine.pfs(&name) {
        Ok(_) => {}
        Err(Error::NoSuchPfs(_)) => {
            engine
                .create_pfs(&name, PfsOptions::default())
                .context("create the PFS")?;
        }
        Err(e) => return Err(e).context("look up the PFS"),
    }
    let (acks, log) = Acks::open(&dir.join("acks.log"))?;
    let acks = Arc::new(acks);
    let pace = Arc::new(Pace {
        start: Instant::now(),
        bytes: AtomicU64::new(0),
        rate: rate_mib << 20,
    });
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    ready()?;
    let threads: Vec<_> = log
        .next_seqs()
        .into_iter()
        .map(|first| {
            let (engine, acks, pace, written, stop) = (
                engine.clone(),
                Arc::clone(&acks),
                Arc::clone(&pace),
                Arc::clone(&written),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let r = lane_loop(&engine, &acks, &pace, &written, &stop, first, max_bytes);
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                r
            })
        })
        .collect();
    let mut first_error = None;
    for t in threads {
        let r = t
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer thread panicked")));
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    engine.close();
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Commits the transactions of one lane, one after another: `first`, `first + LANES`, ...
fn lane_loop(
    engine: &Engine,
    acks: &Acks,
    pace: &Pace,
    written: &AtomicU64,
    stop: &AtomicBool,
    first: u64,
    max_bytes: u64,
) -> Result<()> {
    let name = pfs_name();
    let mut seq = first;
    while !stop.load(Ordering::Relaxed) && written.load(Ordering::Relaxed) < max_bytes {
        // Only this thread changes this lane's paths, so the head is exactly what the
        // transaction will see.
        let ops = workload::plan(seq, |p| {
            match engine.stat(&name, &EntryPath::new(p)?, &At::Head) {
                Ok(_) => Ok(true),
                Err(Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e).with_context(|| format!("stat `{p}`")),
            }
        })?;
        let tid = commit(engine, &name, seq, &ops, acks)
            .with_context(|| format!("transaction seq {seq}"))?;
        acks.append(&workload::ack_line(seq, tid, &ops), true)?;
        let bytes = workload::plan_bytes(&ops);
        written.fetch_add(bytes, Ordering::Relaxed);
        pace.after(bytes);
        seq += LANES;
    }
    Ok(())
}

fn commit(
    engine: &Engine,
    name: &PfsName,
    seq: u64,
    ops: &[PlannedOp],
    acks: &Acks,
) -> Result<Tid> {
    let mut tx = engine.begin(name).context("begin")?;
    for op in ops {
        let path = EntryPath::new(op.path.as_str())?;
        match &op.data {
            Some(data) => tx.put_bytes(&path, workload::attrs(seq), data)?,
            None => tx.delete(&path, false)?,
        }
    }
    acks.append(&workload::begin_line(seq), false)?;
    tx.commit()
        .context("commit")?
        .context("the commit changed nothing, but every put has a new mtime")
}

// ----- replicate -----

fn replicate(dir: &Path) -> Result<()> {
    let name = pfs_name();
    let master = Engine::open(EngineOptions::new(dir.join("dev.img"), dir.join("index")))
        .context("open the master engine")?;
    let slave = Engine::open(options(dir.join("slave.img"), dir.join("slave-index")))
        .context("open the slave engine")?;
    let minfo = master.pfs(&name).context("the master PFS")?;
    let sinfo = match slave.pfs(&name) {
        Ok(s) => s,
        Err(Error::NoSuchPfs(_)) => slave
            .create_pfs(
                &name,
                PfsOptions {
                    role: Role::Slave,
                    nohistory: false,
                    shared_uuid: Some(minfo.shared_uuid),
                },
            )
            .context("create the slave PFS")?,
        Err(e) => return Err(e).context("look up the slave PFS"),
    };
    ensure!(
        sinfo.role == Role::Slave && sinfo.shared_uuid == minfo.shared_uuid,
        "the slave PFS is not a slave of this master"
    );
    let mut sent = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(dir.join("sent.log"))
        .context("open sent.log")?;
    let mut text = Vec::new();
    sent.read_to_end(&mut text).context("read sent.log")?;
    if text.last().is_some_and(|&b| b != b'\n') {
        // A line the last kill cut short gets its newline, so that it stays one torn line.
        sent.write_all(b"\n").context("append to sent.log")?;
    }
    sent.write_all(workload::sent_run_line(std::process::id()).as_bytes())
        .context("append to sent.log")?;
    let (mut head, mut partial) = (sinfo.head, sinfo.partial);
    ready()?;
    loop {
        let changes = master
            .changes_since(&name, head, BATCH_CHANGES + 1)
            .context("scan the master's changes")?;
        let Some(next) = changes.first() else { break };
        if let Some(p) = partial {
            ensure!(
                p.tid == next.tid,
                "the slave's checkpoint is inside {} but the master's next change is {}",
                p.tid,
                next.tid
            );
        }
        let mut batch = ApplyBatch {
            master_head: minfo.head,
            ..ApplyBatch::default()
        };
        let mut log = SentBatch::default();
        for c in &changes {
            let refs: Vec<_> = c.chunk_refs().collect();
            let done = match partial {
                Some(p) if p.tid == c.tid => usize::try_from(p.chunks_done)?,
                _ => 0,
            };
            let room = BATCH_CHUNKS - batch.chunks.len();
            let take = (refs.len() - done).min(room);
            for r in &refs[done..done + take] {
                batch
                    .chunks
                    .push(master.read_chunk(&r.hash).context("read a chunk")?.into());
            }
            if take > 0 {
                log.chunks.push((c.tid, done as u64, (done + take) as u64));
            }
            if done + take < refs.len() {
                // The rest of this change's chunks go in later batches.
                batch.partial = Some(Partial {
                    tid: c.tid,
                    chunks_done: (done + take) as u64,
                });
                break;
            }
            batch.changes.push(c.clone());
            log.changes.push(c.tid);
            partial = None;
            if batch.changes.len() == BATCH_CHANGES || batch.chunks.len() == BATCH_CHUNKS {
                break;
            }
        }
        let expect_synced = batch.changes.last().map_or(head, |c| c.tid);
        let expect_partial = batch.partial;
        sent.write_all(log.line().as_bytes())
            .context("append to sent.log")?;
        let bytes: usize = batch.chunks.iter().map(|c| c.len()).sum();
        println!("SENDING {} {bytes}", log.chunk_count());
        let cp = slave.apply(&name, batch).context("apply a batch")?;
        ensure!(
            cp.synced == expect_synced && cp.partial == expect_partial,
            "the slave's checkpoint after the batch is {cp:?}, expected synced {expect_synced} partial {expect_partial:?}"
        );
        (head, partial) = (cp.synced, cp.partial);
        println!(
            "APPLIED {head} {}",
            partial.map_or("-".to_owned(), |p| format!("{}:{}", p.tid, p.chunks_done))
        );
    }
    let shead = slave.pfs(&name).context("the slave PFS")?.head;
    ensure!(
        shead == minfo.head,
        "caught up, yet the slave's head {shead} is not the master's {}",
        minfo.head
    );
    println!("DONE {shead}");
    slave.close();
    master.close();
    Ok(())
}
