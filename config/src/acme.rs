//! Settings for certificates from an ACME CA (`guard serve --domain`): the names, the CA, the
//! challenge, and the plain-HTTP listener that answers HTTP-01 and redirects to HTTPS. The flag
//! parsers live here so every front end refuses the same input with the same words.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Let's Encrypt's production directory, the default CA.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`--acme-staging`): untrusted certificates, generous limits.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// The TLS listener when a domain is set: validators and browsers come to 443.
pub const DEFAULT_ACME_LISTEN: &str = "0.0.0.0:443";
/// The plain-HTTP listener when a domain is set: HTTP-01 validators come to 80.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";
/// The public HTTPS port the plain listener redirects to.
pub const DEFAULT_HTTPS_PORT: u16 = 443;
/// `Strict-Transport-Security: max-age` sent with certificates from ACME: one year.
pub const DEFAULT_HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 86400);

/// The longest DNS name (RFC 1035 section 2.3.4, without the root's trailing dot).
const MAX_DOMAIN_LEN: usize = 253;

/// Everything the ACME side of `guard serve` needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeSettings {
    /// Names the one certificate covers, lowercase, without duplicates; at least one. The first
    /// names the certificate in logs.
    pub domains: Vec<String>,
    /// Contact address registered with the CA's account.
    pub email: String,
    /// The CA's ACME directory URL (https).
    pub directory: String,
    /// PEM file whose first certificate is trusted for the CA's own HTTPS endpoint (a private CA
    /// or pebble); `None` uses the system's roots.
    pub ca_root: Option<PathBuf>,
    /// Which validation to use.
    pub challenge: ChallengeChoice,
    /// Plain-HTTP listener: HTTP-01 answers and the redirect to HTTPS.
    pub http_listen: SocketAddr,
    /// The HTTPS port clients reach from outside (differs from the `--listen` port behind a
    /// port mapping); the redirect targets it, and 443 is left out of the URL.
    pub https_port: u16,
    /// `Strict-Transport-Security: max-age`, in whole seconds; zero tells browsers to forget.
    pub hsts_max_age: Duration,
}

/// Which ACME challenge proves control of the names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeChoice {
    /// TLS-ALPN-01 on the TLS listener first (it needs only port 443), then HTTP-01 on the plain
    /// listener when the CA could not validate the first.
    Auto,
    /// HTTP-01 only: `GET http://NAME/.well-known/acme-challenge/TOKEN` on port 80.
    Http01,
    /// TLS-ALPN-01 only: a handshake with ALPN `acme-tls/1` on port 443.
    TlsAlpn01,
}

impl ChallengeChoice {
    /// Parses `--acme-challenge`: `http-01`, `tls-alpn-01` or `auto`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ChallengeChoice::Auto),
            "http-01" | "http01" => Ok(ChallengeChoice::Http01),
            "tls-alpn-01" | "tlsalpn01" => Ok(ChallengeChoice::TlsAlpn01),
            _ => Err(format!("{s:?}: expected http-01, tls-alpn-01 or auto")),
        }
    }
}

impl AcmeSettings {
    /// Checks what no single flag can: a public CA only issues for public names.
    pub fn validate(&self) -> Result<(), String> {
        if self.domains.is_empty() {
            return Err("--domain: at least one name is needed".into());
        }
        if self.directory == LETS_ENCRYPT_PRODUCTION || self.directory == LETS_ENCRYPT_STAGING {
            if let Some(d) = self.domains.iter().find(|d| !is_public_shape(d)) {
                return Err(format!(
                    "--domain {d}: Let's Encrypt issues only for public names such as mlflow.example.com \
                     (use --acme-directory for a private CA, or omit --domain for a self-signed certificate)"
                ));
            }
        }
        Ok(())
    }
}

/// A dot and a top-level label that is not all digits.
fn is_public_shape(name: &str) -> bool {
    match name.rsplit_once('.') {
        Some((_, tld)) => !tld.chars().all(|c| c.is_ascii_digit()),
        None => false,
    }
}

/// Checks a `--domain` and returns it lowercased: RFC 1123 labels (letters, digits, inner
/// hyphens, 1 to 63 characters), 253 characters at most. IP addresses and wildcards are refused:
/// HTTP-01 and TLS-ALPN-01 cannot validate a wildcard, and Let's Encrypt issues no certificate
/// for an IP address through this path. Single-label names (`localhost`) pass here, for private
/// CAs; [`AcmeSettings::validate`] refuses them for Let's Encrypt.
pub fn parse_domain(s: &str) -> Result<String, String> {
    let name = s.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty domain name".into());
    }
    if name.parse::<std::net::IpAddr>().is_ok() || name.starts_with('[') {
        return Err(format!(
            "{s:?} is an IP address; certificates from ACME need a DNS name (omit --domain for a self-signed certificate)"
        ));
    }
    if name.starts_with("*.") {
        return Err(format!(
            "{s:?}: wildcard names need DNS-01 validation, which guard does not do; list each name"
        ));
    }
    if name.ends_with('.') {
        return Err(format!("{s:?}: drop the trailing dot"));
    }
    if name.len() > MAX_DOMAIN_LEN {
        return Err(format!("{s:?} is longer than {MAX_DOMAIN_LEN} characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(format!("{s:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("{s:?}: label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            let hint = if c.is_ascii() {
                ""
            } else {
                " (write international names in punycode, xn--...)"
            };
            return Err(format!("{s:?} is not a valid domain name: {c:?} is not allowed{hint}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{s:?}: label {label:?} starts or ends with '-'"));
        }
    }
    if labels.len() > 1 && labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return Err(format!(
            "{s:?} looks like an IP address; certificates from ACME need a DNS name"
        ));
    }
    Ok(name)
}

