//! Authentication of every forwarded request: HTTP Basic against the htpasswd users file, Bearer
//! against the tokens file. bcrypt runs off the async threads on a small bounded pool, successful
//! checks are cached (HMAC-keyed, with a TTL), concurrent identical checks share one
//! computation, and an address that keeps failing is locked out for a while. The lockout table
//! and the bcrypt pool are one [`Defence`] for the whole process, shared by every site and kept
//! across reloads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::jwt::{looks_like_jwt, Jwts};
use crate::oidc::Provider;
use arc_swap::ArcSwap;
use guard_config::clock::Clock;
use guard_config::credential::{parse_credential, Credential};
use guard_config::file_error::FileError;
use guard_config::htpasswd::{Htpasswd, DEFAULT_BCRYPT_COST};
use guard_config::roles::{Role, Roles};
use guard_config::secret::Secret;
use guard_config::serve::AuthSettings;
use guard_config::session::{credential_matches, Fingerprint, Lifetimes, Refused, Session, SignIn};
use guard_config::tokens::{Lookup, TokenSet, TokensError};
use guard_config::users::UsersError;
use hmac::{Hmac, KeyInit, Mac};
use http::header::{self, HeaderMap};
use sha2::Sha256;
use tokio::sync::{OnceCell, Semaphore};

use crate::headers::ClientNet;
use crate::metrics::Metrics;

/// Longest `Authorization` header considered; longer ones are malformed, not parsed.
const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;
/// Password checks waiting for the bcrypt pool before new ones are turned away with 429.
const MAX_WAITING_CHECKS: usize = 64;

/// Why a request was not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// A header that is not well-formed Basic or Bearer.
    Malformed,
    /// Unknown user or wrong password (the two are not told apart).
    BadPassword,
    /// A token that is not in the tokens file.
    UnknownToken,
    /// A token past its expiry.
    ExpiredToken,
    /// A revoked token.
    RevokedToken,
    /// A JWT that did not verify against a configured issuer (why is logged at debug level).
    BadJwt,
    /// The client address failed too often and must wait this many seconds.
    LockedOut(u64),
    /// Too many password checks are queued; try again in a second.
    Busy,
}

impl AuthFailure {
    /// A short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::BadPassword => "bad_password",
            AuthFailure::UnknownToken => "unknown_token",
            AuthFailure::ExpiredToken => "expired_token",
            AuthFailure::RevokedToken => "revoked_token",
            AuthFailure::BadJwt => "bad_jwt",
            AuthFailure::LockedOut(_) => "locked_out",
            AuthFailure::Busy => "busy",
        }
    }
}

/// Who a request was authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// User or token name.
    pub name: String,
    /// How.
    pub via: Via,
    /// What they may do.
    pub role: Role,
    /// Their email, as a single-sign-on provider gave it.
    pub email: Option<String>,
    /// Their groups, as a single-sign-on provider gave them.
    pub groups: Vec<String>,
}

impl Principal {
    fn new(name: String, via: Via, role: Role) -> Principal {
        Principal {
            name,
            via,
            role,
            email: None,
            groups: Vec::new(),
        }
    }
}

/// How a principal proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A user's password: HTTP Basic.
    Password,
    /// A bearer token.
    Token,
    /// A session cookie from guard's sign-in page.
    Session,
    /// A JWT from a configured identity provider.
    Jwt,
    /// A session cookie from single sign-on (`auth.oidc`).
    Oidc,
}

/// The user name and password the MLflow UI's sign-out sends (`mlflow-logged-out-<random>` as
/// both) so the browser forgets its Basic credentials. It can never sign anyone in, so it is
/// refused without a bcrypt check or a strike: signing out ten times is not a password attack.
fn is_ui_sign_out(user: &str, password: &[u8]) -> bool {
    user.starts_with("mlflow-logged-out-") && user.as_bytes() == password
}

/// A self-service password change that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PasswordChangeError {
    /// The current password was wrong, or the client is locked out.
    #[error("the current password did not check: {}", .0.reason())]
    Auth(AuthFailure),
    /// The users file could not be written.
    #[error(transparent)]
    Write(UsersError),
}

