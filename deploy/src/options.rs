//! The `guard deploy` options as the command line gives them, and their validation into a
//! [`Deployment`] and [`Layout`]: each value's own syntax, then the rules between options and
//! targets. The first problem is reported with its flag.

use std::path::PathBuf;

use crate::error::DeployError;
use crate::model::{
    check_path_chars, default_mlflow_image, has_parent_component, parse_artifacts, parse_domain, parse_email,
    parse_image, parse_mlflow_version, parse_namespace, Artifacts, Backend, Challenge, Deployment, Kubernetes, Layout,
    Target, Tls, DEFAULT_MLFLOW_VERSION,
};

/// `guard deploy TARGET [options]`, unvalidated. The CLI fills it from clap; every value is
/// checked by [`validate`] (the `parse_*` helpers can also serve as clap value parsers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployOptions {
    /// The positional `TARGET`.
    pub target: Target,
    /// `--domain NAME`, repeatable. Empty: a self-signed certificate.
    pub domains: Vec<String>,
    /// `--acme-email EMAIL`: required with `--domain`, refused without.
    pub acme_email: Option<String>,
    /// `--backend sqlite|postgres`. `None`: postgres for compose, sqlite otherwise.
    pub backend: Option<Backend>,
    /// `--artifacts DIR|s3://bucket/prefix`. `None`: the target's own storage.
    pub artifacts: Option<String>,
    /// `--mlflow-version X.Y.Z`. `None`: [`DEFAULT_MLFLOW_VERSION`].
    pub mlflow_version: Option<String>,
    /// `--with-notebook` (compose only).
    pub with_notebook: bool,
    /// `--mlflow-permissions`.
    pub mlflow_permissions: bool,
    /// `--out DIR` (default `.`); created if missing.
    pub out_dir: PathBuf,
    /// `--force`: replace existing files.
    pub force: bool,
    /// `--guard-bin PATH` (systemd, supervisor): guard's absolute path on the host.
    pub guard_bin: Option<PathBuf>,
    /// `--mlflow-bin PATH` (systemd, supervisor): mlflow's absolute path on the host.
    pub mlflow_bin: Option<PathBuf>,
    /// `--base-dir DIR` (supervisor): state, logs and socket. `None`: next to supervisord.conf.
    pub base_dir: Option<PathBuf>,
    /// `--namespace NAME` (kubernetes). `None`: `mlflow`.
    pub namespace: Option<String>,
    /// `--image REF` (kubernetes): guard's image. `None`: [`crate::model::default_guard_image`].
    pub image: Option<String>,
    /// `--mlflow-image REF` (kubernetes). `None`: `guard-mlflow:<mlflow version>`.
    pub mlflow_image: Option<String>,
    /// `--replicas N` (kubernetes): guard's pods. `None`: 2.
    pub replicas: Option<u32>,
    /// `--mlflow-replicas N` (kubernetes). `None`: 2.
    pub mlflow_replicas: Option<u32>,
    /// `--with-postgres` (kubernetes): run PostgreSQL in the namespace.
    pub with_postgres: bool,
    /// `--acme-challenge http-01|dns-01` (kubernetes, with `--domain`). `None`: HTTP-01.
    pub acme_challenge: Option<Challenge>,
}

impl DeployOptions {
    /// The options with every flag at its default, writing into the current directory.
    pub fn new(target: Target) -> DeployOptions {
        DeployOptions {
            target,
            domains: Vec::new(),
            acme_email: None,
            backend: None,
            artifacts: None,
            mlflow_version: None,
            with_notebook: false,
            mlflow_permissions: false,
            out_dir: PathBuf::from("."),
            force: false,
            guard_bin: None,
            mlflow_bin: None,
            base_dir: None,
            namespace: None,
            image: None,
            mlflow_image: None,
            replicas: None,
            mlflow_replicas: None,
            with_postgres: false,
            acme_challenge: None,
        }
    }
}

/// Most pods of one Deployment the kubernetes target writes: a typo such as `--replicas 200`
/// is refused rather than scheduled.
const MAX_REPLICAS: u32 = 50;

