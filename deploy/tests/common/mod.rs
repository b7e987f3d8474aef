//! Shared by the deploy tests: the option combinations every test walks, fixed secrets,
//! temporary directories that clean up, and the rule for tests that need an outside program
//! (panic under `CI`, otherwise a note and a skip).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../../tests/common/program.rs"]
mod program;
#[allow(unused_imports)] // used by validators.rs, not by every test binary
pub use program::require_program;

use guard_deploy::{
    render, Artifacts, Backend, Challenge, Deployment, Kubernetes, Layout, RenderedFile, Secret, Secrets, Target, Tls,
    DEFAULT_MLFLOW_VERSION,
};

/// One target and option combination, named like its golden directory.
pub struct Case {
    pub name: &'static str,
    pub deployment: Deployment,
    pub layout: Layout,
}

/// Secrets with fixed, recognisable values, so golden files are stable and tests can search
/// rendered files for them.
pub fn fixed_secrets() -> Secrets {
    Secrets {
        postgres_password: Secret::new("pgpass0123456789abcdef0123456789abcdef01234567"),
        jupyter_token: Secret::new("jupytok0123456789abcdef0123456789abcdef0123456"),
        flask_secret_key: Secret::new("flaskkey0123456789abcdef0123456789abcdef012345"),
        session_keys: Secret::new(
            "{\"keys\":[{\"id\":\"0a1b2c3d\",\"key\":\"c2Vzc2lvbmtleTAxMjM0NTY3ODlhYmNkZWYwMTIzNDU\",\"created\":1700000000}]}\n",
        ),
        upstream_secret: Secret::new("upsecret0123456789abcdef0123456789abcdef012345"),
        mlflow_admin_password: Secret::new("mlfadmin0123456789abcdef0123456789abcdef012345"),
        database_uri: None,
    }
}

/// Every fixed secret value, for tests that search rendered files for leaks.
pub fn fixed_secret_values() -> Vec<String> {
    let s = fixed_secrets();
    vec![
        s.postgres_password.expose().to_string(),
        s.jupyter_token.expose().to_string(),
        s.flask_secret_key.expose().to_string(),
        s.upstream_secret.expose().to_string(),
        s.mlflow_admin_password.expose().to_string(),
        "c2Vzc2lvbmtleTAxMjM0NTY3ODlhYmNkZWYwMTIzNDU".to_string(),
    ]
}

fn acme() -> Tls {
    Tls::Acme {
        domains: vec!["mlflow.example.com".into()],
        email: "ops@example.com".into(),
    }
}

fn s3() -> Artifacts {
    Artifacts::S3 {
        bucket: "ml-artifacts".into(),
        prefix: Some("mlflow".into()),
    }
}

fn deployment(target: Target, tls: Tls, backend: Backend, artifacts: Artifacts) -> Deployment {
    Deployment {
        target,
        tls,
        backend,
        artifacts,
        mlflow_version: DEFAULT_MLFLOW_VERSION.into(),
        with_notebook: false,
        mlflow_permissions: false,
        out_dir: PathBuf::from("/srv/guard"),
        force: false,
        kubernetes: Kubernetes::default(),
    }
}

fn kubernetes(tls: Tls, artifacts: Artifacts, with_postgres: bool, challenge: Challenge) -> Deployment {
    let mut d = deployment(Target::Kubernetes, tls, Backend::Postgres, artifacts);
    d.kubernetes.with_postgres = with_postgres;
    d.kubernetes.challenge = challenge;
    d
}