/// The users and tokens could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Neither file gives anyone a way in.
    #[error(
        "no users or tokens configured (users file {users}, tokens file {tokens}): add a user with \
         `guard adduser NAME` or a token with `guard token create NAME`, or pass --dangerous-no-auth"
    )]
    NothingConfigured {
        /// The users file looked at.
        users: String,
        /// The tokens file looked at.
        tokens: String,
    },
    /// The users file exists but cannot be read.
    #[error(transparent)]
    Users(UsersError),
    /// The tokens file exists but cannot be read or parsed.
    #[error(transparent)]
    Tokens(TokensError),
    /// The groups file exists but cannot be read.
    #[error(transparent)]
    Groups(FileError),
}

/// The groups file's roles, with its warnings logged; a missing file gives nobody a role.
fn load_roles(path: &std::path::Path) -> Result<Roles, FileError> {
    match guard_config::roles::load(path) {
        Ok((roles, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(roles)
        }
        Err(FileError::NotFound { .. }) => Ok(Roles::default()),
        Err(e) => Err(e),
    }
}

/// Parses `Authorization`. `Ok(None)` when absent; more than one header, or one longer than
/// [`MAX_AUTHORIZATION_BYTES`], is malformed.
pub fn parse_authorization(headers: &HeaderMap) -> Result<Option<Credential>, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() || value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(AuthFailure::Malformed);
    }
    parse_credential(value.as_bytes())
        .map(Some)
        .ok_or(AuthFailure::Malformed)
}

/// What the whole process shares against password guessing: one lockout table and one bcrypt
/// pool with one queue. Made once at start and handed to every site's [`Authenticator`], so N
/// sites still use half the cores, and neither a reload nor a second site resets a count.
/// Each site's own lockout thresholds apply to the checks made on that site.
pub struct Defence {
    /// What every site's checks read the time from.
    pub(crate) clock: Clock,
    lockout: Mutex<HashMap<ClientNet, Strikes>>,
    bcrypt_slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl std::fmt::Debug for Defence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Defence").finish_non_exhaustive()
    }
}

impl Defence {
    /// An empty lockout table and a bcrypt pool of half the cores: the other half keeps serving
    /// authenticated traffic while a flood of wrong passwords is being checked.
    pub fn new() -> Arc<Defence> {
        Defence::with_clock(Clock::system())
    }

    /// [`Defence::new`] reading the time from `clock`.
    pub fn with_clock(clock: Clock) -> Arc<Defence> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Arc::new(Defence {
            clock,
            lockout: Mutex::new(HashMap::new()),
            bcrypt_slots: Arc::new(Semaphore::new((cores / 2).max(1))),
            waiting: AtomicUsize::new(0),
        })
    }
}

/// The authentication state of one site: current users and tokens, the cache of verified
/// passwords, and the process's [`Defence`].
pub struct Authenticator {
    settings: AuthSettings,
    users: ArcSwap<Htpasswd>,
    tokens: ArcSwap<TokenSet>,
    roles: ArcSwap<Roles>,
    /// Whether the last reload of each file failed, so the set in use is older than the file.
    users_stale: AtomicBool,
    tokens_stale: AtomicBool,
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    pending: Mutex<HashMap<[u8; 32], Arc<OnceCell<bool>>>>,
    /// HMAC-SHA256 already keyed with a per-process random key: cloning it skips hashing the
    /// key pads on every request.
    cache_mac: Hmac<Sha256>,
    defence: Arc<Defence>,
    metrics: Arc<Metrics>,
    /// The identity providers of `auth.jwt` and their keys.
    jwts: Arc<Jwts>,
    /// The single-sign-on provider of `auth.oidc`.
    oidc: Option<Arc<Provider>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// Recent failures of one client address.
#[derive(Debug)]
struct Strikes {
    count: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

impl Authenticator {
    /// Loads the users and tokens files. Refuses to start when neither lets anyone in.
    pub fn load(
        settings: AuthSettings,
        defence: Arc<Defence>,
        metrics: Arc<Metrics>,
    ) -> Result<Authenticator, AuthError> {
        let users = match guard_config::users::load(&settings.users_file) {
            Ok((users, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                users
            }
            Err(UsersError::File(FileError::NotFound { .. })) => Htpasswd::parse("", &settings.users_file).0,
            Err(e) => return Err(AuthError::Users(e)),
        };
        let tokens = match guard_config::tokens::load(&settings.tokens_file) {
            Ok(t) => t,
            Err(TokensError::File(FileError::NotFound { .. })) => TokenSet::default(),
            Err(e) => return Err(AuthError::Tokens(e)),
        };
        if users.is_empty() && tokens.is_empty() && settings.jwt.is_empty() && settings.oidc.is_none() {
            return Err(AuthError::NothingConfigured {
                users: settings.users_file.display().to_string(),
                tokens: settings.tokens_file.display().to_string(),
            });
        }
        tracing::info!(
            users = users.len(),
            tokens = tokens.len(),
            "authentication: {} and {}",
            settings.users_file.display(),
            settings.tokens_file.display()
        );
        let mut cache_key = [0u8; 32];
        getrandom::fill(&mut cache_key).expect("the OS random source works");
        let roles = load_roles(&settings.groups_file).map_err(AuthError::Groups)?;
        let fetch_errors = metrics.idp_fetch_errors.clone();
        let jwts = Arc::new(Jwts::new(&settings.jwt, defence.clock.clone(), fetch_errors.clone()));
        let oidc = settings
            .oidc
            .as_ref()
            .map(|o| Arc::new(Provider::new(o, defence.clock.clone(), fetch_errors)));
        Ok(Authenticator {
            jwts,
            oidc,
            settings,
            users: ArcSwap::from_pointee(users),
            tokens: ArcSwap::from_pointee(tokens),
            roles: ArcSwap::from_pointee(roles),
            users_stale: AtomicBool::new(false),
            tokens_stale: AtomicBool::new(false),
            cache: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            cache_mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&cache_key).expect("HMAC takes any key length"),
            defence,
            metrics,
        })
    }

