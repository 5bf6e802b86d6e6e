//! A fault-injecting TCP proxy for end-to-end tests: put it between two nodes (master → proxy →
//! slave) and break the link on purpose, to prove that the replication stream survives a bad
//! network.
//!
//! [`FaultProxy`] listens on `127.0.0.1:0`, and for every connection it accepts it dials the
//! upstream address and forwards bytes both ways, on plain threads: tests stay synchronous and
//! need no async runtime. Dropping the proxy closes the listener and every connection.
//!
//! The faults, and what each one simulates:
//! - [`FaultProxy::cut`]: every live connection is closed at once, both sides (each peer sees
//!   EOF, or a reset if it had unread data): a link cut mid-batch. New connections are still
//!   accepted, so the master can reconnect and resume.
//! - [`FaultProxy::pause`] / [`FaultProxy::resume`]: bytes stop moving (they are held, and TCP
//!   flow control backs up to the sender) while the connections stay open: a stall that only a
//!   watchdog on the receiving side can detect.
//! - [`FaultProxy::refuse`]: new connections are accepted and closed at once: a link (or a node)
//!   that is down. Live connections are left alone.
//! - [`FaultProxy::truncate_after`]: the stream ends early: exactly `n` more bytes get through,
//!   then the connections are closed.
//! - [`FaultProxy::corrupt_after`]: one byte, `n` bytes from now, is flipped (xor `0xFF`), once:
//!   damage on the wire. Over mutual TLS the receiver's TLS layer catches it: the record's
//!   authentication tag no longer matches, the receiver sends an alert and drops the connection.
//!   So a flipped byte ends the connection like a cut, and never delivers a damaged batch;
//!   damaged data reaching the application would be a bug in the TLS setup (or plaintext).
//! - [`FaultProxy::rate_limit`]: a slow link.
//!
//! Truncation and corruption count bytes in one [`Direction`], client → upstream unless the
//! `_in` variant names the other, over all connections together, from the moment they are
//! called: so they can be armed before the master has even connected.
//! [`FaultProxy::stats`] counts what went through.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The most a connection reads (and forwards) at once.
const CHUNK: usize = 64 * 1024;
/// How long the proxy waits to connect to the upstream address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One direction of the proxied connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting client (the master) to the upstream address (the slave).
    #[default]
    ToUpstream,
    /// From upstream back to the client.
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToClient => 1,
        }
    }
}

/// What went through a [`FaultProxy`] so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Bytes forwarded from clients to upstream (counted as each chunk is handed on).
    pub to_upstream: u64,
    /// Bytes forwarded from upstream to clients.
    pub to_client: u64,
    /// Connections accepted and forwarded (not those refused).
    pub accepted: u64,
    /// Connections accepted and closed at once because of [`FaultProxy::refuse`].
    pub refused: u64,
    /// Live connections closed by [`FaultProxy::cut`] or by a truncation.
    pub cut: u64,
    /// Connections open now.
    pub live: u64,
}

/// A TCP proxy on loopback that forwards to one upstream address and injects faults on demand.
/// Dropping it closes the listener and every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

/// What the proxy's threads share: the settings, the counters and the live connections, all
/// under one lock, so that a fault applies to every connection at the same moment.
struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Signalled when a connection closes, on resume, and when the rate limit changes.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    stopped: bool,
    paused: bool,
    refusing: bool,
    /// Bytes per second, each direction.
    rate: Option<u64>,
    flows: [Flow; 2],
    accepted: u64,
    refused: u64,
    cut: u64,
    next_id: u64,
    conns: HashMap<u64, Conn>,
    /// One thread per accepted connection, joined on drop.
    threads: Vec<JoinHandle<()>>,
}

/// One direction's byte count and the faults armed in it, as positions in that count.
#[derive(Default)]
struct Flow {
    forwarded: u64,
    truncate_at: Option<u64>,
    corrupt_at: Option<u64>,
    /// With a rate limit: when the link is free for the next chunk.
    free_at: Option<Instant>,
}

/// A live connection: handles on its sockets, so that any thread can close it.
struct Conn {
    client: TcpStream,
    upstream: Option<TcpStream>,
    closed: bool,
}

