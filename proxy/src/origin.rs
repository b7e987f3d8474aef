//! Cross-site request refusal at the edge: guard is the origin the browser talks to, so guard,
//! not the upstream, decides whether a state-changing request comes from the site's own pages.
//!
//! Browsers replay Basic credentials (and cookies) on a cross-site form post, so without this
//! any page on the web could make a signed-in user's browser create or delete things. MLflow 3.5+
//! refuses such writes itself, but compares `Origin` with localhost and its own list, and so
//! also refuses the site's own UI when it is opened under a real host name behind a proxy. Here a
//! write whose `Origin` is the site's own (`https://` + the `Host` the client used) or listed in
//! `allowed_origins` goes on without `Origin`, which MLflow treats as a non-browser client;
//! any other origin, or `Sec-Fetch-Site: cross-site`, gets 403 and nothing is forwarded.
//! Requests without `Origin` (the MLflow Python client, curl) are not affected.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{full, ProxyBody};

/// `Sec-Fetch-Site` (Fetch Metadata): `cross-site`, `same-site`, `same-origin` or `none`.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// What the origin check decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a browser's cross-site concern: a safe method, or no `Origin` and no
    /// `Sec-Fetch-Site: cross-site`. Forwarded as it is.
    Unchecked,
    /// A write from the site's own pages: forwarded without `Origin`.
    SameOrigin,
    /// A write from an origin in `allowed_origins`: forwarded without `Origin`; the response
    /// carries CORS headers for that origin.
    Allowed(HeaderValue),
    /// A CORS preflight from an allowed origin: guard answers it (preflights carry no
    /// credentials, so the upstream behind authentication would only ever see a 401).
    Preflight(HeaderValue),
    /// Refused with 403; the origin (or `-`) and why, for the log.
    Refused(CrossOrigin),
}

/// A refused request: which origin it named, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossOrigin {
    /// The `Origin` as sent, or a description when there was none or it was unreadable.
    pub origin: String,
}

impl std::fmt::Display for CrossOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cross-origin write from {}", self.origin)
    }
}

/// Whether a method can change state. Everything but GET, HEAD and OPTIONS counts (TRACE is
/// refused elsewhere by nobody, so it is treated as a write: failing closed costs nothing).
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Decides a request. `host` is the `Host` (or HTTP/2 `:authority`) the client used; `allowed`
/// the site's extra origins, normalised as `guard_config::validate::parse_origin` writes them.
pub fn check(method: &Method, headers: &HeaderMap, host: Option<&str>, allowed: &[String]) -> Verdict {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = origins.next();
    if origins.next().is_some() {
        return refused("two Origin headers");
    }
    if *method == Method::OPTIONS {
        // A preflight is an OPTIONS with Origin and Access-Control-Request-Method.
        return match origin {
            Some(o) if headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) && is_listed(o, allowed) => {
                Verdict::Preflight(o.clone())
            }
            _ => Verdict::Unchecked,
        };
    }
    if !is_write(method) {
        return Verdict::Unchecked;
    }
    let Some(origin) = origin else {
        let cross_site = headers
            .get(SEC_FETCH_SITE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        return if cross_site {
            refused("no Origin, Sec-Fetch-Site: cross-site")
        } else {
            Verdict::Unchecked
        };
    };
    if host.is_some_and(|h| is_own(origin.as_bytes(), h)) {
        return Verdict::SameOrigin;
    }
    if is_listed(origin, allowed) {
        return Verdict::Allowed(origin.clone());
    }
    refused(&String::from_utf8_lossy(origin.as_bytes()))
}

fn refused(origin: &str) -> Verdict {
    // Bounded: the value is the client's and goes to the log.
    let origin: String = origin.chars().take(200).collect();
    Verdict::Refused(CrossOrigin { origin })
}

/// `origin` is `https://` + `host`, compared as browsers form them: case-insensitive, with
/// `:443` the same as no port.
fn is_own(origin: &[u8], host: &str) -> bool {
    let Some(rest) = strip_prefix_ignore_case(origin, b"https://") else {
        return false;
    };
    let host = host.as_bytes();
    let strip_443 = |b: &[u8]| -> usize {
        if b.len() > 4 && b[b.len() - 4..] == *b":443" {
            b.len() - 4
        } else {
            b.len()
        }
    };
    let (o, h) = (&rest[..strip_443(rest)], &host[..strip_443(host)]);
    !o.is_empty() && o.eq_ignore_ascii_case(h)
}

fn strip_prefix_ignore_case<'a>(b: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (b.len() >= prefix.len() && b[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &b[prefix.len()..])
}

