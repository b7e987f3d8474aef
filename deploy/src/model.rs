//! The validated deployment the renderers work from: target, TLS mode, backend and artifact
//! stores, MLflow version, the kubernetes target's names, images and replicas, and where
//! programs live on the host. Each `parse_*` helper checks one command-line value and returns a
//! lowercase message naming it; the caller adds the flag.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The MLflow release the rendered files pin (image tag, pip requirement).
pub const DEFAULT_MLFLOW_VERSION: &str = "3.17.2";

/// guard's shutdown grace (`guard serve --shutdown-grace`, default 30 s). Stop timeouts in the
/// rendered files are longer, so the supervisor never kills guard while it drains uploads.
pub const GUARD_SHUTDOWN_GRACE_SECS: u32 = 30;

/// How long a supervisor waits after SIGTERM before SIGKILL: the grace plus 10 s of margin.
pub const STOP_TIMEOUT_SECS: u32 = GUARD_SHUTDOWN_GRACE_SECS + 10;

/// What `guard deploy` writes files for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// docker-compose.yml, .env and the Dockerfiles it builds.
    Compose,
    /// guard.service and mlflow.service.
    Systemd,
    /// One self-contained supervisord.conf.
    Supervisor,
    /// Manifests for a cluster with cert-manager, applied with `kubectl apply -k`.
    Kubernetes,
}

impl Target {
    /// Every target, in the order help text lists them.
    pub const ALL: [Target; 4] = [Target::Compose, Target::Systemd, Target::Supervisor, Target::Kubernetes];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Compose => "compose",
            Target::Systemd => "systemd",
            Target::Supervisor => "supervisor",
            Target::Kubernetes => "kubernetes",
        }
    }

    /// The backend store when `--backend` is not given: compose and kubernetes run PostgreSQL
    /// (MLflow replicas share it); on a host, sqlite needs nothing installed.
    pub fn default_backend(self) -> Backend {
        match self {
            Target::Compose | Target::Kubernetes => Backend::Postgres,
            Target::Systemd | Target::Supervisor => Backend::Sqlite,
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown target {s:?}; use compose, systemd, supervisor or kubernetes"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// MLflow's backend store (runs, params, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A sqlite file in MLflow's own storage.
    Sqlite,
    /// A PostgreSQL database `mlflow` owned by role `mlflow`.
    Postgres,
}

impl Backend {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(format!("unknown backend {s:?}; use sqlite or postgres")),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where MLflow keeps artifacts. The server always proxies them (`--serve-artifacts`), so
/// clients never need storage credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Artifacts {
    /// No `--artifacts`: the target's own storage (a named volume for compose, mlflow's
    /// StateDirectory for systemd, the base directory for supervisor).
    Managed,
    /// A directory on the host (compose bind-mounts it; relative paths are relative to the
    /// compose file, and only compose accepts them).
    Local(PathBuf),
    /// An S3 bucket and optional key prefix (no trailing slash).
    S3 {
        /// Bucket name (3 to 63 lowercase letters, digits, dots and hyphens).
        bucket: String,
        /// Key prefix inside the bucket, without leading or trailing slashes.
        prefix: Option<String>,
    },
}

impl Artifacts {
    /// The `s3://bucket/prefix` URI for S3 stores.
    pub fn s3_uri(&self) -> Option<String> {
        match self {
            Artifacts::S3 {
                bucket,
                prefix: Some(p),
            } => Some(format!("s3://{bucket}/{p}")),
            Artifacts::S3 { bucket, prefix: None } => Some(format!("s3://{bucket}")),
            _ => None,
        }
    }

    /// Whether MLflow needs boto3 for this store.
    pub fn is_s3(&self) -> bool {
        matches!(self, Artifacts::S3 { .. })
    }
}

/// How guard gets its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// No `--domain`: guard makes a self-signed certificate and listens on 8443.
    SelfSigned,
    /// Let's Encrypt for these names; guard listens on 443 and 80 (for HTTP-01 and redirects).
    Acme {
        /// Lowercase DNS names, at least one, no duplicates.
        domains: Vec<String>,
        /// The ACME account contact.
        email: String,
    },
}