/// Validates the options into the deployment and the host layout (production defaults for
/// anything not given).
pub fn validate(opts: &DeployOptions) -> Result<(Deployment, Layout), DeployError> {
    let target = opts.target;

    let mut domains: Vec<String> = Vec::new();
    for d in &opts.domains {
        let name = parse_domain(d).map_err(|e| DeployError::option("--domain", e))?;
        if domains.contains(&name) {
            return Err(DeployError::option("--domain", format!("{name:?} is given twice")));
        }
        domains.push(name);
    }
    let tls = match (domains.is_empty(), &opts.acme_email) {
        (true, None) => Tls::SelfSigned,
        (true, Some(_)) => {
            return Err(DeployError::option(
                "--acme-email",
                "only used with --domain (without a domain guard uses a self-signed certificate)",
            ))
        }
        (false, None) => {
            return Err(DeployError::option(
                "--acme-email",
                "required with --domain: Let's Encrypt needs a contact address",
            ))
        }
        (false, Some(email)) => Tls::Acme {
            domains,
            email: parse_email(email).map_err(|e| DeployError::option("--acme-email", e))?,
        },
    };

    let artifacts = match &opts.artifacts {
        None => Artifacts::Managed,
        Some(raw) => {
            let a = parse_artifacts(raw).map_err(|e| DeployError::option("--artifacts", e))?;
            if let Artifacts::Local(p) = &a {
                // Pods on several nodes share no host directory.
                if target == Target::Kubernetes {
                    return Err(DeployError::option(
                        "--artifacts",
                        format!(
                            "{raw:?}: kubernetes pods share no host directory; use s3://bucket/prefix, or leave --artifacts out for a ReadWriteMany volume"
                        ),
                    ));
                }
                // The unit runs as a dynamic user, which can own nothing outside its
                // StateDirectory=; another disk goes there as a mount.
                if target == Target::Systemd {
                    return Err(DeployError::option(
                        "--artifacts",
                        format!(
                            "{raw:?}: systemd keeps artifacts in mlflow's state directory (/var/lib/mlflow/artifacts); mount another disk there, or use s3://bucket/prefix"
                        ),
                    ));
                }
                if target != Target::Compose && !p.is_absolute() {
                    return Err(DeployError::option(
                        "--artifacts",
                        format!(
                            "{raw:?}: {target} needs an absolute directory (the service does not run in this directory)"
                        ),
                    ));
                }
                if p.is_absolute() && has_parent_component(p) {
                    return Err(DeployError::option(
                        "--artifacts",
                        format!("{raw:?}: write the directory without '..'"),
                    ));
                }
            }
            a
        }
    };

    let mlflow_version = match &opts.mlflow_version {
        None => DEFAULT_MLFLOW_VERSION.to_string(),
        Some(v) => parse_mlflow_version(v).map_err(|e| DeployError::option("--mlflow-version", e))?,
    };

    if opts.with_notebook && target != Target::Compose {
        return Err(DeployError::option(
            "--with-notebook",
            format!("only the compose target runs a notebook, not {target}"),
        ));
    }

    if opts.mlflow_permissions && target == Target::Kubernetes {
        return Err(DeployError::option(
            "--mlflow-permissions",
            "the compose, supervisor and systemd targets have it; kubernetes does not yet".to_owned(),
        ));
    }

    let kubernetes = kubernetes_options(opts, &tls, &mlflow_version)?;
    let backend = opts.backend.unwrap_or(target.default_backend());
    if target == Target::Kubernetes && backend == Backend::Sqlite {
        return Err(DeployError::option(
            "--backend",
            "kubernetes runs MLflow replicas on one PostgreSQL database; sqlite is for a single host",
        ));
    }

    let mut layout = Layout::default();
    for (flag, value, slot) in [
        ("--guard-bin", &opts.guard_bin, &mut layout.guard_bin),
        ("--mlflow-bin", &opts.mlflow_bin, &mut layout.mlflow_bin),
    ] {
        if let Some(p) = value {
            if matches!(target, Target::Compose | Target::Kubernetes) {
                return Err(DeployError::option(
                    flag,
                    format!("{target} runs programs from images; only systemd and supervisor take a path"),
                ));
            }
            *slot = host_path(flag, p)?;
        }
    }
    if let Some(p) = &opts.base_dir {
        if target != Target::Supervisor {
            return Err(DeployError::option(
                "--base-dir",
                format!("only the supervisor target takes a base directory, not {target}"),
            ));
        }
        layout.base_dir = Some(host_path("--base-dir", p)?);
    }

    if opts.out_dir.as_os_str().is_empty() {
        return Err(DeployError::option("--out", "empty directory name"));
    }
    if opts.out_dir.exists() && !opts.out_dir.is_dir() {
        return Err(DeployError::option(
            "--out",
            format!("{}: not a directory", opts.out_dir.display()),
        ));
    }

    let deployment = Deployment {
        target,
        tls,
        backend,
        artifacts,
        mlflow_version,
        with_notebook: opts.with_notebook,
        mlflow_permissions: opts.mlflow_permissions,
        out_dir: opts.out_dir.clone(),
        force: opts.force,
        kubernetes,
    };
    Ok((deployment, layout))
}

