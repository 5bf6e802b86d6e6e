//! Crash tests of the storage engine (issue 2), with real processes killed by SIGKILL.
//!
//! - `crash_loop_keeps_every_acknowledged_transaction`: a child commits continuously from
//!   several threads and is killed at random moments, over and over, on the same device. After
//!   every kill the engine reopens, every acknowledged transaction is there byte for byte at its
//!   TID, and every visible commit is whole: exactly what the workload's transaction made, no
//!   more and no less.
//! - `a_first_start_killed_while_formatting_starts_again`: a kill within the first
//!   milliseconds, while the new image is being formatted, does not stop the next start.
//! - `slave_apply_resumes_after_kills`: a child replicates a master into a slave and is killed
//!   mid-apply again and again; each restart resumes from the slave's durable checkpoint (inside
//!   large TIDs too). At the end the slave equals the master at every master TID, and no kill
//!   cost more than one batch sent twice.
//!
//! The child is `src/bin/engine-crash-writer.rs`; the workload is `repl_tests::workload`.
//! `REPLD_CRASH_ROUNDS` (default 24), `REPLD_CRASH_SLAVE_KILLS` (12) and
//! `REPLD_CRASH_FORMAT_KILLS` (8) set the number of kills.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rand::Rng;
use repl_tests::child::{Child, Killed};
use repl_tests::workload::{
    self, AckLog, BATCH_CHANGES, BATCH_CHUNKS, DELETED, PFS, SentLog, blake3_hex,
};
use repld_engine::{
    At, Change, Engine, EngineOptions, Entry, EntryKind, EntryPath, Error, Op, PfsName, Tid,
};

const BIN: &str = env!("CARGO_BIN_EXE_engine-crash-writer");
/// How long a child may take to open its engines and say so.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn pfs_name() -> PfsName {
    PfsName::new(PFS).expect("the workload's PFS name is valid")
}

fn helper(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg(args[0]).arg(dir).args(&args[1..]);
    cmd
}

fn open_master(dir: &Path) -> Result<Engine> {
    Engine::open(EngineOptions::new(dir.join("dev.img"), dir.join("index")))
        .context("the master engine must reopen after a kill")
}

fn open_slave(dir: &Path) -> Result<Engine> {
    Engine::open(EngineOptions::new(
        dir.join("slave.img"),
        dir.join("slave-index"),
    ))
    .context("the slave engine must reopen after a kill")
}

