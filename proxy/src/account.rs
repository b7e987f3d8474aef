//! The part of MLflow's auth app the MLflow UI needs from guard when the upstream does not run
//! that app: who is signed in (`users/current`, the account menu and its sign-out) and changing
//! one's own password (`users/update-password`). The answers have the shapes MLflow 3.17's
//! `mlflow/server/auth/__init__.py` gives, so the UI cannot tell the difference.

use sha2::{Digest, Sha256};

use guard_config::secret::Secret;

/// The identity endpoint, under both API prefixes.
const CURRENT_USER: &str = "/2.0/mlflow/users/current";
/// The password change, under both API prefixes.
const UPDATE_PASSWORD: &str = "/2.0/mlflow/users/update-password";

/// Which of MLflow's account endpoints a path is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET .../users/current`.
    CurrentUser,
    /// `PATCH .../users/update-password`.
    UpdatePassword,
}

/// The endpoint `path` names, under `/api` or `/ajax-api` (the UI uses the latter).
pub fn endpoint(path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/ajax-api").or_else(|| path.strip_prefix("/api"))?;
    match rest {
        CURRENT_USER => Some(Endpoint::CurrentUser),
        UPDATE_PASSWORD => Some(Endpoint::UpdatePassword),
        _ => None,
    }
}

/// The `users/current` answer. guard's users file has no numeric ids, so `id` is derived from
/// the name: stable across restarts and guards, and below 2^53 so JavaScript reads it exactly.
/// Nobody is an admin of MLflow's auth app through guard.
pub fn current_user(name: &str) -> Vec<u8> {
    let digest = Sha256::digest(name.as_bytes());
    let id = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) >> 11;
    serde_json::to_vec(&serde_json::json!({
        "user": {"id": id, "username": name, "is_admin": false},
        "is_basic_auth": true,
    }))
    .expect("JSON of strings and numbers")
}

/// A password change as the UI sends it.
#[derive(Debug)]
pub struct PasswordChange {
    /// The new password.
    pub password: Secret,
    /// The current one, which a self-service change must give (as MLflow requires: a hijacked
    /// browser session must not be enough to take the account over).
    pub current_password: Secret,
}

/// Why a password change is refused, with MLflow's own messages and error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefused {
    /// Not a JSON object with string fields.
    #[error("the request body must be JSON with username, password and current_password")]
    Malformed,
    /// Someone else's password: guard's users change theirs only (admins use `guard passwd`).
    #[error("you can change only your own password")]
    NotYours,
    /// MLflow's wording.
    #[error("Current password is required when changing your own password.")]
    NoCurrent,
    /// MLflow's wording.
    #[error("New password must differ from the current password.")]
    Unchanged,
    /// An empty new password.
    #[error("the new password must not be empty")]
    Empty,
}

impl ChangeRefused {
    /// MLflow's error code for it, with HTTP status 400 except for [`ChangeRefused::NotYours`]
    /// (403).
    pub fn error_code(self) -> &'static str {
        match self {
            ChangeRefused::NotYours => "PERMISSION_DENIED",
            _ => "INVALID_PARAMETER_VALUE",
        }
    }
}

/// Reads a password change by `signed_in` from the request body. Checking `current_password`
/// against the users file is the caller's (it goes through the same lockout as a sign-in).
pub fn parse_change(signed_in: &str, body: &[u8]) -> Result<PasswordChange, ChangeRefused> {
    let b: serde_json::Value = serde_json::from_slice(body).map_err(|_| ChangeRefused::Malformed)?;
    let field = |name| b.get(name).and_then(serde_json::Value::as_str);
    let (Some(username), Some(password)) = (field("username"), field("password")) else {
        return Err(ChangeRefused::Malformed);
    };
    if username != signed_in {
        return Err(ChangeRefused::NotYours);
    }
    let current = field("current_password")
        .filter(|c| !c.is_empty())
        .ok_or(ChangeRefused::NoCurrent)?;
    if password.is_empty() {
        return Err(ChangeRefused::Empty);
    }
    if password == current {
        return Err(ChangeRefused::Unchanged);
    }
    Ok(PasswordChange {
        password: Secret::new(password),
        current_password: Secret::new(current),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_api_prefixes_name_the_endpoints_and_nothing_else_does() {
        assert_eq!(
            endpoint("/ajax-api/2.0/mlflow/users/current"),
            Some(Endpoint::CurrentUser)
        );
        assert_eq!(endpoint("/api/2.0/mlflow/users/current"), Some(Endpoint::CurrentUser));
        assert_eq!(
            endpoint("/ajax-api/2.0/mlflow/users/update-password"),
            Some(Endpoint::UpdatePassword)
        );
        for other in [
            "/api/2.0/mlflow/users/current/",
            "/api/2.0/mlflow/users/create",
            "/x/api/2.0/mlflow/users/current",
            "/apix/2.0/mlflow/users/current",
            "/2.0/mlflow/users/current",
        ] {
            assert_eq!(endpoint(other), None, "{other}");
        }
    }

    #[test]
    fn current_user_has_the_auth_apps_shape() {
        let v: serde_json::Value = serde_json::from_slice(&current_user("alice")).unwrap();
        assert_eq!(v["user"]["username"], "alice");
        assert_eq!(v["user"]["is_admin"], false);
        assert_eq!(v["is_basic_auth"], true);
        let id = v["user"]["id"].as_u64().unwrap();
        assert!(id < 1 << 53);
        let again: serde_json::Value = serde_json::from_slice(&current_user("alice")).unwrap();
        assert_eq!(again["user"]["id"], id);
        let bob: serde_json::Value = serde_json::from_slice(&current_user("bob")).unwrap();
        assert_ne!(bob["user"]["id"], id);
        // A name JSON must escape stays one string.
        let odd: serde_json::Value = serde_json::from_slice(&current_user("a\"b")).unwrap();
        assert_eq!(odd["user"]["username"], "a\"b");
    }

    #[test]
    fn only_ones_own_password_changes_with_the_current_one_given() {
        let ok = parse_change(
            "alice",
            br#"{"username":"alice","password":"new-pass","current_password":"old-pass"}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.password.expose(), ok.current_password.expose()),
            ("new-pass", "old-pass")
        );
        assert!(!format!("{ok:?}").contains("pass\""));
        let refused = |body: &str| parse_change("alice", body.as_bytes()).unwrap_err();
        assert_eq!(
            refused(r#"{"username":"bob","password":"x","current_password":"y"}"#),
            ChangeRefused::NotYours
        );
        assert_eq!(
            refused(r#"{"username":"alice","password":"x"}"#),
            ChangeRefused::NoCurrent
        );
        assert_eq!(
            refused(r#"{"username":"alice","password":"x","current_password":""}"#),
            ChangeRefused::NoCurrent
        );
        assert_eq!(
            refused(r#"{"username":"alice","password":"same","current_password":"same"}"#),
            ChangeRefused::Unchanged
        );
        assert_eq!(
            refused(r#"{"username":"alice","password":"","current_password":"y"}"#),
            ChangeRefused::Empty
        );
        assert_eq!(refused("username=alice"), ChangeRefused::Malformed);
        assert_eq!(refused(r#"{"username":"alice"}"#), ChangeRefused::Malformed);
        assert_eq!(ChangeRefused::NotYours.error_code(), "PERMISSION_DENIED");
        assert_eq!(ChangeRefused::Unchanged.error_code(), "INVALID_PARAMETER_VALUE");
    }
}