impl Tls {
    /// The domains guard serves (empty for a self-signed certificate).
    pub fn domains(&self) -> &[String] {
        match self {
            Tls::SelfSigned => &[],
            Tls::Acme { domains, .. } => domains,
        }
    }
}

/// One validated `guard deploy` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// What to write files for.
    pub target: Target,
    /// Certificate source and the public names.
    pub tls: Tls,
    /// MLflow's backend store.
    pub backend: Backend,
    /// MLflow's artifact store.
    pub artifacts: Artifacts,
    /// The pinned MLflow release (`3.17.2`), without a leading `v`.
    pub mlflow_version: String,
    /// Compose only: add a Jupyter service wired to MLflow.
    pub with_notebook: bool,
    /// MLflow runs its basic-auth app, trusting the user guard names (with guard's secret).
    pub mlflow_permissions: bool,
    /// Where files are written.
    pub out_dir: PathBuf,
    /// Replace existing files.
    pub force: bool,
    /// Kubernetes only: names, images, replicas and the ACME challenge.
    pub kubernetes: Kubernetes,
}

/// How cert-manager proves the domain to the ACME CA (`--acme-challenge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP-01 through a solver Ingress: port 80 of the domain must reach an ingress
    /// controller (guard's Service serves 443 only).
    Http01,
    /// DNS-01 through the DNS provider's API: no inbound port, works for any topology.
    Dns01,
}

impl FromStr for Challenge {
    type Err = String;

    fn from_str(s: &str) -> Result<Challenge, String> {
        match s {
            "http-01" => Ok(Challenge::Http01),
            "dns-01" => Ok(Challenge::Dns01),
            _ => Err(format!("unknown ACME challenge {s:?}; use http-01 or dns-01")),
        }
    }
}

/// The kubernetes target's own settings, each from its flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kubernetes {
    /// `--namespace`: every object goes there. Default `mlflow`.
    pub namespace: String,
    /// `--image`: guard's image, built from the written Dockerfile. Default
    /// [`default_guard_image`].
    pub image: String,
    /// `--mlflow-image`: MLflow with the PostgreSQL driver, built from the written
    /// mlflow/Dockerfile. Default [`default_mlflow_image`] for the MLflow version.
    pub mlflow_image: String,
    /// `--replicas`: guard's pods, 2 or more so a drain or a rollout never takes it down.
    pub replicas: u32,
    /// `--mlflow-replicas`: MLflow's pods, 1 or more.
    pub mlflow_replicas: u32,
    /// `--with-postgres`: a PostgreSQL StatefulSet in the namespace (to try things out)
    /// instead of the DSN of a database run elsewhere.
    pub with_postgres: bool,
    /// `--acme-challenge`, with a domain. Default HTTP-01.
    pub challenge: Challenge,
}

/// guard's default image name: a local name, as `docker build -t` and `kind load` use it.
pub fn default_guard_image() -> String {
    format!("guard:{}", env!("CARGO_PKG_VERSION"))
}

/// The default name of the MLflow image the kubernetes target builds.
pub fn default_mlflow_image(version: &str) -> String {
    format!("guard-mlflow:{version}")
}

impl Default for Kubernetes {
    fn default() -> Kubernetes {
        Kubernetes {
            namespace: "mlflow".into(),
            image: default_guard_image(),
            mlflow_image: default_mlflow_image(DEFAULT_MLFLOW_VERSION),
            replicas: 2,
            mlflow_replicas: 2,
            with_postgres: false,
            challenge: Challenge::Http01,
        }
    }
}

