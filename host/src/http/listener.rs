//! Accepts TCP connections and serves HTTP/1.1 on them within the
//! connection limits, so that slow or idle clients cannot make the server
//! unreachable:
//!
//! * a request's headers must arrive within `header_read` of its first byte;
//! * a connection with no request in progress (new, keep-alive, or whose
//!   client is slow to read its last response) is closed after `idle`;
//! * at most `max_connections` are open: past that, the connection that has
//!   been waiting longest without a request in progress is closed to admit
//!   the new one (a well-behaved client sends its request at once, so it
//!   always gets in; if the waiting ones are all too fresh to close, it
//!   waits until one is not); when every connection is busy, the new one
//!   is closed.
//!
//! Request bodies have their own deadline (`http::body::read_body`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{header, HeaderValue};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// The connection limits of `serve`.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub header_read: Duration,
    pub idle: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for the requests in progress to finish.
    pub drain: Duration,
}

/// How long a connection must have waited before the cap may close it.
const EVICTABLE_AFTER: Duration = Duration::from_millis(100);

/// What a connection is doing, as far as its deadlines are concerned.
const IDLE: u8 = 0;
const HEADERS: u8 = 1;
const BUSY: u8 = 2;
const CLOSING: u8 = 3;

/// One open connection: its phase, since when, and how to close it.
struct Conn {
    phase: AtomicU8,
    /// Milliseconds since the registry's epoch when the phase began.
    since: AtomicU64,
    requests: AtomicUsize,
    close: Notify,
}

/// Every open connection, for the cap, eviction and the deadline sweep.
struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    /// How many of `open` are being closed (changed only under its lock).
    closing: AtomicUsize,
    limits: ConnectionLimits,
}

