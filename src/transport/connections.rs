//! Accepted gRPC connections, bounded: at most `limits.max_connections` are
//! served at once. Each connection has Nagle off and carries its peer
//! address, which per-connection bounds key on.
//!
//! Slowloris defence: a connection is *handshaking* from accept until the
//! client has sent the HTTP/2 preface and its first SETTINGS frame (after
//! the TLS handshake, with TLS), or, for HTTP/1.1 (the JSON routes, curl,
//! gRPC-Web), a whole request head. A handshaking connection is closed when
//! `limits.handshake_timeout` has passed since accept, and when every place
//! is taken a new connection evicts the oldest handshaking one. So silent or
//! trickling sockets can never lock out clients that speak. Only when every
//! place is held by a connection that has spoken does accepting pause (new
//! clients wait in the kernel's backlog) until one closes.
//!
//! Idle connections: a connection that has spoken but has no request under
//! way (counted by [`ActivityLayer`], from request to the end of its
//! response body) is *idle*. One idle for `limits.idle_connection_timeout`
//! is closed, and when every place is taken and none is handshaking, a new
//! client takes the place of the longest-idle one at once. So connections
//! that answer PINGs and never open a stream cannot lock clients out
//! either. `limits.max_connections_per_peer` bounds the connections of one
//! IP address.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The bounds on accepted connections (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_per_peer: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The places among `max_connections`, shared by the accept loop, every
/// connection and the [`ActivityLayer`].
pub struct Slots {
    max: usize,
    max_per_peer: usize,
    idle_timeout: Duration,
    /// Held for a few map operations at accept, handshake end and close;
    /// never across an await.
    inner: Mutex<SlotsInner>,
    /// Wakes the accept loop when a place frees up (one waiter: the loop).
    freed: Notify,
}

#[derive(Default)]
struct SlotsInner {
    /// Places held, evicted connections excluded (their place went to the
    /// connection that evicted them).
    open: usize,
    next_id: u64,
    /// Connections still in their handshake, by id = accept order, so the
    /// first entry is the oldest; the token closes that connection.
    handshaking: BTreeMap<u64, CancellationToken>,
    /// Every connection holding a place, by id.
    live: HashMap<u64, Weak<Slot>>,
    /// Connection ids by peer address, for [`ActivityLayer`].
    by_addr: HashMap<SocketAddr, u64>,
    /// Connections that have spoken, per peer IP address (handshaking ones
    /// are bounded by eviction already).
    per_ip: HashMap<IpAddr, usize>,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether accepting now can lead to a served connection.
    fn can_admit(&self) -> bool {
        let s = self.lock();
        s.open < self.max || !s.handshaking.is_empty() || longest_idle(&s).is_some()
    }

    /// A place for a new connection from `peer`: a free one, that of the
    /// oldest handshaking connection, or that of the longest-idle one
    /// (either is closed). None when every place is held by a connection
    /// with a request under way.
    fn admit(self: &Arc<Self>, peer: Option<SocketAddr>) -> Option<Arc<Slot>> {
        let mut s = self.lock();
        if s.open < self.max {
            s.open += 1;
        } else if let Some((_, oldest)) = s.handshaking.pop_first() {
            // Cancelled under the lock: the evicted slot's drop sees it and
            // leaves `open` alone, since its place is now this one's.
            oldest.cancel();
            tracing::debug!(
                "all connection places taken: closed the oldest one still in its handshake"
            );
        } else if let Some(idle) = longest_idle(&s) {
            idle.evict.cancel();
            tracing::debug!("all connection places taken: closed the longest-idle connection");
        } else {
            return None;
        }
        let id = s.next_id;
        s.next_id += 1;
        let evict = CancellationToken::new();
        s.handshaking.insert(id, evict.clone());
        let slot = Arc::new(Slot {
            slots: self.clone(),
            id,
            peer,
            evict,
            close: CancellationToken::new(),
            spoke: AtomicBool::new(false),
            counted: AtomicBool::new(false),
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        });
        s.live.insert(id, Arc::downgrade(&slot));
        if let Some(p) = peer {
            s.by_addr.insert(p, id);
        }
        Some(slot)
    }

