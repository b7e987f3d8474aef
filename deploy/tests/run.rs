//! `guard_deploy::run`, the entry point `guard deploy` calls: it writes every file with the
//! right mode and reports them, and on each bad input returns one usage error naming the flag
//! and leaves the output directory byte for byte as it was.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use common::TempDir;
use guard_deploy::{run, Backend, DeployError, DeployOptions, Target};

/// Every entry under `dir` with its mode and contents.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let body = if m.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else {
                fs::read(&p).unwrap()
            };
            out.push((p, m.permissions().mode(), body));
        }
    }
    out.sort();
    out
}

fn options(target: Target, out: &Path) -> DeployOptions {
    let mut o = DeployOptions::new(target);
    o.out_dir = out.to_path_buf();
    o
}

/// Runs `opts` against a directory holding one unrelated file, and checks that the call fails
/// with a usage error containing `needle` and that the directory is unchanged.
fn assert_refused(name: &str, mutate: impl FnOnce(&mut DeployOptions), needle: &str) {
    let tmp = TempDir::new(name);
    fs::write(tmp.path().join("notes.txt"), "mine\n").unwrap();
    let before = snapshot(tmp.path());
    let mut opts = options(Target::Compose, tmp.path());
    mutate(&mut opts);
    let err = run(opts).expect_err(name);
    let msg = err.to_string();
    assert!(err.is_usage(), "{name}: not a usage error: {msg}");
    assert!(msg.contains(needle), "{name}: {msg:?} lacks {needle:?}");
    assert!(!msg.contains('\n'), "{name}: more than one line: {msg:?}");
    assert_eq!(snapshot(tmp.path()), before, "{name}: the output directory changed");
}

#[test]
fn compose_writes_every_file_with_its_mode_and_reports_next_steps() {
    let tmp = TempDir::new("run-compose");
    let out = tmp.path().join("deploy");
    let report = run(options(Target::Compose, &out)).unwrap();
    let names: Vec<String> = report
        .written
        .iter()
        .map(|p| p.strip_prefix(&out).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "docker-compose.yml",
            ".env",
            "Dockerfile",
            ".dockerignore",
            "mlflow/Dockerfile",
            "guard"
        ]
    );
    let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(".env"), 0o600);
    assert_eq!(mode("docker-compose.yml"), 0o644);
    // The image packages a copy of the program that ran: here, this test binary.
    assert_eq!(mode("guard"), 0o755);
    assert_eq!(
        fs::read(out.join("guard")).unwrap(),
        fs::read(std::env::current_exe().unwrap()).unwrap()
    );
    let env = fs::read_to_string(out.join(".env")).unwrap();
    let password = env
        .lines()
        .find_map(|l| l.strip_prefix("POSTGRES_PASSWORD="))
        .unwrap()
        .to_string();
    assert_eq!(password.len(), 48, "{env}");
    assert!(report.next_steps.iter().any(|s| s.contains("docker compose up")));
    assert_eq!(snapshot(&out).len(), 7, "only the files and mlflow/, no temporaries");

    // Again without --force: refused, untouched.
    let before = snapshot(&out);
    let err = run(options(Target::Compose, &out)).unwrap_err();
    assert!(
        matches!(err, DeployError::Exists { ref paths } if paths.len() == 6),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(snapshot(&out), before);

    // With --force: rewritten, and the database password is kept.
    let mut opts = options(Target::Compose, &out);
    opts.force = true;
    opts.domains = vec!["mlflow.example.com".into()];
    opts.acme_email = Some("ops@example.com".into());
    run(opts).unwrap();
    let env = fs::read_to_string(out.join(".env")).unwrap();
    assert!(env.contains(&format!("POSTGRES_PASSWORD={password}")), "{env}");
    let yml = fs::read_to_string(out.join("docker-compose.yml")).unwrap();
    assert!(yml.contains("GUARD_DOMAIN: \"mlflow.example.com\""));
}

