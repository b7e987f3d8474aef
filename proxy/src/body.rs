//! Streaming body wrappers: the request body on its way up (byte count, size limit, stall
//! timeout, and a signal when it has been sent in full) and the response body on its way down
//! (byte count, and a hook that runs once when the response ends or the client goes away). No
//! body is ever buffered.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

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

/// The client stopped sending its request body for `--body-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {}s", .0.as_secs())]
pub struct BodyStalled(pub Duration);

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
        stall: Stall,
        progress: Arc<BodyProgress>,
        // `None` for a body that was empty from the start: nobody needs telling.
        done: Option<watch::Sender<bool>>,
    }
}

/// The stall timer of a request body. It runs only while the forwarder waits on the client:
/// from the first poll that finds no data until data comes. While the upstream is slow to take
/// what it was given, the body is not polled and the clock does not run, so only the client's
/// own silence counts, and a slow but live upload is never cut.
struct Stall {
    timeout: Duration,
    // Made at the first wait, then reset: most bodies arrive whole and never need one.
    timer: Option<Pin<Box<Sleep>>>,
    // Whether the timer is set for the current wait (cleared by every frame).
    armed: bool,
}

impl Stall {
    /// Called when the client has no data for us: starts the clock if this wait is new, and
    /// says whether it has run out.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        self.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

impl<B: Body> RequestBody<B> {
    /// Wraps `inner`, cut at `limit` bytes or after `stall_timeout` without data; the receiver
    /// turns `true` once the whole body has been handed on. An empty body (most requests) has
    /// no receiver: it is sent with the head.
    pub fn new(
        inner: B,
        limit: Option<u64>,
        stall_timeout: Duration,
    ) -> (Self, Arc<BodyProgress>, Option<watch::Receiver<bool>>) {
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
                stall: Stall {
                    timeout: stall_timeout,
                    timer: None,
                    armed: false,
                },
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
        let polled = this.inner.poll_frame(cx);
        if !polled.is_pending() {
            this.stall.armed = false;
        }
        match polled {
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
            Poll::Pending if this.stall.poll_expired(cx) => {
                Poll::Ready(Some(Err(Box::new(BodyStalled(this.stall.timeout)))))
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
/// What went wrong with a client's request body: the client's fault, whoever noticed it.
#[derive(Debug, thiserror::Error)]
pub enum BodyFault {
    /// The body exceeds `--max-body-size`.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// No body data for `--body-timeout`; the upstream request was cut (its connection closed,
    /// not reused).
    #[error("request body stalled: no data for {seconds}s")]
    Stalled {
        /// The timeout that fired.
        seconds: u64,
    },
    /// The client broke off or garbled the body.
    #[error("malformed or truncated request body")]
    Malformed,
}

impl BodyFault {
    /// The body's fault in an error chain, if it holds one: over the size limit, stalled, or
    /// broken off.
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<BodyFault> {
        let mut src = Some(e);
        while let Some(s) = src {
            if let Some(limit) = s.downcast_ref::<BodyLimitExceeded>() {
                return Some(BodyFault::TooLarge { limit: limit.0 });
            }
            if let Some(stalled) = s.downcast_ref::<BodyStalled>() {
                return Some(BodyFault::Stalled {
                    seconds: stalled.0.as_secs(),
                });
            }
            if s.downcast_ref::<ClientBodyError>().is_some() {
                return Some(BodyFault::Malformed);
            }
            src = s.source();
        }
        None
    }
}
