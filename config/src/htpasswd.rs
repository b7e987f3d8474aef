//! The htpasswd users file as Apache's `htpasswd` and nginx read it: parsing with a warning per
//! bad line, password verification (bcrypt, APR1-MD5, `{SHA}`), hashing new passwords, and the
//! line-preserving text edits behind guard's user commands.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use md5::{Digest, Md5};
use sha1::Sha1;

use crate::secret::ct_eq;
use crate::session::{credential_fingerprint, Fingerprint};

/// Lowest bcrypt cost the bcrypt algorithm allows.
pub const MIN_BCRYPT_COST: u32 = 4;

/// Highest bcrypt cost accepted, in a file or for a new hash. Each step doubles the work of a
/// login check: cost 16 is about 6 s of CPU on a small server, and the dummy check for unknown
/// users runs at the file's highest cost, so one absurd cost (up to 31, days per check) would
/// let anyone pin a CPU with requests for made-up users.
pub const MAX_BCRYPT_COST: u32 = 16;

/// Cost for new hashes unless the operator picks another: bcrypt's own default, about 0.4 s per
/// check on a 2-core server; the proxy caches successful checks, so it is paid once per login.
pub const DEFAULT_BCRYPT_COST: u32 = 12;

/// bcrypt reads at most this many bytes of a password. `bcrypt::verify` (like Apache's and
/// OpenBSD's bcrypt) ignores the rest, so a longer password matches any password sharing its
/// first 72 bytes; `hash_password` therefore refuses longer ones.
pub const BCRYPT_MAX_PASSWORD_BYTES: usize = 72;

/// Longest user or token name accepted for new entries.
pub const MAX_NAME_BYTES: usize = 255;

/// What a warning about an unusable hash tells the operator to use instead.
const SUPPORTED: &str = "supported: bcrypt $2y$/$2b$/$2a$, $apr1$, {SHA}";

/// The alphabet of crypt(3)-style encodings (APR1 checksums, bcrypt, DES).
const CRYPT_ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Salt and checksum of the dummy bcrypt hash: a real hash (of "dummy", cost 4) with one checksum
/// character changed, so it is well formed at every cost and no password is known to match it.
const DUMMY_BCRYPT_TAIL: &str = "1Y8aSPtA6Z/aW48qedFv9e0hPWYXk.8P/asRpFelJvD858slBJYFm";

/// Dummy APR1 and `{SHA}` hashes for files without bcrypt entries; no known password matches.
const DUMMY_APR1: &str = "$apr1$guardumy$Qx0lRk2w5cN6yXvD8bPzM.";
const DUMMY_SHA: &str = "{SHA}Z3VhcmQgZHVtbXkgaGFzaCAhISE=";

/// A valid bcrypt hash of the given cost (clamped to [`MIN_BCRYPT_COST`]..=[`MAX_BCRYPT_COST`])
/// that no known password matches. Verifying an unknown user's password against it takes as
/// long as a real check at that cost, so response time does not reveal who exists.
pub fn dummy_bcrypt_hash(cost: u32) -> String {
    let cost = cost.clamp(MIN_BCRYPT_COST, MAX_BCRYPT_COST);
    format!("$2y${cost:02}${DUMMY_BCRYPT_TAIL}")
}

/// The scheme of a usable entry, for logs and for choosing the dummy check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// bcrypt (`$2a$`, `$2b$`, `$2x$`, `$2y$`) at this cost.
    Bcrypt {
        /// The cost factor (log2 of the rounds).
        cost: u32,
    },
    /// Apache's APR1-MD5 (`$apr1$`): 1000 MD5 rounds, fast to brute-force.
    Apr1,
    /// `{SHA}`: one unsalted SHA-1, fast to brute-force.
    Sha1,
}

/// One usable user entry: a password hash guard knows how to check.
#[derive(Clone)]
pub struct Entry {
    hash: String,
    kind: Kind,
    /// What a sign-in session of this user carries of the hash, made once at load: every
    /// request a session makes compares against it.
    fingerprint: Fingerprint,
}

#[derive(Clone)]
enum Kind {
    Bcrypt { cost: u32 },
    Apr1 { salt: String, checksum: [u8; 22] },
    Sha1 { digest: [u8; 20] },
}

impl Entry {
    fn new(hash: String, kind: Kind) -> Entry {
        let fingerprint = credential_fingerprint(&hash);
        Entry {
            hash,
            kind,
            fingerprint,
        }
    }

    /// True when `password` matches. Synchronous and, for bcrypt, slow by design (see
    /// [`DEFAULT_BCRYPT_COST`]): run it off the async threads. Every comparison is constant time.
    ///
    /// bcrypt uses only the first 72 bytes of `password` ([`BCRYPT_MAX_PASSWORD_BYTES`]), as
    /// Apache does, so files written by `htpasswd -B` keep working.
    pub fn verify(&self, password: &[u8]) -> bool {
        match &self.kind {
            // The hash was validated at load, so an error cannot happen; false is the safe answer
            // if it ever does.
            Kind::Bcrypt { .. } => bcrypt::verify(password, &self.hash).unwrap_or(false),
            Kind::Apr1 { salt, checksum } => ct_eq(&apr1_checksum(password, salt.as_bytes()), checksum),
            Kind::Sha1 { digest } => ct_eq(&Sha1::digest(password), digest),
        }
    }

    /// The stored hash, exactly as in the file: part of the proxy's cache key, so a changed
    /// password invalidates cached logins.
    pub fn hash_str(&self) -> &str {
        &self.hash
    }

