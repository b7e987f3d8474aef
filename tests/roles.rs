//! Roles end to end, with a real `mlflow server` behind guard and the real MLflow Python client:
//! a reader (a user given the role by `guard adduser --role`, and a token made with
//! `guard token create --role`) searches runs, reads metrics and downloads artifacts, while
//! every kind of write gets 403 and MLflow's store, asked directly, shows nothing changed; a
//! writer does all of it; `guard role set` changes a role on the next reload; `guard users`
//! lists roles.

mod common;

use std::time::{Duration, Instant};

use common::mlflow::{run_client, venv, MlflowServer};
use common::*;

const WRITER: &str = "alice";
const READER: &str = "rita";
const PASSWORD: &str = "correct horse battery staple";

/// The writes `role-ops` tries, in its order.
const WRITES: &[&str] = &[
    "create_experiment",
    "log_metric",
    "set_tag",
    "log_artifact",
    "create_registered_model",
    "delete_run",
];

fn env_for(g: &Guard, auth: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("MLFLOW_TRACKING_URI", format!("https://localhost:{}", g.addr.port())),
        ("MLFLOW_TRACKING_SERVER_CERT_PATH", g.ca().display().to_string()),
    ];
    env.extend(auth.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

fn client(venv: &std::path::Path, args: &[&str], env: &[(&'static str, String)]) -> serde_json::Value {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = run_client(venv, args, &env);
    r.assert_success(args[0]);
    r.json()
}

/// What MLflow's store holds of the run, asked directly: its tags, metrics, stage, and how
/// many experiments and registered models there are.
fn store_state(mlflow: &MlflowServer, experiment_id: &str) -> serde_json::Value {
    let runs = mlflow.api_post(
        "/api/2.0/mlflow/runs/search",
        &serde_json::json!({"experiment_ids": [experiment_id], "run_view_type": "ALL"}),
    );
    let models = mlflow.api(
        "GET",
        "/api/2.0/mlflow/registered-models/search",
        &serde_json::json!({}),
    );
    serde_json::json!({
        "experiments": mlflow.count_experiments(),
        "runs": runs["runs"],
        "models": models["registered_models"].as_array().map_or(0, Vec::len),
    })
}

#[test]
fn readers_read_everything_and_change_nothing_writers_do_everything() {
    let Some(venv) = venv() else { return };
    let mlflow = MlflowServer::start(&venv);
    let dir = TempDir::new("roles");
    let users = dir.path().join("users");
    let tokens = dir.path().join("tokens");
    let (u, t) = (users.to_str().unwrap(), tokens.to_str().unwrap());
    adduser(&users, WRITER, PASSWORD);
    let (code, out, err) = run_guard(
        &[
            "adduser",
            READER,
            "--users",
            u,
            "--password-stdin",
            "--role",
            "reader",
            "--cost",
            "4",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is a reader"), "{out}");
    let (code, out, err) = run_guard(
        &["token", "create", "dashboards", "--tokens", t, "--role", "reader"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let token = out.lines().find(|l| l.starts_with("grd_")).unwrap().to_owned();
    let (code, out, _) = run_guard(&["users", "--users", u], None);
    assert_eq!(code, 0);
    assert_eq!(out, format!("{WRITER}\n{READER}\treader\n"), "guard users lists roles");

    let g = Guard::start(&["--upstream", &mlflow.upstream(), "--users", u, "--tokens", t]);
    let writer = env_for(
        &g,
        &[
            ("MLFLOW_TRACKING_USERNAME", WRITER),
            ("MLFLOW_TRACKING_PASSWORD", PASSWORD),
        ],
    );
    let made = client(&venv, &["roundtrip", "1048576"], &writer);
    let (experiment, run) = (
        made["experiment_id"].as_str().unwrap(),
        made["run_id"].as_str().unwrap(),
    );

    let before = store_state(&mlflow, experiment);
    let reader = env_for(
        &g,
        &[
            ("MLFLOW_TRACKING_USERNAME", READER),
            ("MLFLOW_TRACKING_PASSWORD", PASSWORD),
        ],
    );
    let reader_token = env_for(&g, &[("MLFLOW_TRACKING_TOKEN", &token)]);
    for (who, env) in [("reader user", &reader), ("reader token", &reader_token)] {
        let r = client(&venv, &["role-ops", experiment, run], env);
        assert_eq!(r["reads"], "ok", "{who}: {r}");
        for write in WRITES {
            assert_eq!(r[write], 403, "{who}: {write} was not refused: {r}");
        }
        assert_eq!(store_state(&mlflow, experiment), before, "{who} changed MLflow's store");
    }
    assert!(
        g.stderr.wait_for(
            &format!("refused POST /api/2.0/mlflow/experiments/create to {READER}: role reader may not"),
            Duration::from_secs(5)
        ),
        "{}",
        g.stderr.text()
    );

    let r = client(&venv, &["role-ops", experiment, run], &writer);
    for write in WRITES {
        assert_eq!(r[write], "ok", "the writer's {write}: {r}");
    }
    let after = store_state(&mlflow, experiment);
    assert_eq!(
        after["experiments"],
        before["experiments"].as_u64().unwrap() + 1,
        "{after}"
    );
    assert_eq!(after["models"], 1, "{after}");
    assert_eq!(after["runs"][0]["info"]["lifecycle_stage"], "deleted", "{after}");

    // A new role holds from the next reload, without a restart (on a new run: the last one is
    // deleted).
    let made = client(&venv, &["roundtrip", "1024"], &writer);
    let (experiment, run) = (
        made["experiment_id"].as_str().unwrap(),
        made["run_id"].as_str().unwrap(),
    );
    let (code, _, err) = run_guard(&["role", "set", READER, "writer", "--users", u], None);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client(&venv, &["role-ops", experiment, run], &reader);
        if r["create_experiment"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "the new role did not take: {r}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, _, err) = run_guard(&["role", "set", "nobody", "reader", "--users", u], None);
    assert_eq!(code, 2, "an unknown user: {err}");
    assert!(err.contains("no user \"nobody\""), "{err}");
}
