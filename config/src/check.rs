//! One value of `guard.yaml` checked where it was written: the [`Check`] that collects problems
//! at their key paths, the readers the settings table calls for each shape of row, and the value
//! parsers, each returning a lowercase message that names the bad value. Nothing here knows the
//! shape of the whole file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::acme;
use crate::error::ConfigError;
use crate::model::{parse_duration, parse_size, LogFormat, Upstream, MAX_UPSTREAMS};
use crate::origins::Origins;

/// Collects problems, placing each by the origins of the values.
pub(crate) struct Check<'a> {
    pub(crate) origins: &'a Origins,
    pub(crate) errors: Vec<ConfigError>,
    /// Where relative paths in the file start.
    pub(crate) base: &'a Path,
}

impl Check<'_> {
    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(self.origins.error(path, message));
    }

    /// Parses a value, reporting a failure at its key path.
    pub(crate) fn value<R, T>(
        &mut self,
        path: &str,
        raw: Option<R>,
        parse: impl FnOnce(R) -> Result<T, String>,
    ) -> Option<T> {
        match parse(raw?) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    pub(crate) fn values<T>(
        &mut self,
        path: &str,
        raw: Option<Vec<String>>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let raw = raw?;
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            if let Some(v) = self.value(&format!("{path}[{i}]"), Some(s.as_str()), &parse) {
                out.push(v);
            }
        }
        Some(out)
    }

    pub(crate) fn file(&mut self, path: &str, raw: Option<String>) -> Option<PathBuf> {
        let base = self.base;
        self.value(path, raw, |s| {
            if s.trim().is_empty() {
                Err("empty path".to_owned())
            } else {
                Ok(base.join(s))
            }
        })
    }
}

// Readers of a file's value, one per shape of row in the table of [`crate::settings`]: each
// checks the value at its key path and reports a failure there.

/// Text, checked by `parse`.
pub(crate) fn text<T>(
    c: &mut Check<'_>,
    at: &str,
    raw: Option<String>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    c.value(at, raw.as_deref(), parse)
}

/// A value serde already typed (a number, a header choice), checked by `parse`.
pub(crate) fn value<R, T>(
    c: &mut Check<'_>,
    at: &str,
    raw: Option<R>,
    parse: impl FnOnce(R) -> Result<T, String>,
) -> Option<T> {
    c.value(at, raw, parse)
}

/// A list, each item checked by `parse` at its index.
pub(crate) fn list<T>(
    c: &mut Check<'_>,
    at: &str,
    raw: Option<Vec<String>>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<Vec<T>> {
    c.values(at, raw, parse)
}

/// A path, relative to the file's directory.
pub(crate) fn file(c: &mut Check<'_>, at: &str, raw: Option<String>) -> Option<PathBuf> {
    c.file(at, raw)
}

/// `auth.jwt`: each identity provider checked at its index.
pub(crate) fn jwt_issuers(
    c: &mut Check<'_>,
    at: &str,
    raw: Option<Vec<crate::jwt::RawIssuer>>,
) -> Option<Vec<crate::jwt::JwtIssuer>> {
    let issuers = raw?.into_iter().enumerate().filter_map(|(i, raw)| {
        crate::jwt::check(raw, &format!("{at}[{i}]"))
            .map_err(|(path, message)| c.error(&path, message))
            .ok()
    });
    Some(issuers.collect())
}

/// `auth.oidc`: the provider checked, its client secret read.
pub(crate) fn oidc_provider(
    c: &mut Check<'_>,
    at: &str,
    raw: Option<crate::oidc::RawOidc>,
) -> Option<crate::oidc::Oidc> {
    crate::oidc::check(raw?, at, c.base, |var| std::env::var(var).ok())
        .map_err(|(path, message)| c.error(&path, message))
        .ok()
}

/// A value that needs no check (a switch).
pub(crate) fn kept<T>(_: &mut Check<'_>, _: &str, raw: Option<T>) -> Option<T> {
    raw
}

/// `upstream`: one address, or a list of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamList {
    /// The addresses as written.
    pub items: Vec<String>,
    /// Written as a list, so a problem is placed at its index.
    pub listed: bool,
}

impl<'de> Deserialize<'de> for UpstreamList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UpstreamList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an upstream address (host:port) or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<UpstreamList, E> {
                Ok(UpstreamList {
                    items: vec![s.to_owned()],
                    listed: false,
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UpstreamList, A::Error> {
                let mut items = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    items.push(s);
                }
                Ok(UpstreamList { items, listed: true })
            }
        }
        d.deserialize_any(V)
    }
}

