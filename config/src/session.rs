//! Browser sign-in sessions: the sealed cookie a browser holds instead of sending a password,
//! and the key file that seals it, with its rotation. Stateless by design: a cookie carries
//! everything needed to check it, sealed with AES-256-GCM (ring's, the AEAD rustls already
//! builds on), so any guard that reads the same key file accepts any other's sessions, with no
//! database. Times are Unix seconds passed in by the caller, so tests move a clock instead of
//! sleeping.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::file_error::FileError;
use crate::fsutil::{lock_exclusive, write_atomic};
use crate::secret::ct_eq;

/// The cookie's name. `__Host-` makes the browser keep it only if it was set `Secure`, with
/// `Path=/` and no `Domain`: no other host, not even a sibling subdomain, can plant or read it.
pub const COOKIE_NAME: &str = "__Host-guard_session";

/// The key file's name in the state directory.
pub const KEY_FILE_NAME: &str = "session-keys.json";

/// Mode of the key file: whoever reads it can sign anyone in.
pub const KEY_FILE_MODE: u32 = 0o600;

/// The layout of a sealed cookie, first byte of its decoded form. Version 1 sealed JSON; 2 seals
/// the fixed layout of [`Session::encode`], half the size, opened without a parser on every
/// request a browser makes. A version-1 cookie is refused as malformed: its browser signs in again.
const COOKIE_VERSION: u8 = 2;
const KEY_ID_LEN: usize = 4;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Longest cookie value considered (browsers keep 4 KiB per cookie); longer is malformed.
const MAX_COOKIE_LEN: usize = 4096;
/// Binds a sealed value to this use and layout, so nothing else sealed under the key passes as
/// a session.
const AAD_CONTEXT: &[u8; 16] = b"guard-session-v2";

/// Binds a sealed single-sign-on flow (state, nonce, PKCE verifier) to that use.
const FLOW_CONTEXT: &[u8; 16] = b"guard-oidc-flow1";

/// How a user signed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignIn {
    /// guard's sign-in page, against the users file.
    Password,
    /// An OpenID Connect provider (`auth.oidc`): the session carries an [`Identity`].
    Oidc,
}

impl SignIn {
    fn code(self) -> u8 {
        match self {
            SignIn::Password => 1,
            SignIn::Oidc => 2,
        }
    }

    fn from_code(code: u8) -> Option<SignIn> {
        match code {
            1 => Some(SignIn::Password),
            2 => Some(SignIn::Oidc),
            _ => None,
        }
    }
}

/// What an OpenID provider said of a person at sign-in (or at the last refresh), carried in
/// their session so no request needs the provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The `email` claim, when the provider gave one it did not mark unverified.
    pub email: Option<String>,
    /// The groups claim's values.
    pub groups: Vec<String>,
    /// The provider's refresh token, when it gave one.
    pub refresh_token: Option<String>,
    /// When the ID token expired: the provider is asked again (refresh) from then on.
    pub refresh_at: u64,
}

/// A session's fingerprint of the user's stored password hash: see [`credential_fingerprint`].
pub type Fingerprint = [u8; FINGERPRINT_LEN];

/// 16 bytes of SHA-256: a collision would need 2^64 tries against a hash the cookie's holder
/// never sees.
const FINGERPRINT_LEN: usize = 16;

/// Length of a CSRF token's random part.
const CSRF_LEN: usize = 16;

/// What a session cookie says, once opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The user it signs in.
    pub user: String,
    /// How they signed in.
    pub method: SignIn,
    /// When the user signed in: the absolute lifetime counts from here.
    pub issued: u64,
    /// When the cookie was last renewed: the idle timeout counts from here.
    pub seen: u64,
    /// [`credential_fingerprint`] of the user's stored hash at sign-in: a changed password (or
    /// a deleted and re-added user) no longer matches, which ends the session.
    pub credential: Fingerprint,
    /// This session's CSRF secret, for the forms that act on it (sign-out, change password):
    /// see [`Session::csrf_token`].
    pub csrf: [u8; CSRF_LEN],
    /// What the provider said, for a [`SignIn::Oidc`] session; `None` for any other.
    pub identity: Option<Box<Identity>>,
}

