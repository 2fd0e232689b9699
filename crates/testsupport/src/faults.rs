//! A TCP proxy that injects network faults, for tests of code that talks to a server.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1` (a port of its own) and forwards every client
//! connection to an upstream address, byte for byte, in both directions. What it does to the
//! traffic is a [`Fault`], switched at any time with [`FaultProxy::set_fault`]: slow first bytes,
//! a throttled response stream, a connection reset or a clean close after so many response bytes,
//! or a server that is down (connections refused). Faults act on the *response* direction (from
//! the upstream to the client); requests are always forwarded as they come.
//!
//! The proxy knows nothing of HTTP: a "response" is whatever the upstream sends, and "the first
//! byte of a response" is the first byte the upstream sends after the client has sent something
//! (which, for a request/response protocol such as HTTP/1.1 without pipelining, is exactly that).
//!
//! It is plain std threads (one to accept, two per connection), so it serves any client, blocking
//! or async, and needs no runtime.
//!
//! ```no_run
//! use std::time::Duration;
//! use mmtensor_testsupport::faults::{Fault, FaultProxy};
//!
//! let upstream = "127.0.0.1:9000".parse().unwrap();
//! let proxy = FaultProxy::start(upstream).unwrap();
//! let endpoint = proxy.endpoint(); // "http://127.0.0.1:PORT": point the client here
//!
//! // Every connection is reset after 1 MiB of response, from now on.
//! proxy.set_fault(Fault::Reset { after: 1 << 20 }, None);
//! // Only the next 2 connections answer after a second; later ones pass.
//! proxy.set_fault(Fault::Delay(Duration::from_secs(1)), Some(2));
//! // The server is down: connections are refused, open ones are cut.
//! proxy.set_fault(Fault::Down, None);
//! // Back up, on the same port.
//! proxy.set_fault(Fault::Pass, None);
//! assert!(proxy.stats().connections <= 2);
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to the traffic of a connection (see [`FaultProxy::set_fault`]).
///
/// Byte counts (`after`) are response bytes forwarded to the client on one connection, counted
/// from when the fault took effect on it: from its start for a connection that was given the
/// fault when accepted, from the switch for an open connection that follows the every-connection
/// fault.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Forward everything at once, unchanged.
    Pass,
    /// Hold back the first byte of each response for this long (time to first byte); the rest
    /// of the response flows at once.
    Delay(Duration),
    /// Forward responses at no more than this many bytes per second, per connection (in bursts
    /// of at most a twentieth of a second's worth). 0 counts as 1.
    Throttle {
        /// The rate, per connection.
        bytes_per_sec: u64,
    },
    /// Forward `after` response bytes, then reset the client's connection (`SO_LINGER` 0, then
    /// close: the client reads `ECONNRESET`) when the upstream sends more. A response that ends
    /// within `after` bytes gets through whole. The reset discards what is still in flight, so
    /// the client may read fewer than `after` bytes before the error.
    Reset {
        /// Response bytes that get through first.
        after: u64,
    },
    /// Forward `after` response bytes, then close the client's connection cleanly (FIN) when the
    /// upstream sends more: the client sees a response whose body ends short.
    Truncate {
        /// Response bytes that get through first.
        after: u64,
    },
    /// The server is down. As the every-connection fault: the proxy stops listening (connecting
    /// fails with `ECONNREFUSED`) and closes every open connection; any other fault set later
    /// listens again on the same port. As a fault for the next `n` connections: each is
    /// accepted and reset at once, without reaching the upstream.
    Down,
}

/// The proxy's counters, since it started ([`FaultProxy::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Client connections accepted (including those reset at once by a counted [`Fault::Down`]).
    pub connections: u64,
    /// Bytes forwarded from the upstream to clients (counted as each write to a client starts).
    pub bytes_to_client: u64,
    /// Bytes forwarded from clients to the upstream (counted as each write starts).
    pub bytes_to_upstream: u64,
    /// Connections the proxy cut: by [`Fault::Reset`], [`Fault::Truncate`] or [`Fault::Down`], or
    /// because the upstream could not be reached.
    pub cut: u64,
}

/// A fault-injecting TCP proxy in front of one upstream address (see the [module docs](self)).
///
/// Dropping it stops listening and closes every connection it forwards.
pub struct FaultProxy {
    shared: Arc<Shared>,
    /// The accepting thread and a handle on its listener; `None` while down.
    acceptor: Mutex<Option<Acceptor>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.shared.addr)
            .field("upstream", &self.shared.upstream)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What the proxy's threads share.
struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    control: Mutex<Control>,
    /// Open connections, to cut them when the proxy goes down or is dropped.
    live: Mutex<HashMap<u64, Live>>,
    next_id: AtomicU64,
    connections: AtomicU64,
    to_client: AtomicU64,
    to_upstream: AtomicU64,
    cut: AtomicU64,
}

/// The current setting.
struct Control {
    /// The fault of every connection not given one of its own when accepted.
    every: Fault,
    /// Bumped whenever `every` changes, so an open connection restarts its byte count.
    epoch: u64,
    /// The fault some of the next connections get, each as it is accepted.
    next: Option<Counted>,
}

/// Which of the next connections get a fault of their own.
enum Counted {
    /// The next `left` connections.
    Next { fault: Fault, left: usize },
    /// Every `n`th connection, the first one among them.
    EveryNth {
        fault: Fault,
        n: usize,
        /// Connections accepted since the setting.
        seen: usize,
    },
}

impl Counted {
    /// The fault of the connection just accepted, if it gets one; `false` once the setting is
    /// spent.
    fn take(&mut self) -> (Option<Fault>, bool) {
        match self {
            Counted::Next { fault, left } => {
                *left -= 1;
                (Some(fault.clone()), *left > 0)
            }
            Counted::EveryNth { fault, n, seen } => {
                let hit = *seen % *n == 0;
                *seen += 1;
                (hit.then(|| fault.clone()), true)
            }
        }
    }
}

/// An open connection's sockets, held weakly: the last of its own threads to finish closes them.
struct Live {
    client: Weak<TcpStream>,
    upstream: Weak<TcpStream>,
}

