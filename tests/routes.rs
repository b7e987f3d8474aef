//! The reader rule against the routes the installed MLflow really serves: its Flask `url_map`
//! and native FastAPI routes, listed by `tests/mlflow_routes.py`, must each be classified in
//! `tests/mlflow-routes.txt`, and no route classified as a write (M) or an outside effect (S)
//! may be reachable by a reader. So an MLflow upgrade that adds a route fails here until
//! someone has looked at it, instead of silently opening a write path to readers.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use common::mlflow::venv;
use guard_config::roles::Role;
use guard_proxy::authorize::permits;

type Route = (String, String);

/// The committed classification: route → R, M or S.
fn table(text: &str) -> HashMap<Route, char> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let (class, method, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            let class = class.chars().next().unwrap();
            assert!(matches!(class, 'R' | 'M' | 'S'), "bad class in {l:?}");
            ((method.to_owned(), path.to_owned()), class)
        })
        .collect()
}

/// A request path for a route pattern: every `<converter:name>` (Flask) and `{name:converter}`
/// (FastAPI) filled with a plausible value.
fn concrete(pattern: &str) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(start) = rest.find(['<', '{']) {
        out.push_str(&rest[..start]);
        let close = if rest.as_bytes()[start] == b'<' { '>' } else { '}' };
        let end = rest[start..].find(close).map_or(rest.len(), |e| start + e + 1);
        out.push_str(if rest[start..end].contains("path") {
            "0/abc/artifacts/f"
        } else {
            "x1"
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// What is wrong between MLflow's `routes` and the `table`: routes the table does not
/// classify, and writes a reader could reach.
fn problems(routes: &BTreeSet<Route>, table: &HashMap<Route, char>) -> Vec<String> {
    let mut found = Vec::new();
    for (method, path) in routes {
        match table.get(&(method.clone(), path.clone())) {
            None => found.push(format!(
                "unclassified: {method} {path} (add it to tests/mlflow-routes.txt as R, M or S)"
            )),
            Some('M' | 'S') => {
                let m = http::Method::from_bytes(method.as_bytes()).unwrap();
                if permits(Role::Reader, &m, &concrete(path)) {
                    found.push(format!("open to readers: {method} {path} is a write"));
                }
            }
            Some(_) => {}
        }
    }
    found
}

fn mlflow_routes(venv: &std::path::Path) -> BTreeSet<Route> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mlflow_routes.py");
    let out = Command::new(venv.join("bin/python"))
        .arg(script)
        .output()
        .expect("the venv's python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<(String, String)> = serde_json::from_slice(&out.stdout).expect("a JSON list of routes");
    list.into_iter().collect()
}

#[test]
fn every_route_of_the_installed_mlflow_is_classified_and_no_write_is_open_to_readers() {
    let Some(venv) = venv() else { return };
    let routes = mlflow_routes(&venv);
    let table = table(include_str!("mlflow-routes.txt"));
    assert!(
        routes.len() > 400,
        "only {} routes listed: the walk missed some",
        routes.len()
    );
    let found = problems(&routes, &table);
    assert!(found.is_empty(), "{} problems:\n{}", found.len(), found.join("\n"));
    let gone: Vec<_> = table.keys().filter(|r| !routes.contains(*r)).collect();
    eprintln!(
        "{} routes checked; {} classified routes this MLflow does not serve: {gone:?}",
        routes.len(),
        gone.len()
    );
}

#[test]
fn a_route_added_to_mlflow_fails_the_check_until_it_is_classified() {
    let table = table("R GET /api/2.0/mlflow/runs/get\nR POST /api/2.0/mlflow/runs/search\n");
    let mut routes: BTreeSet<Route> = table.keys().cloned().collect();
    assert!(problems(&routes, &table).is_empty());
    routes.insert(("POST".into(), "/api/2.0/mlflow/runs/brand-new".into()));
    assert_eq!(
        problems(&routes, &table),
        vec!["unclassified: POST /api/2.0/mlflow/runs/brand-new (add it to tests/mlflow-routes.txt as R, M or S)"]
    );
    // Classified as a write, it is closed to readers by the rule's default.
    let mut with_new = table.clone();
    with_new.insert(("POST".into(), "/api/2.0/mlflow/runs/brand-new".into()), 'M');
    assert!(problems(&routes, &with_new).is_empty());
    // A write the rule would let through is caught.
    with_new.insert(("POST".into(), "/api/2.0/mlflow/runs/search".into()), 'M');
    assert_eq!(
        problems(&routes, &with_new),
        vec!["open to readers: POST /api/2.0/mlflow/runs/search is a write"]
    );
    assert_eq!(
        concrete("/a/<path:artifact_path>/b/{job_id}/{name:path}:x"),
        "/a/0/abc/artifacts/f/b/x1/0/abc/artifacts/f:x"
    );
}
