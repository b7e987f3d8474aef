//! `guard healthcheck`: one HTTPS GET of the health path on a local guard, for container
//! healthchecks in an image without curl. It checks liveness, not identity, so it accepts any
//! certificate (the self-signed default, or one issued for a public name).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why the health check failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// No TCP or TLS connection.
    #[error("cannot reach guard at {addr}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("guard at {0} did not answer within 5s")]
    Timeout(SocketAddr),
    /// An answer other than 200.
    #[error("guard at {addr} answered {status:?}")]
    Status {
        /// The address tried.
        addr: SocketAddr,
        /// The status line.
        status: String,
    },
}

/// GETs the health path on `addr`; Ok when guard answers 200.
pub async fn check(addr: SocketAddr) -> Result<(), HealthError> {
    tokio::time::timeout(Duration::from_secs(5), get(addr))
        .await
        .map_err(|_| HealthError::Timeout(addr))?
}

async fn get(addr: SocketAddr) -> Result<(), HealthError> {
    let conn = |source| HealthError::Connect { addr, source };
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(conn)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("localhost").expect("valid name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(conn)?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        guard_config::serve::HEALTH_PATH
    );
    tls.write_all(req.as_bytes()).await.map_err(conn)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = tls.read(&mut buf).await.map_err(conn)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
    if status.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(HealthError::Status { addr, status })
    }
}

/// Accepts every certificate: the check is about liveness, on loopback.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
