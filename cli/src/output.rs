//! What replctl prints: human tables (comfy-table), `--json` documents (serde_json), and the
//! formatting of TIDs, times, sizes and modes.
//!
//! **TIDs** are shown as HAMMER does, `0x%016x`, with the RFC 3339 UTC time beside it in full
//! nanosecond precision (so the time can be pasted back as `@TIME` and names the same TID).
//!
//! **JSON** shapes are the `*Json` structs here, documented in `docs/cli.md`; they are a stable
//! interface. TIDs are strings (`"0x0000018f2c000001"`), because a TID does not fit in a double
//! and `jq` would round it; each has a `*_time` companion. Times are RFC 3339 strings, modes are
//! octal strings (`"0644"`), sizes and counts are numbers.

use std::io::Write;
use std::time::Duration;

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets};
use repl_proto::{
    DeleteResult, Entry, EntryKind, NodeInfo, PfsInfo, PfsStatus, PutResult, Snapshot,
};
use repl_types::Tid;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How results are printed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Output {
    /// Print JSON documents instead of tables.
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON (one document, pretty) or the text `human` builds.
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let text = if self.json {
            let mut s = serde_json::to_string_pretty(value)?;
            s.push('\n');
            s
        } else {
            human()
        };
        print_stdout(&text)
    }
}

/// Writes to stdout; a closed pipe (`replctl ls | head`) is not an error.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

// =============================================================================================
// Formatting

/// `0x0000018f2c000001 (2024-05-01T10:00:00.123456789Z)`.
pub fn tid(t: Tid) -> String {
    format!("{t} ({})", t.to_rfc3339())
}

/// A TID that may be absent (`-`).
pub fn opt_tid(t: Option<Tid>) -> String {
    t.map_or_else(|| "-".to_owned(), tid)
}

/// Nanoseconds since the epoch as an RFC 3339 UTC time (full precision).
pub fn time_ns(ns: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ns}ns"))
}

/// Nanoseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC, for `ls -l`.
pub fn time_short(ns: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(fmt).ok())
        .unwrap_or_else(|| format!("{ns}ns"))
}

/// A size in bytes, with binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A rate in bytes per second.
pub fn rate(n: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "-".to_owned();
    }
    format!("{:.1} MB/s", n as f64 / secs / 1e6)
}

/// A duration: `850ms`, `12.3s`, `4m05s`, `3h12m`, `2d04h`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 1 {
        format!("{}ms", d.as_millis())
    } else if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86400, (s % 86400) / 3600)
    }
}

