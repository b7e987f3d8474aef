//! The overlay: every `serve` setting as an `Option`, filled by the file ([`crate::load_file`])
//! and by the command line, stacked with [`Overlay::merge`] (flags over environment over file;
//! clap folds the environment into the flags), then turned into settings with defaults by
//! [`crate::finish`]. It remembers where each file value was written, so later errors still
//! point at the file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::acme::ChallengeChoice;
use crate::error::{ConfigError, Position};
use crate::model::{Cidr, Upstream};
use crate::roles::Role;
use crate::serve::LogFormat;
use crate::yaml::Spot;

/// Every `serve` setting, each unset (`None`) unless a layer gave it.
///
/// A switch flag that is off (`--preserve-host` absent) is `None`, not `Some(false)`, so it does
/// not hide the file's value.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    /// `listen`, `--listen`.
    pub listen: Option<SocketAddr>,
    /// `http_listen`, `--http-listen`.
    pub http_listen: Option<SocketAddr>,
    /// `https_port`, `--https-port`.
    pub https_port: Option<u16>,
    /// `state_dir`, `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `log_format`, `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `shutdown_grace`, `--shutdown-grace`.
    pub shutdown_grace: Option<Duration>,
    /// `metrics_listen`, `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `metrics_user_labels`, `--metrics-user-labels`.
    pub metrics_user_labels: Option<bool>,
    /// `trusted_proxies`, `--trusted-proxy`.
    pub trusted_proxies: Option<Vec<Cidr>>,
    /// `tls`.
    pub tls: TlsOverlay,
    /// `limits`.
    pub limits: LimitsOverlay,
    /// `auth` and the auth flags: defaults for every site. A layer's value here also beats a
    /// lower layer's per-site value, so `--users FILE` applies to every site of the file.
    pub auth: AuthOverlay,
    /// Single-site shorthand `upstream`, `--upstream`.
    pub upstream: Option<Upstream>,
    /// Single-site shorthand `preserve_host`, `--preserve-host`.
    pub preserve_host: Option<bool>,
    /// Single-site shorthand `public_paths`.
    pub public_paths: Option<Vec<String>>,
    /// `sites`; a higher layer's list replaces a lower one's whole.
    pub sites: Option<Vec<SiteOverlay>>,
    /// Where the file's values were written, by key path.
    pub origins: Origins,
}

/// `tls`. A layer that names a certificate source (`cert`/`key`, or `acme`) replaces the lower
/// layers' source: `--tls-cert` and `--tls-key` on the command line turn the file's ACME off.
#[derive(Clone, Debug, Default)]
pub struct TlsOverlay {
    /// `tls.cert`, `--tls-cert`.
    pub cert: Option<PathBuf>,
    /// `tls.key`, `--tls-key`.
    pub key: Option<PathBuf>,
    /// `tls.acme`; `Some` turns ACME on (`--domain` and the other `--acme-*` flags).
    pub acme: Option<AcmeOverlay>,
    /// `tls.hsts_max_age`, `--hsts-max-age`.
    pub hsts_max_age: Option<Duration>,
}

/// `tls.acme`.
#[derive(Clone, Debug, Default)]
pub struct AcmeOverlay {
    /// `email`, `--acme-email`; validated, lowercase domain part.
    pub email: Option<String>,
    /// `directory`, `--acme-directory`.
    pub directory: Option<String>,
    /// `staging`, `--acme-staging`.
    pub staging: Option<bool>,
    /// `ca_root`, `--acme-ca-root`.
    pub ca_root: Option<PathBuf>,
    /// `challenge`, `--acme-challenge`.
    pub challenge: Option<ChallengeChoice>,
    /// `domains`, `--domain`: names besides every site's hosts, validated and lowercase.
    pub domains: Option<Vec<String>>,
}

/// `limits`; names as in [`crate::serve::Limits`].
#[derive(Clone, Debug, Default)]
pub struct LimitsOverlay {
    /// `tls_handshake_timeout`.
    pub tls_handshake_timeout: Option<Duration>,
    /// `header_timeout`.
    pub header_read_timeout: Option<Duration>,
    /// `body_timeout`.
    pub body_timeout: Option<Duration>,
    /// `connect_timeout`.
    pub upstream_connect_timeout: Option<Duration>,
    /// `upstream_timeout`.
    pub upstream_response_timeout: Option<Duration>,
    /// `idle_timeout`.
    pub idle_timeout: Option<Duration>,
    /// `max_header_size`, in bytes.
    pub max_header_bytes: Option<usize>,
    /// `max_headers`.
    pub max_headers: Option<usize>,
    /// `max_uri_size`.
    pub max_uri_bytes: Option<usize>,
    /// `max_body_size`, in bytes.
    pub max_body_bytes: Option<u64>,
    /// `max_connections`.
    pub max_connections: Option<usize>,
    /// `max_connections_per_client`.
    pub max_connections_per_client: Option<usize>,
    /// `max_h2_streams`.
    pub max_h2_streams: Option<u32>,
}

