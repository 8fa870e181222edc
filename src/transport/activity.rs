//! What each connection's requests are doing, as a tower layer: requests
//! under way per connection (so idle connections can be told apart, see
//! [`super::connections`]), and when each request body last received bytes
//! ([`BytesSeen`], read by worker sessions as a sign of life).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::connections::{Slot, Slots};

/// Counts each connection's requests under way, from the request to the
/// end of its response body (a watch stream is a request under way for as
/// long as it runs), so idle connections can be told apart.
#[derive(Clone, Debug)]
pub struct ActivityLayer {
    pub slots: Arc<Slots>,
}

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = Activity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Activity {
            inner,
            slots: self.slots.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Activity<S> {
    inner: S,
    slots: Arc<Slots>,
}

/// Marks a request of its connection as ended when dropped.
struct UnderWay(Arc<Slot>);

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Activity<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        // Every request body marks when its bytes last arrived (a worker
        // session reads it: a slow upload is a sign of life).
        let seen = BytesSeen::now();
        let mut req = req.map(|body| {
            tonic::body::Body::new(Heard {
                inner: body,
                seen: seen.clone(),
            })
        });
        req.extensions_mut().insert(seen);
        let under_way = super::request_budget::remote_addr(&req)
            .and_then(|a| self.slots.find(a))
            .map(|slot| {
                slot.request_started();
                UnderWay(slot)
            });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(match under_way {
                None => res,
                Some(u) => res.map(|body| {
                    tonic::body::Body::new(Tracked {
                        inner: body,
                        _under_way: u,
                    })
                }),
            })
        })
    }
}

/// A response body that holds its request's [`UnderWay`] mark.
struct Tracked {
    inner: tonic::body::Body,
    _under_way: UnderWay,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// When a request's body last received bytes (data frames), shared with
/// its handler through the request's extensions.
#[derive(Debug, Clone)]
pub struct BytesSeen(Arc<std::sync::atomic::AtomicU64>);

/// The base of [`BytesSeen`]'s clock.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl BytesSeen {
    fn now() -> BytesSeen {
        let b = BytesSeen(Arc::default());
        b.mark();
        b
    }

    fn mark(&self) {
        let at = epoch().elapsed().as_micros() as u64;
        self.0.store(at, Ordering::Release);
    }

    /// A mark not tied to a request body (a handler called without the
    /// layer, as in some tests): only [`BytesSeen::touch`] moves it.
    pub fn detached() -> BytesSeen {
        BytesSeen::now()
    }

    /// When bytes last arrived.
    pub fn last(&self) -> Instant {
        epoch() + Duration::from_micros(self.0.load(Ordering::Acquire))
    }

    /// Moves the mark to now (the reader of the body also counts).
    pub fn touch(&self) {
        self.mark();
    }
}

/// A request body that marks its [`BytesSeen`] on every data frame.
struct Heard {
    inner: tonic::body::Body,
    seen: BytesSeen,
}

impl http_body::Body for Heard {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &r {
            self.seen.mark();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