    /// [`credential_fingerprint`] of the stored hash.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Which scheme the hash uses.
    pub fn scheme(&self) -> Scheme {
        match self.kind {
            Kind::Bcrypt { cost } => Scheme::Bcrypt { cost },
            Kind::Apr1 { .. } => Scheme::Apr1,
            Kind::Sha1 { .. } => Scheme::Sha1,
        }
    }
}

impl fmt::Debug for Entry {
    // The hash stays out of logs: it is enough to brute-force a weak password offline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("scheme", &self.scheme())
            .finish_non_exhaustive()
    }
}

/// The usable entries of an htpasswd file.
#[derive(Clone, Debug)]
pub struct Htpasswd {
    entries: HashMap<String, Entry>,
    /// Names of usable entries in file order, for listing.
    order: Vec<String>,
    /// What unknown users are checked against: the slowest scheme in the file.
    dummy: Entry,
}

/// Why a line of the users file gives no usable entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The line is not UTF-8.
    NotUtf8,
    /// No `:` separates the user name from the hash.
    NoSeparator,
    /// Nothing before the `:`.
    EmptyUser,
    /// Nothing after the `:`.
    EmptyHash,
    /// A known hash format guard does not check (named by its fixed prefix, e.g. `$6$`).
    Unsupported {
        /// The format's prefix.
        format: &'static str,
    },
    /// Thirteen crypt characters: traditional DES crypt, which reads only 8 password bytes.
    DesCrypt,
    /// No known format: often a plaintext password.
    Unrecognized,
    /// A supported format, but the hash is cut short or damaged.
    Malformed {
        /// `bcrypt`, `$apr1$` or `{SHA}`.
        format: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A bcrypt hash above [`MAX_BCRYPT_COST`].
    CostTooHigh {
        /// The hash's cost.
        cost: u32,
    },
    /// The user already has an entry earlier in the file, which is the one used.
    Duplicate {
        /// Line of the entry in use.
        first_line: usize,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotUtf8 => f.write_str("line is not valid UTF-8"),
            Problem::NoSeparator => f.write_str("no ':' between user name and password hash"),
            Problem::EmptyUser => f.write_str("empty user name"),
            Problem::EmptyHash => f.write_str("empty password hash"),
            Problem::Unsupported { format } => {
                write!(f, "unsupported hash format {format:?} ({SUPPORTED})")
            }
            Problem::DesCrypt => write!(
                f,
                "unsupported hash format: looks like DES crypt, which uses only 8 characters of the password ({SUPPORTED})"
            ),
            Problem::Unrecognized => write!(
                f,
                "unrecognized password hash; plaintext passwords are not accepted ({SUPPORTED})"
            ),
            Problem::Malformed { format, reason } => write!(f, "malformed {format} hash: {reason}"),
            Problem::CostTooHigh { cost } => write!(
                f,
                "bcrypt cost {cost} is above the maximum of {MAX_BCRYPT_COST} (each step doubles the time of every login check); set a new password with `guard passwd`"
            ),
            Problem::Duplicate { first_line } => {
                write!(f, "duplicate user; the entry on line {first_line} is used")
            }
        }
    }
}

/// A line of the users file that gave no usable entry. Its `Display` names the file, the line
/// and the user, never the hash or any part of a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadWarning {
    /// The file, as the caller named it.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The user the line is for, when that much could be read.
    pub user: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.path.display(), self.line)?;
        if let Some(user) = &self.user {
            write!(f, "user {user:?}: ")?;
        }
        self.problem.fmt(f)
    }
}

/// How one line of the file reads, shared by the parser and the editors so they always agree
/// on which line belongs to which user.
enum Line<'a> {
    /// Blank or a `#` comment.
    Skip,
    NoSeparator,
    /// `user` and everything after the first `:`.
    Entry {
        user: &'a str,
        rest: &'a str,
    },
}

/// Reads one line as Apache does: surrounding whitespace (including the `\r` of a CRLF file)
/// is ignored, then blank and `#` lines are skipped, then the line splits at its first `:`.
fn classify(line: &str) -> Line<'_> {
    // A byte-order mark from a Windows editor would otherwise become part of the first name.
    let line = line
        .trim_start_matches('\u{feff}')
        .trim_matches(|c: char| c.is_ascii_whitespace());
    if line.is_empty() || line.starts_with('#') {
        return Line::Skip;
    }
    match line.split_once(':') {
        Some((user, rest)) => Line::Entry { user, rest },
        None => Line::NoSeparator,
    }
}

/// Checks the shape of a hash, so a damaged one is reported at load rather than failing every
/// login in silence.
fn parse_hash(hash: &str) -> Result<Kind, Problem> {
    if hash.is_empty() {
        return Err(Problem::EmptyHash);
    }
    if ["$2a$", "$2b$", "$2x$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        // `$2x$` (crypt_blowfish's marker for hashes made by its old sign-extension bug) is
        // checked like `$2b$` by the bcrypt crate: correct for ASCII passwords, while non-ASCII
        // ones made by the buggy code will not match.
        return parse_bcrypt(hash);
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        return parse_apr1(rest);
    }
    if let Some(rest) = hash.strip_prefix("{SHA}") {
        let malformed = Problem::Malformed {
            format: "{SHA}",
            reason: "expected the base64 of a 20-byte SHA-1 digest",
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| malformed.clone())?;
        let digest: [u8; 20] = bytes.try_into().map_err(|_| malformed)?;
        return Ok(Kind::Sha1 { digest });
    }
    Err(unsupported(hash))
}