/// Every combination with a golden directory. The first is `guard deploy compose` with its
/// defaults: the repository's own docker-compose.yml.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let c = |name, d| Case {
        name,
        deployment: d,
        layout: Layout::default(),
    };
    use Backend::{Postgres, Sqlite};
    use Target::{Compose, Supervisor, Systemd};
    cases.push(c(
        "compose-postgres-volume-selfsigned",
        deployment(Compose, Tls::SelfSigned, Postgres, Artifacts::Managed),
    ));
    cases.push(c(
        "compose-postgres-volume-domain",
        deployment(Compose, acme(), Postgres, Artifacts::Managed),
    ));
    cases.push(c(
        "compose-postgres-s3-selfsigned",
        deployment(Compose, Tls::SelfSigned, Postgres, s3()),
    ));
    cases.push(c(
        "compose-postgres-s3-domain",
        deployment(Compose, acme(), Postgres, s3()),
    ));
    cases.push(c(
        "compose-sqlite-volume-selfsigned",
        deployment(Compose, Tls::SelfSigned, Sqlite, Artifacts::Managed),
    ));
    cases.push(c(
        "compose-sqlite-volume-domain",
        deployment(Compose, acme(), Sqlite, Artifacts::Managed),
    ));
    cases.push(c(
        "compose-sqlite-s3-selfsigned",
        deployment(Compose, Tls::SelfSigned, Sqlite, s3()),
    ));
    cases.push(c("compose-sqlite-s3-domain", deployment(Compose, acme(), Sqlite, s3())));
    cases.push(c(
        "compose-sqlite-hostdir-domain",
        deployment(
            Compose,
            acme(),
            Sqlite,
            Artifacts::Local(PathBuf::from("data/artifacts")),
        ),
    ));
    let mut notebook = deployment(Compose, Tls::SelfSigned, Postgres, Artifacts::Managed);
    notebook.with_notebook = true;
    cases.push(c("compose-postgres-volume-selfsigned-notebook", notebook));
    let mut permissions = deployment(Compose, Tls::SelfSigned, Postgres, Artifacts::Managed);
    permissions.mlflow_permissions = true;
    cases.push(c("compose-postgres-volume-selfsigned-permissions", permissions));

    cases.push(c(
        "systemd-sqlite-state-selfsigned",
        deployment(Systemd, Tls::SelfSigned, Sqlite, Artifacts::Managed),
    ));
    cases.push(c(
        "systemd-sqlite-state-domain",
        deployment(Systemd, acme(), Sqlite, Artifacts::Managed),
    ));
    cases.push(c(
        "systemd-postgres-s3-domain",
        deployment(Systemd, acme(), Postgres, s3()),
    ));
    let mut permissions = deployment(Systemd, acme(), Postgres, Artifacts::Managed);
    permissions.mlflow_permissions = true;
    cases.push(c("systemd-postgres-state-domain-permissions", permissions));
    cases.push(c(
        "supervisor-sqlite-here-selfsigned",
        deployment(Supervisor, Tls::SelfSigned, Sqlite, Artifacts::Managed),
    ));
    cases.push(c(
        "supervisor-postgres-s3-domain",
        deployment(Supervisor, acme(), Postgres, s3()),
    ));
    cases.push(c(
        "supervisor-postgres-hostdir-selfsigned",
        deployment(
            Supervisor,
            Tls::SelfSigned,
            Postgres,
            Artifacts::Local(PathBuf::from("/srv/mlflow-artifacts")),
        ),
    ));
    let mut permissions = deployment(Supervisor, Tls::SelfSigned, Sqlite, Artifacts::Managed);
    permissions.mlflow_permissions = true;
    cases.push(c("supervisor-sqlite-here-selfsigned-permissions", permissions));
    cases.push(c(
        "kubernetes-dsn-volume-http01",
        kubernetes(acme(), Artifacts::Managed, false, Challenge::Http01),
    ));
    cases.push(c(
        "kubernetes-postgres-s3-dns01",
        kubernetes(acme(), s3(), true, Challenge::Dns01),
    ));
    let mut custom = kubernetes(Tls::SelfSigned, Artifacts::Managed, true, Challenge::Http01);
    custom.kubernetes.namespace = "ml-team".into();
    custom.kubernetes.image = "registry.example.com/ops/guard:0.1.0".into();
    custom.kubernetes.mlflow_image = "registry.example.com/ops/mlflow:3.17.2".into();
    custom.kubernetes.replicas = 3;
    custom.kubernetes.mlflow_replicas = 1;
    cases.push(c("kubernetes-postgres-volume-selfsigned-custom", custom));
    cases.push(Case {
        name: "supervisor-sqlite-basedir-custom-ports",
        deployment: deployment(Supervisor, Tls::SelfSigned, Sqlite, Artifacts::Managed),
        layout: Layout {
            guard_bin: "/opt/guard/bin/guard".into(),
            mlflow_bin: "/opt/venv/bin/mlflow".into(),
            base_dir: Some("/var/lib/guard-stack".into()),
            guard_listen: Some("127.0.0.1:18443".parse().unwrap()),
            guard_http_listen: None,
            mlflow_port: 15000,
        },
    });
    cases
}

/// The cases for one target.
pub fn cases_for(target: Target) -> Vec<Case> {
    cases().into_iter().filter(|c| c.deployment.target == target).collect()
}

/// Renders a case with the fixed secrets.
pub fn render_case(case: &Case) -> Vec<RenderedFile> {
    render(&case.deployment, &case.layout, &fixed_secrets())
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!("guard-deploy-{name}-{}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes rendered files into `dir` (no atomicity needed in a private temp dir).
pub fn write_into(dir: &Path, files: &[RenderedFile]) {
    for f in files {
        let p = dir.join(&f.path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &f.contents).unwrap();
    }
}

/// Runs a command, returning (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A program in the MLflow and checker venv (`$GUARD_VENV`, default `/opt/guard-venv`), which
/// `.ci/run` makes: the rule of [`require_program`] applies.
pub fn require_venv_program(name: &str) -> Option<PathBuf> {
    let venv = std::env::var("GUARD_VENV").unwrap_or_else(|_| "/opt/guard-venv".into());
    let path = format!("{venv}/bin/{name}");
    require_program(
        &[path.as_str()],
        &format!("{venv}/bin/pip install {name} (.ci/run does; or set GUARD_VENV)"),
    )
}

/// `node` and an npm package from tests/browser's lock file (`npm ci --prefix tests/browser`),
/// under the rule of [`require_program`]: missing fails under `CI`, skips elsewhere.
pub fn require_node_package(package: &str) -> Option<PathBuf> {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/browser/node_modules")
        .join(package);
    if !modules.is_dir() {
        let msg = format!("{} is missing; run npm ci --prefix tests/browser", modules.display());
        if std::env::var_os("CI").is_some() {
            panic!("{msg} (CI requires it)");
        }
        eprintln!("note: skipping outside CI: {msg}");
        return None;
    }
    require_program(&["node"], "apt-get install -y nodejs npm")
}
