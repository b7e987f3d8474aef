//! Adversarial end-to-end tests: request smuggling, authentication bypass attempts, header and
//! request-line limits, a flood of idle connections, clients that never read, and old TLS
//! versions, all against the real binary with raw bytes over TLS (and plain TCP where it
//! matters). Every case checks both what the client got and, through a tap in front of a
//! recording upstream that counts every byte guard sends it, that nothing reached the upstream
//! that should not have.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_is_one_chunked_request_and_smuggles_nothing() {
    let s = Setup::start(&[]).await;
    let c = s.client();
    let auth = auth_line();
    // CL.TE: the length covers the smuggled request, the chunked body ends before it.
    let rest = format!("0\r\n\r\n{SMUGGLED}");
    let cl_te = format!(
        "{}{rest}",
        head(
            "POST /api/clte HTTP/1.1",
            &[
                "Host: localhost",
                &auth,
                &format!("Content-Length: {}", rest.len()),
                "Transfer-Encoding: chunked"
            ]
        )
    );
    // TE.CL: the chunked body carries the smuggled request, the length stops before it.
    let rest = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let te_cl = format!(
        "{}{rest}",
        head(
            "POST /api/tecl HTTP/1.1",
            &[
                "Host: localhost",
                &auth,
                "Transfer-Encoding: chunked",
                "Content-Length: 4"
            ]
        )
    );
    for (bytes, uri, body_len, why) in [
        (&cl_te, "/api/clte", 0, "Content-Length then Transfer-Encoding"),
        (
            &te_cl,
            "/api/tecl",
            SMUGGLED.len() as u64,
            "Transfer-Encoding then Content-Length",
        ),
    ] {
        let m = s.up.mark();
        let (resps, _) = send_raw(&c, bytes.as_bytes(), 1, LINGER).await;
        assert_eq!(resps.len(), 1, "{why}: one request, one response: {resps:?}");
        assert!(matches!(resps[0].status, 200 | 400), "{why}: {resps:?}");
        if resps[0].status == 200 {
            let seen = s.up.exactly_one_since(m, why);
            assert_normal_forward(&seen, &s.up, uri, why);
            assert_eq!(seen.body_len, body_len, "{why}: the chunked framing decides the body");
            assert!(
                seen.header("content-length").is_none_or(|v| v == body_len.to_string()),
                "{why}: the client's Content-Length was forwarded: {seen:?}"
            );
        } else {
            s.up.assert_nothing_since(m, why);
        }
    }
    // Without credentials the outer request is refused and the inner one goes nowhere.
    let rest = format!("0\r\n\r\n{SMUGGLED}");
    let anon = format!(
        "{}{rest}",
        head(
            "POST /api/clte-anon HTTP/1.1",
            &[
                "Host: localhost",
                &format!("Content-Length: {}", rest.len()),
                "Transfer-Encoding: chunked"
            ]
        )
    );
    let m = s.up.mark();
    let (resps, _) = send_raw(&c, anon.as_bytes(), 1, LINGER).await;
    assert!(
        !resps.is_empty() && resps.iter().all(|r| matches!(r.status, 400 | 401)),
        "{resps:?}"
    );
    s.up.assert_nothing_since(m, "unauthenticated CL+TE");
    assert_never_smuggled(&s.up, "CL+TE");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_different_content_lengths_are_refused_with_400() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    let body = format!("hello{SMUGGLED}");
    let long = format!("Content-Length: {}", body.len());
    for (lengths, why) in [
        (vec!["Content-Length: 5", long.as_str()], "two headers"),
        (vec![long.as_str(), "Content-Length: 5"], "two headers, longer first"),
        (vec!["Content-Length: 5, 46"], "a list of two values"),
        (vec!["Content-Length: +5"], "a signed length"),
        (vec!["Content-Length: -1"], "a negative length"),
        (vec!["Content-Length: 0x5"], "a hex length"),
        (vec!["Content-Length: 99999999999999999999999"], "a length past u64"),
    ] {
        let mut headers = vec!["Host: localhost", auth.as_str()];
        headers.extend(lengths);
        let req = format!("{}{body}", head("POST /api/cl HTTP/1.1", &headers));
        s.not_forwarded(req.as_bytes(), &[400], why).await;
    }
    // Identical duplicates are one length (RFC 9110 §8.6 allows accepting them): one request.
    let req = format!(
        "{}hello{SMUGGLED}",
        head(
            "POST /api/same HTTP/1.1",
            &["Host: localhost", &auth, "Content-Length: 5", "Content-Length: 5"]
        )
    );
    let m = s.up.mark();
    let (resps, _) = send_raw(&s.client(), req.as_bytes(), 2, LINGER).await;
    assert_eq!(resps.first().map(|r| r.status), Some(200), "{resps:?}");
    assert_eq!(s.up.exactly_one_since(m, "identical lengths").body_len, 5);
    // The bytes after the body are a second, unauthenticated request: refused, never forwarded.
    assert!(resps.iter().skip(1).all(|r| r.status == 401), "{resps:?}");
    assert_never_smuggled(&s.up, "Content-Length");
}

#[tokio::test(flavor = "multi_thread")]
async fn obs_fold_header_lines_are_refused_with_400() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    let b64 = alice().trim_start_matches("Basic ").to_string();
    for (req, why) in [
        (
            head(
                "GET /api/fold HTTP/1.1",
                &["Host: localhost", &auth, "X-Folded: a", " b"],
            ),
            "a folded value",
        ),
        (
            head(
                "GET /api/fold HTTP/1.1",
                &["Host: localhost", &auth, "X-Folded: a", "\tb"],
            ),
            "a tab-folded value",
        ),
        (
            format!(
                "{}0\r\n\r\n{SMUGGLED}",
                head(
                    "POST /api/fold HTTP/1.1",
                    &["Host: localhost", &auth, "Transfer-Encoding:", " chunked"]
                )
            ),
            "a folded Transfer-Encoding",
        ),
        (
            head(
                "GET /api/fold HTTP/1.1",
                &["Host: localhost", "Authorization: Basic", &format!(" {b64}")],
            ),
            "a folded credential",
        ),
        (
            head("GET /api/fold HTTP/1.1", &[" Host: localhost", &auth]),
            "whitespace before the first header",
        ),
    ] {
        s.not_forwarded(req.as_bytes(), &[400], why).await;
    }
    assert_never_smuggled(&s.up, "obs-fold");
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_lf_line_endings_are_one_request_or_refused() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    let cases = [
        (format!("GET /api/lf HTTP/1.1\nHost: localhost\n{auth}\n\n"), "/api/lf", "LF everywhere"),
        (format!("GET /api/mixed HTTP/1.1\r\nHost: localhost\nX-A: 1\r\n{auth}\r\n\r\n"), "/api/mixed", "LF and CRLF mixed"),
        (
            format!("GET /api/lf2 HTTP/1.1\nHost: localhost\n{auth}\n\nGET /smuggled HTTP/1.1\nHost: localhost\n\n"),
            "/api/lf2",
            "LF with a pipelined unauthenticated request",
        ),
        (
            format!("POST /api/lfchunk HTTP/1.1\r\nHost: localhost\r\n{auth}\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{SMUGGLED}"),
            "/api/lfchunk",
            "LF in chunked framing",
        ),
    ];
    for (req, uri, why) in cases {
        let m = s.up.mark();
        let (resps, _) = send_raw(&s.client(), req.as_bytes(), 1, LINGER).await;
        let first = resps.first().map_or(0, |r| r.status);
        assert!(matches!(first, 200 | 400 | 0), "{why}: {resps:?}");
        if first == 200 {
            let seen = s.up.exactly_one_since(m, why);
            assert_normal_forward(&seen, &s.up, uri, why);
        } else {
            assert!(
                s.up.since(m).is_empty(),
                "{why}: refused yet forwarded: {:?}",
                s.up.since(m)
            );
        }
        // A second response can only be guard refusing the unauthenticated second request.
        assert!(
            resps.iter().skip(1).all(|r| r.status == 401 || r.status == 400),
            "{why}: {resps:?}"
        );
    }
    // A bare CR is never a line ending.
    let req = format!("GET /api/cr HTTP/1.1\r\nHost: localhost\rGET /smuggled HTTP/1.1\r\n{auth}\r\n\r\n");
    s.not_forwarded(req.as_bytes(), &[400], "bare CR").await;
    assert_never_smuggled(&s.up, "bare LF");
}

