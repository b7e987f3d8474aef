//! Several upstreams behind one site (issue 17): round robin and least connections, a request
//! retried on another upstream only when no connection could be opened (one that reached an
//! upstream is never sent again), connect failures and health checks taking upstreams out and
//! bringing them back, 502 at once when all are down, the per-upstream metrics, and an
//! `https://` upstream checked against a CA file.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// guard with no authentication in front of `upstreams`, with `extra` flags.
fn guard(upstreams: &[String], extra: &[&str]) -> Guard {
    let mut args: Vec<&str> = vec!["--dangerous-no-auth", "--metrics-listen", "127.0.0.1:0"];
    for u in upstreams {
        args.extend(["--upstream", u.as_str()]);
    }
    args.extend(extra);
    Guard::start(&args)
}

fn post(path: &str, body: &'static str) -> Request<TestBody> {
    Request::post(path)
        .header("host", "localhost")
        .body(common::body(body))
        .unwrap()
}

/// Waits until `series` reads `want` in the metrics.
async fn wait_for_sample(addr: &str, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr).await;
        if sample(&text, series) == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never read {want}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn series(name: &str, upstream: &str) -> String {
    format!("{name}{{site=\"default\",upstream=\"http://{upstream}\"}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_go_round_robin_and_each_upstream_gets_its_own_host() {
    let ups = [Echo::start().await, Echo::start().await, Echo::start().await];
    let names: Vec<String> = ups.iter().map(Echo::authority).collect();
    let g = guard(&names, &["--health-check-interval", "0"]);
    let c = g.client();
    for _ in 0..30 {
        let (status, _) = c.get("/api/2.0/mlflow/experiments/search").await;
        assert_eq!(status, 200);
    }
    // Each worker thread turns its own wheel, so the shares are even to within a request or two.
    for u in &ups {
        assert!((8..=12).contains(&u.count()), "{}: {} of 30", u.authority(), u.count());
        assert_eq!(
            u.last().header("host"),
            Some(u.authority().as_str()),
            "its own authority as Host"
        );
    }
    assert_eq!(ups.iter().map(Echo::count).sum::<usize>(), 30, "each request sent once");
    let m = scrape(&metrics_addr(&g)).await;
    for u in &ups {
        let n = sample(&m, &series("guard_upstream_requests_total", &u.authority()));
        assert_eq!(n, u.count() as f64, "per-upstream request count:\n{m}");
        assert_eq!(sample(&m, &series("guard_upstream_healthy", &u.authority())), 1.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_is_retried_on_another_upstream_and_that_one_left_out() {
    let a = Echo::start().await;
    let b = Echo::start().await;
    let dead = dead_port().to_string();
    let g = guard(
        &[a.authority(), dead.clone(), b.authority()],
        &["--health-check-interval", "0", "--eject-duration", "30s"],
    );
    let c = g.client();
    for i in 0..20 {
        let resp = c.send(post("/api/2.0/mlflow/runs/create", "{\"n\":1}")).await;
        assert_eq!(resp.status(), 200, "request {i}");
        let seen = echo_json(&text(resp.into_body()).await);
        assert_eq!(seen["body_len"], 7, "the body arrived whole");
    }
    assert_eq!(
        a.count() + b.count(),
        20,
        "every POST reached exactly one upstream once"
    );
    let m = scrape(&metrics_addr(&g)).await;
    assert_eq!(
        sample(&m, &series("guard_upstream_requests_total", &dead)),
        1.0,
        "the refusing upstream was tried once, then left out:\n{m}"
    );
    assert_eq!(sample(&m, &series("guard_upstream_healthy", &dead)), 0.0);
    assert_eq!(
        sample(&m, "guard_upstream_errors_total{site=\"default\",kind=\"unreachable\"}"),
        1.0
    );
    assert!(
        g.stderr.text().contains("left out of the rotation for 30s"),
        "{}",
        g.stderr.text()
    );
}

/// An upstream that reads a request head and closes the connection without answering,
/// counting the requests it got.
async fn dropper() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let counter = got.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        counter.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_reached_an_upstream_is_never_sent_to_another() {
    let echo = Echo::start().await;
    let (drop_addr, dropped) = dropper().await;
    let g = guard(
        &[echo.authority(), drop_addr.to_string()],
        &["--health-check-interval", "0"],
    );
    let c = g.client();
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..10 {
        let resp = c.send(post("/api/2.0/mlflow/runs/log-metric", "{\"v\":1}")).await;
        match resp.status().as_u16() {
            200 => ok += 1,
            502 => failed += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(failed > 0, "some requests met the upstream that closes on them");
    assert_eq!(
        echo.count(),
        ok,
        "a request that failed at one upstream did not go on to the other"
    );
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        failed,
        "each failed request reached its upstream once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn all_upstreams_down_is_a_502_at_once() {
    let dead = [dead_port().to_string(), dead_port().to_string()];
    let g = guard(&dead, &["--health-check-interval", "0"]);
    let c = g.client();
    for round in ["both refuse", "both left out"] {
        let started = Instant::now();
        let (status, body) = c.get("/api/2.0/mlflow/experiments/search").await;
        assert_eq!(status, 502, "{round}: {body}");
        assert!(body.contains("TEMPORARILY_UNAVAILABLE"), "{round}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{round}: took {:?}",
            started.elapsed()
        );
    }
    assert!(
        g.stderr.text().contains("all 2 upstreams are down"),
        "{}",
        g.stderr.text()
    );
}

/// An upstream whose `/health` answers with the status in `health`; every other path answers
/// 200 with its own name.
async fn switchable(name: &'static str) -> (SocketAddr, Arc<AtomicU16>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = Arc::new(AtomicU16::new(200));
    let served = Arc::new(AtomicUsize::new(0));
    let (h, s) = (health.clone(), served.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (h, s) = (h.clone(), s.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (h, s) = (h.clone(), s.clone());
                    async move {
                        let status = if req.uri().path() == "/health" {
                            h.load(Ordering::SeqCst)
                        } else {
                            s.fetch_add(1, Ordering::SeqCst);
                            200
                        };
                        Ok::<_, Infallible>(Response::builder().status(status).body(common::body(name)).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, health, served)
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_take_a_failing_upstream_out_and_bring_it_back() {
    let (a, _, _) = switchable("a").await;
    let (b, b_health, b_served) = switchable("b").await;
    let g = guard(
        &[a.to_string(), b.to_string()],
        &[
            "--health-check-interval",
            "100ms",
            "--health-check-rise",
            "2",
            "--health-check-fall",
            "2",
        ],
    );
    let metrics = metrics_addr(&g);
    let healthy_b = series("guard_upstream_healthy", &b.to_string());
    let c = g.client();

    b_health.store(503, Ordering::SeqCst);
    wait_for_sample(&metrics, &healthy_b, 0.0).await;
    let before = b_served.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(
            c.get("/").await,
            (200, "a".to_string()),
            "only the healthy upstream serves"
        );
    }
    assert_eq!(
        b_served.load(Ordering::SeqCst),
        before,
        "nothing went to the upstream that is down"
    );
    assert!(
        g.stderr
            .text()
            .contains("upstream down after 2 failed health checks: GET /health answered 503"),
        "{}",
        g.stderr.text()
    );

    b_health.store(200, Ordering::SeqCst);
    wait_for_sample(&metrics, &healthy_b, 1.0).await;
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let (status, name) = c.get("/").await;
        assert_eq!(status, 200);
        *by_name.entry(name).or_default() += 1;
    }
    assert!(
        by_name.get("b").copied().unwrap_or(0) >= 3,
        "b is back in the rotation: {by_name:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn least_connections_sends_new_requests_past_a_busy_upstream() {
    let a = Echo::start().await;
    let b = Echo::start().await;
    let g = guard(
        &[a.authority(), b.authority()],
        &[
            "--health-check-interval",
            "0",
            "--upstream-balance",
            "least_connections",
        ],
    );
    let c = g.client();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.get("/slow/2000").await })
    };
    // Until the slow request is in flight at one of them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.count() + b.count() == 0 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (busy, free) = if a.count() == 1 { (&a, &b) } else { (&b, &a) };
    for _ in 0..10 {
        assert_eq!(c.get("/api/quick").await.0, 200);
    }
    assert_eq!(
        busy.count(),
        1,
        "nothing more went to the upstream with a request in flight"
    );
    assert_eq!(free.count(), 10);
    assert_eq!(slow.await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_checked_against_the_ca_file() {
    let echo = Echo::start().await;
    // A guard is the TLS upstream: its self-signed certificate names localhost.
    let inner = Guard::start(&["--dangerous-no-auth", "--upstream", &echo.authority()]);
    let https = format!("https://localhost:{}", inner.addr.port());
    let inner_ca = inner.ca().display().to_string();
    let outer = Guard::start(&[
        "--dangerous-no-auth",
        "--upstream",
        &https,
        "--upstream-ca-file",
        &inner_ca,
    ]);
    let (status, body) = outer.client().get("/api/over-tls").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo_json(&body)["uri"], "/api/over-tls");

    // Trusting another CA: the certificate is refused, and nothing reaches the upstream.
    let other_ca = outer.ca().display().to_string();
    let wrong = Guard::start(&[
        "--dangerous-no-auth",
        "--upstream",
        &https,
        "--upstream-ca-file",
        &other_ca,
    ]);
    let before = echo.count();
    let (status, body) = wrong.client().get("/api/over-tls").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("could not be reached securely"), "{body}");
    assert_eq!(echo.count(), before);
    assert!(
        wrong.stderr.text().contains("TLS handshake failed"),
        "{}",
        wrong.stderr.text()
    );
}

#[test]
fn bad_upstream_lists_are_refused_naming_the_entry() {
    let dir = TempDir::new("upstreams-config");
    let cfg = dir.path().join("guard.yaml");
    for (yaml, want) in [
        (
            "upstream: [a:5000, b:5000, a:5000]\nauth: {dangerous_no_auth: true}\n",
            "upstream[2]: http://a:5000 is listed twice",
        ),
        (
            "upstream: []\nauth: {dangerous_no_auth: true}\n",
            "upstream: empty list",
        ),
        (
            "upstream: [a:5000, \"ftp://b:1\"]\nauth: {dangerous_no_auth: true}\n",
            "upstream[1]: \"ftp://b:1\"",
        ),
        (
            "upstream: a:5000\nupstream_ca_file: ca.pem\nauth: {dangerous_no_auth: true}\n",
            "upstream_ca_file: no upstream is https://",
        ),
        (
            "upstream: a:5000\nbalance: {method: random}\nauth: {dangerous_no_auth: true}\n",
            "balance.method: \"random\": expected round_robin or least_connections",
        ),
    ] {
        std::fs::write(&cfg, yaml).unwrap();
        let (code, _, stderr) = run_guard(&["serve", "--config", cfg.to_str().unwrap()], None);
        assert_eq!(code, 2, "{yaml}: {stderr}");
        assert!(stderr.contains(want), "{yaml}: wanted {want:?} in:\n{stderr}");
    }
    // The flag is repeatable, and each value is checked as it is given.
    let (code, _, stderr) = run_guard(
        &[
            "serve",
            "--dangerous-no-auth",
            "--upstream",
            "a:5000",
            "--upstream",
            "b",
        ],
        None,
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--upstream") && stderr.contains("missing port"),
        "{stderr}"
    );
}
