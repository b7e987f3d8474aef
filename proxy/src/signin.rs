//! Browsers through guard, on the request path: the session step of authentication (a sealed
//! cookie instead of a password on every request, renewed as it is used), the sign-in page a
//! navigation without credentials gets, guard's `/_guard/login` and `/_guard/logout`, and the
//! MLflow UI's account endpoints (`users/current`, `users/update-password`) answered for
//! guard's own users. The pages and cookies are `login`'s; the password checks are `auth`'s.

use std::net::IpAddr;

use bytes::Bytes;
use guard_config::serve::Limits;
use guard_config::session::{new_csrf_token, Lifetimes, Refused, Session, SignIn, COOKIE_NAME};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::account::{self, ChangeRefused, Endpoint};
use crate::auth::{AuthFailure, Authenticator, PasswordChangeError, Principal, Via};
use crate::body::{full, BodyFault, ProxyBody, RequestBody};
use crate::error::{json_error, ProxyError};
use crate::login::{self, LOGIN_CSRF_COOKIE, MAX_FORM_BYTES, PAGE_CSP, UI_USER_COOKIE};
use crate::metrics::Metrics;
use crate::oidc;
use crate::sessions::Sessions;

/// A session cookie is renewed once a tenth of the idle timeout has passed since its last
/// renewal: the idle timeout then ends a session between 90% and 100% of it after its last
/// request, and a busy UI (or a script that keeps an old cookie) is not sent a new cookie, and
/// made to wait for a seal, with every response.
const RENEW_FRACTION: u64 = 10;
/// How long the sign-in form's CSRF cookie lasts: a page left open longer is shown again.
const LOGIN_FORM_LIFETIME: u64 = 3600;
/// Longest password-change body read.
const MAX_ACCOUNT_BODY: u64 = 8 * 1024;

/// Who a request came from, and the cookies its answer must carry (a renewed session, or the
/// deletion of one that no longer counts).
#[derive(Debug)]
pub struct Caller {
    /// The authenticated user or token.
    pub principal: Principal,
    /// `Set-Cookie` values for the response.
    pub cookies: Vec<HeaderValue>,
}

/// What the authentication step decided.
#[derive(Debug)]
pub enum Step {
    /// Go on as this caller.
    Pass(Caller),
    /// Answer with this instead (the sign-in page).
    Answer(Response<ProxyBody>),
}

/// Authenticates a request: its `Authorization` header if it has one, else its session cookie.
/// A cookie that does not count (sealed elsewhere, expired, its user gone or their password
/// changed, or signed out in the MLflow UI) is treated as absent and deleted with the answer.
/// A browser navigation with no credentials gets the sign-in page; everything else the 401.
/// Every refusal, the page included, is counted in `metrics`.
pub async fn authenticate(
    req: &Request<Incoming>,
    auth: &Authenticator,
    sessions: Option<&Sessions>,
    client: IpAddr,
    metrics: &Metrics,
) -> Result<Step, ProxyError> {
    let headers = req.headers();
    let [cookie, ui_user] = match sessions {
        Some(_) => login::cookies(headers, [COOKIE_NAME, UI_USER_COOKIE]),
        None => [None, None],
    };
    let mut session_ended = false;
    if let (Some(sessions), Some(value), false) = (sessions, cookie, headers.contains_key(header::AUTHORIZATION)) {
        match open(sessions, auth, value, ui_user.is_some()).await {
            Ok(caller) => return Ok(Step::Pass(caller)),
            Err(why) => {
                tracing::debug!("session cookie not accepted: {why}");
                session_ended = true;
            }
        }
    }
    // A cookie is only opened without a header, so `session_ended` means no header: the check
    // below can then only fail, and a stale cookie never rides on a success.
    let failure = match auth.authenticate(headers, client).await {
        Ok(principal) => {
            return Ok(Step::Pass(Caller {
                principal,
                cookies: Vec::new(),
            }))
        }
        Err(failure) => failure,
    };
    metrics.count_auth_failure(failure.reason());
    match failure {
        AuthFailure::Missing
            if sessions.is_some()
                && auth.login_page()
                && login::wants_page(req.method(), req.uri().path(), headers) =>
        {
            let next = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            if auth.oidc().is_some_and(|p| p.settings().only) {
                // Only the provider signs people in here: straight to it, through guard's start
                // (a navigation; never an API call, which got its 401 above).
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", login::safe_return(next))
                    .finish();
                let mut resp = redirect_away(&format!("{}?{query}", oidc::START_PATH));
                if session_ended {
                    login::end_session(resp.headers_mut());
                }
                return Ok(Step::Answer(resp));
            }
            Ok(Step::Answer(sign_in_page(
                StatusCode::UNAUTHORIZED,
                next,
                None,
                session_ended,
                auth,
            )))
        }
        failure => Err(ProxyError::Auth {
            failure,
            realm: auth.realm().to_owned(),
            // No password dialog over the UI for a browser whose session just ended.
            challenge: !session_ended,
            end_session: cookie.is_some(),
        }),
    }
}