fn parse_bcrypt(hash: &str) -> Result<Kind, Problem> {
    let malformed = |reason| Problem::Malformed {
        format: "bcrypt",
        reason,
    };
    let bytes = hash.as_bytes();
    if bytes.len() != 60 || !hash.is_ascii() {
        return Err(malformed("expected 60 ASCII characters"));
    }
    let (c1, c2) = (bytes[4], bytes[5]);
    if !c1.is_ascii_digit() || !c2.is_ascii_digit() || bytes[6] != b'$' {
        return Err(malformed("expected a two-digit cost after the prefix"));
    }
    let cost = u32::from(c1 - b'0') * 10 + u32::from(c2 - b'0');
    if !(MIN_BCRYPT_COST..=31).contains(&cost) {
        return Err(malformed("cost outside 04-31"));
    }
    if cost > MAX_BCRYPT_COST {
        return Err(Problem::CostTooHigh { cost });
    }
    // The crate's own parser checks the salt and checksum encodings, including the unused low
    // bits, exactly as `bcrypt::verify` will.
    hash.parse::<bcrypt::HashParts>()
        .map_err(|_| malformed("salt or checksum is not valid bcrypt base64"))?;
    Ok(Kind::Bcrypt { cost })
}

fn parse_apr1(rest: &str) -> Result<Kind, Problem> {
    let malformed = |reason| Problem::Malformed {
        format: "$apr1$",
        reason,
    };
    let (salt, checksum) = rest
        .split_once('$')
        .ok_or_else(|| malformed("expected $apr1$salt$checksum"))?;
    // Apache uses at most 8 salt characters; a longer salt could never match.
    if salt.len() > 8 {
        return Err(malformed("salt longer than 8 characters"));
    }
    let checksum: [u8; 22] = checksum
        .as_bytes()
        .try_into()
        .map_err(|_| malformed("checksum is not 22 characters"))?;
    if !checksum.iter().all(|b| CRYPT_ALPHABET.contains(b)) {
        return Err(malformed("checksum has characters outside ./0-9A-Za-z"));
    }
    Ok(Kind::Apr1 {
        salt: salt.to_owned(),
        checksum,
    })
}

/// Names a known but unsupported format by its fixed prefix only: echoing anything else could
/// print part of a plaintext password into a log.
fn unsupported(hash: &str) -> Problem {
    const KNOWN: &[&str] = &[
        "$1$",
        "$2$",
        "$3$",
        "$5$",
        "$6$",
        "$7$",
        "$y$",
        "$gy$",
        "$sha1$",
        "$md5$",
        "$argon2i$",
        "$argon2d$",
        "$argon2id$",
        "$scrypt$",
        "$pbkdf2$",
        "$pbkdf2-sha256$",
        "$pbkdf2-sha512$",
        "{SSHA}",
        "{PLAIN}",
        "{CLEARTEXT}",
        "{CRYPT}",
        "{MD5}",
        "{SMD5}",
        "{SHA256}",
        "{SSHA256}",
        "{SHA512}",
        "{SSHA512}",
        "{BLF-CRYPT}",
        "{ARGON2I}",
        "{ARGON2ID}",
    ];
    if let Some(format) = KNOWN.iter().find(|p| hash.starts_with(*p)) {
        return Problem::Unsupported { format };
    }
    if hash.len() == 13 && hash.bytes().all(|b| CRYPT_ALPHABET.contains(&b)) {
        return Problem::DesCrypt;
    }
    Problem::Unrecognized
}

/// APR1-MD5 as in Apache's `apr_md5_encode` (the FreeBSD md5crypt with magic `$apr1$`): the
/// 22-character checksum for `password` and `salt` (at most 8 bytes are used).
fn apr1_checksum(password: &[u8], salt: &[u8]) -> [u8; 22] {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];

    let alternate: [u8; 16] = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize()
        .into();

    let mut ctx = Md5::new().chain_update(password).chain_update(MAGIC).chain_update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alternate[..chunk.len()]);
    }
    // The original algorithm's quirk: for each bit of the length, a zero byte or the first
    // password byte.
    let mut n = password.len();
    while n > 0 {
        if n & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        n >>= 1;
    }
    let mut fin: [u8; 16] = ctx.finalize().into();

    // 1000 rounds to slow down brute force (slightly, by today's standards).
    for i in 0..1000 {
        let mut round = Md5::new();
        if i & 1 == 1 {
            round.update(password);
        } else {
            round.update(fin);
        }
        if i % 3 != 0 {
            round.update(salt);
        }
        if i % 7 != 0 {
            round.update(password);
        }
        if i & 1 == 1 {
            round.update(fin);
        } else {
            round.update(password);
        }
        fin = round.finalize().into();
    }

    let mut out = [0u8; 22];
    let mut pos = 0;
    let mut put = |mut v: u32, n: usize| {
        for _ in 0..n {
            out[pos] = CRYPT_ALPHABET[(v & 0x3f) as usize];
            pos += 1;
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put(
            (u32::from(fin[a]) << 16) | (u32::from(fin[b]) << 8) | u32::from(fin[c]),
            4,
        );
    }
    put(u32::from(fin[11]), 2);
    out
}

impl Htpasswd {
    /// Parses the text of a users file. `path` is used only to label warnings. Bad lines never
    /// fail the whole file: each becomes a warning and that user cannot log in.
    pub fn parse(text: &str, path: &Path) -> (Htpasswd, Vec<LoadWarning>) {
        Htpasswd::parse_bytes(text.as_bytes(), path)
    }

