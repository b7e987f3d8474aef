//! guard's deploy files: a typed model of a guard-in-front-of-MLflow deployment and one pure
//! renderer per target (docker-compose, systemd, supervisord), plus the atomic writer.
//! [`run`] is what `guard deploy` calls: validate, render, write all or nothing.

pub mod compose;
pub mod error;
mod mlflow;
pub mod model;
pub mod options;
mod quote;
pub mod secrets;
pub mod supervisor;
pub mod systemd;
pub mod write;

use std::path::PathBuf;

pub use error::DeployError;
pub use model::{
    parse_artifacts, parse_domain, parse_email, parse_mlflow_version, Artifacts, Backend, Deployment, Layout, Target,
    Tls, DEFAULT_MLFLOW_VERSION,
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
    }
}

/// The commands to run after the files are written.
pub fn next_steps(d: &Deployment, layout: &Layout) -> Vec<String> {
    match d.target {
        Target::Compose => compose::next_steps(d),
        Target::Systemd => systemd::next_steps(d, layout),
        Target::Supervisor => supervisor::next_steps(d, layout),
    }
}

/// `guard deploy`: validates the options, then [`deploy`]s with production host paths (or
/// those given). On any error nothing is written.
pub fn run(opts: DeployOptions) -> Result<DeployReport, DeployError> {
    let (deployment, layout) = validate(&opts)?;
    deploy(&deployment, &layout)
}

/// Generates secrets (keeping an existing file's with `--force`, so a database keeps its
/// password), renders and writes all files at once. Tests call this with a custom [`Layout`]
/// (ports, temporary paths).
pub fn deploy(d: &Deployment, layout: &Layout) -> Result<DeployReport, DeployError> {
    let mut secrets = Secrets::generate()?;
    if d.force {
        let old = match d.target {
            Target::Compose => ".env",
            Target::Systemd | Target::Supervisor => "mlflow.env",
        };
        secrets.keep_from(&d.out_dir.join(old))?;
    }
    let files = render(d, layout, &secrets);
    let written = write::write_files(&d.out_dir, &files, d.force)?;
    Ok(DeployReport {
        written,
        next_steps: next_steps(d, layout),
    })
}