/// Why a session cookie does not sign anyone in.
#[derive(Debug, thiserror::Error)]
enum NotSignedIn {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the MLflow UI signed out (its {UI_USER_COOKIE} cookie is gone)")]
    SignedOutInUi,
    #[error("the single-sign-on session could not be refreshed: {0}")]
    Refresh(#[from] oidc::RefreshError),
}

/// Opens a session cookie, renewing it when a tenth of the idle timeout has passed since it
/// was last renewed; a single-sign-on session whose ID token ran out is refreshed at the
/// provider first. `ui_user`: whether the MLflow UI's user cookie came with it.
async fn open(sessions: &Sessions, auth: &Authenticator, value: &str, ui_user: bool) -> Result<Caller, NotSignedIn> {
    if !ui_user {
        return Err(NotSignedIn::SignedOutInUi);
    }
    let now = auth.now_unix();
    let keys = sessions.keys();
    let lifetimes = auth.lifetimes();
    let mut session = keys.open_unchecked(value, now)?;
    // At its absolute end a single-sign-on session with a refresh token is renewed at the
    // provider (which decides whether the person may go on) instead of ending; every other
    // session ends there, and every session ends when idle.
    let renewable = session.identity.as_ref().is_some_and(|i| i.refresh_token.is_some()) && auth.oidc().is_some();
    let at_end = match lifetimes.check(&session, now) {
        Ok(()) => false,
        Err(Refused::Expired) if renewable && now < session.seen.saturating_add(lifetimes.idle) => true,
        Err(why) => return Err(why.into()),
    };
    let mut principal = auth.session_user(&session)?;
    let mut cookies = Vec::new();
    let mut refreshed = false;
    if let (Some(identity), Some(provider)) = (&session.identity, auth.oidc()) {
        if at_end || now >= identity.refresh_at {
            session = provider.refresh(&session).await?;
            if at_end {
                session.issued = now;
            }
            principal = auth.session_user(&session)?;
            refreshed = true;
        }
    }
    if refreshed || now.saturating_sub(session.seen) >= (lifetimes.idle / RENEW_FRACTION).max(1) {
        let renewed = Session { seen: now, ..session };
        // A failed renewal costs the user nothing yet: the cookie they hold is still good.
        if let Ok(sealed) = keys.seal(&renewed) {
            let max_age = remaining(&renewed, lifetimes, now);
            if at_end {
                // A new absolute lifetime: the UI's user cookie must last as long.
                cookies.extend(login::session_cookies(&sealed, &renewed.user, max_age));
            } else {
                cookies.push(login::set_cookie(COOKIE_NAME, &sealed, max_age));
            }
        }
    }
    Ok(Caller { principal, cookies })
}

/// The cookies' `Max-Age`: until the session reaches its absolute lifetime, or, for a
/// single-sign-on session the provider can renew there, an idle timeout beyond it (the browser
/// must still send it for guard to renew it).
fn remaining(session: &Session, lifetimes: Lifetimes, now: u64) -> u64 {
    let renewable = session.identity.as_ref().is_some_and(|i| i.refresh_token.is_some());
    let end = session.issued.saturating_add(lifetimes.absolute);
    let end = if renewable {
        end.saturating_add(lifetimes.idle)
    } else {
        end
    };
    end.saturating_sub(now)
}

/// One of guard's pages: HTML that loads nothing, cannot be framed or cached.
fn page(status: StatusCode, html: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    resp
}

/// The sign-in page with a fresh form token (its cookie set with it), and the single-sign-on
/// provider's button when the site has one.
fn sign_in_page(
    status: StatusCode,
    next: &str,
    error: Option<&str>,
    end_session: bool,
    auth: &Authenticator,
) -> Response<ProxyBody> {
    let Ok(csrf) = new_csrf_token() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "TEMPORARILY_UNAVAILABLE",
            "no random numbers to make the sign-in form with",
        );
    };
    let sso = auth.oidc().map(|p| login::Sso {
        name: &p.settings().name,
        only: p.settings().only,
    });
    let mut resp = page(status, login::login_page(next, &csrf, error, sso));
    let h = resp.headers_mut();
    if end_session {
        login::end_session(h);
    }
    h.append(
        header::SET_COOKIE,
        login::set_cookie(LOGIN_CSRF_COOKIE, &csrf, LOGIN_FORM_LIFETIME),
    );
    resp
}

