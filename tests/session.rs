//! Browser sessions end to end, raw bytes over TLS against the real binary: the sign-in page a
//! navigation gets (and the 401 JSON everything else keeps), signing in on it, the session
//! cookie guard sets and never forwards, what ends a session (tampering, another guard's key,
//! its lifetimes, a deleted user or changed password, signing out in guard or in the MLflow
//! UI), two guards sharing a key file and a key rotation, and the UI's account endpoints.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;

const SESSION: &str = "__Host-guard_session";
const FORM: &str = "__Host-guard_login";
const UI_USER: &str = "mlflow_user";

/// Every `Set-Cookie` of a response.
fn set_cookies(r: &RawResponse) -> Vec<String> {
    r.head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// The value a response sets cookie `name` to, if it sets it.
fn set_value(r: &RawResponse, name: &str) -> Option<String> {
    set_cookies(r).iter().find_map(|c| {
        let (k, rest) = c.split_once('=')?;
        (k == name).then(|| rest.split(';').next().unwrap_or("").to_owned())
    })
}

/// Whether a response deletes cookie `name`.
fn deletes(r: &RawResponse, name: &str) -> bool {
    set_cookies(r)
        .iter()
        .any(|c| c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0"))
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One request on a fresh connection; its response.
async fn one(s: &Setup, bytes: &[u8]) -> RawResponse {
    let (mut resps, _) = send_raw(&s.client(), bytes, 1, Duration::ZERO).await;
    assert!(!resps.is_empty(), "no response to {}", String::from_utf8_lossy(bytes));
    resps.remove(0)
}

async fn get(s: &Setup, path: &str, headers: &[&str]) -> RawResponse {
    let mut all = vec!["Host: localhost"];
    all.extend_from_slice(headers);
    one(s, head(&format!("GET {path} HTTP/1.1"), &all).as_bytes()).await
}

async fn post_form(s: &Setup, path: &str, cookie: &str, body: &str) -> RawResponse {
    let (cookie, len) = (format!("Cookie: {cookie}"), format!("Content-Length: {}", body.len()));
    let mut bytes = head(
        &format!("POST {path} HTTP/1.1"),
        &[
            "Host: localhost",
            "Origin: https://localhost",
            "Sec-Fetch-Site: same-origin",
            "Content-Type: application/x-www-form-urlencoded",
            &cookie,
            &len,
        ],
    )
    .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    one(s, &bytes).await
}

/// Signs in on the page as a browser does: the form (and its cookie), then the post. Returns
/// the response to the post.
async fn sign_in_as(s: &Setup, user: &str, password: &str, next: &str) -> RawResponse {
    let form = get(s, "/_guard/login", &["Accept: text/html"]).await;
    assert_eq!(form.status, 200, "{form:?}");
    let csrf = set_value(&form, FORM).expect("the form sets its cookie");
    assert!(form.text().contains(&format!("value=\"{csrf}\"")), "{form:?}");
    let body = form_encode(&[("user", user), ("password", password), ("csrf", &csrf), ("next", next)]);
    post_form(s, "/_guard/login", &format!("{FORM}={csrf}"), &body).await
}

/// Signs alice in; the `Cookie` header value a browser then sends.
async fn signed_in(s: &Setup) -> String {
    let r = sign_in_as(s, "alice", ALICE_PASSWORD, "/").await;
    assert_eq!(r.status, 303, "{r:?}");
    session_cookie_of(&r)
}

fn session_cookie_of(r: &RawResponse) -> String {
    let session = set_value(r, SESSION).expect("a session cookie");
    let ui = set_value(r, UI_USER).expect("the UI's user cookie");
    format!("{SESSION}={session}; {UI_USER}={ui}")
}

/// An API call carrying only `cookie`.
async fn api_with(s: &Setup, cookie: &str) -> RawResponse {
    get(
        s,
        "/api/2.0/mlflow/experiments/search",
        &[&format!("Cookie: {cookie}"), "Accept: application/json"],
    )
    .await
}

fn is_401_json(r: &RawResponse) -> bool {
    r.status == 401 && r.header("content-type") == Some("application/json") && r.text().contains("UNAUTHENTICATED")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_navigation_gets_the_sign_in_page_and_everything_else_keeps_its_401_json() {
    let s = Setup::start(&[]).await;
    let m = s.up.mark();
    for headers in [
        &[
            "Sec-Fetch-Mode: navigate",
            "Accept: text/html,application/xhtml+xml,*/*;q=0.8",
        ][..],
        &["Accept: text/html"][..],
    ] {
        let r = get(&s, "/experiments?x=1", headers).await;
        assert_eq!(r.status, 401, "{headers:?}: {r:?}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("www-authenticate"), None, "a page, not a password dialog");
        assert!(r
            .header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let page = r.text();
        assert!(page.contains("action=\"/_guard/login\""), "{page}");
        assert!(
            page.contains("name=\"next\" value=\"/experiments?x=1\""),
            "back to where it was going: {page}"
        );
        let csrf = set_value(&r, FORM).expect("the form's cookie");
        assert!(page.contains(&csrf));
        let cookie = set_cookies(&r).into_iter().find(|c| c.starts_with(FORM)).unwrap();
        for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
    }
    // API calls, curl, the MLflow client, a POST: 401 JSON with the challenge, never a redirect.
    for (path, headers) in [
        (
            "/api/2.0/mlflow/experiments/search",
            &["Accept: text/html", "Sec-Fetch-Mode: navigate"][..],
        ),
        ("/ajax-api/2.0/mlflow/runs/search", &["Accept: text/html"][..]),
        ("/", &["Accept: */*"][..]),
        ("/", &["Accept: application/json"][..]),
        ("/", &[][..]),
    ] {
        let r = get(&s, path, headers).await;
        assert!(is_401_json(&r), "{path} {headers:?}: {r:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic realm="));
        assert_eq!(r.header("location"), None);
    }
    s.up.assert_nothing_since(m, "no request without credentials reaches the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_in_sets_a_session_that_reaches_the_upstream_as_the_user_without_the_cookie() {
    let s = Setup::start(&[]).await;
    let r = sign_in_as(&s, "alice", ALICE_PASSWORD, "/#/experiments/1?a=b").await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/#/experiments/1?a=b"));
    let session = set_cookies(&r).into_iter().find(|c| c.starts_with(SESSION)).unwrap();
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=43200"] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(!session.contains("Domain"), "{session}");
    assert!(deletes(&r, FORM), "the form's cookie is spent: {r:?}");
    let cookie = session_cookie_of(&r);

    let m = s.up.mark();
    let bytes = head(
        "GET /api/2.0/mlflow/experiments/search HTTP/1.1",
        &["Host: localhost", &format!("Cookie: theme=dark; {cookie}; other=1")],
    );
    let r = one(&s, bytes.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(set_cookies(&r).is_empty(), "no renewal right after signing in: {r:?}");
    let seen = s.up.exactly_one_since(m, "a request with a session");
    assert_normal_forward(&seen, &s.up, "/api/2.0/mlflow/experiments/search", "session");
    let sent = seen.header("cookie").unwrap();
    assert!(!sent.contains("__Host-guard"), "guard's cookie went upstream: {sent}");
    assert!(sent.contains("theme=dark") && sent.contains("other=1") && sent.contains("mlflow_user=alice"));

    // HTTP/2 splits cookies; the session is found and stripped all the same.
    let mut h2 = s.client().with_alpn(&[b"h2"]).h2().await;
    let m = s.up.mark();
    let mut req = http::Request::get("https://localhost/x").body(empty()).unwrap();
    for c in cookie.split("; ").chain(["a=1"]) {
        req.headers_mut().append("cookie", c.parse().unwrap());
    }
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = s.up.exactly_one_since(m, "HTTP/2 with a session");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("cookie"), Some("mlflow_user=alice; a=1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_needs_its_form_token_the_right_password_and_returns_only_to_this_site() {
    let s = Setup::start(&[]).await;
    let m = s.up.mark();
    // No form cookie (a cross-site page posting the form would have none).
    let body = form_encode(&[("user", "alice"), ("password", ALICE_PASSWORD), ("csrf", "guess")]);
    let r = post_form(&s, "/_guard/login", "", &body).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(set_value(&r, SESSION).is_none());
    // A cookie and field that differ.
    let r = post_form(
        &s,
        "/_guard/login",
        &format!("{FORM}=one"),
        &form_encode(&[("user", "alice"), ("password", ALICE_PASSWORD), ("csrf", "two")]),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    // Wrong password and unknown user: one message, no session.
    for (user, pw) in [("alice", "wrong"), ("nobody", ALICE_PASSWORD)] {
        let r = sign_in_as(&s, user, pw, "/").await;
        assert_eq!(r.status, 401, "{r:?}");
        assert!(r.text().contains("Wrong user name or password."));
        assert!(set_value(&r, SESSION).is_none());
        assert_eq!(r.header("www-authenticate"), None);
    }
    // Somewhere else is never a place to return to.
    for next in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/_guard/logout",
    ] {
        let r = sign_in_as(&s, "alice", ALICE_PASSWORD, next).await;
        assert_eq!(r.status, 303, "{next}: {r:?}");
        assert_eq!(r.header("location"), Some("/"), "{next}");
    }
    // A sign-in posted from another site's page is refused before anything is checked.
    let body = form_encode(&[("user", "alice"), ("password", ALICE_PASSWORD), ("csrf", "x")]);
    let (len, cookie) = (format!("Content-Length: {}", body.len()), format!("Cookie: {FORM}=x"));
    let mut bytes = head(
        "POST /_guard/login HTTP/1.1",
        &[
            "Host: localhost",
            "Origin: https://evil.example",
            "Content-Type: application/x-www-form-urlencoded",
            &cookie,
            &len,
        ],
    )
    .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    let r = one(&s, &bytes).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(set_value(&r, SESSION).is_none());
    s.up.assert_nothing_since(m, "signing in never reaches the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sign_in_page_counts_toward_the_lockout_like_basic() {
    let dir = TempDir::new("session-lockout");
    let users = dir.path().join("users.htpasswd");
    adduser(&users, "alice", ALICE_PASSWORD);
    let up = Upstream::start().await;
    let g = Guard::start(&[
        "--upstream",
        &up.authority(),
        "--users",
        users.to_str().unwrap(),
        "--lockout-failures",
        "3",
    ]);
    let s = Setup { up, g, _dir: dir };
    for _ in 0..3 {
        let r = sign_in_as(&s, "alice", "wrong", "/").await;
        assert_eq!(r.status, 401, "{r:?}");
    }
    // Locked out: the right password no longer helps, on the page or with Basic.
    let r = sign_in_as(&s, "alice", ALICE_PASSWORD, "/").await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.header("retry-after").is_some());
    assert!(set_value(&r, SESSION).is_none());
    let r = one(
        &s,
        head("GET / HTTP/1.1", &["Host: localhost", &auth_line()]).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 429, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_foreign_and_signed_out_cookies_are_refused_and_deleted() {
    let s = Setup::start(&[]).await;
    let cookie = signed_in(&s).await;
    assert_eq!(api_with(&s, &cookie).await.status, 200);
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix(&format!("{SESSION}="))
        .unwrap();

    // One character changed, anywhere in the sealed value.
    for at in [0, value.len() / 2, value.len() - 1] {
        let mut bytes = value.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let forged = format!("{SESSION}={}; {UI_USER}=alice", String::from_utf8(bytes).unwrap());
        let m = s.up.mark();
        let r = api_with(&s, &forged).await;
        assert!(is_401_json(&r), "tampered at {at}: {r:?}");
        assert_eq!(r.header("www-authenticate"), None, "no password dialog over the UI");
        assert!(deletes(&r, SESSION) && deletes(&r, UI_USER), "{r:?}");
        s.up.assert_nothing_since(m, "a tampered cookie");
    }
    // A cookie sealed by another guard with its own key file.
    let other = Setup::start(&[]).await;
    let foreign = signed_in(&other).await;
    assert_eq!(api_with(&other, &foreign).await.status, 200);
    let r = api_with(&s, &foreign).await;
    assert!(is_401_json(&r), "another guard's key: {r:?}");
    assert!(deletes(&r, SESSION));
    // The MLflow UI's sign-out deletes its user cookie: the session cookie alone is signed out.
    let alone = cookie.split(';').next().unwrap().to_owned();
    let r = get(&s, "/ajax-api/2.0/mlflow/users/current", &[&format!("Cookie: {alone}")]).await;
    assert!(is_401_json(&r), "after the UI's sign-out: {r:?}");
    assert_eq!(r.header("www-authenticate"), None);
    assert!(deletes(&r, SESSION), "{r:?}");
    // ... and the navigation that follows gets the sign-in page, deleting the cookie too.
    let r = get(&s, "/", &[&format!("Cookie: {alone}"), "Sec-Fetch-Mode: navigate"]).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("/_guard/login") && deletes(&r, SESSION), "{r:?}");
    // Basic still works beside a stale cookie: the header decides, the cookie is not opened.
    let r = get(&s, "/x", &[&format!("Cookie: {alone}"), &auth_line()]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// The flags reach the binary's sessions; what the lifetimes mean (renewal, the idle and
/// absolute ends) is tested on a moved clock in `tests/inproc.rs`, with no sleeping.
#[tokio::test(flavor = "multi_thread")]
async fn the_session_lifetime_flags_take_effect() {
    let lifetime = Setup::start(&["--session-lifetime", "2s"]).await;
    let idle = Setup::start(&["--session-idle", "2s"]).await;
    let (by_lifetime, by_idle) = (signed_in(&lifetime).await, signed_in(&idle).await);
    assert_eq!(api_with(&lifetime, &by_lifetime).await.status, 200);
    // One wait for both: time itself is what they wait for.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = api_with(&lifetime, &by_lifetime).await;
    assert!(is_401_json(&r) && deletes(&r, SESSION), "past its lifetime: {r:?}");
    let r = api_with(&idle, &by_idle).await;
    assert!(is_401_json(&r) && deletes(&r, SESSION), "idle: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_password_or_a_deleted_user_ends_every_session() {
    let s = Setup::start(&[]).await;
    let users = s._dir.path().join("users.htpasswd");
    let users = users.to_str().unwrap();
    let cookie = signed_in(&s).await;
    assert_eq!(api_with(&s, &cookie).await.status, 200);
    let (code, _, err) = run_guard(
        &["passwd", "--users", users, "--password-stdin", "alice"],
        Some("new horse\n"),
    );
    assert_eq!(code, 0, "{err}");
    let refused = wait_until(|| async { api_with(&s, &cookie).await.status == 401 }).await;
    assert!(refused, "the old session still works after the password changed");
    // Signing in with the new password works, and deleting the user ends that session too.
    let r = sign_in_as(&s, "alice", "new horse", "/").await;
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = session_cookie_of(&r);
    assert_eq!(api_with(&s, &cookie).await.status, 200);
    let (code, _, err) = run_guard(&["deluser", "--users", users, "alice"], None);
    assert_eq!(code, 0, "{err}");
    let refused = wait_until(|| async { api_with(&s, &cookie).await.status == 401 }).await;
    assert!(refused, "a deleted user's session still works");
}

/// Polls `check` for up to 5 s (guard re-reads changed files within about a second).
async fn wait_until<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..50 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn guards_sharing_a_key_file_accept_each_others_sessions_across_a_rotation() {
    let state = TempDir::new("shared-state");
    let dir = state.path().to_str().unwrap().to_owned();
    let a = Setup::start(&["--state-dir", &dir]).await;
    // The same users file too: a session is only as good as the password it was made with.
    let users = a._dir.path().join("users.htpasswd");
    let up = Upstream::start().await;
    let g = Guard::start(&[
        "--upstream",
        &up.authority(),
        "--users",
        users.to_str().unwrap(),
        "--state-dir",
        &dir,
    ]);
    let b = Setup {
        up,
        g,
        _dir: TempDir::new("unused"),
    };
    let from_a = signed_in(&a).await;
    assert_eq!(api_with(&b, &from_a).await.status, 200, "b opens a's session");

    let (code, out, err) = run_guard(&["session", "rotate-key", "--state-dir", &dir], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sealed with key"), "{out}");
    let keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.path().join("session-keys.json")).unwrap()).unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");
    assert!(a.g.stderr.wait_for("session keys reloaded", Duration::from_secs(5)));
    assert!(b.g.stderr.wait_for("session keys reloaded", Duration::from_secs(5)));
    // The old key still opens sessions; new ones are sealed with the new key, on both.
    assert_eq!(api_with(&a, &from_a).await.status, 200, "old key on a");
    assert_eq!(api_with(&b, &from_a).await.status, 200, "old key on b");
    let from_b = signed_in(&b).await;
    assert_eq!(api_with(&a, &from_b).await.status, 200, "a opens b's new-key session");

    // Rotating with nothing kept signs everyone out.
    let (code, _, err) = run_guard(
        &["session", "rotate-key", "--state-dir", &dir, "--keep-old", "0s"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let refused = wait_until(|| async { api_with(&a, &from_b).await.status == 401 }).await;
    assert!(refused, "a session of a retired key still works");
    let key_file = std::fs::metadata(state.path().join("session-keys.json")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key_file.permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_out_needs_the_sessions_token_and_deletes_the_cookies() {
    let s = Setup::start(&[]).await;
    let cookie = signed_in(&s).await;
    let r = get(&s, "/_guard/logout", &[&format!("Cookie: {cookie}")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let page = r.text();
    assert!(page.contains("Signed in as <strong>alice</strong>"), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    // Without the token: refused, still signed in.
    let r = post_form(&s, "/_guard/logout", &cookie, "csrf=wrong").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(api_with(&s, &cookie).await.status, 200);
    let r = post_form(&s, "/_guard/logout", &cookie, &form_encode(&[("csrf", &csrf)])).await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/"));
    assert!(deletes(&r, SESSION) && deletes(&r, UI_USER), "{r:?}");
    // Without a session the sign-out page sends the browser home.
    let r = get(&s, "/_guard/logout", &[]).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ui_account_endpoints_are_answered_by_guard_and_change_only_ones_own_password() {
    let s = Setup::start(&[]).await;
    let cookie = signed_in(&s).await;
    let m = s.up.mark();
    for path in ["/ajax-api/2.0/mlflow/users/current", "/api/2.0/mlflow/users/current"] {
        for who in [format!("Cookie: {cookie}"), auth_line()] {
            let r = get(&s, path, &[&who]).await;
            assert_eq!(r.status, 200, "{path}: {r:?}");
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["user"]["username"], "alice", "{v}");
            assert_eq!(v["user"]["is_admin"], false);
            assert!(v["user"]["id"].is_u64());
            assert_eq!(v["is_basic_auth"], true);
        }
    }
    let patch = |body: &str, who: &str| {
        let (len, who) = (format!("Content-Length: {}", body.len()), who.to_owned());
        let mut bytes = head(
            "PATCH /ajax-api/2.0/mlflow/users/update-password HTTP/1.1",
            &["Host: localhost", "Content-Type: application/json", &who, &len],
        )
        .into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    };
    let session = format!("Cookie: {cookie}");
    for (body, status, code, why) in [
        (
            r#"{"username":"colon","password":"x","current_password":"y"}"#,
            403,
            "PERMISSION_DENIED",
            "someone else's",
        ),
        (
            r#"{"username":"alice","password":"x"}"#,
            400,
            "INVALID_PARAMETER_VALUE",
            "no current password",
        ),
        (
            r#"{"username":"alice","password":"x","current_password":"wrong"}"#,
            400,
            "INVALID_PARAMETER_VALUE",
            "a wrong current password",
        ),
    ] {
        let r = one(&s, &patch(body, &session)).await;
        assert_eq!(r.status, status, "{why}: {r:?}");
        assert!(r.text().contains(code), "{why}: {r:?}");
    }
    let r = one(
        &s,
        &patch(
            &format!(r#"{{"username":"alice","password":"brand new","current_password":"{ALICE_PASSWORD}"}}"#),
            &session,
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    s.up.assert_nothing_since(m, "account endpoints are never forwarded");
    let renewed = session_cookie_of(&r);
    assert_eq!(api_with(&s, &renewed).await.status, 200, "the changer stays signed in");
    let text = std::fs::read_to_string(s._dir.path().join("users.htpasswd")).unwrap();
    assert!(text.lines().any(|l| l.starts_with("alice:$2y$12$")), "{text}");
    let r = get(&s, "/x", &[&format!("Authorization: {}", basic("alice", "brand new"))]).await;
    assert_eq!(r.status, 200, "the new password works: {r:?}");
    let r = get(&s, "/x", &[&auth_line()]).await;
    assert_eq!(r.status, 401, "the old password is gone: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_login_page_leaves_browsers_the_basic_prompt() {
    let s = Setup::start(&["--no-login-page"]).await;
    let r = get(&s, "/", &["Sec-Fetch-Mode: navigate", "Accept: text/html"]).await;
    assert!(is_401_json(&r), "{r:?}");
    assert!(r.header("www-authenticate").is_some());
    let r = get(&s, "/_guard/login", &["Accept: text/html"]).await;
    assert_eq!(r.status, 404, "{r:?}");
}
