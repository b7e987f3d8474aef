//! The compose target: docker-compose.yml (guard, mlflow, a one-shot migration, postgres, an
//! optional notebook), the .env holding its secrets, guard's Dockerfile (it packages the guard
//! binary copied beside it, so the directory builds on its own), and the small Dockerfiles that
//! add to the official images exactly the packages this deployment needs. Valid for
//! docker-compose 1.29 and Compose v2: no `dockerfile_inline`, no top-level `name`, every
//! string quoted.

use std::fmt::Write as _;

use crate::image;
use crate::mlflow::{self, PG_DATABASE, PG_USER};
use crate::model::{Artifacts, Backend, Deployment, Tls, STOP_TIMEOUT_SECS};
use crate::quote::{yaml, yaml_flow};
use crate::secrets::Secrets;
use crate::RenderedFile;

/// The official PostgreSQL image. 17 keeps its data in /var/lib/postgresql/data (18 moved it).
const POSTGRES_IMAGE: &str = "postgres:17";
/// The Jupyter image `--with-notebook` builds on, pinned to a dated tag.
const NOTEBOOK_IMAGE: &str = "quay.io/jupyter/scipy-notebook:2026-09-18";

/// guard's listeners inside its container. Unprivileged ports, so the non-root image needs no
/// capability whatever the runtime's sysctls; the host's 443/80 (or 8443) map onto them.
const GUARD_TLS_PORT: u16 = 8443;
const GUARD_HTTP_PORT: u16 = 8080;
/// guard's state inside its container (users, tokens, certificates, ACME account).
const GUARD_STATE: &str = "/var/lib/guard";
/// The service name and port guard forwards to, on the project network only.
const MLFLOW_UPSTREAM: &str = "mlflow:5000";
const MLFLOW_ARTIFACTS: &str = "/mlflow/artifacts";
const MLFLOW_DB_DIR: &str = "/mlflow/db";
/// `--mlflow-permissions`: the auth config and function (read-only), the auth app's user store,
/// and the shared secret, inside the containers.
const MLFLOW_AUTH_DIR: &str = "/mlflow/auth";
const MLFLOW_AUTH_DB_DIR: &str = "/mlflow/auth-db";
const SECRET_IN_CONTAINER: &str = "/run/guard/upstream.secret";
/// guard's user in the image `guard deploy` writes (see `image::guard_dockerfile`).
const GUARD_UID: u32 = 10001;

/// Renders docker-compose.yml, .env (0600), guard's Dockerfile and .dockerignore, and
/// mlflow/Dockerfile and notebook/Dockerfile when needed. Pure: the secrets come in as a
/// parameter; the guard binary the Dockerfile packages is copied by [`crate::deploy`].
pub fn render(d: &Deployment, secrets: &Secrets) -> Vec<RenderedFile> {
    let mut files = vec![
        RenderedFile::new("docker-compose.yml", compose_file(d), 0o644),
        RenderedFile::new(".env", env_file(d, secrets), 0o600),
        RenderedFile::new("Dockerfile", image::guard_dockerfile("guard deploy compose"), 0o644),
        RenderedFile::new(".dockerignore", image::DOCKERIGNORE.into(), 0o644),
    ];
    if let Some(dockerfile) = mlflow::dockerfile(d, "guard deploy compose") {
        files.push(RenderedFile::new("mlflow/Dockerfile", dockerfile, 0o644));
    }
    if d.with_notebook {
        files.push(RenderedFile::new("notebook/Dockerfile", notebook_dockerfile(d), 0o644));
    }
    if d.mlflow_permissions {
        files.extend(mlflow::auth_files(
            secrets,
            "guard deploy compose",
            &mlflow::sqlite_uri(&format!("{MLFLOW_AUTH_DB_DIR}/basic_auth.db")),
        ));
    }
    files
}