fn see_other(to: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(login::safe_return(to)).unwrap_or(HeaderValue::from_static("/")),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Reads a small request body whole, under `limit` and the body timeout.
async fn read_body(body: Incoming, limit: u64, limits: &Limits) -> Result<Bytes, ProxyError> {
    let (body, _, _) = RequestBody::new(body, Some(limit), limits.body_timeout);
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ProxyError::Body(BodyFault::find(&*e).unwrap_or(BodyFault::Malformed)))
}

/// `/_guard/login`: GET shows the form, POST checks it and signs in.
pub async fn login(
    req: Request<Incoming>,
    auth: &Authenticator,
    sessions: &Sessions,
    client: IpAddr,
    limits: &Limits,
    metrics: &Metrics,
) -> Result<Response<ProxyBody>, ProxyError> {
    if !auth.login_page() {
        return Err(ProxyError::NotFound);
    }
    match *req.method() {
        Method::GET | Method::HEAD => {
            let next = req
                .uri()
                .query()
                .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "next"))
                .map_or_else(|| "/".to_owned(), |(_, v)| v.into_owned());
            Ok(sign_in_page(StatusCode::OK, &next, None, false, auth))
        }
        Method::POST if auth.oidc().is_some_and(|p| p.settings().only) => Ok(sign_in_page(
            StatusCode::FORBIDDEN,
            "/",
            Some("This site signs people in only through its identity provider."),
            false,
            auth,
        )),
        Method::POST => {
            let expected = login::cookie(req.headers(), LOGIN_CSRF_COOKIE).map(str::to_owned);
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            let body = read_body(req.into_body(), MAX_FORM_BYTES as u64, limits).await?;
            let form = match login::parse_form(content_type.as_ref(), &body) {
                Ok(form) => form,
                Err(e) => {
                    return Ok(sign_in_page(
                        StatusCode::BAD_REQUEST,
                        "/",
                        Some(&e.to_string()),
                        false,
                        auth,
                    ))
                }
            };
            if !login::csrf_matches(expected.as_deref(), &form.csrf) {
                return Ok(sign_in_page(
                    StatusCode::FORBIDDEN,
                    &form.next,
                    Some("The sign-in form expired. Please sign in again."),
                    false,
                    auth,
                ));
            }
            let outcome = auth
                .sign_in(form.user.clone(), form.password.expose().as_bytes(), client)
                .await;
            if let Err(failure) = outcome {
                metrics.count_auth_failure(failure.reason());
            }
            match outcome {
                Ok(principal) => signed_in(&principal.name, auth, sessions, &form.next),
                Err(failure @ (AuthFailure::LockedOut(_) | AuthFailure::Busy)) => {
                    let mut resp = sign_in_page(
                        StatusCode::TOO_MANY_REQUESTS,
                        &form.next,
                        Some("Too many attempts. Please wait a few minutes and try again."),
                        false,
                        auth,
                    );
                    let secs = match failure {
                        AuthFailure::LockedOut(s) => s,
                        _ => 1,
                    };
                    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                    Ok(resp)
                }
                Err(_) => Ok(sign_in_page(
                    StatusCode::UNAUTHORIZED,
                    &form.next,
                    Some("Wrong user name or password."),
                    false,
                    auth,
                )),
            }
        }
        _ => Err(ProxyError::MethodNotAllowed),
    }
}