    /// Like [`Htpasswd::parse`], for a file read as bytes: a line that is not UTF-8 is a warning,
    /// not a failure of the whole file.
    pub fn parse_bytes(bytes: &[u8], path: &Path) -> (Htpasswd, Vec<LoadWarning>) {
        let mut entries = HashMap::new();
        let mut order = Vec::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut warnings = Vec::new();
        let mut warn = |line: usize, user: Option<&str>, problem: Problem| {
            warnings.push(LoadWarning {
                path: path.to_path_buf(),
                line,
                user: user.map(str::to_owned),
                problem,
            });
        };

        for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line_no = index + 1;
            let Ok(line) = std::str::from_utf8(raw) else {
                // A comment in Latin-1 is still just a comment.
                if raw.trim_ascii_start().starts_with(b"#") {
                    continue;
                }
                warn(line_no, None, Problem::NotUtf8);
                continue;
            };
            let (user, rest) = match classify(line) {
                Line::Skip => continue,
                // The line may well be a bare password: show nothing of it.
                Line::NoSeparator => {
                    warn(line_no, None, Problem::NoSeparator);
                    continue;
                }
                Line::Entry { user, rest } => (user, rest),
            };
            if user.is_empty() {
                warn(line_no, None, Problem::EmptyUser);
                continue;
            }
            // First wins, as in Apache and nginx, even when the first entry is unusable: a
            // later line must not silently take over a user the operator thinks is disabled.
            if let Some(&first) = first_line.get(user) {
                warn(line_no, Some(user), Problem::Duplicate { first_line: first });
                continue;
            }
            first_line.insert(user.to_owned(), line_no);
            // Apache ignores fields after the hash (`user:hash:comment`); no supported hash
            // contains `:`, so the hash is everything up to the next one.
            let hash = rest.split(':').next().unwrap_or_default();
            match parse_hash(hash) {
                Ok(kind) => {
                    entries.insert(user.to_owned(), Entry::new(hash.to_owned(), kind));
                    order.push(user.to_owned());
                }
                Err(problem) => warn(line_no, Some(user), problem),
            }
        }

        let dummy = dummy_entry_for(entries.values());
        (Htpasswd { entries, order, dummy }, warnings)
    }

    /// The usable entry for `user`, if any.
    pub fn get(&self, user: &str) -> Option<&Entry> {
        self.entries.get(user)
    }

    /// Checks a login. Every check costs at least the file's costliest entry: an unknown user is
    /// checked against [`Htpasswd::dummy_entry`] and fails, and a user whose hash is cheaper
    /// (`{SHA}`, `$apr1$`, a lower bcrypt cost) is also checked against it, so timing tells
    /// neither who exists nor whose hash is weak.
    pub fn verify_user(&self, user: &str, password: &[u8]) -> bool {
        match self.entries.get(user) {
            Some(entry) => {
                let ok = entry.verify(password);
                // The dummy is the slowest scheme in the file: any other scheme is cheaper.
                if entry.scheme() != self.dummy.scheme() {
                    let _ = self.dummy.verify(password);
                }
                ok
            }
            None => {
                // The result is irrelevant; only the time spent matters.
                let _ = self.dummy.verify(password);
                false
            }
        }
    }

    /// The entry unknown users are checked against: bcrypt at the highest cost in the file,
    /// else APR1, else `{SHA}`, matching the slowest real check.
    pub fn dummy_entry(&self) -> &Entry {
        &self.dummy
    }

    /// Number of usable entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no user can log in.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names of the usable entries, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.order.iter().map(String::as_str)
    }
}

fn dummy_entry_for<'a>(entries: impl Iterator<Item = &'a Entry>) -> Entry {
    let (mut max_cost, mut apr1) = (None::<u32>, false);
    for entry in entries {
        match entry.kind {
            Kind::Bcrypt { cost } => max_cost = Some(max_cost.map_or(cost, |m| m.max(cost))),
            Kind::Apr1 { .. } => apr1 = true,
            Kind::Sha1 { .. } => {}
        }
    }
    let hash = match max_cost {
        Some(cost) => dummy_bcrypt_hash(cost),
        None if apr1 => DUMMY_APR1.to_owned(),
        None => DUMMY_SHA.to_owned(),
    };
    let kind = parse_hash(&hash);
    // The constants are well formed (a unit test checks them); an SHA-1 digest of zeros is a
    // harmless fallback that keeps this free of panics regardless.
    let kind = kind.unwrap_or(Kind::Sha1 { digest: [0; 20] });
    Entry::new(hash, kind)
}

/// Every user name that has a line in the file, usable or not, in file order without repeats.
/// The user commands work on these, so `guard passwd` can repair an entry guard cannot check.
pub fn named_users(text: &str) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    text.split('\n')
        .filter_map(|line| match classify(line) {
            Line::Entry { user, .. } if !user.is_empty() => Some(user),
            _ => None,
        })
        .filter(|user| seen.insert(*user))
        .collect()
}

/// Splits text into (line without its ending, the ending: `\r\n`, `\n`, or empty at the end).
fn lines_with_endings(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split_inclusive('\n').map(|piece| {
        if let Some(line) = piece.strip_suffix("\r\n") {
            (line, "\r\n")
        } else if let Some(line) = piece.strip_suffix('\n') {
            (line, "\n")
        } else {
            (piece, "")
        }
    })
}

fn is_line_for(line: &str, user: &str) -> bool {
    matches!(classify(line), Line::Entry { user: u, .. } if u == user)
}

/// The file's line ending, judged by its first line; `\n` for a file with a single line.
fn line_ending(text: &str) -> &'static str {
    match text.find('\n') {
        Some(i) if text[..i].ends_with('\r') => "\r\n",
        _ => "\n",
    }
}

/// Replaces the line for `user` (the first, which is the one in use) with `new_line`, keeping
/// every other byte of the file as it was, or appends `new_line` with the file's line ending.
/// `new_line` is `user:hash` without a line ending.
pub fn set_entry(text: &str, user: &str, new_line: &str) -> String {
    let mut out = String::with_capacity(text.len() + new_line.len() + 2);
    let mut replaced = false;
    for (line, ending) in lines_with_endings(text) {
        if !replaced && is_line_for(line, user) {
            out.push_str(new_line);
            replaced = true;
        } else {
            out.push_str(line);
        }
        out.push_str(ending);
    }
    if !replaced {
        let eol = line_ending(text);
        if !text.is_empty() && !text.ends_with('\n') {
            out.push_str(eol);
        }
        out.push_str(new_line);
        out.push_str(eol);
    }
    out
}

