//! Single sign-on for people (`auth.oidc`): the OpenID Connect authorization-code flow with
//! PKCE against one provider, from the redirect to it to the checked ID token, and the refresh
//! that re-reads a person's email and groups when their ID token runs out. The round trip's
//! state (`state`, `nonce`, the PKCE verifier, where to return) rides in a sealed cookie, so
//! any guard sharing the session key finishes what another began. The pages and the session
//! cookie are `signin`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::{STANDARD as B64_STD, URL_SAFE_NO_PAD as B64};
use base64::Engine as _;
use bytes::Bytes;
use guard_config::clock::Clock;
use guard_config::jwt::JwtIssuer;
use guard_config::oidc::{NotAllowed, Oidc};
use guard_config::session::{credential_fingerprint, Fingerprint, Identity, Session, SessionKeys, SignIn};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::jwt::{discover, https_client, FetchError, HttpsClient, Jwts, LEEWAY_SECS};

pub use crate::login::{OIDC_CALLBACK_PATH as CALLBACK_PATH, OIDC_START_PATH as START_PATH};
/// The cookie holding a round trip's sealed state. `__Host-` like the session's; SameSite=Lax
/// (the provider's redirect back is a top-level GET, which carries it).
pub const FLOW_COOKIE: &str = "__Host-guard_oidc";
/// How long a round trip may take, the provider's sign-in page included.
pub const FLOW_LIFETIME: u64 = 600;
/// How long a token request may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// A refresh's outcome is kept this long, so requests still carrying the old cookie (the UI
/// sends several at once) share it instead of spending the refresh token again: providers
/// that rotate refresh tokens revoke the grant when one is used twice.
const REFRESH_REUSE: Duration = Duration::from_secs(120);
/// When the provider gives no `expires_in` and no ID token on refresh: ask again after this.
const DEFAULT_REFRESH_SECS: u64 = 300;
/// The soonest a session is refreshed after sign-in or a refresh, however short-lived (or
/// already past, within the leeway) the provider's ID token: no refresh on every request.
const MIN_REFRESH_SECS: u64 = 10;
/// The part of a sealed session allowed for groups: with the rest it stays under the 4 KiB a
/// browser keeps per cookie.
const MAX_GROUPS_BYTES: usize = 2000;

const LEN_STATE: usize = 16;
const LEN_VERIFIER: usize = 32;

type PostClient = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

/// What went wrong in a sign-in, for the page the browser gets.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// No round-trip cookie, or an old or foreign one, or a `state` that does not match it.
    #[error("this sign-in was started too long ago or in another browser")]
    FlowLost,
    /// The provider sent back an error instead of a code.
    #[error("{provider} did not sign you in: {error}")]
    Provider {
        /// The provider's name.
        provider: String,
        /// Its `error` and `error_description`.
        error: String,
    },
    /// The provider could not be reached, or refused the code.
    #[error("cannot complete the sign-in with {provider}: {reason}")]
    Exchange {
        /// The provider's name.
        provider: String,
        /// Why.
        reason: String,
    },
    /// The ID token did not check.
    #[error("the ID token from {provider} was refused: {reason}")]
    IdToken {
        /// The provider's name.
        provider: String,
        /// Why.
        reason: String,
    },
    /// Signed in at the provider, but not let in here.
    #[error("{user}: {why}")]
    NotAllowed {
        /// The person's name.
        user: String,
        /// Which rule.
        why: NotAllowed,
    },
}

impl SignInError {
    /// The label it is counted under in `guard_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignInError::FlowLost => "oidc_flow_lost",
            SignInError::Provider { .. } => "oidc_provider_error",
            SignInError::Exchange { .. } => "oidc_exchange_failed",
            SignInError::IdToken { .. } => "oidc_bad_id_token",
            SignInError::NotAllowed { .. } => "oidc_not_allowed",
        }
    }
}

/// Why a refresh did not renew a session: it ends, and the person signs in again.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RefreshError {
    /// The provider gave no refresh token at sign-in.
    #[error("the provider gave no refresh token")]
    NoToken,
    /// The provider refused it, could not be reached, or its new ID token did not check.
    #[error("{0}")]
    Failed(String),
    /// The person is no longer admitted (their groups or email changed).
    #[error("{0}")]
    NotAllowed(NotAllowed),
}

