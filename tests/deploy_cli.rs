//! The `guard deploy` and `guard healthcheck` commands through the real binary: the reference
//! stack at the repo root is exactly what `guard deploy compose` writes, a compose or
//! kubernetes output directory outside the checkout holds everything its images build from,
//! the kubernetes manifests pass kubernetes-validate --strict and cert-manager's schema, and the
//! guard.yaml they carry serves from Secret volumes laid out as the kubelet does, writing nothing
//! there and seeing an update without a restart; bad input changes nothing, and the
//! healthcheck tells a live guard from a dead port.

mod common;

use common::*;

#[test]
fn the_root_compose_stack_is_what_guard_deploy_compose_writes() {
    let dir = TempDir::new("deploy");
    let out = dir.path().join("stack");
    let (code, stdout, stderr) = run_guard(&["deploy", "compose", "--out", out.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["docker-compose.yml", "mlflow/Dockerfile"] {
        let want = std::fs::read_to_string(root.join(file)).unwrap();
        let got = std::fs::read_to_string(out.join(file)).unwrap();
        assert_eq!(got, want, "{file} differs from `guard deploy compose`: regenerate it");
        assert!(
            stdout.contains(&format!("wrote {}", out.join(file).display())),
            "{stdout}"
        );
    }
    let env = std::fs::metadata(out.join(".env")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&env.permissions()) & 0o777,
        0o600
    );
}

#[test]
fn bad_deploy_input_exits_2_and_writes_nothing() {
    let dir = TempDir::new("deploy-bad");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("docker-compose.yml"), "mine\n").unwrap();
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (vec!["deploy", "nomad", "--out", o], "TARGET"),
        (vec!["deploy", "compose", "--bogus", "--out", o], "--bogus"),
        (
            vec![
                "deploy",
                "compose",
                "--domain",
                "not_a_domain!",
                "--acme-email",
                "a@b.co",
                "--out",
                o,
            ],
            "--domain",
        ),
        (
            vec!["deploy", "compose", "--artifacts", "gs://bucket", "--out", o],
            "--artifacts",
        ),
        (vec!["deploy", "compose", "--out", o], "already exist"),
    ] {
        let (code, stdout, stderr) = run_guard(&args, None);
        assert_eq!(code, 2, "guard {}: {stdout}{stderr}", args.join(" "));
        assert!(
            stderr.contains(needle),
            "guard {}: expected {needle:?} in {stderr}",
            args.join(" ")
        );
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "something was written: {names:?}");
        assert_eq!(
            std::fs::read_to_string(out.join("docker-compose.yml")).unwrap(),
            "mine\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_tells_a_live_guard_from_a_dead_port() {
    let up = Echo::start().await;
    let g = Guard::start(&["--upstream", &up.authority(), "--dangerous-no-auth"]);
    let live = g.addr.to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || run_guard(&["healthcheck", "--listen", &live], None))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let dead = dead_port().to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || run_guard(&["healthcheck", "--listen", &dead], None))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach guard"), "{err}");
}

/// The names of the entries of `dir`, sorted.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode(p: &std::path::Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777
}

/// The venv program `name` (`$GUARD_VENV`, default /opt/guard-venv, as .ci/run makes it).
fn venv_program(name: &str) -> Option<std::path::PathBuf> {
    let venv = std::env::var("GUARD_VENV").unwrap_or_else(|_| "/opt/guard-venv".into());
    let path = format!("{venv}/bin/{name}");
    require_program(
        &[path.as_str()],
        &format!("{venv}/bin/pip install {name} (.ci/run does)"),
    )
}