/// `auth` or `sites[].auth`; names as in [`crate::serve::AuthSettings`].
#[derive(Clone, Debug, Default)]
pub struct AuthOverlay {
    /// `dangerous_no_auth`, `--dangerous-no-auth`.
    pub disabled: Option<bool>,
    /// `users`, `--users`.
    pub users_file: Option<PathBuf>,
    /// `tokens`, `--tokens`.
    pub tokens_file: Option<PathBuf>,
    /// `realm`, `--realm`.
    pub realm: Option<String>,
    /// `forwarded_user_header`, `--forwarded-user-header`; `Some(None)` sends none.
    pub forwarded_user_header: Option<Option<String>>,
    /// `allowed_origins`, `--allowed-origin`.
    pub allowed_origins: Option<Vec<String>>,
    /// `cache_ttl`, `--auth-cache-ttl`.
    pub cache_ttl: Option<Duration>,
    /// `cache_size`, `--auth-cache-size`.
    pub cache_capacity: Option<usize>,
    /// `lockout.failures`, `--lockout-failures`.
    pub lockout_failures: Option<u32>,
    /// `lockout.window`, `--lockout-window`.
    pub lockout_window: Option<Duration>,
    /// `lockout.duration`, `--lockout-duration`.
    pub lockout_duration: Option<Duration>,
    /// `login_page`, `--no-login-page`.
    pub login_page: Option<bool>,
    /// `session.lifetime`, `--session-lifetime`.
    pub session_lifetime: Option<Duration>,
    /// `session.idle`, `--session-idle`.
    pub session_idle: Option<Duration>,
    /// `groups`, `--groups`.
    pub groups_file: Option<PathBuf>,
    /// `default_role`, `--default-role`.
    pub default_role: Option<Role>,
    /// `jwt` (file only); a higher layer's list replaces a lower one's whole.
    pub jwt: Option<Vec<crate::jwt::JwtIssuer>>,
}

/// One entry of `sites`.
#[derive(Clone, Debug, Default)]
pub struct SiteOverlay {
    /// `name`.
    pub name: Option<String>,
    /// `hosts`, validated and lowercase; empty: every host no other site claims.
    pub hosts: Vec<String>,
    /// `upstream`.
    pub upstream: Option<Upstream>,
    /// `preserve_host`.
    pub preserve_host: Option<bool>,
    /// `public_paths`.
    pub public_paths: Option<Vec<String>>,
    /// `auth`: this site's overrides of the top-level `auth`.
    pub auth: AuthOverlay,
}

/// Where values were written in a file, by key path (`sites[1].upstream`).
#[derive(Clone, Debug, Default)]
pub struct Origins {
    spots: BTreeMap<String, (Arc<str>, Spot)>,
    /// Paths whose value a higher layer (a flag) replaced: errors about them have no position.
    replaced: BTreeSet<String>,
}

/// The key path one level up: `sites[1].auth` from `sites[1].auth.users`, `""` at the top.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(path.rfind(['.', '[']).map_or("", |i| &path[..i]))
}

fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor.is_empty()
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with(['.', '[']))
}

impl Origins {
    pub(crate) fn from_index(file: &str, index: BTreeMap<String, Spot>) -> Origins {
        let file: Arc<str> = Arc::from(file);
        Origins {
            spots: index.into_iter().map(|(k, v)| (k, (file.clone(), v))).collect(),
            replaced: BTreeSet::new(),
        }
    }

    /// The file and position an error about `path` points at: the value when it is written
    /// there (its key when the value is a mapping or list), else the key of the nearest
    /// enclosing setting that is.
    pub(crate) fn locate(&self, path: &str) -> (Option<String>, Option<Position>) {
        if self.replaced.iter().any(|r| is_within(path, r)) {
            return (None, None);
        }
        if let Some((file, spot)) = self.spots.get(path) {
            let pos = if spot.container {
                spot.key.unwrap_or(spot.value)
            } else {
                spot.value
            };
            return (Some(file.to_string()), Some(pos));
        }
        let mut p = parent(path);
        while let Some(up) = p {
            if let Some((file, spot)) = self.spots.get(up) {
                return (Some(file.to_string()), Some(spot.key.unwrap_or(spot.value)));
            }
            p = parent(up);
        }
        (None, None)
    }

