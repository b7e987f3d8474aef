//! Secrets in memory: a `Secret` newtype that never prints its contents, and the one
//! constant-time comparison every credential check goes through.

use std::fmt;

use subtle::ConstantTimeEq;

/// A password or bearer token. `Debug` and `Display` print `<redacted>`, so a secret that ends
/// up in a log line, an error or a `{:?}` of a larger struct shows nothing.
///
/// There is deliberately no `PartialEq`: comparing secrets must go through [`ct_eq`].
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, for the few places that must use it (hashing, printing a new token
    /// once to the operator). The name makes every such place easy to find.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Compares two byte strings in time that depends only on their lengths, never on where they
/// first differ. Different lengths return false at once: every caller compares digests or
/// encodings of a fixed length, so the length is no secret.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Login {
            user: String,
            password: Secret,
        }
        let shown = format!(
            "{:?}",
            Login {
                user: "alice".into(),
                password: s.clone()
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn ct_eq_is_true_only_for_identical_bytes() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
    }
}