fn run_program(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn compose_output_outside_the_checkout_builds_guard_from_its_own_directory() {
    let dir = TempDir::new("deploy-standalone");
    let out = dir.path().join("stack");
    assert!(!out.starts_with(env!("CARGO_MANIFEST_DIR")));
    let (code, stdout, stderr) = run_guard(&["deploy", "compose", "--out", out.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("wrote {}", out.join("guard").display())),
        "{stdout}"
    );

    // The compose file builds guard from its own directory, where the Dockerfile and the
    // binary it copies are.
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("docker-compose.yml")).unwrap()).unwrap();
    let context = compose["services"]["guard"]["build"]["context"].as_str().unwrap();
    let context = out.join(context);
    let dockerfile = std::fs::read_to_string(context.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("\nCOPY guard /usr/local/bin/guard\n"),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("\nUSER 10001:10001\n"), "non-root: {dockerfile}");
    assert!(!dockerfile.contains("cargo"), "builds nothing: {dockerfile}");
    let binary = context.join("guard");
    assert_eq!(mode(&binary), 0o755);
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        std::fs::read(guard_bin()).unwrap(),
        "the image packages the guard that wrote it"
    );
    // Only the binary goes to the build context: .env's password stays out.
    let ignore = std::fs::read_to_string(context.join(".dockerignore")).unwrap();
    let rules: Vec<&str> = ignore.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rules, ["*", "!guard"]);
    // MLflow's context is a directory of its own with its Dockerfile.
    let mlflow = compose["services"]["mlflow"]["build"]["context"].as_str().unwrap();
    assert!(out.join(mlflow).join("Dockerfile").is_file());
    assert!(
        stdout.contains(&format!("cd {} && docker compose build", out.display()))
            && stdout.contains("docker compose run --rm guard adduser alice"),
        "{stdout}"
    );

    let Some(checker) = venv_program("check-jsonschema") else {
        return;
    };
    let (ok, text) = run_program(
        std::process::Command::new(checker)
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(out.join("docker-compose.yml")),
    );
    assert!(ok, "compose-spec schema:\n{text}");
}

#[test]
fn the_packaged_guard_needs_no_newer_glibc_than_the_dockerfile_base_has() {
    // debian:bookworm-slim ships glibc 2.36: a binary linked against a newer one would not start,
    // and guard deploy would refuse to package it.
    use guard_deploy::image::{glibc_minor_needed, BASE_GLIBC_MINOR, GUARD_BASE_IMAGE};
    assert_eq!((GUARD_BASE_IMAGE, BASE_GLIBC_MINOR), ("debian:bookworm-slim", 36));
    let needed = glibc_minor_needed(&std::fs::read(guard_bin()).unwrap());
    let needed = needed.unwrap_or_else(|| panic!("no GLIBC_2.* version found in {}", guard_bin()));
    assert!(
        needed <= BASE_GLIBC_MINOR,
        "guard needs GLIBC_2.{needed}; bookworm has 2.36"
    );
}

#[test]
fn kubernetes_output_validates_and_names_the_next_commands() {
    let dir = TempDir::new("deploy-k8s");
    let out = dir.path().join("k8s");
    let o = out.to_str().unwrap();
    let (code, stdout, stderr) = run_guard(
        &[
            "deploy",
            "kubernetes",
            "--domain",
            "mlflow.example.com",
            "--acme-email",
            "ops@example.com",
            "--image",
            "registry.example.com/ops/guard:1",
            "--out",
            o,
        ],
        None,
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    for file in [
        "kustomization.yaml",
        "guard.yaml",
        "mlflow.yaml",
        "certificate.yaml",
        "Dockerfile",
        "guard",
    ] {
        assert!(
            stdout.contains(&format!("wrote {}", out.join(file).display())),
            "{file}: {stdout}"
        );
    }
    for step in [
        format!("docker build -t registry.example.com/ops/guard:1 {o} && docker push registry.example.com/ops/guard:1"),
        format!("guard adduser --users {o}/auth/users.htpasswd alice"),
        format!("kubectl apply -k {o}"),
    ] {
        assert!(stdout.contains(&step), "{step}: {stdout}");
    }
    assert_eq!(mode(&out.join("secrets.yaml")), 0o600);
    // Secrets go into the 0600 files only, never to the terminal.
    let secrets = std::fs::read_to_string(out.join("secrets.yaml")).unwrap();
    let flask = secrets
        .lines()
        .find_map(|l| l.trim().strip_prefix("flask-secret-key: \""))
        .unwrap()
        .trim_end_matches('"');
    let session = std::fs::read_to_string(out.join("auth/session-keys.json")).unwrap();
    let session_key = session.split("\"key\":\"").nth(1).unwrap().split('"').next().unwrap();
    for secret in [flask, session_key] {
        assert!(secret.len() >= 32 && !stdout.contains(secret) && !stderr.contains(secret));
    }
    assert_eq!(
        std::fs::read(out.join("guard")).unwrap(),
        std::fs::read(guard_bin()).unwrap()
    );
    let manifests: Vec<std::path::PathBuf> = entries(&out)
        .into_iter()
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .map(|n| out.join(n))
        .collect();
    assert_eq!(manifests.len(), 5, "{manifests:?}");

    if let Some(validator) = venv_program("kubernetes-validate") {
        let (ok, text) = run_program(std::process::Command::new(validator).arg("--strict").args(&manifests));
        assert!(ok && !text.contains("ERROR"), "kubernetes-validate --strict:\n{text}");
        assert_eq!(text.lines().filter(|l| l.contains(" passed ")).count(), 12, "{text}");
    }
    if require_npm_package("@kubernetes-models/cert-manager") {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/validate-cert-manager.mjs");
        let (ok, text) = run_program(std::process::Command::new("node").arg(script).args(&manifests));
        assert!(ok, "cert-manager schema:\n{text}");
        assert!(text.contains("ok ") && text.contains("Certificate/guard-tls"), "{text}");
    }
}

/// A Secret volume the way the kubelet writes one (pkg/volume/util/atomic_writer.go): the files
/// in a hidden timestamped directory, `..data` linking to it, each visible name a link through
/// `..data`. Returns the timestamped directory.
fn kubelet_secret_volume(volume: &std::path::Path, version: &str, files: &[(&str, Vec<u8>)]) -> std::path::PathBuf {
    let stamped = volume.join(format!("..{version}"));
    std::fs::create_dir_all(&stamped).unwrap();
    for (name, body) in files {
        std::fs::write(stamped.join(name), body).unwrap();
    }
    // The update is one rename of a fresh link over `..data`: every key switches at once.
    let tmp = volume.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    for (name, _) in files {
        let visible = volume.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &visible).unwrap();
        }
    }
    stamped
}