/// Where the host targets (systemd, supervisor) find programs and keep state. Compose ignores
/// it: its programs live in images. Defaults are production paths; tests point every field
/// at a temporary directory, a built guard and a venv's mlflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// guard's executable. Default `/usr/local/bin/guard`.
    pub guard_bin: PathBuf,
    /// mlflow's executable, normally a venv's `bin/mlflow`. Default `/opt/mlflow/bin/mlflow`.
    pub mlflow_bin: PathBuf,
    /// Supervisor only: the directory for state, logs, pid file and control socket. `None`
    /// means the directory holding supervisord.conf (`%(here)s`). systemd keeps state in each
    /// unit's StateDirectory= under /var/lib instead.
    pub base_dir: Option<PathBuf>,
    /// guard's TLS listener. `None`: guard's default (0.0.0.0:443 with a domain, 0.0.0.0:8443
    /// without).
    pub guard_listen: Option<SocketAddr>,
    /// guard's plain-HTTP listener (ACME HTTP-01 and redirects), used with a domain. `None`:
    /// guard's default (0.0.0.0:80).
    pub guard_http_listen: Option<SocketAddr>,
    /// The port mlflow listens on, on 127.0.0.1 only. Default 5000.
    pub mlflow_port: u16,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            guard_bin: PathBuf::from("/usr/local/bin/guard"),
            mlflow_bin: PathBuf::from("/opt/mlflow/bin/mlflow"),
            base_dir: None,
            guard_listen: None,
            guard_http_listen: None,
            mlflow_port: 5000,
        }
    }
}

impl Layout {
    /// The port clients reach guard on: the configured listener, else guard's default.
    pub fn public_port(&self, tls: &Tls) -> u16 {
        match (self.guard_listen, tls) {
            (Some(addr), _) => addr.port(),
            (None, Tls::SelfSigned) => 8443,
            (None, Tls::Acme { .. }) => 443,
        }
    }
}

/// Checks a public DNS name for `--domain` and returns it lowercased.
///
/// Rules: RFC 1123 labels (letters, digits, inner hyphens, 1 to 63 characters), 253 characters
/// at most, at least two labels, and a top-level label that is not all digits (so no IPv4
/// literal passes; IPv6 has colons). `localhost`, single-label names and wildcards are refused:
/// Let's Encrypt cannot validate them, and without `--domain` guard already serves a
/// self-signed certificate for local use.
pub fn parse_domain(s: &str) -> Result<String, String> {
    // The syntax is guard serve's own (RFC 1123, no IP, no wildcard); a deployment on the public
    // internet also needs a dot and a real top-level label.
    let name = guard_config::acme::parse_domain(s)?;
    if !name.contains('.') {
        return Err(format!(
            "{s:?} is not a public domain name (it needs a dot, e.g. mlflow.example.com; omit --domain for local use)"
        ));
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("{s:?}: the top-level label is all digits"));
    }
    Ok(name)
}

/// Checks an ACME contact address for `--acme-email`: what `guard serve` accepts (a plain local
/// part of letters, digits and `._+-`, which needs no escaping in the rendered files, and a
/// public domain).
pub fn parse_email(s: &str) -> Result<String, String> {
    guard_config::acme::parse_email(s)
}

/// Checks `--artifacts`: a directory path, or `s3://bucket[/prefix]`. Any other URI scheme
/// (`gs://`, `wasbs://`, `file://`...) is refused: the rendered images and units carry only the
/// S3 client. Whether a relative path is allowed depends on the target (see `validate`).
pub fn parse_artifacts(s: &str) -> Result<Artifacts, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty value; use a directory or s3://bucket/prefix".into());
    }
    if let Some(rest) = t.strip_prefix("s3://") {
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        check_bucket(bucket).map_err(|e| format!("{s:?}: {e}"))?;
        let prefix = if prefix.is_empty() {
            None
        } else {
            if let Some(c) = prefix
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-')))
            {
                return Err(format!(
                    "{s:?}: {c:?} is not allowed in the key prefix (letters, digits and / . _ -)"
                ));
            }
            if prefix.contains("//") {
                return Err(format!("{s:?}: empty path segment in the key prefix"));
            }
            Some(prefix.to_string())
        };
        return Ok(Artifacts::S3 {
            bucket: bucket.to_string(),
            prefix,
        });
    }
    if let Some((scheme, _)) = t.split_once("://") {
        return Err(format!(
            "{s:?}: {scheme}:// artifact stores are not supported; use a directory or s3://bucket/prefix"
        ));
    }
    check_path_chars(t).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(Artifacts::Local(PathBuf::from(t)))
}

