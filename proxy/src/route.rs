//! Which site a request belongs to: by TLS SNI and by `Host` (or HTTP/2 `:authority`). A host no
//! site claims gets 421, never a random upstream; a `Host` naming a different site than the
//! SNI it arrived on gets 421 too, so one site's certificate cannot carry another's traffic.

use std::collections::HashMap;
use std::sync::Arc;

use guard_config::serve::{Limits, SiteSettings};
use http::header::{HeaderName, HeaderValue};

use crate::auth::{AuthError, Authenticator, Defence};
use crate::balance::Upstreams;
use crate::forward::{Upstream, UpstreamTls};
use crate::metrics::{Metrics, SiteMetrics};
use crate::worker::PerWorker;

/// A site ready to serve: its upstream client, its authenticator, its rules.
#[derive(Debug)]
pub struct Site {
    /// Name for logs.
    pub name: String,
    /// The upstreams: their connections, health, and how requests are spread over them.
    pub upstreams: Upstreams,
    /// Forward the client's `Host`.
    pub preserve_host: bool,
    /// `None` only with `--dangerous-no-auth`.
    pub auth: Option<Arc<Authenticator>>,
    /// The header naming the user to the upstream (client copies are always removed).
    pub forwarded_user: Option<HeaderName>,
    /// Path prefixes that skip authentication.
    pub public_paths: Vec<String>,
    /// Origins besides the site's own whose pages may send writes.
    pub allowed_origins: Vec<String>,
    /// What a request takes from the site, one copy per worker (see [`SiteLocal`]).
    local: PerWorker<Arc<SiteLocal>>,
}

/// What a request takes from its site: the name for the log and the metric series. Each worker
/// has its own copy, so holding a reference until the response ends bumps counts only that
/// worker touches, where sharing them would bounce cache lines between cores on every request.
/// (Each upstream's `Host` value is kept the same way, in [`crate::balance`].)
#[derive(Debug)]
pub struct SiteLocal {
    /// `X-Guard-Secret`'s value, marked sensitive; `None`: not sent.
    pub upstream_secret: Option<HeaderValue>,
    /// Name for logs.
    pub name: String,
    /// The site's metric series.
    pub metrics: SiteMetrics,
}

/// A site could not be built from its settings.
#[derive(Debug)]
pub enum SiteError {
    /// The users or tokens are unusable.
    Auth {
        /// The site.
        site: String,
        /// Why.
        source: AuthError,
    },
    /// An `https://` upstream cannot be set up: its CA file, or its name.
    UpstreamTls {
        /// The site.
        site: String,
        /// Why.
        reason: String,
    },
    /// The upstream secret file cannot be read or holds no usable secret.
    UpstreamSecret {
        /// The site.
        site: String,
        /// Why, naming the file.
        reason: String,
    },
    /// `forwarded_user_header` is not a valid header name.
    HeaderName {
        /// The site.
        site: String,
        /// The bad name.
        name: String,
    },
}

/// The site built from command-line flags alone; its name is not worth printing.
pub const FLAGS_SITE: &str = "default";

impl std::fmt::Display for SiteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (site, what) = match self {
            SiteError::Auth { site, source } => (site, source.to_string()),
            SiteError::UpstreamTls { site, reason } => (site, format!("https upstream: {reason}")),
            SiteError::UpstreamSecret { site, reason } => (site, format!("upstream secret: {reason}")),
            SiteError::HeaderName { site, name } => (
                site,
                format!("forwarded user header {name:?} is not a valid header name"),
            ),
        };
        if site == FLAGS_SITE {
            f.write_str(&what)
        } else {
            write!(f, "site {site}: {what}")
        }
    }
}

// The cause is part of the message above, so it is not also a `source()`.
impl std::error::Error for SiteError {}

impl Site {
    /// The calling worker's copy of what a request takes from the site.
    pub fn local(&self) -> &Arc<SiteLocal> {
        self.local.get()
    }