/// The kubernetes flags: checked for that target, refused for the others.
fn kubernetes_options(opts: &DeployOptions, tls: &Tls, mlflow_version: &str) -> Result<Kubernetes, DeployError> {
    let given = [
        ("--namespace", opts.namespace.is_some()),
        ("--image", opts.image.is_some()),
        ("--mlflow-image", opts.mlflow_image.is_some()),
        ("--replicas", opts.replicas.is_some()),
        ("--mlflow-replicas", opts.mlflow_replicas.is_some()),
        ("--with-postgres", opts.with_postgres),
        ("--acme-challenge", opts.acme_challenge.is_some()),
    ];
    if opts.target != Target::Kubernetes {
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return Err(DeployError::option(
                flag,
                format!("only the kubernetes target takes it, not {}", opts.target),
            ));
        }
        return Ok(Kubernetes::default());
    }
    let mut k = Kubernetes {
        mlflow_image: default_mlflow_image(mlflow_version),
        with_postgres: opts.with_postgres,
        ..Kubernetes::default()
    };
    if let Some(n) = &opts.namespace {
        k.namespace = parse_namespace(n).map_err(|e| DeployError::option("--namespace", e))?;
    }
    if let Some(i) = &opts.image {
        k.image = parse_image(i).map_err(|e| DeployError::option("--image", e))?;
    }
    if let Some(i) = &opts.mlflow_image {
        k.mlflow_image = parse_image(i).map_err(|e| DeployError::option("--mlflow-image", e))?;
    }
    if let Some(n) = opts.replicas {
        // One pod could not be drained or rolled without an outage, and the disruption budget
        // (at most one pod down) would block every node drain.
        if !(2..=MAX_REPLICAS).contains(&n) {
            return Err(DeployError::option(
                "--replicas",
                format!(
                    "{n}: guard runs 2 to {MAX_REPLICAS} pods (one pod cannot be drained or rolled without an outage)"
                ),
            ));
        }
        k.replicas = n;
    }
    if let Some(n) = opts.mlflow_replicas {
        if !(1..=MAX_REPLICAS).contains(&n) {
            return Err(DeployError::option(
                "--mlflow-replicas",
                format!("{n}: MLflow runs 1 to {MAX_REPLICAS} pods"),
            ));
        }
        k.mlflow_replicas = n;
    }
    if let Some(c) = opts.acme_challenge {
        if matches!(tls, Tls::SelfSigned) {
            return Err(DeployError::option(
                "--acme-challenge",
                "only used with --domain (without a domain cert-manager issues a self-signed certificate)",
            ));
        }
        k.challenge = c;
    }
    Ok(k)
}

