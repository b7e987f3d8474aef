//! End-to-end tests of certificates from ACME against a real pebble: HTTP-01 and TLS-ALPN-01 from
//! an empty state, the fallback between them, restarts that reuse what is stored, renewal under
//! load, a CA that is down at start, the plain listener's redirect, and refused input.
//! Without pebble they print a note and pass, except in CI.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pebble::{self, start_guard, wait_for_log, PebbleSetup};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `--upstream`, no auth, and the given extra flags, then pebble's flags.
fn acme_args(up: &Echo, setup: &PebbleSetup, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["--upstream".into(), up.authority(), "--dangerous-no-auth".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(setup.guard_args());
    args
}

/// The serial of the certificate guard presents in a fresh handshake.
async fn serial(c: &Client) -> String {
    let tls = c.tls().await;
    let leaf = &tls.get_ref().1.peer_certificates().expect("a certificate")[0];
    x509_parser::parse_x509_certificate(leaf.as_ref())
        .unwrap()
        .1
        .raw_serial_as_string()
}

/// Where guard keeps this pebble's account and certificate.
fn store_dir(state: &Path, setup: &PebbleSetup) -> PathBuf {
    state.join("acme").join(format!("localhost_{}_dir", setup.listen))
}

fn mode(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
}

/// Waits for a file guard writes just after swapping the certificate in.
async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http01_from_empty_state_gives_a_trusted_certificate_and_requests_are_proxied() {
    if !pebble::available() {
        return;
    }
    init();
    let up = Echo::start().await;
    let setup = PebbleSetup::new();
    let state = TempDir::new("acme-http01");
    let (g, plain) = start_guard(&acme_args(&up, &setup, &["--acme-challenge", "http-01"]), state.path());
    // guard first: pebble must be told the ports guard bound.
    let ca = setup.start(plain.port(), unused_port(), 3600);
    let root = ca.root(setup.dir.path()).await;

    let c = Client::new(g.addr, &root, "localhost");
    let resp = c.send(get("/api/2.0/mlflow/experiments/search?max_results=1")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(up.last().uri, "/api/2.0/mlflow/experiments/search?max_results=1");
    let log = g.stderr.text();
    assert!(
        log.contains("ordering a certificate") && log.contains("http-01"),
        "{log}"
    );
    assert!(log.contains("answered an http-01 validation"), "{log}");
    assert_eq!(ca.orders(), 1);

    let dir = store_dir(state.path(), &setup);
    wait_for_file(&dir.join("cert.pem")).await;
    for f in ["account.json", "cert.pem", "key.pem"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let account: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("account.json")).unwrap()).unwrap();
    assert_eq!(account["directory"], setup.directory());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn01_from_empty_state_is_answered_on_the_tls_listener() {
    if !pebble::available() {
        return;
    }
    init();
    let up = Echo::start().await;
    let setup = PebbleSetup::new();
    let state = TempDir::new("acme-alpn");
    let (g, _plain) = start_guard(
        &acme_args(&up, &setup, &["--acme-challenge", "tls-alpn-01"]),
        state.path(),
    );
    // HTTP-01 pointed at a dead port: only the TLS listener can answer.
    let ca = setup.start(unused_port(), g.addr.port(), 3600);
    let root = ca.root(setup.dir.path()).await;

    let (status, body) = Client::new(g.addr, &root, "localhost").get("/x?y=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo_json(&body)["uri"], "/x?y=1");
    let log = g.stderr.text();
    assert!(log.contains("answered a tls-alpn-01 validation"), "{log}");
    assert!(!log.contains("answered an http-01 validation"), "{log}");

    // A client that offers acme-tls/1 with no order running gets no certificate at all.
    let cfg = client_config(&root, &[b"acme-tls/1"]);
    let tcp = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await;
    assert!(refused.is_err(), "an acme-tls/1 handshake outside an order must fail");
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_a_failed_tls_alpn01_falls_back_to_http01_and_the_failure_is_logged() {
    if !pebble::available() {
        return;
    }
    init();
    let up = Echo::start().await;
    let setup = PebbleSetup::new();
    let state = TempDir::new("acme-auto");
    let (g, plain) = start_guard(&acme_args(&up, &setup, &[]), state.path());
    // TLS-ALPN-01 validations go to a dead port and fail; HTTP-01 reaches guard.
    let ca = setup.start(plain.port(), unused_port(), 3600);
    let root = ca.root(setup.dir.path()).await;

    let (status, _) = Client::new(g.addr, &root, "localhost").get("/").await;
    assert_eq!(status, 200);
    let log = g.stderr.text();
    // The failure names the domain, the challenge and the CA's problem document.
    assert!(
        log.contains("validation of localhost by tls-alpn-01 failed: CA problem urn:ietf:params:acme:error:"),
        "{log}"
    );
    assert!(log.contains("trying http-01 next"), "{log}");
    assert_eq!(ca.orders(), 2, "one order per challenge type");
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_reuse_the_stored_certificate_and_account_and_replace_an_account_the_ca_forgot() {
    if !pebble::available() {
        return;
    }
    init();
    let up = Echo::start().await;
    let setup = PebbleSetup::new();
    let state = TempDir::new("acme-restart");
    let args = acme_args(&up, &setup, &["--acme-challenge", "http-01"]);
    let (g, plain) = start_guard(&args, state.path());
    let ca = setup.start(plain.port(), unused_port(), 3600);
    let root = ca.root(setup.dir.path()).await;
    let first = serial(&Client::new(g.addr, &root, "localhost")).await;
    let dir = store_dir(state.path(), &setup);
    wait_for_file(&dir.join("cert.pem")).await;
    let tls_addr = g.addr.to_string();
    drop(g);

    // Later guards bind the same ports: pebble was told them at its start.
    let mut again = args.clone();
    again.extend(["--listen".into(), tls_addr, "--http-listen".into(), plain.to_string()]);

    // 1. A valid certificate on disk: no order, the same certificate.
    let (g, _) = start_guard(&again, state.path());
    assert_eq!(serial(&Client::new(g.addr, &root, "localhost")).await, first);
    let log = g.stderr.text();
    assert!(log.contains("using the stored certificate"), "{log}");
    assert!(!log.contains("ordering a certificate"), "{log}");
    assert_eq!(ca.orders(), 1, "pebble saw no new order");
    drop(g);

    // 2. No certificate but an account: a new order with the stored account.
    std::fs::remove_file(dir.join("cert.pem")).unwrap();
    std::fs::remove_file(dir.join("key.pem")).unwrap();
    let (g, _) = start_guard(&again, state.path());
    assert_ne!(serial(&Client::new(g.addr, &root, "localhost")).await, first);
    let log = g.stderr.text();
    assert!(
        log.contains("using the stored ACME account") && !log.contains("created an ACME account"),
        "{log}"
    );
    assert_eq!(ca.orders(), 2);
    assert!(!ca.output().contains("There are now 2 accounts"), "no second account");
    wait_for_file(&dir.join("cert.pem")).await;
    drop(g);

    // 3. pebble restarted (it forgets every account): the stored one is replaced.
    ca.stop();
    let ca = setup.start(plain.port(), unused_port(), 3600);
    let root = ca.root(setup.dir.path()).await;
    std::fs::remove_file(dir.join("cert.pem")).unwrap();
    std::fs::remove_file(dir.join("key.pem")).unwrap();
    let (g, _) = start_guard(&again, state.path());
    let (status, _) = Client::new(g.addr, &root, "localhost").get("/").await;
    assert_eq!(status, 200);
    let log = g.stderr.text();
    assert!(
        log.contains("no longer knows the stored account") && log.contains("created an ACME account"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_are_renewed_and_swapped_while_requests_keep_succeeding() {
    if !pebble::available() {
        return;
    }
    init();
    let up = Echo::start().await;
    let setup = PebbleSetup::new();
    let state = TempDir::new("acme-renew");
    let (g, plain) = start_guard(&acme_args(&up, &setup, &["--acme-challenge", "http-01"]), state.path());
    // 60 s certificates: renewal is due 40 s after issuance.
    let ca = setup.start(plain.port(), unused_port(), 60);
    let root = ca.root(setup.dir.path()).await;
    // Full handshakes only: a resumed session shows the certificate of the session it resumes.
    let mut c = Client::new(g.addr, &root, "localhost");
    let mut cfg = (*c.config).clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    c.config = std::sync::Arc::new(cfg);
    let first = serial(&c).await;

    // One connection kept open across the swap, and a fresh handshake for every other request.
    let mut kept = c.h1().await;
    let started = Instant::now();
    let (mut requests, mut renewed_at) = (0, None);
    loop {
        let tls = c.tls().await;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let now_serial = x509_parser::parse_x509_certificate(leaf.as_ref())
            .unwrap()
            .1
            .raw_serial_as_string();
        let io = hyper_util::rt::TokioIo::new(tls);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let resp = send
            .send_request(get("/fresh"))
            .await
            .expect("a response on a fresh connection");
        assert_eq!(resp.status(), 200, "request {requests} on a fresh connection");
        let resp = kept
            .send_request(get("/kept"))
            .await
            .expect("the kept connection still answers");
        assert_eq!(resp.status(), 200, "request {requests} on the kept connection");
        let _ = text(resp.into_body()).await;
        requests += 1;
        if now_serial != first && renewed_at.is_none() {
            renewed_at = Some(requests);
        }
        if renewed_at.is_some_and(|r| requests >= r + 10) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(75),
            "no renewal within 75s\n{}",
            g.stderr.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() > Duration::from_secs(20),
        "renewed too early: {:?}",
        started.elapsed()
    );
    let log = g.stderr.text();
    assert!(
        log.contains("renewing: a third of the certificate's lifetime remains"),
        "{log}"
    );
    assert_eq!(ca.issued(), 2, "{}", ca.output());
    eprintln!(
        "renewed after {:?}, {requests} requests, none failed",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_down_at_start_is_retried_with_backoff_until_the_certificate_comes() {
    if !pebble::available() {
        return;
    }
    init();
    let up = Echo::start().await;
    let setup = PebbleSetup::new();
    let state = TempDir::new("acme-down");
    let (g, plain) = start_guard(&acme_args(&up, &setup, &["--acme-challenge", "http-01"]), state.path());
    wait_for_log(&g, "cannot reach the ACME directory", 2, Duration::from_secs(15)).await;
    let log = g.stderr.text();
    assert!(
        log.contains(&format!(
            "cannot reach the ACME directory {} (--acme-directory)",
            setup.directory()
        )),
        "{log}"
    );
    assert!(
        log.contains("next attempt in 1s") && log.contains("next attempt in 2s"),
        "backoff grows: {log}"
    );

    let ca = setup.start(plain.port(), unused_port(), 3600);
    let root = ca.root(setup.dir.path()).await;
    // The handshake waits for the certificate, which comes at the next retry.
    let (status, _) = Client::new(g.addr, &root, "localhost").get("/").await;
    assert_eq!(status, 200);
    assert!(g.stderr.text().contains("certificate installed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_self_signed_default_sends_no_hsts() {
    init();
    let up = Echo::start().await;
    let g = Guard::start(&["--upstream", &up.authority(), "--dangerous-no-auth"]);
    let resp = g.client().send(get("/")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("strict-transport-security").is_none());
}

/// One raw HTTP/1.1 exchange on the plain listener; returns the response head.
async fn plain_request(addr: std::net::SocketAddr, method: &str, target: &str, host: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").next().unwrap().to_owned()
}

fn location(head: &str) -> &str {
    head.lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no location in {head}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_listener_redirects_with_308_keeping_method_path_and_query() {
    init();
    let up = Echo::start().await;
    let state = TempDir::new("acme-redirect");
    // No CA needed: the plain listener is up at once, whatever the CA does.
    let args: Vec<String> = [
        "--upstream",
        &up.authority(),
        "--dangerous-no-auth",
        "--domain",
        "localhost",
        "--acme-email",
        "ops@example.com",
        "--acme-directory",
        &format!("https://localhost:{}/dir", unused_port()),
        "--https-port",
        "8443",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (g, plain) = start_guard(&args, state.path());
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let head = plain_request(
            plain,
            method,
            "/api/2.0/mlflow/runs/search?max_results=5&q=a%20b",
            "localhost:80",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 308 Permanent Redirect"), "{method}: {head}");
        assert_eq!(
            location(&head),
            "https://localhost:8443/api/2.0/mlflow/runs/search?max_results=5&q=a%20b",
            "{method}"
        );
    }
    // Another Host is not redirected to itself.
    let head = plain_request(plain, "GET", "/x", "evil.example.net").await;
    assert_eq!(location(&head), "https://localhost:8443/x");
    // An unknown challenge token is a 404, not a redirect.
    let head = plain_request(plain, "GET", "/.well-known/acme-challenge/nope", "localhost").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(up.count(), 0, "nothing reaches the upstream over plain HTTP");
    drop(g);
}

#[test]
fn bad_acme_input_exits_2_with_one_line_naming_the_flag() {
    let base = ["serve", "--upstream", "127.0.0.1:9", "--dangerous-no-auth"];
    let cases: &[(&[&str], &str)] = &[
        (&["--domain", "10.0.0.1", "--acme-email", "ops@example.com"], "--domain"),
        (&["--domain", "[::1]", "--acme-email", "ops@example.com"], "--domain"),
        (
            &["--domain", "bad_name.example.com", "--acme-email", "ops@example.com"],
            "--domain",
        ),
        (
            &["--domain", "mlflow.example.com"],
            "--acme-email: missing: certificates from ACME need a contact address",
        ),
        (
            &["--domain", "mlflow.example.com", "--acme-email", "not-an-email"],
            "--acme-email",
        ),
        (
            &[
                "--domain",
                "mlflow.example.com",
                "--acme-email",
                "ops@example.com",
                "--acme-directory",
                "http://ca/dir",
            ],
            "--acme-directory",
        ),
        (
            &[
                "--domain",
                "mlflow.example.com",
                "--acme-email",
                "ops@example.com",
                "--acme-directory",
                "not a url",
            ],
            "--acme-directory",
        ),
        (
            &["--domain", "localhost", "--acme-email", "ops@example.com"],
            "--domain: \"localhost\" is not a public name; Let's Encrypt issues certificates only for",
        ),
        (
            &[
                "--domain",
                "mlflow.example.com",
                "--acme-email",
                "ops@example.com",
                "--acme-ca-root",
                "/nonexistent/ca.pem",
            ],
            "--acme-ca-root: \"/nonexistent/ca.pem\": no such file",
        ),
    ];
    for (extra, flag) in cases {
        let state = TempDir::new("acme-bad");
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        let sd = state.path().display().to_string();
        args.extend([
            "--state-dir",
            &sd,
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ]);
        let (code, _, stderr) = run_guard(&args, None);
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(first.contains(flag), "{extra:?}: the first line names {flag}: {stderr}");
    }
}
