//! A real `mlflow server` (its own sqlite store, or a store and artifact directory shared with
//! other servers; artifacts proxied by the server) on a free loopback port, and a runner for the real MLflow Python client driven by `tests/mlflow_client.py`.
//! Both come from the venv at `$GUARD_VENV` (default `/opt/guard-venv`), which `.ci/run` makes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Captured, TempDir};

/// How long a fresh server may take to answer `/health`: the first start creates and migrates
/// the sqlite database, and tests start several servers at once on a small machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// How long one client script run may take before it is killed and the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// The MLflow venv, or `None` (with a note) when it is missing outside CI. CI must fail loudly,
/// so there a missing venv panics.
pub fn venv() -> Option<PathBuf> {
    let dir = std::env::var_os("GUARD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/guard-venv"));
    if dir.join("bin/mlflow").is_file() && dir.join("bin/python").is_file() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "the MLflow venv is required in CI but {} has no bin/mlflow and bin/python; \
             .ci/run installs it (or set GUARD_VENV)",
            dir.display()
        );
    }
    eprintln!(
        "note: no MLflow venv at {} (set GUARD_VENV); skipping this check outside CI",
        dir.display()
    );
    None
}

/// The environment every MLflow child starts from: nothing inherited, so stray `MLFLOW_*`,
/// proxy or CA-bundle variables of the developer cannot change what a test means.
fn clean_command(program: &Path, venv: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", venv.join("bin").display()))
        .env("HOME", home)
        .env("TMPDIR", home)
        .env("LANG", "C.UTF-8")
        .env("MLFLOW_DISABLE_TELEMETRY", "true");
    cmd
}

/// Where a server keeps runs and artifacts.
pub enum Store {
    /// A fresh sqlite file and artifact directory of its own.
    Private,
    /// A backend store and artifact directory that several servers share, such as a
    /// PostgreSQL database already migrated with [`db_upgrade`].
    Shared { uri: String, artifacts: PathBuf },
}

/// `mlflow db upgrade URI`: creates or migrates the schema once, before servers that share the
/// store start (each server would otherwise race the others to create it).
pub fn db_upgrade(venv: &Path, uri: &str) {
    let home = TempDir::new("mlflow-db-upgrade");
    let program = venv.join("bin/mlflow");
    let out = clean_command(&program, venv, home.path())
        .args(["db", "upgrade", uri])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "mlflow db upgrade {uri} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
}

/// A running `mlflow server`, killed with its whole process group on drop.
pub struct MlflowServer {
    child: Child,
    /// `127.0.0.1:PORT`, plain HTTP.
    pub addr: SocketAddr,
    /// The command line, for failure reports.
    pub command: String,
    pub stdout: Captured,
    pub stderr: Captured,
    venv: PathBuf,
    dir: TempDir,
}

impl MlflowServer {
    /// Starts a server with a fresh sqlite store and artifact directory, and waits until it
    /// answers `/health`. A port taken between picking and binding is retried.
    pub fn start(venv: &Path) -> MlflowServer {
        MlflowServer::start_with(venv, &Store::Private, None)
    }

    /// Starts a server over `store`, on `port` when given (a restart on the port guard
    /// forwards to; a port taken then fails the test) or else on a free one (retried when
    /// another program takes it first), and waits until it answers `/health`.
    pub fn start_with(venv: &Path, store: &Store, port: Option<u16>) -> MlflowServer {
        if let Some(port) = port {
            return MlflowServer::try_start(venv, store, port)
                .unwrap_or_else(|stderr| panic!("mlflow server cannot bind its port {port} again:\n{stderr}"));
        }
        let mut lost = String::new();
        for attempt in 1..=3 {
            match MlflowServer::try_start(venv, store, super::unused_port()) {
                Ok(server) => return server,
                Err(stderr) => {
                    eprintln!("note: mlflow lost its port race (attempt {attempt}):\n{stderr}");
                    lost = stderr;
                }
            }
        }
        panic!("mlflow server could not bind a free port in 3 attempts:\n{lost}");
    }