    /// The live connection from `peer`.
    pub(super) fn find(&self, peer: SocketAddr) -> Option<Arc<Slot>> {
        let s = self.lock();
        s.live.get(s.by_addr.get(&peer)?)?.upgrade()
    }

    /// Closes connections idle for `idle_timeout`; returns how many.
    fn close_idle(&self) -> usize {
        let s = self.lock();
        let mut n = 0;
        for slot in s.live.values().filter_map(Weak::upgrade) {
            if slot.idle_for().is_some_and(|d| d >= self.idle_timeout) && !slot.close.is_cancelled()
            {
                slot.close.cancel();
                n += 1;
            }
        }
        n
    }
}

/// The connection that has been idle longest (spoken, no request under
/// way, not already closing), if any.
fn longest_idle(s: &SlotsInner) -> Option<Arc<Slot>> {
    s.live
        .values()
        .filter_map(Weak::upgrade)
        .filter(|c| !c.evict.is_cancelled() && !c.close.is_cancelled())
        .filter_map(|c| Some((c.idle_for()?, c)))
        .max_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// One connection's place.
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    peer: Option<SocketAddr>,
    /// Closes the connection and hands its place to the one that evicted it.
    evict: CancellationToken,
    /// Closes the connection (idle timeout); its place is freed.
    close: CancellationToken,
    /// Set once the client has spoken; read on every I/O call until then,
    /// hence an atomic rather than a look in the shared map.
    spoke: AtomicBool,
    /// Counted in `per_ip` (given back on drop).
    counted: AtomicBool,
    /// Requests under way (see [`ActivityLayer`]).
    streams: AtomicUsize,
    /// When `streams` last fell to 0 (or the connection opened).
    idle_since: Mutex<Instant>,
}

impl Slot {
    /// The client has spoken: no longer evicted as handshaking. Past
    /// `max_connections_per_peer` spoken connections of its IP address, it
    /// is closed instead.
    fn spoke(&self) {
        let mut s = self.slots.lock();
        s.handshaking.remove(&self.id);
        if let Some(ip) = self.peer.map(|p| p.ip()) {
            let n = s.per_ip.entry(ip).or_default();
            if *n >= self.slots.max_per_peer {
                tracing::debug!(%ip, "connection closed: limits.max_connections_per_peer");
                self.close.cancel();
            } else {
                *n += 1;
                self.counted.store(true, Ordering::Release);
            }
        }
        self.spoke.store(true, Ordering::Release);
    }

    /// How long it has been idle; `None` while handshaking or busy.
    fn idle_for(&self) -> Option<Duration> {
        if !self.spoke.load(Ordering::Acquire) || self.streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }

    pub(super) fn request_started(&self) {
        self.streams.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn request_ended(&self) {
        if self.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            // An idle connection's place may go to a client waiting for one.
            self.slots.freed.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.handshaking.remove(&self.id);
        s.live.remove(&self.id);
        if let Some(p) = self.peer {
            if s.by_addr.get(&p) == Some(&self.id) {
                s.by_addr.remove(&p);
            }
            if self.counted.load(Ordering::Acquire) {
                if let Some(n) = s.per_ip.get_mut(&p.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        s.per_ip.remove(&p.ip());
                    }
                }
            }
        }
        if !self.evict.is_cancelled() {
            s.open -= 1;
            drop(s);
            self.slots.freed.notify_one();
        }
    }
}

