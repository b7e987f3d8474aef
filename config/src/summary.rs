//! What `guard check` prints about a valid configuration: the listeners, the certificate source,
//! and each site with its hosts, upstream and where its users and tokens come from.

use std::fmt::Write;
use std::path::Path;

use crate::acme::{ChallengeChoice, LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING};
use crate::file_error::FileError;
use crate::model::format_duration;
use crate::serve::{LogFormat, ServeSettings, TlsSource};
use crate::tokens::{self, TokensError};
use crate::users::{self, UsersError};

/// A short, human-readable summary of what `guard serve` would run. Counts users and tokens by
/// loading their files; a missing file reads as "not found", never as an error.
pub fn summary(s: &ServeSettings) -> String {
    let mut out = String::new();
    let line = &mut out;
    let _ = writeln!(line, "listen:    {}", s.listen);
    let tls = match &s.tls {
        TlsSource::Files { cert, key } => {
            format!("certificate files {} and {}", cert.display(), key.display())
        }
        TlsSource::SelfSigned => format!("self-signed certificate in {}", s.state_dir.display()),
        TlsSource::Acme(a) => {
            let ca = match a.directory.as_str() {
                LETS_ENCRYPT_PRODUCTION => "Let's Encrypt".to_owned(),
                LETS_ENCRYPT_STAGING => "Let's Encrypt staging".to_owned(),
                other => other.to_owned(),
            };
            let challenge = match a.challenge {
                ChallengeChoice::Auto => "tls-alpn-01, then http-01",
                ChallengeChoice::Http01 => "http-01",
                ChallengeChoice::TlsAlpn01 => "tls-alpn-01",
            };
            let _ = writeln!(
                line,
                "http:      {} (ACME challenges, redirects to port {})",
                a.http_listen, a.https_port
            );
            format!(
                "ACME from {ca} for {}; contact {}; challenge {challenge}; hsts max-age {}",
                a.domains.join(", "),
                a.email,
                format_duration(a.hsts_max_age)
            )
        }
    };
    let _ = writeln!(line, "tls:       {tls}");
    let _ = writeln!(line, "state dir: {}", s.state_dir.display());
    let log = match s.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let _ = writeln!(line, "log:       {log}");
    if !s.trusted_proxies.is_empty() {
        let proxies: Vec<String> = s.trusted_proxies.iter().map(|c| c.0.to_string()).collect();
        let _ = writeln!(line, "trusted:   {}", proxies.join(", "));
    }
    for site in &s.sites {
        let hosts = if site.hosts.is_empty() {
            "every other host".to_owned()
        } else {
            site.hosts.join(", ")
        };
        let upstreams: Vec<String> = site.upstreams.iter().map(ToString::to_string).collect();
        let _ = writeln!(line, "site {}: {hosts} -> {}", site.name, upstreams.join(", "));
        if site.auth.disabled {
            let _ = writeln!(line, "  auth:    off (dangerous_no_auth)");
        } else {
            let _ = writeln!(
                line,
                "  users:   {} ({})",
                site.auth.users_file.display(),
                count_users(&site.auth.users_file)
            );
            let _ = writeln!(
                line,
                "  tokens:  {} ({})",
                site.auth.tokens_file.display(),
                count_tokens(&site.auth.tokens_file)
            );
        }
        if !site.auth.allowed_origins.is_empty() {
            let _ = writeln!(line, "  origins: {}", site.auth.allowed_origins.join(", "));
        }
        if !site.public_paths.is_empty() {
            let _ = writeln!(line, "  public:  {}", site.public_paths.join(", "));
        }
    }
    out.pop();
    out
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn count_users(path: &Path) -> String {
    match users::load(path) {
        Ok((u, _)) => plural(u.len(), "user"),
        Err(UsersError::File(FileError::NotFound { .. })) => "not found".into(),
        Err(_) => "unreadable".into(),
    }
}

fn count_tokens(path: &Path) -> String {
    match tokens::load(path) {
        Ok(t) => plural(t.len(), "token"),
        Err(TokensError::File(FileError::NotFound { .. })) => "not found".into(),
        Err(_) => "unreadable".into(),
    }
}