/// Bytes of [`Session::encode`] before the user name: method, issued, seen, credential, csrf.
const FIXED_LEN: usize = 1 + 8 + 8 + FINGERPRINT_LEN + CSRF_LEN;

impl Session {
    /// A new session for `user`, signed in now with a stored hash whose fingerprint is
    /// `credential`.
    pub fn new(user: &str, method: SignIn, credential: Fingerprint, now: u64) -> Result<Session, getrandom::Error> {
        let mut csrf = [0u8; CSRF_LEN];
        getrandom::fill(&mut csrf)?;
        Ok(Session {
            user: user.to_owned(),
            method,
            issued: now,
            seen: now,
            credential,
            csrf,
            identity: None,
        })
    }

    /// The CSRF token the session's forms carry (base64url).
    pub fn csrf_token(&self) -> String {
        B64.encode(self.csrf)
    }

    /// The plaintext a cookie seals: the fixed fields in order (times big-endian), then, for a
    /// password session, the user name, which runs to the end; for a single-sign-on session the
    /// user name and the [`Identity`], each text length-prefixed (see [`Tail`]).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.user.len() + TAG_LEN);
        out.push(self.method.code());
        out.extend_from_slice(&self.issued.to_be_bytes());
        out.extend_from_slice(&self.seen.to_be_bytes());
        out.extend_from_slice(&self.credential);
        out.extend_from_slice(&self.csrf);
        match (self.method, &self.identity) {
            (SignIn::Oidc, Some(id)) => {
                put_text(&mut out, &self.user);
                put_text(&mut out, id.email.as_deref().unwrap_or_default());
                put_len(&mut out, id.groups.len());
                for g in &id.groups {
                    put_text(&mut out, g);
                }
                put_text(&mut out, id.refresh_token.as_deref().unwrap_or_default());
                out.extend_from_slice(&id.refresh_at.to_be_bytes());
            }
            _ => out.extend_from_slice(self.user.as_bytes()),
        }
        out
    }

    /// [`Session::encode`] read back; `None` for anything it does not write.
    fn decode(bytes: &[u8]) -> Option<Session> {
        let (fixed, tail) = bytes.split_at_checked(FIXED_LEN)?;
        let (method, rest) = fixed.split_first()?;
        let (issued, rest) = rest.split_at(8);
        let (seen, rest) = rest.split_at(8);
        let (credential, csrf) = rest.split_at(FINGERPRINT_LEN);
        let method = SignIn::from_code(*method)?;
        let (user, identity) = match method {
            SignIn::Password => (std::str::from_utf8(tail).ok()?.to_owned(), None),
            SignIn::Oidc => {
                let mut t = Tail(tail);
                let user = t.text()?;
                let email = Some(t.text()?).filter(|e| !e.is_empty());
                let groups = (0..t.len()?).map(|_| t.text()).collect::<Option<Vec<_>>>()?;
                let refresh_token = Some(t.text()?).filter(|r| !r.is_empty());
                let refresh_at = u64::from_be_bytes(t.0.try_into().ok()?);
                let identity = Identity {
                    email,
                    groups,
                    refresh_token,
                    refresh_at,
                };
                (user, Some(Box::new(identity)))
            }
        };
        if user.is_empty() {
            return None;
        }
        Some(Session {
            user,
            method,
            issued: u64::from_be_bytes(issued.try_into().ok()?),
            seen: u64::from_be_bytes(seen.try_into().ok()?),
            credential: credential.try_into().ok()?,
            csrf: csrf.try_into().ok()?,
            identity,
        })
    }
}

/// A length as two bytes, big-endian; callers keep texts under 64 KiB (a cookie holds 4).
fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    let text = &text.as_bytes()[..text.len().min(usize::from(u16::MAX))];
    put_len(out, text.len());
    out.extend_from_slice(text);
}

