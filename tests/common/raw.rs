//! Raw-bytes fixtures for the adversarial tiers: a recording upstream behind a TCP tap that
//! counts every byte guard sends it, guard started with users in front of it, and HTTP/1.1 and
//! HTTP/2 spoken byte by byte over TLS, so a test can send what no well-behaved client would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

// ---------------------------------------------------------------- the upstream and its tap

/// A recording upstream behind a TCP tap: `seen` is what the upstream parsed (only requests whose
/// body arrived whole), the tap counts the raw bytes each way, so a request that reached the
/// upstream but never completed, or that the upstream itself refused, still shows.
pub struct Upstream {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub addr: SocketAddr,
    pub to_upstream: Arc<AtomicU64>,
    pub from_upstream: Arc<AtomicU64>,
    pub raw: Arc<Mutex<Vec<u8>>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How much of what guard sends upstream is kept for failure messages.
pub const RAW_KEPT: usize = 256 * 1024;

/// A point in the upstream's history.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub requests: usize,
    pub bytes: u64,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        let recorder = tokio::spawn(serve_recorder(server, seen.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (to_upstream, from_upstream) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (to, from, kept) = (to_upstream.clone(), from_upstream.clone(), raw.clone());
        let tap = tokio::spawn(async move {
            while let Ok((guard_side, _)) = listener.accept().await {
                let Ok(upstream_side) = TcpStream::connect(target).await else {
                    continue;
                };
                let (gr, gw) = guard_side.into_split();
                let (ur, uw) = upstream_side.into_split();
                tokio::spawn(pump(gr, uw, to.clone(), Some(kept.clone())));
                tokio::spawn(pump(ur, gw, from.clone(), None));
            }
        });
        Upstream {
            seen,
            addr,
            to_upstream,
            from_upstream,
            raw,
            tasks: vec![recorder, tap],
        }
    }

    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn mark(&self) -> Mark {
        Mark {
            requests: self.seen.lock().unwrap().len(),
            bytes: self.to_upstream.load(Ordering::SeqCst),
        }
    }

    /// Requests the upstream parsed since `m`.
    pub fn since(&self, m: Mark) -> Vec<Seen> {
        self.seen.lock().unwrap()[m.requests..].to_vec()
    }

    pub fn raw_since(&self, m: Mark) -> String {
        let raw = self.raw.lock().unwrap();
        let from = (m.bytes as usize).min(raw.len());
        String::from_utf8_lossy(&raw[from..]).into_owned()
    }

    /// Not one byte has gone to the upstream since `m`.
    pub fn assert_nothing_since(&self, m: Mark, why: &str) {
        let bytes = self.to_upstream.load(Ordering::SeqCst) - m.bytes;
        let seen = self.since(m);
        assert!(
            bytes == 0 && seen.is_empty(),
            "{why}: {bytes} bytes reached the upstream ({} requests parsed):\n{}",
            seen.len(),
            self.raw_since(m)
        );
    }

    /// Exactly one request was parsed by the upstream since `m`: returns it.
    pub fn exactly_one_since(&self, m: Mark, why: &str) -> Seen {
        let seen = self.since(m);
        assert_eq!(
            seen.len(),
            1,
            "{why}: the upstream parsed {seen:?}\nraw:\n{}",
            self.raw_since(m)
        );
        seen.into_iter().next().unwrap()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The upstream's server: HTTP/1.1 with room for many headers, so that what guard lets through
/// is recorded rather than refused by the upstream itself.
pub async fn serve_recorder(listener: TcpListener, seen: Arc<Mutex<Vec<Seen>>>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| record(req, seen.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .max_headers(1000)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// Records a request once its body has arrived whole and answers 200 with a little JSON;
/// `/download/N` streams N pattern bytes.
pub async fn record(req: Request<Incoming>, seen: Arc<Mutex<Vec<Seen>>>) -> Result<Response<TestBody>, Infallible> {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (method, uri) = (req.method().to_string(), req.uri().to_string());
    let mut incoming = req.into_body();
    let (mut hash, mut body_len) = (Sha256::new(), 0u64);
    while let Some(frame) = incoming.frame().await {
        let Ok(frame) = frame else {
            return Ok(Response::builder().status(400).body(empty()).unwrap());
        };
        if let Ok(d) = frame.into_data() {
            body_len += d.len() as u64;
            hash.update(&d);
        }
    }
    let json = serde_json::json!({ "uri": uri, "body_len": body_len }).to_string();
    let download = uri
        .strip_prefix("/download/")
        .map(|n| n.split('?').next().unwrap().parse::<u64>().unwrap());
    seen.lock().unwrap().push(Seen {
        method,
        uri,
        headers,
        body_len,
        body_sha256: hex(&hash.finalize()),
    });
    Ok(match download {
        Some(n) => Response::builder()
            .header("content-length", n)
            .body(PatternBody::new(n).boxed())
            .unwrap(),
        None => Response::builder()
            .header("content-type", "application/json")
            .body(body(json))
            .unwrap(),
    })
}

pub async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
    kept: Option<Arc<Mutex<Vec<u8>>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(kept) = &kept {
            let mut kept = kept.lock().unwrap();
            let room = RAW_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        count.fetch_add(n as u64, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

// ---------------------------------------------------------------- guard with users

pub const ALICE_PASSWORD: &str = "correct horse";
pub const COLON_PASSWORD: &str = "pa:ss:word";
/// Its Basic credential holds `/` and `+`, so the URL-safe base64 alphabet spells it differently.
pub const URL_PASSWORD: &str = "??>>~~";

pub fn basic_raw(decoded: &[u8]) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(decoded))
}

pub fn alice() -> String {
    basic("alice", ALICE_PASSWORD)
}

/// guard with authentication on (users `alice`, `colon` and `url`, lockout off) in front of a
/// tapped recording upstream.
pub struct Setup {
    pub up: Upstream,
    pub g: Guard,
    pub _dir: TempDir,
}

impl Setup {
    pub async fn start(extra: &[&str]) -> Setup {
        Setup::start_env(extra, &[]).await
    }

    pub async fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Setup {
        let dir = TempDir::new("adversarial");
        let users = dir.path().join("users.htpasswd");
        adduser(&users, "alice", ALICE_PASSWORD);
        adduser(&users, "colon", COLON_PASSWORD);
        adduser(&users, "url", URL_PASSWORD);
        let up = Upstream::start().await;
        let mut args = vec![
            "--upstream".to_string(),
            up.authority(),
            "--users".into(),
            users.display().to_string(),
            "--lockout-failures".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let g = Guard::start_env(&refs, env);
        Setup { up, g, _dir: dir }
    }

    pub fn client(&self) -> Client {
        self.g.client()
    }

    /// Sends raw bytes on a fresh TLS connection and expects one response with a status in
    /// `allowed` (0 stands for "closed without a response") and nothing at the upstream.
    /// (A 200 here is guard answering itself, under `/_guard/`.)
    pub async fn not_forwarded(&self, bytes: &[u8], allowed: &[u16], why: &str) -> u16 {
        let m = self.up.mark();
        let (resps, _) = send_raw(&self.client(), bytes, 1, Duration::ZERO).await;
        let status = resps.first().map_or(0, |r| r.status);
        assert!(
            allowed.contains(&status),
            "{why}: got {status}, expected one of {allowed:?}: {resps:?}"
        );
        self.up.assert_nothing_since(m, why);
        status
    }

    /// Sends raw bytes and expects a 200 from the upstream for exactly one request to `uri`,
    /// carrying what guard adds to every authenticated request.
    pub async fn forwarded_as_alice(&self, bytes: &[u8], uri: &str, why: &str) -> Seen {
        let m = self.up.mark();
        let (resps, _) = send_raw(&self.client(), bytes, 1, Duration::ZERO).await;
        assert_eq!(resps.first().map(|r| r.status), Some(200), "{why}: {resps:?}");
        let seen = self.up.exactly_one_since(m, why);
        assert_normal_forward(&seen, &self.up, uri, why);
        seen
    }
}

/// What every authenticated request looks like at the upstream: the exact target, the user
/// guard vouches for, no credential, guard's own forwarding headers.
pub fn assert_normal_forward(seen: &Seen, up: &Upstream, uri: &str, why: &str) {
    assert_eq!(seen.uri, uri, "{why}: the target was rewritten");
    assert_eq!(seen.all("x-forwarded-user"), vec!["alice"], "{why}");
    assert_eq!(
        seen.header("authorization"),
        None,
        "{why}: the credential was forwarded"
    );
    assert_eq!(seen.all("x-forwarded-for"), vec!["127.0.0.1"], "{why}");
    assert_eq!(seen.all("host"), vec![up.authority().as_str()], "{why}");
}

pub fn authed(path: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", "localhost")
        .header("authorization", alice())
        .body(empty())
        .unwrap()
}

// ---------------------------------------------------------------- raw HTTP/1.1

pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.head, self.text())
    }
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// One complete response at the start of `buf` and the bytes it used, or `None` if more are
/// needed.
pub fn parse_response(buf: &[u8], closed: bool) -> Option<(RawResponse, usize)> {
    let end = find(buf, b"\r\n\r\n", 0)? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut resp = RawResponse {
        status,
        head,
        body: Vec::new(),
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((resp, end));
    }
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().ok()?;
        resp.body = buf.get(end..end + len)?.to_vec();
        return Some((resp, end + len));
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        let mut pos = end;
        loop {
            let line_end = find(buf, b"\r\n", pos)?;
            let line = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                loop {
                    let e = find(buf, b"\r\n", pos)?;
                    let blank = e == pos;
                    pos = e + 2;
                    if blank {
                        return Some((resp, pos));
                    }
                }
            }
            resp.body.extend_from_slice(buf.get(pos..pos + size)?);
            pos += size + 2;
        }
    }
    if closed {
        resp.body = buf[end..].to_vec();
        return Some((resp, buf.len()));
    }
    None
}

/// Reads responses until `want` have arrived and then `linger` passes without a byte, or the
/// connection ends (an error counts as the end). Returns them and whether the connection closed.
pub async fn read_responses(
    io: &mut (impl AsyncRead + Unpin),
    want: usize,
    linger: Duration,
) -> (Vec<RawResponse>, bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut buf, mut out, mut closed) = (Vec::new(), Vec::new(), false);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some((resp, used)) = parse_response(&buf, closed) {
            out.push(resp);
            buf.drain(..used);
        }
        if closed {
            break;
        }
        let wait = if out.len() >= want {
            linger
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        if wait.is_zero() {
            break;
        }
        match tokio::time::timeout(wait, io.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => closed = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    (out, closed)
}

/// Writes `bytes` on a fresh TLS connection (a write error is ignored: guard may close early)
/// and reads the responses.
pub async fn send_raw(c: &Client, bytes: &[u8], want: usize, linger: Duration) -> (Vec<RawResponse>, bool) {
    let mut tls = c.tls().await;
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    read_responses(&mut tls, want, linger).await
}

/// A request head with CRLF line endings.
pub fn head(request_line: &str, headers: &[&str]) -> String {
    let mut s = format!("{request_line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

pub fn auth_line() -> String {
    format!("Authorization: {}", alice())
}

/// A complete request that would reach the upstream if guard let it: the smuggling payload.
pub const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

pub fn assert_never_smuggled(up: &Upstream, why: &str) {
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| !s.uri.contains("smuggled")),
        "{why}: a smuggled request reached the upstream: {seen:?}"
    );
}

/// How long to wait for a response nobody should send (a second one for a single request).
pub const LINGER: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------- raw HTTP/2

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 1;
pub const END_HEADERS: u8 = 4;

pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer (RFC 7541 §5.1) with `prefix` bits in the first byte.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

pub fn hpack_read_int(b: &[u8], prefix: u32) -> Option<(usize, usize)> {
    let max = (1usize << prefix) - 1;
    let mut v = (*b.first()? as usize) & max;
    if v < max {
        return Some((v, 1));
    }
    let (mut shift, mut i) = (0, 1);
    loop {
        let byte = *b.get(i)?;
        i += 1;
        v += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((v, i));
        }
        if shift > 28 {
            return None;
        }
    }
}

pub type Field = (Vec<u8>, Vec<u8>);

pub fn field(name: &str, value: &str) -> Field {
    (name.as_bytes().to_vec(), value.as_bytes().to_vec())
}

/// A header block of literal fields, never indexed and never Huffman-coded, exactly in the
/// given order and spelling: the h2 crate's client would refuse or normalise most tricks.
pub fn hpack_block(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// HEADERS, plus CONTINUATION frames when the block is over the default frame size.
pub fn h2_headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![block]
    } else {
        block.chunks(16_384).collect()
    };
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = if i + 1 == chunks.len() { END_HEADERS } else { 0 };
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        out.extend(h2_frame(kind, flags, stream, chunk));
    }
    out
}