#[tokio::test(flavor = "multi_thread")]
async fn chunk_size_overflow_is_a_400_and_never_a_second_request() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    for (chunks, why) in [
        ("ffffffffffffffffff\r\n".to_string(), "18 hex digits"),
        ("10000000000000000\r\n".to_string(), "2^64"),
        (
            format!("5\r\nhello\r\nfffffffffffffffffffff\r\n{SMUGGLED}"),
            "overflow after a good chunk",
        ),
        ("-1\r\n".to_string(), "a negative size"),
        ("0x5\r\nhello\r\n0\r\n\r\n".to_string(), "a 0x prefix"),
    ] {
        let req = format!(
            "{}{chunks}{SMUGGLED}",
            head(
                "POST /api/overflow HTTP/1.1",
                &["Host: localhost", &auth, "Transfer-Encoding: chunked"]
            )
        );
        let m = s.up.mark();
        let (resps, _) = send_raw(&s.client(), req.as_bytes(), 1, LINGER).await;
        assert_eq!(resps.len(), 1, "{why}: {resps:?}");
        assert_eq!(
            resps[0].status, 400,
            "{why}: a malformed body is the client's fault: {resps:?}"
        );
        assert!(
            s.up.since(m).is_empty(),
            "{why}: the upstream completed {:?}",
            s.up.since(m)
        );
    }
    assert_never_smuggled(&s.up, "chunk overflow");
    // The upstream connections those left half-written are not reused: the next request is clean.
    let m = s.up.mark();
    let resp = s.client().send(authed("/api/after")).await;
    assert_eq!(resp.status(), 200);
    assert_normal_forward(&s.up.exactly_one_since(m, "after"), &s.up, "/api/after", "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_encoding_not_ending_in_chunked_is_refused_with_400() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    let body = format!("5\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
    for (line, te, why) in [
        (
            "POST /api/te HTTP/1.1",
            vec!["Transfer-Encoding: chunked, identity"],
            "chunked, identity",
        ),
        ("POST /api/te HTTP/1.1", vec!["Transfer-Encoding: identity"], "identity"),
        ("POST /api/te HTTP/1.1", vec!["Transfer-Encoding: gzip"], "gzip alone"),
        (
            "POST /api/te HTTP/1.1",
            vec!["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
            "two headers",
        ),
        (
            "POST /api/te HTTP/1.1",
            vec!["Transfer-Encoding: xchunked"],
            "a lookalike",
        ),
        (
            "POST /api/te HTTP/1.1",
            vec!["Transfer-Encoding : chunked"],
            "space before the colon",
        ),
        ("POST /api/te HTTP/1.0", vec!["Transfer-Encoding: chunked"], "HTTP/1.0"),
    ] {
        let mut headers = vec!["Host: localhost", auth.as_str()];
        headers.extend(te);
        let req = format!("{}{body}", head(line, &headers));
        s.not_forwarded(req.as_bytes(), &[400], why).await;
    }
    assert_never_smuggled(&s.up, "Transfer-Encoding");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_inside_a_body_is_forwarded_as_body_bytes_never_as_a_request() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    let by_length = format!(
        "{}{SMUGGLED}",
        head(
            "POST /api/cl-body HTTP/1.1",
            &["Host: localhost", &auth, &format!("Content-Length: {}", SMUGGLED.len())]
        )
    );
    let inner = format!("0\r\n\r\n{SMUGGLED}");
    let chunked = format!(
        "{}{:x}\r\n{inner}\r\n0\r\n\r\n",
        head(
            "POST /api/chunked-body HTTP/1.1",
            &["Host: localhost", &auth, "Transfer-Encoding: chunked"]
        ),
        inner.len()
    );
    for (req, uri, body, why) in [
        (by_length, "/api/cl-body", SMUGGLED, "by length"),
        (chunked, "/api/chunked-body", inner.as_str(), "chunked"),
    ] {
        let seen = s.forwarded_as_alice(req.as_bytes(), uri, why).await;
        assert_eq!(seen.body_len, body.len() as u64, "{why}");
        assert_eq!(
            seen.body_sha256,
            sha256_hex(body.as_bytes()),
            "{why}: the body changed on the way"
        );
    }
    assert_never_smuggled(&s.up, "body");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_pipelined_request_is_authenticated_on_its_own() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    for (first, why) in [
        (
            head(
                "GET /api/first HTTP/1.1",
                &["Host: localhost", &auth, "Content-Length: 0"],
            ),
            "GET with Content-Length: 0",
        ),
        (
            head("GET /api/first HTTP/1.1", &["Host: localhost", &auth]),
            "GET without a length",
        ),
    ] {
        let m = s.up.mark();
        let req = format!("{first}{SMUGGLED}");
        let (resps, _) = send_raw(&s.client(), req.as_bytes(), 2, LINGER).await;
        let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![200, 401], "{why}: {resps:?}");
        assert_normal_forward(&s.up.exactly_one_since(m, why), &s.up, "/api/first", why);
    }
    // Two authenticated requests pipelined are two requests, in order.
    let m = s.up.mark();
    let two = format!(
        "{}{}",
        head("GET /api/one HTTP/1.1", &["Host: localhost", &auth]),
        head("GET /api/two HTTP/1.1", &["Host: localhost", &auth])
    );
    let (resps, _) = send_raw(&s.client(), two.as_bytes(), 2, LINGER).await;
    assert_eq!(resps.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200, 200]);
    let uris: Vec<String> = s.up.since(m).into_iter().map(|x| x.uri).collect();
    assert_eq!(uris, vec!["/api/one", "/api/two"]);
    assert_never_smuggled(&s.up, "pipelining");
}

// ================================================================ authentication bypass