/// Checks `--mlflow-version`: a release like `3.17.2` (a leading `v` is dropped), optionally
/// with a pre-release suffix (`3.18.0rc0`). It becomes an image tag and a pip pin.
pub fn parse_mlflow_version(s: &str) -> Result<String, String> {
    let t = s.trim();
    let v = t.strip_prefix('v').unwrap_or(t);
    let mut parts = v.split('.');
    let ok = v.len() <= 32
        && parts.clone().count() >= 2
        && parts
            .next()
            .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        && parts.all(|p| {
            p.chars().next().is_some_and(|c| c.is_ascii_digit()) && p.chars().all(|c| c.is_ascii_alphanumeric())
        });
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!(
            "{s:?} is not an MLflow release (expected e.g. {DEFAULT_MLFLOW_VERSION})"
        ))
    }
}

/// Checks `--namespace`: a DNS-1123 label (1 to 63 lowercase letters, digits and inner
/// hyphens), as the API server requires of a namespace name.
pub fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (1 to 63 lowercase letters, digits and inner hyphens)"
        ))
    }
}

/// Checks `--image` and `--mlflow-image`: a container image reference
/// (`registry.example.com:5000/team/guard:0.1.0`, `guard@sha256:...`). The repository part is
/// lowercase, as registries require; the whole is plain characters only.
pub fn parse_image(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not an image reference (e.g. registry.example.com/guard:0.1.0)");
    if s.is_empty() || s.len() > 255 {
        return Err(bad());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
    {
        return Err(bad());
    }
    // The repository ends at a digest's `@` or at the tag's `:` after the last `/`.
    let repo = s.split('@').next().unwrap_or(s);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    let repo = match last.rfind(':') {
        Some(i) => &repo[..repo.len() - (last.len() - i)],
        None => repo,
    };
    let starts_plain = repo.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let path_lowercase = repo
        .split('/')
        .skip(usize::from(repo.contains('/')))
        .all(|p| !p.chars().any(|c| c.is_ascii_uppercase()));
    if !starts_plain || !path_lowercase || repo.ends_with('/') || repo.contains("//") {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// S3 bucket naming rules (the general-purpose subset): 3 to 63 characters of lowercase
/// letters, digits, dots and hyphens, starting and ending with a letter or digit.
fn check_bucket(b: &str) -> Result<(), String> {
    if b.len() < 3 || b.len() > 63 {
        return Err(format!("bucket {b:?} must be 3 to 63 characters"));
    }
    if let Some(c) = b
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')))
    {
        return Err(format!(
            "bucket {b:?}: {c:?} is not allowed (lowercase letters, digits, '.' and '-')"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge_ok(b.chars().next()) || !edge_ok(b.chars().last()) {
        return Err(format!("bucket {b:?} must start and end with a letter or digit"));
    }
    if b.contains("..") {
        return Err(format!("bucket {b:?} has two dots in a row"));
    }
    Ok(())
}

/// Paths go unescaped into compose volume strings (where `:` splits and `$` interpolates),
/// systemd lines (`%` specifiers, spaces) and supervisor lines (`%` interpolation): allow only
/// characters that mean nothing in any of them.
pub(crate) fn check_path_chars(p: &str) -> Result<(), String> {
    match p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@')))
    {
        Some(c) => Err(format!(
            "{c:?} is not allowed in a path here (letters, digits and / . _ - + @)"
        )),
        None => Ok(()),
    }
}

/// Whether a path has no `..` component (so a relative path cannot climb out of its base).
pub(crate) fn has_parent_component(p: &Path) -> bool {
    p.components().any(|c| matches!(c, std::path::Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_follow_rfc_1123_and_need_a_dot() {
        assert_eq!(parse_domain("MLflow.Example.com").unwrap(), "mlflow.example.com");
        assert_eq!(parse_domain("a-b.c0.io").unwrap(), "a-b.c0.io");
        for (bad, needle) in [
            ("localhost", "needs a dot"),
            ("mlflow", "needs a dot"),
            ("10.0.0.1", "IP address"),
            ("::1", "IP address"),
            ("1.2.3.999", "IP address"),
            ("mlflow.example.123", "all digits"),
            ("*.example.com", "wildcard"),
            ("example.com.", "trailing dot"),
            ("-a.example.com", "starts or ends"),
            ("a..example.com", "empty label"),
            ("exa mple.com", "not allowed"),
            ("under_score.example.com", "not allowed"),
            ("", "empty"),
        ] {
            let e = parse_domain(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(parse_domain(&long_label).unwrap_err().contains("63"));
        let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(parse_domain(&long_name).unwrap_err().contains("253"));
    }

    #[test]
    fn emails_need_a_simple_local_part_and_a_domain() {
        assert_eq!(parse_email("Ops+mlflow@Example.com").unwrap(), "Ops+mlflow@example.com");
        for bad in [
            "ops",
            "@example.com",
            "ops@localhost",
            "o%ps@example.com",
            "a b@x.io",
            "a..b@x.io",
        ] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn artifacts_are_a_path_or_s3_and_nothing_else() {
        assert_eq!(
            parse_artifacts("s3://my-bucket/mlflow/runs/").unwrap(),
            Artifacts::S3 {
                bucket: "my-bucket".into(),
                prefix: Some("mlflow/runs".into())
            }
        );
        assert_eq!(
            parse_artifacts("s3://my.bucket").unwrap().s3_uri().unwrap(),
            "s3://my.bucket"
        );
        assert_eq!(
            parse_artifacts("/srv/mlflow").unwrap(),
            Artifacts::Local("/srv/mlflow".into())
        );
        for (bad, needle) in [
            ("gs://bucket/x", "gs:// artifact stores are not supported"),
            ("file:///srv", "file://"),
            ("s3://", "3 to 63"),
            ("s3://Upper", "not allowed"),
            ("s3://-bucket", "start and end"),
            ("s3://bucket/a b", "key prefix"),
            ("/srv/a:b", "not allowed in a path"),
            ("/srv/$HOME", "not allowed in a path"),
            ("", "empty"),
        ] {
            let e = parse_artifacts(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn mlflow_versions_are_release_numbers() {
        assert_eq!(parse_mlflow_version("v3.17.2").unwrap(), "3.17.2");
        assert_eq!(parse_mlflow_version("3.18.0rc0").unwrap(), "3.18.0rc0");
        for bad in ["latest", "3", "3..1", "3.1;rm", "", "3.x"] {
            assert!(parse_mlflow_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespaces_and_images_are_what_kubernetes_and_registries_take() {
        assert_eq!(parse_namespace("ml-ops2").unwrap(), "ml-ops2");
        for bad in ["", "ML", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(parse_namespace(bad).is_err(), "{bad}");
        }
        for good in [
            "guard:0.1.0",
            "registry.example.com:5000/team/guard:v1.2",
            "ghcr.io/acme/guard@sha256:0123abcd",
            "guard",
        ] {
            assert_eq!(parse_image(good).unwrap(), good);
        }
        for bad in ["", "Guard:1", "team/Guard", "guard 1", "guard:1;rm", ":1", "a//b", "-x"] {
            assert!(parse_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_and_backends_parse_their_names() {
        for t in Target::ALL {
            assert_eq!(t.name().parse::<Target>().unwrap(), t);
        }
        assert!("nomad"
            .parse::<Target>()
            .unwrap_err()
            .contains("unknown target \"nomad\""));
        assert_eq!("postgres".parse::<Backend>().unwrap(), Backend::Postgres);
        assert!("mysql".parse::<Backend>().unwrap_err().contains("unknown backend"));
    }
}
