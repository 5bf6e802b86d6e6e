//! Deterministic tar export of a PFS at a TID.
//!
//! The same state always gives the same bytes, on any node: entries in canonical order (depth
//! first, children sorted by name, each directory before its contents), every header field fixed
//! (uid and gid 0, no user or group names, no device numbers), and a PAX extended header on every
//! entry carrying the nanosecond mtime and, when needed, the long path or link target. GNU tar and
//! bsdtar extract it.

use std::io::{Read, Write};

use repl_types::{EntryPath, PfsName, Tid};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::read::{At, Entry};
use crate::record::EntryKind;

impl Engine {
    /// Writes the PFS as it stands at `at` to `out` as a tar stream. Returns the TID exported.
    pub fn export_tar(&self, name: &PfsName, at: &At, out: impl Write) -> Result<Tid> {
        self.export_tar_under(name, at, &EntryPath::root(), out)
    }

    /// Writes the entries below directory `dir` (with paths relative to the PFS root) as a tar
    /// stream.
    pub fn export_tar_under(
        &self,
        name: &PfsName,
        at: &At,
        dir: &EntryPath,
        out: impl Write,
    ) -> Result<Tid> {
        let mut b = tar::Builder::new(out);
        b.mode(tar::HeaderMode::Deterministic);
        let tid = self.walk_under(name, at, dir, |e| append(self, name, e, &mut b))?;
        b.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(|e| Error::io("finish the tar stream", e))?;
        Ok(tid)
    }
}

fn append<W: Write>(
    engine: &Engine,
    pfs: &PfsName,
    e: &Entry,
    b: &mut tar::Builder<W>,
) -> Result<()> {
    let io = |err| Error::io(format!("write `{}` to the tar stream", e.path), err);
    let mut path = e.path.as_str().to_owned();
    if e.kind() == EntryKind::Dir {
        path.push('/');
    }
    let mut h = tar::Header::new_ustar();
    h.set_mode(e.meta.mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(u64::try_from(e.meta.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0));
    let mut pax: Vec<(&str, String)> = vec![("mtime", pax_time(e.meta.mtime_ns))];
    if h.set_path(&path).is_err() {
        pax.push(("path", path.clone()));
        h.set_path(short_name(&path)).map_err(io)?;
    }
    match e.kind() {
        EntryKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        }
        EntryKind::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            if h.set_link_name(&e.meta.target).is_err() {
                pax.push(("linkpath", e.meta.target.clone()));
                h.set_link_name("././@LongLink").map_err(io)?;
            }
        }
        EntryKind::File => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(e.meta.size);
        }
    }
    b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_bytes())))
        .map_err(io)?;
    h.set_cksum();
    match e.kind() {
        EntryKind::File => {
            let reader = engine.open_file(pfs, &e.path, &At::Tid(e.created))?;
            let mut counted = CountingReader {
                inner: reader,
                n: 0,
            };
            b.append(&h, &mut counted).map_err(io)?;
            if counted.n != e.meta.size {
                return Err(Error::Invalid(format!(
                    "`{}` read {} bytes, expected {}",
                    e.path, counted.n, e.meta.size
                )));
            }
        }
        _ => b.append(&h, std::io::empty()).map_err(io)?,
    }
    Ok(())
}

/// A PAX time value: seconds, and the fraction when there is one. A PAX time is a signed
/// decimal number, so a time before the epoch is its magnitude with a `-` (`-1.5`), not floor
/// seconds plus a positive fraction.
fn pax_time(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let abs = ns.unsigned_abs();
    let (s, frac) = (abs / 1_000_000_000, abs % 1_000_000_000);
    if frac == 0 {
        format!("{sign}{s}")
    } else {
        format!("{sign}{s}.{frac:09}")
    }
}

/// A ustar name for an entry whose real path is in its PAX header: its last 99 bytes or less,
/// cut at a character boundary.
fn short_name(path: &str) -> &str {
    let mut start = path.len().saturating_sub(99);
    while !path.is_char_boundary(start) {
        start += 1;
    }
    &path[start..]
}

struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_nanoseconds() {
        assert_eq!(pax_time(1_700_000_000_000_000_000), "1700000000");
        assert_eq!(pax_time(1_700_000_000_000_000_123), "1700000000.000000123");
        assert_eq!(pax_time(0), "0");
        assert_eq!(pax_time(-86_400_000_000_000), "-86400");
        assert_eq!(pax_time(-1_500_000_000), "-1.500000000");
        assert_eq!(pax_time(-1), "-0.000000001");
    }

    #[test]
    fn short_names_fit_ustar_and_respect_utf8() {
        let long = "é".repeat(80);
        let s = short_name(&long);
        assert!(s.len() <= 99 && long.ends_with(s));
    }
}
