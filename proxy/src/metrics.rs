//! What guard is doing, in the Prometheus text format on a separate listener: requests by site,
//! method class and status, authentication failures by reason, lockouts, upstream latency and
//! errors, open connections, bytes each way, password-cache hits and misses, and certificate
//! expiry. User and token names are label values only when the operator turns that on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::{full, ProxyBody};
use crate::worker::PerWorker;

/// Method classes: few label values, and the split operators care about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum MethodClass {
    /// GET, HEAD, OPTIONS.
    Read,
    /// POST, PUT, PATCH, DELETE.
    Write,
    /// Anything else.
    Other,
}

impl MethodClass {
    /// The class of `m`.
    pub fn of(m: &Method) -> Self {
        match *m {
            Method::GET | Method::HEAD | Method::OPTIONS => MethodClass::Read,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE => MethodClass::Write,
            _ => MethodClass::Other,
        }
    }
}

/// Labels of `guard_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Site name, or `-` before routing.
    pub site: String,
    /// Method class.
    pub method: MethodClass,
    /// Status code.
    pub status: u16,
}

/// One label: the site.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabel {
    /// Site name.
    pub site: String,
}

/// One label: a reason or kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// Labels of `guard_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Site name.
    pub site: String,
    /// `unreachable`, `connect_timeout`, `timeout` or `failed`.
    pub kind: &'static str,
}

/// Labels of the per-upstream series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Site name.
    pub site: String,
    /// The upstream, `http://host:port` or `https://host:port`.
    pub upstream: String,
}

/// One label: a user or token name (only with `--metrics-user-labels`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabel {
    /// User or token name.
    pub user: String,
}

/// One label: a certificate's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabel {
    /// The certificate's first name.
    pub name: String,
}

type CounterFamily<L> = Family<L, LocalCounter, fn() -> LocalCounter>;
type HistogramFamily = Family<SiteLabel, LocalHistogram, fn() -> LocalHistogram>;

/// One worker's slot, alone on its cache line(s): two workers bumping neighbouring counters
/// would pass the line back and forth on every request.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A counter kept per worker thread and summed when scraped. Counters on the request path are
/// bumped on every request by every worker; one shared atomic would cost a cross-core cache
/// transfer each time, which nginx's per-process counters do not pay either.
#[derive(Clone, Debug)]
pub struct LocalCounter(Arc<PerWorker<Padded<AtomicU64>>>);

impl Default for LocalCounter {
    fn default() -> Self {
        LocalCounter(Arc::new(PerWorker::new(Padded::default)))
    }
}

impl LocalCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `v`.
    pub fn inc_by(&self, v: u64) {
        self.0.get().0.fetch_add(v, Ordering::Relaxed);
    }

    /// The total over every worker.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for LocalCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for LocalCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Upper bounds of [`LocalHistogram`]'s buckets in seconds: 1 ms doubling up to about 131 s, as
/// `exponential_buckets(0.001, 2.0, 18)`; past the last comes `+Inf`.
const LATENCY_BUCKETS: usize = 18;

fn bucket_bound(i: usize) -> f64 {
    0.001 * f64::from(1u32 << i)
}

