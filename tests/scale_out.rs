//! Scale-out end to end: three `mlflow server`s over one PostgreSQL and one artifact directory,
//! behind two guards, with the real MLflow client writing runs through both while one server is
//! SIGKILLed mid-run and restarted on its port. Checks that every client request succeeds but one
//! the killed server was answering (the client's retries are off, so a 502 cannot hide), that the
//! restarted server is back in the rotation, that PostgreSQL holds exactly what the clients
//! logged, none of it twice, and that an artifact upload in flight to the killed server ends in a
//! clean error and is never sent to another server.

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::mlflow::{db_upgrade, run_client, venv, ClientRun, MlflowServer, Store};
use common::postgres::Postgres;
use common::*;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};

/// The longest a workload client logs runs; the test stops it sooner, once the restarted server
/// has taken requests through guard for `AFTER_RESTART`.
const WORKLOAD_SECONDS: u32 = 120;
const AFTER_RESTART: Duration = Duration::from_secs(3);

/// The upload's declared size; it is sent slowly and never finishes before the kill.
const UPLOAD_BYTES: u64 = 256 * 1024 * 1024;
const UPLOAD_CHUNK: usize = 64 * 1024;
/// Between chunks: about 3 MiB/s, so the server is mid-body for many seconds.
const UPLOAD_PACE: Duration = Duration::from_millis(20);
/// Where the upload goes under the shared artifact directory.
const UPLOAD_DIR: &str = "scale-out";
/// What MLflow's local artifact repository names the file it streams an upload into before it
/// renames it into place (`_TEMP_ARTIFACT_PREFIX` in `local_artifact_repo.py`).
const STAGING_PREFIX: &str = ".artifact.uploading.";

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

/// The `guard serve` upstream flags every guard gets: all three servers, round robin, health
/// checked every second (so the restarted server is back within about two seconds).
fn upstream_flags(all: &[String]) -> Vec<String> {
    let mut flags = Vec::new();
    for upstream in all {
        flags.extend(["--upstream".to_string(), upstream.clone()]);
    }
    flags.extend(["--health-check-interval".to_string(), "1s".to_string()]);
    flags
}

/// A guard in front of `upstreams` with the test's one user, lockout off (the workload makes
/// many requests from one address) and metrics on a free port.
fn start_guard(users: &Path, upstreams: &[String]) -> Guard {
    let mut args: Vec<&str> = upstreams.iter().map(String::as_str).collect();
    args.extend([
        "--users",
        users.to_str().unwrap(),
        "--lockout-failures",
        "0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    Guard::start(&args)
}

/// The client environment for one guard: its CA, the test's user, and no client retries, so a
/// 502 or a reset is an error the workload counts instead of a request sent again.
fn client_env(g: &Guard) -> Vec<(&'static str, String)> {
    vec![
        ("MLFLOW_TRACKING_URI", format!("https://localhost:{}", g.addr.port())),
        ("MLFLOW_TRACKING_SERVER_CERT_PATH", g.ca().display().to_string()),
        ("MLFLOW_TRACKING_USERNAME", USER.to_string()),
        ("MLFLOW_TRACKING_PASSWORD", PASSWORD.to_string()),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0".to_string()),
    ]
}

/// Seconds since the epoch, the clock the Python client stamps its failures with.
fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A request body fed from a channel: the test decides when each chunk goes, and sees the
/// channel close when guard stops reading the body.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// The staging files of uploads under `dir`, with their sizes.
fn staging_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(STAGING_PREFIX))
        .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect()
}

/// Waits up to `timeout` for `cond`; whether it held.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` of a guard.
fn scrape_guard(rt: &tokio::runtime::Runtime, g: &Guard) -> String {
    rt.block_on(scrape(&metrics_addr(g)))
}

