//! The validated settings of `guard serve`: what the proxy runs on once flags (and later the
//! YAML file) have been parsed. Every duration and size carries its unit in its name, and
//! every default lives here once, so `--help`, the README and the code agree.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::model::Balance;
pub use crate::model::LogFormat;
use crate::model::{Cidr, Upstream};
use crate::overlay::{AuthOverlay, BalancingOverlay, LimitsOverlay};
use crate::roles::{Role, GROUPS_FILE_NAME};

/// guard's reserved path prefix: never forwarded, never authenticated.
pub const RESERVED_PREFIX: &str = "/_guard/";
/// The health endpoint under [`RESERVED_PREFIX`], for load balancers and compose healthchecks.
pub const HEALTH_PATH: &str = "/_guard/health";

/// Everything `guard serve` needs, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeSettings {
    /// TLS listener address.
    pub listen: SocketAddr,
    /// Where the certificate comes from.
    pub tls: TlsSource,
    /// Directory for guard's own state (self-signed certificate, users, tokens, ACME).
    pub state_dir: PathBuf,
    /// Timeouts and sizes.
    pub limits: Limits,
    /// Peers whose `X-Forwarded-*` headers are kept and extended.
    pub trusted_proxies: Vec<Cidr>,
    /// Access-log format.
    pub log_format: LogFormat,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// What is served, by host name. At least one.
    pub sites: Vec<SiteSettings>,
    /// The Prometheus metrics listener; `None`: off.
    pub metrics: Option<MetricsSettings>,
}

impl ServeSettings {
    /// The settings a reload cannot apply to a running guard (its listeners, certificate source,
    /// limits and workers are built once at start), by key, where `new` differs from `self`.
    /// Sites, and so upstreams and users and tokens files, apply live and are not listed.
    pub fn restart_needed(&self, new: &ServeSettings) -> Vec<&'static str> {
        [
            ("listen", self.listen != new.listen),
            ("tls", self.tls != new.tls),
            ("state_dir", self.state_dir != new.state_dir),
            ("limits", self.limits != new.limits),
            ("trusted_proxies", self.trusted_proxies != new.trusted_proxies),
            ("log_format", self.log_format != new.log_format),
            ("shutdown_grace", self.shutdown_grace != new.shutdown_grace),
            ("metrics", self.metrics != new.metrics),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

/// Where metrics are served and how detailed they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Plain-HTTP listener for `GET /metrics`.
    pub listen: SocketAddr,
    /// Count requests per user or token name (one series per name: cardinality).
    pub user_labels: bool,
}

/// One site: the host names it answers, where it forwards, and who may pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteSettings {
    /// Name for logs.
    pub name: String,
    /// Host names routed here, lowercase, without port. Empty: every host no other site claims.
    pub hosts: Vec<String>,
    /// Where requests go: one upstream, or several to balance across. Never empty.
    pub upstreams: Vec<Upstream>,
    /// How requests are spread over several upstreams.
    pub balance: BalanceSettings,
    /// The CAs trusted for `https://` upstreams; `None`: the system's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Forward the client's `Host` instead of the upstream's authority.
    pub preserve_host: bool,
    /// Who may pass.
    pub auth: AuthSettings,
    /// Path prefixes served without authentication (e.g. a notebook's static assets).
    pub public_paths: Vec<String>,
}