/// One worker's part of a [`LocalHistogram`].
#[derive(Debug, Default)]
struct HistogramShard {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A latency histogram kept per worker thread and merged when scraped (prometheus-client's own
/// takes a lock shared by every worker on each observation).
#[derive(Clone, Debug)]
pub struct LocalHistogram(Arc<PerWorker<Padded<HistogramShard>>>);

impl Default for LocalHistogram {
    fn default() -> Self {
        LocalHistogram(Arc::new(PerWorker::new(Padded::default)))
    }
}

impl LocalHistogram {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let bucket = (0..LATENCY_BUCKETS)
            .find(|&i| secs <= bucket_bound(i))
            .unwrap_or(LATENCY_BUCKETS);
        let s = &self.0.get().0;
        s.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl TypedMetric for LocalHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LocalHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let total = |f: &dyn Fn(&HistogramShard) -> &AtomicU64| -> u64 {
            self.0.iter().map(|s| f(&s.0).load(Ordering::Relaxed)).sum()
        };
        let buckets: Vec<(f64, u64)> = (0..=LATENCY_BUCKETS)
            .map(|i| {
                let bound = if i == LATENCY_BUCKETS {
                    f64::INFINITY
                } else {
                    bucket_bound(i)
                };
                (bound, total(&|s| &s.buckets[i]))
            })
            .collect();
        let sum = total(&|s| &s.sum_micros) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, total(&|s| &s.count), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One site's series, looked up once when the site is built rather than on every request (a
/// family lookup hashes the label set and takes a lock).
#[derive(Debug)]
pub struct SiteMetrics {
    /// `guard_request_bytes_total` for the site.
    pub bytes_in: LocalCounter,
    /// `guard_response_bytes_total` for the site.
    pub bytes_out: LocalCounter,
    /// `guard_upstream_response_seconds` for the site.
    pub upstream_latency: LocalHistogram,
    /// `guard_requests_total` by method class and status, filled in on first use.
    requests: Box<[std::sync::OnceLock<LocalCounter>]>,
    site: String,
    family: CounterFamily<RequestLabels>,
}

/// Statuses with a slot of their own in [`SiteMetrics`]; others go through the family.
const STATUSES: std::ops::Range<u16> = 100..600;

impl SiteMetrics {
    /// The series of site `site` in `metrics`.
    pub fn new(metrics: &Metrics, site: &str) -> Self {
        let label = SiteLabel { site: site.to_owned() };
        let slots = 3 * STATUSES.len();
        SiteMetrics {
            bytes_in: metrics.bytes_in.get_or_create(&label).clone(),
            bytes_out: metrics.bytes_out.get_or_create(&label).clone(),
            upstream_latency: metrics.upstream_latency.get_or_create(&label).clone(),
            requests: (0..slots).map(|_| std::sync::OnceLock::new()).collect(),
            site: site.to_owned(),
            family: metrics.requests.clone(),
        }
    }

    /// Counts one answered request.
    pub fn count_request(&self, method: MethodClass, status: u16) {
        let labels = || RequestLabels {
            site: self.site.clone(),
            method,
            status,
        };
        if !STATUSES.contains(&status) {
            self.family.get_or_create(&labels()).inc();
            return;
        }
        let slot = method as usize * STATUSES.len() + usize::from(status - STATUSES.start);
        self.requests[slot]
            .get_or_init(|| self.family.get_or_create(&labels()).clone())
            .inc();
    }
}

/// Every metric guard keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: CounterFamily<RequestLabels>,
    /// Requests by user (only with user labels on).
    pub requests_by_user: Option<Family<UserLabel, Counter>>,
    /// Authentication failures by reason.
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Addresses locked out.
    pub lockouts: Counter,
    /// Reloads of a users or tokens file that failed, leaving the previous set in use.
    pub auth_reload_errors: Counter,
    /// Identity-provider fetches (discovery document, key set) that failed; the keys already
    /// fetched stay in use.
    pub idp_fetch_errors: Counter,
    /// Time to the upstream's response head.
    pub upstream_latency: HistogramFamily,
    /// Upstream failures by kind.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Requests sent to each upstream (a retried one counts at each it was tried on).
    pub upstream_requests: CounterFamily<UpstreamLabels>,
    /// Whether each upstream takes requests: 1, or 0 while its health check fails or after it
    /// refused a connection.
    pub upstream_healthy: Family<UpstreamLabels, Gauge>,
    /// Open client connections.
    pub open_connections: Gauge,
    /// Request body bytes received from clients.
    pub bytes_in: CounterFamily<SiteLabel>,
    /// Response body bytes sent to clients.
    pub bytes_out: CounterFamily<SiteLabel>,
    /// Password checks answered from the cache.
    pub cache_hits: Counter,
    /// Password checks that ran bcrypt.
    pub cache_misses: Counter,
    /// Expiry of each served certificate, Unix seconds.
    pub cert_expiry: Family<CertLabel, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    /// Registers every metric. `user_labels` adds `guard_requests_by_user_total`.
    pub fn new(user_labels: bool) -> Self {
        let mut registry = Registry::with_prefix("guard");
        let requests: CounterFamily<RequestLabels> = Family::new_with_constructor(LocalCounter::default);
        registry.register(
            "requests",
            "Requests answered, by site, method class and status",
            requests.clone(),
        );
        let requests_by_user = user_labels.then(|| {
            let f = Family::<UserLabel, Counter>::default();
            registry.register(
                "requests_by_user",
                "Authenticated requests by user or token name",
                f.clone(),
            );
            f
        });
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Authentication failures by reason",
            auth_failures.clone(),
        );
        let lockouts = Counter::default();
        registry.register(
            "lockouts",
            "Client addresses locked out after repeated failures",
            lockouts.clone(),
        );
        let idp_fetch_errors = Counter::default();
        registry.register(
            "idp_fetch_errors",
            "Identity-provider discovery or key-set fetches that failed (the keys already fetched stay in use)",
            idp_fetch_errors.clone(),
        );
        let auth_reload_errors = Counter::default();
        registry.register(
            "auth_reload_errors",
            "Reloads of a users or tokens file that failed; the previous set stays in use",
            auth_reload_errors.clone(),
        );
        let upstream_latency: HistogramFamily = Family::new_with_constructor(LocalHistogram::default);
        registry.register(
            "upstream_response_seconds",
            "Time from sending a request upstream to its response head",
            upstream_latency.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register("upstream_errors", "Upstream failures by kind", upstream_errors.clone());
        let upstream_requests: CounterFamily<UpstreamLabels> = Family::new_with_constructor(LocalCounter::default);
        registry.register(
            "upstream_requests",
            "Requests sent to each upstream, retries on another included",
            upstream_requests.clone(),
        );
        let upstream_healthy = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_healthy",
            "1 while an upstream takes requests, 0 while it is down (failed health checks or a refused connection)",
            upstream_healthy.clone(),
        );
        let open_connections = Gauge::default();
        registry.register("open_connections", "Open client connections", open_connections.clone());
        let bytes_in: CounterFamily<SiteLabel> = Family::new_with_constructor(LocalCounter::default);
        registry.register(
            "request_bytes",
            "Request body bytes received from clients",
            bytes_in.clone(),
        );
        let bytes_out: CounterFamily<SiteLabel> = Family::new_with_constructor(LocalCounter::default);
        registry.register(
            "response_bytes",
            "Response body bytes sent to clients",
            bytes_out.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "auth_cache_hits",
            "Password checks answered from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "auth_cache_misses",
            "Password checks that ran the hash",
            cache_misses.clone(),
        );
        let cert_expiry = Family::<CertLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When each served certificate expires, in Unix seconds",
            cert_expiry.clone(),
        );
        Metrics {
            registry,
            requests,
            requests_by_user,
            auth_failures,
            lockouts,
            auth_reload_errors,
            idp_fetch_errors,
            upstream_latency,
            upstream_errors,
            upstream_requests,
            upstream_healthy,
            open_connections,
            bytes_in,
            bytes_out,
            cache_hits,
            cache_misses,
            cert_expiry,
        }
    }