/// Removes every line for `user`, keeping all other bytes; `None` when the user has no line.
/// All of them go, not just the first: a later duplicate would otherwise come back to life with
/// an old password.
pub fn remove_entry(text: &str, user: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut removed = false;
    for (line, ending) in lines_with_endings(text) {
        if is_line_for(line, user) {
            removed = true;
        } else {
            out.push_str(line);
            out.push_str(ending);
        }
    }
    removed.then_some(out)
}

/// Why a new password cannot be hashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The password is empty.
    #[error("password is empty")]
    Empty,
    /// bcrypt would ignore part of it.
    #[error(
        "password is {len} bytes long; bcrypt uses only the first {BCRYPT_MAX_PASSWORD_BYTES}, so choose a shorter one"
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// C implementations would stop reading at the NUL, making two tools disagree.
    #[error("password contains a NUL character")]
    Nul,
    /// The cost is outside what guard accepts.
    #[error("bcrypt cost {cost} is outside {MIN_BCRYPT_COST}-{MAX_BCRYPT_COST}")]
    Cost {
        /// The cost asked for.
        cost: u32,
    },
    /// The bcrypt crate failed (in practice: no randomness for the salt).
    #[error("cannot hash the password")]
    Hash(#[source] bcrypt::BcryptError),
}

/// Hashes a new password as `htpasswd -B` does: bcrypt with the `$2y$` prefix Apache writes,
/// which every htpasswd reader accepts. Refuses passwords bcrypt would silently cut short.
pub fn hash_password(password: &str, cost: u32) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > BCRYPT_MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong { len: password.len() });
    }
    if password.contains('\0') {
        return Err(PasswordError::Nul);
    }
    if !(MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&cost) {
        return Err(PasswordError::Cost { cost });
    }
    let parts = bcrypt::hash_with_result(password, cost).map_err(PasswordError::Hash)?;
    Ok(parts.format_for_version(bcrypt::Version::TwoY))
}

/// A user or token name guard refuses to write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {}: {reason}", shown(.name))]
pub struct InvalidName {
    what: &'static str,
    name: String,
    reason: &'static str,
}