/// The sum of the samples of `metric` whose labels include `label`.
fn metric_sum(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What one workload client logged, read from its summary and checked against PostgreSQL.
struct Workload {
    run: ClientRun,
    summary: serde_json::Value,
}

impl Workload {
    fn ok(&self, kind: &str) -> u64 {
        self.summary["ok"][kind]
            .as_u64()
            .unwrap_or_else(|| panic!("no ok.{kind}:\n{}", self.run))
    }

    fn failures(&self) -> &[serde_json::Value] {
        self.summary["failures"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn experiment_id(&self) -> u64 {
        self.summary["experiment_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no experiment id:\n{}", self.run))
    }
}

#[test]
fn three_mlflow_servers_behind_two_guards_lose_no_request_and_duplicate_nothing_when_one_is_killed() {
    let t0 = Instant::now();
    let Some(venv) = venv() else { return };
    let Some(pg) = Postgres::start() else { return };
    db_upgrade(&venv, &pg.uri());
    let artifacts = TempDir::new("scale-out-artifacts");
    let store = Store::Shared {
        uri: pg.uri(),
        artifacts: artifacts.path().to_path_buf(),
    };
    // Started side by side: each takes several seconds, mostly Python imports.
    let mut servers: Vec<MlflowServer> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..3)
            .map(|_| s.spawn(|| MlflowServer::start_with(&venv, &store, None)))
            .collect();
        starting.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let upstreams: Vec<String> = servers.iter().map(MlflowServer::upstream).collect();
    eprintln!(
        "postgres, schema and three mlflow servers up after {:.1?}",
        t0.elapsed()
    );

    let auth = TempDir::new("scale-out-users");
    let users = auth.path().join("users");
    adduser(&users, USER, PASSWORD);
    let workload_guards = [
        start_guard(&users, &upstream_flags(&upstreams)),
        start_guard(&users, &upstream_flags(&upstreams)),
    ];
    // The upload has a guard of its own, so its metrics count nothing else.
    let upload_guard = start_guard(&users, &upstream_flags(&upstreams));

    // The clients stop when this file appears.
    let stop = auth.path().join("stop");
    let clients: Vec<_> = workload_guards
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let env = client_env(g);
            let venv = venv.clone();
            let stop = stop.display().to_string();
            std::thread::spawn(move || {
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let seconds = WORKLOAD_SECONDS.to_string();
                run_client(&venv, &["workload", &seconds, &format!("w{i}"), &stop], &env)
            })
        })
        .collect();
    // The kill must land mid-run: wait until both clients are writing.
    let started = wait_until(Duration::from_secs(60), || {
        pg.count(
            "SELECT count(DISTINCT e.experiment_id) FROM runs r JOIN experiments e \
             ON r.experiment_id = e.experiment_id WHERE e.name LIKE 'scale-out-w%'",
        ) == 2
    });
    assert!(started, "the workload clients wrote no run within 60 s");

    // --- an upload in flight to the server that is then killed -----------------------------
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = upload_guard.client();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let sender = rt.spawn(async move {
        let chunk = Bytes::from(vec![b'x'; UPLOAD_CHUNK]);
        let mut sent = 0u64;
        while sent < UPLOAD_BYTES {
            // An error means guard dropped the body: it stopped forwarding the upload.
            if tx.send(chunk.clone()).await.is_err() {
                return sent;
            }
            sent += UPLOAD_CHUNK as u64;
            tokio::time::sleep(UPLOAD_PACE).await;
        }
        sent
    });
    let request = http::Request::put(format!("/api/2.0/mlflow-artifacts/artifacts/{UPLOAD_DIR}/upload.bin"))
        .header("host", "localhost")
        .header("authorization", basic(USER, PASSWORD))
        .header("content-type", "application/octet-stream")
        .header("content-length", UPLOAD_BYTES)
        .body(ChannelBody(rx).boxed())
        .unwrap();
    let response = rt.spawn(async move {
        let mut conn = client.h1().await;
        match conn.send_request(request).await {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(e.to_string()),
        }
    });
    let upload_dir = artifacts.path().join(UPLOAD_DIR);
    let receiving = wait_until(Duration::from_secs(30), || {
        staging_files(&upload_dir).iter().any(|(_, len)| *len >= 1 << 20)
    });
    assert!(receiving, "no server streamed 1 MiB of the upload within 30 s");
    let holders: Vec<usize> = (0..servers.len())
        .filter(|&i| servers[i].has_open_file_under(&upload_dir))
        .collect();
    assert_eq!(holders.len(), 1, "exactly one server receives the upload: {holders:?}");
    let victim = holders[0];
    let victim_port = servers[victim].addr.port();

    let kill_start = unix_now();
    servers[victim].kill_hard();
    let kill_end = unix_now();
    let killed_at = Instant::now();
    eprintln!(
        "killed mlflow server {victim} (127.0.0.1:{victim_port}) mid-upload, {:.1?} into the test",
        t0.elapsed()
    );

    let answer = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), response).await })
        .expect("the upload ends within 30 s of the kill")
        .unwrap();
    match &answer {
        Ok(status) => assert_eq!(*status, 502, "the upload cut off by the kill gets guard's 502"),
        // A reset or a closed connection is a clean error too; a hang or a 2xx is not.
        Err(e) => eprintln!("the upload cut off by the kill ended with a connection error: {e}"),
    }
    let sent = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), sender).await })
        .expect("guard stops reading the upload's body within 30 s of the kill")
        .unwrap();
    assert!(sent < UPLOAD_BYTES, "the upload was never complete: {sent} bytes sent");
    // Another server that had been given the upload would have started a staging file of its
    // own, or finished the artifact. The killed server's file stays (nothing cleaned it up).
    assert!(
        !upload_dir.join("upload.bin").exists(),
        "no server completed the upload"
    );
    let staged = staging_files(&upload_dir);
    assert_eq!(
        staged.len(),
        1,
        "only the killed server ever received the upload: {staged:?}"
    );
    for (i, s) in servers.iter().enumerate().filter(|(i, _)| *i != victim) {
        assert!(!s.has_open_file_under(&upload_dir), "server {i} received the upload");
    }
    let upload_metrics = scrape_guard(&rt, &upload_guard);
    // This guard saw no other request: one attempt on one upstream, none on another (the
    // counter includes a retry on another upstream).
    let attempts = metric_sum(&upload_metrics, "guard_upstream_requests_total", "");
    assert_eq!(
        attempts, 1.0,
        "guard sent the upload to one upstream once:\n{upload_metrics}"
    );
    eprintln!(
        "upload: {answer:?} after {} MiB sent; guard's upstream errors: {}",
        sent >> 20,
        metric_sum(&upload_metrics, "guard_upstream_errors_total", "")
    );

    // --- the same port again, while the workload runs on -----------------------------------
    servers[victim] = MlflowServer::start_with(&venv, &store, Some(victim_port));
    let outage = killed_at.elapsed();
    eprintln!(
        "restarted mlflow server {victim} on 127.0.0.1:{victim_port} after {outage:.1?} down, {:.1?} into the test",
        t0.elapsed()
    );

    // The workload goes on until the restarted server has been back in guard's rotation for a
    // while.
    let back = wait_until(Duration::from_secs(30), || !servers[victim].api_requests().is_empty());
    let back_at = Instant::now();
    // A stretch of traffic through the restarted server, not a wait for anything.
    std::thread::sleep(AFTER_RESTART);
    std::fs::write(&stop, "").unwrap();
    let workloads: Vec<Workload> = clients
        .into_iter()
        .map(|c| {
            let run = c.join().unwrap();
            let summary = run.json();
            Workload { run, summary }
        })
        .collect();

    // --- every request succeeded, or was in flight on the killed server --------------------
    // guard sends a request to another server only when connecting failed, never once bytes
    // went out, so a request the killed server was answering fails with a 502; that is the
    // whole allowance: one per client at most (each sends one request at a time), begun before
    // the kill and ended after it. Every request begun after the kill must succeed.
    for (i, w) in workloads.iter().enumerate() {
        let failures = w.failures();
        assert!(
            failures.len() <= 1,
            "client {i} had more than the request in flight at the kill fail:\n{}",
            w.run
        );
        for f in failures {
            let (start, end) = (f["start"].as_f64().unwrap(), f["end"].as_f64().unwrap());
            assert!(
                start <= kill_end && end >= kill_start && f["status"] == 502,
                "client {i}: a request failed that was not in flight at the kill \
                 (kill between {kill_start:.3} and {kill_end:.3}): {f}\n{}",
                w.run
            );
        }
        if failures.is_empty() {
            w.run.assert_success(&format!("workload client {i}"));
        }
        assert!(
            w.ok("runs") >= 20,
            "client {i} made too few runs to mean anything:\n{}",
            w.run
        );
    }

    // --- PostgreSQL holds what the clients logged, nothing twice ---------------------------
    for (i, w) in workloads.iter().enumerate() {
        let exp = w.experiment_id();
        let in_runs = format!("SELECT run_uuid FROM runs WHERE experiment_id = {exp}");
        let stored = [
            (
                "runs",
                pg.count(&format!("SELECT count(*) FROM runs WHERE experiment_id = {exp}")),
            ),
            (
                "params",
                pg.count(&format!("SELECT count(*) FROM params WHERE run_uuid IN ({in_runs})")),
            ),
            (
                "metrics",
                pg.count(&format!("SELECT count(*) FROM metrics WHERE run_uuid IN ({in_runs})")),
            ),
            (
                "tags",
                pg.count(&format!(
                    "SELECT count(*) FROM tags WHERE run_uuid IN ({in_runs}) AND key NOT LIKE 'mlflow.%'"
                )),
            ),
        ];
        for (kind, count) in stored {
            // A request cut off by the kill may have been committed before its answer was lost.
            let cut_off = w.failures().iter().filter(|f| f["kind"] == kind).count() as u64;
            let ok = w.ok(kind);
            assert!(
                (ok..=ok + cut_off).contains(&count),
                "client {i}: PostgreSQL holds {count} {kind}, the client logged {ok} \
                 (and {cut_off} cut off by the kill)"
            );
        }
        let twice = [
            format!("SELECT name FROM runs WHERE experiment_id = {exp} GROUP BY name HAVING count(*) > 1"),
            format!(
                "SELECT run_uuid, key, step FROM metrics WHERE run_uuid IN ({in_runs}) \
                 GROUP BY run_uuid, key, step HAVING count(*) > 1"
            ),
            format!("SELECT run_uuid, key FROM params WHERE run_uuid IN ({in_runs}) GROUP BY run_uuid, key HAVING count(*) > 1"),
            format!("SELECT run_uuid, key FROM tags WHERE run_uuid IN ({in_runs}) GROUP BY run_uuid, key HAVING count(*) > 1"),
        ];
        for sql in twice {
            let dup = pg.query(&sql);
            assert!(dup.trim().is_empty(), "client {i}: stored twice ({sql}):\n{dup}");
        }
        eprintln!(
            "client {i}: {} requests in {} s, {} runs, {} params, {} metrics, {} tags, \
             {} failed (in flight at the kill); PostgreSQL agrees",
            w.summary["requests"],
            w.summary["seconds"],
            w.ok("runs"),
            w.ok("params"),
            w.ok("metrics"),
            w.ok("tags"),
            w.failures().len()
        );
    }

    // --- every server took part, the restarted one included --------------------------------
    assert!(
        back,
        "the restarted server got no request through guard within 30 s of its restart"
    );
    let served = servers[victim].api_requests().len();
    eprintln!(
        "the restarted server answered {served} API requests, the first {:.1?} after it was up again",
        back_at.duration_since(killed_at) - outage
    );
    for (i, g) in workload_guards.iter().enumerate() {
        let text = scrape_guard(&rt, g);
        for upstream in &upstreams {
            let label = format!("upstream=\"http://{upstream}\"");
            assert!(
                metric_sum(&text, "guard_upstream_requests_total", &label) > 0.0,
                "guard {i} sent nothing to {upstream}:\n{text}"
            );
            assert_eq!(
                metric_sum(&text, "guard_upstream_healthy", &label),
                1.0,
                "guard {i} counts {upstream} healthy again:\n{text}"
            );
        }
    }
    // A graceful stop of three uvicorns takes seconds and shows nothing here.
    for s in &mut servers {
        s.kill_hard();
    }
    eprintln!("scale-out test done in {:.1?}", t0.elapsed());
}