    /// Counts a refused authentication (Basic, token, session or the sign-in page) by its
    /// reason label (`AuthFailure::reason`).
    pub fn count_auth_failure(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// At most this many scrape connections at once: a scraper or two, with room for a human with
/// curl. Past it new connections wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 64;
/// A scrape is one short request; a connection that lives longer than this is dropped, so a
/// client that trickles its request or never reads the answer cannot keep its slot.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The pause after a failed accept (EMFILE and friends), so the loop backs off instead of
/// spinning while the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `GET /metrics` on `listener` (plain HTTP; bind it to loopback) until the process ends.
/// A connection must send its request head within `header_timeout` (the serve header timeout),
/// carries one request, and is closed after [`CONNECTION_LIFETIME`] whatever it is doing.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, header_timeout: Duration) {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        // Warn when accepts start failing, not for each failure: a full descriptor table would
        // otherwise log ten lines a second.
        let mut failing = false;
        loop {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (tcp, peer) = match listener.accept().await {
                Ok(pair) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("metrics listener: accepting again");
                    }
                    pair
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!("metrics listener: accept failed: {e}");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics)) }
                });
                // HTTP/1.1 only: scrapers speak it over plain TCP, and hyper's header timeout
                // starts at once here, where the auto builder would first wait, untimed, for
                // enough bytes to tell HTTP/1.1 from HTTP/2. No keep-alive: a scraper opens one
                // request per scrape, and an idle kept-alive connection would hold a slot.
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(false);
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                    Ok(Err(e)) => tracing::debug!(%peer, "metrics connection ended: {e}"),
                    Err(_) => tracing::debug!(%peer, "metrics connection dropped after its lifetime"),
                    Ok(Ok(())) => {}
                }
                drop(permit);
            });
        }
    });
}

