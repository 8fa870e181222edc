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

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The places among `max_connections`, shared by the accept loop and every
/// connection.
struct Slots {
    max: usize,
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
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether accepting now can lead to a served connection.
    fn can_admit(&self) -> bool {
        let s = self.lock();
        s.open < self.max || !s.handshaking.is_empty()
    }

    /// A place for a new connection: a free one, or that of the oldest
    /// handshaking connection, which is closed. None when every place is
    /// held by a connection that has spoken.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut s = self.lock();
        if s.open < self.max {
            s.open += 1;
        } else {
            let (_, oldest) = s.handshaking.pop_first()?;
            // Cancelled under the lock: the evicted slot's drop sees it and
            // leaves `open` alone, since its place is now this one's.
            oldest.cancel();
            tracing::debug!(
                "all connection places taken: closed the oldest one still in its handshake"
            );
        }
        let id = s.next_id;
        s.next_id += 1;
        let evict = CancellationToken::new();
        s.handshaking.insert(id, evict.clone());
        Some(Slot {
            slots: self.clone(),
            id,
            evict,
            spoke: AtomicBool::new(false),
        })
    }
}

/// One connection's place.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evict: CancellationToken,
    /// Set once the client has spoken; read on every I/O call until then,
    /// hence an atomic rather than a look in the shared map.
    spoke: AtomicBool,
}

impl Slot {
    /// The client has spoken: this connection can no longer be evicted.
    fn spoke(&self) {
        self.slots.lock().handshaking.remove(&self.id);
        self.spoke.store(true, Ordering::Release);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.handshaking.remove(&self.id);
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
    fn new(stream: TcpStream, slot: Slot, timeout: Duration) -> Conn {
        let evicted = slot.evict.clone();
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
            slot: Arc::new(slot),
            handshake: Handshake::Pending(end),
        }
    }

    /// Err once the handshake deadline passed or the connection was evicted
    /// (and on every call after that: the finished future is not polled again).
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        let end = match &mut self.handshake {
            Handshake::Spoke => return Ok(()),
            Handshake::Ended(why) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, *why))
            }
            Handshake::Pending(end) => end,
        };
        if let Poll::Ready(why) = end.as_mut().poll(cx) {
            self.handshake = Handshake::Ended(why);
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
        }
        if self.slot.spoke.load(Ordering::Acquire) {
            // Spoke and was not evicted first (that would have been seen
            // just above): no more checks.
            self.handshake = Handshake::Spoke;
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

/// Accepted TCP connections, each with a place (see the module doc).
fn accepted(
    listener: TcpListener,
    max_connections: usize,
    handshake_timeout: Duration,
) -> impl Stream<Item = std::io::Result<Conn>> {
    let slots = Arc::new(Slots {
        max: max_connections,
        inner: Mutex::default(),
        freed: Notify::new(),
    });
    futures_util::stream::unfold((listener, slots), move |(listener, slots)| async move {
        // Accept only when it can lead somewhere: at the bound with every
        // place held by a connection that spoke, clients queue in the
        // kernel instead of being accepted and starved.
        while !slots.can_admit() {
            slots.freed.notified().await;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
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
            if let Some(slot) = slots.admit() {
                break slot;
            }
            slots.freed.notified().await;
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
    max_connections: usize,
    handshake_timeout: Duration,
) -> impl Stream<Item = std::io::Result<Speaking<Conn>>> {
    use futures_util::StreamExt;
    accepted(listener, max_connections, handshake_timeout).map(|r| {
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
    max_connections: usize,
    handshake_timeout: Duration,
    tls: Arc<crate::transport::tls::Tls>,
) -> impl Stream<Item = std::io::Result<Speaking<tokio_rustls::server::TlsStream<Conn>>>> {
    use futures_util::StreamExt;
    // Handshaken connections wait here for tonic; each holds a place, so
    // this holds at most `max_connections`.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let plain = accepted(listener, max_connections, handshake_timeout);
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