struct Acceptor {
    /// The listener's socket (a duplicate descriptor), to wake the blocked `accept`.
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy listening on `127.0.0.1` (a free port) that forwards to `upstream`, passing
    /// everything until a fault is set.
    ///
    /// # Errors
    /// When it cannot listen.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let shared = Arc::new(Shared {
            addr: listener.local_addr()?,
            upstream,
            control: Mutex::new(Control {
                every: Fault::Pass,
                epoch: 0,
                next: None,
            }),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            to_upstream: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        });
        let acceptor = Acceptor::spawn(&shared, listener)?;
        Ok(FaultProxy {
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    /// The address clients connect to (`127.0.0.1`, the same port for the proxy's life).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`, the proxy's address as an HTTP endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Sets what the proxy does from now on; each call replaces the previous setting.
    ///
    /// - `times: None`: every connection gets `fault`: those accepted from now on, and the open
    ///   ones that follow this setting (all but those given a fault of their own by a counted
    ///   setting), whose bytes flowing from now on are affected. [`Fault::Down`] stops listening
    ///   and closes every open connection; any other fault after it listens again on the same
    ///   port. The call returns once the change holds: after `Down`, connecting fails.
    /// - `times: Some(n)`: the next `n` connections accepted get `fault`, for their whole life;
    ///   the connections after them (and the open ones that follow the every-connection setting)
    ///   pass, as if `Pass` had been set. A counted [`Fault::Down`] resets each of the `n`
    ///   connections as soon as it is accepted. (Every `n`th connection instead:
    ///   [`FaultProxy::set_fault_every_nth`].)
    ///
    /// # Panics
    /// When the port cannot be listened on again after `Down` (another process took it), after
    /// retrying for a few seconds.
    pub fn set_fault(&self, fault: Fault, times: Option<usize>) {
        let (every, next) = match times {
            None => (fault, None),
            Some(left) => (
                Fault::Pass,
                (left > 0).then_some(Counted::Next { fault, left }),
            ),
        };
        self.set(every, next);
    }

    /// Intermittent faults: the next connection accepted gets `fault` for its whole life, and
    /// so does every `n`th one after it (connections 1, n + 1, 2n + 1, ... from now on); the
    /// others, and the open connections that follow the every-connection setting, pass. `n` of 0
    /// counts as 1 (every connection). A client that retries a failed request on a new
    /// connection then always gets through within `n` tries. Replaces the previous setting, as
    /// [`FaultProxy::set_fault`] does, and brings a proxy that was down back up.
    ///
    /// # Panics
    /// As [`FaultProxy::set_fault`].
    pub fn set_fault_every_nth(&self, fault: Fault, n: usize) {
        let next = Counted::EveryNth {
            fault,
            n: n.max(1),
            seen: 0,
        };
        self.set(Fault::Pass, Some(next));
    }

    fn set(&self, every: Fault, next: Option<Counted>) {
        let mut acceptor = lock(&self.acceptor);
        let down = every == Fault::Down;
        {
            let mut c = lock(&self.shared.control);
            if c.every != every {
                c.every = every;
                c.epoch += 1;
            }
            c.next = next;
        }
        match (down, acceptor.is_some()) {
            (true, true) => {
                if let Some(a) = acceptor.take() {
                    a.stop();
                }
                self.shared.cut_all();
            }
            (false, false) => *acceptor = Some(self.relisten()),
            _ => {}
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            connections: s.connections.load(Ordering::Relaxed),
            bytes_to_client: s.to_client.load(Ordering::Relaxed),
            bytes_to_upstream: s.to_upstream.load(Ordering::Relaxed),
            cut: s.cut.load(Ordering::Relaxed),
        }
    }

    /// Listens on the proxy's port again (after `Down`), retrying while the port is busy.
    fn relisten(&self) -> Acceptor {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // std sets SO_REUSEADDR on listeners: connections of the old listener lingering in
            // TIME_WAIT do not block the port.
            match TcpListener::bind(self.shared.addr).and_then(|l| Acceptor::spawn(&self.shared, l))
            {
                Ok(a) => return a,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "fault proxy: cannot listen on {} again: {e}",
                        self.shared.addr
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(a) = lock(&self.acceptor).take() {
            a.stop();
        }
        self.shared.cut_all();
    }
}

impl Acceptor {
    fn spawn(shared: &Arc<Shared>, listener: TcpListener) -> io::Result<Acceptor> {
        let handle = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fault-proxy-accept".into())
                .spawn(move || accept_loop(&shared, &listener, &stop))?
        };
        Ok(Acceptor {
            listener: handle,
            stop,
            thread,
        })
    }

    /// Stops accepting and closes the listener: connecting fails from when this returns.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown only reads its integer arguments; the descriptor is open (owned by
        // `self.listener`) for the duration of the call. On Linux, shutting a listening socket
        // down makes the `accept` blocked on it in the other thread return an error.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = self.thread.join();
        // Both descriptors of the listener are closed once `self.listener` drops here.
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((client, _)) = accepted else {
            // A client that gave up before it was accepted (ECONNABORTED) and the like.
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let own = {
            let mut c = lock(&shared.control);
            match c.next.as_mut().map(Counted::take) {
                Some((own, more)) => {
                    if !more {
                        c.next = None;
                    }
                    own
                }
                None => None,
            }
        };
        if own == Some(Fault::Down) {
            shared.cut.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            continue;
        }
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("fault-proxy-conn".into())
            .spawn(move || serve(&shared, client, own));
        // A thread that cannot start drops its connection, which the client sees as a reset.
        drop(spawned);
    }
}

impl Shared {
    /// Closes every open connection, both ways (the client sees a clean close, mid-response if
    /// one was flowing).
    fn cut_all(&self) {
        let live: Vec<[Option<Arc<TcpStream>>; 2]> = lock(&self.live)
            .values()
            .map(|l| [l.client.upgrade(), l.upstream.upgrade()])
            .collect();
        for [client, upstream] in live {
            if let Some(c) = client {
                self.cut.fetch_add(1, Ordering::Relaxed);
                let _ = c.shutdown(Shutdown::Both);
            }
            if let Some(u) = upstream {
                let _ = u.shutdown(Shutdown::Both);
            }
        }
    }

    /// Whether the proxy is down (every connection's fault is `Down`).
    fn is_down(&self) -> bool {
        lock(&self.control).every == Fault::Down
    }
}

/// One client connection: connects to the upstream, then forwards requests on a thread of its
/// own and responses (where the faults act) on this one.
fn serve(shared: &Arc<Shared>, client: TcpStream, own: Option<Fault>) {
    let upstream = match TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(10)) {
        Ok(u) => u,
        Err(_) => {
            shared.cut.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client, upstream) = (Arc::new(client), Arc::new(upstream));
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&shared.live).insert(
        id,
        Live {
            client: Arc::downgrade(&client),
            upstream: Arc::downgrade(&upstream),
        },
    );
    // Accepted just before the proxy went down, and registered after it cut the others.
    if shared.is_down() {
        shared.cut.fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    }
    let request_sent = Arc::new(AtomicBool::new(false));
    let requests = {
        let (shared, client, upstream, request_sent) = (
            shared.clone(),
            client.clone(),
            upstream.clone(),
            request_sent.clone(),
        );
        std::thread::Builder::new()
            .name("fault-proxy-up".into())
            .spawn(move || forward_requests(&shared, &client, &upstream, &request_sent))
    };
    let mut responses = Responses {
        shared,
        client: &client,
        upstream: &upstream,
        own,
        request_sent: &request_sent,
        epoch: None,
        sent: 0,
        next_at: Instant::now(),
    };
    responses.run();
    if let Ok(t) = requests {
        let _ = t.join();
    }
    lock(&shared.live).remove(&id);
    // The last references to the sockets drop here, closing them (with a reset if one was set).
}

