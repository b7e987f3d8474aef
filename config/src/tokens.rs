//! Bearer tokens: generating them, the JSON tokens file that stores only their SHA-256, the
//! create/list/revoke commands, and the lookup the proxy does for each `Authorization: Bearer`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::file_error::{self, FileError};
use crate::fsutil::FileLockGuard;
use crate::htpasswd::{validate_name, InvalidName};
use crate::roles::Role;
use crate::secret::{ct_eq, Secret};

/// Every token starts with this, so a leaked one is recognisable (and greppable by secret
/// scanners) as guard's.
pub const TOKEN_PREFIX: &str = "grd_";

/// Random bytes per token: 256 bits, so the unsalted SHA-256 stored is as good as a slow hash.
const TOKEN_BYTES: usize = 32;

/// The tokens file format this code reads and writes.
const FILE_VERSION: u64 = 1;

/// Mode of the tokens file.
pub const TOKENS_FILE_MODE: u32 = 0o600;

/// SHA-256 of a token's full text (prefix included): all the file keeps of a token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a token as presented.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Lowercase hex, as stored in the file.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<TokenHash> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(TokenHash(out))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

/// A new token: `grd_` and 32 random bytes in unpadded base64url (47 characters in all, safe in
/// a header, a URL or an environment variable), and its hash for the file.
pub fn generate() -> Result<(Secret, TokenHash), TokensError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(TokensError::Random)?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = TokenHash::of(&token);
    Ok((Secret::new(token), hash))
}

/// The file as stored. Unknown keys are errors, so a typo is never silently ignored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    version: u64,
    tokens: Vec<TokenRecord>,
}

/// Read first, leniently, so a file from a newer guard gets "unsupported version" rather than
/// a complaint about some key this version does not know.
#[derive(Deserialize)]
struct VersionOnly {
    version: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRecord {
    name: String,
    sha256: String,
    /// Unix seconds.
    created: u64,
    /// Unix seconds; `null` for never.
    expires: Option<u64>,
    /// Unix seconds of revocation; `null` while not revoked.
    revoked: Option<u64>,
    /// What the token may do; absent: the site's default role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
}

/// What `token list` shows: never the hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's name.
    pub name: String,
    /// Unix seconds of creation.
    pub created: u64,
    /// Unix seconds of expiry, if it expires.
    pub expires: Option<u64>,
    /// Unix seconds of revocation, if revoked.
    pub revoked: Option<u64>,
    /// The role it was created with; `None`: the site's default.
    pub role: Option<Role>,
}

/// Where a token stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    /// Accepted.
    Active,
    /// Past its expiry time.
    Expired,
    /// Revoked (whether or not also expired).
    Revoked,
}

impl TokenInfo {
    /// The token's status at `now` (Unix seconds). A token expires at its `expires` second.
    pub fn status(&self, now: u64) -> TokenStatus {
        if self.revoked.is_some() {
            TokenStatus::Revoked
        } else if self.expires.is_some_and(|e| now >= e) {
            TokenStatus::Expired
        } else {
            TokenStatus::Active
        }
    }
}

/// The result of checking a presented token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A known, active token.
    Valid {
        /// Its name, for logs and the upstream.
        name: &'a str,
        /// Its role, if it was given one.
        role: Option<Role>,
    },
    /// A known token past its expiry.
    Expired {
        /// Its name.
        name: &'a str,
    },
    /// A known, revoked token.
    Revoked {
        /// Its name.
        name: &'a str,
    },
    /// Not a token in the file.
    Unknown,
}

/// The loaded tokens file, indexed by hash for the proxy.
#[derive(Clone, Debug, Default)]
pub struct TokenSet {
    tokens: Vec<(TokenInfo, TokenHash)>,
    by_hash: HashMap<TokenHash, usize>,
}

