//! The MLflow UI in a real browser through guard: Debian's Chromium, driven by playwright-core
//! (`tests/browser/origin.mjs`, one browser process for every case), opens the UI under a host
//! name other than localhost, signs in on guard's page, creates an experiment and renames a run
//! with the UI's own buttons, sees its name in the account menu, opens an attacker's page on
//! another origin that auto-submits a form to MLflow, and signs out with the UI's Logout; then a
//! reader signs in, sees the experiments list and a run page with no read refused, and the UI's
//! Create experiment shows guard's "your role is reader" message. This test owns MLflow and guard, and checks MLflow's store itself afterwards:
//! what the UI did is there, what the forged form asked for is not.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mlflow::{venv, MlflowServer};
use common::*;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
/// A user with the reader role, same password.
const READER: &str = "rita";

/// Whether the browser tier can run: Chromium, Node.js and `npm ci`'s packages. CI requires
/// all three.
fn browser_ready() -> bool {
    require_npm_package("playwright-core") && require_program(&["chromium"], "apt-get install -y chromium").is_some()
}

#[test]
fn the_ui_writes_under_a_real_host_name_and_a_cross_site_form_is_refused() {
    let Some(venv) = venv() else { return };
    if !browser_ready() {
        return;
    }
    let mlflow = MlflowServer::start(&venv);
    let dir = TempDir::new("browser");
    let users = dir.path().join("users");
    adduser(&users, USER, PASSWORD);
    adduser(&users, READER, PASSWORD);
    let (code, _, err) = run_guard(
        &["role", "set", READER, "reader", "--users", users.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let g = Guard::start(&["--upstream", &mlflow.upstream(), "--users", users.to_str().unwrap()]);

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-origin");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/origin.mjs");
    let run = Command::new("node")
        .arg(&script)
        .env("GUARD_PORT", g.addr.port().to_string())
        .env("GUARD_USER", USER)
        .env("GUARD_PASSWORD", PASSWORD)
        .env("GUARD_READER", READER)
        .env("SHOTS", &shots)
        .output()
        .expect("node runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(
        run.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}\nguard:\n{}",
        run.status,
        g.stderr.text()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    eprintln!("screenshots in {}", shots.display());
    for shot in [
        "0-sign-in",
        "1-experiments",
        "2-experiment-created",
        "3-run-renamed",
        "4-cross-site-form-refused",
        "5-signed-out",
        "6-reader-experiments",
        "7-reader-run",
        "8-reader-create-refused",
    ] {
        let p = shots.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "{} was saved",
            p.display()
        );
    }

    assert_eq!(report["account_menu"], format!("Account menu for {USER}"), "{report}");
    assert_eq!(report["signed_out"], true, "{report}");

    // MLflow's store, asked directly: the UI's experiment and rename are there.
    let all = mlflow.api_post(
        "/api/2.0/mlflow/experiments/search",
        &serde_json::json!({"max_results": 1000}),
    );
    let experiments = all["experiments"].as_array().unwrap_or_else(|| panic!("{all}"));
    let names: Vec<&str> = experiments.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(
        experiments
            .iter()
            .any(|e| e["name"] == "created-in-the-ui" && e["experiment_id"] == report["experiment_id"]),
        "the UI's experiment is in the store: {all}"
    );
    let run_id = report["run_id"].as_str().unwrap();
    let got = mlflow.api_post(
        "/api/2.0/mlflow/runs/search",
        &serde_json::json!({
            "experiment_ids": [report["experiment_id"]],
        }),
    );
    let runs = got["runs"].as_array().unwrap_or_else(|| panic!("{got}"));
    assert_eq!(runs.len(), 1, "{got}");
    assert_eq!(runs[0]["info"]["run_id"], run_id);
    assert_eq!(runs[0]["info"]["run_name"], "renamed-in-the-ui", "{got}");

    // The forged form created nothing, and guard logged why.
    assert!(!names.iter().any(|n| n.contains("pwned")), "{names:?}");
    assert_eq!(names.len(), 2, "Default and the UI's, none of the reader's: {names:?}");
    let evil = report["evil_origin"].as_str().unwrap();
    assert!(
        g.stderr.wait_for(
            &format!("refused cross-origin write from {evil}"),
            Duration::from_secs(5)
        ),
        "{}",
        g.stderr.text()
    );
}
