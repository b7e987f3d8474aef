//! Certificates from an ACME CA (Let's Encrypt by default): the account and certificate kept in
//! the state directory, the order flow answering HTTP-01 or TLS-ALPN-01, and the task that renews
//! once a third of the lifetime remains and swaps the result into the TLS resolver. Every
//! instant-acme call stays in this module, so its 0.9 API break stays local.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use guard_config::acme::{AcmeSettings, ChallengeChoice};
use guard_config::serve::TlsSource;
use http::HeaderValue;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, Problem, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::task::JoinHandle;

use crate::tls::{self, CertResolver, Validity};

/// First retry after a failed attempt; doubled after each further failure.
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// The shortest wait after the CA itself refused (a problem document): a failed validation
/// repeated every second would only spend the CA's rate limit (Let's Encrypt: 5 per hour).
const BACKOFF_AFTER_PROBLEM: Duration = Duration::from_secs(60);
/// How long the CA may take to validate, and to issue after finalization. Polling starts at
/// 250 ms and doubles.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);
/// One whole attempt (account, order, validation, issuance); instant-acme's HTTP client has no
/// timeout of its own, and a CA behind a black hole would otherwise stall renewal forever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest single sleep: the clock is re-read after it, so suspend or a clock jump cannot make
/// the task oversleep a renewal.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// A certificate this close to expiry whose renewal keeps failing earns a daily warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86400);
/// How often that warning repeats.
const WARNING_INTERVAL: Duration = Duration::from_secs(86400);
/// The problem type a CA answers when it no longer knows the stored account (RFC 8555 §7.3.1).
const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

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

// ---------------------------------------------------------------- the state directory

/// The files of one CA in `<state>/acme/<directory>/`, all mode 0600 and replaced atomically:
/// `account.json` (the account key), `cert.pem` (leaf and intermediates) and `key.pem`.
/// Keyed by directory so staging and production never mix.
#[derive(Debug)]
struct Store {
    dir: PathBuf,
}

/// A state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {action}", path.display())]
struct StoreError {
    path: PathBuf,
    action: &'static str,
    #[source]
    source: io::Error,
}

