//! End-to-end tests with a real `mlflow server` behind guard and the real MLflow Python client
//! (`tests/mlflow_client.py`): a run with params, metrics and a 50 MiB artifact goes through
//! guard and reads back byte-exact without authentication, with a username and password, and with
//! a bearer token; a wrong password fails at once and nothing reaches MLflow; the UI's own
//! writes work under a host name other than localhost, and a page of another origin gets 403.
//!
//! Each test owns its MLflow server (a few seconds to start) and its guard. guard logs JSON here
//! so the tests can read its access log: what reached guard, as whom, and how it was answered.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::mlflow::{run_client, venv, ClientRun, MlflowServer};
use common::*;

/// The artifact a roundtrip uploads and downloads.
const ARTIFACT_BYTES: u64 = 50 * 1024 * 1024;

/// What `guard adduser` writes, and what the client sends as Basic credentials.
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
/// The name `guard token create` gives the token.
const TOKEN_NAME: &str = "ci-pipeline";

/// The client environment that points at guard and trusts its self-signed CA.
fn via_guard(g: &Guard) -> Vec<(&'static str, String)> {
    vec![
        ("MLFLOW_TRACKING_URI", format!("https://localhost:{}", g.addr.port())),
        ("MLFLOW_TRACKING_SERVER_CERT_PATH", g.ca().display().to_string()),
    ]
}

