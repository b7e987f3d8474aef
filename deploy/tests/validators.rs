//! The rendered files checked by the programs that will read them: docker-compose 1.29 and the
//! compose-spec JSON schema for every compose case, `systemd-analyze verify` and `security`
//! for every systemd case, supervisord's own config parser for every supervisor case, and for
//! every kubernetes case `kubernetes-validate --strict` (built-in kinds) and cert-manager v1's
//! schema (tests/k8s/validate-cert-manager.mjs). A missing program fails the test under `CI`
//! and skips it elsewhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    cases_for, fixed_secrets, require_node_package, require_program, require_venv_program, run, write_into, TempDir,
};
use guard_deploy::{render, Layout, Target};

/// Writes every case of `target` into its own subdirectory of `tmp`, rendered with `layout`
/// when given, and returns (case name, directory).
fn write_cases(tmp: &TempDir, target: Target, layout: Option<&Layout>) -> Vec<(String, PathBuf)> {
    cases_for(target)
        .into_iter()
        .map(|case| {
            let dir = tmp.path().join(case.name);
            let layout = layout.unwrap_or(&case.layout);
            write_into(&dir, &render(&case.deployment, layout, &fixed_secrets()));
            (case.name.to_string(), dir)
        })
        .collect()
}

#[test]
fn every_compose_combination_passes_docker_compose_config() {
    let Some(compose) = require_program(
        &["/usr/bin/docker-compose"],
        "apt-get install -y --no-install-recommends docker-compose",
    ) else {
        return;
    };
    let tmp = TempDir::new("compose-config");
    for (name, dir) in write_cases(&tmp, Target::Compose, None) {
        // Run from the project directory: compose reads .env there and resolves build
        // contexts (./mlflow, ./notebook) against it.
        let (ok, _, stderr) = run(Command::new(&compose)
            .current_dir(&dir)
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .env_remove("POSTGRES_PASSWORD")
            .env_remove("JUPYTER_TOKEN"));
        assert!(
            ok && stderr.trim().is_empty(),
            "{name}: docker-compose config -q failed or warned:\n{stderr}\n--- docker-compose.yml ---\n{}",
            std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap()
        );
        println!("{name}: docker-compose config -q: ok");
    }
}

#[test]
fn every_compose_combination_matches_the_compose_spec_schema() {
    let given = std::env::var("GUARD_CHECK_JSONSCHEMA").ok();
    let candidates: Vec<&str> = given
        .as_deref()
        .into_iter()
        .chain(["/opt/guard-venv/bin/check-jsonschema"])
        .collect();
    let Some(checker) = require_program(
        &candidates,
        "pip install check-jsonschema (or set GUARD_CHECK_JSONSCHEMA to its path)",
    ) else {
        return;
    };
    let tmp = TempDir::new("compose-schema");
    let files: Vec<PathBuf> = write_cases(&tmp, Target::Compose, None)
        .into_iter()
        .map(|(_, dir)| dir.join("docker-compose.yml"))
        .collect();
    let (ok, stdout, stderr) = run(Command::new(&checker)
        .args(["--builtin-schema", "vendor.compose-spec"])
        .args(&files));
    assert!(ok, "compose-spec schema check failed:\n{stdout}\n{stderr}");
    println!("compose-spec schema: {} files ok", files.len());
}

/// Host paths that exist on any Linux machine: `systemd-analyze verify` fails when a unit's
/// executable is missing, so the check renders with these in place of guard and mlflow.
fn existing_binaries() -> Layout {
    Layout {
        guard_bin: "/bin/true".into(),
        mlflow_bin: "/bin/true".into(),
        ..Layout::default()
    }
}

fn systemd_analyze() -> Option<PathBuf> {
    require_program(
        &["/usr/bin/systemd-analyze", "/bin/systemd-analyze"],
        "apt-get install -y systemd",
    )
}

#[test]
fn every_systemd_unit_verifies_with_nothing_on_stderr() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let tmp = TempDir::new("systemd-verify");
    for (name, dir) in write_cases(&tmp, Target::Systemd, Some(&existing_binaries())) {
        for unit in ["guard.service", "mlflow.service"] {
            // verify exits 0 on unknown keys and bad values: any stderr output is a failure.
            let (ok, stdout, stderr) = run(Command::new(&analyze)
                .current_dir(&dir)
                .args(["verify", &format!("./{unit}")]));
            assert!(
                ok && stderr.is_empty(),
                "{name}/{unit}: systemd-analyze verify:\n{stdout}{stderr}\n--- {unit} ---\n{}",
                std::fs::read_to_string(dir.join(unit)).unwrap()
            );
        }
        println!("{name}: systemd-analyze verify: ok");
    }
}

/// The overall exposure `systemd-analyze security` prints for a unit file (0.0 to 10.0).
fn exposure(analyze: &Path, dir: &Path, unit: &str) -> f64 {
    let (ok, stdout, stderr) =
        run(Command::new(analyze)
            .current_dir(dir)
            .args(["security", "--offline=true", &format!("./{unit}")]));
    assert!(ok, "systemd-analyze security {unit}:\n{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{stdout}"));
    line.split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"))
}

