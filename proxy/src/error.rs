//! Every way a request can fail, and the one place those failures become HTTP responses:
//! client faults are 4xx, upstream faults 502 (504 on timeout), our own faults 500. Bodies are
//! short fixed JSON phrases in MLflow's error shape; details go to the log only.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::auth::AuthFailure;
use crate::body::{full, BodyFault, ProxyBody};
use crate::forward::{ForwardError, UpstreamFault};
use crate::route::Misroute;

/// Why guard answered a request itself instead of relaying the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream failed the request.
    #[error(transparent)]
    Upstream(#[from] UpstreamFault),
    /// The client's request body failed: too large, stalled or broken off.
    #[error(transparent)]
    Body(#[from] BodyFault),
    /// The request could not be turned into an upstream request.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// More request headers than `--max-headers` (HTTP/2; hyper enforces it for HTTP/1.1).
    #[error("more than {0} request headers")]
    TooManyHeaders(usize),
    /// A request target longer than `--max-uri-size`.
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    /// A path under guard's reserved prefix that guard does not serve.
    #[error("no such guard endpoint")]
    NotFound,
    /// The caller's role does not allow the request.
    #[error("refused {method} {path} to {user}: role {role} may not")]
    RoleDenied {
        /// Who asked.
        user: String,
        /// Their role.
        role: guard_config::roles::Role,
        /// What they asked.
        method: http::Method,
        /// Where (the path only, never the query).
        path: String,
    },
    /// A method one of guard's own endpoints does not take.
    #[error("method not allowed on a guard endpoint")]
    MethodNotAllowed,
    /// The OS random source failed while making a session.
    #[error("no random numbers for a session")]
    NoRandom,
    /// A password change from the MLflow UI could not be written to the users file.
    #[error("cannot change the password")]
    UsersWrite(#[source] guard_config::users::UsersError),
    /// No site serves the request's host, or its `Host` disagrees with its SNI.
    #[error("misrouted request: {0:?}")]
    Misrouted(Misroute),
    /// A write from a browser page of another origin (CSRF).
    #[error("refused {0}")]
    CrossOrigin(crate::origin::CrossOrigin),
    /// The authenticated name cannot be written as the forwarded-user header's value (not
    /// visible ASCII): refused rather than forwarded without an identity.
    #[error("site {site}: {name:?} authenticated, but the name cannot be sent in {header}; refused (rename the user or token to visible ASCII)")]
    UnsendableIdentity {
        /// The site.
        site: String,
        /// The user or token name.
        name: String,
        /// The forwarded-user header.
        header: http::HeaderName,
    },
    /// The request did not authenticate.
    #[error("authentication failed: {}", failure.reason())]
    Auth {
        /// Why.
        failure: AuthFailure,
        /// The realm to challenge with.
        realm: String,
        /// Whether to send `WWW-Authenticate`: not to a browser whose session just ended, which
        /// would pop up a password dialog over the MLflow UI instead of its sign-in page.
        challenge: bool,
        /// Whether to delete the browser's session cookies with the answer.
        end_session: bool,
    },
}

impl From<ForwardError> for ProxyError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Body(b) => ProxyError::Body(b),
            ForwardError::Upstream(u) => ProxyError::Upstream(u),
        }
    }
}

/// Whose fault a failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client's (a bad request, missing credentials): routine, logged at debug, 4xx.
    Client,
    /// A refusal an operator wants to see (a cross-site write, a role's limit): info, 403.
    Refused,
    /// The upstream's, with its metrics kind: warn, 502 or 504.
    Upstream(&'static str),
    /// guard's own or its configuration's: warn.
    Guard,
}

