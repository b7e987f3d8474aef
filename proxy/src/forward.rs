//! The upstream side: pools of HTTP/1.1 keep-alive connections (one per worker thread, so a
//! request and its upstream connection never cross threads), and `forward`, which sends a
//! prepared request and waits for the response head. The response timeout starts only once the
//! request body has been sent in full, so an hour-long artifact upload is never cut.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body::{BodyFault, BoxError, RequestBody};
use crate::worker::PerWorker;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The client's body failed on the way: the client's fault, not the upstream's.
    #[error(transparent)]
    Body(BodyFault),
    /// The upstream failed.
    #[error(transparent)]
    Upstream(UpstreamFault),
}

/// How the upstream failed a request.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFault {
    /// It refused the connection or could not be reached.
    #[error("upstream {upstream} unreachable")]
    Unreachable {
        /// Its authority.
        upstream: String,
        /// The connect error.
        #[source]
        source: BoxError,
    },
    /// Connecting took longer than the connect timeout.
    #[error("upstream {upstream}: connect timed out")]
    ConnectTimeout {
        /// Its authority.
        upstream: String,
    },
    /// It did not start its response in time after the request was sent.
    #[error("upstream {upstream}: no response within {seconds}s")]
    Timeout {
        /// Its authority.
        upstream: String,
        /// The timeout that fired.
        seconds: u64,
    },
    /// It broke the protocol or closed mid-request.
    #[error("upstream {upstream}: request failed")]
    Failed {
        /// Its authority.
        upstream: String,
        /// hyper's error, or what was wrong.
        #[source]
        source: BoxError,
    },
}

impl UpstreamFault {
    /// The `kind` label of `guard_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamFault::Unreachable { .. } => "unreachable",
            UpstreamFault::ConnectTimeout { .. } => "connect_timeout",
            UpstreamFault::Timeout { .. } => "timeout",
            UpstreamFault::Failed { .. } => "failed",
        }
    }
}

impl From<UpstreamFault> for ForwardError {
    fn from(f: UpstreamFault) -> Self {
        ForwardError::Upstream(f)
    }
}

/// The request body type sent upstream.
pub type UpstreamBody = RequestBody<Incoming>;

/// Idle connections kept per worker; more are closed when their request ends.
const MAX_IDLE_PER_WORKER: usize = 256;
/// An idle connection unused this long is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One upstream: where it is, and a pool of idle HTTP/1.1 keep-alive connections per worker
/// thread. A connection is driven by the worker that opened it and only ever handed to requests
/// on that worker, so a request and its upstream connection never cross threads.
///
/// This replaces hyper-util's pooled client, which cost about 8,600 instructions per proxied
/// request more (callgrind, 15% of guard's total): its pool hashes the scheme and authority with
/// SipHash on every checkout and return, and it spawns a task and a oneshot per response to
/// wait for the connection to become reusable. Here a connection goes back to its pool when
/// the response body ends, and a checkout takes the newest one that is ready.
#[derive(Debug)]
pub struct Upstream {
    /// `host:port` as configured.
    authority: String,
    connect_timeout: Duration,
    /// One pool per worker, each behind its own `Arc`: a response's `Return` holds its worker's,
    /// so no reference count or lock is shared between workers.
    pools: PerWorker<Arc<Pool>>,
}

/// One worker's idle connections, most recently used last. Aligned so two workers' pools never
/// share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Pool(Mutex<Vec<Idle>>);

