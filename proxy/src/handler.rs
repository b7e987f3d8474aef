//! The request pipeline, one straight line of named steps in `route`: `check_limits` →
//! guard's reserved paths → pick the site → `check_origin` → `sign_in_pages` → `authenticate`
//! (header, else session cookie) → `account_endpoint` → `authorize` and `check_body_size` →
//! `upstream_request` → `forward_counted` → `response` → the access log in `finish`. Every
//! failure becomes a response in `error`; nothing here writes a status code of its own for an
//! error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use guard_config::model::Cidr;
use guard_config::serve::{Limits, HEALTH_PATH, RESERVED_PREFIX};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::accesslog::AccessRecord;
use crate::account;
use crate::auth::Principal;
use crate::authorize;
use crate::body::{full, BodyFault, ProxyBody, RequestBody, ResponseBody};
use crate::conn::{ConnSlot, InFlight};
use crate::error::{Fault, ProxyError};
use crate::forward::{Upstream, UpstreamFault};
use crate::headers;
use crate::login::{self, LOGIN_PATH, LOGOUT_PATH};
use crate::metrics::{MethodClass, Metrics, RequestLabels, UpstreamErrorLabels, UserLabel};
use crate::oidc;
use crate::origin::{self, Verdict};
use crate::route::{Router, Site};
use crate::signin::{self, Caller, Step};

/// What every request on every connection shares.
#[derive(Debug)]
pub struct State {
    /// The sites; swapped whole on a configuration reload.
    pub router: ArcSwap<Router>,
    /// Timeouts and sizes.
    pub limits: Limits,
    /// Peers whose `X-Forwarded-*` are kept.
    pub trusted_proxies: Vec<Cidr>,
    /// `Strict-Transport-Security` for every response, only with a certificate from ACME.
    pub hsts: Option<HeaderValue>,
    /// What guard counts.
    pub metrics: Arc<Metrics>,
    /// The lockout table and bcrypt pool every site shares, kept across reloads.
    pub defence: Arc<crate::auth::Defence>,
    /// The keys of browser sessions; `None` when the key file could not be made (browsers then
    /// get Basic's prompt, not the sign-in page).
    pub sessions: Option<Arc<crate::sessions::Sessions>>,
}

/// Per-connection facts the pipeline needs, and the shared state: each request clones this
/// connection's `Arc` (a counter only its own worker touches) rather than the `State` every
/// worker shares.
#[derive(Debug)]
pub struct ConnInfo {
    /// What every connection shares.
    pub state: Arc<State>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as text (IPv4-mapped addresses as IPv4), for `X-Forwarded-For` and the
    /// access log: formatted once per connection, not per request.
    pub peer_ip: HeaderValue,
    /// The server name the client asked for in the TLS handshake.
    pub sni: Option<String>,
    /// The connection's place under the connection limit and in the shutdown drain, handed to
    /// a tunnel that outlives the HTTP connection.
    slot: Arc<ConnSlot>,
}

impl ConnInfo {
    /// The facts of a connection from `peer`, holding `slot` until the last request (or tunnel)
    /// of the connection ends.
    pub fn new(state: Arc<State>, peer: SocketAddr, sni: Option<String>, slot: Arc<ConnSlot>) -> Self {
        let text = peer.ip().to_canonical().to_string();
        ConnInfo {
            state,
            peer,
            peer_ip: HeaderValue::from_str(&text).expect("an IP address is a header value"),
            sni,
            slot,
        }
    }

    /// The connection's slot, for a tunnel.
    fn slot(&self) -> Arc<ConnSlot> {
        self.slot.clone()
    }
}

/// Serves one request. Never fails: every error is already a response.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    in_flight: InFlight,
) -> Result<Response<ProxyBody>, Infallible> {
    let state = &conn.state;
    let mut rec = AccessRecord::new(conn.peer_ip.clone(), req.method().clone(), req.uri(), req.version());
    let mut resp = match route(req, &conn, state, &mut rec).await {
        Ok(resp) => resp,
        Err(e) => {
            e.log();
            e.into_response()
        }
    };
    if let Some(hsts) = &state.hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    Ok(finish(resp, rec, in_flight, conn))
}