impl Conn {
    /// Shuts both sockets down: blocked reads return EOF, blocked writes fail, and both peers
    /// see the connection end.
    fn close(&mut self) {
        self.closed = true;
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(upstream) = &self.upstream {
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

/// What a forwarding thread does with what it has read.
enum Step {
    /// The source sent EOF: pass it on.
    Eof,
    /// Forward `len` bytes (flipping the one at `flip`) once `due` has passed; then, if `last`,
    /// close the connection (a truncation).
    Forward {
        len: usize,
        flip: Option<usize>,
        due: Option<Instant>,
        last: bool,
    },
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the proxy on loopback")?;
        let addr = listener.local_addr().context("the proxy's bound address")?;
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.accept_loop(&listener)
            })
            .context("start the proxy's accept thread")?;
        Ok(FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Closes every live connection now, both sides. New connections are still accepted.
    pub fn cut(&self) {
        let mut st = self.shared.lock();
        st.close_all(None);
        self.shared.changed.notify_all();
    }

    /// Stops forwarding in both directions: what has been read is held, and the connections
    /// stay open, until [`FaultProxy::resume`].
    pub fn pause(&self) {
        self.shared.lock().paused = true;
    }

    /// Forwards again after [`FaultProxy::pause`], starting with the bytes held.
    pub fn resume(&self) {
        self.shared.lock().paused = false;
        self.shared.changed.notify_all();
    }

    /// While `on`, new connections are accepted and closed at once, without dialing upstream.
    pub fn refuse(&self, on: bool) {
        self.shared.lock().refusing = on;
    }

    /// Client → upstream: forwards exactly `bytes` more bytes, then closes the connection that
    /// carried the last of them and cuts every other. Replaces an earlier truncation not yet
    /// reached.
    pub fn truncate_after(&self, bytes: u64) {
        self.truncate_after_in(Direction::ToUpstream, bytes);
    }

    /// [`FaultProxy::truncate_after`] in the given direction.
    pub fn truncate_after_in(&self, direction: Direction, bytes: u64) {
        let mut st = self.shared.lock();
        let flow = &mut st.flows[direction.index()];
        flow.truncate_at = Some(flow.forwarded + bytes);
    }

    /// Client → upstream: flips (xor `0xFF`) the byte that follows the next `bytes` bytes, once.
    /// Replaces an earlier corruption not yet reached.
    pub fn corrupt_after(&self, bytes: u64) {
        self.corrupt_after_in(Direction::ToUpstream, bytes);
    }

    /// [`FaultProxy::corrupt_after`] in the given direction.
    pub fn corrupt_after_in(&self, direction: Direction, bytes: u64) {
        let mut st = self.shared.lock();
        let flow = &mut st.flows[direction.index()];
        flow.corrupt_at = Some(flow.forwarded + bytes);
    }

    /// Limits each direction, all connections together, to `bytes_per_sec` (`None`: no limit).
    ///
    /// # Panics
    /// On `Some(0)`, which would stop the link: use [`FaultProxy::pause`] for that.
    pub fn rate_limit(&self, bytes_per_sec: Option<u64>) {
        assert_ne!(bytes_per_sec, Some(0), "a rate limit of 0 B/s: use pause()");
        let mut st = self.shared.lock();
        st.rate = bytes_per_sec;
        for flow in &mut st.flows {
            flow.free_at = None;
        }
        self.shared.changed.notify_all();
    }

    /// The counters now.
    pub fn stats(&self) -> ProxyStats {
        self.shared.lock().stats()
    }

    /// Polls the counters until `done` holds, for up to `timeout`; returns them. For example,
    /// wait until the master has connected: `proxy.wait_until(T, |s| s.live == 1)`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&ProxyStats) -> bool,
    ) -> Result<ProxyStats> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if done(&stats) {
                return Ok(stats);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the proxy's counters did not reach the condition within {timeout:?}: {stats:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stopped = true;
            for conn in st.conns.values_mut() {
                conn.close();
            }
            self.shared.changed.notify_all();
        }
        // The accept thread is blocked in accept(): wake it with a connection of our own.
        if let Some(acceptor) = self.acceptor.take()
            && TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT).is_ok()
        {
            let _ = acceptor.join();
        }
        let threads = std::mem::take(&mut self.shared.lock().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic on a proxy thread leaves the state consistent: every update is one step.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn accept_loop(self: &Arc<Self>, listener: &TcpListener) {
        for client in listener.incoming() {
            let mut st = self.lock();
            if st.stopped {
                return;
            }
            let Ok(client) = client else {
                // Out of file descriptors, or a connection reset before accept: try again.
                drop(st);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            if st.refusing {
                st.refused += 1;
                continue; // Dropping `client` closes it.
            }
            let Ok(handle) = client.try_clone() else {
                continue;
            };
            st.accepted += 1;
            let id = st.next_id;
            st.next_id += 1;
            st.conns.insert(
                id,
                Conn {
                    client: handle,
                    upstream: None,
                    closed: false,
                },
            );
            let shared = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name(format!("proxy-conn-{id}"))
                .spawn(move || shared.serve(id, client));
            st.threads.retain(|t| !t.is_finished());
            match spawned {
                Ok(t) => st.threads.push(t),
                Err(_) => {
                    st.conns.remove(&id);
                }
            }
        }
    }

    /// Dials upstream for connection `id` and forwards both ways until both directions end.
    fn serve(&self, id: u64, client: TcpStream) {
        if let Ok(upstream) = TcpStream::connect_timeout(&self.upstream, CONNECT_TIMEOUT) {
            self.forward(id, client, upstream);
        }
        self.lock().conns.remove(&id);
        self.changed.notify_all();
    }

    fn forward(&self, id: u64, client: TcpStream, upstream: TcpStream) {
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (Ok(client2), Ok(upstream2), Ok(handle)) = (
            client.try_clone(),
            upstream.try_clone(),
            upstream.try_clone(),
        ) else {
            return;
        };
        {
            let mut st = self.lock();
            match st.conns.get_mut(&id) {
                Some(conn) if !conn.closed => conn.upstream = Some(handle),
                // Cut (or the proxy dropped) while we were dialing.
                _ => return,
            }
        }
        std::thread::scope(|s| {
            s.spawn(|| self.pump(id, Direction::ToClient, upstream2, client2));
            self.pump(id, Direction::ToUpstream, client, upstream);
        });
    }

    /// Copies `src` to `dst` for one direction of connection `id`, applying the faults.
    fn pump(&self, id: u64, dir: Direction, mut src: TcpStream, mut dst: TcpStream) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let want = self.lock().chunk_limit();
            let n = match src.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(id, false);
                    return;
                }
            };
            let Some(step) = self.plan(id, dir, n) else {
                return;
            };
            let Step::Forward {
                len,
                flip,
                due,
                last,
            } = step
            else {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            };
            if let Some(due) = due
                && !self.wait_due(id, due)
            {
                return;
            }
            if let Some(i) = flip {
                buf[i] ^= 0xFF;
            }
            if dst.write_all(&buf[..len]).is_err() {
                self.close(id, false);
                return;
            }
            if last {
                self.close(id, true);
                return;
            }
        }
    }

    /// Waits while paused, then decides what happens to the `n` bytes just read (`0`: EOF).
    /// `None` when the connection has been closed meanwhile.
    fn plan(&self, id: u64, dir: Direction, n: usize) -> Option<Step> {
        let mut st = self
            .changed
            .wait_while(self.lock(), |st| st.paused && !st.is_closed(id))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if st.is_closed(id) {
            return None;
        }
        if n == 0 {
            return Some(Step::Eof);
        }
        let rate = st.rate;
        let flow = &mut st.flows[dir.index()];
        let start = flow.forwarded;
        let mut len = n;
        let mut last = false;
        if let Some(at) = flow.truncate_at {
            let room = at.saturating_sub(start);
            if room <= n as u64 {
                len = usize::try_from(room).expect("room <= n, a usize");
                last = true;
                flow.truncate_at = None;
            }
        }
        let end = start + len as u64;
        let flip = match flow.corrupt_at {
            Some(at) if (start..end).contains(&at) => {
                flow.corrupt_at = None;
                Some(usize::try_from(at - start).expect("at - start < len, a usize"))
            }
            _ => None,
        };
        flow.forwarded = end;
        let due = rate.map(|rate| {
            let now = Instant::now();
            let from = flow.free_at.map_or(now, |free| free.max(now));
            let due = from + Duration::from_secs_f64(len as f64 / rate as f64);
            flow.free_at = Some(due);
            due
        });
        if last {
            // The stream ends here for every connection, not just this one: cut the others now,
            // and close this one once it has delivered its last bytes.
            st.close_all(Some(id));
            self.changed.notify_all();
        }
        Some(Step::Forward {
            len,
            flip,
            due,
            last,
        })
    }

    /// Waits (for the rate limit) until `due`, and while paused; false if the connection closed.
    fn wait_due(&self, id: u64, due: Instant) -> bool {
        let mut st = self.lock();
        loop {
            if st.is_closed(id) {
                return false;
            }
            let now = Instant::now();
            if !st.paused && now >= due {
                return true;
            }
            let wait = if st.paused {
                Duration::from_secs(1)
            } else {
                due - now
            };
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Closes connection `id` (if still open), counting it as cut when `cut`.
    fn close(&self, id: u64, cut: bool) {
        let mut st = self.lock();
        if let Some(conn) = st.conns.get_mut(&id).filter(|c| !c.closed) {
            conn.close();
            if cut {
                st.cut += 1;
            }
        }
        self.changed.notify_all();
    }
}

impl State {
    fn is_closed(&self, id: u64) -> bool {
        self.conns.get(&id).is_none_or(|c| c.closed)
    }

    /// Closes every open connection but `except`, counting each as cut.
    fn close_all(&mut self, except: Option<u64>) {
        for (&id, conn) in &mut self.conns {
            if !conn.closed && Some(id) != except {
                conn.close();
                self.cut += 1;
            }
        }
    }

    /// How much to read at once: with a rate limit, about a twentieth of a second's worth.
    fn chunk_limit(&self) -> usize {
        self.rate.map_or(CHUNK, |rate| {
            usize::try_from(rate / 20).map_or(CHUNK, |n| n.clamp(1, CHUNK))
        })
    }

    fn stats(&self) -> ProxyStats {
        ProxyStats {
            to_upstream: self.flows[0].forwarded,
            to_client: self.flows[1].forwarded,
            accepted: self.accepted,
            refused: self.refused,
            cut: self.cut,
            live: self.conns.values().filter(|c| !c.closed).count() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError};

    use anyhow::ensure;

    use super::*;

    /// Long enough for anything to happen on a loaded machine: only a failing test waits this
    /// long.
    const WAIT: Duration = Duration::from_secs(20);
    /// How long a test watches for bytes that must not arrive.
    const QUIET: Duration = Duration::from_millis(300);

    /// `len` bytes that differ from their neighbours, so a shifted or flipped byte shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A server on loopback that runs `handle` on a thread per connection.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicU64>,
    }

    impl Server {
        fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Result<Server> {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let accepted = Arc::new(AtomicU64::new(0));
            let count = Arc::clone(&accepted);
            let handle = Arc::new(handle);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    count.fetch_add(1, Ordering::SeqCst);
                    let handle = Arc::clone(&handle);
                    std::thread::spawn(move || handle(stream));
                }
            });
            Ok(Server { addr, accepted })
        }

        fn accepted(&self) -> u64 {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    /// Sends back what it receives; passes EOF on.
    fn echo() -> Result<Server> {
        Server::start(|mut stream| {
            let Ok(mut reader) = stream.try_clone() else {
                return;
            };
            let _ = io::copy(&mut reader, &mut stream);
            let _ = stream.shutdown(Shutdown::Write);
        })
    }

    /// Sends `data` on every connection, then EOF.
    fn source(data: Vec<u8>) -> Result<Server> {
        Server::start(move |mut stream| {
            let _ = stream.write_all(&data);
            let _ = stream.shutdown(Shutdown::Write);
        })
    }

    /// What a sink's connections send, chunk by chunk: `Some(bytes)`, and `None` at EOF (or
    /// on an error).
    type Chunks = Receiver<Option<Vec<u8>>>;

    /// Reads every connection to its end and reports the chunks.
    fn sink() -> Result<(Server, Chunks)> {
        let (tx, rx) = mpsc::channel();
        let server = Server::start(move |mut stream| {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let _ = tx.send(Some(buf[..n].to_vec()));
                    }
                }
            }
            let _ = tx.send(None);
        })?;
        Ok((server, rx))
    }

    /// Receives exactly `len` bytes from a sink.
    fn recv_exact(chunks: &Chunks, len: usize) -> Result<Vec<u8>> {
        let mut got = Vec::new();
        while got.len() < len {
            match chunks.recv_timeout(WAIT)? {
                Some(chunk) => got.extend_from_slice(&chunk),
                None => bail!("EOF after {} of {len} bytes", got.len()),
            }
        }
        ensure!(got.len() == len, "{} bytes, not {len}", got.len());
        Ok(got)
    }

    /// Receives from a sink until a connection ends.
    fn recv_to_eof(chunks: &Chunks) -> Result<Vec<u8>> {
        let mut got = Vec::new();
        while let Some(chunk) = chunks.recv_timeout(WAIT)? {
            got.extend_from_slice(&chunk);
        }
        Ok(got)
    }

    /// Fails if a sink receives anything (bytes or EOF) within [`QUIET`].
    fn assert_quiet(chunks: &Chunks) -> Result<()> {
        match chunks.recv_timeout(QUIET) {
            Err(RecvTimeoutError::Timeout) => Ok(()),
            other => bail!("the sink received {other:?} while nothing should get through"),
        }
    }

    fn connect(addr: SocketAddr) -> Result<TcpStream> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(WAIT))?;
        Ok(stream)
    }

    /// Fails unless `stream` has been closed by the other side: EOF or a reset, no more data.
    fn assert_closed(stream: &mut TcpStream) -> Result<()> {
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf) {
            Ok(0) => Ok(()),
            Ok(n) => bail!("{n} more bytes instead of the end of the connection"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                bail!("the connection is still open after {WAIT:?}")
            }
            Err(_) => Ok(()), // Reset.
        }
    }

    /// Sends `data` through `addr` (writing on a thread, so that neither side waits on a full
    /// buffer), then EOF, and returns everything that comes back.
    fn round_trip(addr: SocketAddr, data: &[u8]) -> Result<Vec<u8>> {
        let mut stream = connect(addr)?;
        let mut writer = stream.try_clone()?;
        std::thread::scope(|s| {
            let sent = s.spawn(move || -> io::Result<()> {
                writer.write_all(data)?;
                writer.shutdown(Shutdown::Write)
            });
            let mut got = Vec::new();
            stream.read_to_end(&mut got)?;
            sent.join().expect("the writer thread does not panic")?;
            Ok(got)
        })
    }

    /// The offsets at which `got` differs from `want`, and whether the lengths differ.
    fn diff(want: &[u8], got: &[u8]) -> Result<Vec<usize>> {
        ensure!(
            got.len() == want.len(),
            "{} bytes, not {}",
            got.len(),
            want.len()
        );
        Ok((0..want.len()).filter(|&i| want[i] != got[i]).collect())
    }

    #[test]
    fn bytes_pass_unchanged_both_ways_and_are_counted() -> Result<()> {
        let upstream = echo()?;
        let proxy = FaultProxy::start(upstream.addr)?;
        let data = pattern(300_000);
        for _ in 0..2 {
            let got = round_trip(proxy.addr(), &data)?;
            ensure!(
                diff(&data, &got)?.is_empty(),
                "the bytes changed on the way"
            );
        }
        let stats = proxy.wait_until(WAIT, |s| s.live == 0)?;
        let want = ProxyStats {
            to_upstream: 600_000,
            to_client: 600_000,
            accepted: 2,
            refused: 0,
            cut: 0,
            live: 0,
        };
        ensure!(stats == want, "{stats:?}, not {want:?}");
        ensure!(
            upstream.accepted() == 2,
            "upstream saw {}",
            upstream.accepted()
        );
        Ok(())
    }

    #[test]
    fn cut_closes_every_live_connection_and_later_ones_work() -> Result<()> {
        let (upstream, chunks) = sink()?;
        let proxy = FaultProxy::start(upstream.addr)?;
        let mut a = connect(proxy.addr())?;
        let mut b = connect(proxy.addr())?;
        a.write_all(b"a")?;
        b.write_all(b"b")?;
        let mut got = recv_exact(&chunks, 2)?;
        got.sort_unstable();
        ensure!(got == b"ab", "{got:?}");
        ensure!(proxy.stats().live == 2, "{:?}", proxy.stats());

        proxy.cut();
        let stats = proxy.stats();
        ensure!(stats.cut == 2 && stats.live == 0, "{stats:?}");
        assert_closed(&mut a)?;
        assert_closed(&mut b)?;
        // Upstream sees both connections end.
        for _ in 0..2 {
            ensure!(chunks.recv_timeout(WAIT)?.is_none(), "data after the cut");
        }

        let mut c = connect(proxy.addr())?;
        c.write_all(b"again")?;
        c.shutdown(Shutdown::Write)?;
        let got = recv_to_eof(&chunks)?;
        ensure!(got == b"again", "{got:?}");
        ensure!(proxy.stats().accepted == 3, "{:?}", proxy.stats());
        Ok(())
    }

    #[test]
    fn pause_holds_bytes_both_ways_and_resume_delivers_them() -> Result<()> {
        // Client → upstream, on a connection that was already carrying data.
        let (upstream, chunks) = sink()?;
        let proxy = FaultProxy::start(upstream.addr)?;
        let mut client = connect(proxy.addr())?;
        client.write_all(b"before")?;
        ensure!(recv_exact(&chunks, 6)? == b"before");
        proxy.pause();
        // Less than the socket buffers hold, so that the write does not wait for the resume.
        let data = pattern(60_000);
        client.write_all(&data)?;
        client.shutdown(Shutdown::Write)?;
        assert_quiet(&chunks)?;
        ensure!(
            proxy.stats().live == 1,
            "the connection closed while paused"
        );
        proxy.resume();
        ensure!(diff(&data, &recv_to_eof(&chunks)?)?.is_empty());

        // Upstream → client, paused before the connection opens.
        let data = pattern(50_000);
        let upstream = source(data.clone())?;
        let proxy = FaultProxy::start(upstream.addr)?;
        proxy.pause();
        let mut client = connect(proxy.addr())?;
        let deadline = Instant::now() + WAIT;
        while upstream.accepted() == 0 {
            ensure!(
                Instant::now() < deadline,
                "the proxy did not dial upstream while paused"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        client.set_read_timeout(Some(QUIET))?;
        let mut buf = [0u8; 1024];
        match client.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => bail!("the client read {other:?} while paused"),
        }
        client.set_read_timeout(Some(WAIT))?;
        proxy.resume();
        let mut got = Vec::new();
        client.read_to_end(&mut got)?;
        ensure!(diff(&data, &got)?.is_empty());
        Ok(())
    }

    #[test]
    fn refuse_closes_new_connections_without_dialing_upstream() -> Result<()> {
        let upstream = echo()?;
        let proxy = FaultProxy::start(upstream.addr)?;
        let mut live = connect(proxy.addr())?;
        live.write_all(b"1")?;
        let mut buf = [0u8; 1];
        live.read_exact(&mut buf)?;

        proxy.refuse(true);
        let mut refused = connect(proxy.addr())?;
        assert_closed(&mut refused)?;
        let stats = proxy.stats();
        ensure!(stats.refused == 1 && stats.accepted == 1, "{stats:?}");
        ensure!(
            upstream.accepted() == 1,
            "the refused connection reached upstream"
        );
        // The connection that was open before still works.
        live.write_all(b"2")?;
        live.read_exact(&mut buf)?;
        ensure!(&buf == b"2");

        proxy.refuse(false);
        ensure!(round_trip(proxy.addr(), b"back")? == b"back");
        ensure!(proxy.stats().accepted == 2, "{:?}", proxy.stats());
        Ok(())
    }

    #[test]
    fn truncate_delivers_exactly_n_more_bytes_then_eof() -> Result<()> {
        let (upstream, chunks) = sink()?;
        let proxy = FaultProxy::start(upstream.addr)?;
        let mut client = connect(proxy.addr())?;
        let first = pattern(100);
        client.write_all(&first)?;
        ensure!(recv_exact(&chunks, 100)? == first);

        proxy.truncate_after(50);
        let rest = pattern(20_000);
        // The proxy may close before it has read everything: the write can fail.
        let _ = client.write_all(&rest);
        let got = recv_to_eof(&chunks)?;
        ensure!(
            got == rest[..50],
            "{} bytes after the truncation, not 50",
            got.len()
        );
        assert_closed(&mut client)?;
        let stats = proxy.stats();
        ensure!(stats.cut == 1 && stats.to_upstream == 150, "{stats:?}");

        // Once: the next connection is whole.
        let mut client = connect(proxy.addr())?;
        client.write_all(&rest)?;
        client.shutdown(Shutdown::Write)?;
        ensure!(diff(&rest, &recv_to_eof(&chunks)?)?.is_empty());
        Ok(())
    }

    #[test]
    fn truncate_towards_the_client_armed_before_it_connects() -> Result<()> {
        let data = pattern(50_000);
        let upstream = source(data.clone())?;
        let proxy = FaultProxy::start(upstream.addr)?;
        proxy.truncate_after_in(Direction::ToClient, 1234);
        let mut client = connect(proxy.addr())?;
        let mut got = Vec::new();
        client.read_to_end(&mut got)?;
        ensure!(got == data[..1234], "{} bytes, not 1234", got.len());
        let stats = proxy.stats();
        ensure!(stats.cut == 1 && stats.to_client == 1234, "{stats:?}");
        Ok(())
    }

    #[test]
    fn corrupt_flips_exactly_one_byte_at_the_offset_once() -> Result<()> {
        let (upstream, chunks) = sink()?;
        let proxy = FaultProxy::start(upstream.addr)?;
        let mut client = connect(proxy.addr())?;
        let first = pattern(1000);
        client.write_all(&first)?;
        ensure!(recv_exact(&chunks, 1000)? == first);

        proxy.corrupt_after(777);
        let data = pattern(100_000);
        client.write_all(&data)?;
        client.shutdown(Shutdown::Write)?;
        let got = recv_to_eof(&chunks)?;
        ensure!(diff(&data, &got)? == [777], "{:?}", diff(&data, &got)?);
        ensure!(
            got[777] == data[777] ^ 0xFF,
            "the byte was not xor'ed with 0xFF"
        );

        // Once: the next connection is whole.
        ensure!(diff(&data, &round_trip_sink(&proxy, &chunks, &data)?)?.is_empty());
        ensure!(proxy.stats().to_upstream == 201_000, "{:?}", proxy.stats());

        // Towards the client.
        let upstream = source(data.clone())?;
        let proxy = FaultProxy::start(upstream.addr)?;
        proxy.corrupt_after_in(Direction::ToClient, 0);
        let mut client = connect(proxy.addr())?;
        let mut got = Vec::new();
        client.read_to_end(&mut got)?;
        ensure!(diff(&data, &got)? == [0], "{:?}", diff(&data, &got)?);
        Ok(())
    }

    /// Sends `data` and EOF through the proxy to a sink; returns what the sink received.
    fn round_trip_sink(proxy: &FaultProxy, chunks: &Chunks, data: &[u8]) -> Result<Vec<u8>> {
        let mut client = connect(proxy.addr())?;
        client.write_all(data)?;
        client.shutdown(Shutdown::Write)?;
        recv_to_eof(chunks)
    }

    #[test]
    fn rate_limit_slows_the_link_and_keeps_the_bytes() -> Result<()> {
        let (upstream, chunks) = sink()?;
        let proxy = FaultProxy::start(upstream.addr)?;
        proxy.rate_limit(Some(20_000));
        let data = pattern(10_000);
        let start = Instant::now();
        let got = round_trip_sink(&proxy, &chunks, &data)?;
        let took = start.elapsed();
        ensure!(diff(&data, &got)?.is_empty());
        // 10 kB at 20 kB/s take half a second; only a lower bound is safe to assert.
        ensure!(took >= Duration::from_millis(450), "took {took:?}");

        proxy.rate_limit(None);
        ensure!(diff(&data, &round_trip_sink(&proxy, &chunks, &data)?)?.is_empty());
        Ok(())
    }

    #[test]
    fn drop_closes_the_connections_and_the_listener() -> Result<()> {
        let upstream = echo()?;
        let proxy = FaultProxy::start(upstream.addr)?;
        let addr = proxy.addr();
        let mut client = connect(addr)?;
        client.write_all(b"x")?;
        let mut buf = [0u8; 1];
        client.read_exact(&mut buf)?;
        drop(proxy);
        assert_closed(&mut client)?;
        ensure!(
            TcpStream::connect(addr).is_err(),
            "the proxy's port still accepts"
        );
        Ok(())
    }
}