impl Store {
    fn new(state_dir: &Path, directory: &str) -> Store {
        Store {
            dir: state_dir.join("acme").join(directory_key(directory)),
        }
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn write(&self, path: PathBuf, bytes: &[u8]) -> Result<(), StoreError> {
        guard_config::fsutil::write_atomic(&path, bytes, 0o600).map_err(|source| StoreError {
            path,
            action: "write",
            source,
        })
    }

    /// The stored account, `Ok(None)` when there is none yet.
    fn load_account(&self) -> Result<Option<AccountCredentials>, StoreError> {
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

    fn save_account(&self, creds: &AccountCredentials) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(creds).map_err(|e| StoreError {
            path: self.account_path(),
            action: "serialise the account credentials",
            source: io::Error::other(e),
        })?;
        self.write(self.account_path(), &json)
    }

    /// The stored certificate if it covers `domains` and has not expired; `Ok(None)` when there
    /// is none, `Err` with the reason when there is one that cannot be used.
    fn load_certificate(&self, domains: &[String]) -> Result<Option<(Arc<CertifiedKey>, Validity)>, String> {
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
    fn save_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<(), StoreError> {
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

// ---------------------------------------------------------------- one attempt and its failure

/// The two challenges guard answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Challenge {
    Http01,
    TlsAlpn01,
}

impl Challenge {
    fn acme_type(self) -> ChallengeType {
        match self {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }

    /// The order of attempts. TLS-ALPN-01 comes first: it needs only the port guard serves on
    /// anyway, while HTTP-01 also needs port 80 open to the world.
    fn sequence(choice: ChallengeChoice) -> &'static [Challenge] {
        match choice {
            ChallengeChoice::Auto => &[Challenge::TlsAlpn01, Challenge::Http01],
            ChallengeChoice::Http01 => &[Challenge::Http01],
            ChallengeChoice::TlsAlpn01 => &[Challenge::TlsAlpn01],
        }
    }
}

/// Why an attempt failed, naming the step, the domain and challenge where known, and the CA's
/// problem document when it sent one.
#[derive(Debug)]
struct AttemptError {
    step: &'static str,
    domain: Option<String>,
    challenge: Option<Challenge>,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    /// The CA answered with a problem document.
    Problem(Box<Problem>),
    /// The CA could not be reached or answered something that is not ACME.
    Transport(String),
    /// Our side: a state file, a key, a certificate that does not parse.
    Local(String),
}

impl AttemptError {
    fn new(step: &'static str, challenge: Option<Challenge>, e: instant_acme::Error) -> Self {
        let cause = match e {
            instant_acme::Error::Api(p) => Cause::Problem(Box::new(p)),
            instant_acme::Error::Timeout(_) => {
                Cause::Transport(format!("the CA did not finish within {}s", POLL_TIMEOUT.as_secs()))
            }
            other => Cause::Transport(guard_config::error::chain(&other)),
        };
        AttemptError {
            step,
            domain: None,
            challenge,
            cause,
        }
    }

    fn local(step: &'static str, why: impl fmt::Display) -> Self {
        AttemptError {
            step,
            domain: None,
            challenge: None,
            cause: Cause::Local(why.to_string()),
        }
    }

    fn for_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    fn problem_type(&self) -> Option<&str> {
        match &self.cause {
            Cause::Problem(p) => p.r#type.as_deref(),
            _ => None,
        }
    }

    /// The CA answered, so retrying at once would only spend its rate limits.
    fn ca_refused(&self) -> bool {
        matches!(self.cause, Cause::Problem(_))
    }

    /// The CA tried the challenge and it failed: another challenge type may work.
    fn validation_failed(&self) -> bool {
        self.step == "validation"
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.step)?;
        if let Some(d) = &self.domain {
            write!(f, " of {d}")?;
        }
        if let Some(c) = self.challenge {
            write!(f, " by {}", c.name())?;
        }
        f.write_str(" failed: ")?;
        match &self.cause {
            Cause::Problem(p) => write_problem(f, p),
            Cause::Transport(s) | Cause::Local(s) => f.write_str(s),
        }
    }
}

/// `problem TYPE: DETAIL` and each subproblem: what an operator searches the CA's docs for.
fn write_problem(f: &mut fmt::Formatter<'_>, p: &Problem) -> fmt::Result {
    write!(
        f,
        "CA problem {}: {}",
        p.r#type.as_deref().unwrap_or("(no type)"),
        p.detail.as_deref().unwrap_or("(no detail)")
    )?;
    for sub in &p.subproblems {
        write!(
            f,
            "; {}: {}",
            sub.r#type.as_deref().unwrap_or("(no type)"),
            sub.detail.as_deref().unwrap_or("(no detail)")
        )?;
    }
    Ok(())
}

/// What a successful order yields.
struct Issued {
    chain_pem: String,
    key_pem: String,
}

/// Challenge answers published for one order, withdrawn when it ends however it ends.
struct Published<'a> {
    answers: &'a Http01Answers,
    resolver: &'a CertResolver,
    tokens: Vec<String>,
    names: Vec<String>,
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
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
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

// ---------------------------------------------------------------- the task

/// Owns the account and keeps a valid certificate in the resolver.
struct Manager {
    settings: AcmeSettings,
    store: Store,
    resolver: Arc<CertResolver>,
    answers: Arc<Http01Answers>,
    account: Option<Account>,
}

impl Manager {
    fn names(&self) -> String {
        self.settings.domains.join(", ")
    }

    /// Forever: sleep until renewal is due, then try until an attempt succeeds, waiting longer
    /// after each failure.
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut warned: Option<SystemTime> = None;
        loop {
            let current = self
                .resolver
                .current()
                .and_then(|ck| ck.cert.first().and_then(tls::validity));
            if let Some(v) = &current {
                let now = SystemTime::now();
                if now < v.renew_at() {
                    let wait = v.renew_at().duration_since(now).unwrap_or_default();
                    tokio::time::sleep(wait.min(MAX_SLEEP)).await;
                    continue;
                }
                tracing::info!(domains = %self.names(), "renewing: a third of the certificate's lifetime remains (expires {})", when(v.not_after));
            }
            let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt()).await {
                Ok(r) => r,
                Err(_) => Err(AttemptError::local(
                    "certificate order",
                    format!("no result within {}s", ATTEMPT_TIMEOUT.as_secs()),
                )),
            };
            match result {
                Ok(()) => {
                    backoff = Backoff::default();
                    warned = None;
                }
                Err(e) => {
                    let delay = backoff.next(e.ca_refused());
                    tracing::warn!(
                        domains = %self.names(),
                        challenge = e.challenge.map_or("-", Challenge::name),
                        problem = e.problem_type().unwrap_or("-"),
                        "certificate not obtained: {e}; next attempt in {}s",
                        delay.as_secs()
                    );
                    if let Some(v) = &current {
                        self.warn_if_expiring(v, &mut warned);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Once a day while renewal keeps failing and expiry is a week away or less.
    fn warn_if_expiring(&self, v: &Validity, warned: &mut Option<SystemTime>) {
        let now = SystemTime::now();
        let left = v.not_after.duration_since(now).unwrap_or_default();
        let due = warned.is_none_or(|w| now.duration_since(w).unwrap_or_default() >= WARNING_INTERVAL);
        if left < EXPIRY_WARNING && due {
            *warned = Some(now);
            if left.is_zero() {
                tracing::error!(domains = %self.names(), "the certificate expired {} and could not be renewed; clients refuse it", when(v.not_after));
            } else {
                tracing::warn!(
                    domains = %self.names(),
                    "the certificate expires {} (in {}h) and renewal keeps failing",
                    when(v.not_after),
                    left.as_secs() / 3600
                );
            }
        }
    }

    /// One attempt: each challenge type in turn until one yields a certificate, which is
    /// stored and swapped in.
    async fn attempt(&mut self) -> Result<(), AttemptError> {
        let sequence = Challenge::sequence(self.settings.challenge);
        for (i, &challenge) in sequence.iter().enumerate() {
            match self.order_with_account(challenge).await {
                Ok(issued) => return self.install(issued),
                Err(e) if e.validation_failed() && i + 1 < sequence.len() => {
                    tracing::warn!(
                        domains = %self.names(),
                        challenge = challenge.name(),
                        problem = e.problem_type().unwrap_or("-"),
                        "{e}; trying {} next",
                        sequence[i + 1].name()
                    );
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("every challenge sequence is non-empty")
    }

    /// An order with the stored account; when the CA no longer knows it (its database was reset,
    /// or the account was deactivated), a new account and one more try.
    async fn order_with_account(&mut self, challenge: Challenge) -> Result<Issued, AttemptError> {
        let account = self.account().await?;
        match self.order(&account, challenge).await {
            Err(e) if e.problem_type() == Some(ACCOUNT_DOES_NOT_EXIST) => {
                tracing::warn!(domains = %self.names(), "the CA no longer knows the stored account; creating a new one");
                self.account = None;
                let account = self.create_account().await?;
                self.order(&account, challenge).await
            }
            other => other,
        }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AttemptError> {
        let built = match &self.settings.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        built.map_err(|e| AttemptError::local("ACME client setup", guard_config::error::chain(&e)))
    }

    /// The account from the state directory, or a new one. Kept for later attempts.
    async fn account(&mut self) -> Result<Account, AttemptError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let creds = match self.store.load_account() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{}; creating a new ACME account", guard_config::error::chain(&e));
                None
            }
        };
        let Some(creds) = creds else {
            return self.create_account().await;
        };
        let account = self
            .builder()?
            .from_credentials(creds)
            .await
            .map_err(|e| self.unreachable(AttemptError::new("loading the ACME account", None, e)))?;
        tracing::info!(account = account.id(), "using the stored ACME account");
        self.account = Some(account.clone());
        Ok(account)
    }

    async fn create_account(&mut self) -> Result<Account, AttemptError> {
        let contact = format!("mailto:{}", self.settings.email);
        let new = NewAccount {
            contact: &[&contact],
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = self
            .builder()?
            .create(&new, self.settings.directory.clone(), None)
            .await
            .map_err(|e| self.unreachable(AttemptError::new("creating the ACME account", None, e)))?;
        self.store
            .save_account(&creds)
            .map_err(|e| AttemptError::local("storing the ACME account", guard_config::error::chain(&e)))?;
        tracing::info!(account = account.id(), directory = %self.settings.directory, "created an ACME account");
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Names the flag to check when the directory itself cannot be reached.
    fn unreachable(&self, mut e: AttemptError) -> AttemptError {
        if let Cause::Transport(s) = &e.cause {
            e.cause = Cause::Transport(format!(
                "cannot reach the ACME directory {} (--acme-directory): {s}",
                self.settings.directory
            ));
        }
        e
    }

    /// One order for every domain, validated by `challenge`.
    async fn order(&self, account: &Account, challenge: Challenge) -> Result<Issued, AttemptError> {
        let ids: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        tracing::info!(domains = %self.names(), challenge = challenge.name(), "ordering a certificate");
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| AttemptError::new("certificate order", Some(challenge), e))?;
        let mut published = Published {
            answers: &self.answers,
            resolver: &self.resolver,
            tokens: Vec::new(),
            names: Vec::new(),
        };
        self.publish(&mut order, challenge, &mut published).await?;

        let retry = RetryPolicy::new().timeout(POLL_TIMEOUT);
        let status = order.poll_ready(&retry).await;
        if !matches!(status, Ok(OrderStatus::Ready)) {
            // The order's own error is often generic; the authorization says which name failed
            // and the challenge's problem document says why.
            if let Some((domain, problem)) = failed_authorization(&mut order, challenge).await {
                let e = match problem {
                    Some(p) => AttemptError::new("validation", Some(challenge), instant_acme::Error::Api(p)),
                    None => AttemptError::local("validation", "the authorization is invalid"),
                };
                return Err(AttemptError {
                    challenge: Some(challenge),
                    ..e
                }
                .for_domain(domain));
            }
            return Err(match status {
                Err(e) => AttemptError::new("validation", Some(challenge), e),
                Ok(s) => AttemptError {
                    challenge: Some(challenge),
                    ..AttemptError::local("validation", format!("the order is {s:?}"))
                },
            });
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| AttemptError::new("finalization", Some(challenge), e))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| AttemptError::new("certificate download", Some(challenge), e))?;
        drop(published);
        Ok(Issued { chain_pem, key_pem })
    }

    /// Publishes an answer for every pending authorization and tells the CA to validate it.
    async fn publish<'a>(
        &'a self,
        order: &mut Order,
        challenge: Challenge,
        published: &mut Published<'a>,
    ) -> Result<(), AttemptError> {
        let mut authorizations = order.authorizations();
        while let Some(next) = authorizations.next().await {
            let mut authz = next.map_err(|e| AttemptError::new("fetching the authorization", Some(challenge), e))?;
            let domain = authz.identifier().to_string();
            match authz.status {
                // Validated recently for this account: nothing to prove.
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AttemptError {
                        challenge: Some(challenge),
                        ..AttemptError::local("validation", format!("the authorization is {other:?}"))
                    }
                    .for_domain(domain))
                }
            }
            let Some(mut handle) = authz.challenge(challenge.acme_type()) else {
                return Err(AttemptError {
                    challenge: Some(challenge),
                    ..AttemptError::local("validation", "the CA does not offer this challenge")
                }
                .for_domain(domain));
            };
            let ka = handle.key_authorization();
            match challenge {
                Challenge::Http01 => {
                    self.answers.insert(handle.token.clone(), ka.as_str().to_owned());
                    published.tokens.push(handle.token.clone());
                }
                Challenge::TlsAlpn01 => {
                    let cert = challenge_certificate(&domain, ka.digest().as_ref()).map_err(|e| {
                        AttemptError::local("making the tls-alpn-01 certificate", e).for_domain(&domain)
                    })?;
                    self.resolver.set_challenge(&domain, cert);
                    published.names.push(domain.clone());
                }
            }
            handle
                .set_ready()
                .await
                .map_err(|e| AttemptError::new("validation", Some(challenge), e).for_domain(&domain))?;
        }
        Ok(())
    }

    /// Swaps the new certificate in (new handshakes get it at once, open connections keep
    /// theirs) and stores it.
    fn install(&self, issued: Issued) -> Result<(), AttemptError> {
        let (cert_path, key_path) = (self.store.cert_path(), self.store.key_path());
        let ck = tls::certified_key(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            &cert_path,
            &key_path,
        )
        .map_err(|e| AttemptError::local("checking the issued certificate", guard_config::error::chain(&e)))?;
        let v = ck
            .cert
            .first()
            .and_then(tls::validity)
            .ok_or_else(|| AttemptError::local("checking the issued certificate", "the leaf cannot be parsed"))?;
        self.resolver.set(ck);
        tracing::info!(
            domains = %self.names(),
            "certificate installed: serial {}, valid until {}, renewal due {}",
            v.serial,
            when(v.not_after),
            when(v.renew_at())
        );
        // Serving comes first; a state directory that cannot be written costs a new order on the
        // next start, which the log says.
        if let Err(e) = self.store.save_certificate(&issued.chain_pem, &issued.key_pem) {
            tracing::error!(domains = %self.names(), "{}; the next start orders a new certificate", guard_config::error::chain(&e));
        }
        Ok(())
    }
}

/// The first invalid authorization after a failed validation, with its challenge's problem.
async fn failed_authorization(order: &mut Order, challenge: Challenge) -> Option<(String, Option<Problem>)> {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        if state.status == AuthorizationStatus::Invalid {
            let problem = state
                .challenges
                .iter()
                .find(|c| c.r#type == challenge.acme_type())
                .and_then(|c| c.error.clone());
            return Some((state.identifier().to_string(), problem));
        }
    }
    None
}

/// Capped exponential backoff between failed attempts.
#[derive(Debug, Default)]
struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    /// The next wait; at least a minute once the CA itself refused.
    fn next(&mut self, ca_refused: bool) -> Duration {
        let mut d = self.last.map_or(BACKOFF_INITIAL, |l| (l * 2).min(BACKOFF_MAX));
        if ca_refused {
            d = d.max(BACKOFF_AFTER_PROBLEM);
        }
        self.last = Some(d);
        d
    }
}

/// A time for logs: RFC 3339 in UTC.
/// A certificate time for logs, as every other time guard prints.
fn when(t: SystemTime) -> String {
    guard_config::clock::format_utc(t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_waits_a_minute_after_a_problem() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..5).map(|_| b.next(false).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(b.next(true).as_secs(), 60);
        assert_eq!(b.next(false).as_secs(), 120);
        for _ in 0..20 {
            b.next(false);
        }
        assert_eq!(b.next(false), BACKOFF_MAX);
    }

    #[test]
    fn directory_urls_become_distinct_file_names() {
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

    #[test]
    fn problems_are_reported_with_type_and_detail() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:connection","detail":"refused","status":400,
                "subproblems":[{"type":"urn:ietf:params:acme:error:dns","detail":"no such host"}]}"#,
        )
        .unwrap();
        let e = AttemptError::new("validation", Some(Challenge::Http01), instant_acme::Error::Api(p))
            .for_domain("a.example.com");
        assert_eq!(
            e.to_string(),
            "validation of a.example.com by http-01 failed: CA problem urn:ietf:params:acme:error:connection: refused; \
             urn:ietf:params:acme:error:dns: no such host"
        );
        assert!(e.ca_refused() && e.validation_failed());
    }

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