/// Ends a handshaking connection at its deadline or on eviction.
type HandshakeEnd = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// A TCP connection that holds its place among `max_connections`. While the
/// client has not spoken, every read and write first checks the handshake
/// deadline and eviction, and fails once either has come.
pub struct Conn {
    stream: TcpStream,
    slot: Arc<Slot>,
    handshake: Handshake,
    /// Ends once the connection is evicted or closed as idle.
    closing: HandshakeEnd,
    ended: Option<&'static str>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// Where a connection is in its handshake (see [`Speaking`]).
enum Handshake {
    Pending(HandshakeEnd),
    /// Timed out or evicted (why): every further read or write fails.
    Ended(&'static str),
    Spoke,
}

impl Conn {
    fn new(stream: TcpStream, slot: Arc<Slot>, timeout: Duration) -> Conn {
        let evicted = slot.evict.clone();
        let (evict, close) = (slot.evict.clone(), slot.close.clone());
        let closing: HandshakeEnd = Box::pin(async move {
            tokio::select! {
                _ = evict.cancelled_owned() => "evicted: every place taken",
                _ = close.cancelled_owned() => "idle connection timeout",
            }
        });
        // From accept, not from the first read.
        let deadline = tokio::time::Instant::now() + timeout;
        let end: HandshakeEnd = Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => "handshake timed out",
                _ = evicted.cancelled_owned() => "evicted while in its handshake",
            }
        });
        Conn {
            stream,
            slot,
            handshake: Handshake::Pending(end),
            closing,
            ended: None,
        }
    }

    /// Err once the handshake deadline passed or the connection was evicted
    /// (and on every call after that: the finished future is not polled again).
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if let Some(why) = self.ended {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
        }
        match &mut self.handshake {
            Handshake::Spoke => {}
            Handshake::Ended(why) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, *why))
            }
            Handshake::Pending(end) => {
                if let Poll::Ready(why) = end.as_mut().poll(cx) {
                    self.handshake = Handshake::Ended(why);
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
                }
                if self.slot.spoke.load(Ordering::Acquire) {
                    // Spoke and was not evicted first (seen just above).
                    self.handshake = Handshake::Spoke;
                }
            }
        }
        // Registers the waker too: a read waiting on a silent socket is
        // woken when the connection is evicted or closed as idle.
        if let Poll::Ready(why) = self.closing.as_mut().poll(cx) {
            self.ended = Some(why);
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
        }
        Ok(())
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The HTTP/2 client preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// A frame header: 24-bit length, type, flags, stream id.
const FRAME_HEADER_LEN: usize = 9;

/// The HTTP/2 client preface.
const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The end of an HTTP/1 request head.
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

/// Watches the first bytes the client sends (after TLS, with TLS) and marks
/// the connection as having spoken once the preface and one whole frame (h2
/// requires it to be SETTINGS) have arrived, or, when the bytes are not the
/// HTTP/2 preface, once a whole HTTP/1 request head has. It does not
/// validate them: the HTTP server does, and closes the connection on
/// garbage.
pub struct Speaking<IO> {
    io: IO,
    slot: Option<Arc<Slot>>,
    head: [u8; PREFACE_LEN + FRAME_HEADER_LEN],
    seen: usize,
    /// The first bytes differ from the HTTP/2 preface.
    http1: bool,
    /// How much of [`HEAD_END`] the last bytes matched; 4 once it was seen.
    head_end: usize,
}

impl<IO> std::fmt::Debug for Speaking<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaking")
            .field("http1", &self.http1)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<IO> Speaking<IO> {
    fn new(io: IO, slot: Arc<Slot>) -> Self {
        Speaking {
            io,
            slot: Some(slot),
            head: [0; PREFACE_LEN + FRAME_HEADER_LEN],
            seen: 0,
            http1: false,
            head_end: 0,
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if self.slot.is_none() {
            return;
        }
        for (i, b) in bytes.iter().enumerate() {
            if !self.http1 && self.seen + i < PREFACE_LEN && *b != PREFACE[self.seen + i] {
                self.http1 = true;
            }
            if self.head_end < HEAD_END.len() {
                self.head_end = match (*b == HEAD_END[self.head_end], *b == b'\r') {
                    (true, _) => self.head_end + 1,
                    (false, true) => 1,
                    (false, false) => 0,
                };
            }
        }
        if self.http1 {
            self.seen += bytes.len();
            if self.head_end == HEAD_END.len() {
                if let Some(slot) = self.slot.take() {
                    slot.spoke();
                }
            }
            return;
        }
        let start = self.seen.min(self.head.len());
        let take = (self.head.len() - start).min(bytes.len());
        self.head[start..start + take].copy_from_slice(&bytes[..take]);
        self.seen += bytes.len();
        if self.seen < self.head.len() {
            return;
        }
        let h = &self.head[PREFACE_LEN..];
        let frame_len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        if self.seen >= self.head.len() + frame_len {
            if let Some(slot) = self.slot.take() {
                slot.spoke();
            }
        }
    }
}

impl<IO: Connected> Connected for Speaking<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Speaking<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.saw(&buf.filled()[before..]);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Speaking<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Slots {
    /// The places of one listener, with a task that closes idle connections
    /// (it ends when the places are dropped with the server).
    pub fn new(limits: ConnLimits) -> Arc<Slots> {
        let slots = Arc::new(Slots {
            max: limits.max_connections,
            max_per_peer: limits.max_per_peer,
            idle_timeout: limits.idle_timeout,
            inner: Mutex::default(),
            freed: Notify::new(),
        });
        let weak = Arc::downgrade(&slots);
        let every =
            (limits.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(slots) = weak.upgrade() else { return };
                let n = slots.close_idle();
                if n > 0 {
                    tracing::debug!(closed = n, "closed idle connections");
                }
            }
        });
        slots
    }
}

