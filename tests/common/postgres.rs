//! A throwaway PostgreSQL server (Debian's `postgresql` package) on a free loopback port, in a
//! temporary directory, run as `nobody` when the test runs as root (initdb and postgres refuse
//! root), and stopped with its whole process group on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Captured, TempDir};

/// The database and superuser the server is made with; trust authentication on loopback only.
const DATABASE: &str = "mlflow";
const USER: &str = "mlflow";

/// How long initdb plus the first start may take on a small, busy machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running PostgreSQL server.
pub struct Postgres {
    child: Child,
    pub port: u16,
    bin: PathBuf,
    stderr: Captured,
    dir: TempDir,
}

impl Postgres {
    /// Makes a cluster with a database `mlflow` and starts it, or `None` (with a note) when
    /// PostgreSQL is not installed outside CI; under `CI` a missing install fails the test.
    pub fn start() -> Option<Postgres> {
        let bin = server_bin_dir()?;
        let dir = TempDir::new("postgres");
        // The cluster's owner must be able to write it; TempDir is root's when the test is.
        let pg = dir.path().join("pg");
        std::fs::create_dir(&pg).unwrap();
        if running_as_root() {
            // nobody must pass through the test's directory (whatever the umask made it) to
            // reach its own; it still may not list it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
            let ok = Command::new("chown")
                .args(["nobody:nogroup", pg.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success(), "chown nobody:nogroup {}", pg.display());
        }
        let data = pg.join("data");
        let initdb = unprivileged(&bin.join("initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut lost = String::new();
        for attempt in 1..=3 {
            match Postgres::try_start(&bin, &pg, &data) {
                Ok((child, port, stderr)) => {
                    let pg = Postgres {
                        child,
                        port,
                        bin,
                        stderr,
                        dir,
                    };
                    pg.psql("postgres", &format!("CREATE DATABASE {DATABASE}"));
                    return Some(pg);
                }
                Err(log) => {
                    eprintln!("note: postgres lost its port race (attempt {attempt}):\n{log}");
                    lost = log;
                }
            }
        }
        panic!("postgres could not bind a free port in 3 attempts:\n{lost}");
    }

    /// One start on a freshly picked port; `Err` carries the log when the port was taken.
    fn try_start(bin: &Path, pg: &Path, data: &Path) -> Result<(Child, u16, Captured), String> {
        let port = super::unused_port();
        let mut child = unprivileged(&bin.join("postgres"))
            .args(["-D", data.to_str().unwrap(), "-k", pg.to_str().unwrap()])
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            // A test database: durability buys nothing and costs the shared disk.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}/postgres: {e}", bin.display()));
        let stderr = Captured::spawn(child.stderr.take().unwrap(), None);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if stderr.text().contains("database system is ready to accept connections") {
                return Ok((child, port, stderr));
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let log = stderr.text();
                if log.contains("Address already in use") || log.contains("could not bind") {
                    return Err(log);
                }
                panic!("postgres exited with {status} before it was ready:\n{log}");
            }
            if Instant::now() > deadline {
                signal_group(child.id(), "KILL");
                let _ = child.wait();
                panic!("postgres was not ready within {STARTUP_TIMEOUT:?}:\n{}", stderr.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The SQLAlchemy URI of the `mlflow` database, what `mlflow server --backend-store-uri` takes.
    /// The driver is named: SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3, and the
    /// venv has psycopg2-binary.
    pub fn uri(&self) -> String {
        format!("postgresql+psycopg2://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// Runs `sql` in the `mlflow` database and returns psql's unaligned, tuples-only output.
    pub fn query(&self, sql: &str) -> String {
        self.psql(DATABASE, sql)
    }

    /// A single number `sql` selects.
    pub fn count(&self, sql: &str) -> u64 {
        let out = self.query(sql);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{sql}: not a count ({e}): {out:?}"))
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        // psql is a client: it runs as whoever the test is, over TCP.
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql])
            .env_clear()
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed:\n{}\n--- postgres log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            super::mlflow::tail(&self.stderr.text(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Where the cluster lives.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT is PostgreSQL's immediate shutdown: the postmaster stops its backends itself.
        signal_group(self.child.id(), "QUIT");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(self.child.id(), "KILL");
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- postgres log (last 40 lines):\n{}",
                super::mlflow::tail(&self.stderr.text(), 40)
            );
        }
    }
}

/// The newest `/usr/lib/postgresql/VERSION/bin` with a `postgres` in it, found the way every
/// outside program is (a note outside CI, a failure in CI).
fn server_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin/postgres"))))
        .collect();
    versions.sort();
    let mut candidates: Vec<String> = versions.iter().rev().map(|(_, p)| p.display().to_string()).collect();
    if candidates.is_empty() {
        candidates.push("/usr/lib/postgresql/VERSION/bin/postgres".into());
    }
    let names: Vec<&str> = candidates.iter().map(String::as_str).collect();
    let postgres = super::require_program(&names, "apt-get install -y postgresql")?;
    Some(postgres.parent().unwrap().to_path_buf())
}

/// `program` as `nobody` when the test is root, else as the test's own user; with a clean
/// environment either way.
fn unprivileged(program: &Path) -> Command {
    let mut cmd = if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.env_clear().env("LANG", "C.UTF-8").env("PATH", "/usr/bin:/bin");
    cmd
}

/// Whether the effective user is root, from `/proc/self/status` (no libc call needed).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    uid.split_whitespace().nth(1) == Some("0")
}

/// Signals every process in group `pgid`; a group already gone is not an error.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