    /// The realm for `WWW-Authenticate`.
    pub fn realm(&self) -> &str {
        &self.settings.realm
    }

    /// The header that names the user to the upstream, if any.
    pub fn forwarded_user_header(&self) -> Option<&str> {
        self.settings.forwarded_user_header.as_deref()
    }

    /// Re-reads both files. A file that cannot be read or parsed keeps the last good set; every
    /// change clears the password cache so a removed user or changed password stops working.
    pub fn reload(&self) {
        match guard_config::users::load(&self.settings.users_file) {
            Ok((users, warnings)) => {
                for w in &warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!(
                    users = users.len(),
                    "users reloaded from {}",
                    self.settings.users_file.display()
                );
                self.users.store(Arc::new(users));
                self.users_stale.store(false, Ordering::Relaxed);
            }
            Err(UsersError::File(FileError::NotFound { .. })) => {
                tracing::warn!(
                    "users file {} is gone: no user can log in",
                    self.settings.users_file.display()
                );
                self.users
                    .store(Arc::new(Htpasswd::parse("", &self.settings.users_file).0));
                self.users_stale.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                // Loud on purpose: a removed user who can still log in must never go unnoticed.
                self.users_stale.store(true, Ordering::Relaxed);
                self.metrics.auth_reload_errors.inc();
                tracing::error!(
                    "users NOT reloaded, the previous set stays in use (removed users can still log in): {}",
                    guard_config::error::chain(&e)
                );
            }
        }
        let tokens = match guard_config::tokens::load(&self.settings.tokens_file) {
            Ok(tokens) => Ok(tokens),
            Err(TokensError::File(FileError::NotFound { .. })) => Ok(TokenSet::default()),
            Err(e) => Err(e),
        };
        match tokens {
            Ok(tokens) => {
                self.tokens.store(Arc::new(tokens));
                self.tokens_stale.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                self.tokens_stale.store(true, Ordering::Relaxed);
                self.metrics.auth_reload_errors.inc();
                tracing::error!(
                    "tokens NOT reloaded, the previous set stays in use (revoked tokens still work): {}",
                    guard_config::error::chain(&e)
                );
            }
        }
        match load_roles(&self.settings.groups_file) {
            Ok(roles) => self.roles.store(Arc::new(roles)),
            Err(e) => {
                // Kept, like the users: a reader must not become a writer because a file broke.
                self.users_stale.store(true, Ordering::Relaxed);
                self.metrics.auth_reload_errors.inc();
                tracing::error!(
                    "roles NOT reloaded, the previous roles stay in use: {}",
                    guard_config::error::chain(&e)
                );
            }
        }
        self.cache.lock().expect("cache lock").clear();
    }