    /// Builds a site, loading its users and tokens.
    pub fn build(
        s: &SiteSettings,
        limits: &Limits,
        defence: &Arc<Defence>,
        metrics: &Arc<Metrics>,
    ) -> Result<Site, SiteError> {
        let forwarded_user = match &s.auth.forwarded_user_header {
            Some(name) => Some(
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| SiteError::HeaderName {
                    site: s.name.clone(),
                    name: name.clone(),
                })?,
            ),
            None => None,
        };
        let auth = if s.auth.disabled {
            tracing::warn!(site = %s.name, "authentication is off (--dangerous-no-auth): anyone who reaches this port reaches the upstream");
            None
        } else {
            let a = Authenticator::load(s.auth.clone(), defence.clone(), metrics.clone()).map_err(|source| {
                SiteError::Auth {
                    site: s.name.clone(),
                    source,
                }
            })?;
            Some(Arc::new(a))
        };
        let upstreams = upstreams(s, limits)?;
        let secret = match &s.auth.upstream_secret_file {
            Some(path) => Some(read_secret(path).map_err(|reason| SiteError::UpstreamSecret {
                site: s.name.clone(),
                reason,
            })?),
            None => None,
        };
        Ok(Site {
            name: s.name.clone(),
            upstreams: Upstreams::new(&s.name, upstreams, &s.balance, !s.preserve_host, metrics),
            preserve_host: s.preserve_host,
            auth,
            forwarded_user,
            public_paths: s.public_paths.clone(),
            allowed_origins: s.auth.allowed_origins.clone(),
            local: PerWorker::new(|| {
                Arc::new(SiteLocal {
                    upstream_secret: secret.clone(),
                    name: s.name.clone(),
                    metrics: SiteMetrics::new(metrics, &s.name),
                })
            }),
        })
    }

    /// Whether `path` is public on this site (prefix match on whole segments). A path with dot
    /// segments, empty segments, backslashes, `;` or percent-encoded dots, slashes and
    /// semicolons is never public: the upstream might normalise `/static/../api` into `/api`,
    /// and Tomcat, Jetty and Spring read `/static/..;/api` as `/api`.
    pub fn is_public(&self, path: &str) -> bool {
        if self.public_paths.is_empty() || !is_plain_path(path) {
            return false;
        }
        self.public_paths.iter().any(|p| {
            path.strip_prefix(p.as_str())
                .is_some_and(|rest| p.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// Every site, indexed by host name.
#[derive(Debug)]
pub struct Router {
    sites: Vec<Arc<Site>>,
    by_host: HashMap<String, usize>,
    fallback: Option<usize>,
}

/// Why a request matched no site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misroute {
    /// No site claims the host.
    UnknownHost,
    /// `Host` names a different site than the TLS SNI.
    HostDisagreesWithSni,
}

/// The upstream secret from its file: trimmed, 16 or more visible ASCII characters (what
/// `guard deploy` writes is 48 hex digits), as a header value marked sensitive.
fn read_secret(path: &std::path::Path) -> Result<HeaderValue, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let secret = text.trim();
    if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{shown}: expected one line of 16 or more visible ASCII characters (guard deploy --mlflow-permissions writes one)"
        ));
    }
    let mut v = HeaderValue::from_str(secret).map_err(|e| format!("{shown}: {e}"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The site's upstreams, each with its TLS set up when it is `https://` (the CA file read once
/// per build, so a reload picks up a new one).
fn upstreams(s: &SiteSettings, limits: &Limits) -> Result<Vec<Upstream>, SiteError> {
    let tls_error = |reason: String| SiteError::UpstreamTls {
        site: s.name.clone(),
        reason,
    };
    let config = if s.upstreams.iter().any(|u| u.tls) {
        Some(crate::tls::upstream_client_config(s.upstream_ca_file.as_deref()).map_err(tls_error)?)
    } else {
        None
    };
    s.upstreams
        .iter()
        .map(|u| {
            let tls = match (&config, u.tls) {
                (Some(c), true) => Some(UpstreamTls::new(c.clone(), &u.host).map_err(tls_error)?),
                _ => None,
            };
            Ok(Upstream::new(
                u,
                tls,
                limits.upstream_connect_timeout,
                limits.upstream_idle_timeout,
            ))
        })
        .collect()
}

impl Router {
    /// Builds every site, all sharing the process's `defence`; the first error stops it
    /// (nothing is swapped in).
    pub fn build(
        sites: &[SiteSettings],
        limits: &Limits,
        defence: &Arc<Defence>,
        metrics: &Arc<Metrics>,
    ) -> Result<Router, SiteError> {
        let mut built = Vec::new();
        let mut by_host = HashMap::new();
        let mut fallback = None;
        for (i, s) in sites.iter().enumerate() {
            built.push(Arc::new(Site::build(s, limits, defence, metrics)?));
            if s.hosts.is_empty() {
                fallback.get_or_insert(i);
            }
            for h in &s.hosts {
                by_host.entry(h.to_ascii_lowercase()).or_insert(i);
            }
        }
        Ok(Router {
            sites: built,
            by_host,
            fallback,
        })
    }

    /// Every site.
    pub fn sites(&self) -> &[Arc<Site>] {
        &self.sites
    }

    fn lookup(&self, host: &str) -> Option<usize> {
        self.by_host.get(host).copied().or(self.fallback)
    }

    /// Picks the site for a request from its `Host` (or `:authority`) and the connection's SNI.
    pub fn pick(&self, host: Option<&str>, sni: Option<&str>) -> Result<&Arc<Site>, Misroute> {
        if self.by_host.is_empty() {
            // No site names a host (guard on flags alone): every name gets the fallback.
            return self.fallback.map(|i| &self.sites[i]).ok_or(Misroute::UnknownHost);
        }
        let host = host.map(normalize_host);
        let sni = sni.map(|s| s.to_ascii_lowercase());
        let by_host = host.as_deref().map(|h| self.lookup(h));
        // An SNI that names no site (an IP, `localhost` for a tunnel) has no say; one that names
        // a site must agree with the Host.
        let by_sni = sni.as_deref().and_then(|s| self.lookup(s));
        let index = match (by_host, by_sni) {
            (Some(Some(h)), Some(s)) if h != s => return Err(Misroute::HostDisagreesWithSni),
            (Some(h), _) => h,
            (None, Some(s)) => Some(s),
            (None, None) => self.fallback,
        };
        index.map(|i| &self.sites[i]).ok_or(Misroute::UnknownHost)
    }
}

/// A path with nothing an upstream could normalise into another path.
fn is_plain_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !(path.contains('\\')
        || path.contains(';')
        || path.contains("//")
        || ["%2e", "%2f", "%5c", "%00", "%3b"]
            .iter()
            .any(|enc| lower.contains(enc))
        || path.split('/').any(|seg| seg == "." || seg == ".."))
}

/// `Host` without its port, lowercase; IPv6 literals keep their brackets off.
fn normalize_host(h: &str) -> String {
    let h = h.trim();
    let bare = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map(|(n, _)| n)
            .unwrap_or(h)
    };
    bare.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_config::model::Upstream;
    use guard_config::serve::AuthSettings;

    fn site(name: &str, hosts: &[&str]) -> SiteSettings {
        let mut auth = AuthSettings::defaults(std::path::Path::new("/nonexistent"));
        auth.disabled = true;
        SiteSettings {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            upstreams: vec![Upstream::parse("127.0.0.1:1").unwrap()],
            balance: Default::default(),
            upstream_ca_file: None,
            preserve_host: false,
            auth,
            public_paths: vec!["/static".into()],
        }
    }

    #[tokio::test]
    async fn requests_route_by_host_and_sni_and_unknown_hosts_get_nothing() {
        let r = Router::build(
            &[
                site("mlflow", &["mlflow.example.com"]),
                site("notebook", &["nb.example.com"]),
            ],
            &Limits::default(),
            &Defence::new(),
            &Arc::new(Metrics::new(false)),
        )
        .unwrap();
        assert_eq!(r.pick(Some("mlflow.example.com:443"), None).unwrap().name, "mlflow");
        assert_eq!(
            r.pick(Some("NB.example.com"), Some("nb.example.com")).unwrap().name,
            "notebook"
        );
        assert_eq!(r.pick(None, Some("nb.example.com")).unwrap().name, "notebook");
        assert_eq!(
            r.pick(Some("other.example.com"), None).unwrap_err(),
            Misroute::UnknownHost
        );
        assert_eq!(r.pick(None, None).unwrap_err(), Misroute::UnknownHost);
        assert_eq!(
            r.pick(Some("mlflow.example.com"), Some("localhost")).unwrap().name,
            "mlflow",
            "an SNI naming no site has no say"
        );
        assert_eq!(
            r.pick(Some("mlflow.example.com"), Some("nb.example.com")).unwrap_err(),
            Misroute::HostDisagreesWithSni
        );
        let r = Router::build(
            &[site("only", &[])],
            &Limits::default(),
            &Defence::new(),
            &Arc::new(Metrics::new(false)),
        )
        .unwrap();
        assert_eq!(r.pick(Some("anything"), Some("localhost")).unwrap().name, "only");
    }

    #[tokio::test]
    async fn public_paths_match_whole_segments() {
        let r = Router::build(
            &[site("s", &[])],
            &Limits::default(),
            &Defence::new(),
            &Arc::new(Metrics::new(false)),
        )
        .unwrap();
        let s = &r.sites()[0];
        assert!(s.is_public("/static"));
        assert!(s.is_public("/static/app.js"));
        assert!(!s.is_public("/staticky"));
        assert!(!s.is_public("/api/static"));
        for sneaky in [
            "/static/../api/2.0/mlflow/runs/create",
            "/static/%2e%2e/api",
            "/static/..%2fapi",
            "/static//x",
            "/static/./x",
            "/static\\..\\api",
            "/static/..;/api",
            "/static/..%3b/api",
            "/static/..%3B/api",
            "/static;x=1/app.js",
        ] {
            assert!(!s.is_public(sneaky), "{sneaky}");
        }
    }
}
