//! TLS for the listener: one rustls `ServerConfig` built once, whose certificate lives behind an
//! `ArcSwap` so a renewal or a replaced file reaches new handshakes at once while open
//! connections keep theirs. Loads PEM files, makes the self-signed default, and watches files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};


use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// ALPN protocols offered to clients, in server preference order.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1 ALPN id.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A certificate or key that could not be used, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("{0}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate(PathBuf),
    /// The file holds no usable private key.
    #[error("{path}: no PEM private key found (expected PKCS#8, PKCS#1 or SEC1): {reason}")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// The key is of a kind rustls cannot sign with, or does not match the certificate.
    #[error("{key}: {reason} (certificate {cert})")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// Writing the self-signed certificate into the state directory failed.
    #[error("{path}: cannot write the self-signed certificate")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen failed to make the self-signed certificate.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// The process's crypto provider: ring, the only one compiled in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Hands the current certificate to every handshake; swapped in place on reload or renewal.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    /// Starts with `initial`.
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        CertResolver { current: ArcSwap::new(initial) }
    }

    /// Replaces the certificate for new handshakes.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.2 and 1.3 only, ALPN h2 then http/1.1, no 0-RTT (replays through a proxy are unsafe).
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    cfg.max_early_data_size = 0;
    Arc::new(cfg)
}

/// Reads a PEM chain and key and checks that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read { path: cert.into(), source })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read { path: key.into(), source })?;
    certified_key(&cert_pem, &key_pem, cert, key)
}

/// Parses PEM bytes into a checked `CertifiedKey`; the paths only name the source in errors.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.into()));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::NoKey {
        path: key.into(),
        reason: e.to_string().to_lowercase(),
    })?;
    let ck = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::KeyMismatch {
        key: key.into(),
        cert: cert.into(),
        reason: match e {
            rustls::Error::InconsistentKeys(_) => "private key does not match the certificate".into(),
            other => other.to_string().to_lowercase(),
        },
    })?;
    Ok(Arc::new(ck))
}

/// The self-signed default: a private CA and a leaf for `localhost`, `127.0.0.1`, `::1` and
/// the host name, kept in `<state>/tls/`. Clients trust `ca.pem` (its key is thrown away
/// after signing, so nothing else can ever be issued under it).
#[derive(Debug)]
pub struct SelfSigned {
    /// The certificate to serve.
    pub key: Arc<CertifiedKey>,
    /// The CA file clients should trust (`MLFLOW_TRACKING_SERVER_CERT_PATH`).
    pub ca_path: PathBuf,
    /// Whether it was made on this start.
    pub created: bool,
}

/// Loads the self-signed certificate from `state_dir`, or makes it on the first start (and
/// again when it has expired or no longer covers the host name).
pub fn self_signed(state_dir: &Path) -> Result<SelfSigned, TlsError> {
    let dir = state_dir.join("tls");
    let (ca_path, cert_path, key_path) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    let names = self_signed_names();
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        if let Ok(key) = load_pair(&cert_path, &key_path) {
            if still_fits(&key, &names) {
                return Ok(SelfSigned { key, ca_path, created: false });
            }
        }
    }
    let (ca_pem, chain_pem, key_pem) = generate_self_signed(&names)?;
    let write = |path: &Path, bytes: &[u8], mode: u32| {
        guard_config::fsutil::write_atomic(path, bytes, mode).map_err(|source| TlsError::Write { path: path.into(), source })
    };
    write(&key_path, key_pem.as_bytes(), 0o600)?;
    write(&cert_path, chain_pem.as_bytes(), 0o644)?;
    write(&ca_path, ca_pem.as_bytes(), 0o644)?;
    let key = certified_key(chain_pem.as_bytes(), key_pem.as_bytes(), &cert_path, &key_path)?;
    Ok(SelfSigned { key, ca_path, created: true })
}

/// Names the self-signed leaf covers.
fn self_signed_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim().to_ascii_lowercase();
        if !h.is_empty() && h != "localhost" && rustls::pki_types::DnsName::try_from(h.as_str()).is_ok() {
            names.push(h);
        }
    }
    names
}

