//! The table of `guard serve` settings. One row per setting names its YAML key (with the doc
//! the file's reader sees), its type as written and as checked, how the file's value is read,
//! and its flag; from the rows come the raw serde structs ([`crate::raw`]), the overlay
//! ([`crate::overlay`]), the merge and file-reading code, and [`flags`]: plain data that
//! `src/cli.rs` builds `guard serve`'s flags from, so this crate needs no clap.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::acme::{self, ChallengeChoice};
use crate::check::{
    self as v, file, jwt_issuers, kept, list, oidc_provider, text, upstreams, value, Check, HeaderChoice, UpstreamList,
};
use crate::model::{parse_duration, parse_size, Balance, Cidr, LogFormat, Upstream};
use crate::origins::{pick, Origins};
use crate::roles::Role;

/// One flag of `guard serve`, as plain data for the command line to build.
pub struct Flag {
    /// The key path it sets (`limits.max_body_size`); also the clap argument's id.
    pub key: &'static str,
    /// The long name without its dashes: `max-body-size`.
    pub long: &'static str,
    /// The environment variable, when it is not `GUARD_` and the long name.
    env: Option<&'static str>,
    /// What `--help` shows for the value; empty for a switch.
    pub value_name: &'static str,
    /// The line `--help` shows, its default as `[default: ...]`.
    pub help: &'static str,
    /// Repeatable, and comma-separated in the environment variable.
    pub list: bool,
    /// The only values it takes (shown by `--help`); empty: whatever [`Set::Text`] accepts.
    pub choices: &'static [&'static str],
    /// How a given value lands in the overlay.
    pub set: Set,
}

/// How a flag's value lands in the overlay.
#[derive(Clone, Copy)]
pub enum Set {
    /// Text, checked as it is stored; the message follows clap's `invalid value` prefix.
    Text(fn(&mut Overlay, &str) -> Result<(), String>),
    /// A path, taken as the operating system gave it.
    Path(fn(&mut Overlay, PathBuf)),
    /// A switch, called only when it is on: an absent switch leaves the file's value.
    Switch(fn(&mut Overlay)),
}

impl Flag {
    /// A flag of one value, its variable `GUARD_` and the long name.
    const fn new(
        key: &'static str,
        long: &'static str,
        value_name: &'static str,
        help: &'static str,
        set: Set,
    ) -> Flag {
        Flag {
            key,
            long,
            env: None,
            value_name,
            help,
            list: false,
            choices: &[],
            set,
        }
    }

    /// `GUARD_` and the long name, unless the row names another.
    pub fn env(&self) -> String {
        match self.env {
            Some(env) => env.to_owned(),
            None => format!("GUARD_{}", self.long.to_ascii_uppercase().replace('-', "_")),
        }
    }
}

/// Every flag of `guard serve` that sets a key, section by section, each in the file's order.
pub fn flags() -> impl Iterator<Item = &'static Flag> {
    [
        Overlay::FLAGS,
        TlsOverlay::FLAGS,
        AcmeOverlay::FLAGS,
        LimitsOverlay::FLAGS,
        BalancingOverlay::FLAGS,
        AuthOverlay::FLAGS,
        LockoutOverlay::FLAGS,
        SessionOverlay::FLAGS,
    ]
    .into_iter()
    .flatten()
}

/// `sub` under the key path `at`.
fn join(at: &str, sub: &str) -> String {
    if at.is_empty() {
        sub.to_owned()
    } else {
        format!("{at}.{sub}")
    }
}

/// The overlay's field for a row: a setting is unset until a layer gives it; a section is
/// always there; a hand-kept row has the type it names.
macro_rules! overlay_type {
    (value $ty:ty) => { Option<$ty> };
    (section $ty:ty) => { $ty };
    (hand $ty:ty) => { $ty };
}

/// One row's part of [`merge_rows`]: hand-kept rows are merged by the caller.
macro_rules! merge_row {
    (value $ty:ty; $h:expr, $l:expr, $at:expr, $o:expr) => {
        $h = pick($h.take(), $l.take(), $at, $o)
    };
    (section $ty:ty; $h:expr, $l:expr, $at:expr, $o:expr) => {
        <$ty>::merge_rows(&mut $h, &mut $l, $at, $o)
    };
    (hand $ty:ty; $h:expr, $l:expr, $at:expr, $o:expr) => {};
}

/// One row's part of `rows_from_raw`: hand-kept rows are read by the caller.
macro_rules! read_row {
    (value $ty:ty; $c:expr, $at:expr, $raw:expr; $read:ident $(($($arg:expr),*))?) => {
        $read($c, $at, $raw $($(, $arg)*)?)
    };
    (section $ty:ty; $c:expr, $at:expr, $raw:expr;) => {
        <$ty>::rows_from_raw(&mut $raw.unwrap_or_default(), $at, $c)
    };
    (hand $ty:ty; $c:expr, $at:expr, $raw:expr;) => {
        <$ty>::default()
    };
}

