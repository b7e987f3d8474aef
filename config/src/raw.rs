//! The `guard.yaml` file as written: serde structs that mirror its keys, with no logic. Every
//! value is checked and given its meaning in [`crate::validate`]; here a duration or a size is
//! still the string the operator typed. Unknown keys are refused (`deny_unknown_fields`), so a
//! typo is never silently ignored.
//!
//! Durations are strings with a unit: `ms`, `s`, `m`, `h` or `d` (`30s`, `5m`, `90d`); sizes
//! take `K`, `M`, `G` or `T` (binary multiples: `64K`, `5G`). Relative paths are resolved against
//! the directory of the file. An empty value or `null` leaves a setting at its default.
//! Anchors and aliases (`&auth`, `*auth`) work; merge keys (`<<:`) do not.

use serde::{Deserialize, Deserializer};

use crate::yaml::{fields_of, normalize_key};

/// The whole file. Either the single-site shorthand (`upstream`, `preserve_host`,
/// `public_paths` at the top) or a `sites` list, not both.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TLS listener, `IP:PORT`. Default: `0.0.0.0:443` with `tls.acme`, else `0.0.0.0:8443`.
    pub listen: Option<String>,
    /// Plain-HTTP listener for ACME HTTP-01 challenges and redirects to HTTPS, `IP:PORT`;
    /// `tls.acme` only. Default: `0.0.0.0:80`.
    pub http_listen: Option<String>,
    /// The HTTPS port clients reach from outside, which redirects point to (differs from the
    /// `listen` port behind a port mapping); `tls.acme` only. Default: 443.
    pub https_port: Option<u64>,
    /// guard's state directory (self-signed certificate, ACME account and certificates, default
    /// users and tokens files). Default: `/var/lib/guard` as root, else
    /// `$XDG_STATE_HOME/guard` or `~/.local/state/guard`.
    pub state_dir: Option<String>,
    /// Access-log format: `text` or `json`. Default: `text`.
    pub log_format: Option<String>,
    /// Duration in-flight requests may run after SIGTERM or SIGINT. Default: `30s`.
    pub shutdown_grace: Option<String>,
    /// Prometheus metrics listener, `IP:PORT` (plain HTTP, `GET /metrics`; keep it on loopback).
    /// Default: off.
    pub metrics_listen: Option<String>,
    /// Count requests per user or token name too (one series each). Default: false.
    pub metrics_user_labels: Option<bool>,
    /// Peers (IP addresses or CIDR ranges) whose `X-Forwarded-*` headers are kept and extended.
    /// Default: none.
    pub trusted_proxies: Option<Vec<String>>,
    /// Where the certificate comes from. Default: a self-signed certificate in `state_dir`.
    pub tls: Option<Tls>,
    /// Timeouts and sizes of the serving path.
    pub limits: Option<Limits>,
    /// Authentication defaults for every site; a site's own `auth` overrides them key by key.
    pub auth: Option<Auth>,
    /// Single-site shorthand: the upstream, `host:port` or `http://host:port`. No default.
    pub upstream: Option<String>,
    /// Single-site shorthand: forward the client's `Host` instead of the upstream's authority.
    /// Default: false.
    pub preserve_host: Option<bool>,
    /// Single-site shorthand: path prefixes served without authentication. Default: none.
    pub public_paths: Option<Vec<String>>,
    /// Several sites behind one guard, routed by TLS SNI and `Host`.
    pub sites: Option<Vec<Site>>,
}

/// `tls`: certificate files, or ACME, or neither (self-signed).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate chain file (PEM, leaf first), re-read when it changes. Needs `key`.
    pub cert: Option<String>,
    /// Private key file (PEM: PKCS#8, PKCS#1 or SEC1). Needs `cert`.
    pub key: Option<String>,
    /// Certificates from an ACME CA (Let's Encrypt by default), covering every site's hosts.
    /// Present (even empty) turns ACME on.
    #[serde(default, deserialize_with = "present")]
    pub acme: Option<Acme>,
    /// `Strict-Transport-Security: max-age`, a duration in whole seconds; `0` tells browsers to
    /// forget. `tls.acme` only. Default: `365d`.
    pub hsts_max_age: Option<String>,
}

/// `tls.acme`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// Contact address registered with the CA. Required.
    pub email: Option<String>,
    /// The CA's ACME directory URL (`https://`). Default: Let's Encrypt production.
    pub directory: Option<String>,
    /// Use Let's Encrypt's staging CA (untrusted certificates, generous rate limits); not with
    /// `directory`. Default: false.
    pub staging: Option<bool>,
    /// PEM file whose first certificate is trusted for the CA's own HTTPS endpoint (a private
    /// CA). Default: the system's roots.
    pub ca_root: Option<String>,
    /// `auto` (TLS-ALPN-01, then HTTP-01), `http-01` or `tls-alpn-01`. Default: `auto`.
    pub challenge: Option<String>,
    /// Names to certify besides every site's `hosts`. Default: none.
    pub domains: Option<Vec<String>>,
}

