//! The access log: one line per request, emitted when its response has been sent (or the client
//! went away), with time, peer, method, path, status, bytes each way and timings. Query strings,
//! `Authorization` and cookies are never logged: they carry secrets.
//!
//! Lines look like the rest of guard's log (tracing's text or JSON format, target
//! `guard::access`, filtered by `GUARD_LOG` like any target), but are formatted here: going
//! through tracing's formatter cost about a third of guard's CPU per proxied request. On worker
//! threads lines are collected and written at most [`FLUSH_AFTER`] later, in one write, as
//! nginx's `access_log ... buffer= flush=` does; elsewhere each line is written at once.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, StatusCode};
use tokio::sync::Notify;

use crate::body::BodyProgress;
use crate::route::SiteLocal;

/// The longest a buffered line waits before it is written.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// A worker's buffer is written as soon as it holds this much.
const BUFFER_BYTES: usize = 16 * 1024;

static JSON: AtomicBool = AtomicBool::new(false);

/// Chooses the line format, once, before serving: JSON (`--log-format json`) or text.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// What the log line says about one request, filled in as the pipeline runs.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request head arrived.
    pub start: Instant,
    /// The client's IP as text.
    pub peer: HeaderValue,
    /// Request method.
    pub method: Method,
    /// Request target; only its path is logged, never the query string.
    pub uri: http::Uri,
    /// HTTP version as the client spoke it.
    pub version: http::Version,
    /// Final status.
    pub status: StatusCode,
    /// Who was authenticated (user or token name).
    pub user: Option<String>,
    /// The site that served it.
    pub site: Option<Arc<SiteLocal>>,
    /// Time until the upstream's response head arrived.
    pub upstream_time: Option<Duration>,
    /// Request-body progress, when the request was forwarded.
    pub request_body: Option<Arc<BodyProgress>>,
}

impl AccessRecord {
    /// Starts a record for a request that just arrived.
    pub fn new(peer: HeaderValue, method: Method, uri: &http::Uri, version: http::Version) -> Self {
        AccessRecord {
            start: Instant::now(),
            peer,
            method,
            // A reference-counted copy, not a new string.
            uri: uri.clone(),
            version,
            status: StatusCode::OK,
            user: None,
            site: None,
            upstream_time: None,
            request_body: None,
        }
    }

    /// Request body bytes read from the client so far.
    pub fn bytes_in(&self) -> u64 {
        self.request_body
            .as_ref()
            .map_or(0, |p| p.bytes.load(Ordering::Relaxed))
    }

    /// Emits the line. `bytes_out` is the response body as sent; `complete` is false when the
    /// client went away or the stream broke before the end.
    pub fn emit(self, bytes_out: u64, complete: bool) {
        if !tracing::enabled!(target: "guard::access", tracing::Level::INFO) {
            return;
        }
        let line = Line {
            rec: &self,
            path: truncate(self.uri.path(), MAX_PATH_BYTES),
            user: self.user.as_deref().unwrap_or("-"),
            site: self.site.as_ref().map_or("-", |s| s.name.as_str()),
            bytes_out,
            complete,
            duration: self.start.elapsed(),
        };
        BUFFER.with_borrow_mut(|b| {
            let start = b.bytes.len();
            if JSON.load(Ordering::Relaxed) {
                line.json(&mut b.bytes);
            } else {
                line.text(&mut b.bytes);
            }
            match &b.flusher {
                None => b.write_out(),
                Some(_) if b.bytes.len() >= BUFFER_BYTES => b.write_out(),
                Some(flusher) if start == 0 => flusher.notify_one(),
                Some(_) => {}
            }
        });
    }
}

/// One line being formatted.
struct Line<'a> {
    rec: &'a AccessRecord,
    /// The path, cut to [`MAX_PATH_BYTES`] and marked `...` when it was.
    path: Cow<'a, str>,
    user: &'a str,
    site: &'a str,
    bytes_out: u64,
    complete: bool,
    duration: Duration,
}