#[test]
fn guard_unit_rates_ok_or_better_in_systemd_security() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let tmp = TempDir::new("systemd-security");
    for (name, dir) in write_cases(&tmp, Target::Systemd, Some(&existing_binaries())) {
        let guard = exposure(&analyze, &dir, "guard.service");
        let mlflow = exposure(&analyze, &dir, "mlflow.service");
        println!("{name}: systemd-analyze security exposure: guard.service {guard:.1}, mlflow.service {mlflow:.1}");
        assert!(guard <= 2.0, "{name}: guard.service exposure {guard} is above 2.0");
    }
}

/// Loads a supervisord.conf with supervisord's own parser (what `supervisord -c` does before
/// starting anything) and prints, per program, the settings the tests assert on.
const SUPERVISOR_CHECK: &str = r#"
import json, sys
from supervisor.options import ServerOptions
o = ServerOptions()
o.realize(["-c", sys.argv[1]])
o.process_config(do_usage=False)
out = {"nodaemon": o.nodaemon, "sockchmod": o.server_configs[0].get("chmod"), "programs": {}}
for group in o.process_group_configs:
    for p in group.process_configs:
        out["programs"][p.name] = {
            "command": p.command,
            "autorestart": getattr(p.autorestart, "__name__", str(p.autorestart)),
            "stopsignal": int(p.stopsignal),
            "stopwaitsecs": p.stopwaitsecs,
            "priority": p.priority,
            "stdout_logfile": p.stdout_logfile,
            "environment": p.environment or {},
        }
print(json.dumps(out))
"#;

#[test]
fn every_supervisor_config_loads_in_supervisord() {
    let Some(python) = require_program(&["/usr/bin/python3"], "apt-get install -y supervisor") else {
        return;
    };
    let (has_module, _, _) = run(Command::new(&python).args(["-c", "import supervisor.options"]));
    if !has_module {
        let msg = "python3 cannot import supervisor; install it with: apt-get install -y supervisor";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("note: skipping: {msg}");
        return;
    }
    let tmp = TempDir::new("supervisor-parse");
    for case in cases_for(Target::Supervisor) {
        let name = case.name;
        let dir = tmp.path().join(name);
        let mut layout = case.layout.clone();
        // supervisord insists that the directories of its log and pid files exist.
        if layout.base_dir.is_some() {
            let base = dir.join("base");
            std::fs::create_dir_all(&base).unwrap();
            layout.base_dir = Some(base);
        }
        write_into(&dir, &render(&case.deployment, &layout, &fixed_secrets()));
        let conf = dir.join("supervisord.conf");
        let (ok, stdout, stderr) = run(Command::new(&python).args(["-c", SUPERVISOR_CHECK]).arg(&conf));
        assert!(
            ok,
            "{name}: supervisord rejects the config:\n{stdout}{stderr}\n--- supervisord.conf ---\n{}",
            std::fs::read_to_string(&conf).unwrap()
        );
        let parsed: serde_yaml::Value = serde_yaml::from_str(stdout.trim()).unwrap();
        assert_eq!(parsed["nodaemon"], serde_yaml::Value::Bool(true), "{name}");
        let programs = &parsed["programs"];
        for program in ["mlflow", "guard"] {
            let p = &programs[program];
            assert!(p.is_mapping(), "{name}: no [program:{program}] in {stdout}");
            assert_eq!(
                p["autorestart"].as_str(),
                Some("RestartUnconditionally"),
                "{name}/{program}: autorestart=true"
            );
            assert_eq!(p["stopsignal"].as_i64(), Some(15), "{name}/{program}: stopsignal TERM");
            assert!(
                p["stopwaitsecs"].as_i64().unwrap() > 30,
                "{name}/{program}: stopwaitsecs must exceed guard's 30 s grace"
            );
            let log = p["stdout_logfile"].as_str().unwrap();
            assert!(log.ends_with(&format!("{program}.log")), "{name}/{program}: {log}");
        }
        assert!(
            programs["mlflow"]["priority"].as_i64() < programs["guard"]["priority"].as_i64(),
            "{name}: mlflow must start before guard"
        );
        let command = programs["mlflow"]["command"].as_str().unwrap();
        assert!(
            command.contains("--host 127.0.0.1 "),
            "{name}: mlflow off loopback: {command}"
        );
        assert!(
            !command.contains("%(here)s"),
            "{name}: %(here)s not expanded: {command}"
        );
        let env = &programs["mlflow"]["environment"];
        assert!(env["MLFLOW_SERVER_ALLOWED_HOSTS"].is_string(), "{name}: {env:?}");
        assert!(
            !stdout.contains(fixed_secrets().postgres_password.expose()),
            "{name}: a secret in supervisord.conf"
        );
        println!("{name}: supervisord config: ok");
    }
}