/// Every path under `dir` with its bytes (links as their target), for before/after checks.
fn tree(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in entries(dir) {
        let p = dir.join(&name);
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            out.push((
                name,
                std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes(),
            ));
        } else if meta.is_dir() {
            out.extend(tree(&p).into_iter().map(|(n, b)| (format!("{name}/{n}"), b)));
        } else {
            out.push((name, std::fs::read(&p).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_guard_config_serves_from_secret_volumes_and_sees_their_updates() {
    let dir = TempDir::new("deploy-k8s-serve");
    let out = dir.path().join("k8s");
    let (code, stdout, stderr) = run_guard(&["deploy", "kubernetes", "--out", out.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // The pod's mounts, as directories here: the ConfigMap's guard.yaml, the guard-auth Secret
    // made from auth/ (after the operator's `guard adduser`), cert-manager's tls.crt and tls.key.
    let manifest = std::fs::read_to_string(out.join("guard.yaml")).unwrap();
    let config_map: serde_yaml::Value = serde_yaml::Deserializer::from_str(&manifest)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| v["kind"] == "ConfigMap")
        .unwrap();
    let config = config_map["data"]["guard.yaml"].as_str().unwrap();
    let pod = dir.path().join("pod");
    let (state, tls) = (pod.join("state"), pod.join("tls"));
    adduser(&out.join("auth/users.htpasswd"), "alice", "pw-alice");
    let auth_files = || -> Vec<(&str, Vec<u8>)> {
        ["users.htpasswd", "groups", "tokens.json", "session-keys.json"]
            .into_iter()
            .map(|f| (f, std::fs::read(out.join("auth").join(f)).unwrap()))
            .collect()
    };
    let first = kubelet_secret_volume(&state, "2026_12_01_10_00_00.000000001", &auth_files());
    let (ca_pem, cert_pem, key_pem) = ca_and_leaf("mlflow.example.com");
    kubelet_secret_volume(
        &tls,
        "2026_12_01_10_00_00.000000002",
        &[("tls.crt", cert_pem.into_bytes()), ("tls.key", key_pem.into_bytes())],
    );
    std::fs::write(pod.join("ca.pem"), ca_pem).unwrap();
    let up = Echo::start().await;
    let local = config
        .replace("\"/var/lib/guard\"", &format!("{:?}", state.display().to_string()))
        .replace("/etc/guard/tls", tls.to_str().unwrap())
        .replace("\"mlflow:5000\"", &format!("\"{}\"", up.authority()));
    assert_ne!(local, config);
    let config_file = pod.join("guard.yaml");
    std::fs::write(&config_file, &local).unwrap();
    let before = tree(&state);

    let g = Guard::start(&[
        "--config",
        config_file.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        // What the config says: named again only so the helper waits for the listener, not for
        // a self-signed CA.
        "--tls-cert",
        tls.join("tls.crt").to_str().unwrap(),
        "--tls-key",
        tls.join("tls.key").to_str().unwrap(),
    ]);
    let c = Client::new(g.addr, &pod.join("ca.pem"), "mlflow.example.com");
    assert_eq!(c.get("/_guard/health").await.0, 200, "{}", g.stderr.text());
    let as_user = |user: &str, pw: &str| {
        http::Request::get("/api/2.0/mlflow/experiments/search")
            .header("host", "mlflow.example.com")
            .header("authorization", basic(user, pw))
            .body(empty())
            .unwrap()
    };
    assert_eq!(c.send(get("/api/2.0/mlflow/experiments/search")).await.status(), 401);
    assert_eq!(
        c.send(as_user("alice", "pw-alice")).await.status(),
        200,
        "{}",
        g.stderr.text()
    );
    assert_eq!(c.send(as_user("bob", "pw-bob")).await.status(), 401);
    assert_eq!(up.count(), 1);
    // A Secret volume is read-only: guard wrote nothing into its state directory.
    assert_eq!(tree(&state), before, "guard wrote into the Secret's directory");

    // `guard adduser` on auth/, `kubectl apply -k`: the kubelet swaps the volume's `..data`.
    // The same pod lets bob in, with no restart.
    adduser(&out.join("auth/users.htpasswd"), "bob", "pw-bob");
    kubelet_secret_volume(&state, "2026_12_01_10_05_00.000000003", &auth_files());
    std::fs::remove_dir_all(first).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.send(as_user("bob", "pw-bob")).await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the updated Secret never reached guard:\n{}",
            g.stderr.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(c.send(as_user("alice", "pw-alice")).await.status(), 200);
}

/// A CA and a leaf for `name` it signs: (ca, cert, key) in PEM.
fn ca_and_leaf(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(vec![]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

#[test]
fn bad_kubernetes_input_exits_2_and_writes_nothing() {
    let dir = TempDir::new("deploy-k8s-bad");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("guard.yaml"), "mine\n").unwrap();
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "deploy",
                "kubernetes",
                "--domain",
                "mlflow..example.com",
                "--acme-email",
                "a@b.co",
                "--out",
                o,
            ],
            "--domain",
        ),
        (
            vec!["deploy", "kubernetes", "--replicas", "1", "--out", o],
            "--replicas: 1: guard runs 2 to 50 pods",
        ),
        (
            vec!["deploy", "kubernetes", "--replicas", "two", "--out", o],
            "--replicas",
        ),
        (
            vec!["deploy", "kubernetes", "--mlflow-replicas", "0", "--out", o],
            "--mlflow-replicas: 0",
        ),
        (
            vec!["deploy", "kubernetes", "--namespace", "Prod", "--out", o],
            "--namespace: \"Prod\"",
        ),
        (
            vec!["deploy", "kubernetes", "--acme-challenge", "tls-alpn-01", "--out", o],
            "--acme-challenge",
        ),
        (
            vec!["deploy", "compose", "--with-postgres", "--out", o],
            "--with-postgres: only the kubernetes target",
        ),
        (vec!["deploy", "kubernetes", "--out", o], "guard.yaml already exists"),
    ] {
        let (code, stdout, stderr) = run_guard(&args, None);
        assert_eq!(code, 2, "guard {}: {stdout}{stderr}", args.join(" "));
        assert!(
            stderr.contains(needle),
            "guard {}: expected {needle:?} in {stderr}",
            args.join(" ")
        );
        assert_eq!(
            entries(&out),
            ["guard.yaml"],
            "guard {}: something was written",
            args.join(" ")
        );
        assert_eq!(std::fs::read_to_string(out.join("guard.yaml")).unwrap(), "mine\n");
    }
}
