//! `auth.jwt`: identity providers whose signed bearer tokens (JWTs) let machines in (CI jobs,
//! client-credentials clients, Kubernetes service accounts), as written and as checked. The
//! proxy's `jwt` module verifies tokens against them.

use serde::Deserialize;

/// The claim that names a token's caller unless `user_claim` says otherwise.
pub const DEFAULT_USER_CLAIM: &str = "sub";

/// One entry of `auth.jwt`, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// The `iss` its tokens carry, exactly (`https://`, or `http://` on a loopback address);
    /// its keys come from `ISSUER/.well-known/openid-configuration` unless `jwks_url` is set.
    /// Required.
    pub issuer: Option<String>,
    /// `aud` values accepted; a token must carry one of them. Required, at least one.
    pub audiences: Option<Vec<String>>,
    /// The issuer's key set (JWKS) URL, when it publishes no discovery document. Default: the
    /// discovery document's `jwks_uri`.
    pub jwks_url: Option<String>,
    /// The claim naming the caller to logs, roles and the upstream. Default: `sub`.
    pub user_claim: Option<String>,
    /// `sub` values accepted, each exact or ending in `*` for a prefix
    /// (`repo:my-org/my-repo:*`). Default: any.
    pub subjects: Option<Vec<String>>,
}

/// One identity provider whose JWTs are accepted, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtIssuer {
    /// The exact `iss`.
    pub issuer: String,
    /// Accepted `aud` values; never empty.
    pub audiences: Vec<String>,
    /// Where the keys are; `None`: from discovery.
    pub jwks_url: Option<String>,
    /// The claim naming the caller.
    pub user_claim: String,
    /// Accepted `sub` patterns; empty: any.
    pub subjects: Vec<String>,
}

impl JwtIssuer {
    /// Whether `sub` is one of the accepted subjects.
    pub fn accepts_subject(&self, sub: Option<&str>) -> bool {
        if self.subjects.is_empty() {
            return true;
        }
        let Some(sub) = sub else { return false };
        self.subjects.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => sub.starts_with(prefix),
            None => sub == p,
        })
    }
}

/// Checks one written entry; errors name the key under `at` (`auth.jwt[0]`).
pub fn check(raw: RawIssuer, at: &str) -> Result<JwtIssuer, (String, String)> {
    let key = |k: &str| format!("{at}.{k}");
    let issuer = raw
        .issuer
        .ok_or_else(|| (at.to_owned(), "needs an issuer".to_owned()))?;
    parse_url(&issuer).map_err(|e| (key("issuer"), e))?;
    let audiences = raw.audiences.unwrap_or_default();
    if audiences.is_empty() {
        return Err((
            key("audiences"),
            "needs at least one audience: a token for any audience of the issuer would pass".to_owned(),
        ));
    }
    if let Some(i) = audiences.iter().position(|a| a.trim().is_empty()) {
        return Err((format!("{at}.audiences[{i}]"), "empty audience".to_owned()));
    }
    if let Some(url) = &raw.jwks_url {
        parse_url(url).map_err(|e| (key("jwks_url"), e))?;
    }
    let user_claim = raw.user_claim.unwrap_or_else(|| DEFAULT_USER_CLAIM.to_owned());
    if user_claim.trim().is_empty() {
        return Err((key("user_claim"), "empty claim name".to_owned()));
    }
    let subjects = raw.subjects.unwrap_or_default();
    if let Some(i) = subjects.iter().position(|s| s.is_empty() || s == "*") {
        return Err((
            format!("{at}.subjects[{i}]"),
            "matches every subject; leave `subjects` out for that".to_owned(),
        ));
    }
    Ok(JwtIssuer {
        issuer,
        audiences,
        jwks_url: raw.jwks_url,
        user_claim,
        subjects,
    })
}

/// An issuer or key URL: `https://`, or `http://` only to a loopback address (a provider on
/// the same machine), since keys fetched in the clear could be anyone's.
pub fn parse_url(s: &str) -> Result<(), String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?}: not a URL (https://...)"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_only = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if host_only.is_empty() {
        return Err(format!("{s:?}: no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(format!("{s:?}: no query or fragment allowed"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback(host_only) => Ok(()),
        "http" => Err(format!(
            "{s:?}: keys over plain http could be anyone's; use https (http only to a loopback address)"
        )),
        _ => Err(format!("{s:?}: not an https URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(issuer: &str, audiences: &[&str]) -> RawIssuer {
        RawIssuer {
            issuer: Some(issuer.to_owned()),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            ..RawIssuer::default()
        }
    }

    #[test]
    fn an_issuer_needs_https_and_an_audience() {
        let ok = check(
            raw(
                "https://token.actions.githubusercontent.com",
                &["https://mlflow.example"],
            ),
            "auth.jwt[0]",
        )
        .unwrap();
        assert_eq!(ok.user_claim, "sub");
        assert!(check(raw("http://127.0.0.1:9000", &["a"]), "j").is_ok());
        assert!(check(raw("http://[::1]:9000/realms/x", &["a"]), "j").is_ok());
        let err = |r| check(r, "auth.jwt[0]").unwrap_err();
        assert_eq!(err(raw("http://idp.example.com", &["a"])).0, "auth.jwt[0].issuer");
        assert!(err(raw("http://idp.example.com", &["a"])).1.contains("use https"));
        assert_eq!(err(raw("https://idp.example.com", &[])).0, "auth.jwt[0].audiences");
        assert_eq!(err(raw("idp.example.com", &["a"])).0, "auth.jwt[0].issuer");
        assert_eq!(err(RawIssuer::default()).0, "auth.jwt[0]");
        let mut any = raw("https://idp.example.com", &["a"]);
        any.subjects = Some(vec!["*".to_owned()]);
        assert_eq!(err(any).0, "auth.jwt[0].subjects[0]");
    }

    #[test]
    fn subjects_are_exact_or_prefixes() {
        let mut r = raw("https://idp.example.com", &["a"]);
        r.subjects = Some(vec![
            "repo:org/app:*".to_owned(),
            "system:serviceaccount:ml:trainer".to_owned(),
        ]);
        let i = check(r, "j").unwrap();
        assert!(i.accepts_subject(Some("repo:org/app:ref:refs/heads/main")));
        assert!(i.accepts_subject(Some("system:serviceaccount:ml:trainer")));
        assert!(!i.accepts_subject(Some("system:serviceaccount:ml:trainer2")));
        assert!(!i.accepts_subject(Some("repo:org/other:ref")));
        assert!(!i.accepts_subject(None));
    }
}