/// Authentication: where users and tokens come from and how hard guard defends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    /// Serve without authentication (`--dangerous-no-auth`).
    pub disabled: bool,
    /// htpasswd users file; may not exist yet.
    pub users_file: PathBuf,
    /// Bearer tokens file; may not exist yet.
    pub tokens_file: PathBuf,
    /// Realm in `WWW-Authenticate`.
    pub realm: String,
    /// Header that tells the upstream who was authenticated; `None` sends nothing.
    pub forwarded_user_header: Option<String>,
    /// The file of the secret sent as `X-Guard-Secret`; `None`: none is sent.
    pub upstream_secret_file: Option<PathBuf>,
    /// Origins other than the site's own whose pages may send state-changing requests
    /// (normalised as [`crate::validate::parse_origin`] writes them).
    pub allowed_origins: Vec<String>,
    /// How long a verified password stays in the cache.
    pub cache_ttl: Duration,
    /// Most cached verifications.
    pub cache_capacity: usize,
    /// Failures from one client (an IPv4 address, an IPv6 /64) that trigger a lockout.
    pub lockout_failures: u32,
    /// The window those failures are counted in.
    pub lockout_window: Duration,
    /// How long a locked-out address gets 429.
    pub lockout_duration: Duration,
    /// Whether a browser without credentials gets guard's sign-in page (else Basic's prompt).
    pub login_page: bool,
    /// How long a sign-in session lasts from sign-in.
    pub session_lifetime: Duration,
    /// How long a sign-in session lasts without a request.
    pub session_idle: Duration,
    /// The groups file giving users their role; may not exist.
    pub groups_file: PathBuf,
    /// The role of a user or token nothing else gives one.
    pub default_role: Role,
    /// Identity providers whose bearer JWTs are accepted (`auth.jwt`); empty: none.
    pub jwt: Vec<crate::jwt::JwtIssuer>,
    /// The provider browsers sign in with (`auth.oidc`); `None`: none.
    pub oidc: Option<crate::oidc::Oidc>,
}

/// Default realm.
pub const DEFAULT_REALM: &str = "MLflow";
/// Default header naming the authenticated user to the upstream.
pub const DEFAULT_FORWARDED_USER_HEADER: &str = "X-Forwarded-User";
/// Users file name inside the state directory.
pub const USERS_FILE_NAME: &str = "users.htpasswd";
/// Tokens file name inside the state directory.
pub const TOKENS_FILE_NAME: &str = "tokens.json";

impl AuthSettings {
    /// The defaults, with the users and tokens files in `state_dir`.
    pub fn defaults(state_dir: &std::path::Path) -> Self {
        AuthSettings {
            disabled: false,
            users_file: state_dir.join(USERS_FILE_NAME),
            tokens_file: state_dir.join(TOKENS_FILE_NAME),
            realm: DEFAULT_REALM.into(),
            forwarded_user_header: Some(DEFAULT_FORWARDED_USER_HEADER.into()),
            upstream_secret_file: None,
            allowed_origins: Vec::new(),
            cache_ttl: Duration::from_secs(300),
            cache_capacity: 10_000,
            lockout_failures: 10,
            lockout_window: Duration::from_secs(60),
            lockout_duration: Duration::from_secs(300),
            login_page: true,
            session_lifetime: Duration::from_secs(12 * 3600),
            session_idle: Duration::from_secs(3600),
            groups_file: state_dir.join(GROUPS_FILE_NAME),
            default_role: Role::Writer,
            jwt: Vec::new(),
            oidc: None,
        }
    }

