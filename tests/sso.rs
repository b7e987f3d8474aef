//! Single sign-on for people (`auth.oidc`) against a real OpenID provider (panva's
//! oidc-provider, `tests/browser/oidc-provider.mjs`): the round trip's guards (PKCE S256,
//! `state`, `nonce`, the sealed round-trip cookie) and its refusals, API calls that get 401
//! JSON and never a redirect, and password, guard-token and JWT callers on the same site; then
//! the whole flow in Debian's Chromium (`tests/browser/sso.mjs`, one browser process): sign in
//! on the provider's page, use the MLflow UI, a refresh when the ID token runs out and another at
//! the session's absolute end, sign-out
//! through the provider, and a person outside `allowed_groups` stopped by guard's 403 page;
//! while the browser's session lives, a password, a guard token and a JWT pass on the same site.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mlflow::{venv, MlflowServer};
use common::oidc::{provider_ready, OidcProvider, AUDIENCE};
use common::*;
use http::Request;

const PROVIDER: &str = "Test ID";

/// guard.yaml for one site at `upstream`: htpasswd users, guard tokens, the provider's JWTs for
/// machines and its sign-in for people (the `guard-web` client), admitting the `ml-team` group.
fn config(dir: &Path, upstream: &str, issuer: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("oidc-secret"), "guard-web-secret\n").unwrap();
    let path = dir.join("guard.yaml");
    let yaml = format!(
        "upstream: {upstream}
auth:
  users: {users}
  tokens: {tokens}
  jwt:
    - issuer: {issuer}
      audiences: [{AUDIENCE}]
  oidc:
    issuer: {issuer}
    name: {PROVIDER}
    client_id: guard-web
    client_secret_file: oidc-secret
    scopes: [openid, email, profile, groups, offline_access]
    allowed_groups: [ml-team]
{extra}",
        users = dir.join("users").display(),
        tokens = dir.join("tokens.json").display(),
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A guard token `ci` in `dir`'s tokens file.
fn create_token(dir: &Path) -> String {
    let tokens = dir.join("tokens.json");
    let (code, out, err) = run_guard(&["token", "create", "ci", "--tokens", tokens.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    out.lines().find(|l| l.starts_with("grd_")).unwrap().to_owned()
}

fn navigation(path: &str) -> http::request::Builder {
    Request::get(path)
        .header("host", "localhost")
        .header("sec-fetch-mode", "navigate")
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.replace('+', " ").into_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The `name=value` of a `Set-Cookie` named `name`.
fn set_cookie(resp: &http::Response<hyper::body::Incoming>, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_round_trip_is_guarded_api_calls_never_redirect_and_every_credential_works_beside_it() {
    if !provider_ready() {
        return;
    }
    let dir = TempDir::new("sso");
    let idp = OidcProvider::start(&dir.path().join("keys.json"), 0);
    adduser(&dir.path().join("users"), "alice", "correct horse");
    let guard_token = create_token(dir.path());
    let up = Echo::start().await;
    let cfg = config(dir.path(), &up.authority(), &idp.issuer, "");
    let g = Guard::start(&["--config", cfg.to_str().unwrap(), "--lockout-failures", "100"]);
    let c = g.client();

    // An API call never gets a redirect or a page, even one a browser makes as a navigation.
    let resp = c
        .send(navigation("/api/2.0/mlflow/experiments/search").body(empty()).unwrap())
        .await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("location").is_none());
    assert_eq!(resp.headers()["content-type"], "application/json");
    let with_header = Request::get("/")
        .header("host", "localhost")
        .header("sec-fetch-mode", "navigate")
        .header("authorization", "Bearer not.a.jwt")
        .body(empty())
        .unwrap();
    let resp = c.send(with_header).await;
    assert_eq!(resp.status(), 401, "anything with an Authorization header gets 401");
    assert!(resp.headers().get("location").is_none());

    // A navigation gets the sign-in page, offering the provider beside the password form.
    let resp = c.send(navigation("/").body(empty()).unwrap()).await;
    assert_eq!(resp.status(), 401);
    let page = text(resp.into_body()).await;
    assert!(page.contains(&format!("Sign in with {PROVIDER}")), "{page}");
    assert!(
        page.contains("href=\"/_guard/oidc/start?next=%2F\"") && page.contains("name=\"password\""),
        "{page}"
    );

    // The start: to the provider's authorization endpoint with PKCE S256, state and nonce,
    // the round trip sealed in a cookie.
    let resp = c
        .send(
            navigation("/_guard/oidc/start?next=/%23/experiments")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 303);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{}/auth?", idp.issuer)), "{location}");
    let param = |n: &str| query_param(&location, n).unwrap_or_else(|| panic!("no {n} in {location}"));
    assert_eq!(param("response_type"), "code");
    assert_eq!(param("client_id"), "guard-web");
    assert_eq!(param("redirect_uri"), "https://localhost/_guard/oidc/callback");
    assert_eq!(param("code_challenge_method"), "S256");
    assert_eq!(param("code_challenge").len(), 43);
    assert_eq!(param("scope"), "openid email profile groups offline_access");
    assert_eq!(param("prompt"), "consent", "offline_access needs consent asked");
    let state = param("state");
    assert!(state.len() >= 22 && param("nonce").len() >= 22 && state != param("nonce"));
    let flow = set_cookie(&resp, "__Host-guard_oidc").expect("the round-trip cookie");
    assert!(flow.contains("; Secure; HttpOnly; SameSite=Lax; Max-Age=600"), "{flow}");
    let flow = flow.split(';').next().unwrap().to_owned();
    assert!(!flow.contains(&state), "the state is sealed, not in the clear");

    let callback = |query: String, cookie: Option<&str>| {
        let mut b = navigation(&format!("/_guard/oidc/callback?{query}"));
        if let Some(cookie) = cookie {
            b = b.header("cookie", cookie);
        }
        b.body(empty()).unwrap()
    };
    let before = up.count();
    // No round-trip cookie (another browser, or a link from elsewhere): start again.
    let resp = c.send(callback(format!("code=x&state={state}"), None)).await;
    assert_eq!(resp.status(), 400);
    assert!(set_cookie(&resp, "__Host-guard_session").is_none());
    let page = text(resp.into_body()).await;
    assert!(
        page.contains("Sign-in expired") && page.contains("/_guard/oidc/start"),
        "{page}"
    );
    // Another state than the cookie's (a forged callback): refused the same way.
    let resp = c.send(callback("code=x&state=forged".to_owned(), Some(&flow))).await;
    assert_eq!(resp.status(), 400);
    // The provider's refusal is shown, not retried.
    let resp = c
        .send(callback(
            format!("error=access_denied&error_description=no+thanks&state={state}"),
            Some(&flow),
        ))
        .await;
    assert_eq!(resp.status(), 403);
    let page = text(resp.into_body()).await;
    assert!(
        page.contains("did not sign you in: access_denied (no thanks)"),
        "{page}"
    );
    // A code the provider never issued: its token endpoint refuses it, and guard says so.
    let resp = c
        .send(callback(format!("code=made-up&state={state}"), Some(&flow)))
        .await;
    assert_eq!(resp.status(), 502);
    assert!(set_cookie(&resp, "__Host-guard_oidc").is_some_and(|c| c.contains("Max-Age=0")));
    let page = text(resp.into_body()).await;
    assert!(page.contains("invalid_grant"), "{page}");
    assert_eq!(up.count(), before, "no callback reached the upstream");

    // Passwords, guard tokens and the provider's JWTs on the same site; the client's own
    // identity headers never reach the upstream.
    let token = idp.client_credentials_token();
    for (auth, who) in [
        (basic("alice", "correct horse"), "alice"),
        (format!("Bearer {guard_token}"), "ci"),
        (format!("Bearer {token}"), "ci-machine"),
    ] {
        let req = Request::get("/api/2.0/mlflow/experiments/search")
            .header("host", "localhost")
            .header("authorization", auth)
            .header("x-forwarded-email", "boss@example.com")
            .header("x-forwarded-groups", "admins")
            .body(empty())
            .unwrap();
        let resp = c.send(req).await;
        assert_eq!(resp.status(), 200, "{who}");
        let seen = up.last();
        assert_eq!(seen.all("x-forwarded-user"), vec![who]);
        assert_eq!(seen.header("x-forwarded-email"), None, "{who}");
        assert_eq!(seen.header("x-forwarded-groups"), None, "{who}");
    }

    // `only`: a navigation goes straight to the provider's start; the password form is off.
    let cfg = config(dir.path(), &up.authority(), &idp.issuer, "    only: true\n");
    let only = Guard::start(&["--config", cfg.to_str().unwrap()]);
    let c = only.client();
    let resp = c.send(navigation("/").body(empty()).unwrap()).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/_guard/oidc/start?next=%2F");
    let resp = c.send(navigation("/_guard/login").body(empty()).unwrap()).await;
    let page = text(resp.into_body()).await;
    assert!(
        page.contains("Sign in with") && !page.contains("name=\"password\""),
        "{page}"
    );
    let post = Request::post("/_guard/login")
        .header("host", "localhost")
        .header("origin", "https://localhost")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body("user=alice&password=correct+horse&csrf=x&next=%2F"))
        .unwrap();
    let resp = c.send(post).await;
    assert_eq!(resp.status(), 403);
    assert!(set_cookie(&resp, "__Host-guard_session").is_none());
}

#[test]
fn people_sign_in_through_the_provider_in_a_real_browser() {
    let Some(venv) = venv() else { return };
    if !provider_ready()
        || !require_npm_package("playwright-core")
        || require_program(&["chromium"], "apt-get install -y chromium").is_none()
    {
        return;
    }
    const TTL: &str = "20";
    let dir = TempDir::new("sso-browser");
    let idp = OidcProvider::start_env(&dir.path().join("keys.json"), 0, &[("ID_TOKEN_TTL", TTL)]);
    let mlflow = MlflowServer::start(&venv);
    adduser(&dir.path().join("users"), "alice-password", "correct horse");
    let guard_token = create_token(dir.path());
    // Sessions end 32 s after sign-in: between the first ID token's end (20 s) and the second's.
    let session = "  session:\n    lifetime: 32s\n    idle: 30s\n";
    let cfg = config(dir.path(), &mlflow.upstream(), &idp.issuer, session);
    let g = Guard::start(&["--config", cfg.to_str().unwrap()]);

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-sso");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/sso.mjs");
    let run = Command::new("node")
        .arg(&script)
        .env("GUARD_PORT", g.addr.port().to_string())
        .env("PROVIDER", PROVIDER)
        .env("ID_TOKEN_TTL", TTL)
        .env("SESSION_LIFETIME", "32")
        .env("SHOTS", &shots)
        .env("GUARD_BASIC", "alice-password:correct horse")
        .env("GUARD_TOKEN", &guard_token)
        .env("ISSUER", &idp.issuer)
        .output()
        .expect("node runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(
        run.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}\nguard:\n{}\nthe provider:\n{}",
        run.status,
        g.stderr.text(),
        idp.log()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    eprintln!("screenshots in {}: {report}", shots.display());
    for shot in [
        "0-sign-in-page",
        "1-provider-login",
        "2-experiment-created",
        "3-provider-sign-out",
        "4-signed-out",
        "5-not-allowed",
    ] {
        let p = shots.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "{} was saved",
            p.display()
        );
    }
    assert_eq!(report["account_menu"], "Account menu for alice", "{report}");
    assert_eq!(report["signed_out"], true);
    assert_eq!(report["not_allowed"], true);
    let beside = &report["beside_the_session"];
    assert_eq!(
        (
            beside["basic"].as_u64(),
            beside["guard_token"].as_u64(),
            beside["jwt"].as_u64()
        ),
        (Some(200), Some(200), Some(200)),
        "{report}"
    );

    // MLflow's store, asked directly: the experiment the UI created is there.
    let all = mlflow.api_post(
        "/api/2.0/mlflow/experiments/search",
        &serde_json::json!({"max_results": 1000}),
    );
    let experiments = all["experiments"].as_array().unwrap_or_else(|| panic!("{all}"));
    assert!(
        experiments
            .iter()
            .any(|e| e["name"] == "created-through-sso" && e["experiment_id"] == report["experiment_id"]),
        "{all}"
    );
    // guard's log: the sign-in, the refresh, the refusal; never a token.
    let log = g.stderr.text();
    for needle in [
        "signed in with the identity provider",
        "refreshed the single-sign-on session",
        "single sign-on refused",
        "signed out",
    ] {
        assert!(
            g.stderr.wait_for(needle, Duration::from_secs(2)),
            "{needle:?} in guard's log:\n{log}"
        );
    }
    assert!(!log.contains("guard-web-secret"), "the client secret in the log");
    assert_eq!(
        log.matches("refreshed the single-sign-on session").count(),
        2,
        "at the ID token's end, then at the session's:\n{log}"
    );
}
