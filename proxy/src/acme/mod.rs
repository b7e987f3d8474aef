//! Certificates from an ACME CA (Let's Encrypt by default): the account and certificate kept in
//! the state directory, the order flow answering HTTP-01 or TLS-ALPN-01, and the task that renews
//! once a third of the lifetime remains and swaps the result into the TLS resolver. Every
//! instant-acme call stays in this module, so its 0.9 API break stays local.
//!
//! `store` keeps the files, `challenges` publishes the answers, `order` runs one attempt
//! against the CA, `renewal` is the task that decides when.

mod challenges;
mod order;
mod renewal;
mod store;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use guard_config::acme::AcmeSettings;
use guard_config::serve::TlsSource;
use http::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use tokio::task::JoinHandle;

use crate::tls::CertResolver;

pub use challenges::Http01Answers;
use renewal::Manager;
use store::Store;

/// A reason ACME could not be set up at start (configuration errors, exit 2).
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// `--acme-ca-root` is unusable.
    #[error("--acme-ca-root {}: {reason}", path.display())]
    CaRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The state directory cannot hold the account and certificate.
    #[error("{}: cannot create the ACME state directory", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The `Strict-Transport-Security` header for responses, only when the certificate comes from
/// ACME: a self-signed or hand-managed certificate must never pin browsers to HTTPS.
pub fn hsts_header(tls: &TlsSource) -> Option<HeaderValue> {
    match tls {
        TlsSource::Acme(a) => HeaderValue::from_str(&format!("max-age={}", a.hsts_max_age.as_secs())).ok(),
        _ => None,
    }
}

/// Checks what can be checked offline and loads the stored certificate if it is still worth
/// serving: not expired, and covering every `--domain`. Called before any listener opens.
pub fn load(settings: &AcmeSettings, state_dir: &Path) -> Result<Option<Arc<CertifiedKey>>, AcmeError> {
    if let Some(path) = &settings.ca_root {
        check_ca_root(path)?;
    }
    let store = Store::new(state_dir, &settings.directory);
    guard_config::fsutil::write_atomic(&store.dir.join(".probe"), b"", 0o600)
        .and_then(|()| std::fs::remove_file(store.dir.join(".probe")))
        .map_err(|source| AcmeError::StateDir {
            path: store.dir.clone(),
            source,
        })?;
    let names = settings.domains.join(", ");
    match store.load_certificate(&settings.domains) {
        Ok(Some((key, v))) => {
            tracing::info!(
                domains = %names,
                "using the stored certificate (serial {}), valid until {}; renewal due {}",
                v.serial,
                when(v.not_after),
                when(v.renew_at())
            );
            Ok(Some(key))
        }
        Ok(None) => {
            tracing::info!(domains = %names, "no stored certificate yet: ordering one; TLS handshakes wait for it");
            Ok(None)
        }
        Err(why) => {
            tracing::warn!(domains = %names, "stored certificate not used: {why}; ordering a new one");
            Ok(None)
        }
    }
}

fn check_ca_root(path: &Path) -> Result<(), AcmeError> {
    let err = |reason: String| AcmeError::CaRoot {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let first = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| err("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)".into()))?
        .map_err(|e| err(format!("not a PEM certificate: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(first)
        .map_err(|e| err(format!("not a usable CA certificate: {e}")))
}

/// The certificate task; it stops when this is dropped.
#[derive(Debug)]
pub struct Running {
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the task that obtains and renews the certificate into `resolver`, publishing its
/// HTTP-01 answers in `answers` for the plain listener (which `server` runs: without it only
/// TLS-ALPN-01 can work).
pub fn start(
    settings: AcmeSettings,
    state_dir: &Path,
    resolver: Arc<CertResolver>,
    answers: Arc<Http01Answers>,
) -> Running {
    let manager = Manager {
        store: Store::new(state_dir, &settings.directory),
        settings,
        resolver,
        answers,
        account: None,
    };
    Running {
        task: tokio::spawn(manager.run()),
    }
}

/// A time for logs: RFC 3339 in UTC.
/// A certificate time for logs, as every other time guard prints.
fn when(t: SystemTime) -> String {
    guard_config::clock::format_utc(t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use guard_config::acme::ChallengeChoice;

    use super::*;

    #[test]
    fn hsts_only_for_acme() {
        assert!(hsts_header(&TlsSource::SelfSigned).is_none());
        let a = AcmeSettings {
            domains: vec!["a.example.com".into()],
            email: "ops@example.com".into(),
            directory: guard_config::acme::LETS_ENCRYPT_STAGING.into(),
            ca_root: None,
            challenge: ChallengeChoice::Auto,
            http_listen: "0.0.0.0:80".parse().unwrap(),
            https_port: 443,
            hsts_max_age: Duration::from_secs(600),
        };
        assert_eq!(hsts_header(&TlsSource::Acme(a)).unwrap(), "max-age=600");
    }
}