/// The rest of a sealed single-sign-on session, read front to back.
struct Tail<'a>(&'a [u8]);

impl Tail<'_> {
    fn len(&mut self) -> Option<usize> {
        let (len, rest) = self.0.split_at_checked(2)?;
        self.0 = rest;
        Some(usize::from(u16::from_be_bytes(len.try_into().ok()?)))
    }

    fn text(&mut self) -> Option<String> {
        let len = self.len()?;
        let (text, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        String::from_utf8(text.to_vec()).ok()
    }
}

/// How long sessions live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// From sign-in, however active the session is.
    pub absolute: u64,
    /// Without a request.
    pub idle: u64,
}

impl Lifetimes {
    /// Whether `session` is within both at `now`: [`Refused::Expired`] past the absolute
    /// lifetime, else [`Refused::Idle`] past the idle timeout.
    pub fn check(&self, session: &Session, now: u64) -> Result<(), Refused> {
        if now >= session.issued.saturating_add(self.absolute) {
            return Err(Refused::Expired);
        }
        if now >= session.seen.saturating_add(self.idle) {
            return Err(Refused::Idle);
        }
        Ok(())
    }
}

/// Why a cookie does not sign anyone in. The proxy logs these at debug level: a browser with a
/// stale cookie is routine, not an attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not base64url, too short or too long, or of a layout version this guard does not write.
    #[error("the session cookie is not one guard wrote")]
    Malformed,
    /// Sealed under a key this key file does not hold, or one whose time after rotation is up.
    #[error("the session cookie's key is unknown or retired")]
    UnknownKey,
    /// The AEAD tag does not match: changed in transit or forged.
    #[error("the session cookie failed its integrity check")]
    Tampered,
    /// Signed in longer ago than the absolute lifetime.
    #[error("the session reached its absolute lifetime")]
    Expired,
    /// No request for the idle timeout.
    #[error("the session was idle too long")]
    Idle,
    /// Checked by the caller against the users file: see [`Session::credential`].
    #[error("the session's user was removed or changed their password")]
    CredentialChanged,
}

/// The fingerprint of a stored password hash that a session carries. One-way, so the cookie's
/// holder learns nothing of the hash even if the sealing were broken. The users file keeps each
/// user's ([`crate::htpasswd::Entry::fingerprint`]), so a request pays a compare, not a hash.
pub fn credential_fingerprint(stored_hash: &str) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(b"guard-session-credential\0");
    h.update(stored_hash.as_bytes());
    let mut out = [0u8; FINGERPRINT_LEN];
    out.copy_from_slice(&h.finalize()[..FINGERPRINT_LEN]);
    out
}

/// Whether a session's fingerprint matches the user's current one, in constant time.
pub fn credential_matches(session: &Session, current: &Fingerprint) -> bool {
    ct_eq(&session.credential, current)
}

/// A fresh CSRF token (128 random bits, base64url), for a form that is not tied to a session
/// yet: the sign-in page's.
pub fn new_csrf_token() -> Result<String, getrandom::Error> {
    random_b64::<16>()
}

fn random_b64<const N: usize>() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(B64.encode(bytes))
}

/// One key of the file.
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    /// 8 hex digits, written into every cookie the key seals.
    id: String,
    /// 32 bytes, base64url.
    key: String,
    created: u64,
    /// Set when a newer key replaced this one: cookies it sealed are accepted until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accept_until: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    /// Newest first; the first seals, all accepted ones open.
    keys: Vec<StoredKey>,
}

/// A key ready to use.
struct Key {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
    accept_until: Option<u64>,
}

