//! The lockout and the password checks under attack (issue 12, points 1, 7b, 8), against the
//! real binary with raw bytes over TLS: a success does not reset failures, a burst is held at
//! the threshold, one table serves every site and survives SIGHUP, the client behind a trusted
//! proxy is the forwarded address, a failed reload shows, and timing does not tell users apart.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

const ADMIN_PASSWORD: &str = "admin-secret";
const MALLORY_PASSWORD: &str = "mallory-own";

/// A tapped recording upstream and guard with users `admin` and `mallory` (the attacker's own
/// account), locking out after `failures`, plus `extra` flags.
async fn start(failures: &str, extra: &[&str]) -> (Upstream, Guard, TempDir) {
    let dir = TempDir::new("lockout");
    let users = dir.path().join("users.htpasswd");
    adduser(&users, "admin", ADMIN_PASSWORD);
    adduser(&users, "mallory", MALLORY_PASSWORD);
    let up = Upstream::start().await;
    let authority = up.authority();
    let users_arg = users.display().to_string();
    let mut args = vec![
        "--upstream",
        &authority,
        "--users",
        &users_arg,
        "--lockout-failures",
        failures,
    ];
    args.extend_from_slice(extra);
    let g = Guard::start(&args);
    (up, g, dir)
}

/// One GET with `auth` (and `more` header lines) on a fresh TLS connection: the status.
async fn get_as(c: &Client, host: &str, auth: &str, more: &[&str]) -> u16 {
    let auth = format!("Authorization: {auth}");
    let host = format!("Host: {host}");
    let mut lines = vec![host.as_str(), auth.as_str(), "Connection: close"];
    lines.extend_from_slice(more);
    let (resps, _) = send_raw(c, head("GET /api/x HTTP/1.1", &lines).as_bytes(), 1, Duration::ZERO).await;
    resps.first().map_or(0, |r| r.status)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_success_of_the_attackers_own_account_does_not_reset_the_count() {
    let (up, g, _dir) = start("10", &[]).await;
    let c = g.client();
    let m = up.mark();
    let mut statuses = Vec::new();
    let mut own = Vec::new();
    for i in 1..=30 {
        statuses.push(get_as(&c, "localhost", &basic("admin", &format!("guess{i}")), &[]).await);
        if i % 9 == 0 {
            own.push(get_as(&c, "localhost", &basic("mallory", MALLORY_PASSWORD), &[]).await);
        }
    }
    // Ten failures lock the address, whatever succeeded in between.
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 20], "{statuses:?}");
    assert_eq!(own, [200, 429, 429], "mallory's own logins: {own:?}");
    let seen = up.exactly_one_since(m, "only mallory's first login reaches the upstream");
    assert_eq!(seen.all("x-forwarded-user"), vec!["mallory"]);
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_concurrent_guesses_is_held_at_the_threshold() {
    let (up, g, _dir) = start("5", &[]).await;
    let m = up.mark();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let c = g.client();
        tasks.push(tokio::spawn(async move {
            get_as(&c, "localhost", &basic("admin", &format!("burst{i}")), &[]).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    // Every check takes its strike before bcrypt runs, so no more than the threshold run.
    assert!((1..=5).contains(&checked), "{checked} passwords checked: {statuses:?}");
    assert_eq!(checked + refused, 40, "{statuses:?}");
    up.assert_nothing_since(m, "no guess reached the upstream");
    let right = get_as(&g.client(), "localhost", &basic("admin", ADMIN_PASSWORD), &[]).await;
    assert_eq!(right, 429, "the address is locked even for the right password");
    up.assert_nothing_since(m, "a locked-out login reached the upstream");
}

/// Two sites by Host, one users file, written as a configuration file.
fn two_sites(dir: &Path, up: &Upstream, failures: u32) -> std::path::PathBuf {
    let users = dir.join("users.htpasswd");
    adduser(&users, "admin", ADMIN_PASSWORD);
    let cfg = dir.join("guard.yaml");
    std::fs::write(
        &cfg,
        format!(
            "auth:\n  users: {users}\n  lockout:\n    failures: {failures}\nsites:\n  - name: one\n    hosts: [one.test]\n    upstream: {up}\n  - name: two\n    hosts: [two.test]\n    upstream: {up}\n",
            users = users.display(),
            up = up.authority(),
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread")]
async fn one_lockout_table_for_every_site_kept_across_sighup() {
    let dir = TempDir::new("lockout-sites");
    let up = Upstream::start().await;
    let cfg = two_sites(dir.path(), &up, 6);
    let g = Guard::start(&["--config", cfg.to_str().unwrap()]);
    let c = g.client();
    let m = up.mark();
    // Three failures on each site: six from one client.
    for i in 0..3 {
        assert_eq!(
            get_as(&c, "one.test", &basic("admin", &format!("a{i}")), &[]).await,
            401
        );
        assert_eq!(
            get_as(&c, "two.test", &basic("admin", &format!("b{i}")), &[]).await,
            401
        );
    }
    for host in ["one.test", "two.test"] {
        assert_eq!(
            get_as(&c, host, &basic("admin", ADMIN_PASSWORD), &[]).await,
            429,
            "{host}"
        );
    }
    // A SIGHUP rebuilds both sites (and re-reads the users file): the lockout stays.
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.stderr.text().contains("reloaded, 2 site(s)") {
        assert!(Instant::now() < deadline, "no reload logged:\n{}", g.stderr.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for host in ["one.test", "two.test"] {
        assert_eq!(
            get_as(&c, host, &basic("admin", ADMIN_PASSWORD), &[]).await,
            429,
            "{host} after SIGHUP"
        );
    }
    up.assert_nothing_since(m, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_lockout_counts_the_forwarded_client() {
    let (up, g, _dir) = start("10", &["--trusted-proxy", "127.0.0.1/32"]).await;
    let c = g.client();
    let m = up.mark();
    for i in 0..12 {
        let s = get_as(
            &c,
            "localhost",
            &basic("admin", &format!("g{i}")),
            &["X-Forwarded-For: 203.0.113.5"],
        )
        .await;
        assert_eq!(s, if i < 10 { 401 } else { 429 }, "guess {i}");
    }
    up.assert_nothing_since(m, "no guess reached the upstream");
    // Another user behind the same load balancer is not locked out.
    let ok = get_as(
        &c,
        "localhost",
        &basic("admin", ADMIN_PASSWORD),
        &["X-Forwarded-For: 203.0.113.6"],
    )
    .await;
    assert_eq!(ok, 200);
    let seen = up.exactly_one_since(m, "the other client's login");
    assert_eq!(seen.all("x-forwarded-user"), vec!["admin"]);
    assert_eq!(seen.all("x-forwarded-for"), vec!["203.0.113.6, 127.0.0.1"]);
    // The locked client cannot dodge by writing another address to the left of the one the
    // proxy appended, nor by a second header line before it.
    let m = up.mark();
    for more in [
        &["X-Forwarded-For: 198.51.100.1, 203.0.113.5"][..],
        &["X-Forwarded-For: 198.51.100.1", "X-Forwarded-For: 203.0.113.5"][..],
        &["X-Forwarded-For: 203.0.113.5"][..],
    ] {
        let s = get_as(&c, "localhost", &basic("admin", ADMIN_PASSWORD), more).await;
        assert_eq!(s, 429, "{more:?}");
    }
    up.assert_nothing_since(m, "the locked client got through");
}

/// The `/_guard/health` body.
async fn health(c: &Client) -> serde_json::Value {
    let (resps, _) = send_raw(
        c,
        head("GET /_guard/health HTTP/1.1", &["Host: localhost", "Connection: close"]).as_bytes(),
        1,
        Duration::ZERO,
    )
    .await;
    let r = resps.first().expect("a health response");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_tokens_file_at_reload_keeps_the_last_set_and_says_so() {
    let dir = TempDir::new("lockout-reload");
    let users = dir.path().join("users.htpasswd");
    adduser(&users, "admin", ADMIN_PASSWORD);
    let tokens = dir.path().join("tokens.json");
    let (code, out, err) = run_guard(&["token", "create", "ci", "--tokens", tokens.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let token = out
        .lines()
        .find(|l| l.starts_with("grd_"))
        .unwrap_or_else(|| panic!("no token printed: {out}"))
        .to_string();
    let up = Upstream::start().await;
    let g = Guard::start(&[
        "--upstream",
        &up.authority(),
        "--users",
        users.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let c = g.client();
    let h = health(&c).await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["auth"][0]["tokens_file"], "ok", "{h}");

    std::fs::write(&tokens, "{ not json").unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.stderr.text().contains("tokens NOT reloaded") {
        assert!(Instant::now() < deadline, "no error line:\n{}", g.stderr.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = health(&c).await;
    assert_eq!(h["status"], "ok", "load balancers keep the guard: {h}");
    assert_eq!(h["auth"][0]["tokens_file"], "stale", "{h}");
    assert_eq!(h["auth"][0]["users_file"], "ok", "{h}");
    let text = h.to_string();
    assert!(
        !text.contains("tokens.json") && !text.contains(&token),
        "health leaks: {text}"
    );
    let metrics = scrape(&metrics_addr(&g)).await;
    // The file watcher and the SIGHUP may both have tried: at least one failure is counted.
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("guard_auth_reload_errors_total "))
        .unwrap_or_else(|| panic!("no reload error metric:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(errors >= 1.0, "{metrics}");
    // The last good set is still in use.
    let m = up.mark();
    assert_eq!(get_as(&c, "localhost", &format!("Bearer {token}"), &[]).await, 200);
    up.exactly_one_since(m, "the token of the last good set");

    // Fixed: back to ok.
    std::fs::remove_file(&tokens).unwrap();
    let (code, out, err) = run_guard(&["token", "create", "ci2", "--tokens", tokens.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if health(&c).await["auth"][0]["tokens_file"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "health never went back to ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Median time of `n` logins with `auth` (each a wrong password, so none is cached).
async fn median_time(c: &Client, auth: &str, want: u16, n: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(get_as(c, "localhost", auth, &[]).await, want, "{auth}");
        times.push(t.elapsed());
    }
    times.sort();
    times[n / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_cheap_hash_users_take_as_long_as_the_costliest_entry() {
    let dir = TempDir::new("lockout-timing");
    let users = dir.path().join("users.htpasswd");
    let (code, out, err) = run_guard(
        &[
            "adduser",
            "admin",
            "--users",
            users.to_str().unwrap(),
            "--password-stdin",
            "--cost",
            "12",
        ],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    assert_eq!(code, 0, "{out}{err}");
    adduser(&users, "cheap", "cheap-pw");
    // `{SHA}` of "password", as `htpasswd -s` writes it.
    let mut text = std::fs::read_to_string(&users).unwrap();
    text.push_str("sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
    std::fs::write(&users, text).unwrap();
    let up = Upstream::start().await;
    let g = Guard::start(&[
        "--upstream",
        &up.authority(),
        "--users",
        users.to_str().unwrap(),
        "--lockout-failures",
        "0",
    ]);
    let c = g.client();
    let m = up.mark();
    let n = 5;
    let top = median_time(&c, &basic("admin", "wrong"), 401, n).await;
    let floor = top / 2;
    for (who, auth) in [
        ("an unknown user", basic("nobody", "wrong")),
        ("a {SHA} user", basic("sha", "wrong")),
        ("a cost-4 bcrypt user", basic("cheap", "wrong")),
    ] {
        let t = median_time(&c, &auth, 401, n).await;
        assert!(t >= floor, "{who}: {t:?}, the cost-12 entry {top:?}");
    }
    up.assert_nothing_since(m, "no wrong password reached the upstream");
    // A right password on a cheap hash is just as slow the first time (then it is cached).
    let t = Instant::now();
    assert_eq!(get_as(&c, "localhost", &basic("sha", "password"), &[]).await, 200);
    let first = t.elapsed();
    assert!(first >= floor, "a {{SHA}} login: {first:?}, the cost-12 entry {top:?}");
    let seen = up.exactly_one_since(m, "the sha login");
    assert_eq!(seen.all("x-forwarded-user"), vec!["sha"]);
}