/// A new session for `user`: the cookies, and back to where they were going.
fn signed_in(
    user: &str,
    auth: &Authenticator,
    sessions: &Sessions,
    next: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let now = auth.now_unix();
    // Removed between the password check and here: as if the password had been wrong.
    let credential = auth.credential_of(user).ok_or(ProxyError::Auth {
        failure: AuthFailure::BadPassword,
        realm: auth.realm().to_owned(),
        challenge: false,
        end_session: false,
    })?;
    let session = Session::new(user, SignIn::Password, credential, now).map_err(|_| ProxyError::NoRandom)?;
    let sealed = sessions.keys().seal(&session).map_err(|_| ProxyError::NoRandom)?;
    let mut resp = see_other(next);
    let h = resp.headers_mut();
    for c in login::session_cookies(&sealed, user, auth.lifetimes().absolute) {
        h.append(header::SET_COOKIE, c);
    }
    h.append(header::SET_COOKIE, login::set_cookie(LOGIN_CSRF_COOKIE, "", 0));
    tracing::info!(user, "signed in on the sign-in page");
    Ok(resp)
}

/// The session a request carries, if it still counts.
fn current_session(req: &Request<Incoming>, auth: &Authenticator, sessions: &Sessions) -> Option<Session> {
    let value = login::cookie(req.headers(), COOKIE_NAME)?;
    let session = sessions.keys().open(value, auth.now_unix(), auth.lifetimes()).ok()?;
    auth.session_user(&session).ok()?;
    Some(session)
}

/// `/_guard/logout`: GET shows a sign-out button, POST (with the session's CSRF token) ends
/// the session. Either way a browser without a session is sent to the site's root.
pub async fn logout(
    req: Request<Incoming>,
    auth: &Authenticator,
    sessions: &Sessions,
    limits: &Limits,
    host: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let session = current_session(&req, auth, sessions);
    match (req.method().clone(), session) {
        (Method::GET | Method::HEAD, Some(s)) => Ok(logout_page(&s, auth)),
        (Method::GET | Method::HEAD | Method::POST, None) => {
            let mut resp = see_other("/");
            login::end_session(resp.headers_mut());
            Ok(resp)
        }
        (Method::POST, Some(s)) => {
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            let body = read_body(req.into_body(), MAX_FORM_BYTES as u64, limits).await?;
            let given = login::csrf_field(content_type.as_ref(), &body).unwrap_or_default();
            if !login::csrf_matches(Some(&s.csrf_token()), &given) {
                let mut resp = logout_page(&s, auth);
                *resp.status_mut() = StatusCode::FORBIDDEN;
                return Ok(resp);
            }
            tracing::info!(user = %s.user, "signed out");
            // Signed in through the provider: signed out there too (RP-initiated logout), which
            // sends the browser back to the site's root.
            let provider_end = match s.method {
                SignIn::Oidc => auth.oidc().and_then(|p| p.end_session_url(host)),
                SignIn::Password => None,
            };
            let mut resp = match provider_end {
                Some(url) => redirect_away(&url),
                None => see_other("/"),
            };
            login::end_session(resp.headers_mut());
            Ok(resp)
        }
        _ => Err(ProxyError::MethodNotAllowed),
    }
}