/// The commands to run after writing, in order.
pub fn next_steps(d: &Deployment) -> Vec<String> {
    let out = d.out_dir.display();
    let mut steps = Vec::new();
    if let Some(uri) = d.artifacts.s3_uri() {
        steps.push(format!(
            "edit {out}/.env: set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION for {uri} (leave the keys empty to use an instance role)"
        ));
    }
    let url = match &d.tls {
        Tls::Acme { domains, .. } => {
            steps.push(format!(
                "point DNS for {} at this host and open ports 80 and 443 (Let's Encrypt validates over them)",
                domains.join(", ")
            ));
            format!("https://{}/", domains[0])
        }
        Tls::SelfSigned => format!("https://localhost:{GUARD_TLS_PORT}/ (self-signed certificate)"),
    };
    if d.mlflow_permissions {
        steps.push(format!(
            "sudo chown {GUARD_UID} {out}/{}    # guard's user in its image reads it (mlflow gets the same value from .env)",
            mlflow::UPSTREAM_SECRET_FILE
        ));
    }
    steps.push(format!(
        "cd {out} && docker compose build    # guard's image packages the guard binary beside ./Dockerfile"
    ));
    // guard refuses to start with no one to let in: the first user is added in a one-off
    // container on guard's volume, before `up`.
    steps.push("docker compose run --rm guard adduser alice    # the first user (guard starts only with one)".into());
    steps.push("docker compose up -d".into());
    steps.push(
        "docker compose exec guard guard adduser bob && docker compose kill -s HUP guard    # later users, then reload"
            .into(),
    );
    steps.push(format!("open {url}"));
    if d.with_notebook {
        steps.push("the notebook publishes no port (serving it through guard needs a second site, a later guard feature); it reaches MLflow at http://mlflow:5000 and its token is JUPYTER_TOKEN in .env".into());
    }
    steps
}

/// A service in the order its keys are written.
struct Service {
    name: &'static str,
    comment: &'static [&'static str],
    /// Comment lines written above a key of this service: (key, line).
    notes: Vec<(&'static str, &'static str)>,
    /// `build.context` (a directory next to the compose file) or an image to pull.
    build: Option<&'static str>,
    image: Option<String>,
    command: Vec<String>,
    environment: Vec<(&'static str, String)>,
    ports: Vec<String>,
    volumes: Vec<String>,
    depends_on: Vec<(&'static str, &'static str)>,
    healthcheck: Option<Healthcheck>,
    stop_grace_period: Option<String>,
    restart: &'static str,
}

struct Healthcheck {
    test: Vec<String>,
    interval: &'static str,
    timeout: &'static str,
    retries: u32,
    start_period: &'static str,
}

impl Service {
    fn new(name: &'static str, restart: &'static str) -> Service {
        Service {
            name,
            comment: &[],
            notes: Vec::new(),
            build: None,
            image: None,
            command: Vec::new(),
            environment: Vec::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            depends_on: Vec::new(),
            healthcheck: None,
            stop_grace_period: None,
            restart,
        }
    }

    fn note(&self, out: &mut String, key: &str) {
        for (_, line) in self.notes.iter().filter(|(k, _)| *k == key) {
            let _ = writeln!(out, "    # {line}");
        }
    }