/// `limits`: every timeout and size of the serving path.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Duration allowed for a TLS handshake. Default: `10s`.
    pub tls_handshake_timeout: Option<String>,
    /// Duration allowed to receive a request head; also closes idle keep-alive connections.
    /// Default: `30s`.
    pub header_timeout: Option<String>,
    /// Duration a request body may go without data (408 after it). Default: `60s`.
    pub body_timeout: Option<String>,
    /// Duration allowed to connect to the upstream (504 after it). Default: `5s`.
    pub connect_timeout: Option<String>,
    /// Duration the upstream has to start answering once the request is sent (504 after it).
    /// Default: `5m`.
    pub upstream_timeout: Option<String>,
    /// Duration after which a connection with no request in flight is closed. Default: `5m`.
    pub idle_timeout: Option<String>,
    /// Largest request head, a size (431 above it). Default: `64K`.
    pub max_header_size: Option<String>,
    /// Most request headers, a count (431 above it). Default: 100.
    pub max_headers: Option<u64>,
    /// Longest request target (path and query), a size (414 above it). Default: `16K`.
    pub max_uri_size: Option<String>,
    /// Largest request body, a size (413 above it). Default: unlimited.
    pub max_body_size: Option<String>,
    /// Most open client connections, a count; more wait to be accepted. Default: 16384.
    pub max_connections: Option<u64>,
    /// Most open connections from one client (an IPv4 address or IPv6 /64), a count; `0` for no
    /// limit. Trusted proxies are not limited. Default: 1024.
    pub max_connections_per_client: Option<u64>,
    /// Most concurrent streams per HTTP/2 connection, a count. Default: 128.
    pub max_h2_streams: Option<u64>,
}

/// `auth` (top level: defaults for every site) and `sites[].auth` (that site's overrides).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// htpasswd users file, re-read when it changes. Default: `STATE_DIR/users.htpasswd`.
    pub users: Option<String>,
    /// Bearer tokens file, re-read when it changes. Default: `STATE_DIR/tokens.json`.
    pub tokens: Option<String>,
    /// Realm in the `WWW-Authenticate` challenge. Default: `MLflow`.
    pub realm: Option<String>,
    /// Header naming the authenticated user or token to the upstream, or `false` (or `off`) to
    /// send none. Client-sent copies are always removed. Default: `X-Forwarded-User`.
    pub forwarded_user_header: Option<HeaderChoice>,
    /// Origins besides the site's own (`https://` and the host the client used) whose browser
    /// pages may send POST, PUT, PATCH and DELETE here, e.g. `https://dashboard.example.com`.
    /// Default: none.
    pub allowed_origins: Option<Vec<String>>,
    /// Duration a verified password is remembered. Default: `5m`.
    pub cache_ttl: Option<String>,
    /// Most remembered verifications, a count. Default: 10000.
    pub cache_size: Option<u64>,
    /// Lockout of client addresses that fail too often.
    pub lockout: Option<Lockout>,
    /// Browsers that navigate here without credentials get guard's sign-in page, which signs
    /// them in with a session cookie; `false` leaves them the browser's Basic prompt. API
    /// clients always get 401 JSON. Default: true.
    pub login_page: Option<bool>,
    /// Sign-in sessions.
    pub session: Option<SessionLimits>,
    /// Groups file (Apache `AuthGroupFile` format: `reader: alice bob`) giving users their
    /// role, re-read when it changes. Default: `groups` beside the users file.
    pub groups: Option<String>,
    /// Role of a user or token the groups file or the token does not name: `writer` (may do
    /// everything) or `reader` (sees everything, changes nothing). Default: `writer`.
    pub default_role: Option<String>,
    /// Identity providers whose signed bearer tokens (JWTs) are accepted, for machines: CI
    /// jobs, client-credentials clients, Kubernetes service accounts. Default: none.
    pub jwt: Option<Vec<crate::jwt::RawIssuer>>,
    /// Serve without authentication: anyone who reaches the port reaches the upstream.
    /// Default: false.
    pub dangerous_no_auth: Option<bool>,
}

/// `auth.lockout`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockout {
    /// Failed logins from one client (an IPv4 address, an IPv6 /64) before it is locked out, a
    /// count; 0 turns lockout off.
    /// Default: 10.
    pub failures: Option<u64>,
    /// Duration in which those failures are counted. Default: `1m`.
    pub window: Option<String>,
    /// Duration a locked-out address gets 429. Default: `5m`.
    pub duration: Option<String>,
}

