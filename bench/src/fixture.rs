//! Fresh engines on sparse image files, set up as the daemon's defaults would be.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use repld_engine::{
    Attrs, Engine, EngineOptions, EntryPath, FormatOptions, PfsName, PfsOptions, Stats,
};

/// The name of the PFS the scenarios write to.
pub const PFS: &str = "bench";

/// Where an engine's device image and index live inside a directory.
pub fn options(dir: &Path, device_bytes: u64) -> EngineOptions {
    let mut o = EngineOptions::new(device_path(dir), dir.join("index"));
    o.create = Some(FormatOptions {
        force: false,
        // The engine's default segment size, as a formatted node would have.
        segment_size: None,
        create_size: Some(device_bytes),
    });
    o
}

/// The device image in `dir`.
pub fn device_path(dir: &Path) -> PathBuf {
    dir.join("device.img")
}

/// Formats a sparse image of `device_bytes` in `dir`, opens it, and creates the PFS [`PFS`].
pub fn fresh_engine(dir: &Path, device_bytes: u64) -> Result<(Engine, PfsName)> {
    let engine = Engine::open(options(dir, device_bytes))
        .with_context(|| format!("open a fresh engine in {}", dir.display()))?;
    let pfs = PfsName::new(PFS).context("the bench PFS name")?;
    engine
        .create_pfs(&pfs, PfsOptions::default())
        .context("create the bench PFS")?;
    Ok((engine, pfs))
}

/// A path, from a string the scenario made up.
pub fn path(s: &str) -> Result<EntryPath> {
    EntryPath::new(s).with_context(|| format!("bench path `{s}`"))
}

/// Mode 0644, now.
pub fn attrs() -> Attrs {
    Attrs::now(0o644)
}

/// A directory's attributes: mode 0755, now.
pub fn dir_attrs() -> Attrs {
    Attrs::now(0o755)
}

/// The engine counters that explain a figure, read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Commits.
    pub commits: u64,
    /// `fdatasync` calls.
    pub fsyncs: u64,
    /// Nanoseconds spent in `fdatasync`.
    pub fsync_ns: u64,
    /// Bytes written to the log.
    pub bytes_written: u64,
    /// Groups written.
    pub groups: u64,
}

impl Counters {
    /// Reads them.
    pub fn read(s: &Stats) -> Counters {
        use std::sync::atomic::Ordering::Relaxed;
        Counters {
            commits: s.commits.load(Relaxed),
            fsyncs: s.fsyncs.load(Relaxed),
            fsync_ns: s.fsync_ns.load(Relaxed),
            bytes_written: s.bytes_written.load(Relaxed),
            groups: s.groups.load(Relaxed),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            commits: self.commits - earlier.commits,
            fsyncs: self.fsyncs - earlier.fsyncs,
            fsync_ns: self.fsync_ns - earlier.fsync_ns,
            bytes_written: self.bytes_written - earlier.bytes_written,
            groups: self.groups - earlier.groups,
        }
    }
}

/// Flushes every dirty page of the file system holding `dir` (`syncfs`), so that one measured
/// side does not pay for the write-back of what was written before it.
pub fn sync_fs(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    rustix::fs::syncfs(&d).with_context(|| format!("syncfs {}", dir.display()))
}

/// Drops a file's pages from the page cache (after making them durable), so that the next read
/// comes from the disk. Affects only this file, not the rest of the machine.
pub fn evict_from_cache(file: &Path) -> Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    f.sync_data()
        .with_context(|| format!("fdatasync {}", file.display()))?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)
        .with_context(|| format!("posix_fadvise(DONTNEED) {}", file.display()))
}

/// MiB per second.
pub fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / secs
}

/// CPU time this process has used so far, all threads together.
pub fn cpu_time() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Writes `bytes` to a scratch file in `dir` and deletes it again, untimed, right before a
/// measured write of the same size.
///
/// On a VM that hands free memory back to the host (virtio-balloon free page reporting, as on
/// the Firecracker machines this project runs on), the first write into page-cache pages the
/// guest has not used recently costs up to 10x the CPU of a write into recently freed pages: the
/// host has to fault its memory back in. Without this step, whichever side of a comparison runs
/// second reuses the pages the first one freed and looks several times faster. Warming up right
/// before each side gives both the same, recently freed pages. See `docs/benchmarks.md`.
pub fn warm_page_cache(dir: &Path, bytes: u64) -> Result<()> {
    use std::io::Write as _;
    let path = dir.join("warm-up.tmp");
    let buf = vec![0x5Au8; 1 << 20];
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])
            .with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    drop(f);
    // Deleted before write-back: its pages are freed, not written.
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))
}

/// Scheduler accounting of threads: CPU time used and time spent runnable but waiting for a
/// CPU (other work on the machine), from `/proc/.../schedstat`, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sched {
    /// Seconds on a CPU.
    pub cpu: f64,
    /// Seconds runnable but waiting for a CPU.
    pub wait: f64,
}

impl Sched {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Sched) -> Sched {
        Sched {
            cpu: self.cpu - earlier.cpu,
            wait: self.wait - earlier.wait,
        }
    }

    fn parse(s: &str) -> Option<Sched> {
        let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some(Sched {
            cpu: f.next()?? as f64 / 1e9,
            wait: f.next()?? as f64 / 1e9,
        })
    }

    /// The calling thread's, or zeros where schedstat is not available.
    pub fn this_thread() -> Sched {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| Sched::parse(&s))
            .unwrap_or_default()
    }

    /// The sum over this process's threads named `name` (e.g. the engine's `repld-writer`).
    pub fn threads_named(name: &str) -> Sched {
        let mut sum = Sched::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return sum;
        };
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            if let Some(s) = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| Sched::parse(&s))
            {
                sum.cpu += s.cpu;
                sum.wait += s.wait;
            }
        }
        sum
    }
}