    fn write(&self, out: &mut String) {
        for line in self.comment {
            let _ = writeln!(out, "  # {line}");
        }
        let _ = writeln!(out, "  {}:", self.name);
        if let Some(context) = self.build {
            let _ = writeln!(out, "    build:\n      context: {}", yaml(context));
        }
        if let Some(image) = &self.image {
            let _ = writeln!(out, "    image: {}", yaml(image));
        }
        if !self.command.is_empty() {
            self.note(out, "command");
            if self.command.len() <= 4 {
                let _ = writeln!(out, "    command: {}", yaml_flow(&self.command));
            } else {
                out.push_str("    command:\n");
                for word in &self.command {
                    let _ = writeln!(out, "      - {}", yaml(word));
                }
            }
        }
        if !self.environment.is_empty() {
            self.note(out, "environment");
            out.push_str("    environment:\n");
            for (k, v) in &self.environment {
                let _ = writeln!(out, "      {k}: {}", yaml(v));
            }
        }
        for (key, items) in [("ports", &self.ports), ("volumes", &self.volumes)] {
            if !items.is_empty() {
                self.note(out, key);
                let _ = writeln!(out, "    {key}:");
                for item in items {
                    let _ = writeln!(out, "      - {}", yaml(item));
                }
            }
        }
        if !self.depends_on.is_empty() {
            self.note(out, "depends_on");
            out.push_str("    depends_on:\n");
            for (service, condition) in &self.depends_on {
                let _ = writeln!(out, "      {service}:\n        condition: {}", yaml(condition));
            }
        }
        if let Some(h) = &self.healthcheck {
            self.note(out, "healthcheck");
            let _ = writeln!(
                out,
                "    healthcheck:\n      test: {}\n      interval: {}\n      timeout: {}\n      retries: {}\n      start_period: {}",
                yaml_flow(&h.test),
                yaml(h.interval),
                yaml(h.timeout),
                h.retries,
                yaml(h.start_period),
            );
        }
        if let Some(grace) = &self.stop_grace_period {
            self.note(out, "stop_grace_period");
            let _ = writeln!(out, "    stop_grace_period: {}", yaml(grace));
        }
        self.note(out, "restart");
        let _ = writeln!(out, "    restart: {}", yaml(self.restart));
    }
}

/// `${VAR:?...}`: compose refuses to start, naming the variable, when .env lacks it.
fn required_var(name: &str) -> String {
    format!("${{{name}:?missing from .env (guard deploy compose writes it)}}")
}

fn compose_file(d: &Deployment) -> String {
    let postgres = d.backend == Backend::Postgres;
    let mut services = vec![guard_service(d), mlflow_service(d), migrate_service(d)];
    if postgres {
        services.push(postgres_service());
    }
    if d.with_notebook {
        services.push(notebook_service());
    }

    let mut volumes = vec!["guard-state"];
    if matches!(d.artifacts, Artifacts::Managed) {
        volumes.push("mlflow-artifacts");
    }
    if postgres {
        volumes.push("postgres-data");
    } else {
        volumes.push("mlflow-db");
    }
    if d.with_notebook {
        volumes.push("notebook-work");
    }
    if d.mlflow_permissions {
        volumes.push("mlflow-auth-db");
    }

    let mut out = String::from(
        "# guard in front of MLflow, written by `guard deploy compose`.\n\
         # Only guard publishes ports: mlflow and postgres are reachable on this project's network\n\
         # alone, so nothing goes around the proxy. Secrets live in .env (mode 0600) and appear here\n\
         # only as ${VAR}. Works with docker-compose 1.29 and Docker Compose v2.\n\
         \n\
         services:\n",
    );
    for (i, s) in services.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        s.write(&mut out);
    }
    out.push_str("\nvolumes:\n");
    for v in volumes {
        let _ = writeln!(out, "  {v}: {{}}");
    }
    out
}

