//! Bearer JWTs from the identity providers of `auth.jwt`: their keys (JWKS, found through
//! OIDC discovery, fetched at start, re-fetched on an unknown `kid` at most once a minute) and
//! the check of a token against them. The algorithm comes from the key, never from the token
//! alone: `alg: none`, an HMAC keyed with a public key, or a key the token carries (`jwk`,
//! `jku`) never verify. Tokens that verified are remembered by hash until their `exp`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use bytes::Bytes;
use guard_config::clock::Clock;
use guard_config::jwt::JwtIssuer;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// An unknown `kid` re-fetches the issuer's keys at most this often, so forged tokens cannot
/// make guard hammer the provider.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// Keys are fetched again this often, so a withdrawn key stops verifying.
const REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
/// The first retry of an issuer that could not be reached; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long a discovery or key-set request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest discovery document or key set read.
const MAX_DOCUMENT: usize = 1 << 20;
/// Most verified tokens remembered; the oldest half is dropped beyond it.
const CACHE_CAPACITY: usize = 10_000;

/// Why a bearer token that looks like a JWT does not let its holder in. Logged at debug level
/// and counted; the client only ever sees 401.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not three base64url parts with JSON in the first two.
    #[error("not a well-formed JWT")]
    Malformed,
    /// Its `iss` is no configured issuer.
    #[error("issuer {0:?} is not configured")]
    UnknownIssuer(String),
    /// The issuer's keys have not been fetched yet.
    #[error("the keys of {0} are not loaded yet")]
    NoKeys(String),
    /// No key of the issuer has its `kid`, even after a re-fetch.
    #[error("no key {kid:?} at {issuer}")]
    UnknownKey {
        /// The issuer.
        issuer: String,
        /// The token's `kid`.
        kid: String,
    },
    /// The token's `alg` is not its key's.
    #[error("alg {token} does not match the key's {key}")]
    WrongAlgorithm {
        /// The token's.
        token: String,
        /// The key's.
        key: String,
    },
    /// The signature, `aud` or `iss` did not check.
    #[error("{0}")]
    Invalid(String),
    /// Past `exp` (with the leeway), or no `exp`.
    #[error("expired or without exp")]
    Expired,
    /// Before `nbf` (with the leeway).
    #[error("not valid yet (nbf)")]
    NotYetValid,
    /// Its `sub` is not one of the issuer's `subjects`.
    #[error("subject {0:?} is not accepted")]
    Subject(String),
    /// It names no caller: the user claim is missing or not a string.
    #[error("no string claim {0:?} to name the caller")]
    NoUser(String),
}

/// A token that verified: who it names and until when. Cloned from the cache on every request
/// a token makes, so it holds no more than that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The user claim's value.
    pub name: String,
    /// `exp`, Unix seconds.
    pub expires: u64,
}

/// A key of an issuer, ready to verify with.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Why the keys of an issuer could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The provider did not answer (connection, timeout, 5xx): worth retrying.
    #[error("{url}: {reason}")]
    Unreachable {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// It answered, but not with what guard needs: a configuration error.
    #[error("{url}: {reason}")]
    Invalid {
        /// What was fetched.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl FetchError {
    /// Whether retrying later may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, FetchError::Unreachable { .. })
    }
}

pub(crate) type HttpsClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>;

/// One configured issuer and its current keys.
struct Issuer {
    settings: JwtIssuer,
    keys: ArcSwap<Vec<Key>>,
    /// When an unknown `kid` last made guard fetch the keys (or try), for the re-fetch limit;
    /// the fetches at start and every hour do not count.
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

/// Every JWT issuer of a site, and the tokens that verified.
pub struct Jwts {
    issuers: Vec<Issuer>,
    client: Option<HttpsClient>,
    clock: Clock,
    cache: Mutex<HashMap<[u8; 32], Verified>>,
    /// Counts failed fetches (`guard_idp_fetch_errors_total`).
    fetch_errors: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Jwts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.issuers.iter().map(|i| i.settings.issuer.as_str()).collect();
        f.debug_struct("Jwts").field("issuers", &names).finish()
    }
}

