//! Accepted gRPC connections, bounded: at most `limits.max_connections`
//! are served at once; past it jobd stops accepting (new clients wait in
//! the kernel's backlog) until one closes. Each connection has Nagle off and
//! carries its peer address, which per-connection bounds key on.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A connection that holds its place among `max_connections`.
pub struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
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
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The accepted connections as a stream for tonic's `serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    max_connections: usize,
) -> impl Stream<Item = std::io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(max_connections));
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        // Wait for a free place before accepting: at the bound, clients
        // queue in the kernel instead of being accepted and starved.
        let slot = slots.clone().acquire_owned().await.ok()?;
        let r = listener.accept().await;
        if r.is_err() {
            // Out of file descriptors (EMFILE) and the like: accept fails at
            // once until some close, so pause instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let r = r.map(|(stream, _)| {
            // Nagle would hold small replies for up to 40 ms behind delayed
            // ACKs; jobd's RPCs are small and latency-sensitive.
            let _ = stream.set_nodelay(true);
            Conn {
                stream,
                _slot: slot,
            }
        });
        Some((r, (listener, slots)))
    })
}

/// TLS connections for tonic: each handshake runs on a task of its own
/// (holding its connection place), bounded by [`crate::tls::HANDSHAKE_TIMEOUT`],
/// so a slow or silent client never holds up accepting others. Each
/// handshake uses the TLS settings of its moment (see [`crate::tls`]).
pub fn incoming_tls(
    listener: TcpListener,
    max_connections: usize,
    tls: Arc<crate::tls::Tls>,
) -> impl Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<Conn>>> {
    use futures_util::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let plain = incoming(listener, max_connections);
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
                match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(conn))
                    .await
                {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
