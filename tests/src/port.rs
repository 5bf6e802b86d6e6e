//! Loopback ports for test nodes that keep their address across restarts.
//!
//! A node started on `127.0.0.1:0` gets a port from the kernel's ephemeral range. Once it stops,
//! that port is free for any outgoing connection or `:0` bind on the machine, and restarting the
//! node on the address its peers stored can fail with "address in use" (CI saw it). A
//! [`PortLease`] is a port below the ephemeral range, which the kernel never hands out by itself,
//! and a lock file in the temporary directory keeps two test processes from taking the same one.
//! The lock is held until the lease is dropped or the test process dies.

use std::fs::{self, File, TryLockError};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::ops::Range;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rand::Rng;

/// How many ports below the ephemeral range the leases are drawn from.
const SPAN: u16 = 12_000;
/// How many random ports to try before giving up.
const ATTEMPTS: usize = 200;

/// A loopback port reserved for this test process; released when dropped.
#[derive(Debug)]
pub struct PortLease {
    addr: SocketAddr,
    /// Holds the advisory lock on `<tmp>/repl-tests-ports/<port>.lock`.
    _lock: File,
}

impl PortLease {
    /// Reserves a free loopback port below the kernel's ephemeral range.
    pub fn take() -> Result<PortLease> {
        let range = lease_range();
        let dir = lock_dir();
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut rng = rand::rng();
        for _ in 0..ATTEMPTS {
            let port = rng.random_range(range.clone());
            let path = dir.join(format!("{port}.lock"));
            let lock = File::create(&path).with_context(|| format!("create {}", path.display()))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("lock {}", path.display()));
                }
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            // Something outside the tests may hold it; the probe listener closes at once.
            if TcpListener::bind(addr).is_ok() {
                return Ok(PortLease { addr, _lock: lock });
            }
        }
        bail!("no free loopback port in {range:?} after {ATTEMPTS} attempts")
    }

    /// The reserved address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The ports just below the ephemeral range (`net.ipv4.ip_local_port_range`).
fn lease_range() -> Range<u16> {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let start = low.saturating_sub(SPAN).max(1_024);
    start..low.max(start + 1)
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("repl-tests-ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_below_the_ephemeral_range_and_reusable_after_drop() -> Result<()> {
        let range = lease_range();
        let a = PortLease::take()?;
        let b = PortLease::take()?;
        assert_ne!(a.addr(), b.addr());
        for lease in [&a, &b] {
            assert!(
                range.contains(&lease.addr().port()),
                "{lease:?} not in {range:?}"
            );
        }
        // A held lease's lock cannot be taken again, by this process or another.
        let path = lock_dir().join(format!("{}.lock", a.addr().port()));
        let again = File::open(&path)?;
        assert!(matches!(again.try_lock(), Err(TryLockError::WouldBlock)));
        drop(a);
        again
            .try_lock()
            .context("the lock is released with the lease")?;
        Ok(())
    }
}