/// `Some` of the one token given, else `None`.
macro_rules! some_or_none {
    () => {
        None
    };
    ($e:expr) => {
        Some($e)
    };
}

/// A row's flag: `value` (text the function checks), `list` (the same, repeatable), `choice`
/// (one of the listed words), `path`, or `switch` (sets the value given when present).
macro_rules! flag {
    ($key:expr, $field:ident, value $long:literal $name:literal $parse:expr; $help:literal) => {
        Flag::new($key, $long, $name, $help, Set::Text(|o, s| {
            (Self::AT)(o).$field = Some(($parse)(s)?);
            Ok(())
        }))
    };
    ($key:expr, $field:ident, list $long:literal $name:literal $parse:expr; $help:literal $(; env $env:literal)?) => {
        Flag {
            env: some_or_none!($($env)?),
            list: true,
            ..Flag::new($key, $long, $name, $help, Set::Text(|o, s| {
                (Self::AT)(o).$field.get_or_insert_default().push(($parse)(s)?);
                Ok(())
            }))
        }
    };
    ($key:expr, $field:ident, choice $long:literal $name:literal [$($choice:literal),*] $parse:expr; $help:literal) => {
        Flag {
            choices: &[$($choice),*],
            ..flag!($key, $field, value $long $name $parse; $help)
        }
    };
    ($key:expr, $field:ident, path $long:literal $name:literal; $help:literal) => {
        Flag::new($key, $long, $name, $help, Set::Path(|o, p| (Self::AT)(o).$field = Some(p)))
    };
    ($key:expr, $field:ident, switch $long:literal ($on:literal); $help:literal) => {
        Flag::new($key, $long, "", $help, Set::Switch(|o| (Self::AT)(o).$field = Some($on)))
    };
}

