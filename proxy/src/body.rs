//! Streaming body wrappers: the request body on its way up (byte count, size limit, and a signal
//! when it has been sent in full) and the response body on its way down (byte count, and a hook
//! that runs once when the response ends or the client goes away). No body is ever buffered.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;

/// Boxed error type of every body guard hands to hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response guard sends.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A complete in-memory body (guard's own small answers).
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// The request body was cut because it grew past `--max-body-size`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyLimitExceeded(pub u64);

/// Reading the client's request body failed: malformed chunked framing, or the client went
/// away mid-body. The client's fault, never the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body from the client failed")]
pub struct ClientBodyError(#[source] pub BoxError);

/// Shared view of a request body's progress, read by the forwarder and the access log.
#[derive(Debug, Default)]
pub struct BodyProgress {
    /// Bytes read from the client so far.
    pub bytes: AtomicU64,
    /// Set when the limit cut the stream.
    pub limit_hit: AtomicBool,
}

pin_project_lite::pin_project! {
    /// The client's request body as sent upstream.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        limit: Option<u64>,
        progress: Arc<BodyProgress>,
        // `None` for a body that was empty from the start: nobody needs telling.
        done: Option<watch::Sender<bool>>,
    }
}

impl<B: Body> RequestBody<B> {
    /// Wraps `inner`; the receiver turns `true` once the whole body has been handed on. An
    /// empty body (most requests) has no receiver: it is sent with the head.
    pub fn new(inner: B, limit: Option<u64>) -> (Self, Arc<BodyProgress>, Option<watch::Receiver<bool>>) {
        let progress = Arc::new(BodyProgress::default());
        let (done, rx) = if inner.is_end_stream() {
            (None, None)
        } else {
            let (tx, rx) = watch::channel(false);
            (Some(tx), Some(rx))
        };
        (
            RequestBody {
                inner,
                limit,
                progress: progress.clone(),
                done,
            },
            progress,
            rx,
        )
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this.progress.bytes.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if let Some(limit) = *this.limit {
                        if total > limit {
                            this.progress.limit_hit.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded(limit)))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e.into()))))),
            Poll::Ready(None) => {
                if let Some(done) = this.done {
                    done.send_replace(true);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if let (true, Some(done)) = (end, &self.done) {
            done.send_replace(true);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and calls `on_end` exactly once: at the end of
    /// the stream, on an error, or when hyper drops it because the client went away.
    pub struct ResponseBody<B: Body, F: FnOnce(u64, bool)> {
        #[pin]
        inner: B,
        sent: u64,
        on_end: Option<F>,
    }

    impl<B: Body, F: FnOnce(u64, bool)> PinnedDrop for ResponseBody<B, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_end.take() {
                // An empty body is never polled: it ended fine if the inner body says so.
                let complete = this.inner.is_end_stream();
                f(*this.sent, complete);
            }
        }
    }
}

impl<B: Body, F: FnOnce(u64, bool)> ResponseBody<B, F> {
    /// Wraps `inner`; `on_end(bytes_sent, complete)` runs once.
    pub fn new(inner: B, on_end: F) -> Self {
        ResponseBody {
            inner,
            sent: 0,
            on_end: Some(on_end),
        }
    }
}

impl<B, F> Body for ResponseBody<B, F>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    F: FnOnce(u64, bool),
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.sent += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(f) = this.on_end.take() {
                    f(*this.sent, false);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let Some(f) = this.on_end.take() {
                    f(*this.sent, true);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