impl Registry {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        match self.open.lock() {
            Ok(open) => open,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn add(&self) -> (u64, Arc<Conn>) {
        let conn = Arc::new(Conn {
            phase: AtomicU8::new(IDLE),
            since: AtomicU64::new(self.now()),
            requests: AtomicUsize::new(0),
            close: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open().insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        let mut open = self.open();
        if let Some(conn) = open.remove(&id) {
            if conn.phase.load(Ordering::Relaxed) == CLOSING {
                self.closing.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Open connections not already being closed.
    fn live(&self) -> usize {
        let open = self.open();
        open.len().saturating_sub(self.closing.load(Ordering::Relaxed))
    }

    /// Tells a connection to close (the caller holds the `open` lock).
    fn close(&self, conn: &Conn) {
        if conn.phase.swap(CLOSING, Ordering::Relaxed) != CLOSING {
            self.closing.fetch_add(1, Ordering::Relaxed);
            conn.close.notify_one();
        }
    }

    /// Closes the connections that have waited longest without a request in
    /// progress — a small share of the cap at once, so that under a flood
    /// the scan is paid once per many accepted connections; false when every
    /// connection is busy.
    fn evict_oldest_waiting(&self) -> bool {
        let open = self.open();
        let mut waiting: Vec<&Arc<Conn>> =
            open.values().filter(|c| self.evictable(c)).collect();
        if waiting.is_empty() {
            return false;
        }
        let share = (self.limits.max_connections / 64).clamp(1, waiting.len());
        if share < waiting.len() {
            waiting.select_nth_unstable_by_key(share - 1, |c| c.since.load(Ordering::Relaxed));
        }
        for conn in &waiting[..share] {
            self.close(conn);
        }
        true
    }

    /// Waiting without a request in progress for at least [`EVICTABLE_AFTER`]
    /// (a connection that has just answered, or just connected, is spared).
    fn evictable(&self, conn: &Conn) -> bool {
        matches!(conn.phase.load(Ordering::Relaxed), IDLE | HEADERS)
            && self.now().saturating_sub(conn.since.load(Ordering::Relaxed)) >= EVICTABLE_AFTER.as_millis() as u64
    }

    /// How long until a connection waiting without a request becomes
    /// [`Registry::evictable`]; `None` when every connection is busy.
    fn soonest_evictable(&self) -> Option<Duration> {
        let now = self.now();
        let after = EVICTABLE_AFTER.as_millis() as u64;
        self.open()
            .values()
            .filter(|c| matches!(c.phase.load(Ordering::Relaxed), IDLE | HEADERS))
            .map(|c| after.saturating_sub(now.saturating_sub(c.since.load(Ordering::Relaxed))))
            .min()
            .map(|ms| Duration::from_millis(ms + 1))
    }

    /// Closes every connection past its deadline.
    fn sweep(&self) {
        let now = self.now();
        let header_ms = self.limits.header_read.as_millis() as u64;
        let idle_ms = self.limits.idle.as_millis() as u64;
        for conn in self.open().values() {
            let allowed = match conn.phase.load(Ordering::Relaxed) {
                IDLE => idle_ms,
                HEADERS => header_ms,
                _ => continue,
            };
            if now.saturating_sub(conn.since.load(Ordering::Relaxed)) > allowed {
                self.close(conn);
            }
        }
    }
}

impl Conn {
    /// Moves from `from` to `to`; never out of `CLOSING`, which only the
    /// registry sets (and counts).
    fn transition(&self, from: u8, to: u8, now: u64) -> bool {
        let moved = self.phase.compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        if moved {
            self.since.store(now, Ordering::Relaxed);
        }
        moved
    }
}

/// Marks its connection busy while a request is being answered.
struct InRequest {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl InRequest {
    fn begin(conn: &Arc<Conn>, registry: &Arc<Registry>) -> InRequest {
        conn.requests.fetch_add(1, Ordering::Relaxed);
        let now = registry.now();
        let _ = conn.transition(HEADERS, BUSY, now) || conn.transition(IDLE, BUSY, now);
        InRequest { conn: conn.clone(), registry: registry.clone() }
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        if self.conn.requests.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.conn.transition(BUSY, IDLE, self.registry.now());
        }
    }
}

/// The socket, watched: the first bytes read while idle start the
/// header-read deadline; writes the client does not take are timed.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    stalls: Arc<WriteStalls>,
}

/// How long a connection's writes have waited for the client to read:
/// a long response (an event stream) uses it to tell a client that does
/// not keep up from one that is merely far behind for a moment. Every
/// request of the connection carries it in its extensions.
#[derive(Default)]
pub struct WriteStalls {
    /// Since when the socket refuses bytes, and the longest such wait
    /// since the last [`WriteStalls::take_longest`].
    state: Mutex<(Option<Instant>, Duration)>,
}

impl WriteStalls {
    fn note(&self, blocked: bool) {
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match (blocked, state.0) {
            (true, None) => state.0 = Some(Instant::now()),
            (false, Some(since)) => {
                state.1 = state.1.max(since.elapsed());
                state.0 = None;
            }
            _ => {}
        }
    }

    /// The longest wait for the client since the last call (including
    /// one still going on), and starts counting afresh.
    pub fn take_longest(&self) -> Duration {
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let longest = state.1.max(state.0.map_or(Duration::ZERO, |since| since.elapsed()));
        state.1 = Duration::ZERO;
        if state.0.is_some() {
            state.0 = Some(Instant::now());
        }
        longest
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.transition(IDLE, HEADERS, self.registry.now());
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.stalls.note(polled.is_pending());
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.stalls.note(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting and lets the requests in progress finish (for at most
/// `limits.drain`).
pub async fn serve(listener: TcpListener, router: Router, limits: ConnectionLimits, shutdown: impl Future<Output = ()>) {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        next_id: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
        closing: AtomicUsize::new(0),
        limits,
    });
    let sweeper = tokio::spawn(sweep_forever(registry.clone()));
    let (stop, stopping) = watch::channel(false);
    let lingering = Arc::new(tokio::sync::Semaphore::new(MAX_LINGERING));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors or memory: make room, and don't
                // spin. Other errors concern one connection only.
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) {
                    tracing::warn!(error = %e, "accept failed");
                    registry.evict_oldest_waiting();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        if registry.live() >= limits.max_connections && !registry.evict_oldest_waiting() {
            // Connections that wait without a request but are too fresh to
            // close yet (a burst of them) become closable within
            // EVICTABLE_AFTER: the newcomer waits for that rather than be
            // refused. Only when every connection is busy is it closed.
            let admitted = match registry.soonest_evictable() {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    registry.live() < limits.max_connections || registry.evict_oldest_waiting()
                }
                None => false,
            };
            if !admitted {
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        // Registered before the task starts, so a burst is counted at once.
        let (id, conn) = registry.add();
        tokio::spawn(serve_connection(stream, id, conn, registry.clone(), router.clone(), stopping.clone(), lingering.clone()));
    }
    let _ = stop.send(true);
    drop(listener);
    let deadline = Instant::now() + limits.drain;
    while !registry.open().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = registry.open().len();
    if left > 0 {
        tracing::warn!(connections = left, "the shutdown drain ran out with requests in progress: they end unanswered (a write that had not reached its COMMIT is not committed)");
    }
    sweeper.abort();
}

/// Closes connections past their deadlines, a few times per shortest deadline.
async fn sweep_forever(registry: Arc<Registry>) {
    let shortest = registry.limits.header_read.min(registry.limits.idle);
    let every = (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        registry.sweep();
    }
}

async fn serve_connection(
    stream: TcpStream,
    id: u64,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    router: Router,
    mut stopping: watch::Receiver<bool>,
    lingering: Arc<tokio::sync::Semaphore>,
) {
    let stalls = Arc::new(WriteStalls::default());
    let io = TokioIo::new(Watched { stream, conn: conn.clone(), registry: registry.clone(), stalls: stalls.clone() });
    let service = {
        let (conn, registry) = (conn.clone(), registry.clone());
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(stalls.clone());
            let in_request = InRequest::begin(&conn, &registry);
            let router = router.clone();
            let (conn, registry) = (conn.clone(), registry.clone());
            Box::pin(async move {
                let (parts, body) = request.into_parts();
                let had_body = !body.is_end_stream();
                let read_to_end = Arc::new(AtomicBool::new(false));
                let body = Tracked { inner: body, read_to_end: read_to_end.clone() };
                let mut response = router.oneshot(hyper::Request::from_parts(parts, axum::body::Body::new(body))).await;
                if let Ok(response) = &mut response {
                    if had_body && !read_to_end.load(Ordering::Relaxed) {
                        // The rest of the body is still on the wire: this
                        // connection cannot carry another request.
                        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                drop(in_request);
                // Each part of the body handed to the connection restarts
                // its idle clock: a long response the client keeps reading
                // (an event stream with its heartbeats) is not idle.
                response.map(|response| response.map(|body| axum::body::Body::new(Progressing { inner: body, conn, registry })))
            })
        })
    };
    let mut connection = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, service);
    let mut draining = false;
    let finished = loop {
        tokio::select! {
            result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => {
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break result.is_ok();
            }
            () = conn.close.notified() => break false,
            changed = stopping.changed(), if !draining => {
                draining = true;
                if changed.is_ok() {
                    Pin::new(&mut connection).graceful_shutdown();
                }
            }
        }
    };
    registry.remove(id);
    if finished {
        // Closes at once when too many are lingering already: each holds a
        // file descriptor the connection cap no longer counts.
        if let Ok(_permit) = lingering.try_acquire() {
            linger(connection.into_parts().io.into_inner().stream).await;
        }
    }
}

/// A request body that records whether it was read to its end.
struct Tracked {
    inner: Incoming,
    read_to_end: Arc<AtomicBool>,
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read_to_end.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that stamps its connection's idle clock at every frame
/// the connection takes (the connection is idle once the head is sent).
struct Progressing {
    inner: axum::body::Body,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl hyper::body::Body for Progressing {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            self.conn.transition(IDLE, IDLE, self.registry.now());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How many closing connections may linger at once.
const MAX_LINGERING: usize = 256;

/// How long, and how much, a closing connection keeps reading.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

/// Closes our side, then discards what the client still sends for a
/// moment: a client whose body was refused before it was read (413 on
/// `Content-Length`) then receives the answer, instead of a reset caused
/// by closing a socket with unread data.
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = [0u8; 4 << 10];
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

/// Raises this process's open-file limit to its hard limit (each
/// connection is a file descriptor); answers the limit in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
