//! pebble, the ACME test CA (Debian's `pebble` package), as a child process: its HTTPS
//! certificate made here with rcgen (the package ships none), its ports picked outside the kernel's ephemeral range, its
//! validation ports pointed at the ports guard bound, its issuing root fetched from the
//! management port. Also a launcher for `guard serve --domain`, which prints two addresses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{unused_port, Captured, Client, Guard, TempDir};

/// Whether pebble can run here: panics in CI (where `.ci/run` installs it), else prints a note.
pub fn available() -> bool {
    super::require_program(&["pebble"], "apt-get install -y pebble").is_some()
}

/// pebble's files and ports, fixed before it starts so guard can be pointed at it first.
pub struct PebbleSetup {
    pub dir: TempDir,
    /// The CA that signed pebble's own HTTPS certificate: guard's `--acme-ca-root`.
    pub ca: PathBuf,
    pub listen: u16,
    pub management: u16,
}

impl PebbleSetup {
    pub fn new() -> PebbleSetup {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = TempDir::new("pebble");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "pebble test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, &ca_key)).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("localhost.pem"), leaf_cert.pem()).unwrap();
        std::fs::write(dir.path().join("localhost.key"), leaf_key.serialize_pem()).unwrap();
        PebbleSetup {
            ca: dir.path().join("ca.pem"),
            dir,
            listen: unused_port(),
            management: unused_port(),
        }
    }

    /// The ACME directory URL (by name: pebble's URLs copy the Host, and its certificate is for
    /// `localhost`).
    pub fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.listen)
    }

    /// The `--acme-*` flags that point guard at this pebble for `localhost`.
    pub fn guard_args(&self) -> Vec<String> {
        vec![
            "--domain".into(),
            "localhost".into(),
            "--acme-email".into(),
            "ops@example.com".into(),
            "--acme-directory".into(),
            self.directory(),
            "--acme-ca-root".into(),
            self.ca.display().to_string(),
        ]
    }

    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`, issuing
    /// certificates valid for `validity_secs`; returns once its directory is up.
    pub fn start(&self, http_port: u16, tls_port: u16, validity_secs: u64) -> Pebble {
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.listen),
            "managementListenAddress": format!("127.0.0.1:{}", self.management),
            "certificate": "localhost.pem",
            "privateKey": "localhost.key",
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }})
        .to_string();
        std::fs::write(self.dir.path().join("pebble.json"), &config).unwrap();
        let mut child = Command::new("pebble")
            .args(["-config", "pebble.json"])
            .current_dir(self.dir.path())
            // No random 0-15 s sleep before validations, no rejected nonces: deterministic.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pebble starts");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = Captured::spawn(child.stdout.take().unwrap(), Some(tx.clone()));
        let stderr = Captured::spawn(child.stderr.take().unwrap(), Some(tx));
        let mut pebble = Pebble {
            child,
            config,
            stdout,
            stderr,
            management: self.management,
            ca: self.ca.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                // pebble logs its addresses just before it binds them: wait for both ports.
                Ok(line) if line.contains("ACME directory available at") => {
                    for port in [self.listen, self.management] {
                        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                            assert!(
                                Instant::now() < deadline,
                                "pebble never listened on {port}\n{}",
                                pebble.output()
                            );
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    return pebble;
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = pebble.child.kill();
                    panic!("pebble did not start\nconfig: {}\n{}", pebble.config, pebble.output());
                }
            }
        }
    }
}

/// A running pebble, killed on drop.
pub struct Pebble {
    child: Child,
    config: String,
    stdout: Captured,
    stderr: Captured,
    management: u16,
    ca: PathBuf,
}

impl Pebble {
    /// Everything pebble logged.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout.text(), self.stderr.text())
    }

    /// How many orders pebble has accepted since it started.
    pub fn orders(&self) -> usize {
        self.output().matches("Added order").count()
    }

    /// How many certificates pebble has issued since it started.
    pub fn issued(&self) -> usize {
        self.output().matches("Issued certificate serial").count()
    }

    /// The root that signs what this pebble issues (new on every start), written to `dir`.
    pub async fn root(&self, dir: &Path) -> PathBuf {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.management).parse().unwrap();
        let (status, pem) = Client::new(addr, &self.ca, "localhost").get("/roots/0").await;
        assert_eq!(status, 200, "pebble's management port: {pem}");
        let path = dir.join(format!("pebble-root-{}.pem", self.management));
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// Stops pebble (its state, accounts included, is lost).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- pebble config: {}\n--- pebble output:\n{}",
                self.config,
                self.output()
            );
        }
    }
}

/// `guard serve` with ACME flags: waits for both listeners and returns guard (its `addr` is the
/// TLS listener) and the plain-HTTP listener's address. `--listen` and `--http-listen` default
/// to `127.0.0.1:0`.
pub fn start_guard(args: &[String], state: &Path) -> (Guard, SocketAddr) {
    let mut all: Vec<String> = vec!["serve".into()];
    all.extend(args.iter().cloned());
    for (flag, default) in [("--listen", "127.0.0.1:0"), ("--http-listen", "127.0.0.1:0")] {
        if !args.iter().any(|a| a == flag) {
            all.extend([flag.into(), default.into()]);
        }
    }
    all.extend(["--state-dir".into(), state.display().to_string()]);
    let mut child = Command::new(super::guard_bin())
        .args(&all)
        .env("GUARD_LOG", "info,guard_proxy=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guard starts");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = Captured::spawn(child.stdout.take().unwrap(), Some(tx));
    let stderr = Captured::spawn(child.stderr.take().unwrap(), None);
    let addr_after = |line: &str, prefix: &str| -> Option<SocketAddr> {
        line.strip_prefix(prefix)
            .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    let (mut tls, mut plain) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while tls.is_none() || plain.is_none() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                tls = tls.or(addr_after(&line, "guard: listening on "));
                plain = plain.or(addr_after(&line, "guard: plain listener on "));
            }
            Err(_) => {
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "guard did not start: guard {}\nstdout:\n{}\nstderr:\n{}",
                    all.join(" "),
                    stdout.text(),
                    stderr.text()
                );
            }
        }
    }
    let guard = Guard {
        child,
        args: all,
        addr: tls.unwrap(),
        ca: None,
        stdout,
        stderr,
        state: state.to_path_buf(),
        _state_dir: None,
    };
    (guard, plain.unwrap())
}

/// Waits until guard's log contains `needle` `times` times; panics (printing the log) after
/// `limit`.
pub async fn wait_for_log(guard: &Guard, needle: &str, times: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while guard.stderr.text().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "guard never logged {needle:?} {times} time(s) within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
