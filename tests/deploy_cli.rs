//! The `guard deploy` and `guard healthcheck` commands through the real binary: the reference
//! stack at the repo root is exactly what `guard deploy compose` writes, bad input changes
//! nothing, and the healthcheck tells a live guard from a dead port.

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
        (vec!["deploy", "kubernetes", "--out", o], "TARGET"),
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