/// Whether a bearer token is shaped like a JWT (three dot-separated parts), not a guard token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

impl Jwts {
    /// The issuers of `settings`, with no keys yet: [`Jwts::fetch_all`] loads them. A failed
    /// fetch counts in `fetch_errors`.
    pub fn new(
        settings: &[JwtIssuer],
        clock: Clock,
        fetch_errors: prometheus_client::metrics::counter::Counter,
    ) -> Jwts {
        let client = (!settings.is_empty()).then(https_client).flatten();
        Jwts {
            issuers: settings
                .iter()
                .map(|s| Issuer {
                    settings: s.clone(),
                    keys: ArcSwap::from_pointee(Vec::new()),
                    fetched: tokio::sync::Mutex::new(None),
                })
                .collect(),
            client,
            clock,
            cache: Mutex::new(HashMap::new()),
            fetch_errors,
        }
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Fetches every issuer's keys once; the errors, by issuer.
    pub async fn fetch_all(&self) -> Vec<(String, FetchError)> {
        let mut failed = Vec::new();
        for issuer in &self.issuers {
            if let Err(e) = self.fetch(issuer).await {
                failed.push((issuer.settings.issuer.clone(), e));
            }
        }
        failed
    }

    /// Keeps the keys fresh while the site lives: an issuer without keys (unreachable at start,
    /// or a site just made by a reload) is fetched at once and then retried with a growing
    /// delay; once every issuer has keys they are re-fetched every hour.
    pub fn spawn_refresher(self: &Arc<Self>) {
        if self.is_empty() {
            return;
        }
        // Keys the start has just fetched are not fetched again until the hour is up.
        let mut fetch_now = !self.has_all_keys();
        let mut retry = FIRST_RETRY;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(jwts) = weak.upgrade() else { return };
                if fetch_now {
                    for (issuer, e) in jwts.fetch_all().await {
                        tracing::warn!(%issuer, "cannot fetch the JWT keys: {e}");
                    }
                }
                let wait = if jwts.has_all_keys() {
                    retry = FIRST_RETRY;
                    REFRESH_INTERVAL
                } else {
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                };
                drop(jwts);
                tokio::time::sleep(wait).await;
                fetch_now = true;
            }
        });
    }

    /// Whether every issuer's keys are loaded.
    fn has_all_keys(&self) -> bool {
        self.issuers.iter().all(|i| !i.keys.load().is_empty())
    }

    async fn fetch(&self, issuer: &Issuer) -> Result<(), FetchError> {
        let client = self.client.as_ref().ok_or_else(|| FetchError::Invalid {
            url: issuer.settings.issuer.clone(),
            reason: "no TLS roots to reach it with".to_owned(),
        })?;
        let keys = fetch_keys(client, &issuer.settings).await.inspect_err(|_| {
            self.fetch_errors.inc();
        })?;
        issuer.keys.store(Arc::new(keys));
        // A key may have been withdrawn: what it verified must be checked again.
        self.cache.lock().expect("jwt cache lock").clear();
        Ok(())
    }

    /// Checks a bearer token that [`looks_like_jwt`].
    pub async fn verify(&self, token: &str) -> Result<Verified, Refused> {
        let now = self.clock.unix();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self.cache.lock().expect("jwt cache lock").get(&digest) {
            if now < v.expires.saturating_add(LEEWAY_SECS) {
                return Ok(v.clone());
            }
        }
        let verified = self.verify_uncached(token, now).await?;
        let mut cache = self.cache.lock().expect("jwt cache lock");
        if cache.len() >= CACHE_CAPACITY {
            // Rare (ten thousand live tokens): start afresh rather than track ages.
            cache.clear();
        }
        cache.insert(digest, verified.clone());
        Ok(verified)
    }

    async fn verify_uncached(&self, token: &str, now: u64) -> Result<Verified, Refused> {
        let (issuer, claims) = self.checked_claims(token, now).await?;
        let sub = claims.get("sub").and_then(Value::as_str);
        if !issuer.accepts_subject(sub) {
            return Err(Refused::Subject(sub.unwrap_or_default().to_owned()));
        }
        let claim = &issuer.user_claim;
        let name = claims
            .get(claim)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Refused::NoUser(claim.clone()))?;
        Ok(Verified {
            name: name.to_owned(),
            expires: claims.get("exp").and_then(Value::as_u64).unwrap_or_default(),
        })
    }

    /// A token's claims once its signature, `iss`, `aud`, `exp` and `nbf` checked, never
    /// cached: for an ID token, whose other claims (`nonce`, email, groups) the caller reads.
    pub async fn verify_claims(&self, token: &str) -> Result<Map<String, Value>, Refused> {
        let now = self.clock.unix();
        self.checked_claims(token, now).await.map(|(_, claims)| claims)
    }

    async fn checked_claims(&self, token: &str, now: u64) -> Result<(&JwtIssuer, Map<String, Value>), Refused> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refused::Malformed)?;
        let iss = unverified_issuer(token).ok_or(Refused::Malformed)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.settings.issuer == iss)
            .ok_or_else(|| Refused::UnknownIssuer(iss.clone()))?;
        let mut keys = issuer.keys.load_full();
        if find_key(&keys, header.kid.as_deref()).is_none() {
            // Read the keys again even when this request did not fetch: a concurrent one may
            // just have, for the same new kid.
            self.refetch(issuer).await;
            keys = issuer.keys.load_full();
        }
        if keys.is_empty() {
            return Err(Refused::NoKeys(iss));
        }
        let key = find_key(&keys, header.kid.as_deref()).ok_or_else(|| Refused::UnknownKey {
            issuer: iss.clone(),
            kid: header.kid.clone().unwrap_or_default(),
        })?;
        if header.alg != key.alg {
            return Err(Refused::WrongAlgorithm {
                token: format!("{:?}", header.alg),
                key: format!("{:?}", key.alg),
            });
        }
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&issuer.settings.issuer]);
        validation.set_audience(&issuer.settings.audiences);
        // Times are checked below on guard's clock; `aud` and `iss` must be present.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = ["aud", "iss"].iter().map(|s| (*s).to_owned()).collect();
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| Refused::Invalid(e.to_string()))?
            .claims;
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or(Refused::Expired)?;
        if now >= exp.saturating_add(LEEWAY_SECS) {
            return Err(Refused::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_u64().ok_or(Refused::NotYetValid)?;
            if nbf > now.saturating_add(LEEWAY_SECS) {
                return Err(Refused::NotYetValid);
            }
        }
        Ok((&issuer.settings, claims))
    }

    /// Re-fetches `issuer`'s keys unless that was done within [`REFETCH_INTERVAL`].
    async fn refetch(&self, issuer: &Issuer) {
        let mut last = issuer.fetched.lock().await;
        let now = self.clock.instant();
        if last.is_some_and(|t| now.saturating_duration_since(t) < REFETCH_INTERVAL) {
            return;
        }
        *last = Some(now);
        match self.fetch(issuer).await {
            Ok(()) => {
                tracing::info!(issuer = %issuer.settings.issuer, "re-fetched the JWT keys (a token named an unknown key)")
            }
            Err(e) => tracing::warn!(issuer = %issuer.settings.issuer, "cannot re-fetch the JWT keys: {e}"),
        }
    }
}

