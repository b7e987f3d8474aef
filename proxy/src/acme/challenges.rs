//! The answers guard gives a CA's validation: HTTP-01 tokens for the plain listener, TLS-ALPN-01
//! certificates for the resolver, published for one order and withdrawn when it ends.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use guard_config::acme::ChallengeChoice;
use instant_acme::ChallengeType;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;

use crate::tls::{self, CertResolver};

/// HTTP-01 answers the plain listener serves: token → key authorization. Entries stay until
/// their order ends, because a CA validates from several vantage points.
#[derive(Debug, Default)]
pub struct Http01Answers {
    map: RwLock<HashMap<String, String>>,
}

impl Http01Answers {
    /// The key authorization for `token`, if an order is waiting on it.
    pub fn get(&self, token: &str) -> Option<String> {
        self.map.read().expect("answers lock").get(token).cloned()
    }

    pub(crate) fn insert(&self, token: String, key_authorization: String) {
        self.map.write().expect("answers lock").insert(token, key_authorization);
    }

    fn remove(&self, token: &str) {
        self.map.write().expect("answers lock").remove(token);
    }
}

/// The two challenges guard answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    Http01,
    TlsAlpn01,
}

impl Challenge {
    pub(super) fn acme_type(self) -> ChallengeType {
        match self {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }

    /// The order of attempts. TLS-ALPN-01 comes first: it needs only the port guard serves on
    /// anyway, while HTTP-01 also needs port 80 open to the world.
    pub(super) fn sequence(choice: ChallengeChoice) -> &'static [Challenge] {
        match choice {
            ChallengeChoice::Auto => &[Challenge::TlsAlpn01, Challenge::Http01],
            ChallengeChoice::Http01 => &[Challenge::Http01],
            ChallengeChoice::TlsAlpn01 => &[Challenge::TlsAlpn01],
        }
    }
}

/// Challenge answers published for one order, withdrawn when it ends however it ends.
pub(super) struct Published<'a> {
    pub(super) answers: &'a Http01Answers,
    pub(super) resolver: &'a CertResolver,
    pub(super) tokens: Vec<String>,
    pub(super) names: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.answers.remove(t);
        }
        for n in &self.names {
            self.resolver.remove_challenge(n);
        }
    }
}

/// The TLS-ALPN-01 answer (RFC 8737 §3): a self-signed certificate for `domain` carrying the
/// SHA-256 of the key authorization in a critical acmeIdentifier extension.
pub(super) fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let private = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension. The key was made for this certificate.
    let signer = tls::provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_certificate_carries_the_acme_identifier() {
        let ck = challenge_certificate("guard.example.com", &[7u8; 32]).unwrap();
        let der = ck.cert[0].as_ref().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32], "an OCTET STRING holding the digest");
        let v = tls::validity(&ck.cert[0]).unwrap();
        assert_eq!(v.names, ["guard.example.com"]);
    }
}