/// The standard fields of a request, in the standard order.
pub fn h2_request(method: &str, path: &str, extra: &[Field]) -> Vec<Field> {
    let mut f = vec![
        field(":method", method),
        field(":scheme", "https"),
        field(":authority", "localhost"),
        field(":path", path),
    ];
    f.extend(extra.iter().cloned());
    f
}

/// Decodes the digits of a Huffman-coded status (RFC 7541 Appendix B: `0`-`2` are 5-bit codes,
/// `3`-`9` 6-bit codes from 011001; padding is all ones).
pub fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u32> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| u32::from(b >> i & 1)))
        .collect();
    let take = |i: usize, n: usize| bits.get(i..i + n).map(|s| s.iter().fold(0, |a, b| a << 1 | b));
    let (mut i, mut s) = (0, String::new());
    while i < bits.len() {
        if bits.len() - i < 8 && bits[i..].iter().all(|&b| b == 1) {
            break;
        }
        if let Some(v @ 0..=2) = take(i, 5) {
            s.push(char::from(b'0' + v as u8));
            i += 5;
            continue;
        }
        match take(i, 6)? {
            v @ 0b011001..=0b011111 => s.push(char::from(b'3' + (v - 0b011001) as u8)),
            _ => return None,
        }
        i += 6;
    }
    Some(s)
}

