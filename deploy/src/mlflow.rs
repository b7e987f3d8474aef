//! What MLflow needs from every target: the Host and Origin values its security middleware
//! (MLflow 3.5+) must accept behind guard, the extra Python packages for the chosen stores, and
//! the backend store URI.

use crate::model::{Artifacts, Backend, Deployment, Tls};
use crate::secrets::Secrets;
use crate::RenderedFile;

/// The PostgreSQL role and database the rendered files create or expect.
pub(crate) const PG_USER: &str = "mlflow";
/// See [`PG_USER`].
pub(crate) const PG_DATABASE: &str = "mlflow";

/// pip requirements the official image and a bare `pip install mlflow` lack
/// (mlflow/mlflow#9513): the PostgreSQL driver and the S3 client. Bounded to their current
/// major versions so a rebuild cannot jump an incompatible release.
pub(crate) const PSYCOPG2: &str = "psycopg2-binary>=2.9,<3";
/// See [`PSYCOPG2`].
pub(crate) const BOTO3: &str = "boto3>=1.28,<2";
/// The basic-auth app's CSRF check (all that the `mlflow[auth]` extra adds), for
/// `--mlflow-permissions`.
pub(crate) const FLASK_WTF: &str = "Flask-WTF>=1.1,<2";
/// The host targets' auth user store: relative, in MLflow's working directory (its state
/// directory).
pub(crate) const HOST_AUTH_DB: &str = "sqlite:///basic_auth.db";

/// The packages this deployment adds to MLflow, in a fixed order.
pub(crate) fn extra_packages(d: &Deployment) -> Vec<&'static str> {
    let mut p = Vec::new();
    if d.backend == Backend::Postgres {
        p.push(PSYCOPG2);
    }
    if d.artifacts.is_s3() {
        p.push(BOTO3);
    }
    if d.mlflow_permissions {
        p.push(FLASK_WTF);
    }
    p
}

/// The official MLflow image for a release.
pub(crate) fn official_image(version: &str) -> String {
    format!("ghcr.io/mlflow/mlflow:v{version}")
}

/// mlflow/Dockerfile: the official image plus exactly the packages this deployment uses, or
/// `None` when it needs none.
pub(crate) fn dockerfile(d: &Deployment, generator: &str) -> Option<String> {
    let packages = extra_packages(d);
    if packages.is_empty() {
        return None;
    }
    let quoted: Vec<String> = packages.iter().map(|p| format!("\"{p}\"")).collect();
    Some(format!(
        "# MLflow for guard, written by `{generator}`. The official image has no PostgreSQL\n\
         # driver and no S3 client (mlflow/mlflow#9513); this adds exactly what this deployment uses.\n\
         FROM {image}\n\
         RUN pip install --no-cache-dir {packages}\n",
        image = official_image(&d.mlflow_version),
        packages = quoted.join(" "),
    ))
}

/// `MLFLOW_SERVER_ALLOWED_HOSTS`. guard rewrites Host to the upstream authority by default, so
/// that entry is what MLflow sees; the public names are listed too, so the check still passes
/// if guard is set to keep the client's Host. Setting the variable replaces MLflow's defaults,
/// hence the explicit localhost entries without a domain.
pub(crate) fn allowed_hosts(tls: &Tls, public_port: u16, upstream_authority: &str) -> String {
    let mut hosts: Vec<String> = match tls {
        Tls::SelfSigned => vec![format!("localhost:{public_port}"), format!("127.0.0.1:{public_port}")],
        Tls::Acme { domains, .. } => domains.iter().map(|d| with_port(d, public_port)).collect(),
    };
    hosts.push(upstream_authority.to_string());
    hosts.join(",")
}