/// Every commit of the PFS, in TID order.
fn all_changes(engine: &Engine, name: &PfsName) -> Result<Vec<Change>> {
    let mut out: Vec<Change> = Vec::new();
    loop {
        let after = out.last().map_or(Tid::ZERO, |c| c.tid);
        let page = engine.changes_since(name, after, 512)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

fn walk(engine: &Engine, name: &PfsName, at: Tid) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    engine.walk(name, &At::Tid(at), |e| {
        entries.push(e.clone());
        Ok(())
    })?;
    Ok(entries)
}

// ----- the crash loop -----

/// What the check after one kill found.
#[derive(Debug, Default)]
struct Found {
    commits: usize,
    acked: usize,
    unacked_visible: usize,
    /// Commits the last run had begun and not acknowledged when it was killed.
    in_flight: usize,
    bytes_checked: u64,
}

/// Opens the engine the killed writer left and checks it against the acknowledgement log and
/// the workload.
fn check_after_kill(dir: &Path) -> Result<Found> {
    let log = AckLog::read(&dir.join("acks.log"))?;
    if !dir.join("dev.img").exists() {
        ensure!(
            log.acks().next().is_none(),
            "transactions were acknowledged but there is no device"
        );
        return Ok(Found::default());
    }
    let engine = open_master(dir)?;
    let found = check_engine(&engine, &log);
    close(engine)?;
    found
}

/// Closes an engine the test opened, after checking that its writer still works.
fn close(engine: Engine) -> Result<()> {
    engine.sync().context("sync the reopened engine")?;
    ensure!(
        engine.failure().is_none(),
        "the engine failed: {:?}",
        engine.failure()
    );
    engine.close();
    Ok(())
}

fn check_engine(engine: &Engine, log: &AckLog) -> Result<Found> {
    let name = pfs_name();
    let info = match engine.pfs(&name) {
        Ok(info) => info,
        Err(Error::NoSuchPfs(_)) => {
            ensure!(
                log.acks().next().is_none(),
                "transactions were acknowledged but the PFS is gone"
            );
            return Ok(Found::default());
        }
        Err(e) => return Err(e).context("look up the PFS"),
    };
    // Lines go out one at a time under a lock: a kill can cut at most one short.
    ensure!(
        log.runs.iter().all(|r| r.torn <= 1),
        "the acknowledgement log has runs with several torn lines"
    );
    let changes = all_changes(engine, &name)?;
    let begun = log.begun();
    let mut found = Found {
        commits: changes.len(),
        ..Found::default()
    };
    // The workload's view of the PFS, commit by commit: path -> (create TID, content digest).
    let mut model: BTreeMap<String, (Tid, String)> = BTreeMap::new();
    // Which seq made which commit, and the digests each commit left.
    let mut tid_of: BTreeMap<u64, Tid> = BTreeMap::new();
    let mut digests: BTreeMap<Tid, Vec<(String, String)>> = BTreeMap::new();
    let mut lane_last: BTreeMap<u64, u64> = BTreeMap::new();
    let mut prev = Tid::ZERO;
    for c in &changes {
        ensure!(c.tid > prev, "commit {} follows {prev}", c.tid);
        prev = c.tid;
        // Which transaction of the workload made this commit: its marker file says.
        let markers: Vec<&Op> = c
            .ops
            .iter()
            .filter(|op| workload::marker_lane(op.path().as_str()).is_some())
            .collect();
        ensure!(
            markers.len() == 1,
            "commit {} changes {} marker files: {:?}",
            c.tid,
            markers.len(),
            c.ops
        );
        let marker = markers[0].path();
        let seq = engine
            .read_file(&name, marker, &At::Tid(c.tid))
            .ok()
            .and_then(|d| workload::parse_marker(&d))
            .with_context(|| format!("commit {}: unreadable marker `{marker}`", c.tid))?;
        ensure!(
            workload::marker_lane(marker.as_str()) == Some(workload::lane(seq)),
            "commit {} wrote seq {seq} into `{marker}`",
            c.tid
        );
        ensure!(
            begun.contains(&seq),
            "commit {} was made by seq {seq}, which no writer began",
            c.tid
        );
        ensure!(
            tid_of.insert(seq, c.tid).is_none(),
            "seq {seq} is committed twice"
        );
        if let Some(before) = lane_last.insert(workload::lane(seq), seq) {
            ensure!(
                before < seq,
                "seq {seq} committed after seq {before} of the same thread"
            );
        }
        // What that transaction must have changed, given the state before it.
        let plan = workload::plan(seq, |p| Ok(model.contains_key(p)))?;
        let mut ops: Vec<&Op> = c.ops.iter().collect();
        ops.sort_by(|a, b| a.path().as_str().cmp(b.path().as_str()));
        let got: Vec<(&str, bool)> = ops
            .iter()
            .map(|op| (op.path().as_str(), matches!(op, Op::Put { .. })))
            .collect();
        let want: Vec<(&str, bool)> = plan
            .iter()
            .map(|op| (op.path.as_str(), op.data.is_some()))
            .collect();
        ensure!(
            got == want,
            "commit {} (seq {seq}) is not whole: it has (path, is put) {got:?}, the transaction \
             had {want:?}",
            c.tid
        );
        for (op, planned) in ops.iter().zip(&plan) {
            let path = op.path();
            match (op, &planned.data) {
                (Op::Put { meta, .. }, Some(data)) => {
                    let attrs = workload::attrs(seq);
                    ensure!(
                        meta.kind == EntryKind::File
                            && meta.size == data.len() as u64
                            && meta.mode == attrs.mode
                            && meta.mtime_ns == attrs.mtime_ns,
                        "commit {} (seq {seq}): `{path}` has metadata {meta:?}",
                        c.tid
                    );
                    let e = engine.stat(&name, path, &At::Tid(c.tid))?;
                    ensure!(
                        e.created == c.tid && e.meta == *meta,
                        "commit {}: `{path}` reads back as version {} {:?}",
                        c.tid,
                        e.created,
                        e.meta
                    );
                    let bytes = engine
                        .read_file(&name, path, &At::Tid(c.tid))
                        .with_context(|| format!("commit {}: read `{path}`", c.tid))?;
                    ensure!(
                        bytes == *data,
                        "commit {} (seq {seq}): `{path}` is {} bytes with BLAKE3 {}, the \
                         transaction wrote {} bytes with BLAKE3 {}",
                        c.tid,
                        bytes.len(),
                        blake3_hex(&bytes),
                        data.len(),
                        planned.digest()
                    );
                    found.bytes_checked += bytes.len() as u64;
                    model.insert(path.to_string(), (c.tid, planned.digest()));
                }
                (Op::Delete { .. }, None) => {
                    ensure!(
                        matches!(
                            engine.stat(&name, path, &At::Tid(c.tid)),
                            Err(Error::NotFound { .. })
                        ),
                        "commit {} deleted `{path}`, but it reads back",
                        c.tid
                    );
                    model.remove(path.as_str());
                }
                _ => unreachable!("kinds were compared above"),
            }
        }
        digests.insert(
            c.tid,
            plan.iter().map(|o| (o.path.clone(), o.digest())).collect(),
        );
    }
    // The head shows the last state of every path.
    if let Some(last) = changes.last() {
        ensure!(
            info.head == last.tid,
            "the head {} is not the last commit {}",
            info.head,
            last.tid
        );
        let head: BTreeMap<String, Tid> = walk(engine, &name, info.head)?
            .into_iter()
            .map(|e| (e.path.to_string(), e.created))
            .collect();
        let want: BTreeMap<String, Tid> = model.iter().map(|(p, (t, _))| (p.clone(), *t)).collect();
        ensure!(
            head == want,
            "the head state {head:?} is not the sum of the commits {want:?}"
        );
    }
    // (1) No acknowledged transaction is lost or altered: each is the commit at its TID, and
    // that commit was just read back byte for byte against the workload, whose digests the
    // acknowledgement recorded.
    let mut acked = BTreeSet::new();
    for ack in log.acks() {
        let tid = tid_of.get(&ack.seq).with_context(|| {
            format!(
                "acknowledged seq {} (TID {}) is lost: no commit has it",
                ack.seq, ack.tid
            )
        })?;
        ensure!(
            *tid == ack.tid,
            "acknowledged seq {} at TID {} is found at TID {tid}",
            ack.seq,
            ack.tid
        );
        ensure!(
            digests[tid] == ack.ops,
            "acknowledged seq {} at {tid} was {:?} and is now {:?}",
            ack.seq,
            ack.ops,
            digests[tid]
        );
        for (path, digest) in &ack.ops {
            if digest == DELETED {
                continue;
            }
            // The acknowledged content, read at its TID directly (not through the model).
            let bytes = engine.read_file(&name, &EntryPath::new(path.as_str())?, &At::Tid(*tid))?;
            ensure!(
                blake3_hex(&bytes) == *digest,
                "acknowledged `{path}` of seq {} at {tid} has changed",
                ack.seq
            );
        }
        acked.insert(ack.seq);
    }
    found.acked = acked.len();
    // (2) A commit that is visible but was not acknowledged can only be one that a thread had
    // called commit for when it was killed: the last seq it began.
    let in_flight: BTreeSet<u64> = log
        .runs
        .iter()
        .flat_map(|r| r.last_begun().into_values())
        .collect();
    for (seq, tid) in &tid_of {
        if !acked.contains(seq) {
            ensure!(
                in_flight.contains(seq),
                "commit {tid} (seq {seq}) is visible, was never acknowledged, and its thread \
                 went on to later transactions"
            );
            found.unacked_visible += 1;
        }
    }
    if let Some(run) = log.runs.last() {
        found.in_flight = run
            .last_begun()
            .values()
            .filter(|s| !acked.contains(s))
            .count();
    }
    Ok(found)
}

/// Waits until a `BEGIN` line is appended to the acknowledgement log: a writer thread is about
/// to call commit.
fn wait_for_begin(acks: &Path, timeout: Duration) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(acks).with_context(|| format!("open {}", acks.display()))?;
    let mut at = f.seek(SeekFrom::End(0))?;
    let deadline = Instant::now() + timeout;
    let mut new = String::new();
    while Instant::now() < deadline {
        new.clear();
        f.seek(SeekFrom::Start(at))?;
        at += f.read_to_string(&mut new)? as u64;
        if new.contains("BEGIN ") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    anyhow::bail!("no transaction began within {timeout:?}")
}

#[test]
fn crash_loop_keeps_every_acknowledged_transaction() -> Result<()> {
    let rounds = env_usize("REPLD_CRASH_ROUNDS", 24);
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut acked_before = 0;
    let mut unacked_visible = 0;
    let mut hit_commits = 0;
    for round in 0..rounds {
        let mut child = Child::spawn(
            helper(&["write", "--rate-mib", "10"], dir),
            &dir.join(format!("write-{round}.stderr")),
        )?;
        // Every sixth kill (the first too, which formats the device) lands during start-up and
        // recovery. The others land 100-900 ms after start-up; half of them are then put off
        // until a thread has just called commit, because the writer is paced and its threads
        // also spend time sleeping.
        let early = round % 6 == 0;
        let in_commit = !early && round % 2 == 1;
        let delay = if early {
            rng.random_range(0..=100)
        } else {
            child.expect_line("READY", START_TIMEOUT)?;
            rng.random_range(100..=900)
        };
        std::thread::sleep(Duration::from_millis(delay));
        if in_commit {
            wait_for_begin(&dir.join("acks.log"), START_TIMEOUT)?;
            std::thread::sleep(Duration::from_micros(rng.random_range(0..=2_000)));
        }
        let killed = child.kill()?;
        ensure!(
            killed == Killed::WhileRunning,
            "the writer stopped by itself ({killed:?}); its stderr:\n{}",
            child.stderr()
        );
        let t = Instant::now();
        let found = check_after_kill(dir).with_context(|| format!("after kill {}", round + 1))?;
        eprintln!(
            "kill {:>2} after {delay:>3} ms{}: {} in flight; {} commits, {} acknowledged, {} \
             visible unacknowledged, {} MiB checked in {} ms",
            round + 1,
            if early {
                " (start-up)"
            } else if in_commit {
                " + a BEGIN"
            } else {
                ""
            },
            found.in_flight,
            found.commits,
            found.acked,
            found.unacked_visible,
            found.bytes_checked >> 20,
            t.elapsed().as_millis()
        );
        ensure!(
            found.acked >= acked_before,
            "acknowledged transactions went missing"
        );
        acked_before = found.acked;
        // Every check covers the whole history, so the last one counts every run's.
        unacked_visible = found.unacked_visible;
        hit_commits += usize::from(found.in_flight > 0);
    }
    eprintln!(
        "{rounds} kills ({hit_commits} with commits in flight) in {:.1} s; {acked_before} \
         transactions acknowledged, {unacked_visible} durable but cut off before their \
         acknowledgement",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        acked_before >= rounds && hit_commits > 0,
        "only {acked_before} transactions were acknowledged in {rounds} rounds, and \
         {hit_commits} kills hit a commit: the writer barely ran"
    );
    Ok(())
}

#[test]
fn a_first_start_killed_while_formatting_starts_again() -> Result<()> {
    let attempts = env_usize("REPLD_CRASH_FORMAT_KILLS", 8);
    let mut rng = rand::rng();
    for attempt in 0..attempts {
        let dir = tempfile::tempdir()?;
        let dir = dir.path();
        // Formatting the new image takes a few milliseconds: kill inside them.
        let mut child = Child::spawn(helper(&["write"], dir), &dir.join("first.stderr"))?;
        std::thread::sleep(Duration::from_micros(rng.random_range(0..=12_000)));
        child.kill()?;
        check_after_kill(dir).with_context(|| format!("attempt {attempt}, after the kill"))?;
        let child = Child::spawn(helper(&["write"], dir), &dir.join("second.stderr"))?;
        child
            .expect_line("READY", START_TIMEOUT)
            .with_context(|| format!("attempt {attempt}: the second start must succeed"))?;
        drop(child);
        check_after_kill(dir).with_context(|| format!("attempt {attempt}, second kill"))?;
    }
    Ok(())
}

// ----- slave apply, interrupted -----

/// A slave's resume position: synced TID, then progress inside the next TID.
fn position(engine: &Engine) -> Result<(Tid, Tid, u64)> {
    let s = engine.pfs(&pfs_name())?;
    Ok(match s.partial {
        Some(p) => (s.head, p.tid, p.chunks_done),
        None => (s.head, Tid::ZERO, 0),
    })
}

/// The checkpoint in an `APPLIED <synced> <partial tid>:<chunks>|-` line, as a [`position`].
fn parse_applied(line: &str) -> Option<(Tid, Tid, u64)> {
    let mut f = line.strip_prefix("APPLIED ")?.split(' ');
    let synced: Tid = f.next()?.parse().ok()?;
    Some(match f.next()? {
        "-" => (synced, Tid::ZERO, 0),
        p => {
            let (t, n) = p.split_once(':')?;
            (synced, t.parse().ok()?, n.parse().ok()?)
        }
    })
}

/// Whether a batch the replicator sent is in the slave's durable checkpoint `pos` (see
/// [`position`]).
fn landed(b: &workload::SentBatch, pos: (Tid, Tid, u64)) -> bool {
    match b.chunks.last() {
        // Its last chunks belong to a change it did not carry: it ends inside that change.
        Some(&(tid, _, end)) if !b.changes.contains(&tid) => {
            pos.0 >= tid || (pos.1 == tid && pos.2 >= end)
        }
        _ => b.changes.last().is_some_and(|&t| pos.0 >= t),
    }
}

/// Checks that the slave holds exactly the master's state at every TID up to its head, and
/// that its checkpoint names a real position in the master's history.
fn check_slave_prefix(master: &Engine, slave: &Engine, changes: &[Change]) -> Result<()> {
    let name = pfs_name();
    let s = slave.pfs(&name)?;
    let synced: Vec<&Change> = changes.iter().take_while(|c| c.tid <= s.head).collect();
    ensure!(
        synced.last().map_or(Tid::ZERO, |c| c.tid) == s.head,
        "the slave's head {} is not a master TID",
        s.head
    );
    let slave_changes = all_changes(slave, &name)?;
    ensure!(
        slave_changes.iter().collect::<Vec<_>>() == synced,
        "the slave's commits are not the master's up to {}",
        s.head
    );
    if let Some(p) = s.partial {
        let next = changes
            .get(synced.len())
            .context("a partial TID past the master's head")?;
        ensure!(
            p.tid == next.tid && p.chunks_done < next.chunk_refs().count() as u64,
            "the slave's partial {p:?} is not inside the master's next change {}",
            next.tid
        );
    }
    if let Some(last) = synced.last() {
        // Versions the master deleted later end on the slave only once it has that TID too:
        // compare what is visible, not when it ends.
        let visible = |engine: &Engine| -> Result<Vec<_>> {
            Ok(walk(engine, &name, last.tid)?
                .into_iter()
                .map(|e| (e.path, e.created, e.meta))
                .collect())
        };
        ensure!(
            visible(master)? == visible(slave)?,
            "the slave differs from the master at its head {}",
            last.tid
        );
    }
    Ok(())
}

#[test]
fn slave_apply_resumes_after_kills() -> Result<()> {
    let kills_wanted = env_usize("REPLD_CRASH_SLAVE_KILLS", 12);
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let mut rng = rand::rng();
    let started = Instant::now();
    // The master: ~80 MiB in a few hundred commits, files up to 10 MiB (ten chunks).
    Child::spawn(
        helper(&["write", "--max-bytes", &(80u64 << 20).to_string()], dir),
        &dir.join("master.stderr"),
    )?
    .wait_success(Duration::from_secs(300))?;
    let master = open_master(dir)?;
    let name = pfs_name();
    let changes = all_changes(&master, &name)?;
    let chunks: usize = changes.iter().map(|c| c.chunk_refs().count()).sum();
    let master_head = master.pfs(&name)?.head;
    close(master)?;
    eprintln!(
        "master: {} commits, {chunks} chunks, written in {:.1} s",
        changes.len(),
        started.elapsed().as_secs_f64()
    );

    let mut last = (Tid::ZERO, Tid::ZERO, 0);
    let (mut kills, mut runs, mut cut_short, mut inside_tid) = (0, 0, 0, 0);
    // Kill until enough kills happened, and (within a bound) enough of them cut an apply short.
    while kills < kills_wanted || (cut_short < 2 && kills < 3 * kills_wanted) {
        runs += 1;
        let mut child = Child::spawn(
            helper(&["replicate"], dir),
            &dir.join(format!("replicate-{runs}.stderr")),
        )?;
        child.expect_line("READY", START_TIMEOUT)?;
        // Let it apply a few batches, then kill it: half the time within the few milliseconds
        // an apply takes (the batch is sent, its checkpoint may or may not be durable yet),
        // otherwise at any moment of the next batches.
        for _ in 0..rng.random_range(0..=2) {
            if child.next_line("APPLIED", START_TIMEOUT)?.is_none() {
                break;
            }
        }
        if rng.random_bool(0.5) {
            // A batch of a MiB or more takes milliseconds to hash, write and fsync.
            while let Some(line) = child.next_line("SENDING", START_TIMEOUT)? {
                let bytes: usize = line
                    .rsplit(' ')
                    .next()
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(0);
                if bytes >= 1 << 20 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(rng.random_range(0..=3_000)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=15)));
        }
        match child.kill()? {
            Killed::WhileRunning => kills += 1,
            Killed::AlreadyExited(status) => {
                ensure!(
                    false,
                    "the replicator finished ({status}) after only {kills} kills: the master is \
                     too small for this machine; its stderr:\n{}",
                    child.stderr()
                );
            }
        }
        let (master, slave) = (open_master(dir)?, open_slave(dir)?);
        let now = position(&slave)?;
        ensure!(
            now >= last,
            "the slave went back from {last:?} to {now:?} after kill {kills}"
        );
        // What an apply returned is durable: the last checkpoint the replicator printed.
        if let Some(told) = child
            .lines(Duration::from_secs(10))
            .iter()
            .rev()
            .find_map(|l| parse_applied(l))
        {
            ensure!(
                now >= told,
                "apply returned the checkpoint {told:?}, but after kill {kills} the slave is at \
                 {now:?}"
            );
        }
        check_slave_prefix(&master, &slave, &changes)
            .with_context(|| format!("after kill {kills}"))?;
        let in_flight = SentLog::read(&dir.join("sent.log"))?
            .runs
            .last()
            .and_then(|r| r.last())
            .is_some_and(|b| !landed(b, now));
        cut_short += usize::from(in_flight);
        inside_tid += usize::from(now.1 > Tid::ZERO);
        let synced = changes.iter().take_while(|c| c.tid <= now.0).count();
        eprintln!(
            "kill {kills:>2}: slave has {synced} of {} commits{}{}",
            changes.len(),
            if now.1 > Tid::ZERO {
                format!(" and {} chunks of {}", now.2, now.1)
            } else {
                String::new()
            },
            if in_flight {
                "; cut an apply short"
            } else {
                ""
            }
        );
        last = now;
        close(slave)?;
        close(master)?;
    }
    let child = Child::spawn(
        helper(&["replicate"], dir),
        &dir.join("replicate-final.stderr"),
    )?;
    child.wait_success(Duration::from_secs(120))?;
    runs += 1;

    // The slave equals the master at every master TID: same commits, same entries, same bytes.
    let (master, slave) = (open_master(dir)?, open_slave(dir)?);
    let (m, s) = (master.pfs(&name)?, slave.pfs(&name)?);
    ensure!(
        s.head == m.head && s.head == master_head && s.head_chain == m.head_chain,
        "the slave's head {} is not the master's {}",
        s.head,
        m.head
    );
    ensure!(s.partial.is_none(), "a caught-up slave has a partial TID");
    ensure!(
        all_changes(&slave, &name)? == changes,
        "the slave's commits differ from the master's"
    );
    let mut versions_read = BTreeSet::new();
    let mut bytes = 0u64;
    for c in &changes {
        let (me, se) = (walk(&master, &name, c.tid)?, walk(&slave, &name, c.tid)?);
        ensure!(me == se, "the slave differs from the master at {}", c.tid);
        for e in me.iter().filter(|e| e.kind() == EntryKind::File) {
            // A version's bytes are the same at every TID that sees it: read each once.
            if versions_read.insert((e.path.clone(), e.created)) {
                let at = At::Tid(c.tid);
                let (a, b) = (
                    master.read_file(&name, &e.path, &at)?,
                    slave.read_file(&name, &e.path, &at)?,
                );
                ensure!(
                    a == b,
                    "`{}` differs between master and slave at {}",
                    e.path,
                    c.tid
                );
                bytes += a.len() as u64;
            }
        }
    }
    close(slave)?;
    close(master)?;

    // Each kill cost at most the one batch that was in flight: no chunk and no change was sent
    // again more than one batch's worth per restart.
    let log = SentLog::read(&dir.join("sent.log"))?;
    ensure!(
        log.runs.len() == runs,
        "{} runs logged, {runs} started",
        log.runs.len()
    );
    let (mut sent_chunks, mut sent_changes) = (BTreeSet::new(), BTreeSet::new());
    let (mut resent_chunks, mut resent_changes, mut resends) = (0, 0, 0);
    for (i, run) in log.runs.iter().enumerate() {
        let (mut chunks_again, mut changes_again) = (0, 0);
        for b in run {
            for (tid, from, to) in &b.chunks {
                for k in *from..*to {
                    chunks_again += usize::from(!sent_chunks.insert((*tid, k)));
                }
            }
            for tid in &b.changes {
                changes_again += usize::from(!sent_changes.insert(*tid));
            }
        }
        ensure!(
            chunks_again <= BATCH_CHUNKS && changes_again <= BATCH_CHANGES,
            "run {i} re-sent {chunks_again} chunks and {changes_again} changes: more than the \
             one batch a kill may lose"
        );
        resends += usize::from(chunks_again + changes_again > 0);
        resent_chunks += chunks_again;
        resent_changes += changes_again;
    }
    ensure!(
        resends == cut_short,
        "{cut_short} kills cut an apply short but {resends} restarts sent something again"
    );
    ensure!(
        cut_short > 0 && inside_tid > 0,
        "of {kills} kills, {cut_short} landed inside an apply and {inside_tid} left the slave \
         inside a TID: the test did not exercise both"
    );
    ensure!(
        sent_chunks.len() == chunks && sent_changes.len() == changes.len(),
        "sent {} of {chunks} chunks and {} of {} changes",
        sent_chunks.len(),
        sent_changes.len(),
        changes.len()
    );
    eprintln!(
        "{kills} kills ({cut_short} cut an apply short, {inside_tid} left the slave inside a \
         TID), {runs} runs, {resent_chunks} chunks and \
         {resent_changes} changes sent twice; slave equals master at {} TIDs ({} MiB \
         compared); {:.1} s",
        changes.len(),
        bytes >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
