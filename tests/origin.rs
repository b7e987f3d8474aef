//! Origin at the edge, end to end: a browser's write from the site's own pages reaches the
//! upstream without `Origin` (MLflow would refuse it otherwise), a write from any other origin
//! or marked `Sec-Fetch-Site: cross-site` gets 403 and sends not a byte upstream, clients that
//! send no `Origin` are untouched, and `--allowed-origin` lets one more origin in, preflight
//! included. Raw bytes over TLS against the real binary, checked at a tapped upstream.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;

/// The host name a browser would use: not localhost, with guard's real port.
fn host(s: &Setup) -> String {
    format!("mlflow.test:{}", s.client().addr.port())
}

/// A write of the MLflow UI's shape with alice's credentials, the `Host` a browser sends and
/// `extra` headers.
fn write(method: &str, host: &str, extra: &[&str]) -> Vec<u8> {
    let (auth, host) = (auth_line(), format!("Host: {host}"));
    let mut headers = vec![
        host.as_str(),
        auth.as_str(),
        "Content-Type: application/json",
        "Content-Length: 2",
    ];
    headers.extend_from_slice(extra);
    let mut bytes = head(
        &format!("{method} /ajax-api/2.0/mlflow/experiments/create HTTP/1.1"),
        &headers,
    )
    .into_bytes();
    bytes.extend_from_slice(b"{}");
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_from_the_sites_own_pages_are_forwarded_without_origin() {
    let s = Setup::start(&[]).await;
    let h = host(&s);
    let own = format!("Origin: https://{h}");
    let shouted = format!("Origin: HTTPS://{}", h.to_uppercase());
    for (method, origin, fetch) in [
        ("POST", own.as_str(), "Sec-Fetch-Site: same-origin"),
        ("PUT", own.as_str(), "Sec-Fetch-Mode: cors"),
        ("PATCH", shouted.as_str(), "Sec-Fetch-Site: same-origin"),
        ("DELETE", own.as_str(), "Sec-Fetch-Site: same-origin"),
    ] {
        let why = format!("{method} with {origin}");
        let seen = s
            .forwarded_as_alice(
                &write(method, &h, &[origin, fetch]),
                "/ajax-api/2.0/mlflow/experiments/create",
                &why,
            )
            .await;
        assert_eq!(seen.method, method, "{why}");
        assert_eq!(
            seen.header("origin"),
            None,
            "{why}: guard removed the Origin it vouched for"
        );
        assert_eq!(seen.body_len, 2, "{why}: the body went along");
    }

    // The default port is no port: a site on 443 behind a port mapping.
    let m = s.up.mark();
    let (resps, _) = send_raw(
        &s.client(),
        &write("POST", "mlflow.test", &["Origin: https://mlflow.test:443"]),
        1,
        LINGER,
    )
    .await;
    assert_eq!(resps.first().map(|r| r.status), Some(200), "{resps:?}");
    assert_eq!(s.up.exactly_one_since(m, ":443").header("origin"), None);

    // HTTP/2: the host is the :authority.
    let m = s.up.mark();
    let mut h2 = s.client().h2().await;
    let req = http::Request::post(format!("https://{h}/ajax-api/2.0/mlflow/experiments/create"))
        .header("authorization", basic("alice", "correct horse"))
        .header("origin", format!("https://{h}"))
        .body(body("{}"))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "HTTP/2 same-origin write");
    assert_eq!(s.up.exactly_one_since(m, "h2").header("origin"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_from_other_origins_get_403_and_reach_nothing() {
    let s = Setup::start(&[]).await;
    let h = host(&s);
    let wrong_scheme = format!("Origin: http://{h}");
    let wrong_port = "Origin: https://mlflow.test:1".to_string();
    let look_alike = format!("Origin: https://{h}.evil.test");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("POST", vec!["Origin: https://evil.test", "Sec-Fetch-Site: cross-site"]),
        ("PUT", vec!["Origin: https://evil.test"]),
        ("PATCH", vec!["Origin: https://evil.test"]),
        ("DELETE", vec!["Origin: https://evil.test"]),
        ("POST", vec![wrong_scheme.as_str()]),
        ("POST", vec![wrong_port.as_str()]),
        ("POST", vec![look_alike.as_str()]),
        // Sandboxed frames and some redirects send `null`.
        ("POST", vec!["Origin: null"]),
        // Fetch metadata alone says it.
        ("POST", vec!["Sec-Fetch-Site: cross-site"]),
    ];
    for (method, extra) in &cases {
        let why = format!("{method} with {extra:?}");
        let m = s.up.mark();
        let (resps, _) = send_raw(&s.client(), &write(method, &h, extra), 1, LINGER).await;
        let r = resps.first().unwrap_or_else(|| panic!("{why}: no response"));
        assert_eq!(r.status, 403, "{why}: {r:?}");
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(json["error_code"], "PERMISSION_DENIED", "{why}: {r:?}");
        s.up.assert_nothing_since(m, &why);
    }

    // Without credentials too: a forged form post learns nothing about the login.
    let bytes = head(
        "POST /ajax-api/2.0/mlflow/experiments/delete HTTP/1.1",
        &[
            &format!("Host: {h}"),
            "Origin: https://evil.test",
            "Content-Type: application/x-www-form-urlencoded",
            "Content-Length: 0",
        ],
    );
    s.not_forwarded(bytes.as_bytes(), &[403], "an anonymous cross-site form post")
        .await;
    assert!(
        s.g.stderr.wait_for(
            "refused cross-origin write from https://evil.test",
            Duration::from_secs(5)
        ),
        "guard logs the refusal with the origin:\n{}",
        s.g.stderr.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_without_origin_and_reads_are_untouched() {
    let s = Setup::start(&[]).await;
    let h = host(&s);
    // The MLflow Python client and curl send no Origin.
    let seen = s
        .forwarded_as_alice(
            &write("POST", "localhost", &[]),
            "/ajax-api/2.0/mlflow/experiments/create",
            "a write without Origin",
        )
        .await;
    assert_eq!(seen.body_len, 2);
    // A read from another origin is the browser's CORS business: forwarded as it is.
    let (auth, host_line) = (auth_line(), format!("Host: {h}"));
    let bytes = head(
        "GET /ajax-api/2.0/mlflow/experiments/search HTTP/1.1",
        &[
            &host_line,
            &auth,
            "Origin: https://evil.test",
            "Sec-Fetch-Site: cross-site",
        ],
    );
    let seen = s
        .forwarded_as_alice(
            bytes.as_bytes(),
            "/ajax-api/2.0/mlflow/experiments/search",
            "a cross-site read",
        )
        .await;
    assert_eq!(seen.header("origin"), Some("https://evil.test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_origin_may_write_and_gets_cors_headers() {
    let s = Setup::start(&["--allowed-origin", "https://Dash.test:443,http://localhost:3000"]).await;
    let h = host(&s);

    let m = s.up.mark();
    let (resps, _) = send_raw(
        &s.client(),
        &write("POST", &h, &["Origin: https://dash.test", "Sec-Fetch-Site: cross-site"]),
        1,
        LINGER,
    )
    .await;
    let r = &resps[0];
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://dash.test"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(s.up.exactly_one_since(m, "allowed").header("origin"), None);

    // Its preflight is answered by guard: a preflight carries no credentials.
    let preflight = |origin: &str| {
        head(
            "OPTIONS /ajax-api/2.0/mlflow/runs/update HTTP/1.1",
            &[
                &format!("Host: {h}"),
                &format!("Origin: {origin}"),
                "Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: content-type",
            ],
        )
    };
    let m = s.up.mark();
    let (resps, _) = send_raw(&s.client(), preflight("http://localhost:3000").as_bytes(), 1, LINGER).await;
    let r = &resps[0];
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("http://localhost:3000"));
    assert_eq!(r.header("access-control-allow-headers"), Some("content-type"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    s.up.assert_nothing_since(m, "guard answers the preflight");

    // Another origin's preflight gets no CORS grant (and, without credentials, a 401).
    let status = s
        .not_forwarded(preflight("https://evil.test").as_bytes(), &[401], "a foreign preflight")
        .await;
    assert_eq!(status, 401);
    // And its write is still refused.
    s.not_forwarded(
        &write("POST", &h, &["Origin: https://evil.test"]),
        &[403],
        "a write from an origin not listed",
    )
    .await;
}

#[test]
fn a_malformed_allowed_origin_is_a_usage_error_naming_the_flag() {
    let (code, _, err) = run_guard(
        &[
            "serve",
            "--upstream",
            "127.0.0.1:9",
            "--allowed-origin",
            "https://dash.test/app",
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--allowed-origin"), "{err}");
    assert!(err.contains("\"https://dash.test/app\""), "{err}");
}