/// Appends an integer (itoa, not `core::fmt`: this runs several times for every request).
fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends a duration as milliseconds with one decimal, cut not rounded (integer formatting is
/// several times cheaper than float formatting).
fn push_millis(out: &mut String, d: Duration) {
    let tenths = d.as_micros() as u64 / 100;
    push_int(out, tenths / 10);
    out.push('.');
    out.push(char::from(b'0' + (tenths % 10) as u8));
}

/// `HTTP/1.1` and friends, as `Version`'s `Debug` writes them.
fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Appends `s` quoted as `{:?}` writes it; printable ASCII without quotes or backslashes (every
/// user and site name in practice) is copied as is.
fn push_debug_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

impl Line<'_> {
    /// `2026-01-02T03:04:05.123456Z  INFO guard::access: peer=... method=GET ...`, as tracing's
    /// text format writes it.
    fn text(&self, out: &mut String) {
        let r = self.rec;
        timestamp(out);
        out.push_str("  INFO guard::access: peer=");
        out.push_str(r.peer.to_str().unwrap_or("-"));
        out.push_str(" method=");
        out.push_str(r.method.as_str());
        out.push_str(" path=");
        out.push_str(&self.path);
        out.push_str(" version=");
        out.push_str(version_str(r.version));
        out.push_str(" status=");
        out.push_str(r.status.as_str());
        out.push_str(" bytes_in=");
        push_int(out, r.bytes_in());
        out.push_str(" bytes_out=");
        push_int(out, self.bytes_out);
        out.push_str(" duration_ms=");
        push_millis(out, self.duration);
        out.push_str(" upstream_ms=");
        match r.upstream_time {
            Some(d) => push_millis(out, d),
            None => out.push('-'),
        }
        out.push_str(" user=");
        push_debug_str(out, self.user);
        out.push_str(" site=");
        push_debug_str(out, self.site);
        out.push_str(if self.complete {
            " complete=true\n"
        } else {
            " complete=false\n"
        });
    }

    /// One JSON object, with the fields of the text line plus `timestamp`, `level` and `target`.
    fn json(&self, out: &mut String) {
        let r = self.rec;
        out.push_str("{\"timestamp\":\"");
        timestamp(out);
        out.push_str("\",\"level\":\"INFO\",\"peer\":\"");
        out.push_str(r.peer.to_str().unwrap_or("-"));
        out.push_str("\",\"method\":");
        json_str(out, r.method.as_str());
        out.push_str(",\"path\":");
        json_str(out, &self.path);
        out.push_str(",\"version\":\"");
        out.push_str(version_str(r.version));
        out.push_str("\",\"status\":");
        out.push_str(r.status.as_str());
        out.push_str(",\"bytes_in\":");
        push_int(out, r.bytes_in());
        out.push_str(",\"bytes_out\":");
        push_int(out, self.bytes_out);
        out.push_str(",\"duration_ms\":");
        push_millis(out, self.duration);
        out.push_str(",\"upstream_ms\":");
        match r.upstream_time {
            Some(d) => push_millis(out, d),
            None => out.push_str("null"),
        }
        out.push_str(",\"user\":");
        json_str(out, self.user);
        out.push_str(",\"site\":");
        json_str(out, self.site);
        out.push_str(if self.complete {
            ",\"complete\":true"
        } else {
            ",\"complete\":false"
        });
        out.push_str(",\"target\":\"guard::access\"}\n");
    }
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => drop(write!(out, "\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// Appends the current UTC time as `2026-01-02T03:04:05.123456Z`. The calendar part is worked out
/// once a second per thread.
fn timestamp(out: &mut String) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != since.as_secs() {
            *second = since.as_secs();
            text.clear();
            let utc = guard_config::clock::format_utc(since.as_secs());
            text.push_str(utc.strip_suffix('Z').unwrap_or(&utc));
        }
        out.push_str(text);
    });
    // Six digits, zero-padded: 1,000,000 + micros formatted, leading '1' dropped.
    out.push('.');
    out.push_str(&itoa::Buffer::new().format(1_000_000 + since.subsec_micros())[1..]);
    out.push('Z');
}

/// Lines not yet written, per thread.
struct Buffer {
    bytes: String,
    /// Set on worker threads: wakes the task that writes the buffer out after [`FLUSH_AFTER`].
    flusher: Option<Arc<Notify>>,
}

impl Buffer {
    /// Writes every whole line out to stderr, in one write when it fits.
    fn write_out(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        // Nowhere to report a failed write to: the log is where it would go.
        let _ = std::io::stderr().lock().write_all(self.bytes.as_bytes());
        self.bytes.clear();
    }
}

thread_local! {
    static BUFFER: RefCell<Buffer> = const { RefCell::new(Buffer { bytes: String::new(), flusher: None }) };
}

/// Turns on buffering for the calling thread, which must be the only thread of a running tokio
/// runtime (a worker): a task on it writes the lines out at most [`FLUSH_AFTER`] after the first
/// one. Call [`flush`] on the thread once the runtime has stopped.
pub fn buffer_on_this_worker() {
    let notify = Arc::new(Notify::new());
    BUFFER.with_borrow_mut(|b| b.flusher = Some(notify.clone()));
    tokio::spawn(async move {
        loop {
            notify.notified().await;
            tokio::time::sleep(FLUSH_AFTER).await;
            flush();
        }
    });
}

/// Writes out whatever the calling thread has buffered.
pub fn flush() {
    BUFFER.with_borrow_mut(Buffer::write_out);
}

/// Paths longer than this are cut in the log (they can be long and hostile).
const MAX_PATH_BYTES: usize = 512;

/// `s` cut to at most `max` bytes on a character boundary, with `...` when it was cut (a copy
/// only then).
fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &s[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        let mut r = AccessRecord::new(
            HeaderValue::from_static("10.0.0.1"),
            Method::POST,
            &"/api/x?secret=1".parse().unwrap(),
            http::Version::HTTP_2,
        );
        r.status = StatusCode::CREATED;
        r.upstream_time = Some(Duration::from_micros(2500));
        r
    }

    /// `2026-01-02T03:04:05.123456Z`
    fn assert_timestamp(ts: &str) {
        let shape: String = ts.chars().map(|c| if c.is_ascii_digit() { '0' } else { c }).collect();
        assert_eq!(shape, "0000-00-00T00:00:00.000000Z", "{ts}");
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut out = String::new();
        Line {
            rec: &record(),
            path: "/api/\"x\"\\y...".into(),
            user: "alice",
            site: "default",
            bytes_out: 7,
            complete: true,
            duration: Duration::from_micros(3250),
        }
        .json(&mut out);
        assert!(out.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["target"], "guard::access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["peer"], "10.0.0.1");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/api/\"x\"\\y...");
        assert_eq!(v["version"], "HTTP/2.0");
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes_in"], 0);
        assert_eq!(v["bytes_out"], 7);
        assert_eq!(v["duration_ms"], 3.2);
        assert_eq!(v["upstream_ms"], 2.5);
        assert_eq!(v["user"], "alice");
        assert_eq!(v["site"], "default");
        assert_eq!(v["complete"], true);
        let ts = v["timestamp"].as_str().unwrap();
        assert_timestamp(ts);
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary_and_queries_never_logged() {
        assert_eq!(truncate("/abc", 4), "/abc");
        assert_eq!(truncate("/aé", 3), "/a...");
        let rec = record();
        assert_eq!(rec.uri.path(), "/api/x");
    }

    #[test]
    fn hand_formatting_matches_core_fmt() {
        for name in ["alice", "-", "a\"b", "back\\slash", "tab\there", "é"] {
            let mut out = String::new();
            push_debug_str(&mut out, name);
            assert_eq!(out, format!("{name:?}"));
        }
        for (micros, text) in [
            (0, "0.0"),
            (99, "0.0"),
            (100, "0.1"),
            (3250, "3.2"),
            (12_345_678, "12345.6"),
        ] {
            let mut out = String::new();
            push_millis(&mut out, Duration::from_micros(micros));
            assert_eq!(out, text);
        }
        for v in [http::Version::HTTP_10, http::Version::HTTP_11, http::Version::HTTP_2] {
            assert_eq!(version_str(v), format!("{v:?}"));
        }
    }

    #[test]
    fn text_lines_match_the_rest_of_the_log() {
        let mut rec = record();
        rec.upstream_time = None;
        let mut out = String::new();
        Line {
            rec: &rec,
            path: "/api/\"x\"\\y".into(),
            user: "-",
            site: "default",
            bytes_out: 7,
            complete: false,
            duration: Duration::from_micros(40),
        }
        .text(&mut out);
        let (ts, rest) = out.split_once("  ").unwrap();
        assert_timestamp(ts);
        assert_eq!(
            rest,
            "INFO guard::access: peer=10.0.0.1 method=POST path=/api/\"x\"\\y version=HTTP/2.0 status=201 \
             bytes_in=0 bytes_out=7 duration_ms=0.0 upstream_ms=- user=\"-\" site=\"default\" complete=false\n"
        );
    }
}