/// The provider's endpoints, from its discovery document.
struct Endpoints {
    authorization: String,
    token: String,
    end_session: Option<String>,
}

/// What a refresh produced, shared by the requests that waited on it.
type Refreshed = Result<Session, RefreshError>;
type SharedRefresh = Arc<OnceCell<Refreshed>>;

/// The provider of a site.
pub struct Provider {
    settings: Oidc,
    endpoints: ArcSwapOption<Endpoints>,
    discovering: tokio::sync::Mutex<()>,
    /// The provider's keys, for ID tokens only: its `aud` is guard's client id. Separate from
    /// `auth.jwt`, so an ID token is never a bearer credential.
    jwts: Arc<Jwts>,
    get: Option<HttpsClient>,
    post: Option<PostClient>,
    fetch_errors: Counter,
    fingerprint: Fingerprint,
    clock: Clock,
    /// Refreshes under way or just done, by hash of the session they renew (its refresh token,
    /// refresh time and sign-in time), with when they began.
    refreshes: Mutex<HashMap<[u8; 32], (Instant, SharedRefresh)>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.settings.issuer)
            .finish()
    }
}

/// A round trip's state, sealed into [`FLOW_COOKIE`].
struct Flow {
    state: [u8; LEN_STATE],
    nonce: [u8; LEN_STATE],
    verifier: [u8; LEN_VERIFIER],
    started: u64,
    next: String,
}

impl Flow {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * LEN_STATE + LEN_VERIFIER + 8 + self.next.len());
        out.extend_from_slice(&self.state);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.verifier);
        out.extend_from_slice(&self.started.to_be_bytes());
        out.extend_from_slice(self.next.as_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Flow> {
        let (state, b) = b.split_at_checked(LEN_STATE)?;
        let (nonce, b) = b.split_at_checked(LEN_STATE)?;
        let (verifier, b) = b.split_at_checked(LEN_VERIFIER)?;
        let (started, next) = b.split_at_checked(8)?;
        Some(Flow {
            state: state.try_into().ok()?,
            nonce: nonce.try_into().ok()?,
            verifier: verifier.try_into().ok()?,
            started: u64::from_be_bytes(started.try_into().ok()?),
            next: String::from_utf8(next.to_vec()).ok()?,
        })
    }
}

/// A sign-in that went through: the session to seal and where to go.
#[derive(Debug)]
pub struct SignedIn {
    /// The new session.
    pub session: Session,
    /// The path the person was going to.
    pub next: String,
}