/// `upstream`: each address checked where it was written; at least one, at most
/// [`MAX_UPSTREAMS`], none twice.
pub(crate) fn upstreams(c: &mut Check<'_>, at: &str, raw: Option<UpstreamList>) -> Option<Vec<Upstream>> {
    let raw = raw?;
    if raw.items.is_empty() {
        c.error(at, "empty list: give at least one upstream (host:port)");
        return None;
    }
    if raw.items.len() > MAX_UPSTREAMS {
        c.error(at, format!("{} upstreams; at most {MAX_UPSTREAMS}", raw.items.len()));
        return None;
    }
    let mut out: Vec<Upstream> = Vec::new();
    for (i, s) in raw.items.iter().enumerate() {
        let path = if raw.listed {
            format!("{at}[{i}]")
        } else {
            at.to_owned()
        };
        if let Some(u) = c.value(&path, Some(s.as_str()), Upstream::parse) {
            if let Some(j) = out.iter().position(|o| o.authority() == u.authority()) {
                c.error(&path, format!("{u} is listed twice (also at index {j})"));
            } else {
                out.push(u);
            }
        }
    }
    Some(out)
}

/// A health check's path: absolute, no fragment.
pub(crate) fn parse_health_path(s: &str) -> Result<String, String> {
    let t = s.trim();
    if !t.starts_with('/') || t.contains('#') || t.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(format!("{s:?}: expected a path starting with '/', e.g. /health"));
    }
    Ok(t.to_owned())
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

// Value parsers: each returns a lowercase message that names the bad value.

pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("{s:?}: \"0\" is not a valid port (1-65535)"));
        }
        return Ok(a);
    }
    match t.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_err() => {
            Err(format!("{s:?}: {port:?} is not a valid port (1-65535)"))
        }
        Some((host, _)) if host.contains(':') && !host.starts_with('[') => {
            Err(format!("{s:?}: write IPv6 addresses in brackets, e.g. [::]:8443"))
        }
        Some((host, _)) => Err(format!(
            "{s:?}: {host:?} is not an IP address; listen on 0.0.0.0, [::] or an address of this machine"
        )),
        None => Err(format!("{s:?}: expected IP:PORT, e.g. 0.0.0.0:8443")),
    }
}

pub(crate) fn parse_port(n: u64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{n} is not a valid port (1-65535)"))
}

pub(crate) fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{s:?}: expected text or json")),
    }
}

/// A timeout of zero would fail every connection, so it is refused.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than 0"));
    }
    Ok(d)
}

pub(crate) fn parse_whole_seconds(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{s:?}: must be whole seconds"));
    }
    Ok(d)
}

pub(crate) fn count(n: u64, min: u64, max: u64) -> Result<u64, String> {
    if n < min {
        Err(format!("must be at least {min}, not {n}"))
    } else if n > max {
        Err(format!("must be at most {max}, not {n}"))
    } else {
        Ok(n)
    }
}

/// `n` as a size within `1..`, in bytes.
pub(crate) fn parse_size_from_one(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    count(n, 1, u64::MAX).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

pub(crate) fn count_usize(n: u64, min: u64, max: u64) -> Result<usize, String> {
    count(n, min, max).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

pub(crate) fn count_u32(n: u64, min: u64) -> Result<u32, String> {
    count(n, min, u32::MAX.into()).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// A site's host name: a DNS name or an IP address, lowercase, without port.
pub(crate) fn parse_host(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    if t.is_empty() {
        return Err("empty host name".into());
    }
    let bare = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(&t);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if t.starts_with("*.") {
        return Err(format!("{s:?}: wildcards are not supported; list each host name"));
    }
    if t.contains(':') {
        return Err(format!("{s:?}: give the host name without a port"));
    }
    acme::parse_domain(s)
}

pub(crate) fn parse_acme_domain(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return Err(format!(
            "{s:?} is an IP address; certificates from ACME need a DNS name"
        ));
    }
    acme::parse_domain(t)
}

pub(crate) fn parse_public_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?}: must start with '/'"));
    }
    if s == "/" {
        return Err("\"/\" would make the whole site public; set dangerous_no_auth instead".into());
    }
    let odd = s.contains("//")
        || s.chars()
            .any(|ch| matches!(ch, '?' | '#' | '%' | '\\') || ch.is_whitespace() || ch.is_control())
        || s.split('/').any(|seg| seg == "." || seg == "..");
    if odd {
        return Err(format!(
            "{s:?}: a public path is a plain prefix, without '?', '#', '%', '\\', '//' or dot segments"
        ));
    }
    Ok(s.to_owned())
}

/// An origin as browsers send it in `Origin`: `http` or `https`, a host name or IP address, an
/// optional port; no path, query, fragment or credentials. Kept in the form browsers send
/// (lowercase, without the scheme's default port), so the proxy compares plain strings.
pub fn parse_origin(s: &str) -> Result<String, String> {
    let bad =
        |why: &str| format!("{s:?}: {why}; an origin is scheme://host[:port], e.g. https://dashboard.example.com");
    let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return Err(bad("the scheme must be http or https")),
    };
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@', '*'])
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("only a host and a port may follow the scheme"));
    }
    let authority = rest.to_ascii_lowercase();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (!h.starts_with('[') || h.ends_with(']')) => (h, Some(p)),
        _ => (authority.as_str(), None),
    };
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    match bare {
        Some(v6) => {
            v6.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in brackets"))?;
        }
        None => {
            parse_host(host).map_err(|e| bad(&e))?;
        }
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(p) if p == default_port => Ok(format!("{scheme}://{host}")),
        Some(p) => {
            let n: u16 = p
                .parse()
                .map_err(|_| bad(&format!("{p:?} is not a valid port (1-65535)")))?;
            if n == 0 {
                return Err(bad("port 0 is not a valid port"));
            }
            Ok(format!("{scheme}://{host}:{n}"))
        }
    }
}

