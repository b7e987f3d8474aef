//! The plain-HTTP listener (port 80): answers ACME HTTP-01 validations under
//! `/.well-known/acme-challenge/` and sends every other request to HTTPS with a 308, which keeps
//! the method and body (RFC 9110 §15.4.9), so a client's POST to `http://` is repeated as a POST.
//! Nothing here authenticates or reaches the upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::acme::Http01Answers;

/// Where CAs look for HTTP-01 answers (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Most plain connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 1024;
/// Time allowed for a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a plain connection lives: validators and redirected clients need one request.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// A request body read and dropped before the 308, so a client that sends its whole body before
/// reading sees the redirect instead of a reset connection. Larger bodies are cut off.
const DISCARD_BODY_BYTES: usize = 1 << 20;

/// What the plain listener needs to answer.
#[derive(Debug)]
pub struct Redirect {
    answers: Arc<Http01Answers>,
    domains: Vec<String>,
    https_port: u16,
}

impl Redirect {
    /// Answers from `answers`, redirects to `https://DOMAIN:https_port` (the port left out when
    /// 443). A `Host` that is not one of `domains` is redirected to the first domain, so the
    /// listener cannot be used to bounce clients to arbitrary sites.
    pub fn new(answers: Arc<Http01Answers>, domains: Vec<String>, https_port: u16) -> Self {
        Redirect {
            answers,
            domains,
            https_port,
        }
    }

    /// The response to one plain request.
    pub fn respond(&self, method: &Method, uri: &http::Uri, host: Option<&str>) -> Response<Full<Bytes>> {
        let path = uri.path();
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
            // Matched on the path alone: validators send `Host: name:port`.
            let answer = (method == Method::GET || method == Method::HEAD)
                .then(|| self.answers.get(token))
                .flatten();
            return match answer {
                Some(ka) => {
                    tracing::debug!(token, "answered an http-01 validation");
                    plain(StatusCode::OK, ka)
                }
                None => plain(StatusCode::NOT_FOUND, "no such challenge\n".into()),
            };
        }
        let location = self.location(uri, host);
        let mut resp = plain(StatusCode::PERMANENT_REDIRECT, format!("moved to {location}\n"));
        match HeaderValue::from_str(&location) {
            Ok(v) => {
                resp.headers_mut().insert(header::LOCATION, v);
                resp
            }
            Err(_) => plain(StatusCode::BAD_REQUEST, "bad request target\n".into()),
        }
    }

    /// `https://HOST[:PORT]PATH?QUERY` for the request.
    fn location(&self, uri: &http::Uri, host: Option<&str>) -> String {
        let asked = host
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .map(strip_port)
            .map(str::to_ascii_lowercase);
        let host = match asked {
            Some(h) if self.domains.contains(&h) => h,
            _ => self.domains.first().cloned().unwrap_or_else(|| "localhost".into()),
        };
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let pq = if pq.starts_with('/') { pq } else { "/" };
        format!("https://{host}{port}{pq}")
    }
}

/// `example.com:80` → `example.com`; IPv6 literals are left alone (they never match a domain).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Accepts plain connections until the task is aborted.
pub async fn serve(listener: TcpListener, redirect: Arc<Redirect>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("plain listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let redirect = redirect.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, redirect.clone()));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!(%peer, "plain connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn answer(req: Request<Incoming>, redirect: Arc<Redirect>) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let resp = redirect.respond(req.method(), req.uri(), host.as_deref());
    if resp.status() == StatusCode::PERMANENT_REDIRECT {
        let _ = Limited::new(req.into_body(), DISCARD_BODY_BYTES).collect().await;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(port: u16) -> Redirect {
        let answers = Arc::new(Http01Answers::default());
        Redirect::new(answers, vec!["mlflow.example.com".into(), "b.example.com".into()], port)
    }

    fn location(r: &Redirect, method: Method, target: &str, host: Option<&str>) -> (u16, Option<String>) {
        let resp = r.respond(&method, &target.parse().unwrap(), host);
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_owned());
        (resp.status().as_u16(), loc)
    }

    #[test]
    fn redirect_keeps_path_and_query_and_targets_the_public_port() {
        let r = redirect(443);
        assert_eq!(
            location(
                &r,
                Method::POST,
                "/api/2.0/mlflow/runs/create?x=1&y=2",
                Some("b.example.com")
            ),
            (
                308,
                Some("https://b.example.com/api/2.0/mlflow/runs/create?x=1&y=2".into())
            )
        );
        let r = redirect(8443);
        assert_eq!(
            location(&r, Method::GET, "/", Some("MLflow.Example.com:80")),
            (308, Some("https://mlflow.example.com:8443/".into()))
        );
    }

    #[test]
    fn unknown_hosts_are_sent_to_the_first_domain() {
        let r = redirect(443);
        assert_eq!(
            location(&r, Method::GET, "/x", Some("evil.example.net")),
            (308, Some("https://mlflow.example.com/x".into()))
        );
        assert_eq!(
            location(&r, Method::GET, "/x", None),
            (308, Some("https://mlflow.example.com/x".into()))
        );
        assert_eq!(
            location(&r, Method::GET, "/x", Some("[::1]:80")),
            (308, Some("https://mlflow.example.com/x".into()))
        );
    }

    #[test]
    fn challenge_tokens_are_answered_by_path_whatever_the_host() {
        let r = redirect(443);
        r.answers.insert("tok".into(), "tok.thumb".into());
        let resp = r.respond(
            &Method::GET,
            &"/.well-known/acme-challenge/tok".parse().unwrap(),
            Some("x:5002"),
        );
        assert_eq!(resp.status(), 200);
        assert_eq!(
            location(&r, Method::GET, "/.well-known/acme-challenge/nope", None).0,
            404
        );
        assert_eq!(
            location(&r, Method::POST, "/.well-known/acme-challenge/tok", None).0,
            404
        );
    }
}