impl ProxyError {
    /// Status, MLflow-style error code and the fixed message the client sees.
    pub fn public_parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ProxyError::Upstream(UpstreamFault::Unreachable { .. }) => (
                StatusCode::BAD_GATEWAY,
                "TEMPORARILY_UNAVAILABLE",
                "the upstream server is unreachable",
            ),
            ProxyError::Upstream(UpstreamFault::Tls { .. }) => (
                StatusCode::BAD_GATEWAY,
                "TEMPORARILY_UNAVAILABLE",
                "the upstream server could not be reached securely",
            ),
            ProxyError::Upstream(UpstreamFault::NoneAvailable { .. }) => (
                StatusCode::BAD_GATEWAY,
                "TEMPORARILY_UNAVAILABLE",
                "no upstream server is available",
            ),
            ProxyError::Upstream(UpstreamFault::Failed { .. }) => (
                StatusCode::BAD_GATEWAY,
                "TEMPORARILY_UNAVAILABLE",
                "the upstream server failed to answer",
            ),
            ProxyError::Upstream(UpstreamFault::ConnectTimeout { .. } | UpstreamFault::Timeout { .. }) => (
                StatusCode::GATEWAY_TIMEOUT,
                "DEADLINE_EXCEEDED",
                "the upstream server did not answer in time",
            ),
            ProxyError::Body(BodyFault::TooLarge { .. }) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "REQUEST_LIMIT_EXCEEDED",
                "the request body exceeds the configured maximum size",
            ),
            // Not retried by the MLflow client (a body cannot be replayed from here anyway).
            ProxyError::Body(BodyFault::Stalled { .. }) => (
                StatusCode::REQUEST_TIMEOUT,
                "DEADLINE_EXCEEDED",
                "the request body stopped arriving",
            ),
            ProxyError::BadRequest(_) | ProxyError::Body(BodyFault::Malformed) => (
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the request could not be forwarded",
            ),
            ProxyError::TooManyHeaders(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "BAD_REQUEST",
                "too many request headers",
            ),
            ProxyError::UriTooLong(_) => (
                StatusCode::URI_TOO_LONG,
                "BAD_REQUEST",
                "the request target is too long",
            ),
            ProxyError::NotFound => (StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND", "no such endpoint"),
            // Names the role, so a reader's UI says why instead of a bare 403.
            ProxyError::RoleDenied { role, .. } => (
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                match role {
                    guard_config::roles::Role::Reader => {
                        "permission denied: your role is reader, which can see everything and change nothing"
                    }
                    guard_config::roles::Role::Writer => "permission denied for your role",
                },
            ),
            ProxyError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "BAD_REQUEST",
                "this endpoint does not take that method",
            ),
            ProxyError::NoRandom => (
                StatusCode::SERVICE_UNAVAILABLE,
                "TEMPORARILY_UNAVAILABLE",
                "cannot sign in right now; try again",
            ),
            ProxyError::UsersWrite(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "the password could not be changed; ask the administrator",
            ),
            ProxyError::Misrouted(_) => (
                StatusCode::MISDIRECTED_REQUEST,
                "ENDPOINT_NOT_FOUND",
                "this server does not serve that host name",
            ),
            ProxyError::CrossOrigin(_) => (
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "cross-origin request refused: this origin may not change anything here",
            ),
            ProxyError::UnsendableIdentity { .. } => (
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "this account's name cannot be passed to the server; ask the administrator",
            ),
            // Never a 5xx: the MLflow client retries those, five times, POSTs included.
            ProxyError::Auth { failure, .. } => match failure {
                AuthFailure::LockedOut(_) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "REQUEST_LIMIT_EXCEEDED",
                    "too many failed logins from this address; try again later",
                ),
                AuthFailure::Busy => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "REQUEST_LIMIT_EXCEEDED",
                    "too many logins being checked; try again shortly",
                ),
                AuthFailure::Missing => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "authentication required"),
                AuthFailure::ExpiredToken => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "the token has expired"),
                AuthFailure::RevokedToken => (
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "the token has been revoked",
                ),
                AuthFailure::Malformed => (
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "malformed Authorization header; use Basic or Bearer",
                ),
                AuthFailure::BadPassword | AuthFailure::UnknownToken | AuthFailure::BadJwt => {
                    (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "invalid credentials")
                }
            },
        }
    }

    /// Whose fault the failure is: the one answer that decides how loudly it is logged and
    /// whether it counts as an upstream error (the status, in [`ProxyError::public_parts`],
    /// agrees: a test holds them together).
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::Body(_)
            | ProxyError::BadRequest(_)
            | ProxyError::NotFound
            | ProxyError::MethodNotAllowed
            | ProxyError::TooManyHeaders(_)
            | ProxyError::UriTooLong(_)
            | ProxyError::Misrouted(_)
            | ProxyError::Auth { .. } => Fault::Client,
            ProxyError::CrossOrigin(_) | ProxyError::RoleDenied { .. } => Fault::Refused,
            ProxyError::Upstream(u) => Fault::Upstream(u.kind()),
            ProxyError::UnsendableIdentity { .. } | ProxyError::NoRandom | ProxyError::UsersWrite(_) => Fault::Guard,
        }
    }

    /// Logs the failure once, with its cause chain, at a level fitting who is at fault.
    pub fn log(&self) {
        match self.fault() {
            Fault::Client => tracing::debug!("{}", guard_config::error::chain(self)),
            // Worth seeing: an attack, a page that needs `allowed_origins`, a role's limit.
            Fault::Refused => tracing::info!("{self}"),
            Fault::Upstream(_) | Fault::Guard => tracing::warn!("{}", guard_config::error::chain(self)),
        }
    }

    /// The response the client gets.
    pub fn into_response(self) -> Response<ProxyBody> {
        let (status, code, message) = self.public_parts();
        let mut resp = json_error(status, code, message);
        if let ProxyError::Auth {
            failure,
            realm,
            challenge,
            end_session,
        } = &self
        {
            let h = resp.headers_mut();
            if *end_session {
                crate::login::end_session(h);
            }
            match failure {
                AuthFailure::LockedOut(secs) => {
                    h.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
                }
                AuthFailure::Busy => {
                    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                _ if !challenge => {}
                _ => {
                    let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", realm.replace(['"', '\\'], ""));
                    if let Ok(v) = HeaderValue::from_str(&challenge) {
                        h.insert(header::WWW_AUTHENTICATE, v);
                    }
                }
            }
        }
        resp
    }
}

