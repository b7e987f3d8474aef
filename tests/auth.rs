//! End-to-end tests of authentication: Basic and Bearer through the real binary, files made by
//! Apache's htpasswd, the user and token commands, live reloads under load, and lockout.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;

fn with_auth(path: &str, auth: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", "localhost")
        .header("authorization", auth)
        .body(empty())
        .unwrap()
}

/// `guard token create`, returning the token.
fn token_create(tokens: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", name, "--tokens", tokens.to_str().unwrap()];
    args.extend(extra);
    let (code, out, err) = run_guard(&args, None);
    assert_eq!(code, 0, "{out}{err}");
    let token = out
        .lines()
        .find(|l| l.starts_with("grd_"))
        .expect("token printed")
        .to_string();
    assert!(token.len() >= 4 + 43, "at least 256 bits: {token}");
    assert!(!err.contains(&token), "token also on stderr");
    token
}

struct Setup {
    _dir: TempDir,
    users: std::path::PathBuf,
    tokens: std::path::PathBuf,
    up: Echo,
    g: Guard,
}

async fn setup(extra: &[&str]) -> Setup {
    let dir = TempDir::new("auth");
    let users = dir.path().join("users.htpasswd");
    let tokens = dir.path().join("tokens.json");
    adduser(&users, "alice", "correct horse");
    let up = Echo::start().await;
    let mut args = vec![
        "--upstream".to_string(),
        up.authority(),
        "--users".into(),
        users.display().to_string(),
        "--tokens".into(),
        tokens.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = Guard::start(&refs);
    Setup {
        _dir: dir,
        users,
        tokens,
        up,
        g,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_credentials_are_checked_and_nothing_unauthenticated_reaches_upstream() {
    let s = setup(&[]).await;
    let c = s.g.client();
    for (auth, why) in [
        (Some(basic("alice", "wrong")), "wrong password"),
        (Some(basic("mallory", "correct horse")), "unknown user"),
        (None, "missing"),
        (Some("Basic !!notbase64".to_string()), "bad base64"),
        (Some(basic("", "correct horse")), "empty user"),
        (Some(format!("Basic {}", "A".repeat(20_000))), "very long"),
    ] {
        let mut req = Request::get("/api/2.0/mlflow/experiments/search").header("host", "localhost");
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let resp = c.send(req.body(empty()).unwrap()).await;
        assert_eq!(resp.status(), 401, "{why}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Basic realm=\"MLflow\", charset=\"UTF-8\"",
            "{why}"
        );
        let v = echo_json(&text(resp.into_body()).await);
        assert_eq!(v["error_code"], "UNAUTHENTICATED", "{why}");
    }
    assert_eq!(s.up.count(), 0, "an unauthenticated request reached the upstream");

    let req = Request::get("/api/ok")
        .header("host", "localhost")
        .header("authorization", basic("alice", "correct horse"))
        .header("x-forwarded-user", "admin")
        .body(empty())
        .unwrap();
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    let seen = s.up.last();
    assert_eq!(seen.header("authorization"), None, "the credential was forwarded");
    assert_eq!(
        seen.all("x-forwarded-user"),
        vec!["alice"],
        "client copy dropped, guard's set"
    );
    // The access line is written when the response body ends, just after the client has it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !s.g.stderr.text().contains("user=\"alice\"") {
        assert!(Instant::now() < deadline, "the access log does not name the user");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_work_until_they_expire_or_are_revoked() {
    // The polling below fails on purpose until reloads land; lockout is tested on its own.
    let s = setup(&["--lockout-failures", "0"]).await;
    let good = token_create(&s.tokens, "ci", &[]);
    let short = token_create(&s.tokens, "short", &["--expires", "1s"]);
    let c = s.g.client();
    // The tokens file is new since guard started: it is picked up within the watch interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.send(with_auth("/t", &format!("Bearer {good}"))).await.status() != 200 {
        assert!(Instant::now() < deadline, "new token not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.up.last().all("x-forwarded-user"), vec!["ci"]);
    assert_eq!(s.up.last().header("authorization"), None);
    let n = s.up.count();
    for (auth, why) in [
        (format!("Bearer {good}x"), "wrong token"),
        ("Bearer grd_AAAA".to_string(), "unknown token"),
        (format!("Bearer {short}"), "expired token"),
    ] {
        if why == "expired token" {
            tokio::time::sleep(Duration::from_millis(2100)).await;
        }
        let resp = c.send(with_auth("/t", &auth)).await;
        assert_eq!(resp.status(), 401, "{why}");
        if why == "expired token" {
            assert!(text(resp.into_body()).await.contains("expired"));
        }
    }
    assert_eq!(s.up.count(), n, "failed tokens reached the upstream");
    let (code, out, err) = run_guard(&["token", "revoke", "ci", "--tokens", s.tokens.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let resp = c.send(with_auth("/t", &format!("Bearer {good}"))).await;
        if resp.status() == 401 {
            assert!(text(resp.into_body()).await.contains("revoked"));
            break;
        }
        assert!(Instant::now() < deadline, "revoked token still works after 3 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out, _) = run_guard(&["token", "list", "--tokens", s.tokens.to_str().unwrap()], None);
    assert_eq!(code, 0);
    assert!(out.contains("ci\tRevoked") && out.contains("short\tExpired"), "{out}");
    assert!(!out.contains(&good) && !out.contains("sha256"), "{out}");
    let n = s.up.count();
    assert_eq!(c.send(with_auth("/t", &format!("Bearer {good}"))).await.status(), 401);
    assert_eq!(s.up.count(), n, "a revoked token reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn files_from_apache_htpasswd_and_crlf_files_verify() {
    if require_program(&["htpasswd"], "apt-get install -y apache2-utils").is_none() {
        return;
    }
    let dir = TempDir::new("apache");
    let users = dir.path().join("users");
    let mut text = String::from("# made by Apache htpasswd\r\n\r\n");
    for (flag, user) in [("-B", "bcrypt"), ("-m", "md5"), ("-s", "sha")] {
        let mut args = vec!["-nb"];
        if flag == "-B" {
            args = vec!["-nbB", "-C", "4"];
        } else {
            args.push(flag);
        }
        let out = std::process::Command::new("htpasswd")
            .args(&args)
            .arg(user)
            .arg("s3cret")
            .output()
            .unwrap();
        assert!(out.status.success());
        text.push_str(String::from_utf8(out.stdout).unwrap().trim());
        text.push_str("\r\n");
    }
    text.push_str("broken:$apr1$abc\r\nnocolon\r\nsha512:$6$salt$hash\r\n");
    std::fs::write(&users, &text).unwrap();
    let up = Echo::start().await;
    let g = Guard::start(&["--upstream", &up.authority(), "--users", users.to_str().unwrap()]);
    let c = g.client();
    for user in ["bcrypt", "md5", "sha"] {
        assert_eq!(
            c.send(with_auth("/", &basic(user, "s3cret"))).await.status(),
            200,
            "{user}"
        );
        assert_eq!(
            c.send(with_auth("/", &basic(user, "S3cret"))).await.status(),
            401,
            "{user}"
        );
    }
    assert_eq!(c.send(with_auth("/", &basic("broken", "x"))).await.status(), 401);
    let log = g.stderr.text();
    let name = users.display().to_string();
    for line in [6, 7, 8] {
        assert!(
            log.contains(&format!("{name}:{line}:")),
            "no warning for line {line}:\n{log}"
        );
    }
    assert!(!log.contains("panicked"));
}

#[test]
fn twenty_concurrent_addusers_leave_twenty_entries_and_mode_0600() {
    let dir = TempDir::new("concurrent");
    let users = dir.path().join("users.htpasswd");
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let users = users.clone();
            std::thread::spawn(move || adduser(&users, &format!("user{i}"), "pw"))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (code, out, _) = run_guard(&["users", "--users", users.to_str().unwrap()], None);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 20, "{out}");
    assert!(!out.contains('$'), "hashes listed: {out}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&users).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn user_commands_refuse_bad_input_with_exit_2_and_leave_the_file_alone() {
    let dir = TempDir::new("refuse");
    let users = dir.path().join("users.htpasswd");
    adduser(&users, "alice", "pw");
    let before = std::fs::read(&users).unwrap();
    let u = users.to_str().unwrap();
    for (args, stdin, needle) in [
        (
            vec!["adduser", "alice", "--users", u, "--password-stdin"],
            "pw2\n",
            "already exists; use `guard passwd alice`",
        ),
        (
            vec!["adduser", "bob", "--users", u, "--password-stdin"],
            "\n",
            "empty password refused",
        ),
        (
            vec!["adduser", "a:b", "--users", u, "--password-stdin"],
            "pw\n",
            "invalid user name",
        ),
        (
            vec!["adduser", "a b", "--users", u, "--password-stdin"],
            "pw\n",
            "invalid user name",
        ),
        (vec!["adduser", "bob", "--users", u], "pw\n", "--password-stdin"),
        (
            vec!["passwd", "nobody", "--users", u, "--password-stdin"],
            "pw\n",
            "no user \"nobody\"",
        ),
        (vec!["deluser", "nobody", "--users", u], "", "no user \"nobody\""),
        (
            vec!["adduser", "bob", "--users", u, "--password-stdin", "--cost", "3"],
            "pw\n",
            "--cost",
        ),
    ] {
        let (code, out, err) = run_guard(&args, Some(stdin));
        assert_eq!(code, 2, "guard {}: {out}{err}", args.join(" "));
        assert!(
            err.contains(needle),
            "guard {}: expected {needle:?} in {err}",
            args.join(" ")
        );
    }
    assert_eq!(
        std::fs::read(&users).unwrap(),
        before,
        "a refused command changed the file"
    );
    // passwd and deluser do their job and keep the file 0600.
    let (code, ..) = run_guard(
        &["passwd", "alice", "--users", u, "--password-stdin", "--cost", "4"],
        Some("new\n"),
    );
    assert_eq!(code, 0);
    let (code, ..) = run_guard(&["deluser", "alice", "--users", u], None);
    assert_eq!(code, 0);
    let (_, out, _) = run_guard(&["users", "--users", u], None);
    assert_eq!(out, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_added_and_removed_under_load_take_effect_without_failing_the_loaded_user() {
    // The polling below fails on purpose until reloads land; lockout is tested on its own.
    let s = setup(&["--lockout-failures", "0"]).await;
    adduser(&s.users, "carol", "carol-pw");
    let c = s.g.client();
    // carol works once the reload has happened.
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.send(with_auth("/", &basic("carol", "carol-pw"))).await.status() != 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, stop, ok, failed) = (c.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut conn = c.h1().await;
            while !stop.load(Ordering::Relaxed) {
                let resp = conn
                    .send_request(with_auth("/load", &basic("alice", "correct horse")))
                    .await
                    .unwrap();
                let st = resp.status();
                let _ = text(resp.into_body()).await;
                if st == 200 {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let users = s.users.clone();
    tokio::task::spawn_blocking(move || {
        adduser(&users, "dave", "dave-pw");
        let (code, ..) = run_guard(&["deluser", "carol", "--users", users.to_str().unwrap()], None);
        assert_eq!(code, 0);
    })
    .await
    .unwrap();
    let changed = Instant::now();
    let (mut dave_ok, mut carol_gone) = (None, None);
    while dave_ok.is_none() || carol_gone.is_none() {
        if dave_ok.is_none() && c.send(with_auth("/", &basic("dave", "dave-pw"))).await.status() == 200 {
            dave_ok = Some(changed.elapsed());
        }
        if carol_gone.is_none() && c.send(with_auth("/", &basic("carol", "carol-pw"))).await.status() == 401 {
            carol_gone = Some(changed.elapsed());
        }
        assert!(changed.elapsed() < Duration::from_secs(5), "reload did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    eprintln!(
        "dave usable after {dave_ok:?}, carol refused after {carol_gone:?}; loaded user: {} ok, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(dave_ok.unwrap() < Duration::from_secs(2), "new user took {dave_ok:?}");
    assert!(
        carol_gone.unwrap() < Duration::from_secs(2),
        "removed user took {carol_gone:?}"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "the loaded user saw failures");
    assert!(ok.load(Ordering::Relaxed) > 50);
}

/// A TLS client whose connections come from `source` (another loopback address).
async fn send_from(source: &str, g: &Guard, auth: &str) -> http::Response<hyper::body::Incoming> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse::<SocketAddr>().unwrap()).unwrap();
    let tcp = sock.connect(g.addr).await.unwrap();
    let c = g.client();
    let tls = tokio_rustls::TlsConnector::from(c.config.clone())
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send.send_request(with_auth("/", auth)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn brute_force_gets_429_with_retry_after_for_the_attacker_only() {
    let s = setup(&[
        "--lockout-failures",
        "5",
        "--lockout-window",
        "1m",
        "--lockout-duration",
        "30s",
    ])
    .await;
    for i in 0..5 {
        assert_eq!(
            send_from("127.0.0.2", &s.g, &basic("alice", &format!("guess{i}")))
                .await
                .status(),
            401
        );
    }
    let resp = send_from("127.0.0.2", &s.g, &basic("alice", "correct horse")).await;
    assert_eq!(resp.status(), 429, "locked out even with the right password");
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Another address is unaffected.
    assert_eq!(
        send_from("127.0.0.3", &s.g, &basic("alice", "correct horse"))
            .await
            .status(),
        200
    );
    assert_eq!(
        s.g.stderr.text().matches("locking out 127.0.0.2").count(),
        1,
        "logged once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_path_needs_no_credentials() {
    let s = setup(&[]).await;
    assert_eq!(s.g.client().get("/_guard/health").await.0, 200);
    assert_eq!(s.up.count(), 0);
}

#[test]
fn adduser_refuses_a_lock_file_that_is_a_symlink_and_leaves_its_target_alone() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("auth-lock");
    let users = dir.path().join("users.htpasswd");
    let lock = dir.path().join("users.htpasswd.lock");
    let target = dir.path().join("passwd");
    std::fs::write(&target, b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    // As root (CI), give the target another owner so a chown to the users file's would show.
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if root {
        std::os::unix::fs::chown(&target, Some(12345), Some(12345)).unwrap();
    }
    let before = std::fs::metadata(&target).unwrap();
    std::os::unix::fs::symlink(&target, &lock).unwrap();

    let (code, out, err) = run_guard(
        &[
            "adduser",
            "alice",
            "--users",
            users.to_str().unwrap(),
            "--password-stdin",
            "--cost",
            "4",
        ],
        Some("correct horse\n"),
    );
    assert_ne!(code, 0, "adduser went ahead: {out}{err}");
    assert!(
        err.contains(&format!("cannot lock {}", lock.display())) && err.contains("symlink"),
        "stderr names the lock path and why: {err}"
    );
    let after = std::fs::metadata(&target).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"root:x:0:0:root:/root:/bin/sh\n");
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode())
    );
    assert!(!users.exists(), "no users file written without the lock");
}