/// One section of the file: its raw serde struct, its overlay struct, and their code. A row is
/// `key: RawType => kind OverlayType = reader(args), flag [...]`; `kind` is `value` (a
/// setting), `section` (a nested section with its own table) or `hand` (merged and read by the
/// caller: the certificate source and the sites list).
macro_rules! section {
    (
        $(#[$raw_meta:meta])*
        struct $raw:ident;
        $(#[$ov_meta:meta])*
        struct $ov:ident { $($(#[$extra_meta:meta])* $extra:ident: $extra_ty:ty),* }
        flags at $prefix:literal = $at:expr;
        $(
            $(#[$attr:meta])*
            $key:ident: $raw_ty:ty => $kind:ident $ty:ty $(= $read:ident $(($($arg:expr),*))?)?
                $(, flag [$($flag:tt)*])?;
        )*
    ) => {
        $(#[$raw_meta])*
        #[derive(Clone, Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $raw {
            $($(#[$attr])* pub $key: Option<$raw_ty>,)*
        }

        $(#[$ov_meta])*
        #[derive(Clone, Debug, Default)]
        pub struct $ov {
            $(
                #[doc = concat!("[`", stringify!($raw), "::", stringify!($key), "`], checked.")]
                pub $key: overlay_type!($kind $ty),
            )*
            $($(#[$extra_meta])* pub $extra: $extra_ty,)*
        }

        impl $ov {
            /// Where this section sits in the overlay the flags build.
            const AT: fn(&mut Overlay) -> &mut $ov = $at;

            /// This section's flags.
            const FLAGS: &'static [Flag] = &[$($(flag!(concat!($prefix, stringify!($key)), $key, $($flag)*),)?)*];

            /// Into `high`, each setting and nested section from `high` where it has one, else
            /// from `low`; `at` is the section's key path. Hand-kept rows are the caller's.
            pub(crate) fn merge_rows(high: &mut $ov, low: &mut $ov, at: &str, o: &mut Origins) {
                $(merge_row!($kind $ty; high.$key, low.$key, &join(at, stringify!($key)), o);)*
            }

            /// Each setting and nested section of `r`, checked; `at` is the section's key path.
            /// Hand-kept rows are left at their default (and in `r`) for the caller.
            pub(crate) fn rows_from_raw(r: &mut $raw, at: &str, c: &mut Check<'_>) -> $ov {
                $ov {
                    $($key: read_row!(
                        $kind $ty; c, &join(at, stringify!($key)), r.$key.take(); $($read $(($($arg),*))?)?
                    ),)*
                    $($extra: Default::default(),)*
                }
            }
        }
    };
}

section! {
    /// The whole file. Either the single-site shorthand (`upstream`, `preserve_host`,
    /// `public_paths` at the top) or a `sites` list, not both.
    struct Config;
    /// Every `serve` setting, each unset (`None`) unless a layer gave it. A switch flag that is
    /// off (`--preserve-host` absent) is `None`, not `Some(false)`, so it does not hide the
    /// file's value.
    struct Overlay {
        /// Where the file's values were written, by key path.
        origins: Origins
    }
    flags at "" = |o| o;

    /// TLS listener, `IP:PORT`. Default: `0.0.0.0:443` with `tls.acme`, else `0.0.0.0:8443`.
    listen: String => value SocketAddr = text(v::parse_listen),
        flag [value "listen" "ADDR" flag_addr; "TLS listen address. [default: 0.0.0.0:8443]"];
    /// Plain-HTTP listener for ACME HTTP-01 challenges and redirects to HTTPS, `IP:PORT`;
    /// `tls.acme` only. Default: `0.0.0.0:80`.
    http_listen: String => value SocketAddr = text(v::parse_listen),
        flag [value "http-listen" "ADDR" flag_addr;
            "Plain-HTTP listener: answers HTTP-01 and redirects everything else to https with a 308. \
             [default: 0.0.0.0:80]"];
    /// The HTTPS port clients reach from outside, which redirects point to (differs from the
    /// `listen` port behind a port mapping); `tls.acme` only. Default: 443.
    https_port: u64 => value u16 = value(v::parse_port),
        flag [value "https-port" "PORT" flag_port;
            "The HTTPS port clients reach, for the redirect when guard listens on another port behind a port \
             mapping. [default: 443]"];
    /// guard's state directory (self-signed certificate, ACME account and certificates, default
    /// users and tokens files). Default: `/var/lib/guard` as root, else
    /// `$XDG_STATE_HOME/guard` or `~/.local/state/guard`.
    state_dir: String => value PathBuf = file,
        flag [path "state-dir" "DIR";
            "guard's state: self-signed certificate, users, tokens, ACME account. \
             [default: /var/lib/guard as root, else $XDG_STATE_HOME/guard or ~/.local/state/guard]"];
    /// Access-log format: `text` or `json`. Default: `text`.
    log_format: String => value LogFormat = text(v::parse_log_format),
        flag [choice "log-format" "LOG_FORMAT" ["text", "json"] v::parse_log_format; "Log format. [default: text]"];
    /// Duration in-flight requests may run after SIGTERM or SIGINT. Default: `30s`.
    shutdown_grace: String => value Duration = text(parse_duration),
        flag [value "shutdown-grace" "DURATION" parse_duration;
            "How long in-flight requests may finish after SIGTERM or SIGINT. [default: 30s]"];
    /// Prometheus metrics listener, `IP:PORT` (plain HTTP, `GET /metrics`; keep it on loopback).
    /// Default: off.
    metrics_listen: String => value SocketAddr = text(v::parse_listen),
        flag [value "metrics-listen" "ADDR" flag_addr;
            "Serve Prometheus metrics on this address (plain HTTP, GET /metrics); keep it on loopback. \
             [default: off]"];
    /// Count requests per user or token name too (one series each). Default: false.
    metrics_user_labels: bool => value bool = kept,
        flag [switch "metrics-user-labels" (true);
            "Count requests per user or token name in the metrics (one series per name)"];
    /// Peers (IP addresses or CIDR ranges) whose `X-Forwarded-*` headers are kept and extended.
    /// Default: none.
    trusted_proxies: Vec<String> => value Vec<Cidr> = list(Cidr::parse),
        flag [list "trusted-proxy" "CIDR" Cidr::parse;
            "Peer whose X-Forwarded-* headers are trusted and extended (repeatable). [default: none]";
            env "GUARD_TRUSTED_PROXIES"];
    /// Where the certificate comes from. Default: a self-signed certificate in `state_dir`.
    tls: Tls => hand TlsOverlay;
    /// Timeouts and sizes of the serving path.
    limits: Limits => section LimitsOverlay;
    /// Authentication defaults for every site; a site's own `auth` overrides them key by key.
    auth: Auth => section AuthOverlay;
    /// Single-site shorthand: the upstream, `host:port`, `http://host:port` or
    /// `https://host:port`, or a list of them to balance across (see `balance`). No default.
    upstream: UpstreamList => value Vec<Upstream> = upstreams,
        flag [list "upstream" "HOST:PORT" Upstream::parse;
            "Upstream server: `host:port`, `http://host:port` or `https://host:port`; repeat it to balance across \
             several. Required without --config"];
    /// PEM file of the certificate authorities trusted for `https://` upstreams. Default: the
    /// system's roots.
    upstream_ca_file: String => value PathBuf = file,
        flag [path "upstream-ca-file" "FILE";
            "PEM file of the CAs trusted for https:// upstreams. [default: the system's roots]"];
    /// How requests are spread over several upstreams, and how a down one is found.
    balance: Balancing => section BalancingOverlay;
    /// Single-site shorthand: forward the client's `Host` instead of the upstream's authority.
    /// Default: false.
    preserve_host: bool => value bool = kept,
        flag [switch "preserve-host" (true);
            "Forward the client's Host header instead of the upstream's own authority"];
    /// Single-site shorthand: path prefixes served without authentication. Default: none.
    public_paths: Vec<String> => value Vec<String> = list(v::parse_public_path);
    /// Several sites behind one guard, routed by TLS SNI and `Host`; a higher layer's list
    /// replaces a lower one's whole.
    sites: Vec<Site> => hand Option<Vec<SiteOverlay>>;
}

section! {
    /// `tls`: certificate files, or ACME, or neither (self-signed).
    struct Tls;
    /// `tls`. A layer that names a certificate source (`cert`/`key`, or `acme`) replaces the
    /// lower layers' source: `--tls-cert` and `--tls-key` on the command line turn the file's
    /// ACME off.
    struct TlsOverlay {}
    flags at "tls." = |o| &mut o.tls;

    /// Certificate chain file (PEM, leaf first), re-read when it changes. Needs `key`.
    cert: String => value PathBuf = file,
        flag [path "tls-cert" "FILE";
            "Certificate chain (PEM, leaf first). Re-read when the file changes. Needs --tls-key"];
    /// Private key file (PEM: PKCS#8, PKCS#1 or SEC1). Needs `cert`.
    key: String => value PathBuf = file,
        flag [path "tls-key" "FILE";
            "Private key (PEM: PKCS#8, PKCS#1 or SEC1; ECDSA, RSA or Ed25519). Needs --tls-cert"];
    /// Certificates from an ACME CA (Let's Encrypt by default), covering every site's hosts.
    /// Present (even empty) turns ACME on.
    #[serde(default, deserialize_with = "present")]
    acme: Acme => hand Option<AcmeOverlay>;
    /// `Strict-Transport-Security: max-age`, a duration in whole seconds; `0` tells browsers to
    /// forget. `tls.acme` only. Default: `365d`.
    hsts_max_age: String => value Duration = text(v::parse_whole_seconds),
        flag [value "hsts-max-age" "DURATION" parse_duration;
            "Strict-Transport-Security max-age sent with the certificate from ACME; 0 tells browsers to forget an \
             earlier one. [default: 365d]"];
}

section! {
    /// `tls.acme`.
    struct Acme;
    /// `tls.acme`; any of its flags turns ACME on.
    struct AcmeOverlay {}
    flags at "tls.acme." = |o| o.tls.acme.get_or_insert_default();

    /// Contact address registered with the CA. Required.
    email: String => value String = text(acme::parse_email),
        flag [value "acme-email" "EMAIL" acme::parse_email;
            "Contact address for the CA account (Let's Encrypt's policy and incident notices)"];
    /// The CA's ACME directory URL (`https://`). Default: Let's Encrypt production.
    directory: String => value String = text(acme::parse_directory_url),
        flag [value "acme-directory" "URL" acme::parse_directory_url;
            "ACME directory URL of another CA (a private step-ca, pebble). [default: Let's Encrypt]"];
    /// Use Let's Encrypt's staging CA (untrusted certificates, generous rate limits); not with
    /// `directory`. Default: false.
    staging: bool => value bool = kept,
        flag [switch "acme-staging" (true);
            "Use Let's Encrypt's staging CA: untrusted certificates, generous rate limits; for trying a setup"];
    /// PEM file whose first certificate is trusted for the CA's own HTTPS endpoint (a private
    /// CA). Default: the system's roots.
    ca_root: String => value PathBuf = file,
        flag [path "acme-ca-root" "FILE";
            "PEM file whose first certificate is trusted for the ACME server's own HTTPS (a private CA). \
             [default: the system's roots]"];
    /// `auto` (TLS-ALPN-01, then HTTP-01), `http-01` or `tls-alpn-01`. Default: `auto`.
    challenge: String => value ChallengeChoice = text(ChallengeChoice::parse),
        flag [value "acme-challenge" "TYPE" ChallengeChoice::parse;
            "How the CA validates: http-01 (port 80), tls-alpn-01 (port 443), or auto: tls-alpn-01, then http-01 \
             if that fails. [default: auto]"];
    /// Names to certify besides every site's `hosts`. Default: none.
    domains: Vec<String> => value Vec<String> = list(v::parse_acme_domain),
        flag [list "domain" "NAME" acme::parse_domain;
            "Public name to get a certificate for from Let's Encrypt (repeatable; comma-separated in the \
             variable). One certificate covers every name; kept and renewed in STATE_DIR/acme. Needs --acme-email"];
}

section! {
    /// `limits`: every timeout and size of the serving path.
    struct Limits;
    /// `limits`; the validated names are [`crate::serve::Limits`]'s.
    struct LimitsOverlay {}
    flags at "limits." = |o| &mut o.limits;

    /// Duration allowed for a TLS handshake. Default: `10s`.
    tls_handshake_timeout: String => value Duration = text(v::parse_timeout),
        flag [value "tls-handshake-timeout" "DURATION" parse_duration;
            "Time allowed for a TLS handshake. [default: 10s]"];
    /// Duration allowed to receive a request head; also closes idle keep-alive connections.
    /// Default: `30s`.
    header_timeout: String => value Duration = text(v::parse_timeout),
        flag [value "header-timeout" "DURATION" parse_duration;
            "Time allowed to receive a request head; also closes HTTP/1.1 keep-alive connections idle that long. \
             [default: 30s]"];
    /// Duration a request body may go without data (408 after it). Default: `60s`.
    body_timeout: String => value Duration = text(v::parse_timeout),
        flag [value "body-timeout" "DURATION" parse_duration;
            "Time a request body may go without data (408 after it); a slow but live upload is never cut. \
             [default: 60s]"];
    /// Duration allowed to connect to the upstream (504 after it). Default: `5s`.
    connect_timeout: String => value Duration = text(v::parse_timeout),
        flag [value "connect-timeout" "DURATION" parse_duration;
            "Time allowed to connect to the upstream (504 after it). [default: 5s]"];
    /// Duration the upstream has to start answering once the request is sent (504 after it).
    /// Default: `5m`.
    upstream_timeout: String => value Duration = text(v::parse_timeout),
        flag [value "upstream-timeout" "DURATION" parse_duration;
            "Time the upstream has to start answering once the request body is sent (504 after it). [default: 5m]"];
    /// Duration an idle keep-alive connection to an upstream is kept for reuse; keep it below
    /// the upstream's own keep-alive timeout (uvicorn's, MLflow's default server, is 5 s;
    /// gunicorn's 2 s), or a request can meet a connection the upstream is closing. Default: `4s`.
    upstream_idle_timeout: String => value Duration = text(v::parse_timeout),
        flag [value "upstream-idle-timeout" "DURATION" parse_duration;
            "Keep an idle upstream connection this long for reuse; below the upstream's own keep-alive timeout \
             (uvicorn: 5s). [default: 4s]"];
    /// Duration after which a connection with no request in flight is closed. Default: `5m`.
    idle_timeout: String => value Duration = text(v::parse_timeout),
        flag [value "idle-timeout" "DURATION" parse_duration;
            "Close a connection with no request in flight for this long. [default: 5m]"];
    /// Largest request head, a size (431 above it). Default: `64K`.
    max_header_size: String => value usize = text(v::parse_size_from_one),
        flag [value "max-header-size" "SIZE" flag_size; "Largest request head (431 above it). [default: 64K]"];
    /// Most request headers, a count (431 above it). Default: 100.
    max_headers: u64 => value usize = value(|n| v::count_usize(n, 1, u32::MAX.into())),
        flag [value "max-headers" "N" |s: &str| s.parse::<usize>().map_err(|e| e.to_string());
            "Most request headers (431 above it). [default: 100]"];
    /// Longest request target (path and query), a size (414 above it). Default: `16K`.
    max_uri_size: String => value usize = text(v::parse_size_from_one),
        flag [value "max-uri-size" "SIZE" flag_size;
            "Longest request target, path and query (414 above it). [default: 16K]"];
    /// Largest request body, a size (413 above it). Default: unlimited.
    max_body_size: String => value u64 = text(parse_size),
        flag [value "max-body-size" "SIZE" parse_size;
            "Largest request body, e.g. 5G; larger ones get 413. [default: unlimited]"];
    /// Most open client connections, a count; more wait to be accepted. Default: 16384.
    max_connections: u64 => value usize = value(|n| v::count_usize(n, 1, u32::MAX.into())),
        flag [value "max-connections" "N" |s| flag_count(s).map(widen);
            "Most open client connections; more wait to be accepted. [default: 16384]"];
    /// Most open connections from one client (an IPv4 address or IPv6 /64), a count; `0` for no
    /// limit. Trusted proxies are not limited. Default: 1024.
    max_connections_per_client: u64 => value usize = value(|n| v::count_usize(n, 0, u32::MAX.into())),
        flag [value "max-connections-per-client" "N" |s| flag_u32(s).map(widen);
            "Most open connections from one client (an IPv4 address or an IPv6 /64); more are closed at once. \
             Trusted proxies are not limited; 0 turns the limit off. [default: 1024]"];
    /// Most concurrent streams per HTTP/2 connection, a count. Default: 128.
    max_h2_streams: u64 => value u32 = value(|n| v::count_u32(n, 1)),
        flag [value "max-h2-streams" "N" flag_count;
            "Most concurrent streams per HTTP/2 connection. [default: 128]"];
}

section! {
    /// `balance`: how a site with several upstreams spreads its requests, and how guard finds
    /// the ones that are down. A site with one upstream always tries it.
    struct Balancing;
    /// `balance`; the validated names are [`crate::serve::BalanceSettings`]'s.
    struct BalancingOverlay {}
    flags at "balance." = |o| &mut o.balance;

    /// `round_robin` (each in turn) or `least_connections` (fewest requests in flight).
    /// Default: `round_robin`.
    method: String => value Balance = text(Balance::parse),
        flag [choice "upstream-balance" "METHOD" ["round_robin", "least_connections"] Balance::parse;
            "How requests are spread over several upstreams. [default: round_robin]"];
    /// Path the active health check asks each upstream for; a 2xx answer is healthy. Default:
    /// `/health` (MLflow's).
    health_check_path: String => value String = text(v::parse_health_path),
        flag [value "health-check-path" "PATH" v::parse_health_path;
            "Path each of several upstreams is asked for by the health check; 2xx is healthy. [default: /health]"];
    /// Duration between health checks of each upstream; `0` turns them off. Default: `5s`.
    health_check_interval: String => value Duration = text(parse_duration),
        flag [value "health-check-interval" "DURATION" parse_duration;
            "Time between health checks of each of several upstreams; 0 turns them off. [default: 5s]"];
    /// Duration a health check may take before it counts as failed. Default: `2s`.
    health_check_timeout: String => value Duration = text(v::parse_timeout),
        flag [value "health-check-timeout" "DURATION" parse_duration;
            "Time a health check may take before it fails. [default: 2s]"];
    /// Passed checks in a row that bring a down upstream back. Default: 2.
    health_check_rise: u64 => value u32 = value(|n| v::count_u32(n, 1)),
        flag [value "health-check-rise" "N" flag_count;
            "Passed health checks in a row that bring a down upstream back. [default: 2]"];
    /// Failed checks in a row that take an upstream out. Default: 2.
    health_check_fall: u64 => value u32 = value(|n| v::count_u32(n, 1)),
        flag [value "health-check-fall" "N" flag_count;
            "Failed health checks in a row that take an upstream out. [default: 2]"];
    /// Duration an upstream that refused a connection is left out (a passed health check ends
    /// it sooner); `0` never leaves one out. Default: `10s`.
    eject_duration: String => value Duration = text(parse_duration),
        flag [value "eject-duration" "DURATION" parse_duration;
            "Time an upstream that refused a connection is left out of the rotation. [default: 10s]"];
}

section! {
    /// `auth` (top level: defaults for every site) and `sites[].auth` (that site's overrides).
    struct Auth;
    /// `auth` or `sites[].auth`; the validated names are [`crate::serve::AuthSettings`]'s. The
    /// flags' values here also beat a lower layer's per-site values, so `--users FILE` applies
    /// to every site of the file.
    struct AuthOverlay {}
    flags at "auth." = |o| &mut o.auth;

    /// htpasswd users file, re-read when it changes. Default: `STATE_DIR/users.htpasswd`.
    users: String => value PathBuf = file,
        flag [path "users" "FILE"; "htpasswd users file, re-read when it changes. [default: STATE_DIR/users.htpasswd]"];
    /// Bearer tokens file, re-read when it changes. Default: `STATE_DIR/tokens.json`.
    tokens: String => value PathBuf = file,
        flag [path "tokens" "FILE"; "Bearer tokens file, re-read when it changes. [default: STATE_DIR/tokens.json]"];
    /// Realm in the `WWW-Authenticate` challenge. Default: `MLflow`.
    realm: String => value String = text(v::parse_realm),
        flag [value "realm" "TEXT" v::parse_realm; "Realm in the WWW-Authenticate challenge. [default: MLflow]"];
    /// Header naming the authenticated user or token to the upstream, or `false` (or `off`) to
    /// send none. Client-sent copies are always removed. Default: `X-Forwarded-User`.
    forwarded_user_header: HeaderChoice => value Option<String> = value(v::parse_header_choice),
        flag [value "forwarded-user-header" "NAME" flag_header_choice;
            "Header naming the authenticated user or token to the upstream, or `off`. Client-sent copies are \
             always removed. [default: X-Forwarded-User]"];
    /// File holding a secret (16 or more visible ASCII characters) guard sends the upstream as
    /// `X-Guard-Secret` with every request, beside `X-Guard-Admin: true` for the groups file's
    /// admins: MLflow's authorization function that `guard deploy --mlflow-permissions` writes
    /// trusts the user header only with it. Client-sent copies are always removed. Read at
    /// start and on reload. Default: none.
    upstream_secret: String => value PathBuf = file,
        flag [path "upstream-secret-file" "FILE";
            "File with a secret sent to the upstream as X-Guard-Secret (and X-Guard-Admin for admins), so it \
             can trust the user header: see deploy --mlflow-permissions. [default: none]"];
    /// Origins besides the site's own (`https://` and the host the client used) whose browser
    /// pages may send POST, PUT, PATCH and DELETE here, e.g. `https://dashboard.example.com`.
    /// Default: none.
    allowed_origins: Vec<String> => value Vec<String> = list(v::parse_origin),
        flag [list "allowed-origin" "ORIGIN" v::parse_origin;
            "An origin other than the site's own whose browser pages may send POST, PUT, PATCH and DELETE \
             (repeatable), e.g. https://dashboard.example.com. Any other origin gets 403. [default: none]";
            env "GUARD_ALLOWED_ORIGINS"];
    /// Duration a verified password is remembered. Default: `5m`.
    cache_ttl: String => value Duration = text(parse_duration),
        flag [value "auth-cache-ttl" "DURATION" parse_duration;
            "How long a verified password is remembered. [default: 5m]"];
    /// Most remembered verifications, a count. Default: 10000.
    cache_size: u64 => value usize = value(|n| v::count_usize(n, 1, u32::MAX.into())),
        flag [value "auth-cache-size" "N" |s| flag_count(s).map(widen);
            "Most remembered verifications. [default: 10000]"];
    /// Lockout of client addresses that fail too often.
    lockout: Lockout => section LockoutOverlay;
    /// Browsers that navigate here without credentials get guard's sign-in page, which signs
    /// them in with a session cookie; `false` leaves them the browser's Basic prompt. API
    /// clients always get 401 JSON. Default: true.
    login_page: bool => value bool = kept,
        flag [switch "no-login-page" (false);
            "Leave browsers the Basic prompt instead of guard's sign-in page (and its session cookie). API \
             clients get 401 JSON either way"];
    /// Sign-in sessions.
    session: SessionLimits => section SessionOverlay;
    /// Groups file (Apache `AuthGroupFile` format: `reader: alice bob`) giving users their
    /// role, re-read when it changes. Default: `groups` beside the users file.
    groups: String => value PathBuf = file,
        flag [path "groups" "FILE";
            "Groups file giving users their role (`reader: alice bob`, Apache's AuthGroupFile format), re-read \
             when it changes. [default: groups beside the users file]"];
    /// Role of a user or token the groups file or the token does not name: `writer` (may do
    /// everything) or `reader` (sees everything, changes nothing). Default: `writer`.
    default_role: String => value Role = text(Role::parse),
        flag [value "default-role" "ROLE" Role::parse;
            "Role of users and tokens nothing else gives one: writer (everything) or reader (sees everything, \
             changes nothing). [default: writer]"];
    /// Identity providers whose signed bearer tokens (JWTs) are accepted, for machines: CI
    /// jobs, client-credentials clients, Kubernetes service accounts. File only: a list of
    /// several keys each. Default: none.
    jwt: Vec<crate::jwt::RawIssuer> => value Vec<crate::jwt::JwtIssuer> = jwt_issuers;
    /// The OpenID Connect provider people sign in with in their browser (single sign-on), and
    /// who of them may enter. File only. Default: none.
    oidc: crate::oidc::RawOidc => value crate::oidc::Oidc = oidc_provider;
    /// Serve without authentication: anyone who reaches the port reaches the upstream.
    /// Default: false.
    dangerous_no_auth: bool => value bool = kept,
        flag [switch "dangerous-no-auth" (true);
            "Serve without authentication: anyone who reaches the port reaches the upstream"];
}

section! {
    /// `auth.lockout`.
    struct Lockout;
    /// `auth.lockout`.
    struct LockoutOverlay {}
    flags at "auth.lockout." = |o| &mut o.auth.lockout;

    /// Failed logins from one client (an IPv4 address, an IPv6 /64) before it is locked out, a
    /// count; 0 turns lockout off.
    /// Default: 10.
    failures: u64 => value u32 = value(|n| v::count_u32(n, 0)),
        flag [value "lockout-failures" "N" flag_u32;
            "Failed logins from one client (an IPv4 address, an IPv6 /64) before it is locked out; 0 turns \
             lockout off. [default: 10]"];
    /// Duration in which those failures are counted. Default: `1m`.
    window: String => value Duration = text(parse_duration),
        flag [value "lockout-window" "DURATION" parse_duration;
            "Window in which those failures are counted. [default: 1m]"];
    /// Duration a locked-out address gets 429. Default: `5m`.
    duration: String => value Duration = text(parse_duration),
        flag [value "lockout-duration" "DURATION" parse_duration;
            "How long a locked-out address gets 429 with Retry-After. [default: 5m]"];
}

section! {
    /// `auth.session`.
    struct SessionLimits;
    /// `auth.session`.
    struct SessionOverlay {}
    flags at "auth.session." = |o| &mut o.auth.session;

    /// Duration a session lasts from sign-in, however active. Default: `12h`.
    lifetime: String => value Duration = text(parse_duration),
        flag [value "session-lifetime" "DURATION" parse_duration;
            "How long a browser's sign-in session lasts from sign-in. [default: 12h]"];
    /// Duration a session lasts without a request. Default: `1h`.
    idle: String => value Duration = text(parse_duration),
        flag [value "session-idle" "DURATION" parse_duration;
            "How long a sign-in session lasts without a request. [default: 1h]"];
}

// Flag readers. The flags have always read some values more loosely than the file (a port-0
// listener for tests, a zero timeout) and with clap's own messages; these keep both.

fn flag_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e: std::net::AddrParseError| e.to_string())
}

fn flag_size(s: &str) -> Result<usize, String> {
    parse_size(s).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn flag_port(s: &str) -> Result<u16, String> {
    flag_number(s, 1, u16::MAX.into())
}

/// A count of at least one.
fn flag_count(s: &str) -> Result<u32, String> {
    flag_number(s, 1, u32::MAX.into())
}

fn flag_u32(s: &str) -> Result<u32, String> {
    flag_number(s, 0, u32::MAX.into())
}

fn widen(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `off` (or nothing) sends no header; a name is checked as the file's is (a token, and not a
/// header with its own meaning such as `Cookie` or `Host`).
fn flag_header_choice(s: &str) -> Result<Option<String>, String> {
    match s {
        "off" | "" => Ok(None),
        name => v::parse_header_name(name).map(Some),
    }
}

/// A whole number as clap's `value_parser!(u32).range(1..)` and kin read one, messages
/// included: `0 is not in 1..=4294967295`.
fn flag_number<T: TryFrom<i64>>(s: &str, min: i64, max: i64) -> Result<T, String>
where
    T::Error: Display,
{
    let n: i64 = s.parse().map_err(|e: std::num::ParseIntError| e.to_string())?;
    if n < min || n > max {
        return Err(format!("{n} is not in {min}..={max}"));
    }
    T::try_from(n).map_err(|e| e.to_string())
}

/// `sites[]`: one site.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Name for logs. Default: its first host, or `default` for a site without hosts.
    pub name: Option<String>,
    /// Host names routed here (TLS SNI and `Host`), without port. None or empty: every host no
    /// other site claims (at most one such site).
    pub hosts: Option<Vec<String>>,
    /// Where requests go, `host:port`, `http://host:port` or `https://host:port`, or a list of
    /// them to balance across. Required.
    pub upstream: Option<UpstreamList>,
    /// Forward the client's `Host` instead of the upstream's authority. Default: false.
    pub preserve_host: Option<bool>,
    /// Path prefixes served without authentication (e.g. a notebook's static assets).
    /// Default: none.
    pub public_paths: Option<Vec<String>>,
    /// This site's authentication, overriding the top-level `auth` key by key.
    pub auth: Option<Auth>,
}

/// One entry of `sites`.
#[derive(Clone, Debug, Default)]
pub struct SiteOverlay {
    /// `name`.
    pub name: Option<String>,
    /// `hosts`, validated and lowercase; empty: every host no other site claims.
    pub hosts: Vec<String>,
    /// `upstream`, each checked.
    pub upstream: Option<Vec<Upstream>>,
    /// `preserve_host`.
    pub preserve_host: Option<bool>,
    /// `public_paths`.
    pub public_paths: Option<Vec<String>>,
    /// `auth`: this site's overrides of the top-level `auth`.
    pub auth: AuthOverlay,
}

/// A section that is present turns its feature on even when it is empty (`acme:` alone).
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d).map(|v| Some(v.unwrap_or_default()))
}