fn guard_service(d: &Deployment) -> Service {
    let mut s = Service::new("guard", "unless-stopped");
    s.build = Some(".");
    s.command = vec!["serve".into()];
    // Settings go in the environment rather than flags, so `guard healthcheck`, run by the
    // healthcheck in the same container, sees the same listener.
    s.environment = vec![
        ("GUARD_UPSTREAM", MLFLOW_UPSTREAM.into()),
        ("GUARD_STATE_DIR", GUARD_STATE.into()),
        ("GUARD_LISTEN", format!("0.0.0.0:{GUARD_TLS_PORT}")),
    ];
    match &d.tls {
        Tls::Acme { domains, email } => {
            s.environment
                .push(("GUARD_HTTP_LISTEN", format!("0.0.0.0:{GUARD_HTTP_PORT}")));
            s.environment.push(("GUARD_DOMAIN", domains.join(",")));
            s.environment.push(("GUARD_ACME_EMAIL", email.clone()));
            s.ports = vec![format!("80:{GUARD_HTTP_PORT}"), format!("443:{GUARD_TLS_PORT}")];
        }
        Tls::SelfSigned => {
            s.ports = vec![format!("{GUARD_TLS_PORT}:{GUARD_TLS_PORT}")];
        }
    }
    s.volumes = vec![format!("guard-state:{GUARD_STATE}")];
    if d.mlflow_permissions {
        s.volumes
            .push(format!("./{}:{SECRET_IN_CONTAINER}:ro", mlflow::UPSTREAM_SECRET_FILE));
        s.environment
            .push(("GUARD_UPSTREAM_SECRET_FILE", SECRET_IN_CONTAINER.into()));
    }
    s.notes = vec![
        (
            "environment",
            "Settings as variables, so `guard healthcheck` sees the same listener.",
        ),
        (
            "ports",
            "The only published ports. Inside, guard (a non-root user) listens on",
        ),
        ("ports", "unprivileged ports."),
        (
            "depends_on",
            "Started, not healthy: guard serves health checks and ACME meanwhile.",
        ),
        (
            "stop_grace_period",
            "Longer than guard's 30 s shutdown grace: uploads in flight finish.",
        ),
    ];
    // Started, not healthy: guard answers 502 while mlflow starts, and keeps serving ACME
    // challenges and health checks meanwhile. The dependency also makes compose stop guard
    // (draining uploads) before mlflow.
    s.depends_on = vec![("mlflow", "service_started")];
    s.healthcheck = Some(Healthcheck {
        test: vec!["CMD".into(), "guard".into(), "healthcheck".into()],
        interval: "30s",
        timeout: "5s",
        retries: 3,
        start_period: "10s",
    });
    s.stop_grace_period = Some(format!("{STOP_TIMEOUT_SECS}s"));
    s
}

/// The image mlflow and migrate run: a small local build when packages are missing from the
/// official image, the official image itself otherwise.
fn set_mlflow_image(s: &mut Service, d: &Deployment) {
    if mlflow::extra_packages(d).is_empty() {
        s.image = Some(mlflow::official_image(&d.mlflow_version));
    } else {
        s.build = Some("./mlflow");
    }
}

fn backend_uri(d: &Deployment) -> String {
    match d.backend {
        Backend::Postgres => mlflow::postgres_uri("postgres:5432"),
        Backend::Sqlite => mlflow::sqlite_uri(&format!("{MLFLOW_DB_DIR}/mlflow.db")),
    }
}