/// The key a token names: by `kid`, or the only key when the token names none.
fn find_key<'k>(keys: &'k [Key], kid: Option<&str>) -> Option<&'k Key> {
    match kid {
        Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
}

/// The `iss` of a token before it is verified: only to pick the keys to verify it with.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = B64.decode(payload).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// An HTTPS client (plain HTTP too, for a provider on loopback: the URL checks allow nothing
/// else) for requests with bodies of type `B`.
pub(crate) fn https_client<B>(
) -> Option<Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let connector = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            tracing::error!("no TLS roots for fetching JWT keys: {e}");
            return None;
        }
    };
    Some(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

/// GETs a JSON document; 5xx and network failures are [`FetchError::Unreachable`].
pub(crate) async fn get_json(client: &HttpsClient, url: &str) -> Result<Value, FetchError> {
    let unreachable = |reason: String| FetchError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let invalid = |reason: String| FetchError::Invalid {
        url: url.to_owned(),
        reason,
    };
    let uri: hyper::Uri = url.parse().map_err(|e| invalid(format!("not a URL: {e}")))?;
    let req = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| invalid(e.to_string()))?;
    let resp = tokio::time::timeout(FETCH_TIMEOUT, client.request(req))
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(guard_config::error::chain(&e)))?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(unreachable(format!("answered {status}")));
    }
    if !status.is_success() {
        return Err(invalid(format!("answered {status}")));
    }
    let body = tokio::time::timeout(FETCH_TIMEOUT, Limited::new(resp.into_body(), MAX_DOCUMENT).collect())
        .await
        .map_err(|_| unreachable("the body did not arrive in time".to_owned()))?
        .map_err(|e| invalid(format!("cannot read the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| invalid(format!("not JSON: {e}")))
}

/// Discovery (unless the key set URL is given), then the key set.
async fn fetch_keys(client: &HttpsClient, issuer: &JwtIssuer) -> Result<Vec<Key>, FetchError> {
    let jwks_url = match &issuer.jwks_url {
        Some(url) => url.clone(),
        None => {
            let doc = discover(client, &issuer.issuer).await?;
            doc.endpoint("jwks_uri")?
        }
    };
    let set = get_json(client, &jwks_url).await?;
    let keys = parse_key_set(&set);
    if keys.is_empty() {
        return Err(FetchError::Invalid {
            url: jwks_url,
            reason: "no signature key guard can use (RSA, EC P-256/P-384, Ed25519)".to_owned(),
        });
    }
    Ok(keys)
}

/// An issuer's discovery document, its `issuer` checked.
pub(crate) struct Discovery {
    url: String,
    doc: Value,
}

impl Discovery {
    /// An endpoint the document must have, checked like the issuer's URL.
    pub(crate) fn endpoint(&self, name: &str) -> Result<String, FetchError> {
        self.optional_endpoint(name)?.ok_or_else(|| FetchError::Invalid {
            url: self.url.clone(),
            reason: format!("has no {name}"),
        })
    }

    /// An endpoint the document may have.
    pub(crate) fn optional_endpoint(&self, name: &str) -> Result<Option<String>, FetchError> {
        let Some(url) = self.doc.get(name).and_then(Value::as_str) else {
            return Ok(None);
        };
        guard_config::jwt::parse_url(url).map_err(|e| FetchError::Invalid {
            url: self.url.clone(),
            reason: format!("{name}: {e}"),
        })?;
        Ok(Some(url.to_owned()))
    }
}

/// Fetches `ISSUER/.well-known/openid-configuration`.
pub(crate) async fn discover(client: &HttpsClient, issuer: &str) -> Result<Discovery, FetchError> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let doc = get_json(client, &url).await?;
    // OIDC Discovery §4.3: the document must name the very issuer it was asked for.
    let reason = match doc.get("issuer").and_then(Value::as_str) {
        Some(i) if i == issuer => return Ok(Discovery { url, doc }),
        Some(i) => format!("names issuer {i:?}, not {issuer:?}"),
        None => "has no issuer".to_owned(),
    };
    Err(FetchError::Invalid { url, reason })
}

/// The usable signature keys of a JWKS document; keys of other kinds, uses or curves are
/// skipped, one by one, so one odd key does not hide the rest.
fn parse_key_set(set: &Value) -> Vec<Key> {
    let Some(list) = set.get("keys").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v.clone()).ok())
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .filter_map(|jwk| {
            let alg = key_algorithm(&jwk)?;
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })
        })
        .collect()
}

