//! A memory bound on request bodies. tonic's decoder copies each body frame
//! into its own buffer until a whole message (up to `max_message_bytes`) has
//! arrived, and gives the HTTP/2 flow-control window back as it does; so the
//! windows alone bound nothing and 512 streams each sending most of a 4 MiB
//! message hold 2 GiB. This tower layer wraps every request body and charges
//! each data frame against the client connection's budget and the global
//! one (`limits.max_buffered_request_bytes[_per_connection]`), before tonic
//! sees it. A frame that does not fit fails its request at once with
//! RESOURCE_EXHAUSTED (the client sees that status; tonic drops the body, so
//! the stream's buffered data goes too) rather than waiting for room, which
//! could wait on the very clients that hold it.
//!
//! Bytes of whole messages are released when tonic asks for the next frame
//! (it only does once it has taken every whole message out of its buffer),
//! the rest when the body is dropped. So the charge is what tonic buffers.
//!
//! Connections are told apart by peer address (from the connect info tonic
//! puts in each request, plain or TLS), as watchers per connection are: tonic
//! builds no per-connection object a layer could hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// A byte count with a ceiling, charged without waiting.
struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    fn new(max: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    fn try_charge(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.max)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The budgets, shared by every request.
pub struct RequestBudgets {
    global: Budget,
    per_connection: usize,
    /// One entry per peer with a request body alive; an entry goes with the
    /// last body of its connection. Locked once per request.
    connections: Mutex<HashMap<SocketAddr, Weak<ConnBudget>>>,
}

impl std::fmt::Debug for RequestBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBudgets")
            .field("per_connection", &self.per_connection)
            .finish_non_exhaustive()
    }
}

impl RequestBudgets {
    pub fn new(global: usize, per_connection: usize) -> Arc<Self> {
        Arc::new(RequestBudgets {
            global: Budget::new(global),
            per_connection,
            connections: Mutex::default(),
        })
    }

    /// Bytes charged now over all connections.
    pub fn buffered(&self) -> usize {
        self.global.used.load(Ordering::Acquire)
    }

    fn connection(self: &Arc<Self>, addr: SocketAddr) -> Arc<ConnBudget> {
        let mut map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&addr).and_then(Weak::upgrade) {
            return c;
        }
        let c = Arc::new(ConnBudget {
            budget: Budget::new(self.per_connection),
            addr,
            owner: self.clone(),
        });
        map.insert(addr, Arc::downgrade(&c));
        c
    }
}

struct ConnBudget {
    budget: Budget,
    addr: SocketAddr,
    owner: Arc<RequestBudgets>,
}

impl Drop for ConnBudget {
    fn drop(&mut self) {
        let mut map = self
            .owner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A newer body of the same peer may have put a fresh entry already.
        if map.get(&self.addr).is_some_and(|w| w.strong_count() == 0) {
            map.remove(&self.addr);
        }
    }
}

/// Adds the budgets to every request of the server.
#[derive(Debug, Clone)]
pub struct RequestBudgetLayer {
    pub budgets: Arc<RequestBudgets>,
}

impl<S> tower::Layer<S> for RequestBudgetLayer {
    type Service = RequestBudget<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestBudget {
            inner,
            budgets: self.budgets.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestBudget<S> {
    inner: S,
    budgets: Arc<RequestBudgets>,
}

impl<S> tower::Service<http::Request<Body>> for RequestBudget<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let conn = remote_addr(&req).map(|a| self.budgets.connection(a));
        let budgets = self.budgets.clone();
        self.inner.call(req.map(|body| {
            Body::new(Charged {
                inner: body,
                budgets,
                conn,
                held: 0,
                whole: 0,
                framing: Framing::default(),
                failed: false,
            })
        }))
    }
}

/// The peer of a request (plain TCP or TLS).
pub(crate) fn remote_addr<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

/// A request body whose data frames are charged to the budgets.
struct Charged {
    inner: Body,
    budgets: Arc<RequestBudgets>,
    conn: Option<Arc<ConnBudget>>,
    /// Bytes charged and not yet released.
    held: usize,
    /// Of `held`, the bytes of whole messages (tonic decodes them before
    /// asking for more, so they are released at the next poll).
    whole: usize,
    framing: Framing,
    failed: bool,
}

impl Charged {
    fn charge(&mut self, n: usize) -> Result<(), Status> {
        if let Some(c) = &self.conn {
            if !c.budget.try_charge(n) {
                return Err(Status::resource_exhausted(format!(
                    "this connection has {} bytes of request data buffered \
                     (limits.max_buffered_request_bytes_per_connection); \
                     retry when fewer requests are in flight",
                    c.budget.max
                )));
            }
        }
        if !self.budgets.global.try_charge(n) {
            if let Some(c) = &self.conn {
                c.budget.release(n);
            }
            return Err(Status::resource_exhausted(format!(
                "the server has {} bytes of request data buffered \
                 (limits.max_buffered_request_bytes); retry later",
                self.budgets.global.max
            )));
        }
        self.held += n;
        Ok(())
    }

    fn release(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.held -= n;
        self.budgets.global.release(n);
        if let Some(c) = &self.conn {
            c.budget.release(n);
        }
    }
}

impl http_body::Body for Charged {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let whole = std::mem::take(&mut self.whole);
        self.release(whole);
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                if let Err(status) = self.charge(data.len()) {
                    self.failed = true;
                    return Poll::Ready(Some(Err(status)));
                }
                let pending = self.framing.advance(data);
                self.whole = self.held.saturating_sub(pending);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        let held = self.held;
        self.release(held);
    }
}

/// Where the body is in gRPC's length-prefixed messages (a flag byte, a
/// 4-byte big-endian length, the message).
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    header_got: usize,
    body_left: usize,
    /// Bytes of the message under way (header included).
    pending: usize,
}

impl Framing {
    /// Takes in `data`; returns the bytes of the message still incomplete.
    fn advance(&mut self, mut data: &[u8]) -> usize {
        while !data.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(data.len());
                self.body_left -= k;
                self.pending += k;
                data = &data[k..];
                if self.body_left == 0 {
                    self.pending = 0;
                }
            } else {
                let k = (5 - self.header_got).min(data.len());
                self.header[self.header_got..self.header_got + k].copy_from_slice(&data[..k]);
                self.header_got += k;
                self.pending += k;
                data = &data[k..];
                if self.header_got == 5 {
                    self.header_got = 0;
                    let h = self.header;
                    self.body_left = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                    if self.body_left == 0 {
                        self.pending = 0;
                    }
                }
            }
        }
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_counts_only_the_message_under_way() {
        let mut f = Framing::default();
        // A whole 3-byte message and 2 bytes of the next header.
        assert_eq!(f.advance(&[0, 0, 0, 0, 3, 1, 2, 3, 0, 0]), 2);
        // The rest of that header (length 4) and 1 byte of its message.
        assert_eq!(f.advance(&[0, 0, 4, 9]), 6);
        assert_eq!(f.advance(&[9, 9, 9]), 0);
        // An empty message is whole at its header.
        assert_eq!(f.advance(&[0, 0, 0, 0, 0]), 0);
    }

    #[test]
    fn budget_refuses_past_its_ceiling_and_frees() {
        let b = Budget::new(10);
        assert!(b.try_charge(6));
        assert!(!b.try_charge(5));
        assert!(b.try_charge(4));
        b.release(10);
        assert!(b.try_charge(10));
    }
}