/// Client to upstream, unchanged. Ends at the client's EOF (passed on as a half-close) or when
/// either socket fails or is shut down.
fn forward_requests(
    shared: &Shared,
    client: &TcpStream,
    upstream: &TcpStream,
    request_sent: &AtomicBool,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match (&*client).read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = upstream.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                request_sent.store(true, Ordering::SeqCst);
                // Counted before the write: once it is written, the response (and a test's look
                // at the counts) may come before this thread runs again.
                shared.to_upstream.fetch_add(n as u64, Ordering::Relaxed);
                if (&*upstream).write_all(&buf[..n]).is_err() {
                    let _ = client.shutdown(Shutdown::Read);
                    return;
                }
            }
        }
    }
}

/// Upstream to client, through the connection's fault.
struct Responses<'a> {
    shared: &'a Shared,
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    /// The fault given to this connection when accepted, else it follows the every-connection one.
    own: Option<Fault>,
    request_sent: &'a AtomicBool,
    /// The epoch of the every-connection fault last seen.
    epoch: Option<u64>,
    /// Bytes forwarded since the fault took effect on this connection.
    sent: u64,
    /// When the throttle lets the next burst go.
    next_at: Instant,
}

/// How a connection ends when its fault cuts it.
#[derive(Clone, Copy)]
enum Cut {
    Reset,
    Close,
}

