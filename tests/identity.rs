//! Issue 12, points 2 to 5, end to end: identity headers only guard writes, upgrades only to an
//! authenticated WebSocket, public paths that a `;` cannot widen, and exactly one `Host`. Each
//! attack is raw bytes over TLS against the real binary; the tapped upstream shows what got
//! through (nothing, or exactly guard's headers).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

/// guard with `public_paths: [/static/]` (from a config file; flags give the rest).
async fn with_public_static(extra: &[&str]) -> (Setup, TempDir) {
    let dir = TempDir::new("identity");
    let cfg = dir.path().join("guard.yaml");
    std::fs::write(&cfg, "public_paths: [/static/]\n").unwrap();
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Setup::start(&args).await, dir)
}

const SPOOFED: [&str; 11] = [
    "X-Forwarded-User: admin",
    "X-Forwarded-Email: admin@example.com",
    "X-Forwarded-Groups: admins",
    "X-Forwarded-Preferred-Username: admin",
    "X-Real-IP: 6.6.6.6",
    "True-Client-IP: 6.6.6.6",
    "X-Forwarded-Port: 80",
    "X-Forwarded-Prefix: /evil",
    "X-Forwarded-Server: evil",
    "X-Original-URL: /api/2.0/mlflow/runs/delete",
    "X-Rewrite-URL: /api/2.0/mlflow/runs/delete",
];

