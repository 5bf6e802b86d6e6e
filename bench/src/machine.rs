//! What the figures were measured on: the machine, and the file system holding the data.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// The machine, as far as it matters to the figures.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// The CPU model, from `/proc/cpuinfo`.
    pub cpu: Option<String>,
    /// Total memory in bytes, from `/proc/meminfo`.
    pub memory_bytes: Option<u64>,
    /// The kernel release.
    pub kernel: Option<String>,
    /// The 1, 5 and 15 minute load averages when the run started: other work on the machine
    /// makes the figures noisy, and this says how much there was.
    pub load_at_start: Option<String>,
    /// The same when the run ended.
    pub load_at_end: Option<String>,
}

impl Machine {
    /// Reads what it can; missing facts stay `None`.
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned()),
            memory_bytes: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            load_at_start: load_average(),
            load_at_end: None,
        }
    }
}

/// The load averages, as `/proc/loadavg` gives them.
pub fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The file system a path is on.
#[derive(Debug, Clone, Serialize)]
pub struct FsInfo {
    /// The path asked about.
    pub path: PathBuf,
    /// The file system type (`ext4`, `xfs`, `tmpfs`, ...).
    pub fs_type: String,
    /// What is mounted (a device, or a name for virtual file systems).
    pub source: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

impl FsInfo {
    /// Whether the file system keeps data in memory only, so that `fdatasync` measures nothing.
    pub fn is_memory(&self) -> bool {
        matches!(self.fs_type.as_str(), "tmpfs" | "ramfs")
    }
}

impl std::fmt::Display for FsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {} ({} mounted at {})",
            self.path.display(),
            self.fs_type,
            self.source,
            self.mount_point.display()
        )
    }
}

/// The file system holding `path`: the mount with the longest mount point that contains it, from
/// `/proc/self/mountinfo`.
pub fn fs_of(path: &Path) -> Result<FsInfo> {
    let path = path
        .canonicalize()
        .with_context(|| format!("resolve {}", path.display()))?;
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let (mount_point, fs_type, source) = parse_mountinfo(&info)
        .into_iter()
        .filter(|(mp, _, _)| path.starts_with(mp))
        .max_by_key(|(mp, _, _)| mp.components().count())
        .with_context(|| format!("no mount in /proc/self/mountinfo holds {}", path.display()))?;
    Ok(FsInfo {
        path,
        fs_type,
        source,
        mount_point,
    })
}

/// (mount point, type, source) of each line. Later mounts over the same point come later, and
/// `max_by_key` keeps the last maximum, so the mount that is visible wins.
fn parse_mountinfo(info: &str) -> Vec<(PathBuf, String, String)> {
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fs_type = r.next()?;
            let source = r.next()?;
            Some((
                PathBuf::from(unescape(mount_point)),
                fs_type.to_owned(),
                unescape(source),
            ))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_mount_holding_a_path_wins() {
        let info = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /tmp rw,nosuid shared:2 - tmpfs tmpfs rw
31 22 0:27 / /mnt/my\\040disk rw shared:3 - xfs /dev/sdb1 rw
";
        let mounts = parse_mountinfo(info);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[2].0, PathBuf::from("/mnt/my disk"));
        let pick = |p: &str| {
            mounts
                .iter()
                .filter(|(mp, _, _)| Path::new(p).starts_with(mp))
                .max_by_key(|(mp, _, _)| mp.components().count())
                .map(|(_, t, _)| t.clone())
        };
        assert_eq!(pick("/tmp/x").as_deref(), Some("tmpfs"));
        assert_eq!(pick("/tmpx/y").as_deref(), Some("ext4"));
        assert_eq!(pick("/mnt/my disk/a").as_deref(), Some("xfs"));
    }

    #[test]
    fn finds_the_file_system_of_the_current_directory() {
        let fs = fs_of(Path::new(".")).expect("fs of .");
        assert!(!fs.fs_type.is_empty());
        assert!(fs.path.starts_with(&fs.mount_point));
    }
}