pub(crate) fn parse_realm(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty realm".into());
    }
    if s.chars().any(|ch| ch == '"' || ch == '\\' || ch.is_control()) {
        return Err(format!(
            "{s:?}: the realm cannot contain '\"', '\\' or control characters"
        ));
    }
    Ok(s.to_owned())
}

/// Headers guard or the HTTP machinery own: naming the user in one of them would break requests
/// (guard removes client copies of the user header).
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authorization",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// `forwarded_user_header` as written: `false` or `off` sends none.
pub(crate) fn parse_header_choice(h: HeaderChoice) -> Result<Option<String>, String> {
    match h {
        HeaderChoice::Off => Ok(None),
        HeaderChoice::Name(n) => parse_header_name(&n).map(Some),
    }
}

pub(crate) fn parse_header_name(s: &str) -> Result<String, String> {
    let t = s.trim();
    // RFC 9110 section 5.6.2: a token.
    let tchar = |ch: char| ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch);
    if t.is_empty() || !t.chars().all(tchar) {
        return Err(format!("{s:?} is not a valid header name"));
    }
    if RESERVED_HEADERS.contains(&t.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "{s:?} is a standard header; choose a name of its own such as X-Forwarded-User"
        ));
    }
    Ok(t.to_owned())
}

pub(crate) fn parse_site_name(s: &str) -> Result<(), String> {
    if s.is_empty()
        || !s
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
    {
        return Err(format!("{s:?}: use letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

pub(crate) fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// An I/O error as the tail of a lowercase message.
pub(crate) fn io_message(e: &std::io::Error) -> String {
    lowercase_first(&e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_name_what_is_wrong() {
        assert_eq!(parse_listen("0.0.0.0:8443").unwrap().port(), 8443);
        assert_eq!(parse_listen("[::]:443").unwrap().port(), 443);
        assert_eq!(
            parse_listen("0.0.0.0:0").unwrap_err(),
            r#""0.0.0.0:0": "0" is not a valid port (1-65535)"#
        );
        assert_eq!(
            parse_listen("0.0.0.0:http").unwrap_err(),
            r#""0.0.0.0:http": "http" is not a valid port (1-65535)"#
        );
        assert!(parse_listen("::1:80").unwrap_err().contains("brackets"));
        assert!(parse_listen("localhost:80").unwrap_err().contains("not an IP address"));
        assert!(parse_listen("8443").unwrap_err().contains("expected IP:PORT"));
    }

    #[test]
    fn hosts_are_names_or_addresses_without_ports() {
        assert_eq!(parse_host("MLflow.Example.com").unwrap(), "mlflow.example.com");
        assert_eq!(parse_host("[::1]").unwrap(), "::1");
        assert_eq!(parse_host("10.0.0.1").unwrap(), "10.0.0.1");
        assert!(parse_host("a.example.com:443").unwrap_err().contains("without a port"));
        assert!(parse_host("*.example.com").unwrap_err().contains("wildcards"));
    }

    #[test]
    fn public_paths_are_plain_prefixes() {
        assert!(parse_public_path("/static/").is_ok());
        for bad in ["static/", "/", "/a/../b", "/a%2f", "/a?b", "//a"] {
            assert!(parse_public_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_are_kept_as_browsers_send_them() {
        for (given, kept) in [
            ("https://dash.example.com", "https://dash.example.com"),
            ("HTTPS://Dash.Example.COM:443", "https://dash.example.com"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://127.0.0.1:80", "http://127.0.0.1"),
            ("https://[::1]:8443", "https://[::1]:8443"),
        ] {
            assert_eq!(parse_origin(given).as_deref(), Ok(kept), "{given}");
        }
        for bad in [
            "dash.example.com",
            "ftp://dash.example.com",
            "https://",
            "https://dash.example.com/",
            "https://dash.example.com/path",
            "https://user@dash.example.com",
            "https://*.example.com",
            "https://dash.example.com:0",
            "https://dash.example.com:99999",
            "https://[::1",
            "null",
        ] {
            let e = parse_origin(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: the error names the value: {e}");
        }
    }

    #[test]
    fn user_headers_are_tokens_and_not_standard_ones() {
        assert_eq!(parse_header_name("X-Remote-User").unwrap(), "X-Remote-User");
        assert!(parse_header_name("X User").is_err());
        assert!(parse_header_name("Cookie").unwrap_err().contains("standard header"));
    }
}
