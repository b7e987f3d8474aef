//! TLS for the listener: one rustls `ServerConfig` built once, whose certificate lives behind an
//! `ArcSwap` so a renewal or a replaced file reaches new handshakes at once while open
//! connections keep theirs. Loads PEM files, makes the self-signed default, and watches files.
//! Also the TLS side of ACME: TLS-ALPN-01 challenge certificates, and handshakes held while the
//! first certificate is being issued.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// ALPN protocols offered to clients, in server preference order.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1 ALPN id.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// The ALPN id of ACME TLS-ALPN-01 validations (RFC 8737 §6.2).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";
/// How long a handshake waits for the first certificate from ACME before it is dropped.
pub const FIRST_CERTIFICATE_WAIT: Duration = Duration::from_secs(30);

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

/// The TLS client settings for `https://` upstreams: the certificate authorities in `ca_file`
/// (PEM, every certificate in it) or, without one, the system's roots; HTTP/1.1 by ALPN, as
/// guard speaks to every upstream.
pub fn upstream_client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut cfg = match ca_file {
        Some(path) => {
            let shown = path.display();
            let pem = std::fs::read(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{shown}: not a PEM certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{shown}: not a usable CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "{shown}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)"
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use hyper_rustls::ConfigBuilderExt;
            builder
                .with_native_roots()
                .map_err(|e| format!("no system certificate roots: {e}"))?
                .with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Hands the current certificate to every handshake; swapped in place on reload or renewal.
/// Empty only while the first certificate from ACME is being issued.
pub struct CertResolver {
    current: ArcSwapOption<CertifiedKey>,
    /// TLS-ALPN-01 answers by lowercase server name, present while their order runs.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Whether `current` holds a certificate; handshakes waiting for the first one watch it.
    ready: tokio::sync::watch::Sender<bool>,
    /// Whatever feeds this resolver (a file watcher) lives as long as it does.
    feeders: std::sync::Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    /// Starts with `initial`.
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        Self::with(Some(initial))
    }

    /// Starts with no certificate: handshakes wait for [`CertResolver::set`] (ACME's first).
    pub fn empty() -> Self {
        Self::with(None)
    }

    fn with(initial: Option<Arc<CertifiedKey>>) -> Self {
        CertResolver {
            ready: tokio::sync::watch::Sender::new(initial.is_some()),
            current: ArcSwapOption::new(initial),
            challenges: RwLock::default(),
            feeders: Default::default(),
        }
    }

    /// Keeps `feeder` alive as long as this resolver.
    pub fn keep_alive(&self, feeder: Arc<dyn std::any::Any + Send + Sync>) {
        self.feeders.lock().expect("feeders lock").push(feeder);
    }

    /// Replaces the certificate for new handshakes.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
        self.ready.send_replace(true);
    }

    /// The certificate new handshakes get; `None` until ACME's first arrives.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// Answers TLS-ALPN-01 validations for `name` with `cert` until removed.
    pub fn set_challenge(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.challenges
            .write()
            .expect("challenges lock")
            .insert(name.to_ascii_lowercase(), cert);
    }

    /// Stops answering TLS-ALPN-01 validations for `name`.
    pub fn remove_challenge(&self, name: &str) {
        self.challenges
            .write()
            .expect("challenges lock")
            .remove(&name.to_ascii_lowercase());
    }

    /// Waits up to `limit` for a certificate; whether there is one.
    async fn wait_ready(&self, limit: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        let ready = tokio::time::timeout(limit, rx.wait_for(|ready| *ready)).await;
        matches!(ready, Ok(Ok(_)))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if offers_acme_tls(&hello) {
            // A validator (RFC 8737 §3): only the challenge certificate, and none (a failed
            // handshake) when no order is waiting for this name.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.read().expect("challenges lock").get(&name).cloned();
        }
        self.current.load_full()
    }
}

/// Whether the client offers ALPN `acme-tls/1`, which only ACME validators do.
fn offers_acme_tls(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ALPN_ACME_TLS))
}