    /// A site's auth: its own values over the top-level ones over the defaults.
    pub(crate) fn resolve(site: &AuthOverlay, top: &AuthOverlay, state_dir: &Path) -> Self {
        let d = AuthSettings::defaults(state_dir);
        let users_file = either(&site.users, &top.users).unwrap_or(d.users_file);
        AuthSettings {
            disabled: either(&site.dangerous_no_auth, &top.dangerous_no_auth).unwrap_or(d.disabled),
            // Beside the users file unless named: the two are one account database.
            groups_file: either(&site.groups, &top.groups)
                .unwrap_or_else(|| users_file.with_file_name(GROUPS_FILE_NAME)),
            users_file,
            tokens_file: either(&site.tokens, &top.tokens).unwrap_or(d.tokens_file),
            realm: either(&site.realm, &top.realm).unwrap_or(d.realm),
            forwarded_user_header: either(&site.forwarded_user_header, &top.forwarded_user_header)
                .unwrap_or(d.forwarded_user_header),
            upstream_secret_file: either(&site.upstream_secret, &top.upstream_secret),
            allowed_origins: either(&site.allowed_origins, &top.allowed_origins).unwrap_or(d.allowed_origins),
            cache_ttl: either(&site.cache_ttl, &top.cache_ttl).unwrap_or(d.cache_ttl),
            cache_capacity: either(&site.cache_size, &top.cache_size).unwrap_or(d.cache_capacity),
            lockout_failures: either(&site.lockout.failures, &top.lockout.failures).unwrap_or(d.lockout_failures),
            lockout_window: either(&site.lockout.window, &top.lockout.window).unwrap_or(d.lockout_window),
            lockout_duration: either(&site.lockout.duration, &top.lockout.duration).unwrap_or(d.lockout_duration),
            login_page: either(&site.login_page, &top.login_page).unwrap_or(d.login_page),
            session_lifetime: either(&site.session.lifetime, &top.session.lifetime).unwrap_or(d.session_lifetime),
            session_idle: either(&site.session.idle, &top.session.idle).unwrap_or(d.session_idle),
            default_role: either(&site.default_role, &top.default_role).unwrap_or(d.default_role),
            jwt: either(&site.jwt, &top.jwt).unwrap_or(d.jwt),
            oidc: either(&site.oidc, &top.oidc).or(d.oidc),
        }
    }
}

/// The site's value if it has one, else the top level's.
fn either<T: Clone>(site: &Option<T>, top: &Option<T>) -> Option<T> {
    site.as_ref().or(top.as_ref()).cloned()
}

/// Where the TLS certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files on disk, re-read when they change.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A self-signed certificate kept in the state directory.
    SelfSigned,
    /// A certificate from an ACME CA (Let's Encrypt by default), kept in the state directory
    /// and renewed while serving.
    Acme(crate::acme::AcmeSettings),
}

/// Every timeout and size limit of the serving path. None of them cuts a slow but live body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time allowed to receive a complete HTTP/1.1 request head (slowloris defence). hyper
    /// starts this timer when a keep-alive connection goes idle too.
    pub header_read_timeout: Duration,
    /// Time a request body may go without data while guard waits for it (`client_body_timeout`
    /// in nginx); only the client's silence counts, never a slow upstream.
    pub body_timeout: Duration,
    /// Time allowed to open a TCP connection to the upstream.
    pub upstream_connect_timeout: Duration,
    /// Time the upstream has to start its response after the request body has been sent.
    pub upstream_response_timeout: Duration,
    /// An idle upstream keep-alive connection older than this is closed, not reused.
    pub upstream_idle_timeout: Duration,
    /// A connection with no traffic and no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2), in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Longest request target (path and query), in bytes; 414 above it.
    pub max_uri_bytes: usize,
    /// Largest request body; `None` means unlimited.
    pub max_body_bytes: Option<u64>,
    /// Most simultaneous client connections; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Most simultaneous connections from one client (an IPv4 address or an IPv6 /64; trusted
    /// proxies are not counted); `0` means no limit. Further ones are closed at once.
    pub max_connections_per_client: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    pub max_h2_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(300),
            upstream_idle_timeout: Duration::from_secs(4),
            idle_timeout: Duration::from_secs(300),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 16 * 1024,
            max_body_bytes: None,
            max_connections: 16384,
            max_connections_per_client: 1024,
            max_h2_streams: 128,
        }
    }
}

