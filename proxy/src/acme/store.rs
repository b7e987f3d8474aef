//! The state directory's ACME files: the account key and the certificate of one CA, each
//! replaced atomically.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use instant_acme::AccountCredentials;
use rustls::sign::CertifiedKey;

use crate::tls::{self, Validity};

use super::when;

/// The files of one CA in `<state>/acme/<directory>/`, all mode 0600 and replaced atomically:
/// `account.json` (the account key), `cert.pem` (leaf and intermediates) and `key.pem`.
/// Keyed by directory so staging and production never mix.
#[derive(Debug)]
pub(super) struct Store {
    pub(super) dir: PathBuf,
}

/// A state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {action}", path.display())]
pub(super) struct StoreError {
    path: PathBuf,
    action: &'static str,
    #[source]
    source: io::Error,
}

impl Store {
    pub(super) fn new(state_dir: &Path, directory: &str) -> Store {
        Store {
            dir: state_dir.join("acme").join(directory_key(directory)),
        }
    }

    pub(super) fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    pub(super) fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub(super) fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    pub(super) fn write(&self, path: PathBuf, bytes: &[u8]) -> Result<(), StoreError> {
        guard_config::fsutil::write_atomic(&path, bytes, 0o600).map_err(|source| StoreError {
            path,
            action: "write",
            source,
        })
    }

    /// The stored account, `Ok(None)` when there is none yet.
    pub(super) fn load_account(&self) -> Result<Option<AccountCredentials>, StoreError> {
        let path = self.account_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError {
                    path,
                    action: "read",
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError {
            path,
            action: "parse the account credentials",
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
    }

    pub(super) fn save_account(&self, creds: &AccountCredentials) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(creds).map_err(|e| StoreError {
            path: self.account_path(),
            action: "serialise the account credentials",
            source: io::Error::other(e),
        })?;
        self.write(self.account_path(), &json)
    }

    /// The stored certificate if it covers `domains` and has not expired; `Ok(None)` when there
    /// is none, `Err` with the reason when there is one that cannot be used.
    pub(super) fn load_certificate(&self, domains: &[String]) -> Result<Option<(Arc<CertifiedKey>, Validity)>, String> {
        let (cert, key) = (self.cert_path(), self.key_path());
        if !cert.exists() && !key.exists() {
            return Ok(None);
        }
        let ck = tls::load_pair(&cert, &key).map_err(|e| guard_config::error::chain(&e))?;
        let leaf = ck.cert.first().ok_or("the chain is empty")?;
        let v =
            tls::validity(leaf).ok_or_else(|| format!("{}: the leaf certificate cannot be parsed", cert.display()))?;
        if v.not_after <= SystemTime::now() {
            return Err(format!("it expired {}", when(v.not_after)));
        }
        if let Some(missing) = domains.iter().find(|d| !v.names.contains(d)) {
            return Err(format!("it does not cover {missing}"));
        }
        Ok(Some((ck, v)))
    }

    /// Key first: a crash between the two renames leaves a pair that fails to load (and is
    /// re-ordered), never a certificate served with the wrong key.
    pub(super) fn save_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<(), StoreError> {
        self.write(self.key_path(), key_pem.as_bytes())?;
        self.write(self.cert_path(), chain_pem.as_bytes())
    }
}

/// A directory URL as a file name: `https://acme-v02.api.letsencrypt.org/directory` →
/// `acme-v02.api.letsencrypt.org_directory`.
fn directory_key(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let key: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let key = key.trim_matches(['_', '.']).to_owned();
    if key.is_empty() {
        "ca".into()
    } else {
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn directory_urls_become_distinct_file_names() {
        assert_eq!(
            directory_key(guard_config::acme::LETS_ENCRYPT_PRODUCTION),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            directory_key(guard_config::acme::LETS_ENCRYPT_STAGING),
            "acme-staging-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(directory_key("https://localhost:14000/dir"), "localhost_14000_dir");
        assert_eq!(directory_key("https://../.."), "ca");
    }
}
