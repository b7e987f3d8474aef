//! `guard.yaml` from text to settings: every broken file gets its exact message with key path
//! and `line:column`, layers stack as documented (flags over file over defaults), and the
//! example file in the repository checks clean.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use guard_config::overlay::{AcmeOverlay, AuthOverlay};
use guard_config::serve::{TlsSource, DEFAULT_LISTEN};
use guard_config::{finish, load_file, parse_str, summary, Overlay};

/// A private directory per test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "guard-config-file-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A users file with one bcrypt user.
    fn users(&self, name: &str) -> PathBuf {
        let hash = guard_config::htpasswd::hash_password("secret", 4).unwrap();
        self.write(name, &format!("alice:{hash}\n"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every problem in `yaml` (as `guard.yaml`), from reading it through finishing it, one per line.
fn problems(yaml: &str) -> String {
    match parse_str(yaml, "guard.yaml") {
        Err(e) => e.to_string(),
        Ok(o) => match finish(o) {
            Err(e) => e.to_string(),
            Ok(_) => "no problem".into(),
        },
    }
}

include!("data/broken_cases.rs");

#[test]
fn broken_files_get_their_exact_message_with_key_path_and_position() {
    let cases = broken_cases();
    let mut failures = Vec::new();
    for (what, yaml, expected) in &cases {
        let got = problems(yaml);
        if got != *expected {
            failures.push(format!("{what}:\n  expected: {expected}\n       got: {got}"));
        }
    }
    assert!(cases.len() >= 25);
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn an_empty_file_is_a_configuration_with_every_default() {
    let file = parse_str("", "guard.yaml").unwrap();
    let f = Overlay {
        state_dir: Some("/nonexistent".into()),
        ..Overlay::default()
    };
    assert_eq!(
        finish(Overlay::merge(f, file)).unwrap_err().to_string(),
        "guard.yaml:1:1: upstream: missing: give an upstream (host:port) or a list of sites\n\
         guard.yaml:1:1: auth: no users or tokens configured (users file /nonexistent/users.htpasswd, tokens file /nonexistent/tokens.json): \
         add a user with `guard adduser --users /nonexistent/users.htpasswd NAME` or a token with \
         `guard token create --tokens /nonexistent/tokens.json NAME`, or turn authentication off with --dangerous-no-auth (auth.dangerous_no_auth: true)"
    );
}

#[test]
fn every_problem_in_a_file_is_reported_at_once_in_file_order() {
    let yaml = "listen: 0.0.0.0:70000\nupstrem: x\nlimits:\n  max_headers: lots\n  idle_timeout: 5\nsites:\n  - hosts: a.example.com\n    upstream: a:1\n  - hosts: [b.example.com]\n    upstrem: b:1\n";
    assert_eq!(
        problems(yaml),
        [
            r#"guard.yaml:1:9: listen: "0.0.0.0:70000": "70000" is not a valid port (1-65535)"#,
            "guard.yaml:2:1: upstrem: unknown key; did you mean `upstream`?",
            r#"guard.yaml:4:16: limits.max_headers: expected a whole number of 0 or more, found "lots""#,
            r#"guard.yaml:5:17: limits.idle_timeout: "5": missing unit; use ms, s, m, h or d (e.g. 30s)"#,
            r#"guard.yaml:7:12: sites[0].hosts: expected a list, found "a.example.com""#,
            "guard.yaml:10:5: sites[1].upstrem: unknown key; did you mean `upstream`?",
        ]
        .join("\n")
    );
}

#[test]
fn missing_and_unreadable_files_are_named_with_their_resolved_path() {
    let dir = TempDir::new();
    let d = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("users.d")).unwrap();
    dir.write("cert.pem", "not checked here");
    dir.write("tokens.json", "{ not json");
    let config = dir.write(
        "guard.yaml",
        "upstream: mlflow:5000\n\
         tls:\n  cert: cert.pem\n  key: missing-key.pem\n\
         sites:\n  - hosts: [a.example.com]\n    upstream: a:1\n    auth:\n      users: users.d\n      tokens: tokens.json\n\
         \x20 - hosts: [b.example.com]\n    upstream: b:1\n    auth:\n      users: nobody.htpasswd\n      tokens: none.json\n",
    );
    let overlay = load_file(&config);
    // The shorthand and sites together is a problem of the file alone.
    assert_eq!(
        overlay.unwrap_err().to_string(),
        format!("{d}/guard.yaml:1:11: upstream: cannot be combined with sites; set upstream in each site")
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("upstream: mlflow:5000\n", "", 1);
    std::fs::write(&config, text).unwrap();
    let errors = finish(load_file(&config).unwrap()).unwrap_err().to_string();
    assert_eq!(
        errors,
        [
            format!("{d}/guard.yaml:3:8: tls.key: \"{d}/missing-key.pem\": no such file"),
            format!("{d}/guard.yaml:8:14: sites[0].auth.users: \"{d}/users.d\": is a directory, not a file"),
            format!("{d}/guard.yaml:9:15: sites[0].auth.tokens: {d}/tokens.json: invalid tokens file: key must be a string at line 1 column 3"),
            format!(
                "{d}/guard.yaml:12:5: sites[1].auth: no users or tokens configured (users file {d}/nobody.htpasswd, tokens file {d}/none.json): \
                 add a user with `guard adduser --users {d}/nobody.htpasswd NAME` or a token with \
                 `guard token create --tokens {d}/none.json NAME`, or turn authentication off with --dangerous-no-auth (auth.dangerous_no_auth: true)"
            ),
        ]
        .join("\n")
    );
}

#[test]
fn acme_ca_root_must_exist() {
    let yaml = format!(
        "upstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n    directory: https://ca.internal/dir\n    ca_root: /nonexistent/ca.pem\n    domains: [mlflow.internal]\n{NO_AUTH}"
    );
    assert_eq!(
        problems(&yaml),
        r#"guard.yaml:6:14: tls.acme.ca_root: "/nonexistent/ca.pem": no such file"#
    );
}

#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    let dir = TempDir::new();
    dir.users("users.htpasswd");
    dir.write("cert.pem", "-");
    dir.write("key.pem", "-");
    let config = dir.write(
        "guard.yaml",
        "upstream: mlflow:5000\nstate_dir: state\ntls: {cert: cert.pem, key: key.pem}\nauth: {users: users.htpasswd}\n",
    );
    let s = finish(load_file(&config).unwrap()).unwrap();
    assert_eq!(s.state_dir, dir.path().join("state"));
    assert_eq!(s.sites[0].auth.users_file, dir.path().join("users.htpasswd"));
    // The tokens file defaults into the state directory, and may be missing.
    assert_eq!(s.sites[0].auth.tokens_file, dir.path().join("state/tokens.json"));
    match &s.tls {
        TlsSource::Files { cert, key } => {
            assert_eq!((cert, key), (&dir.path().join("cert.pem"), &dir.path().join("key.pem")))
        }
        other => panic!("expected certificate files, got {other:?}"),
    }
}

/// The overlay the command line would build: `--listen`, `--realm`, `--shutdown-grace`.
fn flags() -> Overlay {
    Overlay {
        listen: Some("127.0.0.1:9443".parse().unwrap()),
        shutdown_grace: Some(Duration::from_secs(3)),
        auth: AuthOverlay {
            realm: Some("FromFlags".into()),
            ..AuthOverlay::default()
        },
        ..Overlay::default()
    }
}

const TWO_SITES: &str = "listen: 0.0.0.0:9000\nshutdown_grace: 1m\nauth:\n  realm: FromFile\n  dangerous_no_auth: true\n\
sites:\n  - hosts: [a.example.com]\n    upstream: a:1\n    auth: {realm: SiteA}\n  - hosts: [b.example.com]\n    upstream: b:1\n";

#[test]
fn a_flag_beats_the_file_and_the_file_beats_the_default() {
    let file = parse_str(TWO_SITES, "guard.yaml").unwrap();
    let merged = finish(Overlay::merge(flags(), file.clone())).unwrap();
    assert_eq!(merged.listen, "127.0.0.1:9443".parse::<SocketAddr>().unwrap());
    assert_eq!(merged.shutdown_grace, Duration::from_secs(3));
    // A flag applies to every site, even one whose own auth set the key.
    assert_eq!(
        merged.sites.iter().map(|s| s.auth.realm.as_str()).collect::<Vec<_>>(),
        ["FromFlags", "FromFlags"]
    );

    let file_only = finish(Overlay::merge(Overlay::default(), file)).unwrap();
    assert_eq!(file_only.listen, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
    assert_eq!(file_only.shutdown_grace, Duration::from_secs(60));
    assert_eq!(
        file_only
            .sites
            .iter()
            .map(|s| s.auth.realm.as_str())
            .collect::<Vec<_>>(),
        ["SiteA", "FromFile"]
    );

    let defaults =
        finish(parse_str("upstream: mlflow:5000\nauth: {dangerous_no_auth: true}\n", "guard.yaml").unwrap()).unwrap();
    assert_eq!(defaults.listen, DEFAULT_LISTEN.parse::<SocketAddr>().unwrap());
    assert_eq!(defaults.shutdown_grace, guard_config::serve::DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(defaults.sites[0].auth.realm, guard_config::serve::DEFAULT_REALM);
}

#[test]
fn certificate_files_from_flags_replace_the_files_acme() {
    let dir = TempDir::new();
    let cert = dir.write("cert.pem", "-");
    let key = dir.write("key.pem", "-");
    let file = parse_str(
        &format!("upstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n    domains: [mlflow.example.com]\n{NO_AUTH}"),
        "guard.yaml",
    )
    .unwrap();
    let mut f = Overlay::default();
    f.tls.cert = Some(cert.clone());
    f.tls.key = Some(key.clone());
    let s = finish(Overlay::merge(f, file)).unwrap();
    assert!(
        matches!(&s.tls, TlsSource::Files { cert: c, key: k } if *c == cert && *k == key),
        "{:?}",
        s.tls
    );
    // Without a listen anywhere, the default follows the certificate source.
    assert_eq!(s.listen, DEFAULT_LISTEN.parse::<SocketAddr>().unwrap());
}

#[test]
fn acme_flags_fill_in_what_the_file_leaves_out() {
    let file = parse_str(
        &format!("sites:\n  - hosts: [mlflow.example.com]\n    upstream: mlflow:5000\ntls:\n  acme:\n    domains: [extra.example.com]\n{NO_AUTH}"),
        "guard.yaml",
    )
    .unwrap();
    let mut f = Overlay::default();
    f.tls.acme = Some(AcmeOverlay {
        email: Some("ops@example.com".into()),
        ..AcmeOverlay::default()
    });
    let s = finish(Overlay::merge(f, file)).unwrap();
    let TlsSource::Acme(a) = &s.tls else {
        panic!("expected ACME, got {:?}", s.tls)
    };
    assert_eq!(a.email, "ops@example.com");
    assert_eq!(a.domains, ["extra.example.com", "mlflow.example.com"]);
    assert_eq!(
        s.listen,
        guard_config::acme::DEFAULT_ACME_LISTEN.parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn an_error_about_a_value_a_flag_replaced_does_not_point_into_the_file() {
    let dir = TempDir::new();
    let file = parse_str(
        &format!(
            "upstream: mlflow:5000\ntls:\n  cert: {0}/c.pem\n  key: {0}/k.pem\n{NO_AUTH}",
            dir.path().display()
        ),
        "guard.yaml",
    )
    .unwrap();
    // --tls-cert alone: the file's key is gone with the file's certificate source.
    let mut f = Overlay::default();
    f.tls.cert = Some(dir.path().join("flag-cert.pem"));
    assert_eq!(
        finish(Overlay::merge(f, file)).unwrap_err().to_string(),
        "tls.cert: a certificate needs its key; set tls.key too"
    );
}

#[test]
fn the_example_file_documents_the_whole_schema_and_checks_clean() {
    let example_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guard.example.yaml");
    let example = std::fs::read_to_string(&example_path).unwrap();
    for key in guard_config::raw::schema_keys() {
        let leaf = key.rsplit(['.', ']']).next().unwrap();
        assert!(
            example.contains(&format!("{leaf}:")),
            "guard.example.yaml does not mention {key}"
        );
    }
    // As it would be deployed: beside the users files it names.
    let dir = TempDir::new();
    let config = dir.write("guard.yaml", &example);
    dir.users("users.htpasswd");
    dir.users("notebook.htpasswd");
    let s = finish(load_file(&config).unwrap()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.sites.len(), 2);
    let TlsSource::Acme(a) = &s.tls else {
        panic!("expected ACME, got {:?}", s.tls)
    };
    assert_eq!(a.domains, ["mlflow.example.com", "notebook.example.com"]);
    assert_eq!(s.sites[1].auth.users_file, dir.path().join("notebook.htpasswd"));
    assert_eq!(s.sites[1].auth.forwarded_user_header, None);
    assert_eq!(s.sites[1].auth.tokens_file, dir.path().join("tokens.json"));
    let d = dir.path().display();
    assert_eq!(
        summary(&s),
        format!(
            "listen:    0.0.0.0:443\n\
             http:      0.0.0.0:80 (ACME challenges, redirects to port 443)\n\
             tls:       ACME from Let's Encrypt for mlflow.example.com, notebook.example.com; contact ops@example.com; challenge tls-alpn-01, then http-01; hsts max-age 365d\n\
             state dir: /var/lib/guard\n\
             log:       text\n\
             trusted:   10.0.0.0/8\n\
             site mlflow: mlflow.example.com -> http://mlflow:5000\n\
             \x20 users:   {d}/users.htpasswd (1 user)\n\
             \x20 tokens:  {d}/tokens.json (not found)\n\
             site notebook: notebook.example.com -> http://notebook:8888\n\
             \x20 users:   {d}/notebook.htpasswd (1 user)\n\
             \x20 tokens:  {d}/tokens.json (not found)\n\
             \x20 public:  /static/"
        )
    );
}

#[test]
fn jwt_issuers_are_checked_where_they_are_written() {
    let yaml = "upstream: localhost:5000
auth:
  jwt:
    - issuer: http://idp.example.com
      audiences: [https://mlflow.example.com]
    - issuer: https://idp.example.com
    - issuer: https://token.actions.githubusercontent.com
      audiences: [https://mlflow.example.com]
      subjects: ['*']
      colour: blue
";
    assert_eq!(
        problems(yaml),
        "guard.yaml:4:15: auth.jwt[0].issuer: \"http://idp.example.com\": keys over plain http could be \
         anyone's; use https (http only to a loopback address)
guard.yaml:6:7: auth.jwt[1].audiences: needs at least one audience: a token for any audience of the \
         issuer would pass
guard.yaml:9:18: auth.jwt[2].subjects[0]: matches every subject; leave `subjects` out for that
guard.yaml:10:7: auth.jwt[2].colour: unknown key; the keys here are issuer, audiences, jwks_url, \
         user_claim, subjects"
    );
    // A good one reaches the site's settings, with the defaults filled in.
    let dir = TempDir::new();
    let users = dir.users("users");
    let good = format!(
        "upstream: localhost:5000\nauth:\n  users: {}\n  jwt:\n    - issuer: https://idp.example.com\n      audiences: [api]\n",
        users.display()
    );
    let settings = finish(parse_str(&good, "guard.yaml").unwrap()).unwrap();
    let jwt = &settings.sites[0].auth.jwt;
    assert_eq!(jwt.len(), 1);
    assert_eq!(
        (jwt[0].issuer.as_str(), jwt[0].user_claim.as_str()),
        ("https://idp.example.com", "sub")
    );
}