/// Whether `origin` is one of `allowed` (stored lowercase, default ports dropped).
fn is_listed(origin: &HeaderValue, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return false;
    }
    let Ok(o) = origin.to_str() else { return false };
    let o = o.to_ascii_lowercase();
    let o = o
        .strip_suffix(":443")
        .filter(|_| o.starts_with("https://"))
        .or_else(|| o.strip_suffix(":80").filter(|_| o.starts_with("http://")))
        .unwrap_or(&o);
    allowed.iter().any(|a| a == o)
}

/// The CORS headers that let a page of an allowed origin read the response, credentials
/// included.
pub fn allow(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// guard's answer to a preflight from an allowed origin: the method and headers asked for are
/// allowed, for ten minutes.
pub fn preflight(request: &HeaderMap, origin: HeaderValue) -> Response<ProxyBody> {
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    allow(h, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"),
    );
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn writes_are_decided_by_origin_and_fetch_metadata() {
        let allowed = vec!["https://dash.example".to_string(), "http://localhost:3000".to_string()];
        let host = Some("mlflow.example:8443");
        // (method, headers, what is decided)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            // The MLflow client and curl: no Origin.
            ("POST", &[], "unchecked"),
            ("DELETE", &[("sec-fetch-site", "same-origin")], "unchecked"),
            // The site's own pages, under any spelling browsers produce.
            ("POST", &[("origin", "https://mlflow.example:8443")], "same"),
            ("PATCH", &[("origin", "HTTPS://MLflow.Example:8443")], "same"),
            (
                "PUT",
                &[
                    ("origin", "https://mlflow.example:8443"),
                    ("sec-fetch-site", "same-origin"),
                ],
                "same",
            ),
            // Another origin, another scheme, another port, a look-alike, null.
            ("POST", &[("origin", "https://evil.example")], "refused"),
            ("POST", &[("origin", "http://mlflow.example:8443")], "refused"),
            ("POST", &[("origin", "https://mlflow.example")], "refused"),
            (
                "POST",
                &[("origin", "https://mlflow.example:8443.evil.example")],
                "refused",
            ),
            ("POST", &[("origin", "https://mlflow.example:8443/")], "refused"),
            ("DELETE", &[("origin", "null")], "refused"),
            ("POST", &[("origin", "")], "refused"),
            (
                "POST",
                &[
                    ("origin", "https://mlflow.example:8443"),
                    ("origin", "https://mlflow.example:8443"),
                ],
                "refused",
            ),
            // Fetch metadata without Origin.
            ("POST", &[("sec-fetch-site", "cross-site")], "refused"),
            ("POST", &[("sec-fetch-site", "Cross-Site")], "refused"),
            // Listed origins, default ports dropped.
            ("POST", &[("origin", "https://dash.example")], "allowed"),
            ("POST", &[("origin", "https://DASH.example:443")], "allowed"),
            ("POST", &[("origin", "http://localhost:3000")], "allowed"),
            (
                "POST",
                &[("origin", "https://dash.example"), ("sec-fetch-site", "cross-site")],
                "allowed",
            ),
            ("POST", &[("origin", "http://dash.example")], "refused"),
            // Reads are never refused here.
            (
                "GET",
                &[("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")],
                "unchecked",
            ),
            ("HEAD", &[("origin", "https://evil.example")], "unchecked"),
            // Preflights: answered for listed origins only.
            (
                "OPTIONS",
                &[
                    ("origin", "https://dash.example"),
                    ("access-control-request-method", "POST"),
                ],
                "preflight",
            ),
            (
                "OPTIONS",
                &[
                    ("origin", "https://evil.example"),
                    ("access-control-request-method", "POST"),
                ],
                "unchecked",
            ),
            ("OPTIONS", &[("origin", "https://dash.example")], "unchecked"),
            // Any method that is not a read counts as a write.
            ("PROPFIND", &[("origin", "https://evil.example")], "refused"),
        ];
        for (method, h, want) in cases {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let got = match check(&m, &headers(h), host, &allowed) {
                Verdict::Unchecked => "unchecked",
                Verdict::SameOrigin => "same",
                Verdict::Allowed(_) => "allowed",
                Verdict::Preflight(_) => "preflight",
                Verdict::Refused(_) => "refused",
            };
            assert_eq!(got, *want, "{method} {h:?}");
        }
    }

    #[test]
    fn the_default_https_port_is_no_port() {
        assert!(is_own(b"https://mlflow.example", "mlflow.example:443"));
        assert!(is_own(b"https://mlflow.example:443", "mlflow.example"));
        assert!(is_own(b"https://[::1]:8443", "[::1]:8443"));
        assert!(!is_own(b"https://", ""));
        assert!(!is_own(b"https://a", "b"));
    }

    #[test]
    fn no_host_means_no_own_origin() {
        let h = headers(&[("origin", "https://mlflow.example")]);
        assert!(matches!(check(&Method::POST, &h, None, &[]), Verdict::Refused(_)));
    }
}