/// Checks `--acme-email`: `local@domain` with a plain local part (letters, digits, `._+-`) and a
/// domain with a dot that passes [`parse_domain`]. CAs refuse anything fancier.
pub fn parse_email(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty email address".into());
    }
    let t = t.strip_prefix("mailto:").unwrap_or(t);
    let (local, domain) = t
        .rsplit_once('@')
        .ok_or_else(|| format!("{s:?} is not an email address (expected name@example.com)"))?;
    if local.is_empty() || local.len() > 64 {
        return Err(format!("{s:?}: the part before '@' must be 1 to 64 characters"));
    }
    if let Some(c) = local
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
    {
        return Err(format!(
            "{s:?}: {c:?} is not allowed before '@' (letters, digits and . _ + -)"
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(format!("{s:?}: misplaced '.' before '@'"));
    }
    let domain = parse_domain(domain).map_err(|e| format!("{s:?}: domain part: {e}"))?;
    if !is_public_shape(&domain) {
        return Err(format!("{s:?}: the domain part needs a dot, e.g. ops@example.com"));
    }
    Ok(format!("{local}@{domain}"))
}

/// Checks `--acme-directory`: an absolute `https://` URL with a host (RFC 8555 section 6.1
/// requires HTTPS). Reachability is checked at run time, with retries.
pub fn parse_directory_url(s: &str) -> Result<String, String> {
    let t = s.trim();
    let rest = match t.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{s:?}: the scheme must be https, not {scheme:?} (ACME runs over HTTPS only)"
            ))
        }
        None => return Err(format!("{s:?} is not a URL (expected https://host/directory)")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("{s:?}: no host in the URL"));
    }
    if authority.contains('@') {
        return Err(format!("{s:?}: credentials in the URL are not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed '[' in the host"))?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{s:?}: {ip:?} is not an IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(authority), None),
        }
    };
    if let Some(h) = host {
        if h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')) {
            return Err(format!("{s:?}: {h:?} is not a host name"));
        }
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{s:?}: {p:?} is not a port"));
        }
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?}: spaces are not allowed in a URL"));
    }
    Ok(t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_lowercased_and_bad_ones_refused_with_a_reason() {
        assert_eq!(parse_domain(" MLflow.Example.COM ").unwrap(), "mlflow.example.com");
        assert_eq!(parse_domain("localhost").unwrap(), "localhost");
        for (bad, why) in [
            ("", "empty"),
            ("10.0.0.1", "IP address"),
            ("::1", "IP address"),
            ("[::1]", "IP address"),
            ("1.2.3", "IP address"),
            ("*.example.com", "wildcard"),
            ("example.com.", "trailing dot"),
            ("a..b", "empty label"),
            ("exa mple.com", "not allowed"),
            ("bücher.de", "punycode"),
            ("-a.example.com", "starts or ends"),
        ] {
            let e = parse_domain(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(parse_domain(&format!("{}.com", "a".repeat(64)))
            .unwrap_err()
            .contains("63"));
    }

    #[test]
    fn emails_need_a_plain_local_part_and_a_dotted_domain() {
        assert_eq!(parse_email("Ops+guard@Example.com").unwrap(), "Ops+guard@example.com");
        assert_eq!(parse_email("mailto:ops@example.com").unwrap(), "ops@example.com");
        for bad in [
            "",
            "ops",
            "@example.com",
            "ops@",
            "ops@localhost",
            "o ps@example.com",
            ".ops@example.com",
            "ops@1.2.3.4",
        ] {
            assert!(parse_email(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn directory_urls_must_be_https_with_a_host() {
        for good in [
            LETS_ENCRYPT_PRODUCTION,
            "https://localhost:14000/dir",
            "https://[::1]:14000/dir",
            "https://ca.internal",
        ] {
            assert_eq!(parse_directory_url(good).unwrap(), good);
        }
        for (bad, why) in [
            ("http://ca.example.com/dir", "https"),
            ("ca.example.com/dir", "not a URL"),
            ("https:///dir", "no host"),
            ("https://ca.example.com:0/dir", "not a port"),
            ("https://ca.example.com:99999/dir", "not a port"),
            ("https://u:p@ca.example.com/dir", "credentials"),
            ("https://ca_example.com/dir", "host name"),
        ] {
            let e = parse_directory_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn lets_encrypt_refuses_single_label_names_but_a_private_ca_may_not() {
        let mut s = AcmeSettings {
            domains: vec!["localhost".into()],
            email: "ops@example.com".into(),
            directory: LETS_ENCRYPT_PRODUCTION.into(),
            ca_root: None,
            challenge: ChallengeChoice::Auto,
            http_listen: DEFAULT_HTTP_LISTEN.parse().unwrap(),
            https_port: DEFAULT_HTTPS_PORT,
            hsts_max_age: DEFAULT_HSTS_MAX_AGE,
        };
        assert!(s.validate().unwrap_err().starts_with("--domain localhost: "));
        s.directory = "https://localhost:14000/dir".into();
        assert!(s.validate().is_ok());
        s.domains.clear();
        assert!(s.validate().is_err());
    }

    #[test]
    fn challenge_names_parse() {
        assert_eq!(ChallengeChoice::parse("HTTP-01").unwrap(), ChallengeChoice::Http01);
        assert_eq!(
            ChallengeChoice::parse("tls-alpn-01").unwrap(),
            ChallengeChoice::TlsAlpn01
        );
        assert_eq!(ChallengeChoice::parse("auto").unwrap(), ChallengeChoice::Auto);
        assert!(ChallengeChoice::parse("dns-01").is_err());
    }
}