impl Provider {
    /// The provider of `settings`, nothing fetched yet ([`Provider::fetch`]); failed fetches
    /// count in `fetch_errors`.
    pub fn new(settings: &Oidc, clock: Clock, fetch_errors: Counter) -> Provider {
        let id_tokens = JwtIssuer {
            issuer: settings.issuer.clone(),
            audiences: vec![settings.client_id.clone()],
            jwks_url: None,
            user_claim: settings.user_claim.clone(),
            subjects: Vec::new(),
        };
        Provider {
            jwts: Arc::new(Jwts::new(
                std::slice::from_ref(&id_tokens),
                clock.clone(),
                fetch_errors.clone(),
            )),
            fetch_errors,
            fingerprint: credential_fingerprint(&format!("oidc\0{}\0{}", settings.issuer, settings.client_id)),
            settings: settings.clone(),
            endpoints: ArcSwapOption::empty(),
            discovering: tokio::sync::Mutex::new(()),
            get: https_client(),
            post: https_client(),
            clock,
            refreshes: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Oidc {
        &self.settings
    }

    /// The fingerprint an OIDC session of this provider carries: a changed issuer or client
    /// ends every session it made.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Fetches the discovery document and the keys; the first error.
    pub async fn fetch(&self) -> Result<(), FetchError> {
        self.endpoints().await?;
        match self.jwts.fetch_all().await.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Keeps the keys fresh while the site lives (see [`Jwts::spawn_refresher`]).
    pub fn spawn_refresher(&self) {
        self.jwts.spawn_refresher();
    }

    /// The endpoints, fetched once (again after a failure, when a browser next needs them).
    async fn endpoints(&self) -> Result<Arc<Endpoints>, FetchError> {
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        let _one = self.discovering.lock().await;
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        let client = self.get.as_ref().ok_or_else(|| FetchError::Invalid {
            url: self.settings.issuer.clone(),
            reason: "no TLS roots to reach it with".to_owned(),
        })?;
        let endpoints = async {
            let doc = discover(client, &self.settings.issuer).await?;
            Ok::<_, FetchError>(Arc::new(Endpoints {
                authorization: doc.endpoint("authorization_endpoint")?,
                token: doc.endpoint("token_endpoint")?,
                end_session: doc.optional_endpoint("end_session_endpoint")?,
            }))
        }
        .await
        .inspect_err(|_| {
            self.fetch_errors.inc();
        })?;
        self.endpoints.store(Some(endpoints.clone()));
        Ok(endpoints)
    }

    /// Begins a sign-in for a browser on `host` going to `next`: the provider's URL to send it
    /// to, and the sealed round-trip state for [`FLOW_COOKIE`]. `again`: the person asked to
    /// sign in as someone else, so the provider must ask, not reuse its own session.
    pub async fn begin(
        &self,
        keys: &SessionKeys,
        host: &str,
        next: &str,
        again: bool,
    ) -> Result<(String, String), SignInError> {
        let endpoints = self.endpoints().await.map_err(|e| self.exchange_error(e.to_string()))?;
        let no_random = || self.exchange_error("no random numbers".to_owned());
        let mut flow = Flow {
            state: [0; LEN_STATE],
            nonce: [0; LEN_STATE],
            verifier: [0; LEN_VERIFIER],
            started: self.clock.unix(),
            next: crate::login::safe_return(next).to_owned(),
        };
        for part in [&mut flow.state[..], &mut flow.nonce[..], &mut flow.verifier[..]] {
            getrandom::fill(part).map_err(|_| no_random())?;
        }
        let challenge = B64.encode(Sha256::digest(B64.encode(flow.verifier).as_bytes()));
        let scopes = self.settings.scopes.join(" ");
        let mut prompt = again.then_some("login");
        // OIDC Core §11: a refresh token for offline use is only granted with consent asked.
        if self.settings.scopes.iter().any(|s| s == "offline_access") {
            prompt = Some(if again { "login consent" } else { "consent" });
        }
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", &redirect_uri(host))
            .append_pair("scope", &scopes)
            .append_pair("state", &B64.encode(flow.state))
            .append_pair("nonce", &B64.encode(flow.nonce))
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(p) = prompt {
            query.append_pair("prompt", p);
        }
        let sep = if endpoints.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!("{}{sep}{}", endpoints.authorization, query.finish());
        let sealed = keys.seal_flow(flow.encode()).map_err(|_| no_random())?;
        Ok((location, sealed))
    }

    /// Finishes a sign-in: the callback's query checked against the round-trip cookie, the
    /// code exchanged, the ID token checked, the person admitted or not.
    pub async fn finish(
        &self,
        keys: &SessionKeys,
        host: &str,
        query: &str,
        flow_cookie: Option<&str>,
    ) -> Result<SignedIn, SignInError> {
        let now = self.clock.unix();
        let flow = flow_cookie
            .and_then(|c| keys.open_flow(c, now).ok())
            .and_then(|b| Flow::decode(&b))
            .filter(|f| now < f.started.saturating_add(FLOW_LIFETIME))
            .ok_or(SignInError::FlowLost)?;
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let state_ok = params
            .get("state")
            .is_some_and(|s| guard_config::secret::ct_eq(s.as_bytes(), B64.encode(flow.state).as_bytes()));
        if !state_ok {
            return Err(SignInError::FlowLost);
        }
        if let Some(error) = params.get("error") {
            let detail = params
                .get("error_description")
                .map_or(String::new(), |d| format!(" ({d})"));
            return Err(SignInError::Provider {
                provider: self.settings.name.clone(),
                error: format!("{error}{detail}"),
            });
        }
        let code = params
            .get("code")
            .ok_or_else(|| self.exchange_error("the provider sent back no code".to_owned()))?;
        let verifier = B64.encode(flow.verifier);
        let answer = self
            .token_request(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &redirect_uri(host)),
                ("code_verifier", &verifier),
            ])
            .await
            .map_err(|e| self.exchange_error(e))?;
        let id_token = answer
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| self.id_token_error("the token response has no id_token".to_owned()))?;
        let claims = self
            .id_token_claims(id_token)
            .await
            .map_err(|e| self.id_token_error(e))?;
        // OIDC Core §3.1.3.7: the nonce binds the ID token to this browser's round trip.
        let nonce_ok = claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| guard_config::secret::ct_eq(n.as_bytes(), B64.encode(flow.nonce).as_bytes()));
        if !nonce_ok {
            return Err(self.id_token_error("its nonce is not this sign-in's".to_owned()));
        }
        let (user, identity) = self
            .identity(&claims, refresh_token(&answer), now)
            .map_err(|e| self.id_token_error(e))?;
        self.settings
            .admits(identity.email.as_deref(), &identity.groups)
            .map_err(|why| SignInError::NotAllowed {
                user: user.clone(),
                why,
            })?;
        let mut session = Session::new(&user, SignIn::Oidc, self.fingerprint, now)
            .map_err(|_| self.exchange_error("no random numbers".to_owned()))?;
        session.identity = Some(Box::new(identity));
        tracing::info!(user, provider = %self.settings.name, "signed in with the identity provider");
        Ok(SignedIn {
            session,
            next: flow.next,
        })
    }

    /// Renews a session whose ID token ran out with its refresh token, re-reading the
    /// person's email and groups. Requests carrying the same session share one refresh (for
    /// [`REFRESH_REUSE`]).
    pub async fn refresh(&self, session: &Session) -> Refreshed {
        let token = session
            .identity
            .as_ref()
            .and_then(|i| i.refresh_token.clone())
            .ok_or(RefreshError::NoToken)?;
        // One refresh per cookie: requests carrying the same sealed session share it; a later
        // refresh of the renewed session (its refresh time moved on) asks the provider again.
        let identity = session.identity.as_deref().map_or(0, |i| i.refresh_at);
        let mut h = Sha256::new();
        h.update(token.as_bytes());
        h.update(identity.to_be_bytes());
        h.update(session.issued.to_be_bytes());
        let key: [u8; 32] = h.finalize().into();
        let cell = {
            let mut map = self.refreshes.lock().expect("refresh lock");
            let now = self.clock.instant();
            map.retain(|_, (at, _)| now.saturating_duration_since(*at) < REFRESH_REUSE);
            map.entry(key)
                .or_insert_with(|| (now, Arc::new(OnceCell::new())))
                .1
                .clone()
        };
        cell.get_or_init(|| self.refresh_once(session, token)).await.clone()
    }

    async fn refresh_once(&self, session: &Session, token: String) -> Refreshed {
        let now = self.clock.unix();
        let answer = self
            .token_request(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
            .await
            .map_err(RefreshError::Failed)?;
        let old = session.identity.as_deref().cloned().unwrap_or_default();
        // A provider that rotates refresh tokens sends a new one; else the old one stays good.
        let refresh_token = refresh_token(&answer).or(Some(token));
        let identity = match answer.get("id_token").and_then(Value::as_str) {
            Some(id_token) => {
                let claims = self.id_token_claims(id_token).await.map_err(RefreshError::Failed)?;
                let (user, identity) = self
                    .identity(&claims, refresh_token, now)
                    .map_err(RefreshError::Failed)?;
                if user != session.user {
                    return Err(RefreshError::Failed(format!(
                        "the refreshed ID token names {user:?}, not {:?}",
                        session.user
                    )));
                }
                identity
            }
            None => Identity {
                refresh_token,
                refresh_at: now
                    + answer
                        .get("expires_in")
                        .and_then(Value::as_u64)
                        .unwrap_or(DEFAULT_REFRESH_SECS),
                ..old
            },
        };
        self.settings
            .admits(identity.email.as_deref(), &identity.groups)
            .map_err(RefreshError::NotAllowed)?;
        tracing::info!(user = %session.user, "refreshed the single-sign-on session");
        Ok(Session {
            seen: now,
            identity: Some(Box::new(identity)),
            ..session.clone()
        })
    }

    /// Where sign-out sends a browser: the provider's `end_session_endpoint` (RP-initiated
    /// logout), returning to the site's root; `None` when the provider has none.
    pub fn end_session_url(&self, host: &str) -> Option<String> {
        let endpoints = self.endpoints.load_full()?;
        let end = endpoints.end_session.as_ref()?;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("post_logout_redirect_uri", &format!("https://{host}/"))
            .finish();
        let sep = if end.contains('?') { '&' } else { '?' };
        Some(format!("{end}{sep}{query}"))
    }

    /// The origin of the provider's sign-out endpoint, for the sign-out page's
    /// `form-action` (a form's redirect is held to it too).
    pub fn end_session_origin(&self) -> Option<String> {
        let endpoints = self.endpoints.load_full()?;
        let end = endpoints.end_session.as_ref()?;
        let (scheme, rest) = end.split_once("://")?;
        Some(format!("{scheme}://{}", rest.split('/').next()?))
    }

    /// A POST to the token endpoint, guard authenticating with its client secret
    /// (`client_secret_basic`); the answer's JSON, or why not.
    async fn token_request(&self, form: &[(&str, &str)]) -> Result<Map<String, Value>, String> {
        let endpoints = self.endpoints().await.map_err(|e| e.to_string())?;
        let client = self.post.as_ref().ok_or("no TLS roots to reach the provider with")?;
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        // RFC 6749 §2.3.1: the id and secret are form-encoded before they are joined.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = B64_STD.encode(format!(
            "{}:{}",
            enc(&self.settings.client_id),
            enc(self.settings.client_secret.expose())
        ));
        let req = hyper::Request::post(endpoints.token.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::AUTHORIZATION, format!("Basic {basic}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(TOKEN_TIMEOUT, client.request(req))
            .await
            .map_err(|_| format!("{} did not answer within {}s", endpoints.token, TOKEN_TIMEOUT.as_secs()))?
            .map_err(|e| format!("{}: {}", endpoints.token, guard_config::error::chain(&e)))?;
        let status = resp.status();
        let body = tokio::time::timeout(
            TOKEN_TIMEOUT,
            Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE).collect(),
        )
        .await
        .map_err(|_| "the token response did not arrive in time".to_owned())?
        .map_err(|e| format!("cannot read the token response: {e}"))?
        .to_bytes();
        let json: Map<String, Value> = serde_json::from_slice(&body).unwrap_or_default();
        if !status.is_success() {
            let error = json.get("error").and_then(Value::as_str).unwrap_or("no error code");
            let detail = json
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(format!("the token endpoint answered {status}: {error} {detail}")
                .trim_end()
                .to_owned());
        }
        if json.is_empty() {
            return Err("the token response is not a JSON object".to_owned());
        }
        Ok(json)
    }

    /// An ID token's claims, checked: signature, `iss`, `aud` (guard's client id), `exp` by
    /// [`Jwts`]; `iat` present and not in the future; `azp`, when there, guard's client id.
    async fn id_token_claims(&self, token: &str) -> Result<Map<String, Value>, String> {
        let claims = self.jwts.verify_claims(token).await.map_err(|e| e.to_string())?;
        let iat = claims.get("iat").and_then(Value::as_u64).ok_or("it has no iat")?;
        if iat > self.clock.unix().saturating_add(LEEWAY_SECS) {
            return Err("it was issued in the future (iat)".to_owned());
        }
        if let Some(azp) = claims.get("azp") {
            if azp.as_str() != Some(self.settings.client_id.as_str()) {
                return Err(format!("it was issued to {azp} (azp), not guard's client"));
            }
        }
        Ok(claims)
    }

    /// Who the claims name, and what the session keeps of them.
    fn identity(
        &self,
        claims: &Map<String, Value>,
        refresh_token: Option<String>,
        now: u64,
    ) -> Result<(String, Identity), String> {
        let s = &self.settings;
        let user = claims
            .get(&s.user_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                format!(
                    "it has no {:?} claim to name you by (auth.oidc.user_claim)",
                    s.user_claim
                )
            })?;
        // An address the provider says it did not verify admits no one by its domain.
        let verified = claims.get("email_verified").and_then(Value::as_bool) != Some(false);
        let email = claims
            .get("email")
            .and_then(Value::as_str)
            .filter(|_| verified)
            .map(str::to_owned);
        let mut groups: Vec<String> = match claims.get(&s.groups_claim) {
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        if groups.iter().map(|g| g.len() + 2).sum::<usize>() > MAX_GROUPS_BYTES {
            // Too many for a cookie: keep those the configuration names.
            let all = groups.len();
            groups.retain(|g| s.mentions_group(g));
            tracing::warn!(
                user,
                "{all} groups do not fit in a session cookie; kept the {} that auth.oidc names",
                groups.len()
            );
        }
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
        Ok((
            user.to_owned(),
            Identity {
                email,
                groups,
                refresh_token,
                refresh_at: exp.max(now + MIN_REFRESH_SECS),
            },
        ))
    }

    fn exchange_error(&self, reason: String) -> SignInError {
        SignInError::Exchange {
            provider: self.settings.name.clone(),
            reason,
        }
    }

    fn id_token_error(&self, reason: String) -> SignInError {
        SignInError::IdToken {
            provider: self.settings.name.clone(),
            reason,
        }
    }
}