/// Only guard's own facts about the client reach the upstream.
fn assert_no_spoofed(seen: &Seen, why: &str) {
    for name in [
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "true-client-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-original-url",
        "x-rewrite-url",
        "authorization",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "{why}: the client's {name} reached the upstream"
        );
    }
    assert_eq!(
        seen.all("x-real-ip"),
        vec!["127.0.0.1"],
        "{why}: X-Real-IP is the connection's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_headers_are_only_ever_guards() {
    // Default header: the client's copies go, guard's one stays.
    let s = Setup::start(&[]).await;
    let mut lines = vec!["Host: localhost".to_string(), auth_line()];
    lines.extend(SPOOFED.iter().map(|l| l.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let req = head("GET /api/x HTTP/1.1", &refs);
    let seen = s.forwarded_as_alice(req.as_bytes(), "/api/x", "spoofed identity").await;
    assert_no_spoofed(&seen, "default header");
    drop(s);

    // Off, or renamed: the client's X-Forwarded-User (and the renamed header) still go.
    for (flag, name) in [("off", None), ("X-Remote-User", Some("x-remote-user"))] {
        let s = Setup::start(&["--forwarded-user-header", flag]).await;
        let mut refs = refs.clone();
        if name.is_some() {
            refs.push("X-Remote-User: admin");
        }
        let m = s.up.mark();
        let (resps, _) = send_raw(
            &s.client(),
            head("GET /api/x HTTP/1.1", &refs).as_bytes(),
            1,
            Duration::ZERO,
        )
        .await;
        assert_eq!(resps.first().map(|r| r.status), Some(200), "{flag}: {resps:?}");
        let seen = s.up.exactly_one_since(m, flag);
        assert_eq!(
            seen.header("x-forwarded-user"),
            None,
            "{flag}: the client's X-Forwarded-User got through"
        );
        assert_eq!(
            seen.all("x-remote-user"),
            name.map(|_| vec!["alice"]).unwrap_or_default(),
            "{flag}"
        );
        assert_no_spoofed(&seen, flag);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_is_no_header_value_is_refused_not_forwarded_anonymously() {
    let s = Setup::start(&[]).await;
    // Added while guard runs: it reloads the users file within seconds.
    adduser(&s._dir.path().join("users.htpasswd"), "josé", "pw-of-jose");
    let req = head(
        "GET /api/x HTTP/1.1",
        &[
            "Host: localhost",
            &format!("Authorization: {}", basic("josé", "pw-of-jose")),
        ],
    );
    let m = s.up.mark();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (resps, _) = send_raw(&s.client(), req.as_bytes(), 1, Duration::ZERO).await;
        let status = resps.first().map_or(0, |r| r.status);
        if status != 401 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 403, "a user whose name cannot be X-Forwarded-User is refused");
    s.up.assert_nothing_since(m, "a non-ASCII user name");
    let logged = "cannot be sent in x-forwarded-user";
    assert!(
        s.g.stderr.wait_for(logged, Duration::from_secs(5)) || s.g.stdout.text().contains(logged),
        "the refusal is logged: {}",
        s.g.stderr.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_never_reaches_the_upstream_on_a_public_path() {
    let (s, _dir) = with_public_static(&[]).await;
    let req = head("GET /static/app.js HTTP/1.1", &["Host: localhost", &auth_line()]);
    let m = s.up.mark();
    let (resps, _) = send_raw(&s.client(), req.as_bytes(), 1, Duration::ZERO).await;
    assert_eq!(resps.first().map(|r| r.status), Some(200), "{resps:?}");
    let seen = s.up.exactly_one_since(m, "public path");
    assert_eq!(seen.header("authorization"), None, "the password went to the upstream");
    assert_eq!(seen.header("x-forwarded-user"), None, "a public path names nobody");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_authenticated_websocket_upgrades() {
    let (s, _dir) = with_public_static(&[]).await;
    // h2c with credentials: forwarded as a plain request, nothing of the upgrade in it.
    let req = head(
        "GET /api/x HTTP/1.1",
        &[
            "Host: localhost",
            &auth_line(),
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
    );
    let seen = s.forwarded_as_alice(req.as_bytes(), "/api/x", "h2c").await;
    for name in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(seen.header(name), None, "h2c: the client's {name} reached the upstream");
    }
    // websocket offered beside another protocol: not a websocket upgrade either.
    let req = head(
        "GET /api/x HTTP/1.1",
        &[
            "Host: localhost",
            &auth_line(),
            "Connection: Upgrade",
            "Upgrade: websocket, h2c",
        ],
    );
    let seen = s.forwarded_as_alice(req.as_bytes(), "/api/x", "websocket, h2c").await;
    assert_eq!(seen.header("upgrade"), None, "a mixed Upgrade reached the upstream");
    // A websocket on a public path without credentials: challenged, nothing forwarded.
    let req = head(
        "GET /static/ws HTTP/1.1",
        &[
            "Host: localhost",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    );
    s.not_forwarded(req.as_bytes(), &[401], "websocket on a public path")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_semicolon_never_makes_a_path_public() {
    let (s, _dir) = with_public_static(&[]).await;
    for path in ["/static/..;/x", "/static/..%3b/x", "/static/..%3B/x", "/static;a=b/x"] {
        let req = head(&format!("GET {path} HTTP/1.1"), &["Host: localhost"]);
        s.not_forwarded(req.as_bytes(), &[401], path).await;
    }
    // The plain public path still works without credentials.
    let m = s.up.mark();
    let req = head("GET /static/x HTTP/1.1", &["Host: localhost"]);
    let (resps, _) = send_raw(&s.client(), req.as_bytes(), 1, Duration::ZERO).await;
    assert_eq!(resps.first().map(|r| r.status), Some(200), "{resps:?}");
    s.up.exactly_one_since(m, "a plain public path");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http11_request_needs_exactly_one_host() {
    let s = Setup::start(&[]).await;
    let none = head("GET /api/x HTTP/1.1", &[&auth_line()]);
    s.not_forwarded(none.as_bytes(), &[400], "no Host").await;
    let two = head(
        "GET /api/x HTTP/1.1",
        &["Host: localhost", "Host: other.example", &auth_line()],
    );
    s.not_forwarded(two.as_bytes(), &[400], "two Hosts").await;
    let one = head("GET /api/x HTTP/1.1", &["Host: localhost", &auth_line()]);
    s.forwarded_as_alice(one.as_bytes(), "/api/x", "one Host").await;
}

/// A user and a token of one name would reach the upstream as one `X-Forwarded-User`: each
/// command refuses the other's names.
#[test]
fn a_token_and_a_user_never_share_a_name() {
    let dir = TempDir::new("clash");
    let users = dir.path().join("users.htpasswd");
    let tokens = dir.path().join("tokens.json");
    let (users, tokens) = (users.to_str().unwrap(), tokens.to_str().unwrap());
    adduser(Path::new(users), "alice", "pw-of-alice");
    let files = ["--users", users, "--tokens", tokens];
    let (code, out, err) = run_guard(&[&["token", "create", "alice"][..], &files].concat(), None);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("a user is called \"alice\""), "{err}");
    assert!(out.is_empty(), "no token was printed: {out}");
    let (code, out, err) = run_guard(&[&["token", "create", "ci"][..], &files].concat(), None);
    assert_eq!(code, 0, "{out}{err}");
    let adduser_ci = [&["adduser", "ci"][..], &files, &["--password-stdin", "--cost", "4"]].concat();
    let (code, out, err) = run_guard(&adduser_ci, Some("pw-of-ci\n"));
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("a token is called \"ci\""), "{err}");
    // Revoked, the name is free for a user again.
    let (code, out, err) = run_guard(&[&["token", "revoke", "ci"][..], &files].concat(), None);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_guard(&adduser_ci, Some("pw-of-ci\n"));
    assert_eq!(code, 0, "{out}{err}");
}