/// The pipeline, one named step per line; each step either lets the request on or answers it.
async fn route(
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    state: &State,
    rec: &mut AccessRecord,
) -> Result<Response<ProxyBody>, ProxyError> {
    check_limits(&req, &state.limits)?;
    // guard's own paths come next so health checks need no credentials, and are never
    // forwarded whatever follows the prefix.
    let path = req.uri().path();
    let sign_in = [LOGIN_PATH, LOGOUT_PATH, oidc::START_PATH, oidc::CALLBACK_PATH].contains(&path);
    if is_reserved(path) && !sign_in {
        return reserved(path, state);
    }
    let router = state.router.load();
    let site = router
        .pick(request_host(&req), conn.sni.as_deref())
        .map_err(ProxyError::Misrouted)?;
    rec.site = Some(site.local().clone());
    // Before authentication: a cross-site write is refused whoever's credentials the browser
    // attached to it.
    let origin = match check_origin(&req, site)? {
        Ok(origin) => origin,
        Err(preflight) => return Ok(preflight),
    };
    let client_ip = headers::client_ip(req.headers(), conn.peer.ip(), &state.trusted_proxies);
    if sign_in {
        return sign_in_pages(req, site, state, client_ip).await;
    }
    // Nothing below this line runs for a request that did not authenticate.
    let caller = match authenticate(&req, site, state, client_ip).await? {
        Ok(caller) => caller,
        Err(page) => return Ok(page),
    };
    if let (Some(auth), Some(caller)) = (&site.auth, &caller) {
        // Behind MLflow's own auth app (an upstream secret), MLflow answers who is signed in,
        // with its admin flag; changing a password stays guard's, whose users file holds it.
        let endpoint = account::endpoint(req.uri().path())
            .filter(|e| *e == account::Endpoint::UpdatePassword || site.local().upstream_secret.is_none());
        if let Some(endpoint) = endpoint {
            rec.user = Some(caller.principal.name.clone());
            return account_endpoint(endpoint, req, caller, auth, state, client_ip).await;
        }
    }
    if let Err(refused) = authorize(&req, caller.as_ref()).and_then(|()| check_body_size(&req, &state.limits)) {
        // Read and dropped for a while, so an uploading client sees the answer, not a reset.
        discard_body(req.into_body());
        return Err(refused);
    }
    // Take the client's half of an upgrade before the request is consumed.
    let client_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (principal, cookies) = match caller {
        Some(c) => (Some(c.principal), c.cookies),
        None => (None, Vec::new()),
    };
    let upstream_req = upstream_request(req, conn, state, site, principal.as_ref(), origin.is_some())?;
    rec.user = principal.map(|p| p.name);
    let (body, progress, body_sent) = RequestBody::new(
        upstream_req.body,
        state.limits.max_body_bytes,
        state.limits.body_timeout,
    );
    rec.request_body = Some(progress);
    let (resp, upstream) = forward_counted(
        Request::from_parts(upstream_req.parts, body),
        body_sent,
        site,
        state,
        rec,
    )
    .await?;
    let mut resp = response(resp, client_upgrade, origin.and_then(|o| o.cors), conn, upstream)?;
    add_cookies(&mut resp, &cookies);
    Ok(resp)
}

