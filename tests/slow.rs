//! Issue 12, point 6, end to end: slow and idle clients. A request body that stops arriving gets
//! 408 and its upstream connection is closed, while a slow but live one goes through whole; an
//! HTTP/2 connection that never sends a request is closed after the header timeout; one client
//! cannot hold more than its share of connections. Raw bytes over TLS against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What a raw upstream connection got before guard closed it, and when it closed.
struct UpstreamConn {
    bytes: Vec<u8>,
    closed_at: Instant,
}

/// An upstream that reads each connection to its end and never answers, reporting what it got:
/// it shows whether guard lets go of an upstream connection whose request body stalled.
async fn silent_upstream() -> (String, mpsc::UnboundedReceiver<UpstreamConn>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let _ = tcp.read_to_end(&mut bytes).await;
                let _ = tx.send(UpstreamConn {
                    bytes,
                    closed_at: Instant::now(),
                });
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_gets_408_and_its_upstream_connection_is_closed() {
    let dir = TempDir::new("slow");
    let users = dir.path().join("users.htpasswd");
    adduser(&users, "alice", ALICE_PASSWORD);
    let (upstream, mut conns) = silent_upstream().await;
    let g = Guard::start(&[
        "--upstream",
        &upstream,
        "--users",
        users.to_str().unwrap(),
        "--body-timeout",
        "2s",
    ]);
    let mut tls = g.client().tls().await;
    let request = head(
        "POST /api/2.0/mlflow-artifacts/artifacts/model.bin HTTP/1.1",
        &["Host: localhost", &auth_line(), "Content-Length: 1000"],
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.write_all(&[b'x'; 100]).await.unwrap();
    tls.flush().await.unwrap();
    let stalled_at = Instant::now();
    // ... and the other 900 bytes never come.
    let (resps, _) = read_responses(&mut tls, 1, Duration::ZERO).await;
    let answered = stalled_at.elapsed();
    assert_eq!(resps.first().map(|r| r.status), Some(408), "{resps:?}");
    assert!(resps[0].text().contains("DEADLINE_EXCEEDED"), "{}", resps[0].text());
    assert!(
        answered >= Duration::from_millis(1900) && answered < Duration::from_secs(5),
        "408 after {answered:?}, the body timeout is 2s"
    );

    let conn = tokio::time::timeout(Duration::from_secs(5), conns.recv())
        .await
        .expect("guard still holds the upstream connection after the 408")
        .unwrap();
    let got = String::from_utf8_lossy(&conn.bytes);
    assert!(
        got.starts_with("POST /api/2.0/mlflow-artifacts/artifacts/model.bin HTTP/1.1\r\n"),
        "{got}"
    );
    assert!(got.ends_with(&"x".repeat(100)), "the upstream got {got:?}");
    assert!(
        conn.closed_at.duration_since(stalled_at) < Duration::from_secs(5),
        "the upstream connection closed {:?} after the stall",
        conn.closed_at.duration_since(stalled_at)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_but_live_body_is_never_cut() {
    let s = Setup::start(&["--body-timeout", "1s"]).await;
    let m = s.up.mark();
    let mut tls = s.client().tls().await;
    let request = head(
        "PUT /api/2.0/mlflow-artifacts/artifacts/slow.bin HTTP/1.1",
        &["Host: localhost", &auth_line(), "Content-Length: 12"],
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    // One byte every 400 ms: 4.8 s in all, far past the 1 s body timeout, never silent that long.
    let started = Instant::now();
    for b in b"slow-payload" {
        tls.write_all(&[*b]).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (resps, _) = read_responses(&mut tls, 1, Duration::ZERO).await;
    assert!(started.elapsed() > Duration::from_secs(4));
    assert_eq!(resps.first().map(|r| r.status), Some(200), "{resps:?}");
    let seen = s.up.exactly_one_since(m, "the slow upload");
    assert_eq!(seen.body_len, 12);
    assert_eq!(seen.body_sha256, sha256_hex(b"slow-payload"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_connection_without_a_request_is_closed_after_the_header_timeout() {
    let s = Setup::start(&["--header-timeout", "2s"]).await;
    let c = s.client().with_alpn(&[b"h2"]);

    // Preface and SETTINGS, then nothing: guard closes it.
    let mut idle = c.tls().await;
    assert_eq!(idle.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    idle.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
    idle.flush().await.unwrap();
    let opened = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut Vec::new())).await;
    let took = opened.elapsed();
    assert!(closed.is_ok(), "an HTTP/2 connection with no request stayed open");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "closed after {took:?}, the header timeout is 2s"
    );
    // A connection that has sent a request is not cut by that timer: after 3 s it still serves.
    let h2_get = |path: &str| {
        http::Request::get(format!("https://localhost{path}"))
            .header("authorization", alice())
            .body(empty())
            .unwrap()
    };
    let mut live = c.h2().await;
    assert_eq!(live.send_request(h2_get("/first")).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(live.send_request(h2_get("/later")).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_goes_silent_after_a_request_loses_its_connection() {
    // Idle after 2 s, guard sends GOAWAY and a PING that this client never answers: a graceful
    // HTTP/2 close waits for that answer, so without a bound the connection would stay for good.
    let s = Setup::start(&["--idle-timeout", "2s", "--header-timeout", "1s"]).await;
    let mut tls = h2_open(&s.client()).await;
    let fields = h2_request(
        "GET",
        "/api/2.0/mlflow/experiments/search",
        &[field("authorization", &alice())],
    );
    tls.write_all(&h2_headers(1, &hpack_block(&fields), true))
        .await
        .unwrap();
    match h2_read(&mut tls, 1).await {
        H2::Response { status: 200, .. } => {}
        other => panic!("the request before the silence: {other:?}"),
    }
    let answered = Instant::now();
    // From here on nothing is read back but the close: no SETTINGS ack, no PING ack.
    let closed = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut Vec::new())).await;
    let took = answered.elapsed();
    assert!(
        closed.is_ok(),
        "a silent HTTP/2 client kept its connection past the idle timeout"
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(7),
        "closed {took:?} after the last response; idle timeout 2s, then 2 x the 1s header timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_hold_more_than_its_connections() {
    let s = Setup::start(&["--max-connections-per-client", "3"]).await;
    let c = s.client();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut h1 = c.h1().await;
        assert_eq!(h1.send_request(authed("/held")).await.unwrap().status(), 200);
        held.push(h1);
    }
    // The fourth is closed before its TLS handshake completes.
    let tcp = tokio::net::TcpStream::connect(s.g.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(c.config.clone());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a fourth connection from one client got a TLS session"
    );
    assert!(
        s.g.stderr
            .wait_for("closing new connections from 127.0.0.1", Duration::from_secs(5)),
        "no warning names the client: {}",
        s.g.stderr.text()
    );

    // One closes: there is room again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tcp = tokio::net::TcpStream::connect(s.g.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        if connector.connect(name, tcp).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The others still serve.
    for h1 in &mut held {
        assert_eq!(h1.send_request(authed("/still")).await.unwrap().status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxy_is_not_limited_per_client() {
    // Behind a load balancer every connection comes from it.
    let s = Setup::start(&["--max-connections-per-client", "1", "--trusted-proxy", "127.0.0.1/32"]).await;
    let c = s.client();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut h1 = c.h1().await;
        assert_eq!(h1.send_request(authed("/via-lb")).await.unwrap().status(), 200);
        held.push(h1);
    }
}