/// The one algorithm a key verifies: its `alg` when it states one, else what its type implies.
/// Symmetric keys (`oct`) are never used: a provider's published keys are public.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        AlgorithmParameters::OctetKeyPair(_) | AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(stated) => stated.to_string().parse().ok()?,
        None => implied,
    };
    // A stated `alg` must fit the key's type (an RSA key stating ES256 is no key).
    (family(alg) == family(implied)).then_some(alg)
}

fn family(alg: Algorithm) -> u8 {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => 0,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => 1,
        ES256 | ES384 => 2,
        EdDSA => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISS: &str = "https://idp.example.com";
    const AUD: &str = "https://mlflow.example.com";

    /// An ES256 key pair: the signing key and its public JWK.
    fn key_pair(kid: &str) -> (EncodingKey, Value) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let point = pair.public_key_raw();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
        });
        (EncodingKey::from_ec_der(&pair.serialize_der()), jwk)
    }

    fn issuer(subjects: &[&str]) -> JwtIssuer {
        JwtIssuer {
            issuer: ISS.to_owned(),
            audiences: vec![AUD.to_owned()],
            jwks_url: None,
            user_claim: "sub".to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Issuers with these keys loaded and a fetch just done, so nothing goes to the network.
    fn jwts(settings: JwtIssuer, keys: &[Value], clock: &Clock) -> Jwts {
        let j = Jwts::new(std::slice::from_ref(&settings), clock.clone(), Default::default());
        let issuer = &j.issuers[0];
        issuer.keys.store(Arc::new(parse_key_set(&json!({ "keys": keys }))));
        *issuer.fetched.try_lock().unwrap() = Some(clock.instant());
        j
    }

    fn sign(key: &EncodingKey, kid: &str, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn claims(now: u64, extra: Value) -> Value {
        let mut c = json!({ "iss": ISS, "aud": AUD, "sub": "ci-bot", "iat": now, "exp": now + 300 });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_token_verifies_only_with_its_issuer_audience_key_and_times() {
        let clock = Clock::manual();
        let now = clock.unix();
        let (key, jwk) = key_pair("k1");
        let j = jwts(issuer(&[]), std::slice::from_ref(&jwk), &clock);
        let verify = |t: &str| block_on(j.verify(t));
        let good = sign(&key, "k1", claims(now, json!({})));
        assert_eq!(
            verify(&good),
            Ok(Verified {
                name: "ci-bot".into(),
                expires: now + 300
            })
        );
        let refused = |extra: Value| verify(&sign(&key, "k1", claims(now, extra))).unwrap_err();
        assert!(matches!(
            refused(json!({"aud": "https://other.example"})),
            Refused::Invalid(_)
        ));
        assert!(matches!(refused(json!({"aud": null})), Refused::Invalid(_)));
        assert_eq!(refused(json!({"exp": null})), Refused::Expired);
        assert_eq!(refused(json!({"exp": now - LEEWAY_SECS})), Refused::Expired);
        // Within the leeway. The manual clock runs on from the wall clock, so the margin is a
        // few seconds, not one: a second boundary crossed mid-test made `+ 1` fail now and then.
        assert!(verify(&sign(&key, "k1", claims(now, json!({"exp": now - LEEWAY_SECS + 5})))).is_ok());
        assert_eq!(refused(json!({"nbf": now + LEEWAY_SECS + 5})), Refused::NotYetValid);
        assert_eq!(
            refused(json!({"iss": "https://evil.example"})),
            Refused::UnknownIssuer("https://evil.example".into())
        );
        assert_eq!(refused(json!({"sub": null})), Refused::NoUser("sub".into()));
        // Another key, even one naming the right kid, does not verify.
        let (stranger, _) = key_pair("k1");
        assert!(matches!(
            verify(&sign(&stranger, "k1", claims(now, json!({})))),
            Err(Refused::Invalid(_))
        ));
        assert!(matches!(
            verify(&sign(&stranger, "k9", claims(now, json!({})))),
            Err(Refused::UnknownKey { .. })
        ));
        // The cached answer ends with the token.
        clock.advance(Duration::from_secs(300 + LEEWAY_SECS));
        assert_eq!(verify(&good), Err(Refused::Expired));
    }

    #[test]
    fn an_ed25519_key_verifies_eddsa_tokens() {
        let clock = Clock::manual();
        let now = clock.unix();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": B64.encode(pair.public_key_raw()) });
        let key = EncodingKey::from_ed_der(&pair.serialize_der());
        let j = jwts(issuer(&[]), &[jwk], &clock);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed".to_owned());
        let token = jsonwebtoken::encode(&header, &claims(now, json!({})), &key).unwrap();
        assert_eq!(block_on(j.verify(&token)).map(|v| v.name), Ok("ci-bot".to_owned()));
        // The same key named with another algorithm is refused before any signature check.
        let es = sign(&key_pair("x").0, "ed", claims(now, json!({})));
        assert!(matches!(block_on(j.verify(&es)), Err(Refused::WrongAlgorithm { .. })));
    }

    #[test]
    fn the_algorithm_comes_from_the_key() {
        let clock = Clock::manual();
        let now = clock.unix();
        let (_, jwk) = key_pair("k1");
        let j = jwts(issuer(&[]), std::slice::from_ref(&jwk), &clock);
        let body = B64.encode(claims(now, json!({})).to_string());
        // `alg: none`, with or without a signature.
        let none = format!("{}.{body}.", B64.encode(r#"{"alg":"none","kid":"k1"}"#));
        assert_eq!(block_on(j.verify(&none)), Err(Refused::Malformed));
        // HS256 keyed with the public key's JSON: the classic key-confusion forgery.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let forged = jsonwebtoken::encode(
            &header,
            &claims(now, json!({})),
            &EncodingKey::from_secret(jwk.to_string().as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            block_on(j.verify(&forged)),
            Err(Refused::WrongAlgorithm { .. })
        ));
        // A key the token carries itself is never used.
        let (attacker, attacker_jwk) = key_pair("k1");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        header.jwk = serde_json::from_value(attacker_jwk).ok();
        let carried = jsonwebtoken::encode(&header, &claims(now, json!({})), &attacker).unwrap();
        assert!(matches!(block_on(j.verify(&carried)), Err(Refused::Invalid(_))));
    }

    #[test]
    fn subjects_limit_who_an_issuer_lets_in() {
        let clock = Clock::manual();
        let now = clock.unix();
        let (key, jwk) = key_pair("k1");
        let j = jwts(issuer(&["repo:org/app:*"]), &[jwk], &clock);
        let t = |sub: &str| block_on(j.verify(&sign(&key, "k1", claims(now, json!({ "sub": sub }))))).map(|v| v.name);
        assert_eq!(
            t("repo:org/app:ref:refs/heads/main").as_deref(),
            Ok("repo:org/app:ref:refs/heads/main")
        );
        assert_eq!(
            t("repo:org/other:ref:x"),
            Err(Refused::Subject("repo:org/other:ref:x".into()))
        );
    }

    #[test]
    fn key_sets_keep_the_signature_keys_they_can_use() {
        let (_, ec) = key_pair("ec");
        let keys = parse_key_set(&json!({ "keys": [
            ec,
            { "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" },
            { "kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA" },
            { "kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB" },
            { "kty": "RSA", "kid": "rsa", "alg": "ES256", "n": "AQAB", "e": "AQAB" },
            { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": B64.encode([7u8; 32]) },
            { "kty": "whatever" },
        ]}));
        let kept: Vec<(Option<&str>, Algorithm)> = keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        assert_eq!(
            kept,
            vec![(Some("ec"), Algorithm::ES256), (Some("ed"), Algorithm::EdDSA)]
        );
        assert!(looks_like_jwt("a.b.c") && !looks_like_jwt("grd_abc") && !looks_like_jwt("a.b"));
    }
}