    /// An error about `path`, placed by [`Origins::locate`].
    pub(crate) fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let (file, position) = self.locate(path);
        ConfigError {
            file,
            position,
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// Records that a higher layer replaced the value at `path` and everything under it.
    fn replace(&mut self, path: &str) {
        if self.spots.keys().any(|k| is_within(k, path)) {
            self.spots.retain(|k, _| !is_within(k, path));
            self.replaced.insert(path.to_owned());
        }
    }
}

/// `high` if set, else `low`; a set `high` marks the file's `path` as replaced.
fn pick<T>(high: Option<T>, low: Option<T>, path: &str, origins: &mut Origins) -> Option<T> {
    match high {
        Some(v) => {
            origins.replace(path);
            Some(v)
        }
        None => low,
    }
}

impl Overlay {
    /// This layer (the flags) over the configuration file, if there is one; not yet validated
    /// across settings (that is [`crate::finish`]).
    pub fn over_file(&self, config: Option<&std::path::Path>) -> Result<Overlay, crate::ConfigErrors> {
        let file = match config {
            Some(path) => crate::load_file(path)?,
            None => Overlay::default(),
        };
        Ok(Overlay::merge(self.clone(), file))
    }

    /// Stacks two layers: each setting from `high` where it has one, else from `low`.
    pub fn merge(high: Overlay, low: Overlay) -> Overlay {
        let mut o = low.origins;
        let h = high.origins;
        let listen = pick(high.listen, low.listen, "listen", &mut o);
        let http_listen = pick(high.http_listen, low.http_listen, "http_listen", &mut o);
        let https_port = pick(high.https_port, low.https_port, "https_port", &mut o);
        let state_dir = pick(high.state_dir, low.state_dir, "state_dir", &mut o);
        let log_format = pick(high.log_format, low.log_format, "log_format", &mut o);
        let shutdown_grace = pick(high.shutdown_grace, low.shutdown_grace, "shutdown_grace", &mut o);
        let metrics_listen = pick(high.metrics_listen, low.metrics_listen, "metrics_listen", &mut o);
        let metrics_user_labels = pick(
            high.metrics_user_labels,
            low.metrics_user_labels,
            "metrics_user_labels",
            &mut o,
        );
        let trusted_proxies = pick(high.trusted_proxies, low.trusted_proxies, "trusted_proxies", &mut o);
        let tls = merge_tls(high.tls, low.tls, &mut o);
        let limits = merge_limits(high.limits, low.limits, &mut o);
        // A higher layer's auth default also beats the lower layer's per-site values.
        let mut low_sites = low.sites;
        for (i, site) in low_sites.iter_mut().flatten().enumerate() {
            let auth = std::mem::take(&mut site.auth);
            site.auth = merge_auth(high.auth.clone(), auth, &format!("sites[{i}].auth"), &mut o);
        }
        let auth = merge_auth(high.auth, low.auth, "auth", &mut o);
        let upstream = pick(high.upstream, low.upstream, "upstream", &mut o);
        let preserve_host = pick(high.preserve_host, low.preserve_host, "preserve_host", &mut o);
        let public_paths = pick(high.public_paths, low.public_paths, "public_paths", &mut o);
        let sites = pick(high.sites, low_sites, "sites", &mut o);
        // Values written in the higher layer's own file, if it has one, win their positions.
        for (k, v) in h.spots {
            o.spots.insert(k, v);
        }
        o.replaced.extend(h.replaced);
        Overlay {
            listen,
            http_listen,
            https_port,
            state_dir,
            log_format,
            shutdown_grace,
            metrics_listen,
            metrics_user_labels,
            trusted_proxies,
            tls,
            limits,
            auth,
            upstream,
            preserve_host,
            public_paths,
            sites,
            origins: o,
        }
    }
}

fn merge_tls(high: TlsOverlay, low: TlsOverlay, o: &mut Origins) -> TlsOverlay {
    let hsts_max_age = pick(high.hsts_max_age, low.hsts_max_age, "tls.hsts_max_age", o);
    if high.cert.is_some() || high.key.is_some() {
        // The higher layer chose certificate files: the lower layer's source is gone.
        for p in ["tls.cert", "tls.key", "tls.acme"] {
            o.replace(p);
        }
        return TlsOverlay {
            cert: high.cert,
            key: high.key,
            acme: high.acme,
            hsts_max_age,
        };
    }
    match (high.acme, low.acme) {
        (Some(h), low_acme) => {
            o.replace("tls.cert");
            o.replace("tls.key");
            let l = low_acme.unwrap_or_default();
            let acme = AcmeOverlay {
                email: pick(h.email, l.email, "tls.acme.email", o),
                directory: pick(h.directory, l.directory, "tls.acme.directory", o),
                staging: pick(h.staging, l.staging, "tls.acme.staging", o),
                ca_root: pick(h.ca_root, l.ca_root, "tls.acme.ca_root", o),
                challenge: pick(h.challenge, l.challenge, "tls.acme.challenge", o),
                domains: pick(h.domains, l.domains, "tls.acme.domains", o),
            };
            TlsOverlay {
                cert: None,
                key: None,
                acme: Some(acme),
                hsts_max_age,
            }
        }
        (None, acme) => TlsOverlay {
            cert: low.cert,
            key: low.key,
            acme,
            hsts_max_age,
        },
    }
}

fn merge_limits(h: LimitsOverlay, l: LimitsOverlay, o: &mut Origins) -> LimitsOverlay {
    LimitsOverlay {
        tls_handshake_timeout: pick(
            h.tls_handshake_timeout,
            l.tls_handshake_timeout,
            "limits.tls_handshake_timeout",
            o,
        ),
        header_read_timeout: pick(h.header_read_timeout, l.header_read_timeout, "limits.header_timeout", o),
        body_timeout: pick(h.body_timeout, l.body_timeout, "limits.body_timeout", o),
        upstream_connect_timeout: pick(
            h.upstream_connect_timeout,
            l.upstream_connect_timeout,
            "limits.connect_timeout",
            o,
        ),
        upstream_response_timeout: pick(
            h.upstream_response_timeout,
            l.upstream_response_timeout,
            "limits.upstream_timeout",
            o,
        ),
        idle_timeout: pick(h.idle_timeout, l.idle_timeout, "limits.idle_timeout", o),
        max_header_bytes: pick(h.max_header_bytes, l.max_header_bytes, "limits.max_header_size", o),
        max_headers: pick(h.max_headers, l.max_headers, "limits.max_headers", o),
        max_uri_bytes: pick(h.max_uri_bytes, l.max_uri_bytes, "limits.max_uri_size", o),
        max_body_bytes: pick(h.max_body_bytes, l.max_body_bytes, "limits.max_body_size", o),
        max_connections: pick(h.max_connections, l.max_connections, "limits.max_connections", o),
        max_connections_per_client: pick(
            h.max_connections_per_client,
            l.max_connections_per_client,
            "limits.max_connections_per_client",
            o,
        ),
        max_h2_streams: pick(h.max_h2_streams, l.max_h2_streams, "limits.max_h2_streams", o),
    }
}

fn merge_auth(h: AuthOverlay, l: AuthOverlay, at: &str, o: &mut Origins) -> AuthOverlay {
    let p = |key: &str| format!("{at}.{key}");
    AuthOverlay {
        disabled: pick(h.disabled, l.disabled, &p("dangerous_no_auth"), o),
        users_file: pick(h.users_file, l.users_file, &p("users"), o),
        tokens_file: pick(h.tokens_file, l.tokens_file, &p("tokens"), o),
        realm: pick(h.realm, l.realm, &p("realm"), o),
        forwarded_user_header: pick(
            h.forwarded_user_header,
            l.forwarded_user_header,
            &p("forwarded_user_header"),
            o,
        ),
        allowed_origins: pick(h.allowed_origins, l.allowed_origins, &p("allowed_origins"), o),
        cache_ttl: pick(h.cache_ttl, l.cache_ttl, &p("cache_ttl"), o),
        cache_capacity: pick(h.cache_capacity, l.cache_capacity, &p("cache_size"), o),
        lockout_failures: pick(h.lockout_failures, l.lockout_failures, &p("lockout.failures"), o),
        lockout_window: pick(h.lockout_window, l.lockout_window, &p("lockout.window"), o),
        lockout_duration: pick(h.lockout_duration, l.lockout_duration, &p("lockout.duration"), o),
        login_page: pick(h.login_page, l.login_page, &p("login_page"), o),
        session_lifetime: pick(h.session_lifetime, l.session_lifetime, &p("session.lifetime"), o),
        session_idle: pick(h.session_idle, l.session_idle, &p("session.idle"), o),
        groups_file: pick(h.groups_file, l.groups_file, &p("groups"), o),
        default_role: pick(h.default_role, l.default_role, &p("default_role"), o),
        jwt: pick(h.jwt, l.jwt, &p("jwt"), o),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_walk_up_keys_and_items() {
        assert_eq!(parent("sites[1].auth.users"), Some("sites[1].auth"));
        assert_eq!(parent("sites[1]"), Some("sites"));
        assert_eq!(parent("sites"), Some(""));
        assert_eq!(parent(""), None);
        assert!(is_within("sites[1].hosts", "sites"));
        assert!(!is_within("sites_x", "sites"));
    }
}
