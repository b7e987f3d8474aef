//! The upstream side: pooled HTTP/1.1 keep-alive clients (one pool per worker thread, so a
//! request and its upstream connection never cross threads), and `forward`, which sends a
//! prepared request and waits for the response head. The response timeout starts only once the
//! request body has been sent in full, so an hour-long artifact upload is never cut.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;

use crate::body::{BodyLimitExceeded, BoxError, ClientBodyError, RequestBody};
use crate::error::ProxyError;

/// The request body type sent upstream.
pub type UpstreamBody = RequestBody<Incoming>;
/// The pooled upstream client.
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// One upstream's clients, one per worker thread. Each pool's connections are driven by the
/// worker that opened them; sharing one pool would hand connections across threads, and every
/// request would pay for a cross-thread wakeup.
#[derive(Debug)]
pub struct Upstream {
    clients: Box<[UpstreamClient]>,
}

impl Upstream {
    /// Clients for every worker; no connection is opened until a request needs one.
    pub fn new(connect_timeout: Duration) -> Self {
        Upstream {
            clients: (0..crate::server::worker_count())
                .map(|_| client(connect_timeout))
                .collect(),
        }
    }

    /// The calling worker's client (the first one off the worker threads).
    pub fn client(&self) -> &UpstreamClient {
        &self.clients[crate::server::worker_index() % self.clients.len()]
    }
}

/// Builds a client: HTTP/1.1 only, keep-alive pool, `TCP_NODELAY`, bounded connect time.
fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Sends `req` and returns the upstream's response head. `body_sent` turns true once the request
/// body has gone out; only then does `response_timeout` start. Without it there is no body and
/// the timeout starts at once.
pub async fn forward(
    client: &UpstreamClient,
    req: http::Request<UpstreamBody>,
    body_sent: Option<watch::Receiver<bool>>,
    response_timeout: Duration,
    upstream: &str,
) -> Result<http::Response<Incoming>, ProxyError> {
    let timed_out = || ProxyError::UpstreamTimeout {
        upstream: upstream.to_owned(),
        seconds: response_timeout.as_secs(),
    };
    let Some(mut body_sent) = body_sent else {
        return match tokio::time::timeout(response_timeout, client.request(req)).await {
            Ok(res) => res.map_err(|e| classify(e, upstream)),
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
        res = client.request(req) => res.map_err(|e| classify(e, upstream)),
        () = deadline => Err(timed_out()),
    }
}

/// Sorts a client error into who is at fault.
fn classify(e: hyper_util::client::legacy::Error, upstream: &str) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(limit) = s.downcast_ref::<BodyLimitExceeded>() {
            return ProxyError::BodyTooLarge { limit: limit.0 };
        }
        if s.downcast_ref::<ClientBodyError>().is_some() {
            return ProxyError::BadRequest("malformed or truncated request body");
        }
        src = s.source();
    }
    let upstream = upstream.to_owned();
    if e.is_connect() {
        if error_text(&e).contains("timed out") {
            return ProxyError::UpstreamConnectTimeout { upstream };
        }
        return ProxyError::UpstreamUnreachable {
            upstream,
            source: Box::new(e) as BoxError,
        };
    }
    ProxyError::UpstreamFailed {
        upstream,
        source: Box::new(e) as BoxError,
    }
}

fn error_text(e: &dyn std::error::Error) -> String {
    crate::tls::error_chain(e)
}
