//! The random secrets a deployment needs (database password, notebook token): generated from
//! the OS random source, or kept from the files a previous run wrote, so `--force` does not
//! lock mlflow out of an existing database. Renderers take them as a parameter, which lets
//! tests render with fixed values.

use std::path::Path;

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
    Ok(Secret::new(
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    ))
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
}

impl Secrets {
    /// Fresh random secrets.
    pub fn generate() -> Result<Secrets, DeployError> {
        Ok(Secrets {
            postgres_password: generate()?,
            jupyter_token: generate()?,
        })
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
            let Some((key, value)) = line.trim().split_once('=') else {
                continue;
            };
            let value = value.trim();
            // compose's .env calls the password POSTGRES_PASSWORD, mlflow.env PGPASSWORD.
            let slot = match key.trim() {
                "POSTGRES_PASSWORD" | "PGPASSWORD" => &mut self.postgres_password,
                "JUPYTER_TOKEN" => &mut self.jupyter_token,
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