/// Whether a stored leaf is still valid for a week and names every wanted host.
fn still_fits(key: &CertifiedKey, names: &[String]) -> bool {
    let Some(leaf) = key.cert.first() else { return false };
    let Some(not_after) = leaf_not_after(leaf) else { return false };
    let week = Duration::from_secs(7 * 86400);
    if not_after < SystemTime::now() + week {
        return false;
    }
    // The host names appear verbatim as DER IA5Strings inside the SAN extension.
    names
        .iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_err())
        .all(|n| leaf.as_ref().windows(n.len()).any(|w| w == n.as_bytes()))
}

/// Reads notAfter from a certificate we made ourselves (UTCTime or GeneralizedTime).
pub fn leaf_not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    x509_not_after(cert.as_ref())
}

/// Finds the validity's second time in DER: the two times are consecutive UTCTime (0x17) or
/// GeneralizedTime (0x18) elements; the first pair of such elements in a certificate is it.
fn x509_not_after(der: &[u8]) -> Option<SystemTime> {
    let mut i = 0;
    let mut found = Vec::new();
    while i + 2 < der.len() && found.len() < 2 {
        let tag = der[i];
        let len = der[i + 1] as usize;
        if (tag == 0x17 && len == 13) || (tag == 0x18 && len == 15) {
            if let Some(bytes) = der.get(i + 2..i + 2 + len) {
                if let Some(t) = parse_asn1_time(tag, bytes) {
                    found.push(t);
                    i += 2 + len;
                    continue;
                }
            }
        }
        i += 1;
    }
    found.get(1).copied()
}

fn parse_asn1_time(tag: u8, b: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(b).ok()?;
    let s = s.strip_suffix('Z')?;
    let (year, rest) = if tag == 0x17 {
        let yy: i64 = s.get(0..2)?.parse().ok()?;
        (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
    } else {
        (s.get(0..4)?.parse().ok()?, s.get(4..)?)
    };
    let num = |r: std::ops::Range<usize>| -> Option<i64> { rest.get(r)?.parse().ok() };
    let (mo, d, h, mi, se) = (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    let days = days_from_civil(year, mo, d);
    let secs = days * 86400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs).ok().map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Makes a CA and a leaf signed by it; returns (CA PEM, leaf+CA chain PEM, leaf key PEM).
fn generate_self_signed(names: &[String]) -> Result<(String, String, String), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let now = time::OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "guard self-signed CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

    let leaf_key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(err)?;
    leaf.distinguished_name.push(DnType::CommonName, names[0].clone());
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - time::Duration::days(1);
    // 397 days: the longest lifetime browsers accept for a leaf.
    leaf.not_after = now + time::Duration::days(397);
    let issuer = Issuer::new(ca, &ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;

    let ca_pem = ca_cert.pem();
    Ok((ca_pem.clone(), format!("{}{}", leaf_cert.pem(), ca_pem), leaf_key.serialize_pem()))
}

/// Re-reads `cert` and `key` whenever either changes on disk (or `force` fires) and swaps the
/// new pair in. A pair that fails to load keeps the old certificate serving and is logged.
pub fn watch_files(resolver: Arc<CertResolver>, cert: PathBuf, key: PathBuf, force: Arc<tokio::sync::Notify>) {
    let paths = vec![cert.clone(), key.clone()];
    crate::watch::spawn(paths, force, move || match load_pair(&cert, &key) {
        Ok(ck) => {
            resolver.set(ck);
            tracing::info!(cert = %cert.display(), "certificate reloaded from disk");
        }
        Err(e) => tracing::error!("certificate not reloaded, the previous one keeps serving: {}", error_chain(&e)),
    });
}

/// `error: cause: cause` in one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("guard-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = self_signed(&dir).unwrap();
        assert!(first.created);
        let second = self_signed(&dir).unwrap();
        assert!(!second.created);
        assert_eq!(first.key.cert[0].as_ref(), second.key.cert[0].as_ref());
        assert_eq!(first.key.cert.len(), 2, "leaf and CA");
        let na = leaf_not_after(&first.key.cert[0]).unwrap();
        let days = na.duration_since(SystemTime::now()).unwrap().as_secs() / 86400;
        assert!((395..=397).contains(&days), "{days}");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("tls/key.pem")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn civil_dates_convert() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
    }
}