    /// Whether the users and the tokens in use are older than their files (the last reload
    /// failed), for `/_guard/health`.
    pub fn stale(&self) -> (bool, bool) {
        (
            self.users_stale.load(Ordering::Relaxed),
            self.tokens_stale.load(Ordering::Relaxed),
        )
    }

    /// Watches both files and reloads on change or when `force` fires, until dropped.
    pub fn watch(self: &Arc<Self>, force: crate::watch::ReloadSignal) {
        let paths = vec![
            self.settings.users_file.clone(),
            self.settings.tokens_file.clone(),
            self.settings.groups_file.clone(),
        ];
        crate::watch::spawn(paths, force, Arc::downgrade(self), Authenticator::reload);
        self.jwts.spawn_refresher();
        if let Some(p) = &self.oidc {
            p.spawn_refresher();
        }
    }

    /// The site's JWT issuers, for the key fetch at start.
    pub fn jwts(&self) -> &Arc<Jwts> {
        &self.jwts
    }

    /// Decides whether a request may pass; `peer` is the client (behind a trusted proxy, the
    /// address it forwarded for). The lockout is checked first so a locked-out address learns
    /// nothing, not even from the cache. A password check that misses the cache takes a strike
    /// before it runs and gives it back only if it succeeds: a success never clears earlier
    /// failures, and a burst of concurrent guesses cannot run past the threshold.
    pub async fn authenticate(&self, headers: &HeaderMap, peer: IpAddr) -> Result<Principal, AuthFailure> {
        let credential = match parse_authorization(headers) {
            Ok(Some(c)) => c,
            // A browser's first request carries nothing; that costs nothing and is no attack.
            Ok(None) => return Err(AuthFailure::Missing),
            Err(f) => {
                self.check_lockout(peer)?;
                return Err(self.failed(peer, f));
            }
        };
        self.check_lockout(peer)?;
        let result = match credential {
            Credential::Basic { user, password } => return self.password(user, &password, peer).await,
            Credential::Bearer(token) if !self.jwts.is_empty() && looks_like_jwt(&token) => {
                match self.jwts.verify(&token).await {
                    Ok(v) => {
                        let role = self.role_of(&v.name);
                        Ok(Principal::new(v.name, Via::Jwt, role))
                    }
                    Err(why) => {
                        tracing::debug!("bearer JWT refused: {why}");
                        Err(AuthFailure::BadJwt)
                    }
                }
            }
            Credential::Bearer(token) => match self.tokens.load().lookup(&token, self.now_unix()) {
                Lookup::Valid { name, role } => Ok(Principal::new(
                    name.to_owned(),
                    Via::Token,
                    role.unwrap_or(self.settings.default_role),
                )),
                Lookup::Expired { .. } => Err(AuthFailure::ExpiredToken),
                Lookup::Revoked { .. } => Err(AuthFailure::RevokedToken),
                Lookup::Unknown => Err(AuthFailure::UnknownToken),
            },
        };
        result.map_err(|f| self.failed(peer, f))
    }

    /// Checks a user's password as the sign-in page posts it: the same lockout, cache and
    /// dummy hash as HTTP Basic.
    pub async fn sign_in(&self, user: String, password: &[u8], peer: IpAddr) -> Result<Principal, AuthFailure> {
        self.check_lockout(peer)?;
        self.password(user, password, peer).await
    }

    /// A password check once the lockout let the client through.
    async fn password(&self, user: String, password: &[u8], peer: IpAddr) -> Result<Principal, AuthFailure> {
        if is_ui_sign_out(&user, password) && self.users.load().get(&user).is_none() {
            return Err(AuthFailure::BadPassword);
        }
        match self.verify_password(&user, password, peer).await? {
            true => Ok(Principal::new(user.clone(), Via::Password, self.role_of(&user))),
            // The strike was taken before the check.
            false => Err(self.settle(peer, AuthFailure::BadPassword)),
        }
    }