#[derive(Debug)]
struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl Upstream {
    /// An upstream at `authority`; no connection is opened until a request needs one.
    pub fn new(authority: &str, connect_timeout: Duration) -> Self {
        Upstream {
            authority: authority.to_owned(),
            connect_timeout,
            pools: PerWorker::new(Arc::default),
        }
    }

    /// `host:port` as configured.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Opens a connection: resolve, connect (both within the connect timeout), `TCP_NODELAY`,
    /// HTTP/1.1 handshake, and the connection's task on this worker.
    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, UpstreamFault> {
        let upstream = || self.authority.clone();
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(UpstreamFault::Unreachable {
                    upstream: upstream(),
                    source: Box::new(e),
                })
            }
            Err(_) => return Err(UpstreamFault::ConnectTimeout { upstream: upstream() }),
        };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamFault::Failed {
                upstream: upstream(),
                source: Box::new(e),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }

    /// Sends `req` on a pooled connection, or a new one. A pooled connection the upstream closed
    /// before the request was written (keep-alive timeouts race) is replaced and the request sent
    /// again; nothing of it had reached the upstream.
    async fn send(&self, mut req: http::Request<UpstreamBody>) -> Result<http::Response<PooledBody>, ForwardError> {
        let pool = self.pools.get();
        loop {
            let (mut sender, reused) = match pool.checkout() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // After a protocol switch the connection belongs to the tunnel.
                    let give_back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Return {
                        sender,
                        pool: pool.clone(),
                    });
                    return Ok(resp.map(|body| PooledBody { inner: body, give_back }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(classify(e.into_error(), &self.authority)),
                },
            }
        }
    }
}

impl Pool {
    /// A ready idle connection, newest first. Closed and stale ones are dropped; one still
    /// finishing its previous exchange is left for a later request.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.0.lock().expect("pool lock");
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        for i in (0..idle.len()).rev() {
            if now.duration_since(idle[i].since) >= IDLE_TIMEOUT {
                // Everything below is older still.
                idle.drain(..=i);
                return None;
            }
            match idle[i].sender.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => return Some(idle.remove(i).sender),
                Poll::Ready(Err(_)) => drop(idle.remove(i)),
                Poll::Pending => {}
            }
        }
        None
    }

    /// Keeps `sender` for the next request.
    fn put(&self, sender: SendRequest<UpstreamBody>) {
        let mut idle = self.0.lock().expect("pool lock");
        if idle.len() >= MAX_IDLE_PER_WORKER {
            // The oldest goes; the freshest is the likeliest to still be open upstream.
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

/// A connection to put back in its worker's pool once the response body has been read to the
/// end.
struct Return {
    sender: SendRequest<UpstreamBody>,
    pool: Arc<Pool>,
}

impl Return {
    fn put(self) {
        self.pool.put(self.sender);
    }
}

pin_project_lite::pin_project! {
    /// The upstream's response body; at its end the connection goes back to the pool. A body
    /// dropped before its end (the client went away) takes its connection with it: what is left
    /// of the response would be read as the next one's.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        give_back: Option<Return>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            // hyper stops polling a body whose length says it has ended, and never polls an
            // empty one: that is an end too.
            let this = this.project();
            if this.inner.is_end_stream() {
                if let Some(r) = this.give_back.take() {
                    r.put();
                }
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let res = this.inner.as_mut().poll_frame(cx);
        let ended = match &res {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(r) = this.give_back.take() {
                r.put();
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

/// Sends `req` and returns the upstream's response head. `body_sent` turns true once the request
/// body has gone out; only then does `response_timeout` start. Without it there is no body and
/// the timeout starts at once.
pub async fn forward(
    upstream: &Upstream,
    req: http::Request<UpstreamBody>,
    body_sent: Option<watch::Receiver<bool>>,
    response_timeout: Duration,
) -> Result<http::Response<PooledBody>, ForwardError> {
    let timed_out = || {
        ForwardError::Upstream(UpstreamFault::Timeout {
            upstream: upstream.authority.clone(),
            seconds: response_timeout.as_secs(),
        })
    };
    let Some(mut body_sent) = body_sent else {
        return match tokio::time::timeout(response_timeout, upstream.send(req)).await {
            Ok(res) => res,
            Err(_) => Err(timed_out()),
        };
    };
    let deadline = async {
        // A sender dropped before the end means the body failed; the request future reports it.
        if body_sent.wait_for(|sent| *sent).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(response_timeout).await;
    };
    tokio::select! {
        res = upstream.send(req) => res,
        () = deadline => Err(timed_out()),
    }
}

/// Sorts an error from sending a request into who is at fault: the client's body, or the
/// upstream.
fn classify(e: hyper::Error, upstream: &str) -> ForwardError {
    match BodyFault::find(&e) {
        Some(fault) => ForwardError::Body(fault),
        None => ForwardError::Upstream(UpstreamFault::Failed {
            upstream: upstream.to_owned(),
            source: Box::new(e),
        }),
    }
}