impl InvalidName {
    /// The name that was refused.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Quotes a name for a message, cut short so a pasted blob cannot flood the terminal.
fn shown(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    if name.chars().count() <= MAX_CHARS {
        format!("{name:?}")
    } else {
        let head: String = name.chars().take(MAX_CHARS).collect();
        format!("{head:?}...")
    }
}

/// Checks a name for a new user: it must survive the htpasswd format (no `:`, no line break,
/// no leading `#`) and a terminal or log line (no whitespace or control characters).
pub fn validate_username(name: &str) -> Result<(), InvalidName> {
    validate_name(name, "user name")
}

/// The rules of [`validate_username`], with `what` naming the kind of name in the message.
pub(crate) fn validate_name(name: &str, what: &'static str) -> Result<(), InvalidName> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_BYTES {
        "it is longer than 255 bytes"
    } else if name.contains(':') {
        "it contains ':'"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else if name.chars().any(char::is_whitespace) {
        "it contains whitespace"
    } else if name.starts_with('#') {
        "it starts with '#', which marks a comment"
    } else if name.starts_with('\u{feff}') {
        "it starts with a byte-order mark"
    } else {
        return Ok(());
    };
    Err(InvalidName {
        what,
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Htpasswd, Vec<LoadWarning>) {
        Htpasswd::parse(text, Path::new("users.htpasswd"))
    }

    fn warning_lines(warnings: &[LoadWarning]) -> Vec<String> {
        warnings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn apr1_reference_vector_verifies() {
        let (file, warnings) = parse("alice:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0\n");
        assert!(warnings.is_empty(), "{warnings:?}");
        let entry = file.get("alice").unwrap();
        assert_eq!(entry.scheme(), Scheme::Apr1);
        assert!(entry.verify(b"password"));
        assert!(!entry.verify(b"Password"));
        assert!(!entry.verify(b""));
    }

    #[test]
    fn apr1_from_apache_htpasswd_verifies() {
        // `htpasswd -nbm alice password`
        let (file, _) = parse("alice:$apr1$afgEN./E$5lUqkaGXdgabTbpWmrU1k/");
        assert!(file.get("alice").unwrap().verify(b"password"));
    }

    #[test]
    fn apr1_handles_long_and_empty_passwords_without_panicking() {
        let checksum = apr1_checksum(&[b'x'; 100], b"12345678");
        assert!(checksum.iter().all(|b| CRYPT_ALPHABET.contains(b)));
        let _ = apr1_checksum(b"", b"");
    }

    #[test]
    fn sha_reference_vector_verifies() {
        let (file, warnings) = parse("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
        assert!(warnings.is_empty(), "{warnings:?}");
        let entry = file.get("alice").unwrap();
        assert_eq!(entry.scheme(), Scheme::Sha1);
        assert!(entry.verify(b"password"));
        assert!(!entry.verify(b"password1"));
    }

    #[test]
    fn bcrypt_2y_2b_and_2a_prefixes_all_verify() {
        let base = bcrypt::hash_with_result("s3cret", 4).unwrap();
        for version in [bcrypt::Version::TwoY, bcrypt::Version::TwoB, bcrypt::Version::TwoA] {
            let hash = base.format_for_version(version);
            let (file, warnings) = parse(&format!("bob:{hash}\n"));
            assert!(warnings.is_empty(), "{hash}: {warnings:?}");
            let entry = file.get("bob").unwrap();
            assert_eq!(entry.scheme(), Scheme::Bcrypt { cost: 4 });
            assert!(entry.verify(b"s3cret"), "{hash}");
            assert!(!entry.verify(b"s3cret "), "{hash}");
        }
    }

    #[test]
    fn bcrypt_checks_only_the_first_72_bytes_like_apache() {
        let long = [b'a'; 80];
        let hash = bcrypt::hash(&long[..72], 4).unwrap();
        let (file, _) = parse(&format!("bob:{hash}"));
        assert!(file.get("bob").unwrap().verify(&long));
    }

    #[test]
    fn crlf_file_parses_and_verifies() {
        let text =
            "# users\r\n\r\nalice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\r\nbob:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0\r\n";
        let (file, warnings) = parse(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(file.names().collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(file.verify_user("alice", b"password"));
        assert!(file.verify_user("bob", b"password"));
    }

    #[test]
    fn comments_blank_lines_and_surrounding_whitespace_are_ignored() {
        let text = "\u{feff}# admins\n\n   \n  # indented comment\n alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=  \n";
        let (file, warnings) = parse(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(file.len(), 1);
        assert!(file.verify_user("alice", b"password"));
    }

    #[test]
    fn a_byte_order_mark_does_not_become_part_of_the_first_name() {
        let (file, _) = parse("\u{feff}alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
        assert!(file.get("alice").is_some());
    }

    #[test]
    fn a_field_after_a_valid_hash_is_ignored() {
        let (file, warnings) = parse("alice:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0:Alice Smith\n");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(file.verify_user("alice", b"password"));
    }

    #[test]
    fn malformed_lines_give_numbered_warnings_and_no_entry() {
        let text = "\
user1:$apr1$abc
user2:$2y$10$garbage
user3:
:hash
noseparator
ok:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=
";
        let (file, warnings) = parse(text);
        assert_eq!(file.names().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(
            warning_lines(&warnings),
            [
                "users.htpasswd:1: user \"user1\": malformed $apr1$ hash: expected $apr1$salt$checksum",
                "users.htpasswd:2: user \"user2\": malformed bcrypt hash: expected 60 ASCII characters",
                "users.htpasswd:3: user \"user3\": empty password hash",
                "users.htpasswd:4: empty user name",
                "users.htpasswd:5: no ':' between user name and password hash",
            ]
        );
        for user in ["user1", "user2", "user3", ""] {
            assert!(!file.verify_user(user, b"anything"));
        }
    }

    #[test]
    fn unsupported_formats_are_named_by_prefix_without_the_hash() {
        let text = "\
a:$6$rounds=5000$saltsalt$abcdefghijklmnop
b:$1$saltsalt$abcdefghijklmnopqrstuv
c:$5$saltsalt$abcdefghijklmnop
d:{SSHA}c2VjcmV0c2FsdHNhbHQ=
e:abJnggxhB/yWI
f:plaintext-password
g:{PLAIN}hunter2
";
        let (file, warnings) = parse(text);
        assert!(file.is_empty());
        let lines = warning_lines(&warnings);
        assert_eq!(
            lines[0],
            "users.htpasswd:1: user \"a\": unsupported hash format \"$6$\" (supported: bcrypt $2y$/$2b$/$2a$, $apr1$, {SHA})"
        );
        assert!(lines[1].contains("\"$1$\""), "{}", lines[1]);
        assert!(lines[2].contains("\"$5$\""), "{}", lines[2]);
        assert!(lines[3].contains("\"{SSHA}\""), "{}", lines[3]);
        assert!(lines[4].contains("DES crypt"), "{}", lines[4]);
        assert!(lines[5].contains("plaintext"), "{}", lines[5]);
        assert!(lines[6].contains("\"{PLAIN}\""), "{}", lines[6]);
        for line in &lines {
            for secret in [
                "saltsalt",
                "abcdefgh",
                "c2VjcmV0",
                "abJnggxhB",
                "plaintext-password",
                "hunter2",
            ] {
                assert!(!line.contains(secret), "{line}");
            }
        }
    }

    #[test]
    fn damaged_hashes_of_supported_formats_are_reported_at_load() {
        let good = bcrypt::hash("x", 4).unwrap();
        let cases = [
            (format!("{}Z", &good[..59]), "salt or checksum"), // non-zero unused bits
            (good.replacen("$04$", "$4x$", 1), "two-digit cost"),
            (good.replacen("$04$", "$03$", 1), "cost outside"),
            (good.replacen("$04$", "$99$", 1), "cost outside"),
            (format!("{}é", &good[..58]), "60 ASCII characters"),
            ("$apr1$123456789$dxHfLAsjHkDRmG83UXe8K0".into(), "salt longer"),
            ("$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K".into(), "22 characters"),
            ("$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K!".into(), "outside"),
            ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9".into(), "20-byte"),
            ("{SHA}!!!".into(), "20-byte"),
        ];
        for (hash, expect) in cases {
            let (file, warnings) = parse(&format!("u:{hash}\n"));
            assert!(file.is_empty(), "{hash}");
            assert_eq!(warnings.len(), 1, "{hash}");
            assert!(warnings[0].to_string().contains(expect), "{hash}: {}", warnings[0]);
        }
    }

    #[test]
    fn bcrypt_costs_above_the_maximum_are_refused_at_load() {
        let hash = dummy_bcrypt_hash(4).replacen("$04$", "$20$", 1);
        let (file, warnings) = parse(&format!("slow:{hash}\n"));
        assert!(file.is_empty());
        assert_eq!(warnings[0].problem, Problem::CostTooHigh { cost: 20 });
    }

    #[test]
    fn duplicate_user_keeps_the_first_line_and_warns_on_the_second() {
        let text = "\
alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=
alice:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0
bob:$6$x$y
bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=
";
        let (file, warnings) = parse(text);
        assert_eq!(file.get("alice").unwrap().scheme(), Scheme::Sha1);
        // bob's first line is unusable, and the later one must not take over.
        assert!(file.get("bob").is_none());
        let lines = warning_lines(&warnings);
        assert_eq!(
            lines[0],
            "users.htpasswd:2: user \"alice\": duplicate user; the entry on line 1 is used"
        );
        assert!(lines[1].starts_with("users.htpasswd:3: user \"bob\": unsupported"));
        assert_eq!(
            lines[2],
            "users.htpasswd:4: user \"bob\": duplicate user; the entry on line 3 is used"
        );
    }

    #[test]
    fn non_utf8_lines_are_warnings_and_the_rest_still_loads() {
        let mut bytes = b"# caf\xe9\n".to_vec();
        bytes.extend_from_slice(b"j\xfcrgen:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
        bytes.extend_from_slice(b"alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
        let (file, warnings) = Htpasswd::parse_bytes(&bytes, Path::new("u"));
        assert_eq!(file.names().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(warning_lines(&warnings), ["u:2: line is not valid UTF-8"]);
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // A cheap fuzz: every prefix of a nasty file, and every single-byte corruption of it.
        let nasty = "a:$2y$04$\nb:$apr1$\nc:$apr1$$\nd:{SHA}\né:$2y$0é$x\n:\n::\n\r\n\u{feff}\n$2y$:x\n";
        for end in 0..=nasty.len() {
            let _ = Htpasswd::parse_bytes(&nasty.as_bytes()[..end], Path::new("f"));
        }
        let mut bytes = nasty.as_bytes().to_vec();
        for i in 0..bytes.len() {
            let saved = bytes[i];
            for b in [0u8, b':', b'$', b'\n', 0xff] {
                bytes[i] = b;
                let (file, _) = Htpasswd::parse_bytes(&bytes, Path::new("f"));
                let _ = file.verify_user("a", b"x");
            }
            bytes[i] = saved;
        }
    }

    #[test]
    fn unknown_user_is_checked_against_a_dummy_of_the_highest_cost() {
        let h4 = bcrypt::hash("a", 4).unwrap();
        let h5 = bcrypt::hash("b", 5).unwrap();
        let (file, _) = parse(&format!("a:{h4}\nb:{h5}\n"));
        assert_eq!(file.dummy_entry().scheme(), Scheme::Bcrypt { cost: 5 });
        assert!(!file.verify_user("nobody", b"a"));
        assert!(file.verify_user("a", b"a"));
        assert!(!file.verify_user("a", b"b"));

        let (apr, _) = parse("a:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0\n");
        assert_eq!(apr.dummy_entry().scheme(), Scheme::Apr1);
        let (empty, _) = parse("");
        assert_eq!(empty.dummy_entry().scheme(), Scheme::Sha1);
        assert!(!empty.verify_user("", b""));
    }

    #[test]
    fn dummy_hashes_are_well_formed_at_every_cost_and_match_nothing_known() {
        for cost in MIN_BCRYPT_COST..=MAX_BCRYPT_COST {
            let hash = dummy_bcrypt_hash(cost);
            assert!(
                matches!(parse_hash(&hash), Ok(Kind::Bcrypt { cost: c }) if c == cost),
                "{hash}"
            );
        }
        assert_eq!(dummy_bcrypt_hash(99), dummy_bcrypt_hash(MAX_BCRYPT_COST));
        assert_eq!(dummy_bcrypt_hash(0), dummy_bcrypt_hash(MIN_BCRYPT_COST));
        assert_eq!(bcrypt::verify("dummy", &dummy_bcrypt_hash(4)).ok(), Some(false));
        assert_eq!(bcrypt::verify("", &dummy_bcrypt_hash(4)).ok(), Some(false));
        assert!(matches!(parse_hash(DUMMY_APR1), Ok(Kind::Apr1 { .. })));
        assert!(matches!(parse_hash(DUMMY_SHA), Ok(Kind::Sha1 { .. })));
    }

    #[test]
    fn entry_debug_shows_the_scheme_but_not_the_hash() {
        let (file, _) = parse("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
        let shown = format!("{file:?}");
        assert!(!shown.contains("W6ph5"), "{shown}");
        assert!(shown.contains("Sha1"), "{shown}");
        assert_eq!(
            file.get("alice").unwrap().hash_str(),
            "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="
        );
    }

    const EDIT_FIXTURE: &str = "# team users\r\n\r\nalice:{SHA}old\r\n  # keep: this\r\nbob:$apr1$x$y:comment\r\n\r\n";

    #[test]
    fn set_entry_replaces_the_users_line_and_keeps_every_other_byte() {
        let out = set_entry(EDIT_FIXTURE, "alice", "alice:NEW");
        assert_eq!(
            out,
            "# team users\r\n\r\nalice:NEW\r\n  # keep: this\r\nbob:$apr1$x$y:comment\r\n\r\n"
        );
        let out = set_entry(EDIT_FIXTURE, "bob", "bob:NEW");
        assert_eq!(
            out,
            "# team users\r\n\r\nalice:{SHA}old\r\n  # keep: this\r\nbob:NEW\r\n\r\n"
        );
    }

    #[test]
    fn set_entry_appends_with_the_files_line_ending() {
        assert_eq!(
            set_entry(EDIT_FIXTURE, "carol", "carol:H"),
            format!("{EDIT_FIXTURE}carol:H\r\n")
        );
        assert_eq!(set_entry("a:x\n", "b", "b:y"), "a:x\nb:y\n");
        assert_eq!(set_entry("a:x\r\nz:w", "b", "b:y"), "a:x\r\nz:w\r\nb:y\r\n");
        assert_eq!(set_entry("a:x", "b", "b:y"), "a:x\nb:y\n");
        assert_eq!(set_entry("", "b", "b:y"), "b:y\n");
    }

    #[test]
    fn set_entry_replaces_only_the_first_of_duplicate_lines() {
        assert_eq!(set_entry("a:1\na:2\n", "a", "a:3"), "a:3\na:2\n");
    }

    #[test]
    fn set_entry_on_a_last_line_without_newline_keeps_it_without() {
        assert_eq!(set_entry("a:1\nb:2", "b", "b:3"), "a:1\nb:3");
    }

    #[test]
    fn set_entry_never_touches_a_commented_out_user() {
        assert_eq!(set_entry("#alice:1\n", "alice", "alice:2"), "#alice:1\nalice:2\n");
        assert_eq!(remove_entry("#alice:1\n", "alice"), None);
    }

    #[test]
    fn remove_entry_drops_every_line_of_the_user_and_keeps_the_rest() {
        assert_eq!(
            remove_entry(EDIT_FIXTURE, "alice").unwrap(),
            "# team users\r\n\r\n  # keep: this\r\nbob:$apr1$x$y:comment\r\n\r\n"
        );
        assert_eq!(remove_entry("a:1\nb:2\na:3\n", "a").unwrap(), "b:2\n");
        assert_eq!(remove_entry("a:1\nb:2", "b").unwrap(), "a:1\n");
        assert_eq!(remove_entry(EDIT_FIXTURE, "carol"), None);
    }

    #[test]
    fn named_users_lists_every_user_with_a_line_once() {
        assert_eq!(
            named_users("# c\nalice:x\nbob:$6$\n:x\nalice:y\nbad\r\ncarol:z\r\n"),
            ["alice", "bob", "carol"]
        );
    }

    #[test]
    fn hash_password_writes_2y_hashes_that_verify() {
        let hash = hash_password("correct horse", 4).unwrap();
        assert!(hash.starts_with("$2y$04$"), "{hash}");
        let (file, warnings) = parse(&format!("u:{hash}\n"));
        assert!(warnings.is_empty());
        assert!(file.verify_user("u", b"correct horse"));
        assert!(!file.verify_user("u", b"correct horse "));
    }

    #[test]
    fn hash_password_refuses_what_bcrypt_would_mangle() {
        assert!(matches!(hash_password("", 4), Err(PasswordError::Empty)));
        let long = "é".repeat(37); // 74 bytes
        let err = hash_password(&long, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "password is 74 bytes long; bcrypt uses only the first 72, so choose a shorter one"
        );
        assert!(hash_password(&"a".repeat(72), 4).is_ok());
        assert!(matches!(hash_password("a\0b", 4), Err(PasswordError::Nul)));
        assert!(matches!(hash_password("a", 3), Err(PasswordError::Cost { cost: 3 })));
        assert!(matches!(hash_password("a", 17), Err(PasswordError::Cost { cost: 17 })));
    }

    #[test]
    fn validate_username_accepts_ordinary_names() {
        for name in ["alice", "bob.smith", "ci-bot_2", "josé", "a@example.com"] {
            assert_eq!(validate_username(name), Ok(()), "{name}");
        }
        assert!(validate_username(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn validate_username_refuses_names_the_file_or_a_terminal_would_mangle() {
        let cases = [
            ("", "it is empty"),
            ("a:b", "':'"),
            ("a b", "whitespace"),
            ("a\tb", "control character"),
            ("a\nb", "control character"),
            ("a\u{7f}", "control character"),
            ("a\u{a0}b", "whitespace"),
            ("#admin", "'#'"),
            ("\u{feff}a", "byte-order mark"),
        ];
        for (name, reason) in cases {
            let err = validate_username(name).unwrap_err();
            assert!(err.to_string().contains(reason), "{name:?}: {err}");
            assert!(err.to_string().starts_with("invalid user name "), "{err}");
        }
        let err = validate_username(&"a".repeat(256)).unwrap_err();
        assert!(err.to_string().contains("longer than 255 bytes"), "{err}");
        assert!(err.to_string().len() < 120, "{err}");
    }

    /// Cross-checks against Apache's own tool when it is installed (Debian `apache2-utils`).
    #[test]
    fn hashes_made_by_apache_htpasswd_verify() {
        let program = Path::new("/usr/bin/htpasswd");
        if !program.exists() {
            if std::env::var_os("CI").is_some() {
                panic!("/usr/bin/htpasswd is missing: CI must install apache2-utils");
            }
            eprintln!("note: /usr/bin/htpasswd not found (apt-get install apache2-utils); skipping the cross-check");
            return;
        }
        for (flags, scheme) in [
            (&["-nbB", "-C", "4"][..], Scheme::Bcrypt { cost: 4 }),
            (&["-nbm"][..], Scheme::Apr1),
            (&["-nbs"][..], Scheme::Sha1),
        ] {
            let out = std::process::Command::new(program)
                .args(flags)
                .args(["carol", "pa55 wörd"])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd {flags:?}: {out:?}");
            let text = String::from_utf8(out.stdout).unwrap();
            let (file, warnings) = parse(&text);
            assert!(warnings.is_empty(), "{flags:?}: {warnings:?}");
            let entry = file.get("carol").unwrap();
            assert_eq!(entry.scheme(), scheme);
            assert!(entry.verify("pa55 wörd".as_bytes()), "{flags:?}");
            assert!(!entry.verify(b"pa55 word"), "{flags:?}");
        }
    }
}