    /// The user a session signs in, if they are still in the users file with the password they
    /// signed in with: a deleted user or a changed password ends every session at once.
    /// A single-sign-on session counts while the site has the provider that made it; its
    /// person's role comes from their groups (`auth.oidc.roles`), else the groups file, else
    /// the default.
    pub fn session_user(&self, session: &Session) -> Result<Principal, Refused> {
        if let (SignIn::Oidc, Some(identity)) = (session.method, &session.identity) {
            let provider = self.oidc.as_ref().ok_or(Refused::CredentialChanged)?;
            if !credential_matches(session, provider.fingerprint()) {
                return Err(Refused::CredentialChanged);
            }
            let role = provider.settings().role_of(&identity.groups);
            return Ok(Principal {
                name: session.user.clone(),
                via: Via::Oidc,
                role: role.unwrap_or_else(|| self.role_of(&session.user)),
                email: identity.email.clone(),
                groups: identity.groups.clone(),
            });
        }
        match self.users.load().get(&session.user) {
            Some(entry) if session.method == SignIn::Password && credential_matches(session, entry.fingerprint()) => {
                Ok(Principal::new(
                    session.user.clone(),
                    Via::Session,
                    self.role_of(&session.user),
                ))
            }
            _ => Err(Refused::CredentialChanged),
        }
    }

    /// The site's single-sign-on provider, if it has one.
    pub fn oidc(&self) -> Option<&Arc<Provider>> {
        self.oidc.as_ref()
    }

    /// Whether the groups file puts `user` in its `admin` group.
    pub fn is_admin(&self, user: &str) -> bool {
        self.roles.load().is_admin(user)
    }

    /// `user`'s role: the groups file's, else the site's default.
    fn role_of(&self, user: &str) -> Role {
        self.roles.load().role_of(user).unwrap_or(self.settings.default_role)
    }

    /// What a new session of `user` carries of their stored hash (see [`Session::credential`]).
    pub fn credential_of(&self, user: &str) -> Option<Fingerprint> {
        self.users.load().get(user).map(|entry| *entry.fingerprint())
    }

    /// Now in Unix seconds, on the process's clock: what session times are checked against.
    pub fn now_unix(&self) -> u64 {
        self.defence.clock.unix()
    }

    /// How long this site's sessions live.
    pub fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            absolute: self.settings.session_lifetime.as_secs(),
            idle: self.settings.session_idle.as_secs(),
        }
    }

    /// Whether browsers without credentials get the sign-in page.
    pub fn login_page(&self) -> bool {
        self.settings.login_page
    }

