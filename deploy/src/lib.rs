//! guard's deploy files: a typed model of a guard-in-front-of-MLflow deployment and one pure
//! renderer per target (docker-compose, systemd, supervisord, Kubernetes), plus the atomic
//! writer. [`run`] is what `guard deploy` calls: validate, render, write all or nothing. Every
//! output also holds a copy of the running guard binary (the container targets' Dockerfile
//! packages it, the host targets install it), so the directory deploys on its own.

pub mod compose;
pub mod error;
pub mod image;
pub mod kubernetes;
mod mlflow;
pub mod model;
pub mod options;
mod quote;
pub mod secrets;
pub mod supervisor;
pub mod systemd;
pub mod write;
mod yaml;

use std::path::PathBuf;

pub use error::DeployError;
pub use model::{
    default_guard_image, default_mlflow_image, parse_artifacts, parse_domain, parse_email, parse_image,
    parse_mlflow_version, parse_namespace, Artifacts, Backend, Challenge, Deployment, Kubernetes, Layout, Target, Tls,
    DEFAULT_MLFLOW_VERSION,
};
pub use options::{validate, DeployOptions};
pub use secrets::{Secret, Secrets};

/// One file a renderer produced, relative to the output directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedFile {
    /// Where it goes, relative to `--out` (`docker-compose.yml`, `mlflow/Dockerfile`).
    pub path: PathBuf,
    /// The whole file.
    pub contents: String,
    /// Its permission bits (0o600 for files holding secrets).
    pub mode: u32,
}

impl RenderedFile {
    /// A file at `path` with `contents` and `mode`.
    pub fn new(path: impl Into<PathBuf>, contents: String, mode: u32) -> RenderedFile {
        RenderedFile {
            path: path.into(),
            contents,
            mode,
        }
    }
}

/// What `guard deploy` did, for the CLI to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployReport {
    /// Every file written, as `--out` joined with its relative path.
    pub written: Vec<PathBuf>,
    /// Commands to run next, in order, one per entry.
    pub next_steps: Vec<String>,
}

/// Renders every file for the deployment's target. Pure: secrets and host paths come in.
pub fn render(d: &Deployment, layout: &Layout, secrets: &Secrets) -> Vec<RenderedFile> {
    match d.target {
        Target::Compose => compose::render(d, secrets),
        Target::Systemd => systemd::render(d, layout, secrets),
        Target::Supervisor => supervisor::render(d, layout, secrets),
        Target::Kubernetes => kubernetes::render(d, secrets),
    }
}

/// The commands to run after the files are written.
pub fn next_steps(d: &Deployment, layout: &Layout) -> Vec<String> {
    match d.target {
        Target::Compose => compose::next_steps(d),
        Target::Systemd => systemd::next_steps(d, layout),
        Target::Supervisor => supervisor::next_steps(d, layout),
        Target::Kubernetes => kubernetes::next_steps(d),
    }
}

/// `guard deploy`: validates the options, then [`deploy`]s with production host paths (or
/// those given). On any error nothing is written.
pub fn run(opts: DeployOptions) -> Result<DeployReport, DeployError> {
    let (deployment, layout) = validate(&opts)?;
    deploy(&deployment, &layout)
}

/// Generates secrets (keeping an existing file's with `--force`, so a database keeps its
/// password), renders and writes all files at once, with a copy of the running guard binary.
/// Tests call this with a custom [`Layout`] (ports, temporary paths).
pub fn deploy(d: &Deployment, layout: &Layout) -> Result<DeployReport, DeployError> {
    let mut secrets = Secrets::generate()?;
    if d.force {
        let old = match d.target {
            Target::Compose => ".env",
            Target::Systemd | Target::Supervisor => "mlflow.env",
            Target::Kubernetes => "secrets.yaml",
        };
        secrets.keep_from(&d.out_dir.join(old))?;
        secrets.keep_upstream_secret(&d.out_dir.join(mlflow::UPSTREAM_SECRET_FILE))?;
    }
    let mut files = render(d, layout, &secrets);
    if d.force && d.target == Target::Kubernetes {
        // auth/ holds the users, roles and tokens the operator added since: --force never resets
        // them.
        files.retain(|f| !(f.path.starts_with("auth") && d.out_dir.join(&f.path).exists()));
    }
    // Every target's output holds the guard that wrote it: the container targets' Dockerfile
    // packages it, the host targets' next steps install it.
    let (exe, binary) = guard_binary()?;
    if matches!(d.target, Target::Compose | Target::Kubernetes) {
        image::check_runs_on_base(&binary).map_err(|reason| DeployError::Binary { path: exe, reason })?;
    }
    let mut entries: Vec<write::Entry<'_>> = files.iter().map(write::Entry::from).collect();
    entries.push(write::Entry {
        path: std::path::Path::new(image::GUARD_BINARY),
        bytes: &binary,
        mode: 0o755,
    });
    let written = write::write_entries(&d.out_dir, &entries, d.force)?;
    Ok(DeployReport {
        written,
        next_steps: next_steps(d, layout),
    })
}

/// The running guard's own executable (its path and bytes), to copy into the output directory.
fn guard_binary() -> Result<(PathBuf, Vec<u8>), DeployError> {
    let io = |path: PathBuf| {
        move |source| DeployError::Io {
            action: "read the running guard binary",
            path,
            source,
        }
    };
    let exe = std::env::current_exe().map_err(io(PathBuf::from("/proc/self/exe")))?;
    let bytes = std::fs::read(&exe).map_err(io(exe.clone()))?;
    Ok((exe, bytes))
}