/// The `:status` of a response header block. One request per connection keeps it out of the
/// dynamic table, so it is a static index or a literal.
pub fn h2_status(block: &[u8]) -> Option<u16> {
    let mut i = 0;
    while block.get(i)? & 0xe0 == 0x20 {
        i += hpack_read_int(&block[i..], 5)?.1;
    }
    let b = block[i];
    if b & 0x80 != 0 {
        return match hpack_read_int(&block[i..], 7)?.0 {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    let prefix = if b & 0x40 != 0 { 6 } else { 4 };
    let (name, n) = hpack_read_int(&block[i..], prefix)?;
    if name != 8 {
        return None;
    }
    i += n;
    let huffman = block.get(i)? & 0x80 != 0;
    let (len, n) = hpack_read_int(&block[i..], 7)?;
    i += n;
    let raw = block.get(i..i + len)?;
    let text = if huffman {
        huffman_digits(raw)?
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    text.parse().ok()
}

/// How a raw HTTP/2 request ended. The error codes are read in failure messages.
#[derive(Debug)]
#[allow(dead_code)]
pub enum H2 {
    Response { status: u16, body: String },
    Reset(u32),
    GoAway(u32),
    Closed,
}

impl H2 {
    /// Refused by the protocol layer, or a 4xx answer.
    pub fn is_refusal(&self) -> bool {
        match self {
            H2::Response { status, .. } => (400..500).contains(status),
            _ => true,
        }
    }
}

/// Reads frames until stream `stream` ends, answering SETTINGS and PING as a client must.
pub async fn h2_read(tls: &mut Tls, stream: u32) -> H2 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut status, mut body) = (None::<u16>, Vec::new());
    let done = |status: Option<u16>, body: &[u8], otherwise: H2| match status {
        Some(status) => H2::Response {
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        },
        None => otherwise,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fh = [0u8; 9];
        if !matches!(tokio::time::timeout(left, tls.read_exact(&mut fh)).await, Ok(Ok(_))) {
            return done(status, &body, H2::Closed);
        }
        let len = (usize::from(fh[0]) << 16) | (usize::from(fh[1]) << 8) | usize::from(fh[2]);
        let (kind, flags) = (fh[3], fh[4]);
        let id = u32::from_be_bytes([fh[5], fh[6], fh[7], fh[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if !matches!(
            tokio::time::timeout(left, tls.read_exact(&mut payload)).await,
            Ok(Ok(_))
        ) {
            return done(status, &body, H2::Closed);
        }
        let unpadded = |p: &[u8]| -> Vec<u8> {
            if flags & 0x8 != 0 && !p.is_empty() {
                let pad = usize::from(p[0]);
                p.get(1..p.len().saturating_sub(pad)).unwrap_or_default().to_vec()
            } else {
                p.to_vec()
            }
        };
        match kind {
            DATA if id == stream => {
                body.extend(unpadded(&payload));
                if flags & END_STREAM != 0 {
                    return done(status, &body, H2::Closed);
                }
            }
            HEADERS if id == stream => {
                let mut block = unpadded(&payload);
                if flags & 0x20 != 0 {
                    block.drain(..5.min(block.len()));
                }
                if status.is_none() {
                    status = Some(h2_status(&block).unwrap_or(0));
                }
                if flags & END_STREAM != 0 {
                    return done(status, &body, H2::Closed);
                }
            }
            RST_STREAM if id == stream => {
                let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                return done(status, &body, H2::Reset(code));
            }
            SETTINGS if flags & 1 == 0 => {
                let _ = tls.write_all(&h2_frame(SETTINGS, 1, 0, &[])).await;
            }
            PING if flags & 1 == 0 => {
                let _ = tls.write_all(&h2_frame(PING, 1, 0, &payload)).await;
            }
            GOAWAY => {
                let last = u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                if code != 0 || last < stream {
                    return done(status, &body, H2::GoAway(code));
                }
            }
            _ => {}
        }
    }
}

/// Opens an HTTP/2 connection and writes the preface and our (empty) SETTINGS.
pub async fn h2_open(c: &Client) -> Tls {
    let mut tls = c.clone().with_alpn(&[b"h2"]).tls().await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "guard negotiated h2");
    let mut out = PREFACE.to_vec();
    out.extend(h2_frame(SETTINGS, 0, 0, &[]));
    tls.write_all(&out).await.unwrap();
    tls
}

/// One raw HTTP/2 request (stream 1) on a fresh connection.
pub async fn h2_exchange(c: &Client, fields: &[Field], data: Option<&[u8]>) -> H2 {
    let mut tls = h2_open(c).await;
    let mut out = h2_headers(1, &hpack_block(fields), data.is_none());
    if let Some(d) = data {
        out.extend(h2_frame(DATA, END_STREAM, 1, d));
    }
    let _ = tls.write_all(&out).await;
    h2_read(&mut tls, 1).await
}

// ================================================================ request smuggling
