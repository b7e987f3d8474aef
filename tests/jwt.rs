//! Bearer JWTs from a real OpenID provider (`auth.jwt`), end to end: panva's oidc-provider
//! issues client-credentials access tokens, guard fetches its keys through discovery and lets
//! them in beside htpasswd Basic and guard tokens on the same site; forged and foreign tokens
//! get 401 JSON and never reach the upstream; a rotated provider key is picked up without a
//! restart; the MLflow Python client logs a run with `MLFLOW_TRACKING_TOKEN` set to a token.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mlflow::{run_client, venv, MlflowServer};
use common::oidc::{provider_ready, OidcProvider, AUDIENCE};
use common::*;
use http::Request;
use serde_json::json;

fn bearer(path: &str, token: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap()
}

/// guard.yaml for one site at `upstream` with htpasswd users, guard tokens and the provider's
/// JWTs.
fn config(dir: &Path, upstream: &str, issuer: &str) -> std::path::PathBuf {
    let path = dir.join("guard.yaml");
    let yaml = format!(
        "upstream: {upstream}\nauth:\n  users: {users}\n  tokens: {tokens}\n  jwt:\n    - issuer: {issuer}\n      audiences: [{AUDIENCE}]\n",
        users = dir.join("users").display(),
        tokens = dir.join("tokens.json").display(),
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_tokens_pass_beside_passwords_and_guard_tokens_and_forgeries_do_not() {
    if !provider_ready() {
        return;
    }
    let dir = TempDir::new("jwt");
    let mut idp = OidcProvider::start(&dir.path().join("keys.json"), 0);
    adduser(&dir.path().join("users"), "alice", "correct horse");
    let (code, out, err) = run_guard(
        &[
            "token",
            "create",
            "ci",
            "--tokens",
            dir.path().join("tokens.json").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let guard_token = out.lines().find(|l| l.starts_with("grd_")).unwrap().to_owned();
    let up = Echo::start().await;
    let cfg = config(dir.path(), &up.authority(), &idp.issuer);
    // Eleven refusals from one address would lock it out (10 by default): not what is tested.
    let g = Guard::start(&["--config", cfg.to_str().unwrap(), "--lockout-failures", "100"]);
    let c = g.client();

    // Three ways in, on one site at once.
    let token = idp.client_credentials_token();
    let resp = c.send(bearer("/api/2.0/mlflow/experiments/search", &token)).await;
    assert_eq!(resp.status(), 200, "{}", text(resp.into_body()).await);
    let seen = up.last();
    assert_eq!(
        seen.all("x-forwarded-user"),
        vec!["ci-machine"],
        "the token's sub names the caller"
    );
    assert_eq!(seen.header("authorization"), None, "the JWT went upstream");
    let basic_req = Request::get("/api/ok")
        .header("host", "localhost")
        .header("authorization", basic("alice", "correct horse"))
        .body(empty())
        .unwrap();
    assert_eq!(c.send(basic_req).await.status(), 200);
    // The provider rotates its key: a token under the new kid makes guard re-fetch the keys at
    // once, without a restart.
    idp.rotate_key("rsa-2");
    let rotated = idp.client_credentials_token();
    let resp = c.send(bearer("/api/ok", &rotated)).await;
    assert_eq!(resp.status(), 200, "{}", g.stderr.text());
    assert!(
        g.stderr.text().contains("re-fetched the JWT keys"),
        "{}",
        g.stderr.text()
    );
    // The re-fetched set holds only the new key: a token of the old one no longer passes (the
    // re-fetch emptied the cache), while guard tokens go on as before.
    assert_eq!(c.send(bearer("/api/ok", &token)).await.status(), 401);
    assert_eq!(c.send(bearer("/api/ok", &guard_token)).await.status(), 200);
    let passed = up.count();

    // Each forgery or foreign token: 401 JSON with the Basic challenge, nothing forwarded.
    let other_issuer = OidcProvider::start(&dir.path().join("other-keys.json"), 0);
    let refused = [
        ("expired", idp.sign(json!({ "claims": { "exp": { "in": -120 } } }))),
        (
            "another audience",
            idp.sign(json!({ "claims": { "aud": "https://other.example" } })),
        ),
        ("no audience", idp.sign(json!({ "claims": { "aud": null } }))),
        ("an unknown key", idp.sign(json!({ "key": "stranger" }))),
        (
            "a known kid, another key",
            idp.sign(json!({ "key": "stranger", "kid": "rsa-2" })),
        ),
        ("alg none", idp.sign(json!({ "key": "none" }))),
        (
            "HS256 keyed with the public key",
            idp.sign(json!({ "key": "public-as-hmac" })),
        ),
        ("an issuer not configured", other_issuer.client_credentials_token()),
        (
            "this issuer's name, the other's key",
            other_issuer.sign(json!({ "claims": { "iss": idp.issuer } })),
        ),
        ("not yet valid", idp.sign(json!({ "claims": { "nbf": { "in": 600 } } }))),
    ];
    for (why, token) in &refused {
        let resp = c.send(bearer("/api/2.0/mlflow/experiments/search", token)).await;
        assert_eq!(resp.status(), 401, "{why}");
        assert!(resp.headers().contains_key("www-authenticate"), "{why}");
        let v = echo_json(&text(resp.into_body()).await);
        assert_eq!(v["error_code"], "UNAUTHENTICATED", "{why}");
    }
    assert_eq!(up.count(), passed, "a refused token reached the upstream");
}

#[test]
fn an_issuer_that_answers_wrongly_stops_the_start_and_one_that_is_down_is_retried() {
    if !provider_ready() {
        return;
    }
    let dir = TempDir::new("jwt-start");
    adduser(&dir.path().join("users"), "alice", "correct horse");
    // Discovery answers for another issuer name: a configuration error, exit 2, naming both.
    let idp = OidcProvider::start(&dir.path().join("keys.json"), 0);
    let wrong = format!("{}/", idp.issuer);
    let cfg = config(dir.path(), "127.0.0.1:9", &wrong);
    let (code, _, err) = run_guard(
        &["serve", "--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&wrong) && err.contains("names issuer"), "{err}");
    // Nobody listens: guard serves (passwords work) and keeps trying.
    let port = idp.port();
    drop(idp);
    let cfg = config(dir.path(), "127.0.0.1:9", &format!("http://127.0.0.1:{port}"));
    let g = Guard::start(&["--config", cfg.to_str().unwrap(), "--metrics-listen", "127.0.0.1:0"]);
    assert!(
        g.stderr.wait_for("retrying while serving", Duration::from_secs(20)),
        "{}",
        g.stderr.text()
    );
    // The provider comes back: its tokens pass once the next retry fetched its keys (retries
    // at 2, 4, 8 s after start), without a restart.
    let idp = OidcProvider::start(&dir.path().join("keys.json"), port);
    let token = idp.client_credentials_token();
    let c = g.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { c.send(bearer("/api/ok", &token)).await.status() });
        // The upstream (port 9) is down: 502 means authentication passed.
        if status != 401 {
            assert_eq!(status, 502);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the keys were never fetched: {}",
            g.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The failed fetches were counted.
    let addr = g
        .stdout
        .text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("guard: metrics on http://")
                .map(|a| a.trim_end_matches("/metrics").to_owned())
        })
        .expect("the metrics address");
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(
        &mut tcp,
        b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut tcp, &mut text).unwrap();
    let failures: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("guard_idp_fetch_errors_total "))
        .unwrap_or_else(|| panic!("no guard_idp_fetch_errors_total in {text}"))
        .trim()
        .parse()
        .unwrap();
    assert!(failures >= 2.0, "the start's fetch and a retry failed: {failures}");
}

#[test]
fn the_mlflow_client_logs_a_run_with_a_provider_token() {
    let Some(venv) = venv() else { return };
    if !provider_ready() {
        return;
    }
    let dir = TempDir::new("jwt-mlflow");
    let idp = OidcProvider::start(&dir.path().join("keys.json"), 0);
    adduser(&dir.path().join("users"), "alice", "correct horse");
    let mlflow = MlflowServer::start(&venv);
    let cfg = config(dir.path(), &mlflow.upstream(), &idp.issuer);
    let g = Guard::start(&["--config", cfg.to_str().unwrap()]);
    let uri = format!("https://localhost:{}", g.addr.port());
    let token = idp.client_credentials_token();
    let ca = g.ca().display().to_string();
    let env = [
        ("MLFLOW_TRACKING_URI", uri.as_str()),
        ("MLFLOW_TRACKING_SERVER_CERT_PATH", ca.as_str()),
    ];
    let with_token = [env[0], env[1], ("MLFLOW_TRACKING_TOKEN", token.as_str())];
    let run = run_client(&venv, &["roundtrip", "4096"], &with_token);
    run.assert_success("a run logged with a provider's token");
    assert_eq!(run.json()["sha256_downloaded"], run.json()["sha256_uploaded"], "{run}");
    // Without it, the client gets 401.
    run_client(&venv, &["expect-auth-failure"], &env).assert_success("no token: refused");
}