impl Limits {
    /// The overlay's limits over the defaults.
    pub(crate) fn resolve(l: &LimitsOverlay) -> Self {
        let d = Limits::default();
        Limits {
            tls_handshake_timeout: l.tls_handshake_timeout.unwrap_or(d.tls_handshake_timeout),
            header_read_timeout: l.header_timeout.unwrap_or(d.header_read_timeout),
            body_timeout: l.body_timeout.unwrap_or(d.body_timeout),
            upstream_connect_timeout: l.connect_timeout.unwrap_or(d.upstream_connect_timeout),
            upstream_response_timeout: l.upstream_timeout.unwrap_or(d.upstream_response_timeout),
            upstream_idle_timeout: l.upstream_idle_timeout.unwrap_or(d.upstream_idle_timeout),
            idle_timeout: l.idle_timeout.unwrap_or(d.idle_timeout),
            max_header_bytes: l.max_header_size.unwrap_or(d.max_header_bytes),
            max_headers: l.max_headers.unwrap_or(d.max_headers),
            max_uri_bytes: l.max_uri_size.unwrap_or(d.max_uri_bytes),
            max_body_bytes: l.max_body_size.or(d.max_body_bytes),
            max_connections: l.max_connections.unwrap_or(d.max_connections),
            max_connections_per_client: l.max_connections_per_client.unwrap_or(d.max_connections_per_client),
            max_h2_streams: l.max_h2_streams.unwrap_or(d.max_h2_streams),
        }
    }
}

/// How a site spreads requests over several upstreams and finds the ones that are down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceSettings {
    /// Round robin or least connections.
    pub method: Balance,
    /// The active health check; `None`: off.
    pub health_check: Option<HealthCheck>,
    /// How long an upstream that refused a connection is left out; zero: never.
    pub eject_duration: Duration,
}

/// The active health check of each of a site's upstreams (one upstream is never checked: it is
/// always tried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path asked for; a 2xx answer passes.
    pub path: String,
    /// Time between two checks of one upstream.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Passes in a row that bring a down upstream back.
    pub rise: u32,
    /// Failures in a row that take an upstream out.
    pub fall: u32,
}

/// MLflow's health endpoint.
pub const DEFAULT_HEALTH_CHECK_PATH: &str = "/health";

impl Default for BalanceSettings {
    fn default() -> Self {
        BalanceSettings {
            method: Balance::RoundRobin,
            health_check: Some(HealthCheck {
                path: DEFAULT_HEALTH_CHECK_PATH.to_owned(),
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                rise: 2,
                fall: 2,
            }),
            eject_duration: Duration::from_secs(10),
        }
    }
}

impl BalanceSettings {
    /// The overlay's `balance` over the defaults.
    pub(crate) fn resolve(b: &BalancingOverlay) -> Self {
        let d = BalanceSettings::default();
        let dh = d.health_check.expect("checks are on by default");
        let interval = b.health_check_interval.unwrap_or(dh.interval);
        BalanceSettings {
            method: b.method.unwrap_or(d.method),
            health_check: (!interval.is_zero()).then(|| HealthCheck {
                path: b.health_check_path.clone().unwrap_or(dh.path),
                interval,
                timeout: b.health_check_timeout.unwrap_or(dh.timeout),
                rise: b.health_check_rise.unwrap_or(dh.rise),
                fall: b.health_check_fall.unwrap_or(dh.fall),
            }),
            eject_duration: b.eject_duration.unwrap_or(d.eject_duration),
        }
    }
}

/// Default TLS listener when no domain is configured.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/guard";
/// Default shutdown grace.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> ServeSettings {
        crate::finish(crate::parse_str(text, "guard.yaml").expect("parses")).expect("valid")
    }

    #[test]
    fn a_reload_needs_a_restart_for_limits_and_tls_but_not_for_sites() {
        let base = "upstream: localhost:5000\nauth: {dangerous_no_auth: true}\n";
        let old = settings(base);
        assert!(old.restart_needed(&settings(base)).is_empty());
        let new = settings(&format!("{base}limits: {{body_timeout: 61s}}\n"));
        assert_eq!(old.restart_needed(&new), ["limits"]);
        let new = settings(&format!(
            "{base}tls: {{acme: {{email: a@example.com, domains: [a.example.com]}}}}\n"
        ));
        assert_eq!(old.restart_needed(&new), ["listen", "tls"]);
        let new = settings("upstream: localhost:5001\nauth: {dangerous_no_auth: true}\n");
        assert!(old.restart_needed(&new).is_empty(), "sites apply live");
    }
}