/// The keys of the key file, loaded: the newest seals, every one still accepted opens.
pub struct SessionKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: the keys themselves are secrets.
        let ids: Vec<String> = self.keys.iter().map(|k| hex(&k.id)).collect();
        f.debug_struct("SessionKeys").field("ids", &ids).finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A problem with the key file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, writing or locking it failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// Not JSON of the expected shape; the source names line and column.
    #[error("{}: invalid session key file", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's error, with line and column.
        source: serde_json::Error,
    },
    /// A key that is not what guard writes.
    #[error("{}: key {index}: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Its place in `keys`, from 0 (the newest).
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `keys` is empty: nothing could seal a session.
    #[error("{}: no session keys", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The OS random source failed.
    #[error("cannot make a session key")]
    Random(#[source] getrandom::Error),
}

impl SessionKeys {
    /// Loads the key file at `path`, creating it with one fresh key if it does not exist.
    pub fn load_or_create(path: &Path, now: u64) -> Result<SessionKeys, KeyFileError> {
        if let Some(file) = read(path)? {
            return SessionKeys::from_file(path, &file);
        }
        let _lock = lock_exclusive(path).map_err(|source| FileError::Lock {
            path: path.to_path_buf(),
            source,
        })?;
        // Another guard sharing the file may have made it while this one waited for the lock.
        let file = match read(path)? {
            Some(file) => file,
            None => {
                let file = KeyFile {
                    keys: vec![new_key(now)?],
                };
                write(path, &file)?;
                file
            }
        };
        SessionKeys::from_file(path, &file)
    }

    /// Loads an existing key file (a reload after another guard rotated it).
    pub fn load(path: &Path) -> Result<SessionKeys, KeyFileError> {
        match read(path)? {
            Some(file) => SessionKeys::from_file(path, &file),
            None => Err(FileError::NotFound {
                path: path.to_path_buf(),
                what: "session key file",
            }
            .into()),
        }
    }