fn refresh_token(answer: &Map<String, Value>) -> Option<String> {
    answer
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 2048)
        .map(str::to_owned)
}

/// The callback URL for a browser on `host`: guard always serves browsers over TLS.
fn redirect_uri(host: &str) -> String {
    format!("https://{host}{CALLBACK_PATH}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> Provider {
        let raw = guard_config::oidc::RawOidc {
            issuer: Some("https://login.example.com".into()),
            client_id: Some("guard".into()),
            client_secret_env: Some("S".into()),
            allowed_groups: Some(vec!["ml-team".into()]),
            ..Default::default()
        };
        let settings =
            guard_config::oidc::check(raw, "auth.oidc", std::path::Path::new("/"), |_| Some("s".into())).unwrap();
        Provider::new(&settings, Clock::system(), Counter::default())
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_identity_is_read_from_the_claims_with_care() {
        let p = provider();
        let (user, id) = p
            .identity(
                &claims(json!({"preferred_username": "alice", "email": "a@x.com", "groups": ["ml-team"], "exp": 2000})),
                Some("r".into()),
                1000,
            )
            .unwrap();
        assert_eq!(
            (user.as_str(), id.email.as_deref(), id.refresh_at),
            ("alice", Some("a@x.com"), 2000)
        );
        assert_eq!(
            (id.groups, id.refresh_token.as_deref()),
            (vec!["ml-team".to_owned()], Some("r"))
        );
        // An address the provider did not verify is no address; one group may come as a string;
        // an ID token already at its end is refreshed no sooner than MIN_REFRESH_SECS.
        let (_, id) = p
            .identity(
                &claims(json!({"preferred_username": "eve", "email": "ceo@x.com", "email_verified": false, "groups": "ml-team", "exp": 990})),
                None,
                1000,
            )
            .unwrap();
        assert_eq!(
            (id.email, id.groups, id.refresh_at),
            (None, vec!["ml-team".to_owned()], 1000 + MIN_REFRESH_SECS)
        );
        // No user claim: refused, naming the setting.
        let e = p.identity(&claims(json!({"sub": "x"})), None, 1000).unwrap_err();
        assert!(
            e.contains("\"preferred_username\"") && e.contains("auth.oidc.user_claim"),
            "{e}"
        );
        // More groups than a cookie holds: the ones the configuration names are kept.
        let many: Vec<String> = (0..500)
            .map(|i| format!("group-number-{i}"))
            .chain(["ml-team".to_owned()])
            .collect();
        let (_, id) = p
            .identity(
                &claims(json!({"preferred_username": "bob", "groups": many, "exp": 2000})),
                None,
                1000,
            )
            .unwrap();
        assert_eq!(id.groups, vec!["ml-team".to_owned()]);
    }

    #[test]
    fn a_flow_reads_back_only_what_it_writes() {
        let f = Flow {
            state: [1; LEN_STATE],
            nonce: [2; LEN_STATE],
            verifier: [3; LEN_VERIFIER],
            started: 1_780_000_000,
            next: "/#/experiments/1".to_owned(),
        };
        let b = f.encode();
        let back = Flow::decode(&b).unwrap();
        assert_eq!(
            (back.state, back.nonce, back.verifier, back.started, back.next.as_str()),
            (f.state, f.nonce, f.verifier, f.started, "/#/experiments/1")
        );
        assert!(Flow::decode(&b[..2 * LEN_STATE + LEN_VERIFIER + 7]).is_none());
    }
}