impl TokenSet {
    /// Checks a presented token at `now` (Unix seconds).
    pub fn lookup(&self, presented: &str, now: u64) -> Lookup<'_> {
        let digest = TokenHash::of(presented);
        // Looking up a SHA-256 of a 256-bit secret leaks nothing useful through timing; the
        // final constant-time comparison keeps the match itself free of early exits.
        let Some((info, stored)) = self.by_hash.get(&digest).map(|&i| &self.tokens[i]) else {
            return Lookup::Unknown;
        };
        if !ct_eq(stored.as_bytes(), digest.as_bytes()) {
            return Lookup::Unknown;
        }
        let name = info.name.as_str();
        match info.status(now) {
            TokenStatus::Active => Lookup::Valid { name, role: info.role },
            TokenStatus::Expired => Lookup::Expired { name },
            TokenStatus::Revoked => Lookup::Revoked { name },
        }
    }

    /// Every token in file order.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenInfo> + '_ {
        self.tokens.iter().map(|(info, _)| info)
    }

    /// Number of tokens in the file, whatever their status.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when the file has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Why a tokens-file command or load failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokensError {
    /// Reading, writing or locking the file failed, or it does not exist
    /// ([`FileError::NotFound`]).
    #[error(transparent)]
    File(#[from] FileError),
    /// Not JSON of the expected shape; the source names line and column.
    #[error("{}: invalid tokens file", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's error, with line and column.
        source: serde_json::Error,
    },
    /// A `version` this guard does not know.
    #[error("{}: unsupported tokens file version {version} (this guard reads version {FILE_VERSION})", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u64,
    },
    /// A record that parses but makes no sense.
    #[error("{}: token {name:?}: {reason}", path.display())]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// The token's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The new token's name breaks the naming rules.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// `create_token` with the name of an active token.
    #[error("{}: token {name:?} already exists and is active; revoke it first or pick another name", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// `revoke_token` for a name not in the file.
    #[error("{}: no token {name:?}", path.display())]
    UnknownToken {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// `revoke_token` for a name whose tokens are all revoked.
    #[error("{}: token {name:?} is already revoked", path.display())]
    AlreadyRevoked {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// The requested lifetime is zero or overflows the clock.
    #[error("invalid token lifetime: {0}")]
    Lifetime(&'static str),
    /// The operating system gave no randomness.
    #[error("cannot generate a random token")]
    Random(#[source] getrandom::Error),
}

impl TokensError {
    /// Whether the operator can fix this by changing the command or the file (a refused name, a
    /// damaged file: exit 2), rather than I/O or the random source failing (exit 1).
    pub fn is_usage(&self) -> bool {
        match self {
            TokensError::File(e) => e.is_not_found(),
            TokensError::Random { .. } => false,
            _ => true,
        }
    }
}

/// Checks a name for a new token: the rules of user names
/// ([`crate::htpasswd::validate_username`]), so names are safe in logs and on a terminal.
pub fn validate_token_name(name: &str) -> Result<(), InvalidName> {
    validate_name(name, "token name")
}

/// Creates a token called `name` with `role` (`None`: the site's default), stores its hash,
/// and returns the token: the only time it is ever available. `expires_in` of `None` means it never expires; `now` is Unix seconds.
/// Refuses the name of a token that is still active (an expired or revoked name may be reused).
pub fn create_token(
    path: &Path,
    name: &str,
    role: Option<Role>,
    expires_in: Option<Duration>,
    now: u64,
) -> Result<Secret, TokensError> {
    validate_token_name(name)?;
    let expires = match expires_in {
        None => None,
        Some(d) if d.as_secs() == 0 => return Err(TokensError::Lifetime("it must be at least one second")),
        Some(d) => Some(
            now.checked_add(d.as_secs())
                .ok_or(TokensError::Lifetime("it is too long"))?,
        ),
    };
    let _lock = lock(path)?;
    let mut file = read_file(path)?.unwrap_or_else(|| TokensFile {
        version: FILE_VERSION,
        tokens: Vec::new(),
    });
    let active = |r: &TokenRecord| info_of(r).status(now) == TokenStatus::Active;
    if file.tokens.iter().any(|r| r.name == name && active(r)) {
        return Err(TokensError::Exists {
            path: path.to_path_buf(),
            name: name.to_owned(),
        });
    }
    let (token, hash) = generate()?;
    file.tokens.push(TokenRecord {
        name: name.to_owned(),
        sha256: hash.to_hex(),
        created: now,
        expires,
        revoked: None,
        role,
    });
    write_file(path, &file)?;
    Ok(token)
}

/// Every token in the file, in creation order, without hashes. A missing file has none.
pub fn list_tokens(path: &Path) -> Result<Vec<TokenInfo>, TokensError> {
    Ok(read_file(path)?
        .map(|file| file.tokens.iter().map(info_of).collect())
        .unwrap_or_default())
}

/// Revokes every not-yet-revoked token called `name` at `now` (Unix seconds). Revoked tokens
/// stay in the file, so a client still using one is told it was revoked rather than unknown.
pub fn revoke_token(path: &Path, name: &str, now: u64) -> Result<(), TokensError> {
    let _lock = lock(path)?;
    let unknown = || TokensError::UnknownToken {
        path: path.to_path_buf(),
        name: name.to_owned(),
    };
    let mut file = read_file(path)?.ok_or_else(unknown)?;
    let mut named = file.tokens.iter_mut().filter(|r| r.name == name).peekable();
    if named.peek().is_none() {
        return Err(unknown());
    }
    let mut revoked_any = false;
    for record in named.filter(|r| r.revoked.is_none()) {
        record.revoked = Some(now);
        revoked_any = true;
    }
    if !revoked_any {
        return Err(TokensError::AlreadyRevoked {
            path: path.to_path_buf(),
            name: name.to_owned(),
        });
    }
    write_file(path, &file)
}

/// Loads the file for the proxy. Takes no lock: writers replace the file atomically. A missing
/// file is [`FileError::NotFound`], so the caller decides whether that means "no tokens".
pub fn load(path: &Path) -> Result<TokenSet, TokensError> {
    let file = read_file(path)?.ok_or_else(|| FileError::NotFound {
        path: path.to_path_buf(),
        what: "tokens file",
    })?;
    // read_file has checked the records; indexing again is cheap and keeps this obvious.
    index(path, &file)
}

/// Checks every record and indexes them by hash. Commands run this too, so they never rewrite
/// a file the proxy could not load.
fn index(path: &Path, file: &TokensFile) -> Result<TokenSet, TokensError> {
    let mut set = TokenSet::default();
    for record in &file.tokens {
        let hash = TokenHash::from_hex(&record.sha256)
            .ok_or_else(|| bad_record(path, &record.name, "sha256 is not 64 hex digits".into()))?;
        if let Some(&other) = set.by_hash.get(&hash) {
            let other = &set.tokens[other].0.name;
            return Err(bad_record(
                path,
                &record.name,
                format!("same sha256 as token {other:?}"),
            ));
        }
        set.by_hash.insert(hash, set.tokens.len());
        set.tokens.push((info_of(record), hash));
    }
    Ok(set)
}

fn info_of(record: &TokenRecord) -> TokenInfo {
    TokenInfo {
        name: record.name.clone(),
        created: record.created,
        expires: record.expires,
        revoked: record.revoked,
        role: record.role,
    }
}

fn bad_record(path: &Path, name: &str, reason: String) -> TokensError {
    TokensError::BadRecord {
        path: path.to_path_buf(),
        name: name.to_owned(),
        reason,
    }
}

fn lock(path: &Path) -> Result<FileLockGuard, TokensError> {
    Ok(file_error::lock(path)?)
}

/// The parsed file; `None` when it does not exist. An empty file (say, made with `touch`) is
/// a file with no tokens.
fn read_file(path: &Path) -> Result<Option<TokensFile>, TokensError> {
    let Some(bytes) = file_error::read_bytes(path)? else {
        return Ok(None);
    };
    if bytes.trim_ascii().is_empty() {
        return Ok(Some(TokensFile {
            version: FILE_VERSION,
            tokens: Vec::new(),
        }));
    }
    let parse_error = |source| TokensError::Parse {
        path: path.to_path_buf(),
        source,
    };
    let VersionOnly { version } = serde_json::from_slice(&bytes).map_err(parse_error)?;
    if version != FILE_VERSION {
        return Err(TokensError::Version {
            path: path.to_path_buf(),
            version,
        });
    }
    let file: TokensFile = serde_json::from_slice(&bytes).map_err(parse_error)?;
    index(path, &file)?;
    Ok(Some(file))
}

fn write_file(path: &Path, file: &TokensFile) -> Result<(), TokensError> {
    let mut text = serde_json::to_string_pretty(file).map_err(|e| FileError::Write {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    text.push('\n');
    Ok(file_error::write(path, text.as_bytes(), TOKENS_FILE_MODE)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;
    use std::os::unix::fs::PermissionsExt;

    const NOW: u64 = 1_764_160_000;
    const DAY: u64 = 86_400;

    #[test]
    fn generated_tokens_have_the_prefix_and_256_random_bits() {
        let (token, hash) = generate().unwrap();
        let text = token.expose();
        assert_eq!(text.len(), 4 + 43, "{text}");
        assert!(text.starts_with("grd_"));
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&text[4..])
            .unwrap();
        assert_eq!(body.len(), 32);
        assert_eq!(hash, TokenHash::of(text));
        assert_ne!(generate().unwrap().1, hash);
        assert_eq!(format!("{token:?}"), "<redacted>");
    }

    #[test]
    fn token_hash_hex_round_trips_and_rejects_junk() {
        let hash = TokenHash::of("grd_x");
        assert_eq!(TokenHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(TokenHash::from_hex(&hash.to_hex().to_uppercase()), Some(hash));
        assert_eq!(TokenHash::from_hex("abc"), None);
        assert_eq!(TokenHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(TokenHash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn created_token_is_valid_and_only_its_hash_is_stored() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        let token = create_token(&path, "ci", None, None, NOW).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(token.expose()), "{text}");
        assert!(text.contains(&TokenHash::of(token.expose()).to_hex()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let set = load(&path).unwrap();
        assert_eq!(
            set.lookup(token.expose(), NOW + 1000 * DAY),
            Lookup::Valid { name: "ci", role: None }
        );
        assert_eq!(set.lookup("grd_wrong", NOW), Lookup::Unknown);
        assert_eq!(set.lookup("", NOW), Lookup::Unknown);
    }

    #[test]
    fn the_file_has_the_documented_shape() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        let token = create_token(&path, "ci", None, Some(Duration::from_secs(90 * DAY)), NOW).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "version": 1,
                "tokens": [{
                    "name": "ci",
                    "sha256": TokenHash::of(token.expose()).to_hex(),
                    "created": NOW,
                    "expires": NOW + 90 * DAY,
                    "revoked": null,
                }]
            })
        );
    }

    #[test]
    fn token_expires_at_its_expiry_second() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        let token = create_token(&path, "ci", None, Some(Duration::from_secs(DAY)), NOW).unwrap();
        let set = load(&path).unwrap();
        assert_eq!(
            set.lookup(token.expose(), NOW + DAY - 1),
            Lookup::Valid { name: "ci", role: None }
        );
        assert_eq!(set.lookup(token.expose(), NOW + DAY), Lookup::Expired { name: "ci" });
    }

    #[test]
    fn revoked_token_is_reported_as_revoked_and_cannot_be_revoked_twice() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        let token = create_token(&path, "ci", None, Some(Duration::from_secs(DAY)), NOW).unwrap();
        revoke_token(&path, "ci", NOW + 10).unwrap();
        let set = load(&path).unwrap();
        assert_eq!(set.lookup(token.expose(), NOW + 20), Lookup::Revoked { name: "ci" });
        // Revocation outranks expiry.
        assert_eq!(
            set.lookup(token.expose(), NOW + 2 * DAY),
            Lookup::Revoked { name: "ci" }
        );
        let err = revoke_token(&path, "ci", NOW + 30).unwrap_err();
        assert!(matches!(err, TokensError::AlreadyRevoked { .. }), "{err}");
        let listed = list_tokens(&path).unwrap();
        assert_eq!(listed[0].revoked, Some(NOW + 10));
    }

    #[test]
    fn revoking_an_unknown_name_or_in_a_missing_file_is_refused() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        let err = revoke_token(&path, "ci", NOW).unwrap_err();
        assert!(matches!(err, TokensError::UnknownToken { .. }), "{err}");
        create_token(&path, "ci", None, None, NOW).unwrap();
        let err = revoke_token(&path, "cd", NOW).unwrap_err();
        assert!(err.to_string().ends_with(": no token \"cd\""), "{err}");
    }

    #[test]
    fn an_active_name_cannot_be_reused_but_a_revoked_or_expired_one_can() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        let old = create_token(&path, "ci", None, Some(Duration::from_secs(DAY)), NOW).unwrap();
        let err = create_token(&path, "ci", None, None, NOW).unwrap_err();
        assert!(matches!(err, TokensError::Exists { .. }), "{err}");

        let renewed = create_token(&path, "ci", None, None, NOW + DAY).unwrap();
        revoke_token(&path, "ci", NOW + DAY + 1).unwrap();
        let again = create_token(&path, "ci", None, None, NOW + DAY + 2).unwrap();

        let set = load(&path).unwrap();
        assert_eq!(set.len(), 3);
        let at = NOW + DAY + 3;
        assert_eq!(set.lookup(old.expose(), at), Lookup::Revoked { name: "ci" });
        assert_eq!(set.lookup(renewed.expose(), at), Lookup::Revoked { name: "ci" });
        assert_eq!(set.lookup(again.expose(), at), Lookup::Valid { name: "ci", role: None });
    }

    #[test]
    fn create_token_refuses_bad_names_and_lifetimes() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        let err = create_token(&path, "my token", None, None, NOW).unwrap_err();
        assert!(err.to_string().starts_with("invalid token name \"my token\""), "{err}");
        let err = create_token(&path, "ci", None, Some(Duration::from_millis(500)), NOW).unwrap_err();
        assert!(matches!(err, TokensError::Lifetime(_)), "{err}");
        let err = create_token(&path, "ci", None, Some(Duration::from_secs(u64::MAX)), NOW).unwrap_err();
        assert!(matches!(err, TokensError::Lifetime(_)), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn list_tokens_shows_names_and_times_but_no_hashes() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        assert_eq!(list_tokens(&path).unwrap(), []);
        create_token(&path, "ci", None, None, NOW).unwrap();
        create_token(
            &path,
            "laptop",
            Some(Role::Reader),
            Some(Duration::from_secs(DAY)),
            NOW + 5,
        )
        .unwrap();
        let listed = list_tokens(&path).unwrap();
        assert_eq!(
            listed,
            [
                TokenInfo {
                    name: "ci".into(),
                    created: NOW,
                    expires: None,
                    revoked: None,
                    role: None,
                },
                TokenInfo {
                    name: "laptop".into(),
                    created: NOW + 5,
                    expires: Some(NOW + 5 + DAY),
                    revoked: None,
                    role: Some(Role::Reader),
                },
            ]
        );
        assert_eq!(listed[1].status(NOW + 5 + DAY), TokenStatus::Expired);
    }

    #[test]
    fn a_missing_file_is_a_distinct_error_and_an_empty_one_has_no_tokens() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        assert!(matches!(
            load(&path),
            Err(TokensError::File(FileError::NotFound { .. }))
        ));
        std::fs::write(&path, "\n").unwrap();
        assert!(load(&path).unwrap().is_empty());
    }

    #[test]
    fn malformed_files_are_errors_naming_the_path_and_position() {
        let dir = TestDir::new();
        let path = dir.path().join("tokens.json");
        let hex = "ab".repeat(32);
        let cases = [
            ("{\"version\": 1,\n \"tokens\": [\n", "invalid tokens file"),
            ("{\"version\": 1, \"tokens\": [], \"extra\": 1}", "invalid tokens file"),
            ("[1, 2]", "invalid tokens file"),
            ("{\"version\": 2, \"tokens\": []}", "unsupported tokens file version 2"),
            (
                "{\"version\":1,\"tokens\":[{\"name\":\"a\",\"sha256\":\"xyz\",\"created\":1,\"expires\":null,\"revoked\":null}]}",
                "token \"a\": sha256 is not 64 hex digits",
            ),
            (
                &format!("{{\"version\":1,\"tokens\":[{{\"name\":\"a\",\"sha256\":\"{hex}\",\"created\":1,\"expires\":null,\"revoked\":null}},{{\"name\":\"b\",\"sha256\":\"{hex}\",\"created\":1,\"expires\":null,\"revoked\":null}}]}}"),
                "token \"b\": same sha256 as token \"a\"",
            ),
            (
                "{\"version\":1,\"tokens\":[{\"name\":\"a\",\"sha256\":\"x\",\"created\":-1}]}",
                "invalid tokens file",
            ),
        ];
        for (text, expect) in cases {
            std::fs::write(&path, text).unwrap();
            let err = load(&path).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            assert!(msg.contains(expect), "{text}: {msg}");
            // Commands refuse to overwrite a file they cannot read.
            assert!(create_token(&path, "new", None, None, NOW).is_err());
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
        std::fs::write(&path, "{\"version\": 1,\n \"tokens\": [\n").unwrap();
        let err = load(&path).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("line 3 column 0"), "{source}");
    }

    #[test]
    fn concurrent_create_token_calls_lose_no_token() {
        let dir = TestDir::new();
        let path = std::sync::Arc::new(dir.path().join("tokens.json"));
        let threads: Vec<_> = (0..10)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || create_token(&path, &format!("t{i}"), None, None, NOW))
            })
            .collect();
        let tokens: Vec<Secret> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
        let set = load(&path).unwrap();
        assert_eq!(set.len(), 10);
        for token in &tokens {
            assert!(matches!(set.lookup(token.expose(), NOW), Lookup::Valid { .. }));
        }
    }
}
