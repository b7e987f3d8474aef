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
    let mut opts = guard_deploy::DeployOptions::new(guard_deploy::Target::Supervisor);
    opts.out_dir = dir.path().to_path_buf();
    opts.guard_bin = Some(guard_bin().into());
    opts.mlflow_bin = Some(venv.join("bin/mlflow"));
    opts.base_dir = Some(base.clone());
    let (deployment, mut layout) = guard_deploy::validate(&opts).unwrap();
    layout.guard_listen = Some(([127, 0, 0, 1], guard_port).into());
    layout.mlflow_port = mlflow_port;
    guard_deploy::deploy(&deployment, &layout).unwrap();
    let conf = dir.path().join("supervisord.conf");

    // The deploy's next steps: a user in guard's state directory.
    let state = base.join("guard");
    let (code, out, err) = run_guard(
        &[
            "adduser",
            "alice",
            "--state-dir",
            state.to_str().unwrap(),
            "--password-stdin",
            "--cost",
            "4",
        ],
        Some("s3cret\n"),
    );
    assert_eq!(code, 0, "{out}{err}");

    let child = Command::new("supervisord")
        .arg("-n")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sup = Supervisord(child, base.clone());
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