/// `auth.session`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionLimits {
    /// Duration a session lasts from sign-in, however active. Default: `12h`.
    pub lifetime: Option<String>,
    /// Duration a session lasts without a request. Default: `1h`.
    pub idle: Option<String>,
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
    /// Where requests go, `host:port` or `http://host:port`. Required.
    pub upstream: Option<String>,
    /// Forward the client's `Host` instead of the upstream's authority. Default: false.
    pub preserve_host: Option<bool>,
    /// Path prefixes served without authentication (e.g. a notebook's static assets).
    /// Default: none.
    pub public_paths: Option<Vec<String>>,
    /// This site's authentication, overriding the top-level `auth` key by key.
    pub auth: Option<Auth>,
}

/// `forwarded_user_header`: a header name, or `false` / `off` for none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderChoice {
    /// Send no header naming the user.
    Off,
    /// Send this header (checked in validation).
    Name(String),
}

impl<'de> Deserialize<'de> for HeaderChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HeaderChoice;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a header name or false")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<HeaderChoice, E> {
                if b {
                    Err(E::invalid_type(serde::de::Unexpected::Bool(b), &self))
                } else {
                    Ok(HeaderChoice::Off)
                }
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HeaderChoice, E> {
                if s.trim().eq_ignore_ascii_case("off") {
                    Ok(HeaderChoice::Off)
                } else {
                    Ok(HeaderChoice::Name(s.to_owned()))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A section that is present turns its feature on even when it is empty (`acme:` alone).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d).map(|v| Some(v.unwrap_or_default()))
}

/// The nested sections of each struct: `(key, fields)`.
fn sections(name: &str) -> Vec<(&'static str, &'static [&'static str])> {
    match name {
        "Config" => vec![
            ("tls", fields_of::<Tls>()),
            ("tls.acme", fields_of::<Acme>()),
            ("limits", fields_of::<Limits>()),
            ("auth", fields_of::<Auth>()),
            ("auth.lockout", fields_of::<Lockout>()),
            ("auth.session", fields_of::<SessionLimits>()),
        ],
        "Site" => vec![
            ("auth", fields_of::<Auth>()),
            ("auth.lockout", fields_of::<Lockout>()),
            ("auth.session", fields_of::<SessionLimits>()),
        ],
        "Tls" => vec![("acme", fields_of::<Acme>())],
        "Auth" => vec![
            ("lockout", fields_of::<Lockout>()),
            ("session", fields_of::<SessionLimits>()),
        ],
        _ => Vec::new(),
    }
}

/// For an unknown key that belongs in a nested section (`users` at a site, `tls_cert` at the
/// top), the key path it belongs at, relative to where it was written.
pub(crate) fn moved_key(name: &'static str, key: &str) -> Option<String> {
    let key = normalize_key(key);
    for (section, fields) in sections(name) {
        for f in fields {
            if key == *f || key == format!("{}_{f}", section.rsplit('.').next().unwrap_or(section)) {
                return Some(format!("{section}.{f}"));
            }
        }
    }
    None
}

/// Every key path the schema knows, list items as `[]`: `sites[].auth.lockout.window`.
pub fn schema_keys() -> Vec<String> {
    fn walk(prefix: &str, name: &str, fields: &[&str], out: &mut Vec<String>) {
        for f in fields {
            let path = if prefix.is_empty() {
                (*f).to_owned()
            } else {
                format!("{prefix}.{f}")
            };
            out.push(path.clone());
            let child = match (name, *f) {
                ("Config", "tls") => Some(("Tls", fields_of::<Tls>())),
                ("Config" | "Site", "limits") => Some(("Limits", fields_of::<Limits>())),
                ("Config" | "Site", "auth") => Some(("Auth", fields_of::<Auth>())),
                ("Config", "sites") => Some(("Site", fields_of::<Site>())),
                ("Tls", "acme") => Some(("Acme", fields_of::<Acme>())),
                ("Auth", "lockout") => Some(("Lockout", fields_of::<Lockout>())),
                ("Auth", "session") => Some(("SessionLimits", fields_of::<SessionLimits>())),
                ("Auth", "jwt") => Some(("RawIssuer", fields_of::<crate::jwt::RawIssuer>())),
                _ => None,
            };
            if let Some((child, fields)) = child {
                let path = if matches!(child, "Site" | "RawIssuer") {
                    format!("{path}[]")
                } else {
                    path
                };
                walk(&path, child, fields, out);
            }
        }
    }
    let mut out = Vec::new();
    walk("", "Config", fields_of::<Config>(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_the_wrong_section_are_pointed_to_the_right_one() {
        assert_eq!(moved_key("Config", "users").as_deref(), Some("auth.users"));
        assert_eq!(moved_key("Config", "tls-cert").as_deref(), Some("tls.cert"));
        assert_eq!(moved_key("Config", "email").as_deref(), Some("tls.acme.email"));
        assert_eq!(moved_key("Site", "realm").as_deref(), Some("auth.realm"));
        assert_eq!(moved_key("Config", "colour"), None);
    }

    #[test]
    fn the_schema_lists_nested_keys() {
        let keys = schema_keys();
        for k in [
            "listen",
            "tls.acme.ca_root",
            "limits.max_h2_streams",
            "sites[].auth.lockout.window",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }
}