/// `MLFLOW_SERVER_CORS_ALLOWED_ORIGINS`: the browser UI's origins. MLflow blocks state-changing
/// API calls from any other origin, same-origin included, so the public origin must be listed.
pub(crate) fn cors_origins(tls: &Tls, public_port: u16) -> String {
    let names: Vec<String> = match tls {
        Tls::SelfSigned => vec!["localhost".into(), "127.0.0.1".into()],
        Tls::Acme { domains, .. } => domains.clone(),
    };
    names
        .iter()
        .map(|n| format!("https://{}", with_port(n, public_port)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `host` or `host:port`, leaving out HTTPS's default port as browsers do.
fn with_port(host: &str, port: u16) -> String {
    if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// The SQLAlchemy scheme of the driver [`PSYCOPG2`] installs. SQLAlchemy 2.1 (what
/// `pip install mlflow==3.17.2` brings) reads a bare `postgresql://` as psycopg 3, which is not
/// there: MLflow would fail at start with `No module named 'psycopg'`.
pub(crate) const POSTGRES_SCHEME: &str = "postgresql+psycopg2";

/// A PostgreSQL URI without a password: libpq reads it from `PGPASSWORD`, so the secret never
/// appears in a command line, a compose file or a unit file.
pub(crate) fn postgres_uri(host_port: &str) -> String {
    format!("{POSTGRES_SCHEME}://{PG_USER}@{host_port}/{PG_DATABASE}")
}

/// A sqlite URI for an absolute path (`sqlite:///` followed by the path's own leading slash).
pub(crate) fn sqlite_uri(absolute_path: &str) -> String {
    format!("sqlite:///{absolute_path}")
}

/// The backend store URI for a host target, with MLflow's own data under `mlflow_dir`; a
/// PostgreSQL server is expected on the same host.
pub(crate) fn host_backend_uri(d: &Deployment, mlflow_dir: &str) -> String {
    match d.backend {
        Backend::Postgres => postgres_uri("127.0.0.1:5432"),
        Backend::Sqlite => sqlite_uri(&format!("{mlflow_dir}/mlflow.db")),
    }
}

/// `--artifacts-destination` for a host target.
pub(crate) fn host_artifacts(d: &Deployment, mlflow_dir: &str) -> String {
    match &d.artifacts {
        Artifacts::Managed => format!("{mlflow_dir}/artifacts"),
        Artifacts::Local(p) => p.to_string_lossy().into_owned(),
        Artifacts::S3 { .. } => d.artifacts.s3_uri().unwrap_or_default(),
    }
}

/// Whether a host target writes mlflow.env: the PostgreSQL password, or a place for S3 keys.
pub(crate) fn needs_env_file(d: &Deployment) -> bool {
    d.backend == Backend::Postgres || d.artifacts.is_s3() || d.mlflow_permissions
}

/// `--mlflow-permissions`: the directory of MLflow's auth config and guard's authorization
/// function, and the shared secret's file, beside the other files.
pub const AUTH_DIR: &str = "mlflow-auth";
/// See [`AUTH_DIR`]: one line, the secret, mode 0600; guard and the function both read it.
pub const UPSTREAM_SECRET_FILE: &str = "upstream.secret";
/// The module `authorization_function` names.
const AUTH_MODULE: &str = "guard_mlflow_auth";

/// `--mlflow-permissions`: basic_auth.ini, the authorization function that trusts guard's user
/// header only with guard's secret, and the secret. The auth app's user store is SQLite in
/// MLflow's working directory (its state directory): the ini cannot read the environment, so a
/// PostgreSQL password would have to be written into it.
pub(crate) fn auth_files(secrets: &Secrets, generator: &str, database_uri: &str) -> Vec<RenderedFile> {
    let ini = format!(
        "# MLflow's basic-auth app behind guard, written by `{generator} --mlflow-permissions`.\n\
         # guard signs people in; MLflow decides what each may do. A user guard names is created here\n\
         # on first use with no permission at all: grant it per experiment or model (MLflow's UI as\n\
         # one of guard's admins, or its permissions API). The admin password is\n\
         # MLFLOW_AUTH_ADMIN_PASSWORD in mlflow.env (.env for compose).\n\
         [mlflow]\n\
         default_permission = NO_PERMISSIONS\n\
         database_uri = {database_uri}\n\
         admin_username = admin\n\
         authorization_function = {AUTH_MODULE}:authenticate\n"
    );
    vec![
        RenderedFile::new(format!("{AUTH_DIR}/basic_auth.ini"), ini, 0o644),
        RenderedFile::new(
            format!("{AUTH_DIR}/{AUTH_MODULE}.py"),
            include_str!("guard_mlflow_auth.py").to_owned(),
            0o644,
        ),
        RenderedFile::new(
            UPSTREAM_SECRET_FILE,
            format!("{}\n", secrets.upstream_secret.expose()),
            0o600,
        ),
    ]
}

/// `mlflow server` as words, listening on `host:port`: the basic-auth app with
/// `--mlflow-permissions`, artifacts served through it.
pub(crate) fn server_command(
    d: &Deployment,
    mlflow_bin: &str,
    host: &str,
    port: u16,
    backend: &str,
    artifacts: &str,
) -> Vec<String> {
    let mut words = vec![mlflow_bin.to_owned(), "server".into()];
    if d.mlflow_permissions {
        words.extend(["--app-name".into(), "basic-auth".into()]);
    }
    words.extend([
        "--host".into(),
        host.to_owned(),
        "--port".into(),
        port.to_string(),
        "--backend-store-uri".into(),
        backend.to_owned(),
        "--serve-artifacts".into(),
        "--artifacts-destination".into(),
        artifacts.to_owned(),
    ]);
    words
}

/// mlflow.env for the host targets (mode 0600): read by systemd's EnvironmentFile= and sourced
/// by supervisor's mlflow command. Only plain `KEY=value` lines, which both understand.
pub(crate) fn host_env_file(d: &Deployment, secrets: &Secrets, generator: &str) -> String {
    let mut out = format!("# mlflow's secrets, written by `{generator}` with mode 0600. Keep it that way.\n");
    if d.backend == Backend::Postgres {
        out.push_str(&format!(
            "\n# Password of PostgreSQL role {PG_USER} (libpq reads PGPASSWORD). Create the role with it.\n\
             PGPASSWORD={}\n",
            secrets.postgres_password.expose()
        ));
    }
    if d.mlflow_permissions {
        out.push_str(&format!(
            "\n# The auth app: its admin account's password (set when its user store is first made) and\n\
             # the key that signs its CSRF tokens.\n\
             MLFLOW_AUTH_ADMIN_PASSWORD={}\n\
             MLFLOW_FLASK_SERVER_SECRET_KEY={}\n",
            secrets.mlflow_admin_password.expose(),
            secrets.flask_secret_key.expose()
        ));
    }
    if let Some(uri) = d.artifacts.s3_uri() {
        out.push_str(&format!(
            "\n# Credentials for {uri}: uncomment and fill in, or leave them out to let boto3 find\n\
             # others (an instance role, ~/.aws/credentials). MLFLOW_S3_ENDPOINT_URL is for S3-compatible storage.\n\
             #AWS_ACCESS_KEY_ID=\n\
             #AWS_SECRET_ACCESS_KEY=\n\
             #AWS_DEFAULT_REGION=us-east-1\n\
             #MLFLOW_S3_ENDPOINT_URL=\n"
        ));
    }
    out
}

/// The shell command that installs MLflow (and this deployment's extra packages) into the venv
/// holding `mlflow_bin`, for the host targets' next steps.
pub(crate) fn install_hint(d: &Deployment, mlflow_bin: &std::path::Path) -> String {
    let mut pkgs = vec![format!("\"mlflow=={}\"", d.mlflow_version)];
    pkgs.extend(extra_packages(d).iter().map(|p| format!("\"{p}\"")));
    let venv = mlflow_bin
        .parent()
        .filter(|b| b.ends_with("bin"))
        .and_then(|b| b.parent());
    match venv {
        Some(v) => format!(
            "python3 -m venv {v} && {v}/bin/pip install {}",
            pkgs.join(" "),
            v = v.display()
        ),
        None => format!(
            "pip install {}    # so that {} runs this release",
            pkgs.join(" "),
            mlflow_bin.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins_cover_the_public_names_and_the_upstream() {
        let acme = Tls::Acme {
            domains: vec!["a.example.com".into(), "b.example.com".into()],
            email: "ops@example.com".into(),
        };
        assert_eq!(
            allowed_hosts(&acme, 443, "mlflow:5000"),
            "a.example.com,b.example.com,mlflow:5000"
        );
        assert_eq!(
            cors_origins(&acme, 8443),
            "https://a.example.com:8443,https://b.example.com:8443"
        );
        assert_eq!(
            allowed_hosts(&Tls::SelfSigned, 8443, "127.0.0.1:5000"),
            "localhost:8443,127.0.0.1:8443,127.0.0.1:5000"
        );
        assert_eq!(
            cors_origins(&Tls::SelfSigned, 8443),
            "https://localhost:8443,https://127.0.0.1:8443"
        );
    }
}