    /// Changes `user`'s own password after checking `current` (through the lockout, as a
    /// sign-in), writing the users file as `guard passwd` does, and reloads it so the change
    /// holds at once. The new hash is made on the bcrypt pool.
    pub async fn change_password(
        &self,
        user: &str,
        current: &Secret,
        new: Secret,
        peer: IpAddr,
    ) -> Result<(), PasswordChangeError> {
        self.sign_in(user.to_owned(), current.expose().as_bytes(), peer)
            .await
            .map_err(PasswordChangeError::Auth)?;
        let permit = self
            .defence
            .bcrypt_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PasswordChangeError::Auth(AuthFailure::Busy))?;
        let (path, name) = (self.settings.users_file.clone(), user.to_owned());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            guard_config::users::set_password(&path, &name, &new, DEFAULT_BCRYPT_COST)
        })
        .await
        .map_err(|_| PasswordChangeError::Auth(AuthFailure::Busy))?
        .map_err(PasswordChangeError::Write)?;
        tracing::info!(user, "password changed from the MLflow UI");
        self.reload();
        Ok(())
    }

    /// Checks a password, from the cache when this exact user, password and stored hash were
    /// verified within the TTL; otherwise on the bcrypt pool, shared with identical checks.
    async fn verify_password(&self, user: &str, password: &[u8], peer: IpAddr) -> Result<bool, AuthFailure> {
        let users = self.users.load_full();
        let stored = users
            .get(user)
            .map(|e| e.hash_str())
            .unwrap_or_else(|| users.dummy_entry().hash_str());
        let key = self.key_for(user, password, stored);
        if self.cached(&key) {
            self.metrics.cache_hits.inc();
            return Ok(true);
        }
        self.metrics.cache_misses.inc();
        let queued = self.defence.waiting.fetch_add(1, Ordering::AcqRel);
        let _queued = Decrement(&self.defence.waiting);
        let (pending, starts) = {
            let mut map = self.pending.lock().expect("pending lock");
            // Past the queue bound only an identical check already under way may be joined;
            // anything new is turned away before it takes a place in the map.
            let (cell, starts) = match map.get(&key) {
                Some(cell) => (cell.clone(), false),
                None if queued >= MAX_WAITING_CHECKS => return Err(AuthFailure::Busy),
                None => (map.entry(key).or_default().clone(), true),
            };
            (Pending { auth: self, key, cell }, starts)
        };
        // Only a new check takes a strike: the same password sent on many connections at once
        // (the MLflow client after a reload cleared the cache) is one guess, not one per
        // connection, while every distinct guess of a burst still counts before it runs.
        let strike = if starts { Some(self.reserve(peer)?) } else { None };
        let ok = *pending
            .cell
            .get_or_init(|| async {
                let Ok(permit) = self.defence.bcrypt_slots.clone().acquire_owned().await else {
                    return false;
                };
                let (users, user, password) = (users.clone(), user.to_owned(), password.to_vec());
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    users.verify_user(&user, &password)
                })
                .await
                .unwrap_or(false)
            })
            .await;
        drop(pending);
        if ok {
            self.remember(key);
            if let Some(strike) = strike {
                self.give_back(strike);
            }
        }
        Ok(ok)
    }

    /// HMAC-SHA256 under a per-process key of (user, password, stored hash), each length-prefixed:
    /// the cache never holds a password or anything an attacker could test guesses against.
    fn key_for(&self, user: &str, password: &[u8], stored: &str) -> [u8; 32] {
        let mut mac = self.cache_mac.clone();
        for part in [user.as_bytes(), password, stored.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        let cache = self.cache.lock().expect("cache lock");
        cache
            .get(key)
            .is_some_and(|expires| *expires > self.defence.clock.instant())
    }

    fn remember(&self, key: [u8; 32]) {
        let now = self.defence.clock.instant();
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= self.settings.cache_capacity {
            cache.retain(|_, expires| *expires > now);
            // Still full of live entries: drop an arbitrary half. Only successes are cached, so
            // a flood of wrong passwords can never push good entries out.
            if cache.len() >= self.settings.cache_capacity {
                let drop: Vec<_> = cache.keys().take(cache.len() / 2 + 1).copied().collect();
                for k in drop {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(key, now + self.settings.cache_ttl);
    }

    /// Refuses an address that is locked out, with the seconds left.
    fn check_lockout(&self, peer: IpAddr) -> Result<(), AuthFailure> {
        let now = self.defence.clock.instant();
        let table = self.defence.lockout.lock().expect("lockout lock");
        if table.is_empty() {
            return Ok(());
        }
        match table.get(&ClientNet::of(peer)).and_then(|s| s.locked_until) {
            Some(until) if until > now => Err(AuthFailure::LockedOut((until - now).as_secs().max(1))),
            _ => Ok(()),
        }
    }

    /// Takes a strike against `peer` before a password check, so checks in flight count. A
    /// client already at the threshold (its strikes still in flight) is refused as locked out
    /// without a check. Returns what [`Authenticator::give_back`] needs.
    fn reserve(&self, peer: IpAddr) -> Result<Strike, AuthFailure> {
        let now = self.defence.clock.instant();
        let s = &self.settings;
        let offender = ClientNet::of(peer);
        let mut table = self.defence.lockout.lock().expect("lockout lock");
        let st = self.strikes(&mut table, offender, now);
        if let Some(until) = st.locked_until {
            return Err(AuthFailure::LockedOut((until - now).as_secs().max(1)));
        }
        if s.lockout_failures > 0 && st.count >= s.lockout_failures {
            return Err(AuthFailure::LockedOut(1));
        }
        st.count += 1;
        Ok(Strike {
            offender,
            window_start: st.window_start,
        })
    }

    /// Returns a reserved strike after a successful check: only the one this check took, so a
    /// success never clears anyone's earlier failures.
    fn give_back(&self, strike: Strike) {
        let mut table = self.defence.lockout.lock().expect("lockout lock");
        if let Some(st) = table.get_mut(&strike.offender) {
            if st.window_start == strike.window_start && st.locked_until.is_none() {
                st.count = st.count.saturating_sub(1);
            }
        }
    }

    /// The strikes of `offender` in the current window, a fresh window when the last one ended.
    fn strikes<'t>(
        &self,
        table: &'t mut HashMap<ClientNet, Strikes>,
        offender: ClientNet,
        now: Instant,
    ) -> &'t mut Strikes {
        let s = &self.settings;
        if table.len() > 100_000 {
            table.retain(|_, st| st.locked_until.is_some_and(|u| u > now) || now - st.window_start < s.lockout_window);
        }
        let st = table.entry(offender).or_insert(Strikes {
            count: 0,
            window_start: now,
            locked_until: None,
        });
        if now - st.window_start >= s.lockout_window || st.locked_until.is_some_and(|u| u <= now) {
            *st = Strikes {
                count: 0,
                window_start: now,
                locked_until: None,
            };
        }
        st
    }

    /// Counts a failure against `peer`, locking it out at the threshold (logged once).
    fn failed(&self, peer: IpAddr, failure: AuthFailure) -> AuthFailure {
        self.strike(peer, failure, true)
    }

    /// A password check failed: its strike was taken by [`Authenticator::reserve`]; lock out if
    /// that reached the threshold.
    fn settle(&self, peer: IpAddr, failure: AuthFailure) -> AuthFailure {
        self.strike(peer, failure, false)
    }

    fn strike(&self, peer: IpAddr, failure: AuthFailure, count: bool) -> AuthFailure {
        let now = self.defence.clock.instant();
        let s = &self.settings;
        let offender = ClientNet::of(peer);
        let mut table = self.defence.lockout.lock().expect("lockout lock");
        let st = self.strikes(&mut table, offender, now);
        if count || st.count == 0 {
            st.count += 1;
        }
        if s.lockout_failures > 0 && st.count >= s.lockout_failures && st.locked_until.is_none() {
            st.locked_until = Some(now + s.lockout_duration);
            self.metrics.lockouts.inc();
            tracing::warn!(
                peer = %peer,
                "locking out {offender} for {}s after {} failed logins in {}s",
                s.lockout_duration.as_secs(),
                st.count,
                s.lockout_window.as_secs()
            );
        }
        failure
    }
}

/// A strike taken before a password check, to give back if it succeeds.
struct Strike {
    offender: ClientNet,
    window_start: Instant,
}

/// One waiter on a shared check. The last one to leave, finished or cancelled (a client that
/// hung up), removes the entry, so a flood of distinct wrong passwords leaves nothing behind.
struct Pending<'a> {
    auth: &'a Authenticator,
    key: [u8; 32],
    cell: Arc<OnceCell<bool>>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut map = self.auth.pending.lock().expect("pending lock");
        // Two references: the map's and this waiter's.
        if map.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) && Arc::strong_count(&self.cell) <= 2 {
            map.remove(&self.key);
        }
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use http::HeaderValue;

    fn basic(s: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s))
    }

    #[test]
    fn authorization_headers_parse_or_are_malformed() {
        let ok = |v: &str| parse_credential(v.as_bytes()).unwrap();
        assert_eq!(
            ok(&basic("alice:pw")),
            Credential::Basic {
                user: "alice".into(),
                password: b"pw".to_vec()
            }
        );
        assert_eq!(
            ok(&basic("alice:a:b")),
            Credential::Basic {
                user: "alice".into(),
                password: b"a:b".to_vec()
            }
        );
        assert_eq!(
            ok(&basic("alice:")),
            Credential::Basic {
                user: "alice".into(),
                password: vec![]
            }
        );
        assert_eq!(
            ok(&basic("alice:pw").replace("Basic", "bAsIc")),
            Credential::Basic {
                user: "alice".into(),
                password: b"pw".to_vec()
            }
        );
        assert_eq!(ok("Bearer grd_abc"), Credential::Bearer("grd_abc".into()));
        for bad in [
            "Basic",
            "Basic !!!",
            &basic("nocolon"),
            &basic(":pw"),
            "Bearer ",
            "Digest x",
            "",
            "Bearer a b",
        ] {
            assert_eq!(parse_credential(bad.as_bytes()), None, "{bad:?}");
        }
        let mut h = HeaderMap::new();
        assert_eq!(parse_authorization(&h), Ok(None));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(
            parse_authorization(&h),
            Err(AuthFailure::Malformed),
            "two headers are ambiguous"
        );
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&"x".repeat(9000)).unwrap());
        assert_eq!(parse_authorization(&h), Err(AuthFailure::Malformed));
    }

    /// An authenticator whose users file, in a fresh directory, holds alice with password
    /// "right" (cost 4), locking out after `lockout_failures`.
    fn alice_only(test: &str, lockout_failures: u32) -> (Arc<Authenticator>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("guard-auth-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("users");
        let hash = guard_config::htpasswd::hash_password("right", 4).unwrap();
        std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
        let mut settings = AuthSettings::defaults(&dir);
        settings.users_file = users;
        settings.lockout_failures = lockout_failures;
        let auth = Authenticator::load(settings, Defence::new(), Arc::new(Metrics::new(false))).unwrap();
        (Arc::new(auth), dir)
    }

    fn alice_with(password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"))
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    #[tokio::test]
    async fn a_flood_of_wrong_passwords_leaves_no_pending_checks_behind() {
        let (auth, dir) = alice_only("pending", 0);
        let peer: IpAddr = "127.0.0.2".parse().unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let auth = auth.clone();
            tasks.push(tokio::spawn(async move {
                auth.authenticate(&alice_with(&format!("guess{i}")), peer).await
            }));
        }
        // Cancel half of them mid-check, as clients that hang up.
        for t in tasks.iter().step_by(2) {
            t.abort();
        }
        for t in tasks {
            if let Ok(r) = t.await {
                assert!(matches!(r, Err(AuthFailure::BadPassword | AuthFailure::Busy)), "{r:?}");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(auth.pending.lock().unwrap().is_empty(), "pending checks leaked");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn lockout_counts_an_ipv6_64_as_one_client_and_mapped_ipv4_as_its_address() {
        let (auth, dir) = alice_only("lockout64", 3);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let wrong = alice_with("wrong");
        // Three addresses of one /64 each fail once: the whole /64 is locked out, even for the
        // right password, and a neighbouring /64 is not.
        for peer in ["2001:db8:0:7::1", "2001:db8:0:7::2", "2001:db8:0:7:ffff::3"] {
            assert_eq!(auth.authenticate(&wrong, ip(peer)).await, Err(AuthFailure::BadPassword));
        }
        let locked = auth.authenticate(&alice_with("right"), ip("2001:db8:0:7::99")).await;
        assert!(matches!(locked, Err(AuthFailure::LockedOut(_))), "{locked:?}");
        let next = auth.authenticate(&alice_with("right"), ip("2001:db8:0:8::1")).await;
        assert_eq!(next.map(|p| p.name), Ok("alice".to_string()));
        // An IPv4 client reaching a dual-stack socket as ::ffff:a.b.c.d is the same client.
        for peer in ["192.0.2.7", "::ffff:192.0.2.7", "192.0.2.7"] {
            assert_eq!(auth.authenticate(&wrong, ip(peer)).await, Err(AuthFailure::BadPassword));
        }
        let locked = auth.authenticate(&wrong, ip("::ffff:192.0.2.7")).await;
        assert!(matches!(locked, Err(AuthFailure::LockedOut(_))), "{locked:?}");
        assert_eq!(
            auth.authenticate(&wrong, ip("192.0.2.8")).await,
            Err(AuthFailure::BadPassword)
        );
        assert_eq!(ClientNet::of(ip("2001:db8:0:7::1")).to_string(), "2001:db8:0:7::/64");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_success_gives_back_only_its_own_strike_and_a_reload_keeps_the_table() {
        let (auth, dir) = alice_only("strikes", 3);
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..2 {
            assert_eq!(
                auth.authenticate(&alice_with("wrong"), peer).await,
                Err(AuthFailure::BadPassword)
            );
            assert_eq!(
                auth.authenticate(&alice_with("right"), peer).await.map(|p| p.name),
                Ok("alice".into())
            );
        }
        // Two failures stand despite the successes; a reload does not clear them either.
        auth.reload();
        assert_eq!(auth.defence.lockout.lock().unwrap()[&ClientNet::of(peer)].count, 2);
        assert_eq!(
            auth.authenticate(&alice_with("wrong2"), peer).await,
            Err(AuthFailure::BadPassword)
        );
        let locked = auth.authenticate(&alice_with("right"), peer).await;
        assert!(matches!(locked, Err(AuthFailure::LockedOut(_))), "{locked:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let c = Credential::Basic {
            user: "u".into(),
            password: b"hunter2".to_vec(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credential::Bearer("grd_secret".into())).contains("grd_secret"));
    }
}