fn run(venv: &std::path::Path, args: &[&str], env: &[(&'static str, String)]) -> ClientRun {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_client(venv, args, &env)
}

/// Runs the roundtrip mode and checks its summary: success, sizes, and equal sha256 both ways.
/// `what` names the credentials in the timing line.
fn roundtrip(venv: &std::path::Path, what: &str, env: &[(&'static str, String)]) -> (ClientRun, serde_json::Value) {
    let bytes = ARTIFACT_BYTES.to_string();
    let r = run(venv, &["roundtrip", &bytes], env);
    r.assert_success(what);
    let s = r.json();
    assert_eq!(s["artifact_bytes"], ARTIFACT_BYTES, "{r}");
    assert_eq!(s["sha256_downloaded"], s["sha256_uploaded"], "{r}");
    assert_eq!(s["sha256_uploaded"].as_str().map(str::len), Some(64), "{r}");
    assert_eq!(s["metric_steps"], 10, "{r}");
    eprintln!(
        "roundtrip ({what}) of a {} MiB artifact: {:.2?} wall (python imports {}s, client work {}s: \
         log {}s, upload {}s, read back {}s, download {}s)",
        ARTIFACT_BYTES >> 20,
        r.elapsed,
        s["import_s"],
        s["elapsed_s"],
        s["log_s"],
        s["upload_s"],
        s["read_s"],
        s["download_s"]
    );
    (r, s)
}

/// guard's access log records (it must run with `--log-format json`). A record is written when
/// its response has been sent, so it can trail the client's exit: wait until none has been
/// added for a moment.
fn access_log(g: &Guard) -> Vec<serde_json::Value> {
    let read = || -> Vec<serde_json::Value> {
        g.stderr
            .text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "guard::access")
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = read();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let again = read();
        if again.len() == log.len() || Instant::now() > deadline {
            return again;
        }
        log = again;
    }
}

/// Files under `dir` named `name`, with their sizes.
fn find_files(dir: &std::path::Path, name: &str) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find_files(&path, name));
        } else if entry.file_name() == name {
            found.push((path, entry.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
    found
}

/// A field of an access record, whether the JSON layout flattens fields or nests them.
fn field<'a>(rec: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    match rec.get(key) {
        Some(v) => v,
        None => &rec["fields"][key],
    }
}

/// A numeric field that may be logged as a number or a string (`"12.5"`; `"-"` is `None`).
fn number(rec: &serde_json::Value, key: &str) -> Option<f64> {
    let v = field(rec, key);
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Checks that the artifact really went through guard: one request carried all of it up, one
/// carried all of it down.
fn assert_artifact_passed_through(log: &[serde_json::Value]) {
    let carried = |dir: &str| {
        log.iter()
            .filter(|r| {
                field(r, "path")
                    .as_str()
                    .is_some_and(|p| p.contains("/mlflow-artifacts/"))
            })
            .filter(|r| number(r, dir) == Some(ARTIFACT_BYTES as f64))
            .count()
    };
    assert_eq!(
        carried("bytes_in"),
        1,
        "one upload of the whole artifact through guard: {log:#?}"
    );
    assert_eq!(
        carried("bytes_out"),
        1,
        "one download of the whole artifact through guard: {log:#?}"
    );
}

/// The users and tokens files of one guard, with `USER` and a token named `TOKEN_NAME`.
struct Credentials {
    _dir: TempDir,
    users: PathBuf,
    tokens: PathBuf,
    token: String,
    /// Wall time of `guard adduser`: about one bcrypt hash at the user's cost.
    adduser_time: Duration,
}

impl Credentials {
    /// `cost` is the bcrypt cost for `guard adduser --cost`; `None` keeps guard's default.
    fn new(cost: Option<u32>) -> Credentials {
        let dir = TempDir::new("mlflow-auth");
        let users = dir.path().join("users");
        let tokens = dir.path().join("tokens");
        let (dir_s, users_s, tokens_s) = (
            dir.path().to_str().unwrap(),
            users.to_str().unwrap(),
            tokens.to_str().unwrap(),
        );
        let cost = cost.map(|c| c.to_string());
        let mut adduser = vec![
            "adduser",
            USER,
            "--state-dir",
            dir_s,
            "--users",
            users_s,
            "--password-stdin",
        ];
        if let Some(c) = &cost {
            adduser.extend(["--cost", c.as_str()]);
        }
        let started = Instant::now();
        let (code, out, err) = run_guard(&adduser, Some(&format!("{PASSWORD}\n")));
        let adduser_time = started.elapsed();
        assert_eq!(code, 0, "guard adduser failed\nstdout:\n{out}\nstderr:\n{err}");
        let (code, out, err) = run_guard(
            &[
                "token",
                "create",
                TOKEN_NAME,
                "--state-dir",
                dir_s,
                "--tokens",
                tokens_s,
            ],
            None,
        );
        assert_eq!(code, 0, "guard token create failed\nstdout:\n{out}\nstderr:\n{err}");
        let token = out
            .split_whitespace()
            .find(|w| w.starts_with("grd_"))
            .unwrap_or_else(|| panic!("no grd_ token in guard token create's output:\n{out}"))
            .to_string();
        Credentials {
            _dir: dir,
            users,
            tokens,
            token,
            adduser_time,
        }
    }

    /// `guard serve` in front of `mlflow`, requiring these credentials.
    fn guard(&self, mlflow: &MlflowServer) -> Guard {
        Guard::start(&[
            "--upstream",
            &mlflow.upstream(),
            "--users",
            self.users.to_str().unwrap(),
            "--tokens",
            self.tokens.to_str().unwrap(),
            "--log-format",
            "json",
        ])
    }
}

#[test]
fn mlflow_client_logs_and_reads_back_a_run_through_guard() {
    let Some(venv) = venv() else { return };
    let mlflow = MlflowServer::start(&venv);
    let g = Guard::start(&[
        "--upstream",
        &mlflow.upstream(),
        "--dangerous-no-auth",
        "--log-format",
        "json",
    ]);

    roundtrip(&venv, "no auth", &via_guard(&g));

    let log = access_log(&g);
    assert!(log.len() >= 10, "the client's requests went through guard: {log:#?}");
    for r in &log {
        let status = number(r, "status").unwrap_or(0.0);
        assert!((200.0..300.0).contains(&status), "every request succeeded: {r}");
    }
    assert_artifact_passed_through(&log);
    // And MLflow stored it where --artifacts-destination says.
    let stored = find_files(&mlflow.dir().join("artifacts"), "blob.bin");
    assert_eq!(stored.len(), 1, "one stored artifact: {stored:?}");
    assert_eq!(stored[0].1, ARTIFACT_BYTES, "{stored:?}");
}

#[test]
fn mlflow_client_works_with_username_and_password() {
    let Some(venv) = venv() else { return };
    let mlflow = MlflowServer::start(&venv);
    // guard's default bcrypt cost (12): a whole run is fast only because guard does not hash
    // the password on every request.
    let creds = Credentials::new(None);
    let g = creds.guard(&mlflow);

    let mut env = via_guard(&g);
    env.push(("MLFLOW_TRACKING_USERNAME", USER.into()));
    env.push(("MLFLOW_TRACKING_PASSWORD", PASSWORD.into()));
    let (r, _) = roundtrip(&venv, "username and password", &env);

    let log = access_log(&g);
    assert!(log.len() >= 10, "the client's requests went through guard: {log:#?}");
    for rec in &log {
        assert_eq!(field(rec, "user"), USER, "every request authenticated as {USER}: {rec}");
        let status = number(rec, "status").unwrap_or(0.0);
        assert!((200.0..300.0).contains(&status), "every request succeeded: {rec}");
    }
    assert_artifact_passed_through(&log);

    // Time guard spent on each request besides waiting for MLflow: with a cost-12 hash per
    // request it would be about one `adduser`; with the cache, the typical request costs almost
    // nothing. The median ignores the first (hashing) request and the artifact bodies.
    let mut own_ms: Vec<f64> = log
        .iter()
        .filter_map(|rec| Some(number(rec, "duration_ms")? - number(rec, "upstream_ms")?))
        .collect();
    own_ms.sort_by(f64::total_cmp);
    let median_ms = own_ms[own_ms.len() / 2];
    let hash_ms = creds.adduser_time.as_secs_f64() * 1000.0;
    eprintln!(
        "username and password at bcrypt cost 12: {} requests in {:.2?} (whole client process); \
         guard's own time per request: median {median_ms:.1} ms, max {:.1} ms; \
         one `guard adduser` (one hash): {hash_ms:.0} ms",
        log.len(),
        r.elapsed,
        own_ms.last().unwrap()
    );
    assert!(
        median_ms < hash_ms / 2.0,
        "the typical request must not pay a bcrypt hash (median {median_ms:.1} ms, hash ~{hash_ms:.0} ms)"
    );
}

#[test]
fn mlflow_client_works_with_a_bearer_token() {
    let Some(venv) = venv() else { return };
    let mlflow = MlflowServer::start(&venv);
    let creds = Credentials::new(Some(4));
    let g = creds.guard(&mlflow);

    // Only the token: no username or password in the client's environment.
    let mut env = via_guard(&g);
    env.push(("MLFLOW_TRACKING_TOKEN", creds.token.clone()));
    roundtrip(&venv, "bearer token", &env);

    let log = access_log(&g);
    assert!(log.len() >= 10, "the client's requests went through guard: {log:#?}");
    for rec in &log {
        let who = field(rec, "user").as_str().unwrap_or("-");
        assert!(
            who.contains(TOKEN_NAME),
            "every request authenticated by the token {TOKEN_NAME}: {rec}"
        );
        let status = number(rec, "status").unwrap_or(0.0);
        assert!((200.0..300.0).contains(&status), "every request succeeded: {rec}");
    }
    assert_artifact_passed_through(&log);
}

#[test]
fn wrong_password_fails_at_once_and_creates_nothing() {
    let Some(venv) = venv() else { return };
    let mlflow = MlflowServer::start(&venv);
    // A low bcrypt cost, so the time limit below measures retries, not a loaded CPU hashing.
    let creds = Credentials::new(Some(4));
    let g = creds.guard(&mlflow);

    let experiments_before = mlflow.count_experiments();

    let mut env = via_guard(&g);
    env.push(("MLFLOW_TRACKING_USERNAME", USER.into()));
    env.push(("MLFLOW_TRACKING_PASSWORD", "wrong horse battery staple".into()));
    let r = run(&venv, &["expect-auth-failure"], &env);
    r.assert_success("expect-auth-failure");
    let s = r.json();
    eprintln!(
        "wrong password rejected after {}s in the client ({:.2?} for the whole process)",
        s["elapsed_s"], r.elapsed
    );
    // The client raises guard's JSON error as is: a RestException, not a retried 5xx.
    assert_eq!(s["exception"], "RestException", "{r}");
    assert_eq!(s["error_code"], "UNAUTHENTICATED", "{r}");
    let elapsed = s["elapsed_s"].as_f64().expect("elapsed_s");
    assert!(
        elapsed < 2.0,
        "a wrong password must fail at once, not after retries: {elapsed}s\n{r}"
    );

    // Exactly one request reached guard (no retry storm), and it was refused.
    let log = access_log(&g);
    assert_eq!(log.len(), 1, "one request, no retries: {log:#?}");
    assert_eq!(number(&log[0], "status"), Some(401.0), "{log:#?}");
    assert!(
        number(&log[0], "upstream_ms").is_none(),
        "nothing was forwarded: {log:#?}"
    );

    // Nothing reached MLflow, and its store is unchanged.
    assert_eq!(
        mlflow.count_experiments(),
        experiments_before,
        "no experiment was created"
    );
    let seen = mlflow.api_requests();
    assert!(
        !seen.is_empty(),
        "mlflow's access log shows the direct experiment counts"
    );
    assert!(
        seen.iter().all(|l| l.contains("/experiments/search")),
        "only the direct counts reached mlflow: {seen:#?}"
    );
}

/// Sends one HTTP/1.1 request as raw bytes to `addr` (plain TCP) and returns the status line's
/// code and the body.
fn plain_request(addr: &str, bytes: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

/// The MLflow UI's "create experiment" as the browser sends it from `origin` to `host`.
fn ui_create_experiment(host: &str, origin: &str, name: &str, auth: Option<&str>) -> Vec<u8> {
    let body = format!("{{\"name\":\"{name}\"}}");
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!(
        "POST /ajax-api/2.0/mlflow/experiments/create HTTP/1.1\r\nHost: {host}\r\n{auth}Origin: {origin}\r\n\
         Sec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn the_ui_can_write_under_any_host_name_and_pages_of_other_origins_cannot() {
    let Some(venv) = venv() else { return };
    let mlflow = MlflowServer::start(&venv);
    let creds = Credentials::new(Some(4));
    let g = creds.guard(&mlflow);
    let host = format!("mlflow.test:{}", g.addr.port());
    let own = format!("https://{host}");
    let before = mlflow.count_experiments();

    // What MLflow does on its own with the browser's Origin: the reason for the check at the edge.
    let (status, body) = plain_request(
        &mlflow.upstream(),
        &ui_create_experiment(&mlflow.upstream(), &own, "direct", None),
    );
    assert_eq!(status, 403, "MLflow refuses a non-localhost Origin itself: {body}");
    assert!(body.contains("Cross-origin"), "{body}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let send = |bytes: Vec<u8>| {
        let c = g.client();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tls = c.tls().await;
            tls.write_all(&bytes).await.unwrap();
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let auth = basic(USER, PASSWORD);

    // Through guard, from the site's own page under a real host name: created.
    let resp = send(ui_create_experiment(&host, &own, "from-the-ui", Some(&auth)));
    assert!(resp.starts_with("HTTP/1.1 200"), "the UI's write goes through: {resp}");
    assert!(resp.contains("experiment_id"), "{resp}");
    assert_eq!(mlflow.count_experiments(), before + 1, "one experiment created");

    // From a page of another origin, with the user's credentials replayed: refused by guard.
    let resp = send(ui_create_experiment(&host, "https://evil.test", "forged", Some(&auth)));
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("PERMISSION_DENIED"), "{resp}");
    assert_eq!(mlflow.count_experiments(), before + 1, "nothing more was created");
    // MLflow saw two creates: the direct one it refused, and the UI's through guard.
    let creates: Vec<String> = mlflow
        .api_requests()
        .into_iter()
        .filter(|l| l.contains("/experiments/create"))
        .collect();
    assert_eq!(creates.len(), 2, "the forged write never reached MLflow: {creates:#?}");
}
