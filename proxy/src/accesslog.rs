//! The access log: one event per request, emitted when its response has been sent (or the client
//! went away), with time, peer, method, path, status, bytes each way and timings. Query strings,
//! `Authorization` and cookies are never logged: they carry secrets.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::body::BodyProgress;

/// What the log line says about one request, filled in as the pipeline runs.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request head arrived.
    pub start: Instant,
    /// The client's address.
    pub peer: SocketAddr,
    /// Request method.
    pub method: Method,
    /// Request path, without the query string.
    pub path: String,
    /// HTTP version as the client spoke it.
    pub version: http::Version,
    /// Final status.
    pub status: StatusCode,
    /// Who was authenticated (user or token name).
    pub user: Option<String>,
    /// The site that served it.
    pub site: Option<String>,
    /// Time until the upstream's response head arrived.
    pub upstream_time: Option<Duration>,
    /// Request-body progress, when the request was forwarded.
    pub request_body: Option<Arc<BodyProgress>>,
}

impl AccessRecord {
    /// Starts a record for a request that just arrived.
    pub fn new(peer: SocketAddr, method: Method, path: &str, version: http::Version) -> Self {
        AccessRecord {
            start: Instant::now(),
            peer,
            method,
            path: truncate(path, 512),
            version,
            status: StatusCode::OK,
            user: None,
            site: None,
            upstream_time: None,
            request_body: None,
        }
    }

    /// Emits the line. `bytes_out` is the response body as sent; `complete` is false when the
    /// client went away or the stream broke before the end.
    pub fn emit(self, bytes_out: u64, complete: bool) {
        let bytes_in = self
            .request_body
            .as_ref()
            .map(|p| p.bytes.load(Ordering::Relaxed))
            .unwrap_or(0);
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream_time.map(|d| d.as_secs_f64() * 1000.0);
        tracing::info!(
            target: "guard::access",
            peer = %self.peer.ip().to_canonical(),
            method = %self.method,
            path = %self.path,
            version = ?self.version,
            status = self.status.as_u16(),
            bytes_in,
            bytes_out,
            duration_ms = format_args!("{duration_ms:.1}"),
            upstream_ms = format_args!("{}", upstream_ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into())),
            user = self.user.as_deref().unwrap_or("-"),
            site = self.site.as_deref().unwrap_or("-"),
            complete,
        );
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary (paths can be long and hostile).
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