impl Responses<'_> {
    fn run(&mut self) {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // With nothing left to let through, one byte is read to learn whether the upstream
            // sends more (the fault cuts then) or ends here (the response got through whole).
            let want = match self.fault() {
                Fault::Throttle { bytes_per_sec } => bytes_per_sec.max(1) / 20,
                Fault::Reset { after } | Fault::Truncate { after } => {
                    after.saturating_sub(self.sent)
                }
                _ => buf.len() as u64,
            }
            .clamp(1, buf.len() as u64) as usize;
            let n = match (&*self.upstream).read(&mut buf[..want]) {
                Ok(0) | Err(_) => {
                    let _ = self.client.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => n,
            };
            let first_of_response = self.request_sent.swap(false, Ordering::SeqCst);
            // The fault may have changed while the read waited.
            let (pass, cut) = match self.fault() {
                Fault::Pass => (n, None),
                // Going down: nothing more gets through. `set` publishes `Down` before it stops
                // listening and cuts the open connections; forwarding in between let a whole
                // response through at full speed (a flaky test under load). The cut ends this.
                Fault::Down => (0, None),
                Fault::Delay(d) => {
                    if first_of_response {
                        std::thread::sleep(d);
                    }
                    (n, None)
                }
                Fault::Throttle { bytes_per_sec } => {
                    let now = Instant::now();
                    if self.next_at > now {
                        std::thread::sleep(self.next_at - now);
                    }
                    let secs = n as f64 / bytes_per_sec.max(1) as f64;
                    self.next_at = self.next_at.max(now) + Duration::from_secs_f64(secs);
                    (n, None)
                }
                Fault::Reset { after } => (self.allowed(after, n), Some(Cut::Reset)),
                Fault::Truncate { after } => (self.allowed(after, n), Some(Cut::Close)),
            };
            if pass > 0 {
                // Counted before the write, as the requests are: the client may have read the
                // bytes, and looked at the counts, before this thread runs again.
                self.sent += pass as u64;
                self.shared
                    .to_client
                    .fetch_add(pass as u64, Ordering::Relaxed);
                if (&*self.client).write_all(&buf[..pass]).is_err() {
                    let _ = self.upstream.shutdown(Shutdown::Both);
                    return;
                }
            }
            if let (Some(how), true) = (cut, pass < n) {
                self.cut(how);
                return;
            }
        }
    }

    /// How many of `n` bytes a fault that cuts `after` bytes lets through.
    fn allowed(&self, after: u64, n: usize) -> usize {
        after.saturating_sub(self.sent).min(n as u64) as usize
    }

    /// The fault in force, restarting the byte count when the every-connection fault changed.
    fn fault(&mut self) -> Fault {
        if let Some(f) = &self.own {
            return f.clone();
        }
        let c = lock(&self.shared.control);
        if self.epoch != Some(c.epoch) {
            self.epoch = Some(c.epoch);
            self.sent = 0;
            self.next_at = Instant::now();
        }
        c.every.clone()
    }

    /// Ends the connection as the fault says: the client sees a reset or a clean close.
    fn cut(&self, how: Cut) {
        self.shared.cut.fetch_add(1, Ordering::Relaxed);
        match how {
            Cut::Reset => reset(self.client),
            Cut::Close => {
                let _ = self.client.shutdown(Shutdown::Write);
                let _ = self.client.shutdown(Shutdown::Read);
            }
        }
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

/// Makes the socket's close a reset (`SO_LINGER` 0) and wakes whoever reads it; the reset is
/// sent when the last reference to the socket drops.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a pointer to a live local
    // `linger`; the descriptor is open (owned by `stream`) for the duration of the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Read);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// A tiny HTTP/1.1 server: every request gets `body`, with keep-alive unless the request
    /// says `Connection: close`.
    fn upstream(body: Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(body);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut close = false;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => {
                                    close |= line.eq_ignore_ascii_case("connection: close\r\n")
                                }
                            }
                        }
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        if conn.write_all(head.as_bytes()).is_err()
                            || conn.write_all(&body).is_err()
                        {
                            return;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn response(body: &[u8]) -> Vec<u8> {
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    }

    const CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    const KEEP: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// One request on a new connection that the server closes after answering: the raw response.
    fn fetch(proxy: &FaultProxy) -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(proxy.addr())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(CLOSE)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn pass_forwards_both_ways_and_counts() {
        let b = body(100_000);
        let proxy = FaultProxy::start(upstream(b.clone())).unwrap();
        assert!(proxy.endpoint().starts_with("http://127.0.0.1:"));
        // Two requests on one kept-alive connection, then one on a connection of its own.
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        let want = response(&b);
        for _ in 0..2 {
            s.write_all(KEEP).unwrap();
            let mut got = vec![0; want.len()];
            s.read_exact(&mut got).unwrap();
            assert!(got == want);
        }
        assert!(fetch(&proxy).unwrap() == want);
        let stats = proxy.stats();
        assert_eq!(stats.connections, 2);
        assert_eq!(stats.bytes_to_client, 3 * want.len() as u64);
        assert_eq!(
            stats.bytes_to_upstream,
            (2 * KEEP.len() + CLOSE.len()) as u64
        );
        assert_eq!(stats.cut, 0);
    }

    #[test]
    fn truncate_closes_cleanly_after_exactly_n_bytes() {
        let b = body(100_000);
        let proxy = FaultProxy::start(upstream(b.clone())).unwrap();
        proxy.set_fault(Fault::Truncate { after: 1000 }, None);
        let got = fetch(&proxy).expect("a clean close, not an error");
        assert!(got == response(&b)[..1000]);
        assert_eq!(proxy.stats().cut, 1);
    }

    #[test]
    fn reset_after_n_bytes_is_a_connection_reset() {
        let b = body(1 << 20);
        let proxy = FaultProxy::start(upstream(b)).unwrap();
        proxy.set_fault(Fault::Reset { after: 1000 }, None);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(CLOSE).unwrap();
        let mut got = Vec::new();
        let err = s.read_to_end(&mut got).expect_err("a reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        assert!(got.len() <= 1000, "{}", got.len());
        assert_eq!(proxy.stats().cut, 1);
    }

    #[test]
    fn a_response_within_the_allowance_gets_through_whole() {
        let b = body(5000);
        let want = response(&b);
        let proxy = FaultProxy::start(upstream(b)).unwrap();
        proxy.set_fault(
            Fault::Reset {
                after: want.len() as u64,
            },
            None,
        );
        assert!(fetch(&proxy).unwrap() == want);
        // On a kept-alive connection the allowance is spent: the second response is cut.
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(KEEP).unwrap();
        let mut got = vec![0; want.len()];
        s.read_exact(&mut got).unwrap();
        s.write_all(KEEP).unwrap();
        let mut rest = Vec::new();
        assert!(s.read_to_end(&mut rest).is_err());
        assert!(rest.is_empty());
        assert_eq!(proxy.stats().cut, 1);
    }

    #[test]
    fn counted_faults_hit_only_the_next_n_connections() {
        let b = body(10_000);
        let want = response(&b);
        let proxy = FaultProxy::start(upstream(b)).unwrap();
        proxy.set_fault(Fault::Truncate { after: 10 }, Some(2));
        assert!(fetch(&proxy).unwrap() == want[..10]);
        assert!(fetch(&proxy).unwrap() == want[..10]);
        assert!(fetch(&proxy).unwrap() == want);
        // A counted Down resets the connection at once, without reaching the upstream.
        proxy.set_fault(Fault::Down, Some(1));
        assert!(fetch(&proxy).map_or(true, |r| r.is_empty()));
        assert!(fetch(&proxy).unwrap() == want);
        let stats = proxy.stats();
        assert_eq!((stats.connections, stats.cut), (5, 3));
    }

    #[test]
    fn every_nth_connection_gets_the_fault() {
        let b = body(10_000);
        let want = response(&b);
        let proxy = FaultProxy::start(upstream(b)).unwrap();
        proxy.set_fault_every_nth(Fault::Truncate { after: 10 }, 3);
        let short: Vec<bool> = (0..7).map(|_| fetch(&proxy).unwrap() != want).collect();
        assert_eq!(short, [true, false, false, true, false, false, true]);
        assert_eq!(proxy.stats().cut, 3);
    }

    #[test]
    fn down_refuses_and_cuts_then_pass_listens_on_the_same_port() {
        let b = body(4 << 20);
        let want = response(&b);
        let proxy = FaultProxy::start(upstream(b)).unwrap();
        let addr = proxy.addr();
        // A response flowing slowly when the server goes down.
        proxy.set_fault(
            Fault::Throttle {
                bytes_per_sec: 64 << 10,
            },
            None,
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(CLOSE).unwrap();
        let mut first = [0u8; 100];
        s.read_exact(&mut first).unwrap();
        proxy.set_fault(Fault::Down, None);
        let err = TcpStream::connect(addr).expect_err("nothing listens while down");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(100 + rest.len() < want.len(), "the open connection was cut");
        assert!(proxy.stats().cut >= 1);

        proxy.set_fault(Fault::Pass, None);
        assert_eq!(proxy.addr(), addr);
        assert!(fetch(&proxy).unwrap() == want);
    }

    #[test]
    fn delay_holds_back_the_first_byte_of_each_response() {
        let b = body(1000);
        let want = response(&b);
        let proxy = FaultProxy::start(upstream(b)).unwrap();
        proxy.set_fault(Fault::Delay(Duration::from_secs(3)), None);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(KEEP).unwrap();
        // Nothing arrives for a while (a slow machine only makes this likelier)...
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut one = [0u8; 1];
        let err = s.read(&mut one).expect_err("held back");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        // ...then the whole response does.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = vec![0; want.len()];
        s.read_exact(&mut got).unwrap();
        assert!(got == want);
    }

    #[test]
    fn throttle_slows_responses_and_a_switch_applies_to_open_connections() {
        let b = body(4 << 20);
        let want = response(&b);
        let proxy = FaultProxy::start(upstream(b)).unwrap();
        proxy.set_fault(
            Fault::Throttle {
                bytes_per_sec: 16 << 10,
            },
            None,
        );
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(CLOSE).unwrap();
        // At 16 KiB/s the 4 MiB take minutes: half a second brings a small part of them.
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        while start.elapsed() < Duration::from_millis(500) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the response ended early");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.len() < want.len() / 2, "{} bytes", got.len());
        // The open connection follows the every-connection fault: it speeds up.
        proxy.set_fault(Fault::Pass, None);
        s.read_to_end(&mut got).unwrap();
        assert!(got == want);
    }

    #[test]
    fn an_unreachable_upstream_resets_the_client() {
        let gone = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = FaultProxy::start(gone).unwrap();
        assert!(fetch(&proxy).map_or(true, |r| r.is_empty()));
        assert_eq!(proxy.stats().cut, 1);
    }
}