#[tokio::test(flavor = "multi_thread")]
async fn path_tricks_without_credentials_get_401_and_nothing_reaches_upstream() {
    let s = Setup::start(&[]).await;
    for target in [
        "//api/x",
        "/./api/x",
        "/%2e%2e/api/x",
        "/%2E%2E/api/x",
        "/api%2Fx",
        "/%5Fguard/health",
        "/%5fguard/health",
        "/_guard%2Fhealth",
        "/_guard%2F..%2Fapi/2.0/mlflow/experiments/search",
        "/_GUARD/health",
        "/_guard",
        "/_guardx/health",
        "/\\_guard/health",
        "http://other/api/x",
        "http://alice:correct%20horse@localhost/api/x",
        "https://localhost/api/2.0/mlflow/experiments/search",
    ] {
        let req = head(&format!("GET {target} HTTP/1.1"), &["Host: localhost"]);
        let status = s.not_forwarded(req.as_bytes(), &[400, 401, 404], target).await;
        if status != 400 && target != "/_guard" {
            assert_eq!(
                status, 401,
                "{target}: only guard's own prefix may answer without credentials"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_under_the_reserved_prefix_are_answered_by_guard_and_never_forwarded() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    for (target, want) in [
        ("/_guard/health", 200),
        ("/_guard/../api/2.0/mlflow/experiments/search", 404),
        ("/_guard/health/../../api/x", 404),
        ("/_guard/./health/../../api/x", 404),
        ("/_guard/%2e%2e/api/x", 404),
        ("/_guard//api/x", 404),
        ("/_guard/health?next=/../api/x", 200),
        ("http://other/_guard/health", 200),
        ("http://other/_guard/../api/x", 404),
    ] {
        for creds in [None, Some(auth.as_str())] {
            let mut headers = vec!["Host: localhost"];
            headers.extend(creds);
            let req = head(&format!("GET {target} HTTP/1.1"), &headers);
            let why = format!("{target} (credentials: {})", creds.is_some());
            s.not_forwarded(req.as_bytes(), &[want], &why).await;
        }
    }
    // Over HTTP/2 too.
    for (path, want) in [("/_guard/health", 200), ("/_guard/../api/x", 404)] {
        let m = s.up.mark();
        let out = h2_exchange(&s.client(), &h2_request("GET", path, &[]), None).await;
        assert!(
            matches!(&out, H2::Response { status, .. } if *status == want),
            "{path}: {out:?}"
        );
        s.up.assert_nothing_since(m, path);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn path_tricks_with_credentials_are_forwarded_byte_for_byte() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    for (target, uri) in [
        ("//api/x", "//api/x"),
        ("/./api/x", "/./api/x"),
        ("/%2e%2e/api/x", "/%2e%2e/api/x"),
        ("/api%2Fx", "/api%2Fx"),
        ("/%5Fguard/health", "/%5Fguard/health"),
        ("/_guard%2F..%2Fapi", "/_guard%2F..%2Fapi"),
        ("http://other/api/x?a=1", "/api/x?a=1"),
    ] {
        let req = head(&format!("GET {target} HTTP/1.1"), &["Host: localhost", &auth]);
        s.forwarded_as_alice(req.as_bytes(), uri, target).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn options_star_and_connect_are_refused_and_never_forwarded() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    for (line, anon, authed, why) in [
        ("OPTIONS * HTTP/1.1", &[400, 401][..], &[400][..], "OPTIONS *"),
        ("CONNECT localhost:443 HTTP/1.1", &[400, 401][..], &[400][..], "CONNECT"),
        (
            "CONNECT 127.0.0.1:22 HTTP/1.1",
            &[400, 401][..],
            &[400][..],
            "CONNECT to another port",
        ),
        (
            "GET api/x HTTP/1.1",
            &[400, 401][..],
            &[400][..],
            "a target without a slash",
        ),
    ] {
        let req = head(line, &["Host: localhost"]);
        s.not_forwarded(req.as_bytes(), anon, &format!("{why} without credentials"))
            .await;
        let req = head(line, &["Host: localhost", &auth]);
        s.not_forwarded(req.as_bytes(), authed, &format!("{why} with credentials"))
            .await;
    }
    // A CONNECT that was refused does not turn the connection into a tunnel.
    let req = format!(
        "{}{SMUGGLED}",
        head("CONNECT localhost:443 HTTP/1.1", &["Host: localhost", &auth])
    );
    let m = s.up.mark();
    let (resps, _) = send_raw(&s.client(), req.as_bytes(), 2, LINGER).await;
    assert!(resps.iter().all(|r| r.status >= 400), "{resps:?}");
    s.up.assert_nothing_since(m, "bytes after a refused CONNECT");
    for (method, path) in [("OPTIONS", "*"), ("CONNECT", "")] {
        let mut fields = vec![field(":method", method), field(":authority", "localhost:443")];
        if !path.is_empty() {
            fields.extend([field(":scheme", "https"), field(":path", path)]);
        }
        fields.push(field("authorization", &alice()));
        let m = s.up.mark();
        let out = h2_exchange(&s.client(), &fields, None).await;
        assert!(out.is_refusal(), "HTTP/2 {method}: {out:?}");
        s.up.assert_nothing_since(m, method);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_disagrees_with_sni_still_needs_credentials() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    for host in [
        "evil.example.com",
        "127.0.0.1",
        "localhost.evil.example.com",
        "[::1]:443",
        "",
    ] {
        let host_line = format!("Host: {host}");
        s.not_forwarded(head("GET /api/x HTTP/1.1", &[&host_line]).as_bytes(), &[400, 401], host)
            .await;
        let req = head("GET /api/x HTTP/1.1", &[&host_line, &auth]);
        let seen = s.forwarded_as_alice(req.as_bytes(), "/api/x", host).await;
        if !host.is_empty() {
            assert_eq!(seen.all("x-forwarded-host"), vec![host], "{host}");
        }
    }
    // Two Host headers, and none at all.
    s.not_forwarded(
        head("GET /api/x HTTP/1.1", &["Host: localhost", "Host: evil"]).as_bytes(),
        &[400, 401],
        "two",
    )
    .await;
    s.not_forwarded(head("GET /api/x HTTP/1.1", &[]).as_bytes(), &[400, 401], "no Host")
        .await;
    // HTTP/2 :authority, and a host header beside it that disagrees.
    for extra in [vec![], vec![field("host", "other.example.com")]] {
        let mut fields = h2_request("GET", "/api/x", &extra);
        fields[2] = field(":authority", "evil.example.com");
        let m = s.up.mark();
        let out = h2_exchange(&s.client(), &fields, None).await;
        assert!(
            matches!(&out, H2::Response { status: 401, body } if body.contains("UNAUTHENTICATED")),
            "{out:?}"
        );
        s.up.assert_nothing_since(m, ":authority");
        fields.push(field("authorization", &alice()));
        let out = h2_exchange(&s.client(), &fields, None).await;
        assert!(matches!(&out, H2::Response { status: 200, .. }), "{out:?}");
        assert_normal_forward(&s.up.exactly_one_since(m, ":authority"), &s.up, "/api/x", ":authority");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_pseudo_header_tricks_are_refused_and_never_forwarded() {
    let s = Setup::start(&[]).await;
    let c = s.client();
    let get = |path: &str| h2_request("GET", path, &[]);
    let mut dup_health_first = get("/_guard/health");
    dup_health_first.push(field(":path", "/api/x"));
    let mut dup_api_first = get("/api/x");
    dup_api_first.insert(4, field(":path", "/_guard/health"));
    let mut pseudo_after_regular = vec![field("x-a", "1")];
    pseudo_after_regular.extend(get("/api/x"));
    let mut no_path = get("/api/x");
    no_path.remove(3);
    let mut unknown_pseudo = get("/api/x");
    unknown_pseudo.push(field(":user", "alice"));
    let mut http_scheme = get("/api/x");
    http_scheme[1] = field(":scheme", "http");
    let cases: Vec<(Vec<Field>, &str)> = vec![
        (get("api/x"), ":path without a leading slash"),
        (get("_guard/health"), ":path _guard/health without a slash"),
        (get("*"), ":path * on GET"),
        (get(""), "empty :path"),
        (get("/_guard%2F..%2Fapi/x"), "encoded reserved prefix"),
        (get("/%5Fguard/health"), "encoded health lookalike"),
        (get("//api/x"), "double slash"),
        (dup_health_first, "duplicate :path, health first"),
        (dup_api_first, "duplicate :path, api first"),
        (pseudo_after_regular, "pseudo-header after a regular one"),
        (no_path, "no :path"),
        (unknown_pseudo, "an unknown pseudo-header"),
        (http_scheme, ":scheme http"),
        (
            h2_request("GET", "/api/x", &[field("X-Forwarded-User", "alice")]),
            "an uppercase header name",
        ),
        (
            h2_request("GET", "/api/x", &[field("x-forwarded-user", "alice")]),
            "x-forwarded-user as identity",
        ),
        (
            h2_request("GET", "/api/x", &[field(":status", "200")]),
            ":status in a request",
        ),
    ];
    for (fields, why) in cases {
        let m = s.up.mark();
        let out = h2_exchange(&c, &fields, None).await;
        assert!(out.is_refusal(), "{why}: {out:?}");
        s.up.assert_nothing_since(m, why);
    }
    // The plain request gets guard's 401: the refusals above came from the tricks, not the client.
    let out = h2_exchange(&c, &get("/api/x"), None).await;
    assert!(
        matches!(&out, H2::Response { status: 401, body } if body.contains("UNAUTHENTICATED")),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_header_injection_never_reaches_the_http1_upstream() {
    let s = Setup::start(&[]).await;
    let c = s.client();
    let a = alice();
    let with = |extra: Vec<Field>| {
        let mut f = h2_request("GET", "/api/x", &[field("authorization", &a)]);
        f.extend(extra);
        f
    };
    let raw = |n: &[u8], v: &[u8]| (n.to_vec(), v.to_vec());
    let mut bad_path = h2_request("GET", "/api/x HTTP/1.1\r\nHost: localhost\r\n\r\nGET /smuggled", &[]);
    bad_path.push(field("authorization", &a));
    let mut bad_method = h2_request("GET /smuggled HTTP/1.1\r\nX:", "/api/x", &[]);
    bad_method.push(field("authorization", &a));
    let mut space_path = h2_request("GET", "/api/x?q= a", &[]);
    space_path.push(field("authorization", &a));
    let cases: Vec<(Vec<Field>, &str)> = vec![
        (
            with(vec![raw(b"x-test", b"a\r\nX-Forwarded-User: admin")]),
            "CRLF in a value",
        ),
        (
            with(vec![raw(b"x-test", format!("a\r\n\r\n{SMUGGLED}").as_bytes())]),
            "a request in a value",
        ),
        (with(vec![raw(b"x-test", b"a\nx-injected: 1")]), "LF in a value"),
        (with(vec![raw(b"x-test", b"a\rx-injected: 1")]), "CR in a value"),
        (with(vec![raw(b"x-test", b"a\0b")]), "NUL in a value"),
        (with(vec![raw(b"x test", b"1")]), "a space in a name"),
        (with(vec![raw(b"x-a:b", b"1")]), "a colon in a name"),
        (with(vec![raw(b"x-a\r\nx-b", b"1")]), "CRLF in a name"),
        (with(vec![field("transfer-encoding", "chunked")]), "transfer-encoding"),
        (with(vec![field("connection", "keep-alive")]), "connection"),
        (with(vec![field("keep-alive", "timeout=5")]), "keep-alive"),
        (with(vec![field("upgrade", "websocket")]), "upgrade"),
        (with(vec![field("te", "gzip")]), "te other than trailers"),
        (with(vec![field("Authorization", &a)]), "an uppercase credential header"),
        (bad_path, ":path carrying a request"),
        (bad_method, ":method carrying a request line"),
        (space_path, "a space in :path"),
    ];
    for (fields, why) in cases {
        let m = s.up.mark();
        let out = h2_exchange(&c, &fields, None).await;
        assert!(out.is_refusal(), "{why}: {out:?}");
        s.up.assert_nothing_since(m, why);
    }
    // A body longer than the declared length may start upstream but never completes there.
    let m = s.up.mark();
    let mut fields = h2_request(
        "POST",
        "/api/x",
        &[field("authorization", &a), field("content-length", "5")],
    );
    fields.push(field("content-type", "text/plain"));
    let out = h2_exchange(&c, &fields, Some(format!("hello{SMUGGLED}").as_bytes())).await;
    assert!(out.is_refusal(), "content-length shorter than the data: {out:?}");
    assert!(
        s.up.since(m).is_empty(),
        "a body that broke its length completed upstream: {:?}",
        s.up.since(m)
    );
    assert_never_smuggled(&s.up, "HTTP/2");
    // A well-formed request on the same guard works, so the refusals above were not a broken client.
    let out = h2_exchange(&c, &with(vec![]), None).await;
    assert!(matches!(&out, H2::Response { status: 200, .. }), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_sent_forwarded_headers_are_dropped_or_overwritten() {
    let s = Setup::start(&["--trusted-proxy", "10.0.0.0/8"]).await;
    let spoof = [
        "X-Forwarded-User: admin",
        "x-FORWARDED-user: root",
        "X-Forwarded-For: 1.2.3.4",
        "X-Forwarded-For: 10.0.0.1",
        "X-Forwarded-Host: evil.example.com",
        "X-Forwarded-Proto: http",
        "Forwarded: for=1.2.3.4;proto=http;host=evil",
    ];
    let mut headers = vec!["Host: localhost"];
    headers.extend(spoof);
    s.not_forwarded(
        head("GET /api/x HTTP/1.1", &headers).as_bytes(),
        &[401],
        "X-Forwarded-User alone is no identity",
    )
    .await;
    let auth = auth_line();
    headers.push(&auth);
    let seen = s
        .forwarded_as_alice(head("GET /api/x HTTP/1.1", &headers).as_bytes(), "/api/x", "spoofed")
        .await;
    assert_eq!(seen.all("x-forwarded-host"), vec!["localhost"]);
    assert_eq!(seen.all("x-forwarded-proto"), vec!["https"]);
    assert!(seen.header("forwarded").is_none(), "{seen:?}");
    // As user `colon`, the client's claim to be alice is replaced.
    let m = s.up.mark();
    let req = Request::get("/api/x")
        .header("host", "localhost")
        .header("authorization", basic("colon", COLON_PASSWORD))
        .header("x-forwarded-user", "alice")
        .body(empty())
        .unwrap();
    assert_eq!(s.client().send(req).await.status(), 200);
    assert_eq!(
        s.up.exactly_one_since(m, "colon").all("x-forwarded-user"),
        vec!["colon"]
    );
    // HTTP/2.
    let extra = [field("x-forwarded-user", "admin"), field("x-forwarded-for", "1.2.3.4")];
    let m = s.up.mark();
    let out = h2_exchange(&s.client(), &h2_request("GET", "/api/x", &extra), None).await;
    assert!(matches!(out, H2::Response { status: 401, .. }), "{out:?}");
    s.up.assert_nothing_since(m, "HTTP/2 X-Forwarded-User alone");
    let mut fields = h2_request("GET", "/api/x", &extra);
    fields.push(field("authorization", &alice()));
    let out = h2_exchange(&s.client(), &fields, None).await;
    assert!(matches!(out, H2::Response { status: 200, .. }), "{out:?}");
    assert_normal_forward(&s.up.exactly_one_since(m, "HTTP/2"), &s.up, "/api/x", "HTTP/2");
}

#[tokio::test(flavor = "multi_thread")]
async fn underscore_spellings_of_forwarded_headers_never_reach_the_upstream() {
    // WSGI and CGI servers map `X_Forwarded_User` and `X-Forwarded-User` to the same
    // HTTP_X_FORWARDED_USER, so a client's underscore copy can shadow the user guard vouches for
    // (nginx drops underscore names by default for this reason).
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    let req = head(
        "GET /api/x HTTP/1.1",
        &[
            "Host: localhost",
            &auth,
            "X_Forwarded_User: admin",
            "x_forwarded-for: 1.2.3.4",
            "X-Forwarded_Host: evil",
        ],
    );
    let seen = s.forwarded_as_alice(req.as_bytes(), "/api/x", "underscores").await;
    let shadows: Vec<&(String, String)> = seen
        .headers
        .iter()
        .filter(|(k, _)| k.contains('_') && k.replace('_', "-").starts_with("x-forwarded-"))
        .collect();
    assert!(
        shadows.is_empty(),
        "client headers that shadow guard's reached the upstream: {shadows:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_credentials_get_401_and_nothing_reaches_upstream() {
    let s = Setup::start(&[]).await;
    let good = alice();
    let b64 = good.trim_start_matches("Basic ").to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["Authorization: Basic !!notbase64".into()], "bad base64"),
        (
            vec![format!("Authorization: Basic {}", b64.trim_end_matches('='))],
            "base64 missing its padding",
        ),
        (
            vec![format!("Authorization: Basic {}", &b64[..b64.len() - 4])],
            "truncated base64",
        ),
        (
            vec![format!(
                "Authorization: {}",
                basic("url", URL_PASSWORD).replace('+', "-").replace('/', "_")
            )],
            "url-safe alphabet",
        ),
        (
            vec![format!("Authorization: Basic {} {}", &b64[..4], &b64[4..])],
            "a space inside base64",
        ),
        (vec![basic_line(b"alice")], "no colon"),
        (vec![basic_line(b":correct horse")], "an empty user"),
        (vec![basic_line(b":")], "empty user and password"),
        (vec![basic_line(b"alice:")], "an empty password"),
        (vec![basic_line(b"alice\0:correct horse")], "NUL in the user"),
        (vec![basic_line(b"\xffalice:correct horse")], "a user that is not UTF-8"),
        (vec![basic_line(b"alice:correct horse\0")], "NUL after the password"),
        (vec![basic_line(b"alice:correct horse\n")], "newline after the password"),
        (vec![basic_line(b"alice :correct horse")], "a space after the user"),
        (vec![basic_line(b"ALICE:correct horse")], "the user in capitals"),
        (vec!["Authorization: Basic".into()], "no credentials after the scheme"),
        (vec![format!("Authorization: Basic{b64}")], "no space after the scheme"),
        (vec![format!("Authorization: Digest {b64}")], "another scheme"),
        (vec!["Authorization: Bearer ".into()], "an empty token"),
        (
            vec![format!("Authorization: {good}"), "Authorization: Basic !!".into()],
            "a good and a bad header",
        ),
        (
            vec!["Authorization: Basic !!".into(), format!("Authorization: {good}")],
            "a bad and a good header",
        ),
        (vec![format!("Authorization: {good}, Basic !!")], "a list"),
        (vec![format!("Proxy-Authorization: {good}")], "only Proxy-Authorization"),
        (
            vec!["X-Forwarded-User: alice".into(), "X-Remote-User: alice".into()],
            "identity headers",
        ),
        (vec![format!("Cookie: authorization={b64}")], "a cookie"),
    ];
    for (lines, why) in cases {
        let mut headers = vec!["Host: localhost"];
        headers.extend(lines.iter().map(String::as_str));
        let req = head("GET /api/2.0/mlflow/experiments/search HTTP/1.1", &headers);
        let m = s.up.mark();
        let (resps, _) = send_raw(&s.client(), req.as_bytes(), 1, Duration::ZERO).await;
        let resp = resps.first().unwrap_or_else(|| panic!("{why}: no response"));
        assert_eq!(resp.status, 401, "{why}: {resp:?}");
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Basic realm=\"MLflow\", charset=\"UTF-8\""),
            "{why}"
        );
        assert_eq!(echo_json(&resp.text())["error_code"], "UNAUTHENTICATED", "{why}");
        s.up.assert_nothing_since(m, why);
    }
    // Bytes that are not even a header value.
    let mut req = b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic \xff\xfe\r\n\r\n".to_vec();
    s.not_forwarded(&req, &[400, 401], "non-ASCII header bytes").await;
    req = b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic \x7f\r\n\r\n".to_vec();
    s.not_forwarded(&req, &[400, 401], "DEL in a header").await;
    req = b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer grd_\x01\r\n\r\n".to_vec();
    s.not_forwarded(&req, &[400, 401], "a control byte in a token").await;
    // The URL-safe case above is refused for its alphabet, not its user: the standard one works.
    let req = head(
        "GET /api/x HTTP/1.1",
        &[
            "Host: localhost",
            &format!("Authorization: {}", basic("url", URL_PASSWORD)),
        ],
    );
    let (resps, _) = send_raw(&s.client(), req.as_bytes(), 1, Duration::ZERO).await;
    assert_eq!(resps.first().map(|r| r.status), Some(200), "{resps:?}");
}

fn basic_line(decoded: &[u8]) -> String {
    format!("Authorization: {}", basic_raw(decoded))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_containing_colons_works_and_only_the_first_colon_splits() {
    let s = Setup::start(&[]).await;
    let c = s.client();
    let m = s.up.mark();
    let req = head(
        "GET /api/x HTTP/1.1",
        &[
            "Host: localhost",
            &format!("Authorization: {}", basic("colon", COLON_PASSWORD)),
        ],
    );
    let (resps, _) = send_raw(&c, req.as_bytes(), 1, Duration::ZERO).await;
    assert_eq!(resps[0].status, 200, "{resps:?}");
    assert_eq!(
        s.up.exactly_one_since(m, "colon").all("x-forwarded-user"),
        vec!["colon"]
    );
    for (user, pw, why) in [
        ("colon", "pa", "the password up to its first colon"),
        ("colon", "pa:ss:word:", "a trailing colon"),
        ("colon", "pa:ss", "a prefix"),
    ] {
        let req = head(
            "GET /api/x HTTP/1.1",
            &["Host: localhost", &format!("Authorization: {}", basic(user, pw))],
        );
        s.not_forwarded(req.as_bytes(), &[401], why).await;
    }
    // The scheme is case-insensitive (RFC 9110 §11.1), so this is the same credential.
    let lower = format!("Authorization: basic {}", alice().trim_start_matches("Basic "));
    s.forwarded_as_alice(
        head("GET /api/x HTTP/1.1", &["Host: localhost", &lower]).as_bytes(),
        "/api/x",
        "basic",
    )
    .await;
    // Over HTTP/2 the same.
    let m = s.up.mark();
    let fields = h2_request(
        "GET",
        "/api/x",
        &[field("authorization", &basic("colon", COLON_PASSWORD))],
    );
    assert!(matches!(
        h2_exchange(&c, &fields, None).await,
        H2::Response { status: 200, .. }
    ));
    assert_eq!(
        s.up.exactly_one_since(m, "HTTP/2 colon").all("x-forwarded-user"),
        vec!["colon"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn very_long_credentials_get_401_or_431_and_never_5xx() {
    let s = Setup::start(&[]).await;
    let c = s.client();
    let long_pw = "x".repeat(9 * 1024);
    for (value, allowed, why) in [
        (basic("alice", &long_pw), &[401][..], "a 9 KiB Basic credential"),
        (
            alice().replace("Basic ", &format!("Basic{}", " ".repeat(9 * 1024))),
            &[401][..],
            "a valid credential padded past 8 KiB",
        ),
        (
            format!("Bearer grd_{}", "A".repeat(20 * 1024)),
            &[401][..],
            "a 20 KiB token",
        ),
        (
            basic("alice", &"x".repeat(60 * 1024)),
            &[401, 431][..],
            "a 60 KiB Basic credential",
        ),
        (basic(&"u".repeat(70 * 1024), "pw"), &[431][..], "a 70 KiB user name"),
        (
            basic("alice", &"x".repeat(1024 * 1024)),
            &[431][..],
            "a 1 MiB credential",
        ),
    ] {
        let req = head(
            "GET /api/x HTTP/1.1",
            &["Host: localhost", &format!("Authorization: {value}")],
        );
        s.not_forwarded(req.as_bytes(), allowed, why).await;
        let m = s.up.mark();
        let out = h2_exchange(
            &c,
            &h2_request("GET", "/api/x", &[field("authorization", &value)]),
            None,
        )
        .await;
        assert!(out.is_refusal(), "HTTP/2 {why}: {out:?}");
        s.up.assert_nothing_since(m, why);
    }
    assert!(!s.g.stderr.text().contains("panicked"));
    // guard still answers.
    assert_eq!(c.send(authed("/api/after")).await.status(), 200);
}

// ================================================================ limits

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_header_gets_431_and_nothing_reaches_upstream() {
    let s = Setup::start(&[]).await;
    let auth = auth_line();
    for (size, creds, why) in [
        (70 * 1024, false, "70 KiB without credentials"),
        (70 * 1024, true, "70 KiB with credentials"),
        (1024 * 1024, true, "1 MiB with credentials"),
    ] {
        let big = format!("X-Big: {}", "b".repeat(size));
        let mut headers = vec!["Host: localhost", big.as_str()];
        if creds {
            headers.push(&auth);
        }
        s.not_forwarded(head("GET /api/x HTTP/1.1", &headers).as_bytes(), &[431], why)
            .await;
    }
    // Many headers that together pass the limit.
    let many: Vec<String> = (0..40).map(|i| format!("X-H{i}: {}", "m".repeat(2000))).collect();
    let mut headers = vec!["Host: localhost", auth.as_str()];
    headers.extend(many.iter().map(String::as_str));
    s.not_forwarded(
        head("GET /api/x HTTP/1.1", &headers).as_bytes(),
        &[431],
        "80 KB in 40 headers",
    )
    .await;
    // Just under the default limit is served.
    let near = format!("X-Big: {}", "n".repeat(60 * 1024));
    s.forwarded_as_alice(
        head("GET /api/x HTTP/1.1", &["Host: localhost", &auth, &near]).as_bytes(),
        "/api/x",
        "60 KiB",
    )
    .await;

    // A configured limit is the limit.
    let small = Setup::start(&["--max-header-size", "16K"]).await;
    let big = format!("X-Big: {}", "b".repeat(20 * 1024));
    small
        .not_forwarded(
            head("GET /api/x HTTP/1.1", &["Host: localhost", &auth, &big]).as_bytes(),
            &[431],
            "20K > 16K",
        )
        .await;
    let fits = format!("X-Big: {}", "b".repeat(12 * 1024));
    let req = head("GET /api/x HTTP/1.1", &["Host: localhost", &auth, &fits]);
    small.forwarded_as_alice(req.as_bytes(), "/api/x", "12K < 16K").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn more_headers_than_the_limit_get_431_and_the_limit_itself_is_served() {
    for (flags, limit) in [(vec![], 100), (vec!["--max-headers", "20"], 20)] {
        let s = Setup::start(&flags).await;
        let auth = auth_line();
        let extra: Vec<String> = (0..limit).map(|i| format!("X-N{i}: v")).collect();
        let with = |n: usize| {
            let mut headers = vec!["Host: localhost", auth.as_str()];
            headers.extend(extra.iter().take(n - 2).map(String::as_str));
            head("GET /api/x HTTP/1.1", &headers)
        };
        s.forwarded_as_alice(with(limit).as_bytes(), "/api/x", &format!("exactly {limit} headers"))
            .await;
        s.not_forwarded(with(limit + 1).as_bytes(), &[431], &format!("{} headers", limit + 1))
            .await;
        let anon: String = with(limit + 1).replace(&format!("{auth}\r\n"), "X-Anon: 1\r\n");
        s.not_forwarded(anon.as_bytes(), &[431], "too many without credentials")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_oversized_headers_and_too_many_headers_get_431_and_nothing_reaches_upstream() {
    let s = Setup::start(&[]).await;
    let c = s.client();
    let a = alice();
    let big = h2_request(
        "GET",
        "/api/x",
        &[field("authorization", &a), field("x-big", &"b".repeat(70 * 1024))],
    );
    let mut many = h2_request("GET", "/api/x", &[field("authorization", &a)]);
    many.extend((0..150).map(|i| field(&format!("x-n{i}"), "v")));
    for (fields, why) in [(big, "a 70 KiB header"), (many, "150 headers with --max-headers 100")] {
        let m = s.up.mark();
        let out = h2_exchange(&c, &fields, None).await;
        let status = match &out {
            H2::Response { status, .. } => *status,
            _ => 0,
        };
        s.up.assert_nothing_since(m, why);
        assert_eq!(status, 431, "{why}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overlong_request_line_is_refused_before_authentication_and_never_forwarded() {
    // The issue asks for 414. hyper gives 414 only for a target over 65534 bytes that fits in its
    // read buffer; with the default --max-header-size (64K) the buffer fills first and the answer
    // is 431. Both are recorded here; see the report.
    let target = format!("/api/{}", "a".repeat(70 * 1024));
    for flags in [vec![], vec!["--max-header-size", "256K"]] {
        let s = Setup::start(&flags).await;
        let auth = auth_line();
        let mut statuses = Vec::new();
        for creds in [false, true] {
            let mut headers = vec!["Host: localhost"];
            if creds {
                headers.push(&auth);
            }
            let req = head(&format!("GET {target} HTTP/1.1"), &headers);
            statuses.push(
                s.not_forwarded(req.as_bytes(), &[414, 431], &format!("{flags:?} credentials {creds}"))
                    .await,
            );
        }
        eprintln!("a 70 KiB request target with {flags:?} gets {statuses:?}");
        assert_eq!(statuses[0], statuses[1], "the answer does not depend on credentials");
    }
}

// ================================================================ floods and slow clients

/// The soft RLIMIT_NOFILE of this process (guard inherits it).
fn nofile_soft_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap_or(usize::MAX)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Where the `n`th idle connection comes from: a thousand from each of 127.0.0.2, .3, ..., as from
/// ten clients each under `--max-connections-per-client`, while the served client is 127.0.0.1.
fn idle_source(n: usize) -> std::net::IpAddr {
    let host = u8::try_from(2 + n / 1000).expect("under 254 thousand connections");
    std::net::IpAddr::from([127, 0, 0, host])
}

/// A TCP connection to `addr` from the address `from` (any of 127.0.0.0/8 is this machine's).
async fn connect_from(from: std::net::IpAddr, addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((from, 0).into())?;
    socket.connect(addr).await
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_idle_tcp_connections_leave_authenticated_clients_served() {
    let soft = nofile_soft_limit();
    // Other tests in this binary hold descriptors too; keep a margin below the limit.
    let want = 10_000.min(soft.saturating_sub(2_000));
    if want < 10_000 {
        eprintln!("note: RLIMIT_NOFILE soft limit is {soft}; opening {want} idle connections instead of 10000");
    }
    // Debug logging would write a line per connection.
    let s = Setup::start_env(&[], &[("GUARD_LOG", "info")]).await;
    let c = s.client();
    assert_eq!(c.send(authed("/api/warm")).await.status(), 200);
    let baseline_fds = open_fds(s.g.pid());
    let addr = s.g.addr;
    let t0 = Instant::now();
    let mut idle = Vec::with_capacity(want);
    while idle.len() < want {
        let mut batch = tokio::task::JoinSet::new();
        for n in idle.len()..idle.len() + (want - idle.len()).min(100) {
            batch.spawn(connect_from(idle_source(n), addr));
        }
        while let Some(r) = batch.join_next().await {
            idle.push(r.unwrap().expect("an idle connection"));
        }
        // Batches smaller than guard's listen backlog (128), each accepted before the next: past
        // the backlog the kernel drops handshakes and they trickle in on 1 s, 3 s, 7 s retries
        // (see the burst test below), and the first would time out before the last arrived.
        let deadline = Instant::now() + Duration::from_secs(5);
        // (A few of the baseline's descriptors, the warm-up connection, may have closed since.)
        while open_fds(s.g.pid()) + 8 < baseline_fds + idle.len() {
            assert!(
                Instant::now() < deadline,
                "guard holds {} descriptors after {} connections (baseline {baseline_fds}); log:\n{}",
                open_fds(s.g.pid()),
                idle.len(),
                s.g.stderr.text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let opened = t0.elapsed();
    let rss = s.g.vm_rss_kib();
    // Meanwhile authenticated clients get answers, over both protocols, promptly.
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t = Instant::now();
        let m = s.up.mark();
        let resp = c.send(authed(&format!("/api/busy/{i}"))).await;
        assert_eq!(resp.status(), 200);
        let _ = text(resp.into_body()).await;
        let mut h2 = c.h2().await;
        let req = Request::get(format!("https://localhost:{}/api/busy2/{i}", s.g.addr.port()))
            .header("authorization", alice())
            .body(empty())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = text(resp.into_body()).await;
        assert_eq!(s.up.since(m).len(), 2);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(2),
        "an authenticated client waited {slowest:?}"
    );
    // Unauthenticated clients still get their 401, and nothing goes upstream for them.
    let m = s.up.mark();
    assert_eq!(c.get("/api/x").await.0, 401);
    s.up.assert_nothing_since(m, "401 under load");
    let log = s.g.stderr.text();
    assert!(!log.contains("accept failed"), "guard ran out of descriptors:\n{log}");
    eprintln!(
        "{want} idle connections opened in {opened:?}; guard RSS {rss} KiB, {} descriptors; slowest \
         authenticated round (h1 + h2) {slowest:?}",
        open_fds(s.g.pid())
    );
    // After the TLS handshake timeout (10 s by default) guard closes them all.
    let deadline = t0 + Duration::from_secs(10) + Duration::from_secs(8);
    while open_fds(s.g.pid()) > baseline_fds + 20 {
        assert!(
            Instant::now() < deadline,
            "guard still holds {} descriptors",
            open_fds(s.g.pid())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "guard closed the idle connections {:?} after the first was opened",
        t0.elapsed()
    );
    let mut closed = 0;
    for tcp in idle.iter_mut().take(100) {
        let mut b = [0u8; 1];
        if matches!(
            tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        ) {
            closed += 1;
        }
    }
    assert_eq!(closed, 100, "idle clients see their connection closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_response_leaves_guards_memory_bounded() {
    const GIB: u64 = 1 << 30;
    let s = Setup::start(&[]).await;
    let c = s.client();
    let auth = auth_line();
    // Four HTTP/1.1 clients and one HTTP/2 client with four streams ask for a gigabyte each and
    // never read a byte of it.
    let mut stalled = Vec::new();
    for i in 0..4 {
        let mut tls = c.tls().await;
        let req = head(
            &format!("GET /download/{GIB}?h1={i} HTTP/1.1"),
            &["Host: localhost", &auth],
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        stalled.push(tls);
    }
    let mut h2 = h2_open(&c).await;
    for stream in [1u32, 3, 5, 7] {
        let fields = h2_request(
            "GET",
            &format!("/download/{GIB}?h2={stream}"),
            &[field("authorization", &alice())],
        );
        h2.write_all(&h2_headers(stream, &hpack_block(&fields), true))
            .await
            .unwrap();
    }
    stalled.push(h2);
    let t0 = Instant::now();
    let (mut peak, mut mid_bytes, mut served) = (0, 0, 0);
    while t0.elapsed() < Duration::from_secs(4) {
        peak = peak.max(s.g.vm_rss_kib());
        let t = Instant::now();
        let resp = c.send(authed("/api/meanwhile")).await;
        assert_eq!(resp.status(), 200);
        let _ = text(resp.into_body()).await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "an attentive client waited {:?}",
            t.elapsed()
        );
        served += 1;
        if mid_bytes == 0 && t0.elapsed() >= Duration::from_secs(2) {
            mid_bytes = s.up.from_upstream.load(Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    peak = peak.max(s.g.vm_rss_kib());
    let end_bytes = s.up.from_upstream.load(Ordering::SeqCst);
    let downloads =
        s.up.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.uri.starts_with("/download/"))
            .count();
    eprintln!(
        "never-reading clients: guard peak RSS {peak} KiB; upstream sent {} MiB of 8 GiB asked; {served} other \
         requests served",
        end_bytes >> 20
    );
    assert_eq!(downloads, 8, "every stalled download reached the upstream");
    assert!(end_bytes > 1 << 20, "the upstream started sending ({end_bytes} bytes)");
    assert!(peak < 64 * 1024, "guard's RSS reached {peak} KiB");
    assert!(
        end_bytes < 256 << 20,
        "guard drained {end_bytes} bytes from the upstream instead of pushing back"
    );
    assert!(
        end_bytes - mid_bytes < 16 << 20,
        "the upstream kept sending: {mid_bytes} then {end_bytes} bytes"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_a_thousand_connects_is_accepted_without_handshake_retries() {
    // A dropped SYN or final ACK (accept queue full) costs the client a 1 s retransmission, then
    // 3 s, 7 s: a burst a listen backlog cannot hold stalls every client arriving with it,
    // legitimate ones included.
    let s = Setup::start_env(&[], &[("GUARD_LOG", "info")]).await;
    let addr = s.g.addr;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        burst.spawn(async move {
            let t = Instant::now();
            let tcp = TcpStream::connect(addr).await.expect("connect");
            (t.elapsed(), tcp)
        });
    }
    let t = Instant::now();
    let resp = s.client().send(authed("/api/during-burst")).await;
    let during = t.elapsed();
    assert_eq!(resp.status(), 200);
    let mut slowest = Duration::ZERO;
    let mut held = Vec::new();
    while let Some(r) = burst.join_next().await {
        let (took, tcp) = r.unwrap();
        slowest = slowest.max(took);
        held.push(tcp);
    }
    let backlog = std::process::Command::new("ss")
        .args(["-ltnH", "sport", "=", &format!(":{}", addr.port())])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("?")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into());
    eprintln!("1000 simultaneous connects: slowest {slowest:?}; authenticated request meanwhile {during:?}; listen backlog {backlog}");
    assert!(
        slowest < Duration::from_millis(900),
        "a connect waited {slowest:?} (listen backlog {backlog})"
    );
    assert!(
        during < Duration::from_millis(900),
        "an authenticated client waited {during:?} (listen backlog {backlog})"
    );
}

// ================================================================ transport

#[tokio::test(flavor = "multi_thread")]
async fn tls_versions_below_1_2_are_refused_and_1_2_and_1_3_are_accepted() {
    if require_program(&["openssl"], "apt-get install -y openssl").is_none() {
        return;
    }
    let s = Setup::start(&[]).await;
    let port = s.g.addr.port().to_string();
    let ca = s.g.ca().to_path_buf();
    let run = move |version: &str| {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .arg("-CAfile")
            .arg(&ca)
            .arg(format!("-{version}"))
            // OpenSSL 3 only offers TLS 1.0 and 1.1 at security level 0: without this the client
            // would give up on its own and prove nothing about guard.
            .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let m = s.up.mark();
    for version in ["tls1", "tls1_1"] {
        let run = run.clone();
        let (ok, text) = tokio::task::spawn_blocking(move || run(version)).await.unwrap();
        assert!(!ok, "-{version} was accepted:\n{text}");
        assert!(
            text.contains("SSL alert number"),
            "-{version}: guard did not refuse with an alert:\n{text}"
        );
        assert!(
            text.contains("Cipher is (NONE)"),
            "-{version}: a cipher was agreed:\n{text}"
        );
    }
    for (version, protocol) in [("tls1_2", "TLSv1.2"), ("tls1_3", "TLSv1.3")] {
        let run = run.clone();
        let (ok, text) = tokio::task::spawn_blocking(move || run(version)).await.unwrap();
        assert!(ok, "-{version} failed:\n{text}");
        // "New, TLSv1.3, Cipher is ..." is always printed; the "Protocol :" line only comes with
        // a session ticket, which a client that hangs up at once may not wait for.
        assert!(
            text.contains(&format!("New, {protocol}, Cipher is")),
            "-{version}:\n{text}"
        );
        assert!(text.contains("Verify return code: 0 (ok)"), "-{version}:\n{text}");
        assert!(!text.contains("Cipher is (NONE)"), "-{version}:\n{text}");
    }
    s.up.assert_nothing_since(m, "handshakes alone");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_text_on_the_tls_port_is_closed_at_once_and_nothing_reaches_upstream() {
    let s = Setup::start(&[]).await;
    let m = s.up.mark();
    let auth = auth_line();
    let plain_http = head("GET /api/x HTTP/1.1", &["Host: localhost", &auth]);
    let h2c = [PREFACE, &h2_frame(SETTINGS, 0, 0, &[])].concat();
    let sslv2_hello = b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10\x07\x00\xc0\x03\x00\x80".to_vec();
    let garbage_record = b"\x16\x03\x01\xff\xff\x01\x00\xff\xfb"
        .iter()
        .chain([0u8; 64].iter())
        .copied()
        .collect::<Vec<u8>>();
    for (bytes, why) in [
        (plain_http.into_bytes(), "plain HTTP/1.1"),
        (h2c, "h2c prior knowledge"),
        (sslv2_hello, "an SSLv2 hello"),
        (garbage_record, "a TLS record announcing 64 KiB"),
    ] {
        let mut tcp = TcpStream::connect(s.g.addr).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        let t = Instant::now();
        let mut got = Vec::new();
        let wait = Duration::from_secs(if why.contains("announcing") { 1 } else { 5 });
        let r = tokio::time::timeout(wait, tcp.read_to_end(&mut got)).await;
        if why.contains("announcing") {
            // A record that is not complete yet is waited for only as long as the handshake
            // timeout allows; what matters here is that no HTTP is spoken.
            assert!(!String::from_utf8_lossy(&got).contains("HTTP/"), "{why}: {got:?}");
        } else {
            assert!(r.is_ok(), "{why}: the connection stayed open");
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{why}: closed only after {:?}",
                t.elapsed()
            );
            assert!(
                !String::from_utf8_lossy(&got).contains("HTTP/"),
                "{why}: guard spoke HTTP in the clear: {got:?}"
            );
        }
    }
    s.up.assert_nothing_since(m, "plain text");
}
