//! `/metrics` on its own listener, scraped after known traffic: every counter agrees with what
//! the test sent, and no user name is a label value unless turned on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Request;

/// The metrics address guard printed; that line comes after the listening line the fixture
/// waits for, so wait for it too.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_was_sent() {
    let dir = TempDir::new("metrics");
    let users = dir.path().join("users");
    let tokens = dir.path().join("tokens.json");
    adduser(&users, "alice", "pw");
    let up = Echo::start().await;
    let g = Guard::start(&[
        "--upstream",
        &up.authority(),
        "--users",
        users.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
        "--lockout-failures",
        "0",
    ]);
    let addr = metrics_addr(&g);
    assert!(addr.starts_with("127.0.0.1:"));

    let c = g.client();
    let send = |auth: Option<String>, method: &str, body: &'static [u8]| {
        let mut r = Request::builder()
            .method(method)
            .uri("/api/x")
            .header("host", "localhost");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(common::body(body)).unwrap()
    };
    let mut sent_out = 0u64;
    for _ in 0..3 {
        let resp = c.send(send(Some(basic("alice", "pw")), "GET", b"")).await;
        assert_eq!(resp.status(), 200);
        sent_out += text(resp.into_body()).await.len() as u64;
    }
    let resp = c.send(send(Some(basic("alice", "pw")), "POST", b"0123456789")).await;
    assert_eq!(resp.status(), 200);
    sent_out += text(resp.into_body()).await.len() as u64;
    // Refusals count too: their JSON bodies are bytes sent.
    let refused = [
        send(Some(basic("alice", "nope")), "GET", b""),
        send(Some(basic("alice", "nope")), "GET", b""),
        send(None, "GET", b""),
        send(Some("Bearer grd_unknown".into()), "DELETE", b""),
    ];
    for r in refused {
        let resp = c.send(r).await;
        assert_eq!(resp.status(), 401);
        sent_out += text(resp.into_body()).await.len() as u64;
    }

    // Counters are updated when each response body ends; give the last one a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let t = scrape(&addr).await;
        if sample(
            &t,
            "guard_requests_total{site=\"default\",method=\"Read\",status=\"401\"}",
        ) >= 3.0
        {
            break t;
        }
        assert!(Instant::now() < deadline, "counters never caught up:\n{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let eq = |series: &str, want: f64| assert_eq!(sample(&text, series), want, "{series}\n{text}");
    eq(
        "guard_requests_total{site=\"default\",method=\"Read\",status=\"200\"}",
        3.0,
    );
    eq(
        "guard_requests_total{site=\"default\",method=\"Write\",status=\"200\"}",
        1.0,
    );
    eq(
        "guard_requests_total{site=\"default\",method=\"Read\",status=\"401\"}",
        3.0,
    );
    eq(
        "guard_requests_total{site=\"default\",method=\"Write\",status=\"401\"}",
        1.0,
    );
    eq("guard_auth_failures_total{reason=\"bad_password\"}", 2.0);
    eq("guard_auth_failures_total{reason=\"missing\"}", 1.0);
    eq("guard_auth_failures_total{reason=\"unknown_token\"}", 1.0);
    eq("guard_lockouts_total", 0.0);
    // One bcrypt run for alice's right password, two for the wrong ones; the rest from cache.
    eq("guard_auth_cache_misses_total", 3.0);
    eq("guard_auth_cache_hits_total", 3.0);
    eq("guard_request_bytes_total{site=\"default\"}", 10.0);
    eq("guard_response_bytes_total{site=\"default\"}", sent_out as f64);
    eq("guard_upstream_response_seconds_count{site=\"default\"}", 4.0);
    assert_eq!(up.count(), 4, "only authenticated requests were forwarded");
    let expiry = sample(&text, "guard_certificate_expiry_timestamp_seconds{name=\"localhost\"}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 300.0 * 86400.0,
        "the self-signed leaf's expiry: {expiry}"
    );
    assert!(sample(&text, "guard_open_connections") >= 0.0);
    assert!(!text.contains("alice"), "a user name became a label value:\n{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn user_labels_are_opt_in() {
    let up = Echo::start().await;
    let dir = TempDir::new("metrics-users");
    let users = dir.path().join("users");
    adduser(&users, "bob", "pw");
    let g = Guard::start(&[
        "--upstream",
        &up.authority(),
        "--users",
        users.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-user-labels",
    ]);
    let addr = metrics_addr(&g);
    let req = Request::get("/")
        .header("host", "localhost")
        .header("authorization", basic("bob", "pw"))
        .body(empty())
        .unwrap();
    let resp = g.client().send(req).await;
    let _ = text(resp.into_body()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = scrape(&addr).await;
        if sample(&t, "guard_requests_by_user_total{user=\"bob\"}") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no per-user series:\n{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts guard with a metrics listener and a one-second header timeout; returns it, its
/// metrics address and the user that can be served.
async fn with_short_header_timeout(dir: &TempDir) -> (Guard, String, Echo) {
    let up = Echo::start().await;
    let users = dir.path().join("users");
    adduser(&users, "carol", "pw");
    let g = Guard::start(&[
        "--upstream",
        &up.authority(),
        "--users",
        users.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
        "--header-timeout",
        "1s",
    ]);
    let addr = metrics_addr(&g);
    (g, addr, up)
}

/// Reads until the peer closes and returns how long that took (an error counts as closed).
async fn time_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_metrics_connection_is_closed_at_the_header_timeout() {
    let dir = TempDir::new("metrics-silent");
    let (_g, addr, _up) = with_short_header_timeout(&dir).await;
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let took = time_to_close(&mut silent, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");
    eprintln!("a silent metrics connection was closed after {took:?}");
    // A half-sent head is bounded the same way.
    use tokio::io::AsyncWriteExt;
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n").await.unwrap();
    let took = time_to_close(&mut slow, Duration::from_secs(5)).await;
    eprintln!("a half-sent head was closed after {took:?}");
    let _ = scrape(&addr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_metrics_connections_past_the_cap_only_delay_a_scrape() {
    const CAP: usize = 64;
    let dir = TempDir::new("metrics-cap");
    let (g, addr, _up) = with_short_header_timeout(&dir).await;
    // Twice the cap, opened at once: the first 64 hold every slot, the rest wait in the kernel's
    // accept queue and then take the slots as the first ones time out.
    let mut idle = Vec::new();
    for _ in 0..2 * CAP {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let opened = Instant::now();
    // The scrape queues behind them; it is answered once the idle ones have been closed.
    let scraped = tokio::spawn({
        let addr = addr.clone();
        async move {
            let t = scrape(&addr).await;
            (t, Instant::now())
        }
    });
    // Meanwhile the main listener serves as usual.
    let req = Request::get("/api/x")
        .header("host", "localhost")
        .header("authorization", basic("carol", "pw"))
        .body(empty())
        .unwrap();
    let resp = g.client().send(req).await;
    assert_eq!(resp.status(), 200);
    let main_at = opened.elapsed();
    let (t, at) = tokio::time::timeout(Duration::from_secs(10), scraped)
        .await
        .expect("the scrape was never answered")
        .unwrap();
    assert!(t.ends_with("# EOF\n"));
    let waited = at - opened;
    eprintln!("main listener answered after {main_at:?}; the scrape after {waited:?}");
    assert!(
        main_at < Duration::from_secs(1),
        "the main listener was held up: {main_at:?}"
    );
    // Two rounds of one-second timeouts stood before the scrape.
    assert!(
        waited >= Duration::from_millis(1500),
        "the cap did not hold: {waited:?}"
    );
    for mut s in idle {
        time_to_close(&mut s, Duration::from_secs(5)).await;
    }
}