/// Completes TLS handshakes: reads the ClientHello, holds it while there is no certificate yet
/// (a validator's is never held: it is what brings the first one), then finishes with the
/// resolver's answer.
#[derive(Clone, Debug)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    resolver: Arc<CertResolver>,
}

impl Acceptor {
    /// Handshakes with [`server_config`] over `resolver`.
    pub fn new(resolver: Arc<CertResolver>) -> Self {
        Acceptor {
            config: server_config(resolver.clone()),
            resolver,
        }
    }

    /// One handshake; `timeout` bounds the client's part (its first bytes up to the ClientHello,
    /// then the rest), and the wait for a first certificate is bounded by
    /// [`FIRST_CERTIFICATE_WAIT`] on top.
    pub async fn accept(&self, tcp: TcpStream, timeout: Duration) -> io::Result<TlsStream<TcpStream>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Until the client sends something, a connection holds no TLS state: rustls allocates
        // its read buffer on its first read attempt, so the acceptor is made once a byte is
        // there, and the handshake's state is boxed instead of sizing every connection's task.
        // 10,000 connections that never send a byte took 109 MiB before this, 36 MiB after.
        tokio::time::timeout_at(deadline, tcp.readable())
            .await
            .map_err(timed_out)??;
        Box::pin(self.handshake(tcp, deadline, timeout)).await
    }

    /// The handshake proper: the ClientHello by `hello_deadline`, then the rest within
    /// `timeout`.
    async fn handshake(
        &self,
        tcp: TcpStream,
        hello_deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> io::Result<TlsStream<TcpStream>> {
        let lazy = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = tokio::time::timeout_at(hello_deadline, lazy)
            .await
            .map_err(timed_out)??;
        if self.resolver.current().is_none()
            && !offers_acme_tls(&start.client_hello())
            && !self.resolver.wait_ready(FIRST_CERTIFICATE_WAIT).await
        {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no certificate yet: still being issued",
            ));
        }
        tokio::time::timeout(timeout, start.into_stream(self.config.clone()))
            .await
            .map_err(timed_out)?
    }
}

fn timed_out(_: tokio::time::error::Elapsed) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out")
}

/// Whether the handshake was an ACME TLS-ALPN-01 validation. Such a connection has served its
/// purpose with the handshake and must never reach HTTP.
pub fn is_acme_validation(tls: &TlsStream<TcpStream>) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(ALPN_ACME_TLS)
}

/// Closes a connection cleanly (close_notify, then FIN).
pub async fn close(mut tls: TlsStream<TcpStream>) {
    let _ = tls.shutdown().await;
}

/// TLS 1.2 and 1.3 only, ALPN h2 then http/1.1, no 0-RTT (replays through a proxy are unsafe).
/// `acme-tls/1` comes first so a validator, which offers nothing else, gets it; browsers never
/// offer it.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![ALPN_ACME_TLS.to_vec(), ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    cfg.max_early_data_size = 0;
    Arc::new(cfg)
}

/// Reads a PEM chain and key and checks that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.into(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.into(),
        source,
    })?;
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
                return Ok(SelfSigned {
                    key,
                    ca_path,
                    created: false,
                });
            }
        }
    }
    let (ca_pem, chain_pem, key_pem) = generate_self_signed(&names)?;
    let write = |path: &Path, bytes: &[u8], mode: u32| {
        guard_config::fsutil::write_atomic(path, bytes, mode).map_err(|source| TlsError::Write {
            path: path.into(),
            source,
        })
    };
    write(&key_path, key_pem.as_bytes(), 0o600)?;
    write(&cert_path, chain_pem.as_bytes(), 0o644)?;
    write(&ca_path, ca_pem.as_bytes(), 0o644)?;
    let key = certified_key(chain_pem.as_bytes(), key_pem.as_bytes(), &cert_path, &key_path)?;
    Ok(SelfSigned {
        key,
        ca_path,
        created: true,
    })
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
    let Some(v) = key.cert.first().and_then(validity) else {
        return false;
    };
    let week = Duration::from_secs(7 * 86400);
    if v.not_after < SystemTime::now() + week {
        return false;
    }
    names.iter().all(|n| v.names.contains(n))
}

