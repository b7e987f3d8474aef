//! End-to-end tests of guard.yaml: two sites on one guard routed by Host with their own users,
//! public paths, precedence of flags, environment and file, `guard check`, and SIGHUP reloads
//! under load (a good file applies without a failed request; a broken one changes nothing).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;

fn req(host: &str, path: &str, auth: Option<&str>) -> Request<TestBody> {
    let mut r = Request::get(path).header("host", host);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.body(empty()).unwrap()
}

fn two_sites_yaml(mlflow: &str, notebook: &str, extra_site: &str) -> String {
    format!(
        "auth:\n  users: mlflow.htpasswd\n  lockout: {{failures: 0}}\n\
         sites:\n\
         \x20 - name: mlflow\n    hosts: [mlflow.test]\n    upstream: {mlflow}\n\
         \x20 - name: notebook\n    hosts: [notebook.test]\n    upstream: {notebook}\n    public_paths: [/static/]\n\
         \x20   auth:\n      users: notebook.htpasswd\n\
         {extra_site}"
    )
}

struct TwoSites {
    dir: TempDir,
    mlflow: Echo,
    notebook: Echo,
}

async fn two_sites() -> TwoSites {
    let dir = TempDir::new("sites");
    adduser(&dir.path().join("mlflow.htpasswd"), "ml", "ml-pw");
    adduser(&dir.path().join("notebook.htpasswd"), "nb", "nb-pw");
    let (mlflow, notebook) = (Echo::start().await, Echo::start().await);
    std::fs::write(
        dir.path().join("guard.yaml"),
        two_sites_yaml(&mlflow.authority(), &notebook.authority(), ""),
    )
    .unwrap();
    TwoSites { dir, mlflow, notebook }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sites_route_by_host_with_their_own_users_and_public_paths() {
    let s = two_sites().await;
    let cfg = s.dir.path().join("guard.yaml");
    let g = Guard::start(&["--config", cfg.to_str().unwrap()]);
    let c = g.client();
    let (ml, nb) = (basic("ml", "ml-pw"), basic("nb", "nb-pw"));
    let status = |r: http::Response<hyper::body::Incoming>| r.status().as_u16();

    assert_eq!(status(c.send(req("mlflow.test", "/api/x", Some(&ml))).await), 200);
    assert_eq!(s.mlflow.count(), 1);
    assert_eq!(status(c.send(req("notebook.test:8443", "/lab", Some(&nb))).await), 200);
    assert_eq!(s.notebook.count(), 1);
    // Each site's own users: the other site's credentials do not work.
    assert_eq!(status(c.send(req("mlflow.test", "/api/x", Some(&nb))).await), 401);
    assert_eq!(status(c.send(req("notebook.test", "/lab", Some(&ml))).await), 401);
    // A host no site claims: 421, and nothing forwarded anywhere.
    let resp = c.send(req("other.test", "/api/x", Some(&ml))).await;
    assert_eq!(resp.status(), 421);
    // Public paths skip auth only where configured, and only as whole clean segments.
    assert_eq!(status(c.send(req("notebook.test", "/static/app.js", None)).await), 200);
    assert_eq!(status(c.send(req("notebook.test", "/static/../lab", None)).await), 401);
    assert_eq!(status(c.send(req("mlflow.test", "/static/app.js", None)).await), 401);
    assert_eq!((s.mlflow.count(), s.notebook.count()), (1, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_beat_the_environment_which_beats_the_file() {
    let dir = TempDir::new("precedence");
    let up = Echo::start().await;
    let cfg = dir.path().join("guard.yaml");
    std::fs::write(
        &cfg,
        format!("upstream: {}\nauth:\n  dangerous_no_auth: true\n", up.authority()),
    )
    .unwrap();
    // The file alone: its upstream serves.
    let g = Guard::start(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(g.client().get("/x").await.0, 200);
    drop(g);
    // Upstream from the environment beats the file's; the flag beats both.
    let dead = dead_port().to_string();
    let g = Guard::start_env(&["--config", cfg.to_str().unwrap()], &[("GUARD_UPSTREAM", &dead)]);
    assert_eq!(g.client().get("/x").await.0, 502, "GUARD_UPSTREAM beats the file");
    drop(g);
    let g = Guard::start_env(
        &["--config", cfg.to_str().unwrap(), "--upstream", &up.authority()],
        &[("GUARD_UPSTREAM", &dead)],
    );
    assert_eq!(g.client().get("/x").await.0, 200, "--upstream beats GUARD_UPSTREAM");
    drop(g);
    // The same for a limit: the file says 1M, the environment 2M, the flag 3M.
    let limit_cfg = dir.path().join("limit.yaml");
    std::fs::write(
        &limit_cfg,
        format!(
            "upstream: {}\nlimits:\n  max_body_size: 1M\nauth:\n  dangerous_no_auth: true\n",
            up.authority()
        ),
    )
    .unwrap();
    let post = |n: u64| {
        Request::post("/u")
            .header("host", "localhost")
            .body(PatternBody::new(n).boxed())
            .unwrap()
    };
    use http_body_util::BodyExt;
    let g = Guard::start_env(&["--config", limit_cfg.to_str().unwrap()], &[]);
    assert_eq!(g.client().send(post(1_500_000)).await.status(), 413, "the file's 1M");
    drop(g);
    let g = Guard::start_env(
        &["--config", limit_cfg.to_str().unwrap()],
        &[("GUARD_MAX_BODY_SIZE", "2M")],
    );
    assert_eq!(
        g.client().send(post(1_500_000)).await.status(),
        200,
        "the environment's 2M"
    );
    assert_eq!(
        g.client().send(post(2_500_000)).await.status(),
        413,
        "the environment's 2M"
    );
    drop(g);
    let g = Guard::start_env(
        &["--config", limit_cfg.to_str().unwrap(), "--max-body-size", "3M"],
        &[("GUARD_MAX_BODY_SIZE", "2M")],
    );
    assert_eq!(g.client().send(post(2_500_000)).await.status(), 200, "the flag's 3M");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_and_token_commands_write_the_files_the_config_names_and_serve_reads() {
    let dir = TempDir::new("cfg-users");
    let (mlflow, notebook) = (Echo::start().await, Echo::start().await);
    let cfg = dir.path().join("guard.yaml");
    let yaml = two_sites_yaml(&mlflow.authority(), &notebook.authority(), "");
    std::fs::write(&cfg, format!("state_dir: state\n{yaml}")).unwrap();
    let c = cfg.to_str().unwrap();
    let add = |name: &str, extra: &[&str]| {
        let mut args = vec!["adduser", name, "--password-stdin", "--cost", "4"];
        args.extend(extra);
        run_guard(&args, Some(&format!("{name}-pw\n")))
    };

    // Two sites with two users files: guard will not guess, and writes nothing.
    let (code, _, err) = add("ml", &["--config", c]);
    assert_eq!(code, 2, "{err}");
    let files = format!(
        "its sites name different users files (mlflow: {}, notebook: {}); choose one with --site NAME",
        dir.path().join("mlflow.htpasswd").display(),
        dir.path().join("notebook.htpasswd").display()
    );
    assert!(err.contains(&format!("{c}: {files}")), "{err}");
    let (code, _, err) = add("ml", &["--config", c, "--site", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "--site \"nope\": {c} has no such site (its sites: mlflow, notebook)"
        )),
        "{err}"
    );
    let (code, _, err) = add("ml", &["--site", "mlflow"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--config <FILE>"), "--site without --config: {err}");
    assert!(!dir.path().join("mlflow.htpasswd").exists() && !dir.path().join("notebook.htpasswd").exists());

    // Each site's own file, paths relative to the config file's directory.
    let (code, out, err) = add("ml", &["--config", c, "--site", "mlflow"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&dir.path().join("mlflow.htpasswd").display().to_string()),
        "{out}"
    );
    let (code, _, err) = add("nb", &["--config", c, "--site", "notebook"]);
    assert_eq!(code, 0, "{err}");
    // GUARD_CONFIG, as a deployment's environment sets it, works like --config.
    let out = std::process::Command::new(guard_bin())
        .args(["users", "--site", "notebook"])
        .env("GUARD_CONFIG", c)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nb\n", "{out:?}");
    // --users beats the file, as it does for `guard serve`.
    let other = dir.path().join("other.htpasswd");
    let (code, _, err) = add("other", &["--config", c, "--users", other.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(other.exists());
    // Both sites share the tokens file (the file's state_dir): no --site needed.
    let (code, token, err) = run_guard(&["token", "create", "ci", "--config", c], None);
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("state/tokens.json").exists(), "{err}");

    // guard serve on the same file lets each user into its own site, and the token into both.
    let state = dir.path().join("state");
    let g = Guard::start(&["--config", c, "--state-dir", state.to_str().unwrap()]);
    let client = g.client();
    let bearer = format!("Bearer {}", token.trim());
    for (host, auth, want) in [
        ("mlflow.test", basic("ml", "ml-pw"), 200),
        ("notebook.test", basic("nb", "nb-pw"), 200),
        ("notebook.test", basic("ml", "ml-pw"), 401),
        ("mlflow.test", basic("other", "other-pw"), 401),
        ("mlflow.test", bearer.clone(), 200),
        ("notebook.test", bearer.clone(), 200),
    ] {
        let resp = client.send(req(host, "/api/x", Some(&auth))).await;
        assert_eq!(resp.status(), want, "{host} with {}", &auth[..auth.len().min(12)]);
    }
}

#[test]
fn guard_check_summarises_a_good_file_and_lists_every_error_of_a_bad_one_with_exit_2() {
    let dir = TempDir::new("check");
    adduser(&dir.path().join("mlflow.htpasswd"), "ml", "pw");
    adduser(&dir.path().join("notebook.htpasswd"), "nb", "pw");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, two_sites_yaml("127.0.0.1:5000", "127.0.0.1:8888", "")).unwrap();
    let (code, out, err) = run_guard(&["check", "--config", good.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    for needle in ["mlflow.test", "notebook.test", "127.0.0.1:5000", "127.0.0.1:8888"] {
        assert!(out.contains(needle), "summary lacks {needle}:\n{out}");
    }
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "sites:\n  - name: a\n    hosts: [a.test]\n    upstream: \"mlflow:50o0\"\n  - name: b\n    hosts: [a.test]\n    upstream: nb:1\nlimits:\n  header_timeout: 10y\nupstrem: x\n",
    )
    .unwrap();
    let (code, out, err) = run_guard(&["check", "--config", bad.to_str().unwrap()], None);
    assert_eq!(code, 2, "{out}{err}");
    let name = bad.display().to_string();
    for needle in [
        format!("{name}:4:15: sites[0].upstream: \"mlflow:50o0\""),
        format!("{name}:6:13: sites[1].hosts[0]"),
        format!("{name}:9:19: limits.header_timeout"),
        format!("{name}:10:1: upstrem"),
    ] {
        assert!(err.contains(&needle), "expected {needle:?} in:\n{err}");
    }
    assert!(err.contains("did you mean `upstream`?"), "{err}");
    // The example in the repository is a valid file in shape (its users files don't exist here).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("guard.example.yaml");
    let (_, _, err) = run_guard(&["check", "--config", example.to_str().unwrap()], None);
    assert!(!err.contains("unknown key") && !err.contains(":1:1: "), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_new_upstream_and_site_without_a_failed_request_and_keeps_a_broken_file_out() {
    let s = two_sites().await;
    let cfg = s.dir.path().join("guard.yaml");
    let g = Guard::start(&["--config", cfg.to_str().unwrap()]);
    let c = g.client();
    let ml = basic("ml", "ml-pw");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, stop, ok, failed, ml) = (c.clone(), stop.clone(), ok.clone(), failed.clone(), ml.clone());
        load.push(tokio::spawn(async move {
            let mut conn = c.h1().await;
            while !stop.load(Ordering::Relaxed) {
                let resp = conn.send_request(req("mlflow.test", "/load", Some(&ml))).await.unwrap();
                let st = resp.status();
                let _ = text(resp.into_body()).await;
                if st == 200 {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new upstream for mlflow and a third site.
    let (mlflow2, extra) = (Echo::start().await, Echo::start().await);
    let third = format!(
        "  - name: extra\n    hosts: [extra.test]\n    upstream: {}\n",
        extra.authority()
    );
    std::fs::write(
        &cfg,
        two_sites_yaml(&mlflow2.authority(), &s.notebook.authority(), &third),
    )
    .unwrap();
    g.signal("HUP");
    let t = Instant::now();
    while mlflow2.count() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the new upstream never got traffic"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = c.send(req("extra.test", "/x", Some(&ml))).await;
    assert_eq!(resp.status(), 200, "the new site serves");
    assert_eq!(extra.count(), 1);

    // A broken file: logged, and the running configuration keeps serving.
    std::fs::write(&cfg, "sites: [oops\n").unwrap();
    g.signal("HUP");
    let t = Instant::now();
    while !g
        .stderr
        .text()
        .contains("not reloaded; the running configuration stays")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no error logged:\n{}",
            g.stderr.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = mlflow2.count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(mlflow2.count() > before, "traffic stopped after a broken reload");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    eprintln!(
        "loaded client: {} ok, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a request failed across the reloads");
    let line = format!("{}:2:1: not valid YAML", cfg.display());
    assert!(
        g.stderr.text().contains(&line),
        "the error names the file and line: {line}"
    );
}

include!("../config/tests/data/broken_cases.rs");

#[test]
fn guard_check_exits_2_with_the_exact_message_for_every_broken_file() {
    let cases = broken_cases();
    assert!(cases.len() >= 25, "{}", cases.len());
    let mut failures = Vec::new();
    for (what, yaml, expected) in &cases {
        let dir = TempDir::new("broken");
        std::fs::write(dir.path().join("guard.yaml"), yaml).unwrap();
        // Run from the file's directory so messages name it `guard.yaml`, as the table does.
        let out = std::process::Command::new(guard_bin())
            .args(["check", "--config", "guard.yaml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("guard: error: {expected}\n");
        if out.status.code() != Some(2) || stderr != want {
            failures.push(format!(
                "{what}: exit {:?}\n  expected: {want}       got: {stderr}",
                out.status.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
