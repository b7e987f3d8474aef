//! The random secrets a deployment needs (database password, notebook token, MLflow's Flask
//! key, guard's session key file): generated from the OS random source, or kept from the files
//! a previous run wrote, so `--force` does not lock mlflow out of an existing database.
//! Renderers take them as a parameter, which lets tests render with fixed values.

use std::path::Path;

use base64::Engine as _;

use crate::error::DeployError;

/// Random bytes per secret: 192 bits, rendered as 48 hex digits (safe in URLs, YAML, .env and
/// unit files without quoting).
const SECRET_BYTES: usize = 24;

/// The workspace's one secret type: `Debug` and `Display` never show it.
pub use guard_config::secret::Secret;

/// A fresh random secret.
fn generate() -> Result<Secret, DeployError> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(DeployError::Random)?;
    Ok(Secret::new(hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A session key file as `guard serve` writes it on its first start (one key: an 8-hex-digit
/// id and 32 random bytes in base64url), made here because in a cluster every guard pod must
/// read the same key from a Secret: a cookie one pod sealed is opened by the next.
fn session_key_file(now: u64) -> Result<Secret, DeployError> {
    let mut id = [0u8; 4];
    let mut key = [0u8; 32];
    getrandom::fill(&mut id).map_err(DeployError::Random)?;
    getrandom::fill(&mut key).map_err(DeployError::Random)?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    Ok(Secret::new(format!(
        "{{\"keys\":[{{\"id\":\"{}\",\"key\":\"{key}\",\"created\":{now}}}]}}\n",
        hex(&id)
    )))
}

/// Whether a value read back from an old file can be written again unquoted.
fn is_reusable(value: &str) -> bool {
    value.len() >= 16
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
}

/// Every secret any renderer may write. Each renderer writes only the ones its deployment uses.
#[derive(Clone, Debug)]
pub struct Secrets {
    /// The PostgreSQL password of role `mlflow` (`POSTGRES_PASSWORD` in compose's .env,
    /// `PGPASSWORD` in mlflow.env).
    pub postgres_password: Secret,
    /// Jupyter's login token (`JUPYTER_TOKEN`, compose with `--with-notebook`).
    pub jupyter_token: Secret,
    /// MLflow's Flask secret key (`MLFLOW_FLASK_SERVER_SECRET_KEY`, kubernetes): every MLflow
    /// replica must sign with the same one.
    pub flask_secret_key: Secret,
    /// guard's session-keys.json (kubernetes, in the guard-auth Secret).
    pub session_keys: Secret,
    /// The secret guard sends MLflow as `X-Guard-Secret` (`--mlflow-permissions`: the file
    /// `upstream.secret`).
    pub upstream_secret: Secret,
    /// The password of MLflow's own admin account (`MLFLOW_AUTH_ADMIN_PASSWORD`,
    /// `--mlflow-permissions`); nobody needs it day to day, guard's admins are MLflow admins.
    pub mlflow_admin_password: Secret,
    /// The database DSN an operator wrote into a previous run's secrets.yaml (kubernetes
    /// without `--with-postgres`), kept by `--force`; `None` renders a placeholder to edit.
    pub database_uri: Option<Secret>,
}

impl Secrets {
    /// Fresh random secrets.
    pub fn generate() -> Result<Secrets, DeployError> {
        Ok(Secrets {
            postgres_password: generate()?,
            jupyter_token: generate()?,
            flask_secret_key: generate()?,
            session_keys: session_key_file(guard_config::clock::unix_now())?,
            upstream_secret: generate()?,
            mlflow_admin_password: generate()?,
            database_uri: None,
        })
    }

    /// Keeps the upstream secret of an existing `upstream.secret` (one line, the secret alone),
    /// so `--force` leaves guard and MLflow agreeing with the copies already installed.
    pub fn keep_upstream_secret(&mut self, path: &Path) -> Result<(), DeployError> {
        match std::fs::read_to_string(path) {
            Ok(t) if is_reusable(t.trim()) => self.upstream_secret = Secret::new(t.trim()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DeployError::Io {
                    action: "read the secret in",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        Ok(())
    }

    /// Keeps the values of an existing `KEY=value` file (a previous run's .env or mlflow.env),
    /// so regenerating with `--force` leaves the database password the database already has.
    /// A missing file changes nothing; an unreadable one is an error, because silently
    /// replacing the password would break the deployment.
    pub fn keep_from(&mut self, path: &Path) -> Result<(), DeployError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(DeployError::Io {
                    action: "read the secrets in",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        for line in text.lines() {
            // `KEY=value` in .env and mlflow.env; `key: "value"` in the kubernetes secrets.yaml,
            // where the renderer writes each value on one line, quoted.
            let yaml = || {
                let (k, v) = line.trim().split_once(": ")?;
                Some((k, v.strip_prefix('"')?.strip_suffix('"')?))
            };
            let Some((key, value)) = yaml().or_else(|| line.trim().split_once('=')) else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if key == "uri" {
                // An escaped character would need unquoting; the operator's DSN is kept only
                // when it is written plainly, else the placeholder comes back to be edited.
                // Nor is the DSN of the in-namespace PostgreSQL (`--with-postgres`): without that
                // flag it would name a database that is no longer there.
                let ours = value.contains(crate::kubernetes::DATABASE_PLACEHOLDER_HOST)
                    || value.contains(&format!("@{}/", crate::kubernetes::IN_NAMESPACE_DATABASE));
                if !value.contains('\\') && !ours {
                    self.database_uri = Some(Secret::new(value));
                }
                continue;
            }
            // compose's .env calls the password POSTGRES_PASSWORD, mlflow.env PGPASSWORD.
            let slot = match key {
                "POSTGRES_PASSWORD" | "PGPASSWORD" | "postgres-password" => &mut self.postgres_password,
                "JUPYTER_TOKEN" => &mut self.jupyter_token,
                "flask-secret-key" | "MLFLOW_FLASK_SERVER_SECRET_KEY" => &mut self.flask_secret_key,
                "MLFLOW_AUTH_ADMIN_PASSWORD" => &mut self.mlflow_admin_password,
                "GUARD_UPSTREAM_SECRET" => &mut self.upstream_secret,
                _ => continue,
            };
            if is_reusable(value) {
                *slot = Secret::new(value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_distinct_hex_and_redacted_in_debug() {
        let s = Secrets::generate().unwrap();
        assert_eq!(s.postgres_password.expose().len(), 2 * SECRET_BYTES);
        assert!(s.postgres_password.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(s.postgres_password.expose(), s.jupyter_token.expose());
        let debug = format!("{s:?}");
        assert!(!debug.contains(s.postgres_password.expose()), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn the_session_key_file_is_one_guard_serve_loads() {
        let s = Secrets::generate().unwrap();
        let dir = std::env::temp_dir().join(format!("guard-deploy-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("session-keys.json");
        std::fs::write(&path, s.session_keys.expose()).unwrap();
        let keys = guard_config::session::SessionKeys::load(&path).unwrap();
        assert_eq!(keys.current_id().len(), 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_old_secrets_manifest_keeps_its_values() {
        let dir = std::env::temp_dir().join(format!("guard-deploy-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets.yaml");
        std::fs::write(
            &path,
            "stringData:\n  flask-secret-key: \"0123456789abcdef0123\"\n  uri: \"postgresql://mlflow:pw@db.internal:5432/mlflow\"\n",
        )
        .unwrap();
        let mut s = Secrets::generate().unwrap();
        s.keep_from(&path).unwrap();
        assert_eq!(s.flask_secret_key.expose(), "0123456789abcdef0123");
        assert_eq!(
            s.database_uri.as_ref().map(|u| u.expose().to_string()).as_deref(),
            Some("postgresql://mlflow:pw@db.internal:5432/mlflow")
        );
        // The placeholder and the in-namespace database's DSN are rendered anew, never kept.
        for ours in [
            "postgresql://mlflow:CHANGE-ME@database.example.com:5432/mlflow",
            "postgresql://mlflow:0123456789abcdef0123@postgres:5432/mlflow",
        ] {
            std::fs::write(&path, format!("  uri: \"{ours}\"\n")).unwrap();
            let mut s = Secrets::generate().unwrap();
            s.keep_from(&path).unwrap();
            assert!(s.database_uri.is_none(), "{ours}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_old_env_file_keeps_its_password() {
        let dir = std::env::temp_dir().join(format!("guard-deploy-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(
            &path,
            "# comment\nPOSTGRES_PASSWORD=0123456789abcdef0123\nJUPYTER_TOKEN=short\n",
        )
        .unwrap();
        let mut s = Secrets::generate().unwrap();
        let token = s.jupyter_token.clone();
        s.keep_from(&path).unwrap();
        assert_eq!(s.postgres_password.expose(), "0123456789abcdef0123");
        assert_eq!(s.jupyter_token.expose(), token.expose(), "too short to keep");
        s.keep_from(&dir.join("missing")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