/// Accepted TCP connections, each with a place (see the module doc).
fn accepted(
    listener: TcpListener,
    slots: Arc<Slots>,
    handshake_timeout: Duration,
) -> impl Stream<Item = std::io::Result<Conn>> {
    futures_util::stream::unfold((listener, slots), move |(listener, slots)| async move {
        // Accept only when it can lead somewhere: at the bound with every
        // place held by a connection that spoke, clients queue in the
        // kernel instead of being accepted and starved.
        while !slots.can_admit() {
            slots.freed.notified().await;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors (EMFILE) and the like: accept fails
                // at once until some close, so pause instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Some((Err(e), (listener, slots)));
            }
        };
        // Handshaking connections may have spoken since the check: then
        // this one waits (alone, in hand) for a place like the backlog does.
        let slot = loop {
            match slots.admit(Some(peer)) {
                Some(slot) => break slot,
                None => slots.freed.notified().await,
            }
        };
        // Nagle would hold small replies for up to 40 ms behind delayed
        // ACKs; jobd's RPCs are small and latency-sensitive.
        let _ = stream.set_nodelay(true);
        let conn = Conn::new(stream, slot, handshake_timeout);
        Some((Ok(conn), (listener, slots)))
    })
}

/// The accepted connections as a stream for tonic's `serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    slots: Arc<Slots>,
    handshake_timeout: Duration,
) -> impl Stream<Item = std::io::Result<Speaking<Conn>>> {
    use futures_util::StreamExt;
    accepted(listener, slots, handshake_timeout).map(|r| {
        r.map(|conn| {
            let slot = conn.slot.clone();
            Speaking::new(conn, slot)
        })
    })
}

/// TLS connections for tonic: each handshake runs on a task of its own
/// (holding its connection place), so a slow or silent client never holds
/// up accepting others; `handshake_timeout` covers the TLS handshake and the
/// HTTP/2 preface together. Each handshake uses the TLS settings of its
/// moment (see [`crate::transport::tls`]).
pub fn incoming_tls(
    listener: TcpListener,
    slots: Arc<Slots>,
    handshake_timeout: Duration,
    tls: Arc<crate::transport::tls::Tls>,
) -> impl Stream<Item = std::io::Result<Speaking<tokio_rustls::server::TlsStream<Conn>>>> {
    use futures_util::StreamExt;
    // Handshaken connections wait here for tonic; each holds a place, so
    // this holds at most `max_connections`.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let plain = accepted(listener, slots, handshake_timeout);
        futures_util::pin_mut!(plain);
        loop {
            let next = tokio::select! {
                c = plain.next() => c,
                // The server stopped taking connections.
                _ = tx.closed() => return,
            };
            let conn = match next {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
                None => return,
            };
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                let slot = conn.slot.clone();
                // The deadline and eviction act inside `Conn`'s reads and
                // writes, so this ends by itself.
                match acceptor.accept(conn).await {
                    Ok(s) => {
                        let _ = tx.send(Ok(Speaking::new(s, slot))).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Slots")
            .field("max", &self.max)
            .field("open", &s.open)
            .field("handshaking", &s.handshaking.len())
            .finish_non_exhaustive()
    }
}