/// An absolute, plainly spelled host path (it goes into unit files and supervisor commands).
fn host_path(flag: &'static str, p: &std::path::Path) -> Result<PathBuf, DeployError> {
    let s = p
        .to_str()
        .ok_or_else(|| DeployError::option(flag, format!("{}: not valid UTF-8", p.display())))?;
    if !p.is_absolute() || has_parent_component(p) {
        return Err(DeployError::option(
            flag,
            format!("{s:?}: use an absolute path without '..'"),
        ));
    }
    check_path_chars(s).map_err(|e| DeployError::option(flag, format!("{s:?}: {e}")))?;
    Ok(p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(target: Target) -> DeployOptions {
        DeployOptions::new(target)
    }

    fn err(o: &DeployOptions) -> String {
        validate(o).unwrap_err().to_string()
    }

    #[test]
    fn defaults_pick_the_target_backend_and_the_pinned_version() {
        let (d, l) = validate(&opts(Target::Compose)).unwrap();
        assert_eq!(d.backend, Backend::Postgres);
        assert_eq!(d.tls, Tls::SelfSigned);
        assert_eq!(d.artifacts, Artifacts::Managed);
        assert_eq!(d.mlflow_version, DEFAULT_MLFLOW_VERSION);
        assert_eq!(l, Layout::default());
        let (d, _) = validate(&opts(Target::Systemd)).unwrap();
        assert_eq!(d.backend, Backend::Sqlite);
    }

    #[test]
    fn domain_and_acme_email_come_together() {
        let mut o = opts(Target::Compose);
        o.domains = vec!["mlflow.example.com".into()];
        assert_eq!(
            err(&o),
            "--acme-email: required with --domain: Let's Encrypt needs a contact address"
        );
        o.acme_email = Some("ops@example.com".into());
        let (d, _) = validate(&o).unwrap();
        assert_eq!(d.tls.domains(), ["mlflow.example.com"]);
        o.domains.push("MLFLOW.example.com".into());
        assert!(err(&o).starts_with("--domain: \"mlflow.example.com\" is given twice"));
        o.domains.clear();
        assert!(err(&o).starts_with("--acme-email: only used with --domain"));
    }

    #[test]
    fn target_specific_flags_are_refused_elsewhere() {
        let mut o = opts(Target::Systemd);
        o.with_notebook = true;
        assert!(err(&o).starts_with("--with-notebook: only the compose target"));

        let mut o = opts(Target::Compose);
        o.guard_bin = Some("/usr/bin/guard".into());
        assert!(err(&o).starts_with("--guard-bin: compose runs programs from images"));

        let mut o = opts(Target::Systemd);
        o.base_dir = Some("/srv/guard".into());
        assert!(err(&o).starts_with("--base-dir: only the supervisor target"));

        let mut o = opts(Target::Supervisor);
        o.mlflow_bin = Some("mlflow".into());
        assert!(err(&o).contains("absolute path"));
    }

    #[test]
    fn kubernetes_flags_are_checked_there_and_refused_elsewhere() {
        let mut o = opts(Target::Kubernetes);
        let (d, _) = validate(&o).unwrap();
        assert_eq!(d.backend, Backend::Postgres);
        assert_eq!(d.kubernetes, Kubernetes::default());
        o.replicas = Some(1);
        assert!(
            err(&o).starts_with("--replicas: 1: guard runs 2 to 50 pods"),
            "{}",
            err(&o)
        );
        o.replicas = Some(3);
        o.mlflow_replicas = Some(0);
        assert!(err(&o).starts_with("--mlflow-replicas: 0:"));
        o.mlflow_replicas = None;
        o.namespace = Some("Bad_Name".into());
        assert!(err(&o).starts_with("--namespace: \"Bad_Name\""));
        o.namespace = None;
        o.backend = Some(Backend::Sqlite);
        assert!(err(&o).starts_with("--backend: kubernetes runs MLflow replicas"));
        o.backend = None;
        o.artifacts = Some("/srv/artifacts".into());
        assert!(err(&o).starts_with("--artifacts: \"/srv/artifacts\": kubernetes pods share no host"));
        o.artifacts = None;
        o.acme_challenge = Some(Challenge::Dns01);
        assert!(err(&o).starts_with("--acme-challenge: only used with --domain"));
        o.mlflow_version = Some("3.18.0".into());
        o.acme_challenge = None;
        let (d, _) = validate(&o).unwrap();
        assert_eq!(d.kubernetes.mlflow_image, "guard-mlflow:3.18.0");
        assert_eq!(d.kubernetes.replicas, 3);

        let mut o = opts(Target::Compose);
        o.with_postgres = true;
        assert_eq!(
            err(&o),
            "--with-postgres: only the kubernetes target takes it, not compose"
        );
    }

    #[test]
    fn relative_artifact_directories_are_for_compose_only() {
        let mut o = opts(Target::Compose);
        o.artifacts = Some("data/artifacts".into());
        assert!(validate(&o).is_ok());
        o.target = Target::Supervisor;
        assert!(err(&o).contains("needs an absolute directory"));
        o.artifacts = Some("/srv/artifacts".into());
        assert!(validate(&o).is_ok());
        o.target = Target::Systemd;
        assert!(err(&o).contains("mount another disk there"));
        o.artifacts = Some("gs://bucket/x".into());
        assert!(err(&o).starts_with("--artifacts: \"gs://bucket/x\": gs:// artifact stores are not supported"));
    }
}
