//! A site's upstreams: which one each request goes to (round robin or least connections), which
//! are down (the active health check, and connections refused), the retry on another when a
//! request could not be sent at all, and the response timeout. A request that reached an
//! upstream is never sent to a second one: its body is spent, and a POST would run twice.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use guard_config::model::MAX_UPSTREAMS;
use guard_config::serve::{Balance, BalanceSettings, HealthCheck};
use http::header::{HeaderValue, HOST};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::forward::{ForwardError, InFlight, PooledBody, SendError, Upstream, UpstreamBody, UpstreamFault};
use crate::metrics::{LocalCounter, Metrics, Padded, UpstreamErrorLabels, UpstreamLabels};
use crate::worker::PerWorker;

/// Every upstream of one site, and how requests are spread over them.
#[derive(Debug)]
pub struct Upstreams {
    site: String,
    /// Never empty, at most [`MAX_UPSTREAMS`] (a request's tried set is one `u64`).
    members: Box<[Arc<Member>]>,
    method: Balance,
    eject: Duration,
    health_check: Option<HealthCheck>,
    /// Send each upstream its own authority as `Host` (unless the site preserves the client's).
    set_host: bool,
    /// Where each worker's round robin goes next: its own, so picking writes no memory another
    /// worker writes. Together the workers still spread evenly.
    cursor: PerWorker<Padded<AtomicUsize>>,
    metrics: Arc<Metrics>,
}

// The tried set of a request is one bit per upstream.
const _: () = assert!(MAX_UPSTREAMS <= u64::BITS as usize);

/// One upstream and what is known of it.
#[derive(Debug)]
pub struct Member {
    /// Its connections.
    pub upstream: Upstream,
    /// Its authority as the `Host` value, one copy per worker (see `route::SiteLocal`).
    host: PerWorker<HeaderValue>,
    /// The health check's verdict: up until checks say otherwise.
    up: AtomicBool,
    /// Left out until this many milliseconds after `epoch`, after a refused connection; 0: not
    /// left out.
    ejected_until: AtomicU64,
    epoch: Instant,
    /// Requests whose response has not ended (least connections only).
    in_flight: Arc<AtomicUsize>,
    requests: LocalCounter,
    healthy: Gauge,
}

impl Member {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// Whether a request may go here now.
    fn usable(&self) -> bool {
        if !self.up.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    /// The gauge from the state: 1 when up and not left out.
    fn show(&self) {
        self.healthy.set(i64::from(self.usable()));
    }

    /// Ends a passive ejection: the upstream took a connection again.
    fn readmit(&self, site: &str, why: &str) {
        if self.ejected_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(site, upstream = %self.upstream.label(), "upstream back in the rotation: {why}");
            self.show();
        }
    }
}

impl Upstreams {
    /// The upstreams of site `site`, none connected yet. `set_host` sends each its own
    /// authority as `Host`.
    pub fn new(
        site: &str,
        upstreams: Vec<Upstream>,
        balance: &BalanceSettings,
        set_host: bool,
        metrics: &Arc<Metrics>,
    ) -> Upstreams {
        assert!(
            (1..=MAX_UPSTREAMS).contains(&upstreams.len()),
            "a site has 1 to {MAX_UPSTREAMS} upstreams (the configuration checks it)"
        );
        let members = upstreams
            .into_iter()
            .map(|upstream| {
                let labels = UpstreamLabels {
                    site: site.to_owned(),
                    upstream: upstream.label().to_owned(),
                };
                let authority = upstream.authority().to_owned();
                let m = Member {
                    host: PerWorker::new(|| {
                        HeaderValue::from_str(&authority).expect("a validated authority is a header value")
                    }),
                    upstream,
                    up: AtomicBool::new(true),
                    ejected_until: AtomicU64::new(0),
                    epoch: Instant::now(),
                    in_flight: Arc::default(),
                    requests: metrics.upstream_requests.get_or_create(&labels).clone(),
                    healthy: metrics.upstream_healthy.get_or_create(&labels).clone(),
                };
                m.show();
                Arc::new(m)
            })
            .collect();
        Upstreams {
            site: site.to_owned(),
            members,
            method: balance.method,
            eject: balance.eject_duration,
            health_check: balance.health_check.clone(),
            set_host,
            cursor: PerWorker::new(Padded::default),
            metrics: metrics.clone(),
        }
    }