/// A JSON error response in MLflow's shape: `{"error_code": ..., "message": ...}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error_code": code, "message": message }).to_string();
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_status_and_code() {
        let io = || -> Box<dyn std::error::Error + Send + Sync> { "refused".into() };
        let up = || "127.0.0.1:5000".to_string();
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (
                UpstreamFault::Unreachable {
                    upstream: up(),
                    source: io(),
                }
                .into(),
                502,
                "TEMPORARILY_UNAVAILABLE",
            ),
            (
                UpstreamFault::Failed {
                    upstream: up(),
                    source: io(),
                }
                .into(),
                502,
                "TEMPORARILY_UNAVAILABLE",
            ),
            (
                UpstreamFault::Tls {
                    upstream: up(),
                    source: io(),
                }
                .into(),
                502,
                "TEMPORARILY_UNAVAILABLE",
            ),
            (
                UpstreamFault::NoneAvailable {
                    site: "default".into(),
                    count: 3,
                }
                .into(),
                502,
                "TEMPORARILY_UNAVAILABLE",
            ),
            (
                UpstreamFault::ConnectTimeout { upstream: up() }.into(),
                504,
                "DEADLINE_EXCEEDED",
            ),
            (
                UpstreamFault::Timeout {
                    upstream: up(),
                    seconds: 5,
                }
                .into(),
                504,
                "DEADLINE_EXCEEDED",
            ),
            (BodyFault::TooLarge { limit: 10 }.into(), 413, "REQUEST_LIMIT_EXCEEDED"),
            (BodyFault::Stalled { seconds: 60 }.into(), 408, "DEADLINE_EXCEEDED"),
            (BodyFault::Malformed.into(), 400, "BAD_REQUEST"),
            (ProxyError::BadRequest("x"), 400, "BAD_REQUEST"),
            (
                ProxyError::RoleDenied {
                    user: "ann".into(),
                    role: guard_config::roles::Role::Reader,
                    method: http::Method::POST,
                    path: "/api/2.0/mlflow/runs/create".into(),
                },
                403,
                "PERMISSION_DENIED",
            ),
            (ProxyError::NoRandom, 503, "TEMPORARILY_UNAVAILABLE"),
            (ProxyError::NotFound, 404, "ENDPOINT_NOT_FOUND"),
            (ProxyError::TooManyHeaders(100), 431, "BAD_REQUEST"),
            (ProxyError::UriTooLong(16384), 414, "BAD_REQUEST"),
            (ProxyError::Misrouted(Misroute::UnknownHost), 421, "ENDPOINT_NOT_FOUND"),
            (
                ProxyError::Auth {
                    failure: AuthFailure::Missing,
                    realm: "r".into(),
                    challenge: true,
                    end_session: false,
                },
                401,
                "UNAUTHENTICATED",
            ),
            (
                ProxyError::Auth {
                    failure: AuthFailure::BadPassword,
                    realm: "r".into(),
                    challenge: true,
                    end_session: false,
                },
                401,
                "UNAUTHENTICATED",
            ),
            (
                ProxyError::Auth {
                    failure: AuthFailure::RevokedToken,
                    realm: "r".into(),
                    challenge: true,
                    end_session: false,
                },
                401,
                "UNAUTHENTICATED",
            ),
            (
                ProxyError::Auth {
                    failure: AuthFailure::LockedOut(5),
                    realm: "r".into(),
                    challenge: true,
                    end_session: false,
                },
                429,
                "REQUEST_LIMIT_EXCEEDED",
            ),
            (
                ProxyError::Auth {
                    failure: AuthFailure::Busy,
                    realm: "r".into(),
                    challenge: true,
                    end_session: false,
                },
                429,
                "REQUEST_LIMIT_EXCEEDED",
            ),
        ];
        for (err, status, code) in cases {
            let (s, c, m) = err.public_parts();
            assert_eq!((s.as_u16(), c), (status, code), "{err}");
            assert!(!m.contains("refused"), "internal detail leaked: {m}");
            // Whose fault it is and the status agree.
            match err.fault() {
                Fault::Client => assert!(s.is_client_error(), "{err}"),
                Fault::Refused => assert_eq!(s, StatusCode::FORBIDDEN, "{err}"),
                Fault::Upstream(_) => assert!(
                    s == StatusCode::BAD_GATEWAY || s == StatusCode::GATEWAY_TIMEOUT,
                    "{err}"
                ),
                Fault::Guard => {}
            }
        }
    }

    #[test]
    fn auth_failures_carry_their_challenge_or_retry_after() {
        let r = ProxyError::Auth {
            failure: AuthFailure::BadPassword,
            realm: "MLflow".into(),
            challenge: true,
            end_session: false,
        }
        .into_response();
        assert_eq!(
            r.headers()["www-authenticate"],
            "Basic realm=\"MLflow\", charset=\"UTF-8\""
        );
        let r = ProxyError::Auth {
            failure: AuthFailure::LockedOut(42),
            realm: "MLflow".into(),
            challenge: true,
            end_session: false,
        }
        .into_response();
        assert_eq!(r.headers()["retry-after"], "42");
        assert!(r.headers().get("www-authenticate").is_none());
        // A browser whose session ended: no password dialog, and its cookies go.
        let r = ProxyError::Auth {
            failure: AuthFailure::Missing,
            realm: "MLflow".into(),
            challenge: false,
            end_session: true,
        }
        .into_response();
        assert!(r.headers().get("www-authenticate").is_none());
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert!(
            cookies
                .iter()
                .any(|c| c.to_str().unwrap().starts_with("__Host-guard_session=;")),
            "{cookies:?}"
        );
    }
}