/// `drwxr-xr-x`, as `ls -l` shows it (with setuid, setgid and sticky).
pub fn mode_string(kind: EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
    });
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set, unset)) in special.iter().enumerate() {
        let shift = 6 - 3 * i;
        let rwx = (mode >> shift) & 7;
        s.push(if rwx & 4 != 0 { 'r' } else { '-' });
        s.push(if rwx & 2 != 0 { 'w' } else { '-' });
        let x = rwx & 1 != 0;
        s.push(match (mode & bit != 0, x) {
            (true, true) => *set,
            (true, false) => *unset,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// A mode as an octal string: `0644`, `4755`.
pub fn mode_octal(mode: u32) -> String {
    format!("{mode:04o}")
}

fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// A table without borders, one row per line, that `awk` can split.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| Cell::new(h.to_uppercase())));
    t
}

/// Right-aligns the given columns (numbers).
pub fn align_right(t: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// A table as text: each line without trailing blanks, ending in a newline.
pub fn render(t: &Table) -> String {
    let mut s: String = t
        .lines()
        .map(|l| {
            let l = l.trim_end();
            // The NOTHING preset indents by one blank of padding.
            l.strip_prefix(' ').unwrap_or(l).to_owned() + "\n"
        })
        .collect();
    if s.is_empty() {
        s.push('\n');
    }
    s
}

// =============================================================================================
// JSON shapes

/// A TID as JSON: `"0x..."`, or null.
fn tid_json(t: Option<Tid>) -> (Option<String>, Option<String>) {
    (t.map(|t| t.to_string()), t.map(Tid::to_rfc3339))
}

/// An entry (`ls`, `stat`, `history`).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EntryJson {
    /// Path relative to the PFS root.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: EntryKind,
    /// Octal permission bits.
    pub mode: String,
    /// Content length (files), target length (symlinks), 0 (dirs).
    pub size: u64,
    /// RFC 3339 modification time.
    pub mtime: String,
    /// The target of a symlink.
    pub symlink_target: Option<String>,
    /// The TID that created this version.
    pub create_tid: String,
    /// Its time.
    pub create_time: String,
    /// The TID that deleted or replaced it (null while live).
    pub delete_tid: Option<String>,
    /// Its time.
    pub delete_time: Option<String>,
    /// BLAKE3 of a file's content, hex.
    pub content_hash: Option<String>,
}

impl From<&Entry> for EntryJson {
    fn from(e: &Entry) -> EntryJson {
        let (delete_tid, delete_time) = tid_json(e.delete_tid);
        EntryJson {
            path: e.path.as_str().to_owned(),
            kind: e.kind,
            mode: mode_octal(e.mode),
            size: e.size,
            mtime: time_ns(e.mtime_ns),
            symlink_target: e.symlink_target.clone(),
            create_tid: e.create_tid.to_string(),
            create_time: e.create_tid.to_rfc3339(),
            delete_tid,
            delete_time,
            content_hash: e.content_hash.as_ref().map(hex),
        }
    }
}

/// A PFS (`pfs list`, `pfs create`).
#[derive(Debug, Serialize)]
pub struct PfsJson {
    /// Name.
    pub name: String,
    /// `master` or `slave`.
    pub role: String,
    /// History is not kept.
    pub nohistory: bool,
    /// The UUID shared by a master and its slaves.
    pub shared_uuid: String,
    /// Newest committed (slave: synced) TID, null before the first commit.
    pub head_tid: Option<String>,
    /// Its time.
    pub head_time: Option<String>,
    /// The TID that created the PFS.
    pub created_tid: String,
    /// Its time.
    pub created_time: String,
    /// The retention policy (`forever`, or KEEP[,EVERY:UNTIL]...).
    pub retention: String,
}

impl From<&PfsInfo> for PfsJson {
    fn from(p: &PfsInfo) -> PfsJson {
        let (head_tid, head_time) = tid_json(p.head_tid);
        PfsJson {
            name: p.name.to_string(),
            role: p.role.to_string(),
            nohistory: p.nohistory,
            shared_uuid: p.shared_uuid.to_string(),
            head_tid,
            head_time,
            created_tid: p.created_tid.to_string(),
            created_time: p.created_tid.to_rfc3339(),
            retention: p.retention.to_string(),
        }
    }
}

/// `pfs status`: the PFS's fields plus its contents.
#[derive(Debug, Serialize)]
pub struct PfsStatusJson {
    /// The PFS.
    #[serde(flatten)]
    pub pfs: PfsJson,
    /// Live files at the head.
    pub files: u64,
    /// Live directories at the head.
    pub dirs: u64,
    /// Live symlinks at the head.
    pub symlinks: u64,
    /// Content bytes of the live files.
    pub logical_bytes: u64,
    /// Versions stored, live or historical.
    pub versions: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// The oldest readable TID.
    pub oldest_tid: Option<String>,
    /// Its time.
    pub oldest_time: Option<String>,
    /// TID ranges that prunes made unreadable.
    pub pruned: Vec<TidRangeJson>,
    /// Bytes of file data its kept versions reference (as the node last estimated them).
    pub used_bytes: u64,
    /// The device's bytes in segments in use.
    pub device_used_bytes: u64,
    /// Bytes of the device space reclaim can give back (as last estimated).
    pub device_reclaimable_bytes: u64,
    /// The device's bytes in free segments.
    pub device_free_bytes: u64,
}

/// TIDs `from <= t < to`.
#[derive(Debug, Serialize)]
pub struct TidRangeJson {
    /// The first TID of the range.
    pub from_tid: String,
    /// The first TID after it.
    pub to_tid: String,
}

/// The JSON form of TID ranges.
pub fn ranges_json(r: &[repl_proto::TidRange]) -> Vec<TidRangeJson> {
    r.iter()
        .map(|(a, b)| TidRangeJson {
            from_tid: a.to_string(),
            to_tid: b.to_string(),
        })
        .collect()
}

/// A TID range for people: `FROM .. TO (time .. time)`.
pub fn range(r: &repl_proto::TidRange) -> String {
    format!(
        "{} .. {} ({} .. {})",
        r.0,
        r.1,
        r.0.to_rfc3339(),
        r.1.to_rfc3339()
    )
}

impl From<&PfsStatus> for PfsStatusJson {
    fn from(s: &PfsStatus) -> PfsStatusJson {
        let (oldest_tid, oldest_time) = tid_json(s.oldest_tid);
        PfsStatusJson {
            pfs: PfsJson::from(&s.pfs),
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            logical_bytes: s.logical_bytes,
            versions: s.versions,
            snapshots: s.snapshots,
            oldest_tid,
            oldest_time,
            pruned: ranges_json(&s.pruned),
            used_bytes: s.used_bytes,
            device_used_bytes: s.device_used_bytes,
            device_reclaimable_bytes: s.device_reclaimable_bytes,
            device_free_bytes: s.device_free_bytes,
        }
    }
}

/// A snapshot.
#[derive(Debug, Serialize)]
pub struct SnapshotJson {
    /// Name.
    pub name: String,
    /// The TID it names.
    pub tid: String,
    /// Its time.
    pub tid_time: String,
}

impl From<&Snapshot> for SnapshotJson {
    fn from(s: &Snapshot) -> SnapshotJson {
        SnapshotJson {
            name: s.name.to_string(),
            tid: s.tid.to_string(),
            tid_time: s.tid.to_rfc3339(),
        }
    }
}

/// A commit made by a write (`mkdir`, `mv`, `rm`, `put`, `snapshot create`).
#[derive(Debug, Serialize)]
pub struct CommitJson {
    /// `[NODE:]PFS/PATH` written.
    pub target: String,
    /// The TID of the commit.
    pub tid: String,
    /// Its time.
    pub tid_time: String,
    /// Entries deleted (`rm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// Bytes stored (`put`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// BLAKE3 of the content, hex (`put`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
}

impl CommitJson {
    /// A commit of `target` at `tid`.
    pub fn new(target: String, t: Tid) -> CommitJson {
        CommitJson {
            target,
            tid: t.to_string(),
            tid_time: t.to_rfc3339(),
            entries: None,
            size: None,
            content_hash: None,
        }
    }

    /// What a Put stored.
    pub fn put(target: String, r: &PutResult) -> CommitJson {
        CommitJson {
            size: Some(r.size),
            content_hash: Some(hex(&r.content_hash)),
            ..CommitJson::new(target, r.tid)
        }
    }

    /// What a Delete removed.
    pub fn delete(target: String, r: &DeleteResult) -> CommitJson {
        CommitJson {
            entries: Some(r.entries),
            ..CommitJson::new(target, r.tid)
        }
    }
}

/// `node info`.
#[derive(Debug, Serialize)]
pub struct NodeInfoJson {
    /// The node's name.
    pub node_name: String,
    /// The repld version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// Devices.
    pub devices: Vec<DeviceJson>,
}

/// One device of `node info`.
#[derive(Debug, Serialize)]
pub struct DeviceJson {
    /// Path on the node.
    pub path: String,
    /// Volume UUID.
    pub volume_uuid: String,
    /// Total bytes.
    pub size_bytes: u64,
    /// Used bytes.
    pub used_bytes: u64,
    /// Free bytes.
    pub free_bytes: u64,
}

impl From<&NodeInfo> for NodeInfoJson {
    fn from(n: &NodeInfo) -> NodeInfoJson {
        NodeInfoJson {
            node_name: n.node_name.clone(),
            version: n.version.clone(),
            uptime_seconds: n.uptime.as_secs(),
            devices: n
                .devices
                .iter()
                .map(|d| DeviceJson {
                    path: d.path.clone(),
                    volume_uuid: d.volume_uuid.to_string(),
                    size_bytes: d.size_bytes,
                    used_bytes: d.used_bytes,
                    free_bytes: d.free_bytes,
                })
                .collect(),
        }
    }
}

/// Parses a size: `4096`, `64MiB`, `1G`, `10MB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("`{s}` is not a size: use bytes or a unit, such as 4096, 64MiB, 1GiB")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit (use KiB, MiB, GiB, TiB, or kB, MB, GB, TB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses an octal mode such as `644` or `0755`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| m & !repl_proto::MODE_MASK == 0)
        .ok_or_else(|| {
            format!("`{s}` is not a mode: give octal permission bits such as 644 or 0755")
        })
}

#[cfg(test)]
mod tests {
    use repl_types::EntryPath;

    use super::*;

    #[test]
    fn tids_show_hex_and_time() {
        let t = Tid(1_795_341_600_000_000_001);
        assert_eq!(
            tid(t),
            "0x18ea55ac4e7b4001 (2026-11-22T10:00:00.000000001Z)"
        );
        assert_eq!(opt_tid(None), "-");
        // The time beside the hex names the same TID when parsed back.
        assert_eq!(t.to_rfc3339().parse::<Tid>(), Ok(t));
    }

    #[test]
    fn sizes_durations_and_times() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(3 * 3600 + 720)), "3h12m");
        assert_eq!(duration(Duration::from_secs(2 * 86400 + 4 * 3600)), "2d04h");
        assert_eq!(rate(100_000_000, Duration::from_secs(2)), "50.0 MB/s");
        assert_eq!(
            time_ns(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(time_short(1_700_000_000_123_456_789), "2023-11-14 22:13:20");
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("x").is_err() && parse_size("5 parsecs").is_err());
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert!(parse_mode("99").is_err() && parse_mode("177777").is_err());
    }

    #[test]
    fn modes_look_like_ls() {
        assert_eq!(mode_string(EntryKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(EntryKind::File, 0o600), "-rw-------");
        assert_eq!(mode_string(EntryKind::Symlink, 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(EntryKind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(EntryKind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(EntryKind::File, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_octal(0o644), "0644");
    }

    #[test]
    fn entry_json_is_stable() {
        let e = Entry {
            path: EntryPath::new("dir/f").expect("valid"),
            kind: EntryKind::File,
            mode: 0o640,
            mtime_ns: 1_700_000_000_000_000_000,
            size: 5,
            symlink_target: None,
            create_tid: Tid(0x10),
            delete_tid: None,
            content_hash: Some([0xab; 32]),
        };
        let v = serde_json::to_value(EntryJson::from(&e)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "path": "dir/f",
                "kind": "file",
                "mode": "0640",
                "size": 5,
                "mtime": "2023-11-14T22:13:20Z",
                "symlink_target": null,
                "create_tid": "0x0000000000000010",
                "create_time": "1970-01-01T00:00:00.000000016Z",
                "delete_tid": null,
                "delete_time": null,
                "content_hash": "ab".repeat(32),
            })
        );
    }

    #[test]
    fn tables_have_no_borders_or_trailing_blanks() {
        let mut t = table(&["name", "size"]);
        t.add_row(vec!["a", "1"]);
        t.add_row(vec!["bbbb", "22"]);
        align_right(&mut t, &[1]);
        let s = render(&t);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert!(lines[0].starts_with("NAME"), "{s}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{s:?}");
        assert!(
            lines[1].ends_with(" 1") && lines[2].ends_with("22"),
            "{s:?}"
        );
    }
}
