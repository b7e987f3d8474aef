//! Parsing the `Authorization` header guard consumes: HTTP Basic (RFC 7617) and Bearer
//! (RFC 6750). Pure and panic-free on any input (it is fuzzed); the proxy decides what a
//! malformed header costs the client.

use base64::Engine as _;

/// A credential as presented in `Authorization`.
#[derive(PartialEq, Eq)]
pub enum Credential {
    /// `Basic base64(user:password)`.
    Basic {
        /// The user name.
        user: String,
        /// The password bytes (not necessarily UTF-8).
        password: Vec<u8>,
    },
    /// `Bearer <token>`.
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { user, .. } => write!(f, "Basic({user:?}, <redacted>)"),
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Parses one `Authorization` value (RFC 7617 Basic, RFC 6750 Bearer; schemes are
/// case-insensitive).
pub fn parse_credential(value: &[u8]) -> Option<Credential> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        let user = std::str::from_utf8(&decoded[..colon]).ok()?;
        if user.is_empty() {
            return None;
        }
        return Some(Credential::Basic {
            user: user.to_owned(),
            password: decoded[colon + 1..].to_vec(),
        });
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        return Some(Credential::Bearer(rest.to_owned()));
    }
    None
}
