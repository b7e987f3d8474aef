//! One upstream: pools of HTTP/1.1 keep-alive connections (one per worker thread, so a request
//! and its upstream connection never cross threads), over plain TCP or TLS, sending a prepared
//! request and handing it back untouched when no connection could be opened; and its health
//! probe. Which upstream a request goes to, and the timeouts, are [`crate::balance`]'s.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

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
    /// The TLS handshake with an `https://` upstream failed (its certificate, most often).
    #[error("upstream {upstream}: TLS handshake failed")]
    Tls {
        /// Its authority.
        upstream: String,
        /// rustls' error.
        #[source]
        source: BoxError,
    },
    /// Every upstream of the site is down (failed health checks, refused connections).
    #[error("site {site}: all {count} upstreams are down")]
    NoneAvailable {
        /// The site.
        site: String,
        /// How many it has.
        count: usize,
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
            UpstreamFault::Tls { .. } => "tls",
            UpstreamFault::NoneAvailable { .. } => "none_available",
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
    /// With its scheme.
    label: String,
    /// `https://`: how the TLS is done.
    tls: Option<UpstreamTls>,
    connect_timeout: Duration,
    /// An idle connection unused this long is closed rather than reused: the upstream may be
    /// closing it (`--upstream-idle-timeout`, below the upstream's own keep-alive timeout).
    idle_timeout: Duration,
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
    /// The upstream `u`, over TLS when `tls` is given (an `https://` upstream); no connection
    /// is opened until a request needs one.
    pub fn new(
        u: &guard_config::model::Upstream,
        tls: Option<UpstreamTls>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Upstream {
            authority: u.authority(),
            label: u.to_string(),
            tls,
            connect_timeout,
            idle_timeout,
            pools: PerWorker::new(Arc::default),
        }
    }

    /// `host:port` as configured.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `http://host:port` or `https://host:port`, for logs and metrics.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Opens a connection within the connect timeout: resolve, connect, `TCP_NODELAY`, the TLS
    /// handshake for an `https://` upstream, the HTTP/1.1 handshake, and the connection's task
    /// on this worker.
    async fn connect<B>(&self) -> Result<SendRequest<B>, UpstreamFault>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(res) => res,
            Err(_) => Err(UpstreamFault::ConnectTimeout {
                upstream: self.authority.clone(),
            }),
        }
    }

    async fn open<B>(&self) -> Result<SendRequest<B>, UpstreamFault>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| UpstreamFault::Unreachable {
                upstream: self.authority.clone(),
                source: Box::new(e),
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(TokioIo::new(tcp)).await,
            Some(t) => {
                let tls = t
                    .connector
                    .connect(t.name.clone(), tcp)
                    .await
                    .map_err(|e| UpstreamFault::Tls {
                        upstream: self.authority.clone(),
                        source: Box::new(e),
                    })?;
                self.handshake(TokioIo::new(tls)).await
            }
        }
    }

    async fn handshake<I, B>(&self, io: I) -> Result<SendRequest<B>, UpstreamFault>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (sender, conn) = http1::handshake(io).await.map_err(|e| UpstreamFault::Failed {
            upstream: self.authority.clone(),
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
    /// again; nothing of it had reached the upstream. A request that could not be sent at all
    /// (no connection) comes back in [`SendError::Unsent`], to be tried on another upstream.
    pub(crate) async fn send(
        &self,
        mut req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<PooledBody>, SendError> {
        let pool = self.pools.get();
        loop {
            let (mut sender, reused) = match pool.checkout(self.idle_timeout) {
                Some(s) => (s, true),
                None => match self.connect().await {
                    Ok(s) => (s, false),
                    Err(fault) => {
                        return Err(SendError::Unsent {
                            fault,
                            req: Box::new(req),
                        })
                    }
                },
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // After a protocol switch the connection belongs to the tunnel.
                    let give_back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Return {
                        sender,
                        pool: pool.clone(),
                    });
                    return Ok(resp.map(|body| PooledBody {
                        inner: body,
                        give_back,
                        in_flight: None,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    // A new connection that ended before the request went out.
                    Some(unsent) => {
                        return Err(SendError::Unsent {
                            fault: UpstreamFault::Failed {
                                upstream: self.authority.clone(),
                                source: Box::new(e.into_error()),
                            },
                            req: Box::new(unsent),
                        })
                    }
                    None => return Err(SendError::Failed(classify(e.into_error(), &self.authority))),
                },
            }
        }
    }

    /// One health check: `GET path` on a connection of its own, closed after the answer, and
    /// the status within `timeout`. Its own connection, so the check sees what a new request
    /// would (whether the upstream accepts connections at all), and the pools of the workers
    /// are left to the workers.
    pub async fn probe(&self, path: &str, timeout: Duration) -> Result<StatusCode, String> {
        let check = async {
            let mut sender = self
                .connect::<http_body_util::Empty<Bytes>>()
                .await
                .map_err(|e| guard_config::error::chain(&e))?;
            let req = http::Request::get(path)
                .header(http::header::HOST, &self.authority)
                .header(http::header::CONNECTION, "close")
                .header(http::header::USER_AGENT, "guard-health-check")
                .body(http_body_util::Empty::new())
                .map_err(|e| format!("cannot ask for {path:?}: {e}"))?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            Ok(resp.status())
        };
        tokio::time::timeout(timeout, check)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}ms", timeout.as_millis())))
    }
}

/// How an `https://` upstream is reached: the TLS client settings and the name its certificate
/// must carry.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl UpstreamTls {
    /// TLS to `host` (a DNS name or an IP address) with `config`.
    pub fn new(config: Arc<rustls::ClientConfig>, host: &str) -> Result<UpstreamTls, String> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("{host:?} is not a name a certificate can be checked against"))?;
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(config),
            name,
        })
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why [`Upstream::send`] got no response.
pub(crate) enum SendError {
    /// No connection could be opened: nothing reached the upstream, and here is the request
    /// back.
    Unsent {
        /// Why.
        fault: UpstreamFault,
        /// The request, its body untouched (boxed: the failure path pays for the room).
        req: Box<http::Request<UpstreamBody>>,
    },
    /// The request failed after it was (or may have been) sent: never to be sent again.
    Failed(ForwardError),
}

/// A request counted in flight at its upstream (for least connections) until its response
/// body ends or is dropped, or the request fails.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one more request in `count`.
    pub fn start(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A ready idle connection, newest first. Closed and stale ones are dropped; one still
    /// finishing its previous exchange is left for a later request.
    fn checkout(&self, idle_timeout: Duration) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.0.lock().expect("pool lock");
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        for i in (0..idle.len()).rev() {
            if now.duration_since(idle[i].since) >= idle_timeout {
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
        // Held until the body ends or is dropped.
        in_flight: Option<InFlight>,
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

impl PooledBody {
    /// Keeps the request counted in flight until this body ends or is dropped.
    pub fn hold(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
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
            this.in_flight.take();
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
