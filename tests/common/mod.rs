//! Shared end-to-end fixtures: the guard binary as a child process, an echo upstream that
//! reflects and records what it received, a hanging upstream, and TLS clients for HTTP/1.1 and
//! HTTP/2. Fixtures own their processes and kill them on drop; a failing test prints guard's
//! command line and output.

#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

/// Installs the process-wide rustls provider once per test binary.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("guard-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Output collected from a child's stdout or stderr by a reader thread.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn spawn(pipe: impl std::io::Read + Send + 'static, tee: Option<std::sync::mpsc::Sender<String>>) -> Self {
        let c = Captured::default();
        let buf = c.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = &tee {
                    let _ = tx.send(line.clone());
                }
                let mut b = buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
        c
    }
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for `needle` to appear; whether it did.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The path of the built guard binary.
pub fn guard_bin() -> &'static str {
    env!("CARGO_BIN_EXE_guard")
}

/// A running `guard serve`.
pub struct Guard {
    child: Child,
    pub args: Vec<String>,
    pub addr: SocketAddr,
    pub ca: Option<PathBuf>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub state: PathBuf,
    _state_dir: Option<TempDir>,
}

impl Guard {
    /// Starts `guard serve` with `args` (plus `--listen 127.0.0.1:0` and a temporary
    /// `--state-dir` unless given) and waits until it listens.
    pub fn start(args: &[&str]) -> Guard {
        Guard::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Guard {
        let mut all: Vec<String> = vec!["serve".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        if !args.contains(&"--listen") {
            all.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        let mut own_state = None;
        let state = if let Some(i) = args.iter().position(|a| *a == "--state-dir") {
            PathBuf::from(args[i + 1])
        } else {
            let t = TempDir::new("state");
            let p = t.path().to_path_buf();
            all.extend(["--state-dir".into(), p.display().to_string()]);
            own_state = Some(t);
            p
        };
        let mut cmd = Command::new(guard_bin());
        cmd.args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env("GUARD_LOG", "info,guard_proxy=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("guard starts");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = Captured::spawn(child.stdout.take().unwrap(), Some(tx));
        let stderr = Captured::spawn(child.stderr.take().unwrap(), None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut addr = None;
        let mut ca = None;
        while addr.is_none() || (ca.is_none() && !all.iter().any(|a| a == "--tls-cert")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("guard: listening on ") {
                        let a = rest.split(',').next().unwrap();
                        addr = Some(a.parse().unwrap());
                    }
                    if let Some(p) = line.strip_prefix("MLFLOW_TRACKING_SERVER_CERT_PATH=") {
                        ca = Some(PathBuf::from(p));
                    }
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
        Guard {
            child,
            args: all,
            addr: addr.unwrap(),
            ca,
            stdout,
            stderr,
            state,
            _state_dir: own_state,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "guard did not exit in {timeout:?}\nstderr:\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident memory (VmRSS) in KiB.
    pub fn vm_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// The CA that signs guard's self-signed certificate.
    pub fn ca(&self) -> &Path {
        self.ca.as_deref().expect("guard printed its CA path")
    }

    /// A TLS client trusting guard's CA.
    pub fn client(&self) -> Client {
        Client::new(self.addr, self.ca(), "localhost")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            eprintln!(
                "--- guard {}\n--- stdout:\n{}--- stderr:\n{}",
                self.args.join(" "),
                self.stdout.text(),
                self.stderr.text()
            );
        }
    }
}

pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs the guard binary to completion with `args` and returns (exit code, stdout, stderr).
pub fn run_guard(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(guard_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sin = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        // A command refused before it reads stdin (a bad flag) has closed it: not an error here.
        if let Err(e) = sin.write_all(s.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing guard's stdin: {e}");
        }
    }
    drop(sin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub mod mlflow;
pub mod oidc;
pub mod pebble;
pub mod postgres;
mod program;
pub mod raw;

pub use program::require_program;

/// Whether `tests/browser`'s npm package `name` and Node.js are there to run it (`npm ci` in
/// `tests/browser`, as .ci/run does). Under `CI` a missing one fails the test; elsewhere the
/// test prints a note and gets `false`, to skip.
pub fn require_npm_package(name: &str) -> bool {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser/node_modules")
        .join(name);
    if !modules.is_dir() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{} is missing in CI; .ci/run runs npm ci in tests/browser",
                modules.display()
            );
        }
        eprintln!("note: run `npm ci` in tests/browser for the tests that use {name}; skipping outside CI");
        return false;
    }
    require_program(&["node"], "apt-get install -y nodejs npm").is_some()
}

/// An HTTP Basic `Authorization` value.
pub fn basic(user: &str, pw: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// `guard adduser` with the password on stdin; cost 4 keeps tests fast.
pub fn adduser(users: &Path, name: &str, pw: &str) {
    let (code, out, err) = run_guard(
        &[
            "adduser",
            name,
            "--users",
            users.to_str().unwrap(),
            "--password-stdin",
            "--cost",
            "4",
        ],
        Some(&format!("{pw}\n")),
    );
    assert_eq!(code, 0, "adduser {name}: {out}{err}");
}

// ---------------------------------------------------------------- bodies

/// A deterministic body of `len` bytes, generated in 64 KiB chunks without holding it.
pub struct PatternBody {
    remaining: u64,
    offset: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        PatternBody {
            remaining: len,
            offset: 0,
        }
    }
}

/// The pattern byte at `i`.
fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// SHA-256 of the first `len` pattern bytes.
pub fn pattern_sha256(len: u64) -> String {
    let mut h = Sha256::new();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(64 * 1024) as usize;
        h.update(pattern_chunk(off, n));
        off += n as u64;
    }
    hex(&h.finalize())
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(64 * 1024) as usize;
        let chunk = pattern_chunk(self.offset, n);
        self.offset += n as u64;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

pub fn empty() -> TestBody {
    body(Bytes::new())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// Reads a whole body, returning (length, sha256) without keeping it.
pub async fn drain_hash(mut body: Incoming) -> (u64, String) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.expect("body frame").into_data() {
            n += d.len() as u64;
            h.update(&d);
        }
    }
    (n, hex(&h.finalize()))
}

pub async fn text(body: Incoming) -> String {
    String::from_utf8_lossy(&body.collect().await.expect("body").to_bytes()).into_owned()
}

// ---------------------------------------------------------------- metrics

/// The metrics listener's address, from the line guard prints at start.
pub fn metrics_addr(g: &Guard) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = g
            .stdout
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("guard: metrics on http://"))
        {
            return a.trim_end_matches("/metrics").to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address printed:\n{}",
            g.stdout.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GETs `/metrics` over plain HTTP and returns the exposition.
/// One `GET /metrics`: the whole answer, head included.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample `name{labels}` (exact label text), or 0 when absent.
/// The value of one series (`name{labels}`) in a scrape; 0 when it is absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------- TLS client

/// A TLS client for one guard: opens a new connection per `connect`.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub config: Arc<rustls::ClientConfig>,
    pub sni: String,
}

/// rustls client config trusting exactly the certificates in `ca` (PEM).
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    init();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

impl Client {
    pub fn new(addr: SocketAddr, ca: &Path, sni: &str) -> Self {
        Client {
            addr,
            config: Arc::new(client_config(ca, &[b"http/1.1"])),
            sni: sni.into(),
        }
    }

    pub fn with_alpn(mut self, alpn: &[&[u8]]) -> Self {
        let mut cfg = (*self.config).clone();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        self.config = Arc::new(cfg);
        self
    }

    /// Opens a TLS connection.
    pub async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = rustls::pki_types::ServerName::try_from(self.sni.clone()).unwrap();
        connector.connect(name, tcp).await.expect("TLS handshake with guard")
    }

    /// An HTTP/1.1 connection.
    pub async fn h1(&self) -> hyper::client::conn::http1::SendRequest<TestBody> {
        let io = TokioIo::new(self.tls().await);
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        send
    }

    /// An HTTP/2 connection.
    pub async fn h2(&self) -> hyper::client::conn::http2::SendRequest<TestBody> {
        let c = self.clone().with_alpn(&[b"h2"]);
        let tls = c.tls().await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "guard negotiated h2");
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    /// One request on a fresh HTTP/1.1 connection.
    pub async fn send(&self, req: Request<TestBody>) -> Response<Incoming> {
        let mut s = self.h1().await;
        s.send_request(req).await.expect("response from guard")
    }

    /// GET `path` on a fresh connection; returns (status, body text).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.send(get(path)).await;
        let status = resp.status().as_u16();
        (status, text(resp.into_body()).await)
    }
}

/// A GET request with the `Host: localhost` an HTTP/1.1 client sends.
pub fn get(path: &str) -> Request<TestBody> {
    Request::get(path).header("host", "localhost").body(empty()).unwrap()
}

// ---------------------------------------------------------------- upstreams

/// What the echo upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An HTTP/1.1 upstream that answers every request with JSON describing it, and records it.
/// `/download/N` streams N pattern bytes; `/slow/MS` answers after MS milliseconds; a
/// `Connection: upgrade` request gets 101 and its bytes echoed.
pub struct Echo {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Echo::serve(listener).await
    }

    pub async fn serve(listener: TcpListener) -> Echo {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let seen = s2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| echo(req, seen.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Echo { addr, seen, task }
    }

    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(mut req: Request<Incoming>, seen: Arc<Mutex<Vec<Seen>>>) -> Result<Response<TestBody>, Infallible> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let path = req.uri().path().to_string();
    if req.headers().get("upgrade").is_some() {
        let on = hyper::upgrade::on(&mut req);
        seen.lock().unwrap().push(Seen {
            method,
            uri,
            headers,
            body_len: 0,
            body_sha256: String::new(),
        });
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(empty())
            .unwrap());
    }
    let (body_len, body_sha256) = drain_hash(req.into_body()).await;
    let rec = Seen {
        method,
        uri,
        headers,
        body_len,
        body_sha256,
    };
    seen.lock().unwrap().push(rec.clone());
    if let Some(n) = path.strip_prefix("/download/") {
        let n: u64 = n.parse().unwrap();
        return Ok(Response::builder()
            .header("content-length", n)
            .body(PatternBody::new(n).boxed())
            .unwrap());
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    let json = serde_json::json!({
        "method": rec.method,
        "uri": rec.uri,
        "headers": rec.headers,
        "body_len": rec.body_len,
        "body_sha256": rec.body_sha256,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("server", "echo/1.0")
        .header("connection", "keep-alive, x-resp-hop")
        .header("x-resp-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-end", "kept")
        .body(body(json.to_string()))
        .unwrap())
}

/// An upstream that accepts connections and never answers.
pub struct Hang {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Hang {
    pub async fn start() -> Hang {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        Hang { addr, task }
    }
}

impl Drop for Hang {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port for a program that binds it itself (pebble, mlflow, supervisord's children),
/// or for nothing to listen on. A port taken from a port-0 bind and released can be handed out
/// again by the kernel to the next port-0 bind, such as guard's own `--listen 127.0.0.1:0` (CI
/// once saw guard's plain listener get pebble's management port). So these come from below the
/// kernel's ephemeral range, which neither port-0 binds nor outgoing connections use, are free
/// when picked, and are never picked twice by one test binary.
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&low| low > LOW + 1000)
        .unwrap_or(32_768);
    let span = ephemeral_low - LOW;
    // Test binaries in other processes start at different places.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{ephemeral_low}");
}

/// A loopback port nothing listens on.
pub fn dead_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port()))
}

/// Parses the JSON the echo upstream answers with.
pub fn echo_json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not echo JSON ({e}): {s}"))
}