    /// One start on `port`. `Err` carries the stderr when the port was taken. A port picked
    /// free can still be taken by another program first, which shows as a bind error.
    fn try_start(venv: &Path, store: &Store, port: u16) -> Result<MlflowServer, String> {
        let dir = TempDir::new("mlflow");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (store_uri, artifacts) = match store {
            Store::Private => (
                format!("sqlite:///{}", dir.path().join("mlflow.db").display()),
                dir.path().join("artifacts"),
            ),
            Store::Shared { uri, artifacts } => (uri.clone(), artifacts.clone()),
        };
        let args = [
            "server".to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            // One worker: a test client is sequential, and the machine is small.
            "--workers".into(),
            "1".into(),
            "--backend-store-uri".into(),
            store_uri,
            "--artifacts-destination".into(),
            artifacts.display().to_string(),
            "--serve-artifacts".into(),
        ];
        let program = venv.join("bin/mlflow");
        let command = format!("{} {}", program.display(), args.join(" "));
        let mut cmd = clean_command(&program, venv, &home);
        cmd.args(&args)
            // The job runner starts a swarm of huey consumers the tests never use.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so drop can stop uvicorn and any worker with one signal.
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
        let stdout = Captured::spawn(child.stdout.take().unwrap(), None);
        let stderr = Captured::spawn(child.stderr.take().unwrap(), None);
        // Health alone could be answered by another server that won the port; uvicorn's own
        // line says that this child bound it.
        let bound = format!("Uvicorn running on http://127.0.0.1:{port}");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                // Whatever it started (uvicorn) goes with it.
                kill_group(child.id(), "KILL");
                let err = stderr.text();
                let all = stdout.text() + &err;
                if all.to_lowercase().contains("address already in use") {
                    return Err(tail(&all, 20));
                }
                panic!(
                    "mlflow server exited with {status} before answering /health\n--- {command}\n\
                     --- stdout:\n{}--- stderr:\n{}",
                    stdout.text(),
                    tail(&err, 80)
                );
            }
            if health_ok(addr) && (stderr.text().contains(&bound) || stdout.text().contains(&bound)) {
                return Ok(MlflowServer {
                    child,
                    addr,
                    command,
                    stdout,
                    stderr,
                    venv: venv.to_path_buf(),
                    dir,
                });
            }
            if Instant::now() > deadline {
                kill_group(child.id(), "KILL");
                let _ = child.wait();
                panic!(
                    "mlflow server did not answer /health within {STARTUP_TIMEOUT:?}\n--- {command}\n\
                     --- stdout:\n{}--- stderr:\n{}",
                    stdout.text(),
                    tail(&stderr.text(), 80)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `127.0.0.1:PORT`, what `guard serve --upstream` takes.
    pub fn upstream(&self) -> String {
        self.addr.to_string()
    }

    /// The plain-HTTP tracking URI of the server itself, bypassing guard.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The REST API requests (`/api/` and `/ajax-api/`) the server has logged so far: uvicorn's
    /// access log lines, which go to stdout. Health checks are not included. A line can lag the
    /// response by a moment, so compare which requests appear rather than how many.
    pub fn api_requests(&self) -> Vec<String> {
        let out = self.stdout.text() + &self.stderr.text();
        out.lines()
            .filter(|l| l.contains(" /api/") || l.contains(" /ajax-api/"))
            .map(str::to_owned)
            .collect()
    }

    /// Runs `tests/mlflow_client.py` against this server directly (no guard, no credentials).
    pub fn run_client_direct(&self, args: &[&str]) -> ClientRun {
        run_client(&self.venv, args, &[("MLFLOW_TRACKING_URI", &self.uri())])
    }

    /// POSTs `json` to the server's REST API at `path`, directly over plain HTTP with no
    /// credentials and no Origin, and returns the JSON answer (panics on a non-200).
    pub fn api_post(&self, path: &str, json: &serde_json::Value) -> serde_json::Value {
        self.api("POST", path, json)
    }

    /// Like [`MlflowServer::api_post`] with any method; a GET's JSON body is read as its
    /// parameters (MLflow does so when there is no query string).
    pub fn api(&self, method: &str, path: &str, json: &serde_json::Value) -> serde_json::Value {
        use std::io::{Read, Write};
        let body = json.to_string();
        let mut tcp = std::net::TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        write!(
            tcp,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = tcp.read_to_string(&mut out);
        let (head, answer) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "MLflow answered {method} {path}: {out}"
        );
        // uvicorn may answer chunked; MLflow's JSON is one chunk.
        let start = answer.find('{').unwrap_or(0);
        let end = answer.rfind('}').map_or(answer.len(), |e| e + 1);
        serde_json::from_str(&answer[start..end]).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The number of experiments in the server's store, asked directly.
    pub fn count_experiments(&self) -> u64 {
        let run = self.run_client_direct(&["count-experiments"]);
        run.assert_success("count-experiments");
        run.json()["experiments"]
            .as_u64()
            .unwrap_or_else(|| panic!("no experiment count in {}", run.stdout))
    }

    /// Where the server keeps its store and artifacts.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server and everything it started with SIGKILL, as a crash or the OOM killer
    /// would: nothing gets to finish a request or clean up. Returns once it is gone.
    pub fn kill_hard(&mut self) {
        kill_group(self.child.id(), "KILL");
        let _ = self.child.wait();
    }

    /// Whether one of the server's processes holds a file under `dir` open (an upload it is
    /// receiving), from their `/proc/PID/fd` links.
    pub fn has_open_file_under(&self, dir: &Path) -> bool {
        let pgid = self.child.id().to_string();
        let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        procs
            .filter(|p| {
                // Field 5 of /proc/PID/stat, after the parenthesised command name, is the group.
                std::fs::read_to_string(p.path().join("stat"))
                    .ok()
                    .and_then(|st| {
                        st.rsplit_once(") ")
                            .map(|(_, rest)| rest.split(' ').nth(2) == Some(&pgid))
                    })
                    .unwrap_or(false)
            })
            .flat_map(|p| std::fs::read_dir(p.path().join("fd")).into_iter().flatten().flatten())
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let pgid = self.child.id();
        kill_group(pgid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever ignored TERM (or outlived the parent) goes now.
        kill_group(pgid, "KILL");
        let _ = self.child.wait();
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            eprintln!(
                "--- mlflow {}\n--- mlflow stdout (last 60 lines):\n{}--- mlflow stderr (last 60 lines):\n{}",
                self.command,
                tail(&self.stdout.text(), 60),
                tail(&self.stderr.text(), 60)
            );
        }
    }
}

/// Signals every process in group `pgid`. Errors (the group is already gone) are ignored.
fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `GET /health` answers 200 `OK`.
fn health_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.1 200") && resp.trim_end().ends_with("OK")
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

/// One finished run of `tests/mlflow_client.py`.
pub struct ClientRun {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Wall time of the whole process, Python start-up and imports included.
    pub elapsed: Duration,
}

impl ClientRun {
    /// The JSON summary: the script's last line on stdout.
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("no JSON summary ({e}) from mlflow_client.py:\n{self}"))
    }

    /// Panics with the script's output unless it exited 0.
    pub fn assert_success(&self, what: &str) {
        assert_eq!(self.code, 0, "{what}: mlflow_client.py failed\n{self}");
    }
}

impl std::fmt::Display for ClientRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- python mlflow_client.py {} (exit {}, {:.1?})\n--- stdout:\n{}--- stderr:\n{}",
            self.args.join(" "),
            self.code,
            self.elapsed,
            self.stdout,
            tail(&self.stderr, 60)
        )
    }
}

/// Runs `tests/mlflow_client.py ARGS` with the venv's Python, a clean environment plus `env`,
/// and a private HOME (so no `~/.mlflow/credentials` applies).
pub fn run_client(venv: &Path, args: &[&str], env: &[(&str, &str)]) -> ClientRun {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mlflow_client.py");
    let home = TempDir::new("mlflow-client");
    let mut cmd = clean_command(&venv.join("bin/python"), venv, home.path());
    cmd.arg(script)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("the venv's python starts");
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CLIENT_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let run = ClientRun {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed,
    };
    assert!(
        !timed_out,
        "mlflow_client.py ran over {CLIENT_TIMEOUT:?} and was killed\n{run}"
    );
    run
}

/// Reads a child's pipe to the end on a thread (so neither pipe can fill and block the child).
fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
