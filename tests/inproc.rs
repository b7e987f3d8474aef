//! The in-process tier: guard's request pipeline run inside the test process, with no binary.
//! `guard_proxy::prepare` and `serve` on a port-0 listener, in-process echo upstreams, settings
//! from YAML text: header hygiene, limits, routing and authentication outcomes, each case in
//! milliseconds. What needs the binary (flags, signals, exit codes, logs) stays in the other files.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use guard_config::clock::Clock;
use http::Request;
use tokio::sync::oneshot;

/// One guard serving in this process until dropped.
struct InProc {
    addr: SocketAddr,
    ca: PathBuf,
    /// The token `ci`, made before the start.
    token: String,
    /// The token `short`, good for an hour from the start.
    short: String,
    /// The metrics listener, when the settings turn metrics on.
    metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    _dir: TempDir,
}

impl InProc {
    /// A guard on settings `yaml`, where `{dir}` stands for a fresh directory holding the
    /// users file `users` (ann and bob, bcrypt cost 4), the groups file `groups` (bob is a
    /// reader), the tokens file `tokens.json` (the token `ci`) and the state directory.
    async fn start(yaml: &str) -> InProc {
        InProc::start_with_clock(yaml, Clock::system()).await
    }

    /// [`InProc::start`] with authentication on `clock`. Beside `ci` there is the token `short`,
    /// which expires an hour after the start.
    async fn start_with_clock(yaml: &str, clock: Clock) -> InProc {
        init();
        let dir = TempDir::new("inproc");
        let users = dir.path().join("users");
        for (name, pw) in [("ann", "ann-pw"), ("bob", "bob-pw")] {
            guard_config::users::add_user(&users, name, &pw.into(), 4).expect("add user");
        }
        std::fs::write(dir.path().join("groups"), "reader: bob\n").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = guard_config::tokens::create_token(&dir.path().join("tokens.json"), "ci", None, None, now)
            .expect("token")
            .expose()
            .to_owned();
        let short = guard_config::tokens::create_token(
            &dir.path().join("tokens.json"),
            "short",
            None,
            Some(Duration::from_secs(3600)),
            now,
        )
        .expect("token")
        .expose()
        .to_owned();
        let yaml = yaml.replace("{dir}", dir.path().to_str().unwrap());
        let overlay = guard_config::parse_str(&yaml, "guard.yaml").expect("the YAML parses");
        let settings = guard_config::finish(overlay).expect("valid settings");
        let metrics_wanted = settings.metrics.is_some();
        let mut prepared = guard_proxy::prepare_with_clock(settings, clock).expect("prepared");
        let metrics = metrics_wanted.then(|| {
            let m = guard_proxy::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = m.local_addr().unwrap();
            prepared.set_metrics_listener(m);
            addr
        });
        let ca = prepared.trust_anchor.clone().expect("a self-signed certificate");
        let listener = guard_proxy::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            guard_proxy::serve(prepared, listener, shutdown).await.expect("serves");
        });
        InProc {
            addr,
            ca,
            token,
            short,
            metrics,
            stop: Some(stop),
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::new(self.addr, &self.ca, "localhost")
    }

    /// The value of the counter `name` on the metrics listener.
    async fn counter(&self, name: &str) -> f64 {
        let addr = self.metrics.expect("metrics are on");
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let get = Request::get("/metrics")
            .header("host", "metrics")
            .body(empty())
            .unwrap();
        let page = text(send.send_request(get).await.unwrap().into_body()).await;
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not on the metrics page"))
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The common part of every guard here: state, users and groups in `{dir}`.
fn base(upstream: &str) -> String {
    format!(
        "upstream: {upstream}\nstate_dir: {{dir}}/state\nauth:\n  users: {{dir}}/users\n  groups: {{dir}}/groups\n  \
         tokens: {{dir}}/tokens.json\n  lockout: {{failures: 0}}\n"
    )
}

/// The status of a GET of `path` on `host`, on a fresh connection.
async fn get_status(c: &Client, host: &str, path: &str, auth: Option<&str>) -> u16 {
    c.send(req("GET", host, path, auth).body(empty()).unwrap())
        .await
        .status()
        .as_u16()
}

fn req(method: &str, host: &str, path: &str, auth: Option<&str>) -> http::request::Builder {
    let b = Request::builder().method(method).uri(path).header("host", host);
    match auth {
        Some(a) => b.header("authorization", a),
        None => b,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_between_client_and_upstream_are_cleaned_both_ways() {
    let up = Echo::start().await;
    let g = InProc::start(&format!("{}trusted_proxies: []\n", base(&up.authority()))).await;
    let c = g.client();
    let r = req("GET", "localhost", "/api/x?q=1", Some(&basic("ann", "ann-pw")))
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("te", "trailers")
        .header("forwarded", "for=6.6.6.6")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-user", "mallory")
        .header("cookie", "a=1; __Host-guard_session=SEALED")
        .body(empty())
        .unwrap();
    let resp = c.send(r).await;
    assert_eq!(resp.status(), 200);
    // Downstream: the upstream's Server and its hop-by-hop headers stop at guard.
    assert!(
        resp.headers().get("server").is_none(),
        "the upstream's Server is not passed on"
    );
    assert!(resp.headers().get("x-resp-hop").is_none());
    assert!(resp.headers().get("keep-alive").is_none());
    assert_eq!(resp.headers()["x-end"], "kept");
    let seen = up.last();
    assert_eq!(seen.uri, "/api/x?q=1");
    // Hop-by-hop and what the connection header named never go upstream.
    assert_eq!(seen.header("x-hop"), None);
    assert_eq!(seen.header("te"), None);
    // guard's credentials stay with guard; guard says who the user is, not the client.
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("cookie"), Some("a=1"));
    assert_eq!(seen.header("x-forwarded-user"), Some("ann"));
    // An untrusted client's forwarding claims are replaced by what guard saw.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("localhost"));
    assert!(
        seen.all("forwarded").is_empty(),
        "an RFC 7239 Forwarded from the client is dropped"
    );
    assert_eq!(seen.header("host"), Some(up.authority().as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_hold_before_anything_is_forwarded() {
    let up = Echo::start().await;
    let limits = "limits:\n  max_headers: 12\n  max_uri_size: 1K\n  max_body_size: 1K\n";
    let g = InProc::start(&format!("{}{limits}", base(&up.authority()))).await;
    let c = g.client();
    let ann = basic("ann", "ann-pw");
    let mut many = req("GET", "localhost", "/", Some(&ann));
    for i in 0..20 {
        many = many.header(format!("x-{i}"), "1");
    }
    // HTTP/1.1 header count: hyper's own limit, with guard's value.
    assert_eq!(c.send(many.body(empty()).unwrap()).await.status(), 431);
    let long = format!("/{}", "a".repeat(1100));
    assert_eq!(
        c.send(req("GET", "localhost", &long, Some(&ann)).body(empty()).unwrap())
            .await
            .status(),
        414
    );
    let two_hosts = req("GET", "localhost", "/", Some(&ann))
        .header("host", "other")
        .body(empty())
        .unwrap();
    assert_eq!(c.send(two_hosts).await.status(), 400);
    let big = req("POST", "localhost", "/upload", Some(&ann))
        .header("content-length", "2048")
        .body(body(vec![b'x'; 2048]))
        .unwrap();
    assert_eq!(c.send(big).await.status(), 413);
    assert_eq!(up.count(), 0, "nothing over a limit reached the upstream");
    let small = req("POST", "localhost", "/upload", Some(&ann))
        .body(body(vec![b'x'; 512]))
        .unwrap();
    assert_eq!(c.send(small).await.status(), 200);
    assert_eq!(up.last().body_len, 512);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_go_to_their_site_and_guard_paths_stay_guards() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let yaml = format!(
        "state_dir: {{dir}}/state\nauth:\n  users: {{dir}}/users\n  groups: {{dir}}/groups\n  lockout: {{failures: 0}}\n\
         sites:\n  - name: a\n    hosts: [a.test]\n    upstream: {}\n  - name: b\n    hosts: [b.test]\n    upstream: {}\n    public_paths: [/static/]\n",
        a.authority(),
        b.authority()
    );
    let g = InProc::start(&yaml).await;
    let c = g.client();
    let ann = basic("ann", "ann-pw");
    assert_eq!(get_status(&c, "a.test", "/x", Some(&ann)).await, 200);
    assert_eq!(get_status(&c, "b.test:443", "/y", Some(&ann)).await, 200);
    assert_eq!((a.count(), b.count()), (1, 1));
    assert_eq!(b.last().uri, "/y");
    // A host no site claims: 421, forwarded nowhere.
    assert_eq!(get_status(&c, "c.test", "/x", Some(&ann)).await, 421);
    // A public path needs no credentials on its own site only.
    assert_eq!(get_status(&c, "b.test", "/static/app.js", None).await, 200);
    assert_eq!(get_status(&c, "a.test", "/static/app.js", None).await, 401);
    // guard's own paths: health without credentials, anything else under the prefix 404.
    assert_eq!(get_status(&c, "a.test", "/_guard/health", None).await, 200);
    assert_eq!(get_status(&c, "a.test", "/_guard/x", Some(&ann)).await, 404);
    assert_eq!(
        (a.count(), b.count()),
        (1, 2),
        "guard's paths and refusals were never forwarded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_authentication_outcome_gets_its_answer() {
    let up = Echo::start().await;
    let g = InProc::start(&base(&up.authority())).await;
    let c = g.client();
    let get = |auth: Option<String>| {
        req(
            "GET",
            "localhost",
            "/api/2.0/mlflow/experiments/search",
            auth.as_deref(),
        )
    };

    // No credentials: 401 JSON with the Basic challenge, never a redirect.
    let resp = c.send(get(None).body(empty()).unwrap()).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic realm="));
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        echo_json(&text(resp.into_body()).await)["error_code"],
        "UNAUTHENTICATED"
    );
    // A browser navigation without credentials: guard's sign-in page.
    let nav = req("GET", "localhost", "/", None)
        .header("accept", "text/html")
        .header("sec-fetch-mode", "navigate")
        .body(empty())
        .unwrap();
    let resp = c.send(nav).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(resp.headers().get("www-authenticate").is_none());
    // Wrong password, malformed header, unknown token: 401; right ones pass.
    let statuses = [
        (Some(basic("ann", "nope")), 401),
        (Some("Basic !!!".to_owned()), 401),
        (Some("Bearer grd_unknown".to_owned()), 401),
        (Some(basic("ann", "ann-pw")), 200),
        (Some(format!("Bearer {}", g.token)), 200),
    ];
    for (auth, want) in statuses {
        let shown = auth.clone();
        let got = c.send(get(auth).body(empty()).unwrap()).await.status();
        assert_eq!(got, want, "{shown:?}");
    }
    assert_eq!(up.count(), 2);
    assert_eq!(up.last().header("x-forwarded-user"), Some("ci"));
    // A reader may read and not write; the refusal names the role, and nothing is forwarded.
    let bob = basic("bob", "bob-pw");
    assert_eq!(
        c.send(get(Some(bob.clone())).body(empty()).unwrap()).await.status(),
        200
    );
    let write = req("POST", "localhost", "/api/2.0/mlflow/experiments/create", Some(&bob))
        .header("content-type", "application/json")
        .body(body(r#"{"name":"x"}"#))
        .unwrap();
    let resp = c.send(write).await;
    assert_eq!(resp.status(), 403);
    assert!(text(resp.into_body()).await.contains("your role is reader"));
    assert_eq!(up.count(), 3);
}

const SESSION: &str = "__Host-guard_session";

/// The value `resp` sets for cookie `name`, if it sets one.
fn set_cookie(resp: &http::Response<hyper::body::Incoming>, name: &str) -> Option<String> {
    resp.headers().get_all("set-cookie").iter().find_map(|v| {
        let (k, rest) = v.to_str().ok()?.split_once('=')?;
        (k == name).then(|| rest.split(';').next().unwrap_or("").to_owned())
    })
}

/// Signs `user` in on guard's page as a browser does; the `Cookie` a browser then sends.
async fn sign_in(c: &Client, user: &str, password: &str) -> String {
    let page = c
        .send(
            req("GET", "localhost", "/_guard/login", None)
                .header("accept", "text/html")
                .body(empty())
                .unwrap(),
        )
        .await;
    let csrf = set_cookie(&page, "__Host-guard_login").expect("the form's cookie");
    let form = format!("user={user}&password={password}&csrf={csrf}&next=%2F");
    let post = req("POST", "localhost", "/_guard/login", None)
        .header("origin", "https://localhost")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("__Host-guard_login={csrf}"))
        .body(body(form))
        .unwrap();
    let resp = c.send(post).await;
    assert_eq!(resp.status(), 303, "signed in");
    let session = set_cookie(&resp, SESSION).expect("a session cookie");
    format!("{SESSION}={session}; mlflow_user={user}")
}

/// An API call with only `cookie`: its status, and the renewed session cookie if one came.
async fn api_with(c: &Client, cookie: &str) -> (u16, Option<String>, bool) {
    let resp = c
        .send(
            req("GET", "localhost", "/api/2.0/mlflow/experiments/search", None)
                .header("cookie", cookie)
                .body(empty())
                .unwrap(),
        )
        .await;
    let renewed = set_cookie(&resp, SESSION).filter(|v| !v.is_empty());
    let deleted =
        resp.headers().get_all("set-cookie").iter().any(|v| {
            v.to_str().unwrap().starts_with(&format!("{SESSION}=;")) && v.to_str().unwrap().contains("Max-Age=0")
        });
    (
        resp.status().as_u16(),
        renewed.map(|v| format!("{SESSION}={v}; mlflow_user=ann")),
        deleted,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_ends_when_idle_and_at_its_lifetime_on_a_moved_clock() {
    let up = Echo::start().await;
    let clock = Clock::manual();
    let g = InProc::start_with_clock(&base(&up.authority()), clock.clone()).await;
    let c = g.client();
    let hour = Duration::from_secs(3600);
    let minutes = |m: u64| Duration::from_secs(60 * m);

    // Idle: 1 h without a request ends it; the refusal deletes the cookie.
    let idle = sign_in(&c, "ann", "ann-pw").await;
    assert_eq!(api_with(&c, &idle).await.0, 200);
    clock.advance(hour + minutes(1));
    let (status, _, deleted) = api_with(&c, &idle).await;
    assert_eq!((status, deleted), (401, true), "idle past the hour");

    // In use it is renewed (once a tenth of the idle timeout has passed), and the renewed cookie
    // outlives the idle timeout of the first one.
    let first = sign_in(&c, "ann", "ann-pw").await;
    clock.advance(minutes(50));
    let (status, renewed, _) = api_with(&c, &first).await;
    assert_eq!(status, 200);
    let renewed = renewed.expect("a renewed session cookie");
    assert_ne!(renewed, first);
    clock.advance(minutes(20));
    assert_eq!(api_with(&c, &first).await.0, 401, "the first cookie is idle");
    assert_eq!(api_with(&c, &renewed).await.0, 200, "the renewed one is not");

    // Lifetime: 12 h from sign-in however active, renewals included.
    let mut cookie = sign_in(&c, "ann", "ann-pw").await;
    let mut elapsed = Duration::ZERO;
    while elapsed < 12 * hour - minutes(50) {
        clock.advance(minutes(50));
        elapsed += minutes(50);
        let (status, renewed, _) = api_with(&c, &cookie).await;
        assert_eq!(status, 200, "at {elapsed:?}");
        cookie = renewed.unwrap_or(cookie);
    }
    clock.advance(12 * hour - elapsed);
    let (status, _, deleted) = api_with(&c, &cookie).await;
    assert_eq!((status, deleted), (401, true), "past its lifetime");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_expire_and_lockouts_end_on_a_moved_clock() {
    let up = Echo::start().await;
    let clock = Clock::manual();
    let yaml = base(&up.authority()).replace(
        "lockout: {failures: 0}",
        "lockout: {failures: 3, window: 1m, duration: 5m}",
    );
    let g = InProc::start_with_clock(&yaml, clock.clone()).await;
    let c = g.client();
    let call = |auth: String| req("GET", "localhost", "/x", Some(&auth)).body(empty()).unwrap();

    // A token good for an hour, then not.
    assert_eq!(c.send(call(format!("Bearer {}", g.short))).await.status(), 200);
    clock.advance(Duration::from_secs(3601));
    let resp = c.send(call(format!("Bearer {}", g.short))).await;
    assert_eq!(resp.status(), 401);
    assert!(text(resp.into_body()).await.contains("expired"));
    assert_eq!(
        c.send(call(format!("Bearer {}", g.token))).await.status(),
        200,
        "one without expiry"
    );

    // Three failures inside the window lock the address out for five minutes, the right
    // password included; then it may try again. (The expired token was a failure too: a fresh
    // window first.)
    clock.advance(Duration::from_secs(61));
    for _ in 0..2 {
        assert_eq!(c.send(call(basic("ann", "wrong"))).await.status(), 401);
    }
    let resp = c.send(call(basic("ann", "wrong"))).await;
    assert_eq!(resp.status(), 401);
    let resp = c.send(call(basic("ann", "ann-pw"))).await;
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((290..=300).contains(&wait), "Retry-After {wait}");
    clock.advance(Duration::from_secs(301));
    assert_eq!(c.send(call(basic("ann", "ann-pw"))).await.status(), 200);

    // Failures a window apart never add up to a lockout.
    for _ in 0..2 {
        assert_eq!(c.send(call(basic("ann", "wrong"))).await.status(), 401);
    }
    clock.advance(Duration::from_secs(61));
    for _ in 0..2 {
        assert_eq!(c.send(call(basic("ann", "wrong"))).await.status(), 401);
    }
    assert_eq!(c.send(call(basic("ann", "ann-pw"))).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_password_is_remembered_for_the_cache_ttl_on_a_moved_clock() {
    let up = Echo::start().await;
    let clock = Clock::manual();
    // The address only turns metrics on: the test hands guard its own port-0 listener.
    let yaml = format!("{}metrics_listen: 127.0.0.1:9\n", base(&up.authority()))
        .replace("auth:\n", "auth:\n  cache_ttl: 5m\n");
    let g = InProc::start_with_clock(&yaml, clock.clone()).await;
    let c = g.client();
    let ann = || {
        req("GET", "localhost", "/x", Some(&basic("ann", "ann-pw")))
            .body(empty())
            .unwrap()
    };
    let counts = || async {
        (
            g.counter("guard_auth_cache_misses_total").await,
            g.counter("guard_auth_cache_hits_total").await,
        )
    };
    assert_eq!(c.send(ann()).await.status(), 200);
    assert_eq!(c.send(ann()).await.status(), 200);
    assert_eq!(counts().await, (1.0, 1.0), "the second request came from the cache");
    clock.advance(Duration::from_secs(4 * 60));
    assert_eq!(c.send(ann()).await.status(), 200);
    assert_eq!(counts().await, (1.0, 2.0), "still remembered inside the TTL");
    clock.advance(Duration::from_secs(61));
    assert_eq!(c.send(ann()).await.status(), 200);
    assert_eq!(
        counts().await,
        (2.0, 2.0),
        "checked with bcrypt again once the TTL passed"
    );
}