fn mlflow_service(d: &Deployment) -> Service {
    let mut s = Service::new("mlflow", "unless-stopped");
    set_mlflow_image(&mut s, d);
    let destination = match &d.artifacts {
        Artifacts::S3 { .. } => d.artifacts.s3_uri().unwrap_or_default(),
        Artifacts::Managed | Artifacts::Local(_) => MLFLOW_ARTIFACTS.into(),
    };
    s.command = mlflow::server_command(d, "mlflow", "0.0.0.0", 5000, &backend_uri(d), &destination);
    let public_port = match d.tls {
        Tls::Acme { .. } => 443,
        Tls::SelfSigned => GUARD_TLS_PORT,
    };
    s.environment = vec![
        (
            "MLFLOW_SERVER_ALLOWED_HOSTS",
            mlflow::allowed_hosts(&d.tls, public_port, MLFLOW_UPSTREAM),
        ),
        (
            "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS",
            mlflow::cors_origins(&d.tls, public_port),
        ),
    ];
    if d.backend == Backend::Postgres {
        s.environment.push(("PGPASSWORD", required_var("POSTGRES_PASSWORD")));
    }
    if d.mlflow_permissions {
        // The auth app, guard's authorization function and the secret it checks.
        s.environment.extend([
            ("MLFLOW_AUTH_CONFIG_PATH", format!("{MLFLOW_AUTH_DIR}/basic_auth.ini")),
            ("PYTHONPATH", MLFLOW_AUTH_DIR.into()),
            // A variable, not the file guard reads: that file is guard's uid's alone.
            ("GUARD_UPSTREAM_SECRET", required_var("GUARD_UPSTREAM_SECRET")),
            ("MLFLOW_AUTH_ADMIN_PASSWORD", required_var("MLFLOW_AUTH_ADMIN_PASSWORD")),
            (
                "MLFLOW_FLASK_SERVER_SECRET_KEY",
                required_var("MLFLOW_FLASK_SERVER_SECRET_KEY"),
            ),
        ]);
        s.volumes.push(format!("./{}:{MLFLOW_AUTH_DIR}:ro", mlflow::AUTH_DIR));
        s.volumes.push(format!("mlflow-auth-db:{MLFLOW_AUTH_DB_DIR}"));
    }
    if d.artifacts.is_s3() {
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"] {
            s.environment.push((key, format!("${{{key}}}")));
        }
    }
    match &d.artifacts {
        Artifacts::Managed => s.volumes.push(format!("mlflow-artifacts:{MLFLOW_ARTIFACTS}")),
        Artifacts::Local(dir) => s.volumes.push(format!("{}:{MLFLOW_ARTIFACTS}", bind_source(dir))),
        Artifacts::S3 { .. } => {}
    }
    if d.backend == Backend::Sqlite {
        s.volumes.push(format!("mlflow-db:{MLFLOW_DB_DIR}"));
    }
    if d.backend == Backend::Postgres {
        s.depends_on.push(("postgres", "service_healthy"));
    }
    s.depends_on.push(("migrate", "service_completed_successfully"));
    s.notes = vec![
        (
            "environment",
            "MLflow 3.5+ answers 403 to Host and Origin values not listed here.",
        ),
        (
            "healthcheck",
            "The image has Python but no curl; /health skips the Host check.",
        ),
    ];
    s.healthcheck = Some(Healthcheck {
        test: vec![
            "CMD".into(),
            "python".into(),
            "-c".into(),
            "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)".into(),
        ],
        interval: "30s",
        timeout: "5s",
        retries: 3,
        start_period: "60s",
    });
    s.stop_grace_period = Some(format!("{STOP_TIMEOUT_SECS}s"));
    s
}

/// A compose bind-mount source: relative paths must start with `.` or compose reads them as a
/// named volume.
fn bind_source(dir: &std::path::Path) -> String {
    let s = dir.to_string_lossy();
    if dir.is_absolute() || s.starts_with("./") || s.starts_with("../") {
        s.into_owned()
    } else {
        format!("./{s}")
    }
}

fn migrate_service(d: &Deployment) -> Service {
    // Never restarted: a failed migration must stop mlflow from starting, not loop.
    let mut s = Service::new("migrate", "no");
    s.comment = &[
        "One-shot: creates the schema in an empty database or migrates an old one, before",
        "mlflow's workers start; mlflow waits for it to complete successfully.",
    ];
    set_mlflow_image(&mut s, d);
    s.command = vec!["mlflow".into(), "db".into(), "upgrade".into(), backend_uri(d)];
    match d.backend {
        Backend::Postgres => {
            s.environment = vec![("PGPASSWORD", required_var("POSTGRES_PASSWORD"))];
            s.depends_on = vec![("postgres", "service_healthy")];
        }
        Backend::Sqlite => s.volumes = vec![format!("mlflow-db:{MLFLOW_DB_DIR}")],
    }
    s
}

