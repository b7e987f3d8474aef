//! Sockets and lifetimes: the accept loop over a listener it is given, the TLS handshake with
//! its timeout, one hyper connection (HTTP/1.1 or HTTP/2 by ALPN) per client, idle and
//! connection limits, and the graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guard_config::serve::{Limits, ServeSettings, TlsSource};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::auth::{AuthError, Authenticator};
use crate::handler::{handle, ConnInfo, State};
use crate::tls::{self, CertResolver, TlsError};

/// A reason `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The certificate or key is unusable (a configuration error).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The users or tokens are unusable (a configuration error).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// `--forwarded-user-header` is not a valid header name.
    #[error("--forwarded-user-header {0:?}: not a valid header name")]
    HeaderName(String),
}

/// Everything loaded before the listener opens, so configuration errors come first.
#[derive(Debug)]
pub struct Prepared {
    settings: ServeSettings,
    resolver: Arc<CertResolver>,
    auth: Option<Arc<Authenticator>>,
    forwarded_user: Option<http::HeaderName>,
    /// The CA file clients should trust, when guard made its own certificate.
    pub trust_anchor: Option<PathBuf>,
    /// Whether that self-signed certificate was made on this start.
    pub created_certificate: bool,
}

/// Loads (or makes) the certificate and checks everything that can be checked offline.
pub fn prepare(settings: ServeSettings) -> Result<Prepared, ServeError> {
    let (key, trust_anchor, created) = match &settings.tls {
        TlsSource::Files { cert, key } => (tls::load_pair(cert, key)?, None, false),
        TlsSource::SelfSigned => {
            let ss = tls::self_signed(&settings.state_dir)?;
            (ss.key, Some(ss.ca_path), ss.created)
        }
    };
    let forwarded_user = match &settings.auth.forwarded_user_header {
        Some(name) => Some(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| ServeError::HeaderName(name.clone()))?),
        None => None,
    };
    let auth = if settings.auth.disabled {
        tracing::warn!("authentication is off (--dangerous-no-auth): anyone who reaches this port reaches the upstream");
        None
    } else {
        Some(Arc::new(Authenticator::load(settings.auth.clone())?))
    };
    Ok(Prepared {
        settings,
        resolver: Arc::new(CertResolver::new(key)),
        auth,
        forwarded_user,
        trust_anchor,
        created_certificate: created,
    })
}

/// Serves until `shutdown` resolves, then stops accepting and lets open requests finish for up
/// to the shutdown grace. `reload` (SIGHUP) re-reads users, tokens and certificate files at once;
/// they are also re-read whenever they change.
pub async fn serve(
    prepared: Prepared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    reload: Arc<Notify>,
) -> Result<(), ServeError> {
    let Prepared { settings, resolver, auth, forwarded_user, .. } = prepared;
    let limits = settings.limits.clone();
    // One notification per watcher: SIGHUP fans out to each.
    let mut watchers = Vec::new();
    if let TlsSource::Files { cert, key } = &settings.tls {
        let force = Arc::new(Notify::new());
        tls::watch_files(resolver.clone(), cert.clone(), key.clone(), force.clone());
        watchers.push(force);
    }
    if let Some(auth) = &auth {
        let force = Arc::new(Notify::new());
        auth.watch(force.clone());
        watchers.push(force);
    }
    tokio::spawn(async move {
        loop {
            reload.notified().await;
            tracing::info!("reloading users, tokens and certificate files");
            for w in &watchers {
                w.notify_one();
            }
        }
    });
    let acceptor = TlsAcceptor::from(tls::server_config(resolver));
    let state = Arc::new(State::new(
        &settings.upstream,
        limits.clone(),
        settings.trusted_proxies.clone(),
        settings.preserve_host,
        auth,
        forwarded_user,
    ));
    let builder = Arc::new(http_builder(&limits));

    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        // Past the connection limit new clients wait in the kernel's accept queue.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays up.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = Connection {
            tcp,
            peer,
            acceptor: acceptor.clone(),
            builder: builder.clone(),
            state: state.clone(),
            stop: stop_rx.clone(),
            _drain: drain_tx.clone(),
            _permit: permit,
        };
        tokio::spawn(conn.run());
    }
    drop(listener);
    let open = limits.max_connections - permits.available_permits();
    tracing::info!(
        "shutting down: no new connections; waiting up to {}s for {open} open connection(s)",
        settings.shutdown_grace.as_secs()
    );
    stop_tx.send_replace(true);
    drop(drain_tx);
    match tokio::time::timeout(settings.shutdown_grace, drain_rx.recv()).await {
        Ok(_) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            "shutdown grace expired with {} connection(s) still open; closing them",
            limits.max_connections - permits.available_permits()
        ),
    }
    Ok(())
}

/// hyper's server settings from the limits. Timers are required for the timeouts to work.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_h2_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(64));
    b
}

/// One accepted client connection and what it needs to live.
struct Connection {
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
    // Held until the connection ends: the drain waits for every sender to drop, and the permit
    // frees a connection slot.
    _drain: mpsc::Sender<()>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(mut self) {
        let _ = self.tcp.set_nodelay(true);
        let limits = &self.state.limits;
        let tls = match tokio::time::timeout(limits.tls_handshake_timeout, self.acceptor.accept(self.tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, "tls handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "tls handshake timed out");
                return;
            }
        };
        let activity = Arc::new(Activity::new());
        let info = Arc::new(ConnInfo { peer: self.peer });
        let (state, act) = (self.state.clone(), activity.clone());
        let svc = service_fn(move |req| handle(req, info.clone(), state.clone(), act.begin()));
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        let idle_timeout = limits.idle_timeout;
        let mut closing = false;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(peer = %self.peer, "connection ended: {e}");
                    }
                    return;
                }
                _ = self.stop.wait_for(|stop| *stop), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = activity.idle(idle_timeout), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended: a connection is idle only
/// with nothing in flight, so a slow upload or a long wait for the upstream never counts.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last_end_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity { in_flight: AtomicUsize::new(0), last_end_ms: AtomicU64::new(0), epoch: Instant::now() }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves once the connection has had nothing in flight for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let wait = if self.in_flight.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                let idle = Duration::from_millis(self.now_ms().saturating_sub(self.last_end_ms.load(Ordering::Acquire)));
                match timeout.checked_sub(idle) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Marks one request in flight until dropped (when its response body has ended).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_end_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
