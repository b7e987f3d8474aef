//! The upstream side: one pooled HTTP/1.1 keep-alive client, and `forward`, which sends a
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

/// Builds the client: HTTP/1.1 only, keep-alive pool, `TCP_NODELAY`, bounded connect time.
pub fn client(connect_timeout: Duration) -> UpstreamClient {
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
/// body has gone out; only then does `response_timeout` start.
pub async fn forward(
    client: &UpstreamClient,
    req: http::Request<UpstreamBody>,
    mut body_sent: watch::Receiver<bool>,
    response_timeout: Duration,
    upstream: &str,
) -> Result<http::Response<Incoming>, ProxyError> {
    let deadline = async {
        // A sender dropped before the end means the body failed; the request future reports it.
        if body_sent.wait_for(|sent| *sent).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(response_timeout).await;
    };
    tokio::select! {
        res = client.request(req) => res.map_err(|e| classify(e, upstream)),
        () = deadline => Err(ProxyError::UpstreamTimeout {
            upstream: upstream.to_owned(),
            seconds: response_timeout.as_secs(),
        }),
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