    /// The next upstream for a request that has not been tried on any in `tried` (a bit per
    /// index): among those up and not left out, the next in turn, or the one with the fewest
    /// requests in flight (ties go in turn). `None`: none is left.
    fn pick(&self, tried: u64) -> Option<usize> {
        let n = self.members.len();
        let start = self.cursor.get().0.fetch_add(1, Ordering::Relaxed) % n;
        let mut candidates = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| tried & (1 << i) == 0 && self.members[i].usable());
        match self.method {
            Balance::RoundRobin => candidates.next(),
            Balance::LeastConnections => candidates.min_by_key(|&i| self.members[i].in_flight.load(Ordering::Relaxed)),
        }
    }

    /// Leaves `m` out of the rotation for the eject duration after it refused a connection.
    fn eject(&self, m: &Member, fault: &UpstreamFault) {
        if self.eject.is_zero() {
            return;
        }
        let until = m.now_ms() + u64::try_from(self.eject.as_millis()).unwrap_or(u64::MAX / 2);
        if m.ejected_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                site = %self.site,
                upstream = %m.upstream.label(),
                "upstream left out of the rotation for {}s: {}",
                self.eject.as_secs(),
                guard_config::error::chain(fault)
            );
        }
        m.show();
    }

    /// Sends `req` to one upstream; when no connection could be opened to it, to the next,
    /// until one takes it or none is left. Nothing of a request that fails any other way is
    /// sent again. `current` is the index of the upstream tried last.
    async fn send(
        &self,
        mut req: http::Request<UpstreamBody>,
        current: &AtomicUsize,
    ) -> Result<http::Response<PooledBody>, ForwardError> {
        if let [m] = &*self.members {
            // One upstream is always tried: leaving it out would only turn a slow answer into
            // a fast 502.
            self.prepare(m, &mut req);
            return m.upstream.send(req).await.map_err(|e| match e {
                SendError::Unsent { fault, .. } => fault.into(),
                SendError::Failed(e) => e,
            });
        }
        let mut tried = 0u64;
        let mut last: Option<UpstreamFault> = None;
        loop {
            let Some(i) = self.pick(tried) else {
                return Err(last
                    .unwrap_or_else(|| UpstreamFault::NoneAvailable {
                        site: self.site.clone(),
                        count: self.members.len(),
                    })
                    .into());
            };
            if let Some(fault) = last.take() {
                // The request goes on; the failure it met is still counted.
                self.count_error(&fault);
            }
            tried |= 1 << i;
            current.store(i, Ordering::Relaxed);
            let m = &self.members[i];
            self.prepare(m, &mut req);
            let in_flight = (self.method == Balance::LeastConnections).then(|| InFlight::start(&m.in_flight));
            match m.upstream.send(req).await {
                Ok(mut resp) => {
                    if let Some(f) = in_flight {
                        resp.body_mut().hold(f);
                    }
                    if m.ejected_until.load(Ordering::Relaxed) != 0 {
                        m.readmit(&self.site, "it took a request");
                    }
                    return Ok(resp);
                }
                Err(SendError::Unsent { fault, req: back }) => {
                    self.eject(m, &fault);
                    req = *back;
                    last = Some(fault);
                }
                Err(SendError::Failed(e)) => return Err(e),
            }
        }
    }

    /// What is per upstream in a request: its `Host` (also when the site keeps the client's
    /// but the client sent none, an HTTP/2 request without `:authority`), and the count.
    fn prepare(&self, m: &Member, req: &mut http::Request<UpstreamBody>) {
        if self.set_host || !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, m.host.get().clone());
        }
        m.requests.inc();
    }

    fn count_error(&self, fault: &UpstreamFault) {
        self.metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                site: self.site.clone(),
                kind: fault.kind(),
            })
            .inc();
    }

    /// Sends `req` and returns the response head and the upstream that answered. `body_sent`
    /// turns true once the request body has gone out; only then does `response_timeout`
    /// start, so an hour-long upload is never cut. Without it there is no body and the timeout
    /// starts at once.
    pub async fn forward(
        &self,
        req: http::Request<UpstreamBody>,
        body_sent: Option<watch::Receiver<bool>>,
        response_timeout: Duration,
    ) -> Result<(http::Response<PooledBody>, &Upstream), ForwardError> {
        let current = AtomicUsize::new(0);
        let answered_by = |current: &AtomicUsize| &self.members[current.load(Ordering::Relaxed)].upstream;
        let timed_out = |current: &AtomicUsize| {
            ForwardError::Upstream(UpstreamFault::Timeout {
                upstream: answered_by(current).authority().to_owned(),
                seconds: response_timeout.as_secs(),
            })
        };
        let Some(mut body_sent) = body_sent else {
            return match tokio::time::timeout(response_timeout, self.send(req, &current)).await {
                Ok(res) => res.map(|r| (r, answered_by(&current))),
                Err(_) => Err(timed_out(&current)),
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
            res = self.send(req, &current) => res.map(|r| (r, answered_by(&current))),
            () = deadline => Err(timed_out(&current)),
        }
    }

    /// Starts the active health check of each upstream when the site has several and checks
    /// are on. Each check ends once its site has been replaced (a reload) and dropped.
    pub fn spawn_health_checks(&self) {
        let Some(check) = &self.health_check else {
            return;
        };
        if self.members.len() < 2 {
            return;
        }
        for m in &*self.members {
            tokio::spawn(health_check(Arc::downgrade(m), check.clone(), self.site.clone()));
        }
    }
}

/// Checks one upstream every interval: `fall` failures in a row take it out, `rise` passes in
/// a row bring it back; a pass also ends a passive ejection.
async fn health_check(member: Weak<Member>, check: HealthCheck, site: String) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        tick.tick().await;
        let Some(m) = member.upgrade() else {
            return;
        };
        let verdict = match m.upstream.probe(&check.path, check.timeout).await {
            Ok(status) if status.is_success() => Ok(()),
            Ok(status) => Err(format!("GET {} answered {status}", check.path)),
            Err(e) => Err(format!("GET {}: {e}", check.path)),
        };
        let up = m.up.load(Ordering::Relaxed);
        match verdict {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                if !up && passes >= check.rise {
                    m.up.store(true, Ordering::Relaxed);
                    tracing::info!(site, upstream = %m.upstream.label(), "upstream up: {passes} health checks passed");
                }
                m.readmit(&site, "its health check passed");
            }
            Err(why) => {
                passes = 0;
                failures = failures.saturating_add(1);
                if up && failures >= check.fall {
                    m.up.store(false, Ordering::Relaxed);
                    tracing::warn!(site, upstream = %m.upstream.label(), "upstream down after {failures} failed health checks: {why}");
                } else {
                    tracing::debug!(site, upstream = %m.upstream.label(), "health check failed: {why}");
                }
            }
        }
        m.show();
    }
}