/// The Kubernetes releases the manifests are checked against: the oldest the notes call common
/// and the newest kubernetes-validate carries.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// The manifest files of a kubernetes output directory (kustomization.yaml is kustomize's
/// input, not an object the API server sees).
fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// Runs kubernetes-validate --strict over a kubernetes output directory and checks that every
/// built-in object passed against every version, and that only cert-manager's kinds lacked a
/// schema (the next test checks those). Shared with tests/deploy_cli.rs by path.
pub fn kubernetes_validate(validator: &Path, dir: &Path) -> String {
    let files = manifests(dir);
    let mut cmd = Command::new(validator);
    cmd.arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.args(["-k", v]);
    }
    let (ok, stdout, stderr) = run(cmd.args(&files));
    assert!(
        ok && !stdout.contains("ERROR") && stderr.trim().is_empty(),
        "kubernetes-validate --strict failed in {}:\n{stdout}{stderr}",
        dir.display()
    );
    let mut builtin = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for doc in text.split("\n---\n").skip(1) {
            let api = doc
                .lines()
                .find_map(|l| l.strip_prefix("apiVersion: "))
                .unwrap_or_default();
            if !api.contains("cert-manager.io") {
                builtin += 1;
            }
        }
    }
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
        .count();
    assert_eq!(
        passed,
        builtin * KUBERNETES_VERSIONS.len(),
        "not every object passed:\n{stdout}"
    );
    for line in stdout.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            line.contains("api version cert-manager.io/v1"),
            "a built-in kind without a schema: {line}"
        );
    }
    stdout
}

#[test]
fn every_kubernetes_combination_passes_kubernetes_validate_strict() {
    let Some(validator) = require_venv_program("kubernetes-validate") else {
        return;
    };
    let tmp = TempDir::new("k8s-validate");
    for case in cases_for(Target::Kubernetes) {
        let dir = tmp.path().join(case.name);
        write_into(&dir, &render(&case.deployment, &case.layout, &fixed_secrets()));
        kubernetes_validate(&validator, &dir);
        println!("{}: kubernetes-validate --strict: ok", case.name);
    }
    // The check bites: --strict refuses a misspelt field.
    let dir = tmp.path().join(cases_for(Target::Kubernetes)[0].name);
    let guard = dir.join("guard.yaml");
    let text = std::fs::read_to_string(&guard).unwrap();
    std::fs::write(&guard, text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")).unwrap();
    let (ok, stdout, _) = run(Command::new(&validator).arg("--strict").arg(&guard));
    assert!(!ok && stdout.contains("readOnlyRootFileSystem"), "{stdout}");
}

/// Runs tests/k8s/validate-cert-manager.mjs on `files`; (success, output).
pub fn cert_manager_validate(node: &Path, files: &[PathBuf]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/k8s/validate-cert-manager.mjs");
    let (ok, stdout, stderr) = run(Command::new(node).arg(script).args(files));
    (ok, format!("{stdout}{stderr}"))
}

#[test]
fn every_cert_manager_object_passes_cert_manager_v1_schema() {
    let Some(node) = require_node_package("@kubernetes-models/cert-manager") else {
        return;
    };
    let tmp = TempDir::new("k8s-cert-manager");
    for case in cases_for(Target::Kubernetes) {
        let dir = tmp.path().join(case.name);
        write_into(&dir, &render(&case.deployment, &case.layout, &fixed_secrets()));
        let (ok, out) = cert_manager_validate(&node, &manifests(&dir));
        assert!(ok, "{}: cert-manager schema:\n{out}", case.name);
        assert_eq!(
            out.lines().filter(|l| l.starts_with("ok ")).count(),
            2,
            "{}: {out}",
            case.name
        );
        println!("{}: cert-manager v1 schema: ok", case.name);
    }
    // The check bites: a Certificate without its Secret name, an enum value misspelt, and a
    // misspelt key (which the compiled schema alone would let through) fail with their paths.
    let broken = tmp.path().join("broken.yaml");
    let case = &cases_for(Target::Kubernetes)[0];
    let files = render(&case.deployment, &case.layout, &fixed_secrets());
    let cert = &files
        .iter()
        .find(|f| f.path.ends_with("certificate.yaml"))
        .unwrap()
        .contents;
    std::fs::write(
        &broken,
        cert.replace("  secretName: \"guard-tls\"\n", "")
            .replace("\"ECDSA\"", "\"ECDSAX\"")
            .replace("ingress: {}", "ingres: {}"),
    )
    .unwrap();
    let (ok, out) = cert_manager_validate(&node, &[broken]);
    assert!(!ok, "{out}");
    assert!(out.contains("must have required property secretName"), "{out}");
    assert!(out.contains("/spec/privateKey/algorithm"), "{out}");
    assert!(
        out.contains("/spec/acme/solvers/0/http01/ingres is not a field"),
        "{out}"
    );
}