    fn from_file(path: &Path, file: &KeyFile) -> Result<SessionKeys, KeyFileError> {
        let bad = |index, reason| KeyFileError::BadKey {
            path: path.to_path_buf(),
            index,
            reason,
        };
        if file.keys.is_empty() {
            return Err(KeyFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        let mut keys = Vec::with_capacity(file.keys.len());
        for (index, k) in file.keys.iter().enumerate() {
            let id = parse_id(&k.id).ok_or_else(|| bad(index, "id is not 8 hex digits"))?;
            let raw = B64
                .decode(&k.key)
                .ok()
                .filter(|raw| raw.len() == KEY_LEN)
                .ok_or_else(|| bad(index, "key is not 32 bytes of base64url"))?;
            let aead = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| bad(index, "key is not a valid AES-256 key"))?;
            if index == 0 && k.accept_until.is_some() {
                return Err(bad(0, "the newest key is marked retired"));
            }
            keys.push(Key {
                id,
                aead: LessSafeKey::new(aead),
                accept_until: k.accept_until,
            });
        }
        Ok(SessionKeys { keys })
    }

    /// Seals `session` into a cookie value under the newest key.
    pub fn seal(&self, session: &Session) -> Result<String, getrandom::Error> {
        self.seal_bytes(AAD_CONTEXT, session.encode())
    }

    /// Opens a cookie value: the session it holds if it was sealed by one of these keys and is
    /// within its lifetimes at `now`. The caller still checks the credential against the users
    /// file ([`credential_matches`]).
    pub fn open(&self, cookie: &str, now: u64, lifetimes: Lifetimes) -> Result<Session, Refused> {
        let session = self.open_unchecked(cookie, now)?;
        lifetimes.check(&session, now)?;
        Ok(session)
    }

    /// Opens a cookie value without checking its lifetimes: for a single-sign-on session, which
    /// the provider may renew at its absolute end. The caller checks them
    /// ([`Lifetimes::check`]).
    pub fn open_unchecked(&self, cookie: &str, now: u64) -> Result<Session, Refused> {
        let plain = self.open_bytes(AAD_CONTEXT, cookie, now)?;
        // Sealed by a guard key yet not a session: treat it as tampered, never trust a part.
        Session::decode(&plain).ok_or(Refused::Tampered)
    }

    /// Seals the short-lived state of a single-sign-on round trip (the browser holds it in a
    /// cookie until the provider sends it back): no other use of the key opens it.
    pub fn seal_flow(&self, plain: Vec<u8>) -> Result<String, getrandom::Error> {
        self.seal_bytes(FLOW_CONTEXT, plain)
    }

    /// [`SessionKeys::seal_flow`]'s value opened; the caller checks its age.
    pub fn open_flow(&self, cookie: &str, now: u64) -> Result<Vec<u8>, Refused> {
        self.open_bytes(FLOW_CONTEXT, cookie, now)
    }

    fn seal_bytes(&self, context: &[u8; 16], mut body: Vec<u8>) -> Result<String, getrandom::Error> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        // A random 96-bit nonce: collisions stay negligible for well over 2^30 seals per key,
        // and a rotation starts a new key (renewals are rate-limited by the caller).
        getrandom::fill(&mut nonce)?;
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + body.len() + TAG_LEN);
        out.push(COOKIE_VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        key.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(context, &key.id), &mut body)
            .expect("AES-GCM seals any length a cookie has");
        out.extend_from_slice(&body);
        Ok(B64.encode(out))
    }

    fn open_bytes(&self, context: &[u8; 16], cookie: &str, now: u64) -> Result<Vec<u8>, Refused> {
        if cookie.len() > MAX_COOKIE_LEN {
            return Err(Refused::Malformed);
        }
        let mut raw = B64.decode(cookie).map_err(|_| Refused::Malformed)?;
        if raw.len() < 1 + KEY_ID_LEN + NONCE_LEN + TAG_LEN || raw[0] != COOKIE_VERSION {
            return Err(Refused::Malformed);
        }
        let id: [u8; KEY_ID_LEN] = raw[1..1 + KEY_ID_LEN].try_into().expect("length checked");
        let nonce: [u8; NONCE_LEN] = raw[1 + KEY_ID_LEN..1 + KEY_ID_LEN + NONCE_LEN]
            .try_into()
            .expect("length checked");
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id && k.accept_until.is_none_or(|until| now < until))
            .ok_or(Refused::UnknownKey)?;
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                aad(context, &id),
                &mut raw[1 + KEY_ID_LEN + NONCE_LEN..],
            )
            .map_err(|_| Refused::Tampered)?;
        Ok(plain.to_vec())
    }

    /// The id of the key that seals, for logs.
    pub fn current_id(&self) -> String {
        hex(&self.keys[0].id)
    }
}

/// Replaces the sealing key with a new one. The old key keeps opening cookies until
/// `now + keep_old` (give it the absolute session lifetime, so no session is cut short); keys
/// past their time are dropped. Returns the new key's id. Locked, so two guards rotating at once
/// cannot lose a key.
pub fn rotate(path: &Path, now: u64, keep_old: u64) -> Result<String, KeyFileError> {
    let _lock = lock_exclusive(path).map_err(|source| FileError::Lock {
        path: path.to_path_buf(),
        source,
    })?;
    let mut file = read(path)?.ok_or_else(|| FileError::NotFound {
        path: path.to_path_buf(),
        what: "session key file",
    })?;
    // Checks the file before changing it.
    SessionKeys::from_file(path, &file)?;
    for k in &mut file.keys {
        let until = now.saturating_add(keep_old);
        k.accept_until = Some(k.accept_until.map_or(until, |u| u.min(until)));
    }
    file.keys.retain(|k| k.accept_until.is_some_and(|u| u > now));
    let new = new_key(now)?;
    let id = new.id.clone();
    file.keys.insert(0, new);
    write(path, &file)?;
    Ok(id)
}

fn new_key(now: u64) -> Result<StoredKey, KeyFileError> {
    let mut id = [0u8; KEY_ID_LEN];
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut id).map_err(KeyFileError::Random)?;
    getrandom::fill(&mut key).map_err(KeyFileError::Random)?;
    Ok(StoredKey {
        id: hex(&id),
        key: B64.encode(key),
        created: now,
        accept_until: None,
    })
}

