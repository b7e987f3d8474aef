//! The supervisord config `guard deploy supervisor` writes, run for real: supervisord starts a
//! real `mlflow server` and guard, the MLflow client logs a run through guard, a killed guard is
//! started again, and stopping supervisord stops both.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mlflow::{run_client, venv};
use common::*;

fn ctl(conf: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new("supervisorctl")
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn pid_of(conf: &Path, program: &str) -> Option<u32> {
    let (_, out) = ctl(conf, &["pid", program]);
    out.trim().parse().ok().filter(|p| *p > 0)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

struct Supervisord(std::process::Child, std::path::PathBuf);

impl Drop for Supervisord {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            for log in ["supervisord.log", "guard.log", "mlflow.log"] {
                let text = std::fs::read_to_string(self.1.join(log)).unwrap_or_default();
                eprintln!("--- {log}:\n{}", common::mlflow::tail(&text, 40));
            }
        }
    }
}

/// `guard deploy supervisor` into `dir` (state under `dir/stack`) with guard and mlflow on the
/// given ports, with `--mlflow-permissions` when `permissions`.
fn deploy_into(dir: &Path, venv: &Path, guard_port: u16, mlflow_port: u16, permissions: bool) {
    let mut opts = guard_deploy::DeployOptions::new(guard_deploy::Target::Supervisor);
    opts.out_dir = dir.to_path_buf();
    opts.guard_bin = Some(guard_bin().into());
    opts.mlflow_bin = Some(venv.join("bin/mlflow"));
    opts.base_dir = Some(dir.join("stack"));
    opts.mlflow_permissions = permissions;
    let (deployment, mut layout) = guard_deploy::validate(&opts).unwrap();
    layout.guard_listen = Some(([127, 0, 0, 1], guard_port).into());
    layout.mlflow_port = mlflow_port;
    guard_deploy::deploy(&deployment, &layout).unwrap();
}