/// Size limits first: they hold for every request, authenticated or not. hyper enforces the
/// header count for HTTP/1.1 only, and has no target length limit below its buffer size. And
/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`; hyper lets none and two through,
/// and either would be routed by a guess. HTTP/2 names its host in `:authority`.
fn check_limits<B>(req: &Request<B>, limits: &Limits) -> Result<(), ProxyError> {
    if req.headers().len() > limits.max_headers {
        return Err(ProxyError::TooManyHeaders(limits.max_headers));
    }
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Err(ProxyError::UriTooLong(limits.max_uri_bytes));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if req.version() == Version::HTTP_11 => Err(ProxyError::BadRequest("HTTP/1.1 request without Host")),
        _ => Ok(()),
    }
}

const X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
const X_FORWARDED_GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");
const X_GUARD_SECRET: HeaderName = HeaderName::from_static("x-guard-secret");
const X_GUARD_ADMIN: HeaderName = HeaderName::from_static("x-guard-admin");

/// A header value of printable ASCII (spaces inside allowed), else nothing.
fn visible_ascii(text: &str) -> Option<HeaderValue> {
    let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    ok.then(|| HeaderValue::from_str(text).ok()).flatten()
}

/// Whether `path` is under guard's reserved prefix (or is the prefix itself).
fn is_reserved(path: &str) -> bool {
    path.starts_with(RESERVED_PREFIX) || path == RESERVED_PREFIX.trim_end_matches('/')
}

/// The host the client asked for: `Host`, else the HTTP/2 `:authority`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// What the origin check let through: a write from the site's own pages or an allowed origin
/// (whose `Origin` guard vouched for and removes before forwarding), and that origin's CORS
/// grant when it is another one.
struct Vouched {
    cors: Option<HeaderValue>,
}

/// The origin check: `Ok(None)` for a request it does not concern, `Ok(Some)` for a write it
/// vouches for, `Err(answer)` for a CORS preflight it answers itself; a cross-site write is
/// refused.
fn check_origin<B>(req: &Request<B>, site: &Site) -> Result<Result<Option<Vouched>, Response<ProxyBody>>, ProxyError> {
    match origin::check(req.method(), req.headers(), request_host(req), &site.allowed_origins) {
        Verdict::Unchecked => Ok(Ok(None)),
        Verdict::SameOrigin => Ok(Ok(Some(Vouched { cors: None }))),
        Verdict::Allowed(o) => Ok(Ok(Some(Vouched { cors: Some(o) }))),
        Verdict::Preflight(o) => Ok(Err(origin::preflight(req.headers(), o))),
        Verdict::Refused(why) => Err(ProxyError::CrossOrigin(why)),
    }
}

/// `/_guard/login`, `/_guard/logout` and single sign-on's `/_guard/oidc/` pages, after the
/// origin check: a sign-in or sign-out posted from another site never gets here.
async fn sign_in_pages(
    req: Request<Incoming>,
    site: &Site,
    state: &State,
    client_ip: std::net::IpAddr,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (Some(auth), Some(sessions)) = (&site.auth, state.sessions.as_deref()) else {
        return Err(ProxyError::NotFound);
    };
    let host = request_host(&req).unwrap_or_default().to_owned();
    match req.uri().path() {
        LOGIN_PATH => signin::login(req, auth, sessions, client_ip, &state.limits, &state.metrics).await,
        oidc::START_PATH => signin::oidc_start(req, auth, sessions, &host, &state.metrics).await,
        oidc::CALLBACK_PATH => signin::oidc_callback(req, auth, sessions, &host, &state.metrics).await,
        _ => signin::logout(req, auth, sessions, &state.limits, &host).await,
    }
}

/// Whether the request asks to switch to WebSocket: the only protocol a connection may switch
/// to, HTTP/1.1 only.
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && headers::wants_websocket(req.headers())
}

/// Who the request comes from: `Ok(None)` on a site without authentication or a public path
/// (a public path does not open a tunnel to anyone: an upgrade there needs credentials like any
/// other path), `Err(page)` for a browser sent to the sign-in page.
async fn authenticate(
    req: &Request<Incoming>,
    site: &Site,
    state: &State,
    client_ip: std::net::IpAddr,
) -> Result<Result<Option<Caller>, Response<ProxyBody>>, ProxyError> {
    let Some(auth) = &site.auth else { return Ok(Ok(None)) };
    if !wants_upgrade(req) && site.is_public(req.uri().path()) {
        return Ok(Ok(None));
    }
    Ok(
        match signin::authenticate(req, auth, state.sessions.as_deref(), client_ip, &state.metrics).await? {
            Step::Pass(caller) => Ok(Some(caller)),
            Step::Answer(page) => Err(page),
        },
    )
}

/// The MLflow UI's account menu and password change, for guard's own users: never forwarded.
async fn account_endpoint(
    endpoint: account::Endpoint,
    req: Request<Incoming>,
    caller: &Caller,
    auth: &crate::auth::Authenticator,
    state: &State,
    client_ip: std::net::IpAddr,
) -> Result<Response<ProxyBody>, ProxyError> {
    let sessions = state.sessions.as_deref();
    let mut resp = signin::account(endpoint, req, caller, auth, sessions, client_ip, &state.limits).await?;
    add_cookies(&mut resp, &caller.cookies);
    Ok(resp)
}

/// What the caller may do, from the method and path alone: decided before a byte of the body is
/// read or sent on. Then what no caller may ask: CONNECT, and a target that is not a path
/// (`OPTIONS *` and other non-origin forms have no meaning for the upstream).
fn authorize<B>(req: &Request<B>, caller: Option<&Caller>) -> Result<(), ProxyError> {
    let path = req.uri().path();
    if let Some(c) = caller {
        if !authorize::permits(c.principal.role, req.method(), path) {
            return Err(ProxyError::RoleDenied {
                user: c.principal.name.clone(),
                role: c.principal.role,
                method: req.method().clone(),
                path: path.to_owned(),
            });
        }
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest("request target must be a path"));
    }
    Ok(())
}

/// A declared length over the limit is refused before a byte goes upstream; a chunked body is
/// cut by `RequestBody` when it crosses the limit.
fn check_body_size<B>(req: &Request<B>, limits: &Limits) -> Result<(), ProxyError> {
    match limits.max_body_bytes {
        Some(limit) if content_length(req).is_some_and(|len| len > limit) => Err(BodyFault::TooLarge { limit }.into()),
        _ => Ok(()),
    }
}

/// The request as the upstream gets it, its body not yet wrapped.
struct UpstreamRequest {
    parts: http::request::Parts,
    body: Incoming,
}

/// Prepares the upstream request: guard's cookies and credentials, hop-by-hop and
/// client-chosen headers out; the identity, `Forwarded` and `Host` in; origin form, HTTP/1.1.
fn upstream_request(
    req: Request<Incoming>,
    conn: &ConnInfo,
    state: &State,
    site: &Site,
    principal: Option<&Principal>,
    vouched: bool,
) -> Result<UpstreamRequest, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let websocket = parts.version == Version::HTTP_11 && headers::wants_websocket(&parts.headers);
    let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    // The session is guard's credential, like a password: the upstream never sees it.
    login::strip_guard_cookies(&mut parts.headers);
    let trusted_peer = state.trusted_proxies.iter().any(|c| c.contains(conn.peer.ip()));
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::drop_client_chosen(&mut parts.headers, trusted_peer, site.forwarded_user.as_ref());
    if vouched {
        // guard vouched for it; MLflow refuses any Origin but localhost and its own list.
        parts.headers.remove(header::ORIGIN);
    }
    if let (Some(header), Some(p)) = (&site.forwarded_user, principal) {
        // Visible ASCII only: `HeaderValue` takes UTF-8 bytes as obs-text, which the upstream
        // reads as Latin-1, another name (`josé` arrives as `josÃ©`). Fail closed: a request
        // is not sent under a name the upstream would misread, nor without one.
        let v = (p.name.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| HeaderValue::from_str(&p.name).ok())
            .flatten()
            .ok_or_else(|| ProxyError::UnsendableIdentity {
                site: site.name.clone(),
                name: p.name.clone(),
                header: header.clone(),
            })?;
        parts.headers.insert(header.clone(), v);
        // What a single-sign-on provider said of the person, where it is sendable as is: the
        // client's copies of these were dropped above, so an absent value stays absent.
        if let Some(email) = p.email.as_deref().and_then(visible_ascii) {
            parts.headers.insert(X_FORWARDED_EMAIL, email);
        }
        let groups: Vec<&str> = p
            .groups
            .iter()
            .map(String::as_str)
            .filter(|g| !g.contains(',') && g.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
            .collect();
        if let Some(v) = (!groups.is_empty())
            .then(|| groups.join(","))
            .as_deref()
            .and_then(visible_ascii)
        {
            parts.headers.insert(X_FORWARDED_GROUPS, v);
        }
    }
    if let Some(secret) = &site.local().upstream_secret {
        // The upstream trusts the headers above only with this (MLflow's authorization
        // function from `guard deploy --mlflow-permissions`).
        parts.headers.insert(X_GUARD_SECRET, secret.clone());
        if let (Some(auth), Some(p)) = (&site.auth, principal) {
            if auth.is_admin(&p.name) {
                parts.headers.insert(X_GUARD_ADMIN, HeaderValue::from_static("true"));
            }
        }
    }
    if site.auth.is_some() {
        // Credentials are for guard, on public paths too (the MLflow client sends its password
        // with every request); the upstream, and its logs, never see them.
        parts.headers.remove(header::AUTHORIZATION);
    }
    headers::set_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        &conn.peer_ip,
        &state.trusted_proxies,
        client_host.as_ref(),
    );
    // Without preserve_host, the upstream picked puts its own authority in (`balance`).
    if let (Some(h), true) = (&client_host, site.preserve_host) {
        parts.headers.insert(header::HOST, h.clone());
    }
    if websocket {
        headers::restore_websocket(&mut parts.headers);
    }
    // Origin form (`/path?query`), as HTTP/1.1 sends it to an origin server; `Host` says where.
    parts.uri = Uri::from(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    // The upstream speaks HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;
    Ok(UpstreamRequest { parts, body })
}

/// Forwards, timing the upstream and counting its failures by kind; the upstream that answered
/// comes back with the response.
async fn forward_counted<'s>(
    req: Request<crate::forward::UpstreamBody>,
    body_sent: Option<tokio::sync::watch::Receiver<bool>>,
    site: &'s Site,
    state: &State,
    rec: &mut AccessRecord,
) -> Result<(Response<crate::forward::PooledBody>, &'s Upstream), ProxyError> {
    let started = Instant::now();
    let (resp, upstream) = site
        .upstreams
        .forward(req, body_sent, state.limits.upstream_response_timeout)
        .await
        .map_err(ProxyError::from)
        .inspect_err(|e| {
            if let Fault::Upstream(kind) = e.fault() {
                state
                    .metrics
                    .upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        site: site.name.clone(),
                        kind,
                    })
                    .inc();
            }
        })?;
    let upstream_time = started.elapsed();
    rec.upstream_time = Some(upstream_time);
    site.local().metrics.upstream_latency.observe(upstream_time);
    Ok((resp, upstream))
}

/// Prepares the response: hop-by-hop headers and `Server` out, CORS for an allowed origin in;
/// a switch to WebSocket becomes a tunnel.
fn response(
    mut resp: Response<crate::forward::PooledBody>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    cors: Option<HeaderValue>,
    conn: &ConnInfo,
    upstream: &Upstream,
) -> Result<Response<ProxyBody>, ProxyError> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = client_upgrade.filter(|_| headers::wants_websocket(resp.headers())) else {
            return Err(ProxyError::Upstream(UpstreamFault::Failed {
                upstream: upstream.authority().to_owned(),
                source: "upstream switched to a protocol it was not asked for".into(),
            }));
        };
        // The tunnel holds the connection's slot: it counts against `max_connections`, and the
        // shutdown drain waits for it up to the grace, then ends it with the worker.
        tokio::spawn(tunnel(client_side, hyper::upgrade::on(&mut resp), conn.slot()));
        let (mut parts, _) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::restore_websocket(&mut parts.headers);
        return Ok(Response::from_parts(parts, full(Bytes::new())));
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    // The upstream's software and version are nobody's business.
    parts.headers.remove(header::SERVER);
    if let Some(o) = cors {
        origin::allow(&mut parts.headers, o);
    }
    Ok(Response::from_parts(parts, body.map_err(Into::into).boxed()))
}

/// Adds guard's `Set-Cookie`s (a renewed or ended session) to a response, beside any the
/// upstream set.
fn add_cookies(resp: &mut Response<ProxyBody>, cookies: &[HeaderValue]) {
    for c in cookies {
        resp.headers_mut().append(header::SET_COOKIE, c.clone());
    }
}

/// guard's own endpoints under the reserved prefix.
fn reserved(path: &str, state: &State) -> Result<Response<ProxyBody>, ProxyError> {
    if path == HEALTH_PATH {
        let mut resp = Response::new(full(Bytes::from(health(state))));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(resp);
    }
    Err(ProxyError::NotFound)
}

/// The health document: always `"status":"ok"` while guard serves (a load balancer must not
/// pull a guard whose last reload failed: it still serves the previous set), plus each site's
/// users and tokens state, `"ok"` or `"stale"` when the last reload failed and an older set is
/// in use. Health needs no credentials, so it tells state only: the reason, which names paths,
/// is in the error log.
fn health(state: &State) -> Vec<u8> {
    let router = state.router.load();
    let sites: Vec<serde_json::Value> = router
        .sites()
        .iter()
        .filter_map(|site| {
            let (users, tokens) = site.auth.as_ref()?.stale();
            let word = |stale: bool| if stale { "stale" } else { "ok" };
            Some(serde_json::json!({
                "site": site.name,
                "users_file": word(users),
                "tokens_file": word(tokens),
            }))
        })
        .collect();
    // Without authentication there is nothing to report: the plain document load balancers and
    // compose healthchecks were written against.
    if sites.is_empty() {
        return b"{\"status\":\"ok\"}".to_vec();
    }
    serde_json::to_vec(&serde_json::json!({"status": "ok", "auth": sites}))
        .unwrap_or_else(|_| b"{\"status\":\"ok\"}".to_vec())
}

/// Reads and drops a refused request body for a while, so a client that sends its whole body
/// before reading (as the MLflow client does) gets to read the 413 instead of a broken pipe,
/// which it would retry. Bounded in time; past it the connection is closed.
fn discard_body(mut body: Incoming) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DISCARD_BODY_TIME, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

/// How long a refused body is read and dropped before the connection is closed (nginx's
/// `lingering_time` is 30s too).
const DISCARD_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// The `Content-Length` the client declared, if any.
fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let parts: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if parts.len() > 1 {
        if let Ok(v) = HeaderValue::from_str(&parts.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// Copies bytes both ways between an upgraded client and upstream until either side closes;
/// `_slot` keeps the connection counted until then.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, _slot: Arc<ConnSlot>) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let mut c = TokioIo::new(client);
    let mut u = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
        tracing::debug!("upgraded connection ended: {e}");
    }
}

/// Wraps the response body so the access log line is written, and the connection's in-flight
/// count dropped, when the body has been sent or the client has gone.
fn finish(
    resp: Response<ProxyBody>,
    mut rec: AccessRecord,
    in_flight: InFlight,
    conn: Arc<ConnInfo>,
) -> Response<ProxyBody> {
    rec.status = resp.status();
    resp.map(|body| {
        ResponseBody::new(body, move |bytes_out, complete| {
            count(&conn.state.metrics, &rec, bytes_out);
            rec.emit(bytes_out, complete);
            drop(in_flight);
        })
        .boxed()
    })
}

/// Adds one finished request to the metrics.
fn count(metrics: &Metrics, rec: &AccessRecord, bytes_out: u64) {
    let method = MethodClass::of(&rec.method);
    let status = rec.status.as_u16();
    match &rec.site {
        Some(site) => {
            site.metrics.count_request(method, status);
            site.metrics.bytes_in.inc_by(rec.bytes_in());
            site.metrics.bytes_out.inc_by(bytes_out);
        }
        // Answered before routing (limits, reserved paths, unknown hosts): counted under site
        // "-" by status only; nothing was forwarded either way.
        None => {
            let site = "-".to_owned();
            metrics
                .requests
                .get_or_create(&RequestLabels { site, method, status })
                .inc();
        }
    }
    if let (Some(by_user), Some(user)) = (&metrics.requests_by_user, &rec.user) {
        by_user.get_or_create(&UserLabel { user: user.clone() }).inc();
    }
}