#[test]
fn kubernetes_writes_manifests_secrets_and_the_image_and_force_keeps_what_the_operator_added() {
    let tmp = TempDir::new("run-kubernetes");
    let out = tmp.path().join("k8s");
    let report = run(options(Target::Kubernetes, &out)).unwrap();
    let names: Vec<String> = report
        .written
        .iter()
        .map(|p| p.strip_prefix(&out).unwrap().display().to_string())
        .collect();
    for want in [
        "kustomization.yaml",
        "secrets.yaml",
        "auth/users.htpasswd",
        "auth/session-keys.json",
        "guard.yaml",
        "mlflow.yaml",
        "certificate.yaml",
        "Dockerfile",
        "mlflow/Dockerfile",
        "guard",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
    for secret in [
        "secrets.yaml",
        "auth/users.htpasswd",
        "auth/tokens.json",
        "auth/session-keys.json",
    ] {
        assert_eq!(mode(secret), 0o600, "{secret}");
    }
    assert!(report.next_steps.iter().any(|s| s.contains("kubectl apply -k")));
    assert!(report.next_steps.iter().any(|s| s.contains("docker build -t guard:")));

    // What the operator does next: add a user, write the database's DSN.
    fs::write(out.join("auth/users.htpasswd"), "alice:$2y$04$abc\n").unwrap();
    let secrets = fs::read_to_string(out.join("secrets.yaml")).unwrap();
    let flask_key = secrets
        .lines()
        .find_map(|l| l.trim().strip_prefix("flask-secret-key: "))
        .unwrap()
        .to_string();
    let edited = secrets.replace(
        "postgresql+psycopg2://mlflow:CHANGE-ME@database.example.com:5432/mlflow",
        "postgresql+psycopg2://mlflow:s3cret@db.internal:5432/mlflow?sslmode=require",
    );
    assert_ne!(edited, secrets);
    fs::write(out.join("secrets.yaml"), edited).unwrap();
    let session = fs::read_to_string(out.join("auth/session-keys.json")).unwrap();

    let mut opts = options(Target::Kubernetes, &out);
    opts.force = true;
    opts.replicas = Some(3);
    run(opts).unwrap();
    assert_eq!(
        fs::read_to_string(out.join("auth/users.htpasswd")).unwrap(),
        "alice:$2y$04$abc\n"
    );
    assert_eq!(fs::read_to_string(out.join("auth/session-keys.json")).unwrap(), session);
    let secrets = fs::read_to_string(out.join("secrets.yaml")).unwrap();
    assert!(
        secrets.contains("uri: \"postgresql+psycopg2://mlflow:s3cret@db.internal:5432/mlflow?sslmode=require\""),
        "{secrets}"
    );
    assert!(secrets.contains(&format!("flask-secret-key: {flask_key}")), "{secrets}");
    assert!(fs::read_to_string(out.join("guard.yaml"))
        .unwrap()
        .contains("replicas: 3"));
}

#[test]
fn bad_kubernetes_input_is_refused_and_nothing_is_written() {
    for (name, mutate, needle) in [
        (
            "k8s-replicas",
            Box::new(|o: &mut DeployOptions| o.replicas = Some(1)) as Box<dyn FnOnce(&mut DeployOptions)>,
            "--replicas: 1: guard runs 2 to 50 pods",
        ),
        (
            "k8s-mlflow-replicas",
            Box::new(|o: &mut DeployOptions| o.mlflow_replicas = Some(500)),
            "--mlflow-replicas: 500:",
        ),
        (
            "k8s-domain",
            Box::new(|o: &mut DeployOptions| {
                o.domains = vec!["mlflow_example.com".into()];
                o.acme_email = Some("ops@example.com".into());
            }),
            "--domain: \"mlflow_example.com\"",
        ),
        (
            "k8s-image",
            Box::new(|o: &mut DeployOptions| o.image = Some("Guard:latest".into())),
            "--image: \"Guard:latest\" is not an image reference",
        ),
        (
            "k8s-sqlite",
            Box::new(|o: &mut DeployOptions| o.backend = Some(Backend::Sqlite)),
            "--backend: kubernetes runs MLflow replicas",
        ),
    ] {
        assert_refused(
            name,
            |o| {
                o.target = Target::Kubernetes;
                mutate(o);
            },
            needle,
        );
    }
}

#[test]
fn host_targets_write_their_files() {
    let tmp = TempDir::new("run-hosts");
    let mut opts = options(Target::Systemd, &tmp.path().join("systemd"));
    opts.backend = Some(Backend::Postgres);
    let report = run(opts).unwrap();
    assert_eq!(report.written.len(), 4, "{:?}", report.written);
    assert!(report.written[3].ends_with("guard"), "{:?}", report.written);
    assert!(report
        .next_steps
        .iter()
        .any(|s| s.contains("/systemd/guard /usr/local/bin/guard")));
    let env = tmp.path().join("systemd/mlflow.env");
    assert_eq!(fs::metadata(env).unwrap().permissions().mode() & 0o777, 0o600);

    let mut opts = options(Target::Supervisor, &tmp.path().join("supervisor"));
    opts.guard_bin = Some("/opt/guard/guard".into());
    let report = run(opts).unwrap();
    assert_eq!(report.written.len(), 2);
    let conf = fs::read_to_string(&report.written[0]).unwrap();
    assert!(conf.contains("command=/opt/guard/guard serve"), "{conf}");
}

#[test]
fn an_invalid_domain_is_refused_and_nothing_is_written() {
    assert_refused(
        "bad-domain",
        |o| {
            o.domains = vec!["not a domain".into()];
            o.acme_email = Some("ops@example.com".into());
        },
        "--domain: \"not a domain\"",
    );
    assert_refused(
        "ip-domain",
        |o| {
            o.domains = vec!["192.0.2.1".into()];
            o.acme_email = Some("ops@example.com".into());
        },
        "IP address",
    );
    assert_refused(
        "localhost-domain",
        |o| {
            o.domains = vec!["localhost".into()];
            o.acme_email = Some("ops@example.com".into());
        },
        "--domain: \"localhost\"",
    );
}

#[test]
fn an_unknown_target_is_refused_by_its_parser() {
    let e = "nomad".parse::<Target>().unwrap_err();
    assert_eq!(
        e,
        "unknown target \"nomad\"; use compose, systemd, supervisor or kubernetes"
    );
}

#[test]
fn an_unusable_artifacts_uri_is_refused_and_nothing_is_written() {
    assert_refused(
        "gs-artifacts",
        |o| o.artifacts = Some("gs://bucket/mlflow".into()),
        "--artifacts: \"gs://bucket/mlflow\": gs:// artifact stores are not supported",
    );
    assert_refused(
        "bad-bucket",
        |o| o.artifacts = Some("s3://No_Such".into()),
        "--artifacts",
    );
}

#[test]
fn option_conflicts_are_refused_and_nothing_is_written() {
    assert_refused(
        "domain-without-email",
        |o| o.domains = vec!["mlflow.example.com".into()],
        "--acme-email: required with --domain",
    );
    assert_refused(
        "email-without-domain",
        |o| o.acme_email = Some("ops@example.com".into()),
        "--acme-email: only used with --domain",
    );
    assert_refused(
        "notebook-on-systemd",
        |o| {
            o.target = Target::Systemd;
            o.with_notebook = true;
        },
        "--with-notebook",
    );
    assert_refused(
        "bad-version",
        |o| o.mlflow_version = Some("latest".into()),
        "--mlflow-version",
    );
}

#[test]
fn existing_files_without_force_are_refused_and_left_untouched() {
    let tmp = TempDir::new("run-existing");
    fs::write(tmp.path().join("docker-compose.yml"), "services: {}\n").unwrap();
    fs::set_permissions(tmp.path().join("docker-compose.yml"), fs::Permissions::from_mode(0o640)).unwrap();
    let before = snapshot(tmp.path());
    let err = run(options(Target::Compose, tmp.path())).unwrap_err();
    assert!(err.is_usage());
    let msg = err.to_string();
    assert!(
        msg.contains("docker-compose.yml already exists") && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(snapshot(tmp.path()), before, "nothing written, not even .env");
}

#[test]
fn an_output_path_that_is_a_file_is_refused() {
    let tmp = TempDir::new("run-outfile");
    let file = tmp.path().join("f");
    fs::write(&file, "x").unwrap();
    let err = run(options(Target::Compose, &file)).unwrap_err();
    assert!(err.to_string().starts_with("--out: "), "{err}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "x");
}