/// What guard needs to know of a certificate: its lifetime, serial and names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of the validity period.
    pub not_before: SystemTime,
    /// End of the validity period.
    pub not_after: SystemTime,
    /// Serial number, hex bytes separated by colons.
    pub serial: String,
    /// DNS names (lowercase) and IP addresses from the subjectAltName extension.
    pub names: Vec<String>,
}

impl Validity {
    /// When a third of the lifetime remains: time to renew. A proportion, not a fixed number of
    /// days, so 90-, 64- and 45-day certificates and short test ones all renew in time.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_after - lifetime / 3
    }
}

/// Parses a certificate's validity, serial and subjectAltNames; `None` if it is not X.509.
pub fn validity(cert: &CertificateDer<'_>) -> Option<Validity> {
    use x509_parser::extensions::GeneralName;
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let time = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        match u64::try_from(secs) {
            Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
            Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
        }
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Some(Validity {
        not_before: time(&x.validity().not_before),
        not_after: time(&x.validity().not_after),
        serial: x.raw_serial_as_string(),
        names,
    })
}

/// A certificate's notAfter.
pub fn leaf_not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    validity(cert).map(|v| v.not_after)
}

/// Makes a CA and a leaf signed by it; returns (CA PEM, leaf+CA chain PEM, leaf key PEM).
fn generate_self_signed(names: &[String]) -> Result<(String, String, String), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let now = time::OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "guard self-signed CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
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
    Ok((
        ca_pem.clone(),
        format!("{}{}", leaf_cert.pem(), ca_pem),
        leaf_key.serialize_pem(),
    ))
}

/// The certificate files a resolver is fed from.
#[derive(Debug)]
struct FileSource {
    resolver: Arc<CertResolver>,
    cert: PathBuf,
    key: PathBuf,
}

/// Re-reads `cert` and `key` whenever either changes on disk (or `force` fires) and swaps the
/// new pair in. A pair that fails to load keeps the old certificate serving and is logged.
/// Runs for as long as the resolver is in use.
pub fn watch_files(resolver: Arc<CertResolver>, cert: PathBuf, key: PathBuf, force: crate::watch::ReloadSignal) {
    let paths = vec![cert.clone(), key.clone()];
    let source = Arc::new(FileSource { resolver, cert, key });
    crate::watch::spawn(
        paths,
        force,
        Arc::downgrade(&source),
        |s: &FileSource| match load_pair(&s.cert, &s.key) {
            Ok(ck) => {
                s.resolver.set(ck);
                tracing::info!(cert = %s.cert.display(), "certificate reloaded from disk");
            }
            Err(e) => tracing::error!(
                "certificate not reloaded, the previous one keeps serving: {}",
                guard_config::error::chain(&e)
            ),
        },
    );
    // The watcher holds only a weak reference; tie the source's life to the resolver's.
    source.resolver.clone().keep_alive(source);
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
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("tls/key.pem")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validity_reads_lifetime_and_names_and_renews_at_two_thirds() {
        let dir = std::env::temp_dir().join(format!("guard-tls-validity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ss = self_signed(&dir).unwrap();
        let v = validity(&ss.key.cert[0]).unwrap();
        assert!(v.names.iter().any(|n| n == "localhost"), "{:?}", v.names);
        assert!(
            v.names.iter().any(|n| n == "127.0.0.1") && v.names.iter().any(|n| n == "::1"),
            "{:?}",
            v.names
        );
        let life = v.not_after.duration_since(v.not_before).unwrap();
        assert_eq!(life.as_secs(), 398 * 86400, "one day back, 397 ahead");
        assert_eq!(v.not_after.duration_since(v.renew_at()).unwrap(), life / 3);
        assert!(!v.serial.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