fn parse_id(text: &str) -> Option<[u8; KEY_ID_LEN]> {
    if text.len() != 2 * KEY_ID_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; KEY_ID_LEN];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

fn aad(context: &[u8; 16], id: &[u8; KEY_ID_LEN]) -> Aad<[u8; 16 + KEY_ID_LEN]> {
    let mut a = [0u8; 16 + KEY_ID_LEN];
    a[..16].copy_from_slice(context);
    a[16..].copy_from_slice(id);
    Aad::from(a)
}

fn read(path: &Path) -> Result<Option<KeyFile>, KeyFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FileError::Read {
                path: path.to_path_buf(),
                source,
            }
            .into())
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| KeyFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

fn write(path: &Path, file: &KeyFile) -> Result<(), KeyFileError> {
    let mut text = serde_json::to_string_pretty(file).expect("the key file serialises");
    text.push('\n');
    write_atomic(path, text.as_bytes(), KEY_FILE_MODE).map_err(|source| {
        FileError::Write {
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;
    use std::os::unix::fs::PermissionsExt;

    const NOW: u64 = 1_780_000_000;
    const LIFE: Lifetimes = Lifetimes {
        absolute: 12 * 3600,
        idle: 3600,
    };

    fn session(now: u64) -> Session {
        Session::new("alice", SignIn::Password, credential_fingerprint("$2y$05$stored"), now).unwrap()
    }

    fn keys(dir: &TestDir) -> (PathBuf, SessionKeys) {
        let path = dir.path().join(KEY_FILE_NAME);
        let keys = SessionKeys::load_or_create(&path, NOW).unwrap();
        (path, keys)
    }

    #[test]
    fn a_sealed_session_opens_to_itself_and_shows_nothing_in_the_clear() {
        let dir = TestDir::new();
        let (path, keys) = keys(&dir);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let s = session(NOW);
        let cookie = keys.seal(&s).unwrap();
        assert!(cookie.len() < 400, "{} bytes", cookie.len());
        assert!(!cookie.contains("alice") && !B64.decode(&cookie).unwrap().windows(5).any(|w| w == b"alice"));
        assert_eq!(keys.open(&cookie, NOW + 10, LIFE), Ok(s.clone()));
        // Two seals of one session differ (fresh nonce), both open.
        let again = keys.seal(&s).unwrap();
        assert_ne!(cookie, again);
        assert_eq!(keys.open(&again, NOW, LIFE), Ok(s));
    }

    #[test]
    fn the_sealed_layout_reads_back_only_what_it_writes() {
        let s = session(NOW);
        let bytes = s.encode();
        assert_eq!(Session::decode(&bytes), Some(s.clone()));
        // Every field is there: any shorter plaintext, no user, an unknown method or a user
        // that is not UTF-8 is no session.
        assert_eq!(Session::decode(&bytes[..FIXED_LEN]), None);
        assert_eq!(Session::decode(&bytes[..10]), None);
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(Session::decode(&other), None);
        let mut other = bytes[..FIXED_LEN].to_vec();
        other.push(0xff);
        assert_eq!(Session::decode(&other), None);
        // The cookie a browser sends on every request stays small: about half JSON's.
        let dir = TestDir::new();
        let (_, keys) = keys(&dir);
        let cookie = keys.seal(&s).unwrap();
        assert!(cookie.len() <= 120, "{} bytes: {cookie}", cookie.len());
    }

    #[test]
    fn a_single_sign_on_session_carries_its_identity_and_a_flow_is_no_session() {
        let mut s = Session::new("alice", SignIn::Oidc, credential_fingerprint("oidc"), NOW).unwrap();
        s.identity = Some(Box::new(Identity {
            email: Some("alice@example.com".to_owned()),
            groups: vec!["ml-team".to_owned(), "ünïcode group".to_owned()],
            refresh_token: Some("r".repeat(43)),
            refresh_at: NOW + 3600,
        }));
        let bytes = s.encode();
        assert_eq!(Session::decode(&bytes), Some(s.clone()));
        // Cut anywhere, it is no session (every part is length-prefixed, the time fixed).
        for cut in FIXED_LEN..bytes.len() {
            assert_eq!(Session::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let none = Session {
            identity: Some(Box::default()),
            ..s.clone()
        };
        assert_eq!(Session::decode(&none.encode()), Some(none));
        let dir = TestDir::new();
        let (_, keys) = keys(&dir);
        let cookie = keys.seal(&s).unwrap();
        assert_eq!(keys.open(&cookie, NOW, LIFE), Ok(s));
        // A flow's sealed state never opens as a session, nor a session as a flow.
        let plain = session(NOW).encode();
        let flow = keys.seal_flow(plain.clone()).unwrap();
        assert_eq!(keys.open(&flow, NOW, LIFE), Err(Refused::Tampered));
        assert_eq!(keys.open_flow(&cookie, NOW), Err(Refused::Tampered));
        assert_eq!(keys.open_flow(&flow, NOW).unwrap(), plain);
    }

    #[test]
    fn tampered_truncated_and_foreign_cookies_are_refused() {
        let dir = TestDir::new();
        let (_, keys) = keys(&dir);
        let cookie = keys.seal(&session(NOW)).unwrap();
        let mut raw = B64.decode(&cookie).unwrap();
        // Every byte after the version matters: the key id, the nonce, the sealed body, the tag.
        for i in 1..raw.len() {
            raw[i] ^= 0x01;
            let got = keys.open(&B64.encode(&raw), NOW, LIFE);
            assert!(
                matches!(got, Err(Refused::Tampered | Refused::UnknownKey)),
                "flipped byte {i}: {got:?}"
            );
            raw[i] ^= 0x01;
        }
        // Another layout version, older (JSON) or newer, is not read.
        for version in [1, COOKIE_VERSION + 1] {
            raw[0] = version;
            assert_eq!(keys.open(&B64.encode(&raw), NOW, LIFE), Err(Refused::Malformed));
        }
        assert_eq!(keys.open(&cookie[..20], NOW, LIFE), Err(Refused::Malformed));
        assert_eq!(keys.open("not base64!", NOW, LIFE), Err(Refused::Malformed));
        assert_eq!(keys.open(&"A".repeat(5000), NOW, LIFE), Err(Refused::Malformed));
        // Another guard's key file: its cookies mean nothing here.
        let other = TestDir::new();
        let (_, theirs) = super::tests::keys(&other);
        let foreign = theirs.seal(&session(NOW)).unwrap();
        assert_eq!(keys.open(&foreign, NOW, LIFE), Err(Refused::UnknownKey));
    }

    #[test]
    fn a_session_ends_at_its_absolute_lifetime_and_when_idle() {
        let dir = TestDir::new();
        let (_, keys) = keys(&dir);
        let mut s = session(NOW);
        let cookie = keys.seal(&s).unwrap();
        assert!(keys.open(&cookie, NOW + 3599, LIFE).is_ok());
        assert_eq!(keys.open(&cookie, NOW + 3600, LIFE), Err(Refused::Idle));
        // Renewed as it is used, it lives to the absolute lifetime and not a second longer.
        s.seen = NOW + 12 * 3600 - 10;
        let renewed = keys.seal(&s).unwrap();
        assert!(keys.open(&renewed, NOW + 12 * 3600 - 1, LIFE).is_ok());
        assert_eq!(keys.open(&renewed, NOW + 12 * 3600, LIFE), Err(Refused::Expired));
    }

    #[test]
    fn a_changed_password_no_longer_matches_the_session() {
        let s = session(NOW);
        assert!(credential_matches(&s, &credential_fingerprint("$2y$05$stored")));
        assert!(!credential_matches(&s, &credential_fingerprint("$2y$05$changed")));
        assert!(!credential_fingerprint("$2y$05$stored")
            .windows(6)
            .any(|w| w == b"stored"));
    }

    #[test]
    fn two_guards_sharing_the_key_file_open_each_others_cookies() {
        let dir = TestDir::new();
        let (path, first) = keys(&dir);
        let second = SessionKeys::load_or_create(&path, NOW + 5).unwrap();
        assert_eq!(first.current_id(), second.current_id());
        let cookie = first.seal(&session(NOW)).unwrap();
        assert!(second.open(&cookie, NOW, LIFE).is_ok());
    }

    #[test]
    fn rotation_keeps_the_old_key_for_one_lifetime_then_drops_it() {
        let dir = TestDir::new();
        let (path, before) = keys(&dir);
        let old_cookie = before.seal(&session(NOW)).unwrap();
        let new_id = rotate(&path, NOW + 100, LIFE.absolute).unwrap();
        let after = SessionKeys::load(&path).unwrap();
        assert_eq!(after.current_id(), new_id);
        assert_ne!(new_id, before.current_id());
        // The old cookie still opens (idle renewed), until the old key's time is up.
        assert!(after.open(&old_cookie, NOW + 200, LIFE).is_ok());
        let forever = Lifetimes {
            absolute: u64::MAX,
            idle: u64::MAX,
        };
        assert!(after.open(&old_cookie, NOW + 100 + LIFE.absolute - 1, forever).is_ok());
        assert_eq!(
            after.open(&old_cookie, NOW + 100 + LIFE.absolute, forever),
            Err(Refused::UnknownKey)
        );
        // New cookies are sealed under the new key and open everywhere the file is read.
        let new_cookie = after.seal(&session(NOW + 200)).unwrap();
        assert_eq!(B64.decode(&new_cookie).unwrap()[1..5], parse_id(&new_id).unwrap());
        // A second rotation after that drops the old key from the file.
        rotate(&path, NOW + 100 + LIFE.absolute + 1, LIFE.absolute).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&format!("\"{}\"", before.current_id())), "{text}");
        assert_eq!(SessionKeys::load(&path).unwrap().keys.len(), 2);
    }

    #[test]
    fn a_broken_key_file_is_an_error_naming_it_and_the_key() {
        let dir = TestDir::new();
        let path = dir.path().join(KEY_FILE_NAME);
        std::fs::write(&path, r#"{"keys":[{"id":"zz","key":"AAAA","created":1}]}"#).unwrap();
        let e = SessionKeys::load(&path).unwrap_err().to_string();
        assert_eq!(e, format!("{}: key 0: id is not 8 hex digits", path.display()));
        std::fs::write(&path, r#"{"keys":[{"id":"0011aabb","key":"AAAA","created":1}]}"#).unwrap();
        let e = SessionKeys::load_or_create(&path, NOW).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}: key 0: key is not 32 bytes of base64url", path.display())
        );
        std::fs::write(&path, r#"{"keys":[]}"#).unwrap();
        assert_eq!(
            SessionKeys::load(&path).unwrap_err().to_string(),
            format!("{}: no session keys", path.display())
        );
        std::fs::write(&path, "{").unwrap();
        assert!(SessionKeys::load(&path)
            .unwrap_err()
            .to_string()
            .contains("invalid session key file"));
        // Nothing was overwritten by the failed loads.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{");
        let missing = dir.path().join("nope.json");
        assert_eq!(
            SessionKeys::load(&missing).unwrap_err().to_string(),
            format!("{}: session key file not found", missing.display())
        );
        assert!(rotate(&missing, NOW, 10).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let dir = TestDir::new();
        let (path, keys) = keys(&dir);
        let shown = format!("{keys:?}");
        let file: KeyFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(shown.contains(&file.keys[0].id));
        assert!(!shown.contains(&file.keys[0].key), "{shown}");
    }
}