/// The deploy's next step: a user (password `s3cret`) in guard's state directory.
fn adduser_in(state: &Path, user: &str) {
    let (code, out, err) = run_guard(
        &[
            "adduser",
            user,
            "--state-dir",
            state.to_str().unwrap(),
            "--password-stdin",
            "--cost",
            "4",
        ],
        Some("s3cret\n"),
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// supervisord in the foreground on `conf`; its logs are in `base`.
fn start_supervisord(conf: &Path, base: &Path) -> Supervisord {
    let child = Command::new("supervisord")
        .arg("-n")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Supervisord(child, base.to_path_buf())
}

#[test]
fn supervisord_runs_mlflow_and_guard_restarts_guard_and_stops_both() {
    let install = "apt-get install -y supervisor";
    if require_program(&["supervisord"], install).is_none() || require_program(&["supervisorctl"], install).is_none() {
        return;
    }
    let Some(venv) = venv() else { return };
    let dir = TempDir::new("supervisor");
    let base = dir.path().join("stack");
    let (guard_port, mlflow_port) = (unused_port(), unused_port());
    deploy_into(dir.path(), &venv, guard_port, mlflow_port, false);
    let conf = dir.path().join("supervisord.conf");
    let state = base.join("guard");
    adduser_in(&state, "alice");
    let mut sup = start_supervisord(&conf, &base);
    let listen = format!("127.0.0.1:{guard_port}");
    let started = wait_for("guard healthy under supervisord", Duration::from_secs(120), || {
        run_guard(&["healthcheck", "--listen", &listen], None).0 == 0
    });
    eprintln!("guard healthy {started:?} after supervisord started");

    let uri = format!("https://localhost:{guard_port}");
    let ca = state.join("tls/ca.pem");
    let ca = ca.to_str().unwrap();
    let env = [
        ("MLFLOW_TRACKING_URI", uri.as_str()),
        ("MLFLOW_TRACKING_SERVER_CERT_PATH", ca),
        ("MLFLOW_TRACKING_USERNAME", "alice"),
        ("MLFLOW_TRACKING_PASSWORD", "s3cret"),
    ];
    // mlflow may still be migrating when guard is up: the client retries 502s itself.
    let run = run_client(&venv, &["roundtrip", "1048576"], &env);
    run.assert_success("a run logged through guard under supervisord");

    let guard_pid = pid_of(&conf, "guard").expect("guard runs");
    let mlflow_pid = pid_of(&conf, "mlflow").expect("mlflow runs");
    assert!(Command::new("kill")
        .arg("-KILL")
        .arg(guard_pid.to_string())
        .status()
        .unwrap()
        .success());
    let back = wait_for("guard restarted", Duration::from_secs(15), || {
        pid_of(&conf, "guard").is_some_and(|p| p != guard_pid)
            && run_guard(&["healthcheck", "--listen", &listen], None).0 == 0
    });
    eprintln!("guard was serving again {back:?} after SIGKILL");
    assert!(back < Duration::from_secs(10), "restart took {back:?}");
    let new_guard = pid_of(&conf, "guard").unwrap();

    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(sup.0.id().to_string())
        .status()
        .unwrap()
        .success());
    let status = {
        let start = Instant::now();
        loop {
            if let Some(st) = sup.0.try_wait().unwrap() {
                break st;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "supervisord did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(status.success(), "supervisord exited {status}");
    assert!(!alive(new_guard), "guard outlived supervisord");
    assert!(!alive(mlflow_pid), "mlflow outlived supervisord");
}

/// A GET straight to MLflow's port (plain HTTP, no guard), with `headers`.
async fn direct_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", format!("127.0.0.1:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send.send_request(req.body(common::empty()).unwrap()).await.unwrap();
    (resp.status().as_u16(), text(resp.into_body()).await)
}

/// A request through guard as `user`.
async fn as_user(c: &Client, user: &str, method: &str, path: &str, json: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("authorization", basic(user, "s3cret"))
        .header("content-type", "application/json")
        .body(common::body(json.to_owned()))
        .unwrap();
    let resp = c.send(req).await;
    (resp.status().as_u16(), text(resp.into_body()).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mlflow_permissions_mlflow_decides_per_experiment_for_the_user_guard_names() {
    let install = "apt-get install -y supervisor";
    if require_program(&["supervisord"], install).is_none() {
        return;
    }
    let Some(venv) = venv() else { return };
    let dir = TempDir::new("supervisor-permissions");
    let base = dir.path().join("stack");
    let (guard_port, mlflow_port) = (unused_port(), unused_port());
    deploy_into(dir.path(), &venv, guard_port, mlflow_port, true);
    let secret = std::fs::read_to_string(dir.path().join("upstream.secret")).unwrap();
    let secret = secret.trim();

    // root is one of guard's admins (the groups file beside the users file); alice is not.
    let state = base.join("guard");
    for user in ["root", "alice"] {
        adduser_in(&state, user);
    }
    std::fs::write(state.join("groups"), "admin: root\n").unwrap();

    let _sup = start_supervisord(&dir.path().join("supervisord.conf"), &base);
    let ready = wait_for("guard up", Duration::from_secs(120), || {
        run_guard(&["healthcheck", "--listen", &format!("127.0.0.1:{guard_port}")], None).0 == 0
    });
    // guard made its certificate on its first start.
    let c = Client::new(
        ([127, 0, 0, 1], guard_port).into(),
        &state.join("tls/ca.pem"),
        "localhost",
    );
    let search = "/api/2.0/mlflow/experiments/search?max_results=100";
    let started = Instant::now();
    loop {
        let (status, body) = as_user(&c, "root", "GET", search, "").await;
        if status == 200 {
            break;
        }
        // 502 while MLflow migrates its stores and starts.
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "MLflow never answered: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "MLflow's auth app answered through guard {:?} after guard was up",
        started.elapsed() + ready
    );

    // Who is signed in comes from MLflow's auth app now, admin flag included.
    let (status, body) = as_user(&c, "root", "GET", "/ajax-api/2.0/mlflow/users/current", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"is_admin\": true") || body.contains("\"is_admin\":true"),
        "{body}"
    );

    let create = |name: &'static str| {
        let c = c.clone();
        async move {
            let (status, body) = as_user(
                &c,
                "root",
                "POST",
                "/api/2.0/mlflow/experiments/create",
                &format!("{{\"name\":\"{name}\"}}"),
            )
            .await;
            assert_eq!(status, 200, "{name}: {body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["experiment_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (a, b) = (create("A").await, create("B").await);

    // alice's first request creates her in MLflow's user store, with no permission at all.
    let (status, body) = as_user(&c, "alice", "GET", search, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("\"A\"") && !body.contains("\"B\""),
        "alice sees nothing yet: {body}"
    );
    let grant = format!(
        "{{\"username\":\"alice\",\"resource_type\":\"experiment\",\"resource_id\":\"{a}\",\"permission\":\"READ\"}}"
    );
    let (status, body) = as_user(&c, "root", "POST", "/api/3.0/mlflow/users/permissions/grant", &grant).await;
    assert_eq!(status, 200, "an admin grants through guard: {body}");
    // Not an admin: the same grant is MLflow's 403.
    let (status, _) = as_user(&c, "alice", "POST", "/api/3.0/mlflow/users/permissions/grant", &grant).await;
    assert_eq!(status, 403);

    let get = |id: &str| format!("/api/2.0/mlflow/experiments/get?experiment_id={id}");
    let (status, body) = as_user(&c, "alice", "GET", &get(&a), "").await;
    assert_eq!(status, 200, "READ on A: {body}");
    assert!(
        body.contains("\"name\": \"A\"") || body.contains("\"name\":\"A\""),
        "{body}"
    );
    let (status, body) = as_user(&c, "alice", "GET", &get(&b), "").await;
    assert_eq!(
        (status, body.trim()),
        (403, "Permission denied"),
        "nothing on B: MLflow refuses"
    );
    let (status, _) = as_user(
        &c,
        "alice",
        "POST",
        "/api/2.0/mlflow/runs/create",
        &format!("{{\"experiment_id\":\"{a}\"}}"),
    )
    .await;
    assert_eq!(status, 403, "READ does not write");
    let (status, body) = as_user(&c, "alice", "GET", search, "").await;
    assert!(
        status == 200 && body.contains("\"A\"") && !body.contains("\"B\""),
        "search shows A alone: {body}"
    );

    // Straight to MLflow's port, the identity headers are worth nothing without guard's secret.
    let forged = [("x-forwarded-user", "root"), ("x-guard-admin", "true")];
    assert_eq!(direct_get(mlflow_port, &get(&b), &forged).await.0, 401, "no secret");
    let wrong = [
        ("x-forwarded-user", "root"),
        ("x-guard-admin", "true"),
        ("x-guard-secret", "0123456789abcdef0123"),
    ];
    assert_eq!(direct_get(mlflow_port, &get(&b), &wrong).await.0, 401, "a wrong secret");
    let right = [
        ("x-forwarded-user", "root"),
        ("x-guard-admin", "true"),
        ("x-guard-secret", secret),
    ];
    assert_eq!(
        direct_get(mlflow_port, &get(&b), &right).await.0,
        200,
        "the check is the secret"
    );
    // MLflow's own admin account passes only as one of guard's admins.
    adduser_in(&state, "admin");
    let started = Instant::now();
    loop {
        let (status, body) = as_user(&c, "admin", "GET", &get(&b), "").await;
        if status != 401 {
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("MLflow's admin account"), "{body}");
            break;
        }
        // Until guard has re-read its users file.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "guard never took the new user"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
