//! A bounded soak: wrk at saturation through guard with authentication for the whole run, while
//! the users file is rewritten and the certificate files are replaced every few seconds. No
//! request may fail and guard's memory must stay flat. `GUARD_SOAK_SECONDS` sets the length
//! (default 60; `bench/` runs longer ones).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;

/// A CA-less pair of self-signed localhost certificates (wrk does not verify).
fn cert_pair() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn saturated_authenticated_load_survives_user_and_certificate_churn() {
    init();
    if require_program(&["wrk"], "apt-get install -y wrk").is_none() {
        return;
    }
    let seconds: u64 = std::env::var("GUARD_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = TempDir::new("soak");
    let d = dir.path().to_path_buf();
    let users = d.join("users.htpasswd");
    let (code, ..) = run_guard(
        &[
            "adduser",
            "loaded",
            "--users",
            users.to_str().unwrap(),
            "--password-stdin",
            "--cost",
            "10",
        ],
        Some("soak-pw\n"),
    );
    assert_eq!(code, 0);
    let pairs = [cert_pair(), cert_pair()];
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    std::fs::write(&cert, &pairs[0].0).unwrap();
    std::fs::write(&key, &pairs[0].1).unwrap();
    let up = Echo::start().await;
    let g = Guard::start_env(
        &[
            "--upstream",
            &up.authority(),
            "--users",
            users.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("GUARD_LOG", "warn")],
    );
    let auth = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode("loaded:soak-pw")
    );
    let url = format!("https://127.0.0.1:{}/api/2.0/mlflow/experiments/search", g.addr.port());
    let wrk = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{seconds}s"), "--latency", "-H", &auth, &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Churn while wrk runs: a user added and removed, the certificate swapped, every 3 s.
    let start = Instant::now();
    let mut rss = Vec::new();
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        i += 1;
        let name = format!("churn{i}");
        let users_s = users.to_str().unwrap().to_string();
        let (code, ..) = tokio::task::spawn_blocking(move || {
            run_guard(
                &["adduser", &name, "--users", &users_s, "--password-stdin", "--cost", "4"],
                Some("x\n"),
            )
        })
        .await
        .unwrap();
        assert_eq!(code, 0);
        if i > 1 {
            let (old, u) = (format!("churn{}", i - 1), users.to_str().unwrap().to_string());
            let (code, ..) = tokio::task::spawn_blocking(move || run_guard(&["deluser", &old, "--users", &u], None))
                .await
                .unwrap();
            assert_eq!(code, 0);
        }
        let (c, k) = &pairs[i % 2];
        std::fs::write(d.join("cert.new"), c).unwrap();
        std::fs::write(d.join("key.new"), k).unwrap();
        std::fs::rename(d.join("key.new"), &key).unwrap();
        std::fs::rename(d.join("cert.new"), &cert).unwrap();
        rss.push(g.vm_rss_kib());
    }
    let out = tokio::task::spawn_blocking(move || wrk.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{report}\nguard RSS over the run (KiB, every 3 s): {rss:?}");
    assert!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!report.contains("Non-2xx"), "failed requests:\n{report}");
    assert!(!report.contains("Socket errors"), "socket errors:\n{report}");
    let total: u64 = report
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().unwrap())
        })
        .expect("wrk's total");
    assert!(total > 1000, "wrk made only {total} requests:\n{report}");
    // Stable memory: the second half of the run grows by less than 25% (plus 4 MiB of slack)
    // over the first sample after warm-up.
    let base = rss[1.min(rss.len() - 1)];
    let peak = *rss.iter().max().unwrap();
    assert!(
        peak < base + base / 4 + 4096,
        "RSS grew from {base} to {peak} KiB: {rss:?}"
    );
    assert!(
        g.stderr.text().lines().all(|l| !l.contains("ERROR")),
        "errors logged:\n{}",
        g.stderr.text()
    );
}
