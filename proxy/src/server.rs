//! Sockets and lifetimes: the accept loop over a listener it is given, the TLS handshake with
//! its timeout, one hyper connection (HTTP/1.1 or HTTP/2 by ALPN) per client, idle and
//! connection limits, and the graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use guard_config::clock::Clock;
use guard_config::serve::{Limits, ServeSettings, SiteSettings, TlsSource};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::conn::{Activity, ClientConn, ConnSlot, OpenConnection, PerClient};
use crate::handler::{handle, ConnInfo, State};
use crate::metrics::Metrics;
use crate::redirect::Redirect;
use crate::route::{Router, SiteError};
use crate::tls::{self, CertResolver, TlsError};
use crate::worker::worker_count;

/// A reason `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The certificate or key is unusable (a configuration error).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A site is unusable (a configuration error).
    #[error(transparent)]
    Site(#[from] SiteError),
    /// ACME cannot be set up (a configuration error).
    #[error(transparent)]
    Acme(#[from] crate::acme::AcmeError),
    /// The worker threads could not be started (a runtime failure).
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    /// A JWT issuer answered, but not with keys guard can use (a configuration error).
    #[error("site {site}: JWT issuer {issuer}: {source}")]
    JwtIssuer {
        /// The site whose `auth.jwt` names it.
        site: String,
        /// The issuer.
        issuer: String,
        /// What its discovery document or key set got wrong.
        source: crate::jwt::FetchError,
    },
    /// The single-sign-on provider answered, but not with what guard needs.
    #[error("site {site}: auth.oidc issuer {issuer}: {source}")]
    OidcIssuer {
        /// The site whose `auth.oidc` names it.
        site: String,
        /// The issuer.
        issuer: String,
        /// What its discovery document or key set got wrong.
        source: crate::jwt::FetchError,
    },
}

/// Everything loaded before the listener opens, so configuration errors come first.
#[derive(Debug)]
pub struct Prepared {
    settings: ServeSettings,
    resolver: Arc<CertResolver>,
    state: Arc<State>,
    reload: Arc<watch::Sender<u64>>,
    /// The plain-HTTP listener for ACME (HTTP-01 answers and the redirect to HTTPS).
    plain: Option<TcpListener>,
    /// The metrics listener, when metrics are on.
    metrics_listener: Option<TcpListener>,
    /// The CA file clients should trust, when guard made its own certificate.
    pub trust_anchor: Option<PathBuf>,
    /// Whether that self-signed certificate was made on this start.
    pub created_certificate: bool,
}

/// Loads (or makes) the certificate, loads every site's users and tokens, and checks everything
/// that can be checked offline.
pub fn prepare(settings: ServeSettings) -> Result<Prepared, ServeError> {
    prepare_with_clock(settings, Clock::system())
}

/// [`prepare`] with authentication reading the time from `clock`: tests move a manual one
/// through token expiry, lockout windows, cache TTLs and session lifetimes.
pub fn prepare_with_clock(settings: ServeSettings, clock: Clock) -> Result<Prepared, ServeError> {
    let (key, trust_anchor, created) = match &settings.tls {
        TlsSource::Files { cert, key } => (Some(tls::load_pair(cert, key)?), None, false),
        TlsSource::SelfSigned => {
            let ss = tls::self_signed(&settings.state_dir)?;
            (Some(ss.key), Some(ss.ca_path), ss.created)
        }
        // `None` on the first start: handshakes wait for the certificate being ordered.
        TlsSource::Acme(acme) => (crate::acme::load(acme, &settings.state_dir)?, None, false),
    };
    let metrics = Arc::new(Metrics::new(settings.metrics.as_ref().is_some_and(|m| m.user_labels)));
    let defence = crate::auth::Defence::with_clock(clock);
    let router = Router::build(&settings.sites, &settings.limits, &defence, &metrics)?;
    let state = Arc::new(State {
        metrics,
        defence,
        router: ArcSwap::from_pointee(router),
        limits: settings.limits.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
        hsts: crate::acme::hsts_header(&settings.tls),
        sessions: load_sessions(&settings),
    });
    Ok(Prepared {
        settings,
        resolver: Arc::new(key.map_or_else(CertResolver::empty, CertResolver::new)),
        state,
        reload: Arc::new(watch::channel(0).0),
        plain: None,
        metrics_listener: None,
        trust_anchor,
        created_certificate: created,
    })
}

impl Prepared {
    /// Fetches the keys of every site's JWT issuers (and its single-sign-on provider's
    /// discovery document and keys) once, before serving. An issuer that
    /// answers with something unusable (another issuer's document, no usable key) is a
    /// configuration error; one that cannot be reached is retried while serving, and JWTs of
    /// it are refused until it answers.
    pub async fn fetch_jwt_keys(&self) -> Result<(), ServeError> {
        for site in self.state.router.load().sites() {
            let Some(auth) = &site.auth else { continue };
            for (issuer, e) in auth.jwts().fetch_all().await {
                if !e.is_retryable() {
                    return Err(ServeError::JwtIssuer {
                        site: site.name.clone(),
                        issuer,
                        source: e,
                    });
                }
                tracing::warn!(site = %site.name, %issuer, "cannot fetch the JWT keys, retrying while serving: {e}");
            }
            let Some(provider) = auth.oidc() else { continue };
            let issuer = &provider.settings().issuer;
            match provider.fetch().await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    tracing::warn!(site = %site.name, %issuer, "cannot reach the single-sign-on provider, retrying while serving: {e}")
                }
                Err(source) => {
                    return Err(ServeError::OidcIssuer {
                        site: site.name.clone(),
                        issuer: issuer.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// A handle to reload files and replace sites while serving.
    pub fn handle(&self) -> Handle {
        Handle {
            state: self.state.clone(),
            reload: self.reload.clone(),
        }
    }

    /// Where the plain-HTTP listener should be bound, when ACME is on.
    pub fn plain_listen(&self) -> Option<SocketAddr> {
        match &self.settings.tls {
            TlsSource::Acme(acme) => Some(acme.http_listen),
            _ => None,
        }
    }

    /// Where the metrics listener should be bound, when metrics are on.
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.settings.metrics.as_ref().map(|m| m.listen)
    }

    /// Hands over the bound metrics listener; `serve` answers `GET /metrics` on it.
    pub fn set_metrics_listener(&mut self, listener: TcpListener) {
        self.metrics_listener = Some(listener);
    }

    /// Hands over the bound plain-HTTP listener; `serve` runs it with ACME.
    pub fn set_plain_listener(&mut self, listener: TcpListener) {
        self.plain = Some(listener);
    }
}

/// Live control of a running server.
#[derive(Clone, Debug)]
pub struct Handle {
    state: Arc<State>,
    reload: Arc<watch::Sender<u64>>,
}

impl Handle {
    /// Re-reads users, tokens and certificate files now (what SIGHUP does).
    pub fn reload_files(&self) {
        self.reload.send_modify(|n| *n += 1);
    }

    /// Replaces every site (upstreams, hosts, auth) for new requests; requests in flight finish
    /// on the sites they started on. Nothing changes when a site fails to build.
    pub fn replace_sites(&self, sites: &[SiteSettings]) -> Result<(), ServeError> {
        let router = Router::build(sites, &self.state.limits, &self.state.defence, &self.state.metrics)?;
        watch_sites(&router, &self.reload);
        self.state.router.store(Arc::new(router));
        Ok(())
    }
}

/// The session keys, when some site has guard's sign-in page. A key file that cannot be made
/// turns the page off, loudly, rather than stopping guard: Basic and tokens still work.
fn load_sessions(settings: &ServeSettings) -> Option<Arc<crate::sessions::Sessions>> {
    let wanted = settings.sites.iter().any(|s| !s.auth.disabled && s.auth.login_page);
    if !wanted {
        return None;
    }
    match crate::sessions::Sessions::load(&settings.state_dir) {
        Ok(sessions) => Some(Arc::new(sessions)),
        Err(e) => {
            tracing::error!(
                "the sign-in page is off (browsers get the Basic prompt): {}",
                guard_config::error::chain(&e)
            );
            None
        }
    }
}

/// Starts a file watcher for every site's authenticator; each ends with its site.
fn watch_sites(router: &Router, reload: &watch::Sender<u64>) {
    for site in router.sites() {
        site.upstreams.spawn_health_checks();
        if let Some(auth) = &site.auth {
            auth.watch(reload.subscribe());
        }
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets open requests finish for up
/// to the shutdown grace. This task accepts; [`worker_count`] worker threads serve. Users, tokens
/// and certificate files are re-read whenever they change, and at once on
/// [`Handle::reload_files`].
pub async fn serve(
    prepared: Prepared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Prepared {
        settings,
        resolver,
        state,
        reload,
        plain,
        metrics_listener,
        ..
    } = prepared;
    if let Some(listener) = metrics_listener {
        crate::metrics::serve(listener, state.metrics.clone(), settings.limits.header_read_timeout);
    }
    spawn_expiry_gauge(resolver.clone(), state.metrics.clone());
    let limits = settings.limits.clone();
    if let TlsSource::Files { cert, key } = &settings.tls {
        tls::watch_files(resolver.clone(), cert.clone(), key.clone(), reload.subscribe());
    }
    watch_sites(&state.router.load(), &reload);
    if let Some(sessions) = &state.sessions {
        sessions.watch(reload.subscribe());
    }
    // The plain listener (HTTP-01 answers, 308 to HTTPS), and ordering and renewal, run beside
    // the accept loop and stop when `serve` returns.
    let (_acme, _plain) = match &settings.tls {
        TlsSource::Acme(acme) => {
            let answers = Arc::new(crate::acme::Http01Answers::default());
            let plain = match plain {
                Some(listener) => {
                    let r = Redirect::new(answers.clone(), acme.domains.clone(), acme.https_port);
                    Some(AbortOnDrop(tokio::spawn(crate::redirect::serve(listener, Arc::new(r)))))
                }
                None => {
                    tracing::warn!("no plain-HTTP listener: HTTP-01 validation cannot succeed");
                    None
                }
            };
            let running = crate::acme::start(acme.clone(), &settings.state_dir, resolver.clone(), answers);
            (Some(running), plain)
        }
        _ => (None, None),
    };
    let acceptor = tls::Acceptor::new(resolver);
    let builder = Arc::new(http_builder(&limits));

    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let (done_tx, done_rx) = watch::channel(false);
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    for index in 0..worker_count() {
        let (handoff, incoming) = mpsc::unbounded_channel();
        let worker = Worker {
            index,
            acceptor: acceptor.clone(),
            builder: builder.clone(),
            state: state.clone(),
            stop: stop_rx.clone(),
            drain: drain_tx.clone(),
            done: done_rx.clone(),
            load: Arc::new(AtomicUsize::new(0)),
        };
        workers.push(WorkerHandle {
            handoff,
            load: worker.load.clone(),
        });
        threads.push(worker.start(incoming).map_err(ServeError::Workers)?);
    }
    drop(drain_tx);

    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::new(
        limits.max_connections_per_client,
        &settings.trusted_proxies,
    ));
    let peak = Arc::new(crate::memory::Peak::default());
    let open = {
        let (permits, max) = (permits.clone(), limits.max_connections);
        move || max - permits.available_permits()
    };
    crate::memory::spawn_trimmer(peak.clone(), open.clone());
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
        let Ok(client) = per_client.admit(peer.ip()) else {
            // Closed before the handshake: its slot goes straight back.
            continue;
        };
        let Ok(tcp) = tcp.into_std() else { continue };
        peak.saw(open());
        let worker = workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("there is at least one worker");
        worker.load.fetch_add(1, Ordering::Relaxed);
        // A worker's receiver lives until its runtime ends, after this loop; if it is gone
        // anyway, the connection is closed and its slot freed.
        if worker
            .handoff
            .send(Accepted {
                tcp,
                peer,
                permit,
                client,
            })
            .is_err()
        {
            worker.load.fetch_sub(1, Ordering::Relaxed);
        }
    }
    drop(listener);
    // Closing the handoff channels ends each worker's accept loop.
    drop(workers);
    tracing::info!(
        "shutting down: no new connections; waiting up to {}s for {} open connection(s)",
        settings.shutdown_grace.as_secs(),
        open()
    );
    stop_tx.send_replace(true);
    match tokio::time::timeout(settings.shutdown_grace, drain_rx.recv()).await {
        Ok(_) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            "shutdown grace expired with {} connection(s) still open; closing them",
            open()
        ),
    }
    // Each worker's runtime ends here, dropping whatever it still runs.
    done_tx.send_replace(true);
    let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
    Ok(())
}

/// A task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection accepted by the accept loop, on its way to a worker.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    client: Option<ClientConn>,
}

/// The accept loop's side of a worker.
struct WorkerHandle {
    handoff: mpsc::UnboundedSender<Accepted>,
    /// Connections the worker has open; new ones go to the least loaded worker.
    load: Arc<AtomicUsize>,
}

/// One worker thread: a single-threaded runtime that runs every connection handed to it, with
/// that connection's upstream requests, to the end. Nothing on the request path crosses threads
/// (nginx's worker model); only the accepted socket does, once.
struct Worker {
    index: usize,
    acceptor: tls::Acceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
    // Dropped when the handoff channel closes; connections hold clones until they close.
    drain: mpsc::Sender<()>,
    // Turns true when the drain is over: the runtime may end.
    done: watch::Receiver<bool>,
    load: Arc<AtomicUsize>,
}

impl Worker {
    fn start(self, incoming: mpsc::UnboundedReceiver<Accepted>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new()
            .name(format!("guard-worker-{}", self.index))
            .spawn(move || {
                crate::worker::set_worker_index(self.index);
                let mut done = self.done.clone();
                runtime.block_on(async move {
                    crate::accesslog::buffer_on_this_worker();
                    self.run(incoming).await;
                    let _ = done.wait_for(|d| *d).await;
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
                crate::accesslog::flush();
            })
    }

    async fn run(self, mut incoming: mpsc::UnboundedReceiver<Accepted>) {
        while let Some(Accepted {
            tcp,
            peer,
            permit,
            client,
        }) = incoming.recv().await
        {
            let load = Load(self.load.clone());
            let Ok(tcp) = TcpStream::from_std(tcp) else { continue };
            let conn = Connection {
                tcp,
                peer,
                acceptor: self.acceptor.clone(),
                builder: self.builder.clone(),
                state: self.state.clone(),
                stop: self.stop.clone(),
                slot: Arc::new(ConnSlot::new(self.drain.clone(), permit, client)),
                _load: load,
            };
            tokio::spawn(conn.run());
        }
    }
}

/// One connection counted in its worker's load until dropped.
struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps `guard_certificate_expiry_timestamp_seconds` current for whatever certificate is
/// being served (renewals and file reloads included).
fn spawn_expiry_gauge(resolver: Arc<CertResolver>, metrics: Arc<crate::metrics::Metrics>) {
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            if let Some(v) = resolver
                .current()
                .and_then(|ck| ck.cert.first().and_then(tls::validity))
            {
                let name = v.names.first().cloned().unwrap_or_else(|| "-".into());
                let secs = v
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                if last.as_ref().is_some_and(|l| *l != name) {
                    metrics.cert_expiry.remove(&crate::metrics::CertLabel {
                        name: last.clone().unwrap_or_default(),
                    });
                }
                metrics
                    .cert_expiry
                    .get_or_create(&crate::metrics::CertLabel { name: name.clone() })
                    .set(secs);
                last = Some(name);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
}

/// Opens a listening socket with a deep accept queue: the default of 128 drops connection
/// attempts in a burst, and each dropped one costs the client a 1 s SYN retry.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accept queue length requested from the kernel (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// hyper's own limit on HTTP/1.1 header count when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// hyper's server settings from the limits. Timers are required for the timeouts to work.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    // hyper parses into a stack array of its default size, but with any other limit it fills a
    // fresh vector of that many entries for every request head.
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        b.http1().max_headers(limits.max_headers);
    }
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
    acceptor: tls::Acceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
    slot: Arc<ConnSlot>,
    _load: Load,
}

impl Connection {
    async fn run(mut self) {
        let _open = OpenConnection::count(&self.state.metrics);
        let _ = self.tcp.set_nodelay(true);
        let limits = &self.state.limits;
        let tls = match self.acceptor.accept(self.tcp, limits.tls_handshake_timeout).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::debug!(peer = %self.peer, "tls handshake failed: {e}");
                return;
            }
        };
        if tls::is_acme_validation(&tls) {
            // A TLS-ALPN-01 validation: the handshake itself was the answer (RFC 8737 §3).
            tracing::debug!(peer = %self.peer, "answered a tls-alpn-01 validation");
            // Boxed, as the connection below is: the TLS state would otherwise size the task.
            Box::pin(tls::close(tls)).await;
            return;
        }
        let activity = Arc::new(Activity::new());
        let sni = tls.get_ref().1.server_name().map(str::to_owned);
        let info = Arc::new(ConnInfo::new(self.state.clone(), self.peer, sni, self.slot.clone()));
        let act = activity.clone();
        let svc = service_fn(move |req| handle(req, info.clone(), act.begin()));
        // On the heap: the connection's state (TLS included) is most of this task's size, and a
        // task is allocated at its largest. Boxed, a client that connects and never completes a
        // handshake costs the task's small pre-handshake state instead.
        let mut conn = Box::pin(self.builder.serve_connection_with_upgrades(TokioIo::new(tls), svc));
        let (idle_timeout, first_timeout) = (limits.idle_timeout, limits.header_read_timeout);
        let stop = &mut self.stop;
        // Resolves when the connection should wind down: guard is stopping, no request began
        // within the header timeout (hyper times HTTP/1.1 heads itself, but an HTTP/2 connection
        // that sends no request would otherwise hold its slot for the idle timeout), or nothing
        // has been in flight for the idle timeout.
        let mut wind_down = pin!(async {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => WindDown::Stop,
                () = activity.no_first_request(first_timeout) => WindDown::Silent,
                () = activity.idle(idle_timeout) => WindDown::Idle,
            }
        });
        // A graceful HTTP/2 shutdown waits for the client to answer a PING before it closes, so
        // a client that has gone silent would keep its slot for good. Once the shutdown has had
        // the header timeout to finish, and nothing has been in flight for as long, the
        // connection is dropped.
        let mut linger = pin!(async {
            tokio::time::sleep(first_timeout).await;
            activity.idle(first_timeout).await;
        });
        let side = Arc::new(SideWake::new());
        let side_waker = Waker::from(side.clone());
        let mut closing = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(res) = conn.as_mut().poll(cx) {
                if let Err(e) = res {
                    tracing::debug!(peer = %self.peer, "connection ended: {e}");
                }
                return Poll::Ready(());
            }
            if !side.take(cx.waker()) {
                return Poll::Pending;
            }
            let mut side_cx = Context::from_waker(&side_waker);
            if !closing {
                match wind_down.as_mut().poll(&mut side_cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(WindDown::Silent) => {
                        // Nothing was asked, so nothing can be lost: no GOAWAY round trip.
                        tracing::debug!(peer = %self.peer, "closed a connection that sent no request");
                        return Poll::Ready(());
                    }
                    Poll::Ready(WindDown::Stop | WindDown::Idle) => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        // Polls the connection, which acts on the shutdown, and starts `linger`.
                        Wake::wake_by_ref(&side);
                        return Poll::Pending;
                    }
                }
            }
            if linger.as_mut().poll(&mut side_cx).is_ready() {
                tracing::debug!(peer = %self.peer, "dropped a connection that did not finish closing");
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }
}

/// Why a connection winds down.
enum WindDown {
    /// guard is stopping.
    Stop,
    /// No request began within the header timeout.
    Silent,
    /// Nothing has been in flight for the idle timeout.
    Idle,
}

/// Lets a connection's task poll its wind-down future only when that future's own waker fired.
/// `tokio::select!` over the connection, the stop signal and the idle timer polled all three on
/// every one of the two or three wakeups each request causes; this polls the connection alone.
struct SideWake {
    /// Starts true: the first poll registers the side's own wakers.
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl SideWake {
    fn new() -> Self {
        SideWake {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }

    /// Whether the side needs polling now; if so, remembers `task` as the waker to pass its
    /// wakeups on to.
    fn take(&self, task: &Waker) -> bool {
        let due = self.woken.swap(false, Ordering::AcqRel);
        if due {
            let mut t = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !t.as_ref().is_some_and(|w| w.will_wake(task)) {
                *t = Some(task.clone());
            }
        }
        due
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            task.wake_by_ref();
        }
    }
}