fn postgres_service() -> Service {
    let mut s = Service::new("postgres", "unless-stopped");
    s.image = Some(POSTGRES_IMAGE.into());
    s.environment = vec![
        ("POSTGRES_USER", PG_USER.into()),
        ("POSTGRES_DB", PG_DATABASE.into()),
        ("POSTGRES_PASSWORD", required_var("POSTGRES_PASSWORD")),
    ];
    s.volumes = vec!["postgres-data:/var/lib/postgresql/data".into()];
    s.notes = vec![
        (
            "healthcheck",
            "Over TCP: on its first start the image initialises the database on",
        ),
        (
            "healthcheck",
            "the socket alone, then restarts; a socket check passes too early.",
        ),
    ];
    s.healthcheck = Some(Healthcheck {
        test: [
            "CMD",
            "pg_isready",
            "--host",
            "127.0.0.1",
            "--username",
            PG_USER,
            "--dbname",
            PG_DATABASE,
        ]
        .map(String::from)
        .to_vec(),
        interval: "5s",
        timeout: "5s",
        retries: 10,
        start_period: "30s",
    });
    s
}

fn notebook_service() -> Service {
    let mut s = Service::new("notebook", "unless-stopped");
    s.comment = &[
        "No published port: reaching Jupyter through guard needs a second site (a later guard",
        "feature). It talks to MLflow directly on the project network.",
    ];
    s.build = Some("./notebook");
    s.environment = vec![
        ("MLFLOW_TRACKING_URI", "http://mlflow:5000".into()),
        ("JUPYTER_TOKEN", required_var("JUPYTER_TOKEN")),
    ];
    s.volumes = vec!["notebook-work:/home/jovyan/work".into()];
    s.depends_on = vec![("mlflow", "service_started")];
    s
}

fn env_file(d: &Deployment, secrets: &Secrets) -> String {
    let mut out = String::from(
        "# Secrets for docker-compose.yml, written by `guard deploy compose` with mode 0600.\n\
         # docker compose reads this file from the project directory; keep it out of version control.\n",
    );
    if d.backend == Backend::Postgres {
        let _ = write!(
            out,
            "\n# Password of PostgreSQL role {PG_USER}. The database keeps the value it first started with:\n\
             # to change it, run ALTER ROLE in postgres too. `guard deploy --force` keeps this value.\n\
             POSTGRES_PASSWORD={}\n",
            secrets.postgres_password.expose()
        );
    }
    if let Some(uri) = d.artifacts.s3_uri() {
        let _ = write!(
            out,
            "\n# Credentials mlflow uses for {uri}. Empty keys let boto3 find others (an instance role).\n\
             # For S3-compatible storage, also add MLFLOW_S3_ENDPOINT_URL to services.mlflow.environment.\n\
             AWS_ACCESS_KEY_ID=\n\
             AWS_SECRET_ACCESS_KEY=\n\
             AWS_DEFAULT_REGION=us-east-1\n"
        );
    }
    if d.with_notebook {
        let _ = write!(
            out,
            "\n# Jupyter's login token.\nJUPYTER_TOKEN={}\n",
            secrets.jupyter_token.expose()
        );
    }
    if d.mlflow_permissions {
        let _ = write!(
            out,
            "\n# MLflow's auth app: its admin account's password (set when its user store is first made)\n\
             # and the key that signs its CSRF tokens.\n\
             MLFLOW_AUTH_ADMIN_PASSWORD={}\n\
             MLFLOW_FLASK_SERVER_SECRET_KEY={}\n\
             # The secret guard sends MLflow (X-Guard-Secret); guard reads the same value from\n\
             # upstream.secret. Change both together.\n\
             GUARD_UPSTREAM_SECRET={}\n",
            secrets.mlflow_admin_password.expose(),
            secrets.flask_secret_key.expose(),
            secrets.upstream_secret.expose()
        );
    }
    out
}

fn notebook_dockerfile(d: &Deployment) -> String {
    format!(
        "# Jupyter with the MLflow client matching the server, written by `guard deploy compose`.\n\
         FROM {NOTEBOOK_IMAGE}\n\
         RUN pip install --no-cache-dir \"mlflow-skinny=={version}\"\n",
        version = d.mlflow_version,
    )
}