/// The sign-out page. Its form's redirect to the provider's sign-out is held to the page's
/// `form-action` too, so a single-sign-on session's page allows the provider's origin there.
fn logout_page(s: &Session, auth: &Authenticator) -> Response<ProxyBody> {
    let mut resp = page(StatusCode::OK, login::logout_page(&s.user, &s.csrf_token()));
    let provider = auth.oidc().filter(|_| s.method == SignIn::Oidc);
    if let Some(origin) = provider.and_then(|p| p.end_session_origin()) {
        let csp = PAGE_CSP.replace("form-action 'self'", &format!("form-action 'self' {origin}"));
        if let Ok(v) = HeaderValue::from_str(&csp) {
            resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    resp
}

/// A redirect guard makes itself (to the provider, or to guard's own start of single sign-on),
/// not through [`login::safe_return`], which keeps a sign-in's return inside the site.
fn redirect_away(url: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    match HeaderValue::from_str(url) {
        Ok(v) => resp.headers_mut().insert(header::LOCATION, v),
        Err(_) => resp
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/")),
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `/_guard/oidc/start`: a browser sent to the provider, its round trip's state in a cookie.
/// `?next=` is where it returns; `?again=1` makes the provider ask who is signing in.
pub async fn oidc_start(
    req: Request<Incoming>,
    auth: &Authenticator,
    sessions: &Sessions,
    host: &str,
    metrics: &Metrics,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(provider) = auth.oidc() else {
        return Err(ProxyError::NotFound);
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ProxyError::MethodNotAllowed);
    }
    let mut next = "/".to_owned();
    let mut again = false;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match &*k {
            "next" => next = v.into_owned(),
            "again" => again = true,
            _ => {}
        }
    }
    match provider.begin(&sessions.keys(), host, &next, again).await {
        Ok((location, flow)) => {
            let mut resp = redirect_away(&location);
            resp.headers_mut().append(
                header::SET_COOKIE,
                login::set_cookie(oidc::FLOW_COOKIE, &flow, oidc::FLOW_LIFETIME),
            );
            Ok(resp)
        }
        Err(e) => Ok(sso_problem(&e, metrics)),
    }
}

/// `/_guard/oidc/callback`: the provider's answer checked, the person signed in (or told why
/// not), and sent where they were going.
pub async fn oidc_callback(
    req: Request<Incoming>,
    auth: &Authenticator,
    sessions: &Sessions,
    host: &str,
    metrics: &Metrics,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(provider) = auth.oidc() else {
        return Err(ProxyError::NotFound);
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ProxyError::MethodNotAllowed);
    }
    let flow = login::cookie(req.headers(), oidc::FLOW_COOKIE);
    let query = req.uri().query().unwrap_or_default();
    let keys = sessions.keys();
    let mut resp = match provider.finish(&keys, host, query, flow).await {
        Ok(signed) => {
            let user = signed.session.user.clone();
            let sealed = keys.seal(&signed.session).map_err(|_| ProxyError::NoRandom)?;
            let mut resp = see_other(&signed.next);
            let max_age = remaining(&signed.session, auth.lifetimes(), signed.session.issued);
            for c in login::session_cookies(&sealed, &user, max_age) {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            resp
        }
        Err(e) => sso_problem(&e, metrics),
    };
    // The round trip is over either way: its state is never used twice.
    resp.headers_mut()
        .append(header::SET_COOKIE, login::set_cookie(oidc::FLOW_COOKIE, "", 0));
    Ok(resp)
}

/// The page for a single-sign-on attempt that did not sign anyone in; logged and counted.
fn sso_problem(e: &oidc::SignInError, metrics: &Metrics) -> Response<ProxyBody> {
    use oidc::SignInError as E;
    metrics.count_auth_failure(e.reason());
    let (status, title, retry, someone_else) = match e {
        E::NotAllowed { .. } => (StatusCode::FORBIDDEN, "Not allowed", "Sign in as someone else", true),
        E::Provider { .. } => (StatusCode::FORBIDDEN, "Not signed in", "Try again", false),
        E::FlowLost => (StatusCode::BAD_REQUEST, "Sign-in expired", "Sign in again", false),
        E::Exchange { .. } | E::IdToken { .. } => (StatusCode::BAD_GATEWAY, "Sign-in failed", "Try again", false),
    };
    match e {
        E::NotAllowed { .. } | E::FlowLost | E::Provider { .. } => tracing::info!("single sign-on refused: {e}"),
        E::Exchange { .. } | E::IdToken { .. } => tracing::warn!("single sign-on failed: {e}"),
    }
    page(
        status,
        login::sso_problem_page(title, &e.to_string(), retry, someone_else),
    )
}

/// The MLflow UI's account endpoints, answered by guard for the caller.
pub async fn account(
    endpoint: Endpoint,
    req: Request<Incoming>,
    caller: &Caller,
    auth: &Authenticator,
    sessions: Option<&Sessions>,
    client: IpAddr,
    limits: &Limits,
) -> Result<Response<ProxyBody>, ProxyError> {
    let name = &caller.principal.name;
    match (endpoint, req.method().clone()) {
        (Endpoint::CurrentUser, Method::GET | Method::HEAD) => {
            let mut resp = Response::new(full(Bytes::from(account::current_user(name))));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(resp)
        }
        (Endpoint::UpdatePassword, Method::PATCH) => {
            // A password is a users-file user's own: a token or a JWT naming the same user has none.
            if matches!(caller.principal.via, Via::Token | Via::Jwt | Via::Oidc) {
                return Ok(refused(ChangeRefused::NotYours));
            }
            let body = read_body(req.into_body(), MAX_ACCOUNT_BODY, limits).await?;
            let change = match account::parse_change(name, &body) {
                Ok(c) => c,
                Err(why) => return Ok(refused(why)),
            };
            match auth
                .change_password(name, &change.current_password, change.password, client)
                .await
            {
                Ok(()) => {}
                Err(PasswordChangeError::Auth(failure @ (AuthFailure::LockedOut(_) | AuthFailure::Busy))) => {
                    return Err(ProxyError::Auth {
                        failure,
                        realm: auth.realm().to_owned(),
                        challenge: false,
                        end_session: false,
                    })
                }
                Err(PasswordChangeError::Auth(_)) => {
                    return Ok(json_error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_PARAMETER_VALUE",
                        "Current password is incorrect.",
                    ))
                }
                Err(PasswordChangeError::Write(e)) => return Err(ProxyError::UsersWrite(e)),
            }
            let mut resp = Response::new(full(Bytes::from_static(b"{}")));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // The old session ended with the old password; a session user keeps a new one.
            if let (Via::Session, Some(sessions)) = (caller.principal.via, sessions) {
                let (credential, now) = (auth.credential_of(name), auth.now_unix());
                if let Some(Ok(session)) = credential.map(|c| Session::new(name, SignIn::Password, c, now)) {
                    if let Ok(sealed) = sessions.keys().seal(&session) {
                        for c in login::session_cookies(&sealed, name, auth.lifetimes().absolute) {
                            resp.headers_mut().append(header::SET_COOKIE, c);
                        }
                    }
                }
            }
            Ok(resp)
        }
        _ => Err(ProxyError::MethodNotAllowed),
    }
}

fn refused(why: ChangeRefused) -> Response<ProxyBody> {
    let status = match why {
        ChangeRefused::NotYours => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    json_error(status, why.error_code(), &why.to_string())
}