fn answer(req: &Request<Incoming>, metrics: &Metrics) -> Response<ProxyBody> {
    if req.uri().path() != "/metrics" {
        let mut r = Response::new(full(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let mut r = Response::new(full(metrics.encode()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// The address metrics are served on, for the startup line.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition_with_their_labels() {
        let m = Metrics::new(false);
        m.requests
            .get_or_create(&RequestLabels {
                site: "mlflow".into(),
                method: MethodClass::Write,
                status: 200,
            })
            .inc();
        m.auth_failures
            .get_or_create(&ReasonLabel { reason: "bad_password" })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("guard_requests_total{site=\"mlflow\",method=\"Write\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("guard_auth_failures_total{reason=\"bad_password\"} 1"),
            "{text}"
        );
        assert!(!text.contains("requests_by_user"), "user labels are off by default");
    }

    #[test]
    fn per_worker_series_add_up_when_scraped() {
        let m = Metrics::new(false);
        let site = SiteMetrics::new(&m, "mlflow");
        site.bytes_out.inc_by(5);
        site.bytes_out.inc_by(7);
        site.count_request(MethodClass::Read, 200);
        site.upstream_latency.observe(std::time::Duration::from_micros(1500));
        site.upstream_latency.observe(std::time::Duration::from_millis(3));
        site.upstream_latency.observe(std::time::Duration::from_secs(1000));
        let text = m.encode();
        for line in [
            "guard_response_bytes_total{site=\"mlflow\"} 12",
            "guard_requests_total{site=\"mlflow\",method=\"Read\",status=\"200\"} 1",
            "guard_upstream_response_seconds_bucket{le=\"0.001\",site=\"mlflow\"} 0",
            "guard_upstream_response_seconds_bucket{le=\"0.002\",site=\"mlflow\"} 1",
            "guard_upstream_response_seconds_bucket{le=\"0.004\",site=\"mlflow\"} 2",
            "guard_upstream_response_seconds_bucket{le=\"131.072\",site=\"mlflow\"} 2",
            "guard_upstream_response_seconds_bucket{le=\"+Inf\",site=\"mlflow\"} 3",
            "guard_upstream_response_seconds_count{site=\"mlflow\"} 3",
            "guard_upstream_response_seconds_sum{site=\"mlflow\"} 1000.0045",
            "# TYPE guard_upstream_response_seconds histogram",
            "# TYPE guard_response_bytes counter",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
