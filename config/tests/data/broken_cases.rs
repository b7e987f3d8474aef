// The broken guard.yaml files and the exact message each must get, shared by the config
// crate's own test (which parses them in process) and the root end-to-end test (which runs
// `guard check` on each and also asserts exit code 2). Included with `include!`.

/// Files that only break in `finish` need a way in; this keeps auth out of their way.
const NO_AUTH: &str = "auth: {dangerous_no_auth: true}\n";

/// (what is broken, the file, the exact message when it is named `guard.yaml`)
fn broken_cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "yaml syntax error",
            "listen: 0.0.0.0:8443\nupstream: \"mlflow:5000\nrealm: x\n".into(),
            "guard.yaml:2:11: not valid YAML: invalid indentation in quoted scalar",
        ),
        (
            "mapping value where none may be",
            "upstream: mlflow:5000\n  tls: x\n".into(),
            "guard.yaml:2:6: not valid YAML: mapping values are not allowed in this context",
        ),
        (
            "wrong type: a string for a number",
            "upstream: mlflow:5000\nlimits:\n  max_headers: many\n".into(),
            r#"guard.yaml:3:16: limits.max_headers: expected a whole number of 0 or more, found "many""#,
        ),
        (
            "wrong type: a scalar for a list",
            "upstream: mlflow:5000\ntrusted_proxies: 10.0.0.0/8\n".into(),
            r#"guard.yaml:2:18: trusted_proxies: expected a list, found "10.0.0.0/8""#,
        ),
        (
            "wrong type: a number for a section",
            "upstream: mlflow:5000\nlimits: 5\n".into(),
            "guard.yaml:2:9: limits: expected a mapping, found 5",
        ),
        (
            "wrong type: yes is not a boolean in YAML 1.2",
            "upstream: mlflow:5000\npreserve_host: yes\n".into(),
            r#"guard.yaml:2:16: preserve_host: expected true or false, found "yes""#,
        ),
        (
            "unknown key with a suggestion",
            "upstrem: mlflow:5000\n".into(),
            "guard.yaml:1:1: upstrem: unknown key; did you mean `upstream`?",
        ),
        (
            "unknown nested key",
            "upstream: mlflow:5000\ntls:\n  acme:\n    emial: ops@example.com\n".into(),
            "guard.yaml:4:5: tls.acme.emial: unknown key; did you mean `email`?",
        ),
        (
            "unknown key in a site's auth",
            "sites:\n  - hosts: [a.example.com]\n    upstream: a:1\n    auth:\n      realmm: A\n".into(),
            "guard.yaml:5:7: sites[0].auth.realmm: unknown key; did you mean `realm`?",
        ),
        (
            "a key in the wrong section is pointed to the right one",
            "upstream: mlflow:5000\nusers: /etc/guard/users\n".into(),
            "guard.yaml:2:1: users: unknown key; did you mean `auth.users`?",
        ),
        (
            "unknown key with nothing close lists the keys",
            "upstream: mlflow:5000\nauth:\n  lockout:\n    colour: blue\n".into(),
            "guard.yaml:4:5: auth.lockout.colour: unknown key; the keys here are failures, window, duration",
        ),
        (
            "bad port in a site's upstream",
            "sites:\n  - name: mlflow\n    hosts: [mlflow.example.com]\n    upstream: mlflow:5000\n  - name: notebook\n    hosts: [notebook.example.com]\n    upstream: mlflow:50o0\n".into(),
            r#"guard.yaml:7:15: sites[1].upstream: "mlflow:50o0": "50o0" is not a valid port (1-65535)"#,
        ),
        (
            "port 0 in listen",
            "listen: 0.0.0.0:0\nupstream: mlflow:5000\n".into(),
            r#"guard.yaml:1:9: listen: "0.0.0.0:0": "0" is not a valid port (1-65535)"#,
        ),
        (
            "port out of range",
            "upstream: mlflow:5000\nhttps_port: 70000\n".into(),
            "guard.yaml:2:13: https_port: 70000 is not a valid port (1-65535)",
        ),
        (
            "bad duration unit",
            "upstream: mlflow:5000\nshutdown_grace: 10y\n".into(),
            r#"guard.yaml:2:17: shutdown_grace: "10y": unknown unit "y"; use ms, s, m, h or d"#,
        ),
        (
            "missing duration unit",
            "upstream: mlflow:5000\nlimits:\n  idle_timeout: 30\n".into(),
            r#"guard.yaml:3:17: limits.idle_timeout: "30": missing unit; use ms, s, m, h or d (e.g. 30s)"#,
        ),
        (
            "zero timeout",
            "upstream: mlflow:5000\nlimits:\n  connect_timeout: 0\n".into(),
            r#"guard.yaml:3:20: limits.connect_timeout: "0": must be more than 0"#,
        ),
        (
            "bad size",
            "upstream: mlflow:5000\nlimits:\n  max_body_size: 5Q\n".into(),
            r#"guard.yaml:3:18: limits.max_body_size: "5Q": unknown unit "Q"; use K, M, G or T"#,
        ),
        (
            "negative max_connections",
            "upstream: mlflow:5000\nlimits:\n  max_connections: -1\n".into(),
            "guard.yaml:3:20: limits.max_connections: expected a whole number of 0 or more, found -1",
        ),
        (
            "zero max_connections",
            "upstream: mlflow:5000\nlimits:\n  max_connections: 0\n".into(),
            "guard.yaml:3:20: limits.max_connections: must be at least 1, not 0",
        ),
        (
            "bad CIDR",
            "upstream: mlflow:5000\ntrusted_proxies: [10.0.0.0/8, 10.0.0.0/33]\n".into(),
            r#"guard.yaml:2:31: trusted_proxies[1]: "10.0.0.0/33" is not an IP address or CIDR range (e.g. 10.0.0.0/8)"#,
        ),
        (
            "bad log_format",
            "upstream: mlflow:5000\nlog_format: xml\n".into(),
            r#"guard.yaml:2:13: log_format: "xml": expected text or json"#,
        ),
        (
            "bad email",
            "upstream: mlflow:5000\ntls:\n  acme:\n    email: ops@localhost\n    domains: [mlflow.example.com]\n".into(),
            r#"guard.yaml:4:12: tls.acme.email: "ops@localhost": the domain part needs a dot, e.g. ops@example.com"#,
        ),
        (
            "IP address as an ACME domain",
            "upstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n    domains: [203.0.113.7]\n".into(),
            r#"guard.yaml:5:15: tls.acme.domains[0]: "203.0.113.7" is an IP address; certificates from ACME need a DNS name"#,
        ),
        (
            "bad ACME challenge",
            "upstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n    challenge: dns-01\n".into(),
            r#"guard.yaml:5:16: tls.acme.challenge: "dns-01": expected http-01, tls-alpn-01 or auto"#,
        ),
        (
            "public path without a leading slash",
            "upstream: mlflow:5000\npublic_paths: [static/]\n".into(),
            r#"guard.yaml:2:16: public_paths[0]: "static/": must start with '/'"#,
        ),
        (
            "the user header cannot be true",
            "upstream: mlflow:5000\nauth:\n  forwarded_user_header: true\n".into(),
            "guard.yaml:3:26: auth.forwarded_user_header: expected a header name or false, found true",
        ),
        (
            "the user header cannot be a standard header",
            "upstream: mlflow:5000\nauth:\n  forwarded_user_header: Cookie\n".into(),
            r#"guard.yaml:3:26: auth.forwarded_user_header: "Cookie" is a standard header; choose a name of its own such as X-Forwarded-User"#,
        ),
        (
            "duplicate key",
            "upstream: mlflow:5000\nupstream: other:5000\n".into(),
            "guard.yaml:2:1: upstream: duplicate key (first at line 1)",
        ),
        (
            "a list instead of settings",
            "- upstream: mlflow:5000\n".into(),
            "guard.yaml:1:1: expected a mapping of settings (key: value), found a list",
        ),
        (
            "both upstream and sites",
            "upstream: mlflow:5000\nsites:\n  - upstream: a:1\n".into(),
            "guard.yaml:1:11: upstream: cannot be combined with sites; set upstream in each site",
        ),
        (
            "neither upstream nor sites",
            format!("log_format: json\n{NO_AUTH}"),
            "guard.yaml:1:1: upstream: missing: give an upstream (host:port) or a list of sites",
        ),
        (
            "a site without an upstream",
            format!("sites:\n  - hosts: [a.example.com]\n{NO_AUTH}"),
            "guard.yaml:2:5: sites[0].upstream: missing: where this site's requests go, e.g. mlflow:5000",
        ),
        (
            "duplicate host across sites",
            "sites:\n  - name: a\n    hosts: [a.example.com]\n    upstream: a:1\n  - name: b\n    hosts: [b.example.com, A.example.com]\n    upstream: b:1\n".into(),
            r#"guard.yaml:6:28: sites[1].hosts[1]: "a.example.com" is already a host of sites[0] ("a"); a host name belongs to one site"#,
        ),
        (
            "two catch-all sites",
            "sites:\n  - name: a\n    upstream: a:1\n  - name: b\n    hosts: []\n    upstream: b:1\n".into(),
            "guard.yaml:5:5: sites[1].hosts: no hosts, like sites[0]: only one site may serve the hosts no other site claims",
        ),
        (
            "duplicate site names",
            "sites:\n  - name: a\n    hosts: [a.example.com]\n    upstream: a:1\n  - name: a\n    hosts: [b.example.com]\n    upstream: b:1\n".into(),
            r#"guard.yaml:5:11: sites[1].name: "a" is already the name of sites[0]; give each site its own name"#,
        ),
        (
            "lone certificate without key",
            format!("upstream: mlflow:5000\ntls:\n  cert: /nonexistent/cert.pem\n{NO_AUTH}"),
            "guard.yaml:3:9: tls.cert: a certificate needs its key; set tls.key too",
        ),
        (
            "key without certificate",
            format!("upstream: mlflow:5000\ntls:\n  key: /nonexistent/key.pem\n{NO_AUTH}"),
            "guard.yaml:3:8: tls.key: a key needs its certificate; set tls.cert too",
        ),
        (
            "certificate files and ACME at once",
            format!("upstream: mlflow:5000\ntls:\n  cert: /nonexistent/c.pem\n  key: /nonexistent/k.pem\n  acme:\n    email: ops@example.com\n    domains: [mlflow.example.com]\n{NO_AUTH}"),
            "guard.yaml:5:3: tls.acme: cannot be combined with tls.cert and tls.key; choose one certificate source",
        ),
        (
            "ACME without email",
            format!("sites:\n  - hosts: [mlflow.example.com]\n    upstream: mlflow:5000\ntls:\n  acme:\n    challenge: http-01\n{NO_AUTH}"),
            "guard.yaml:5:3: tls.acme.email: missing: certificates from ACME need a contact address, e.g. ops@example.com",
        ),
        (
            "ACME without any domain",
            format!("upstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n{NO_AUTH}"),
            "guard.yaml:3:3: tls.acme.domains: no names to certify: give sites their hosts, or list names here",
        ),
        (
            "an empty acme section still turns ACME on",
            format!("upstream: mlflow:5000\ntls:\n  acme:\n{NO_AUTH}"),
            "guard.yaml:3:3: tls.acme.email: missing: certificates from ACME need a contact address, e.g. ops@example.com\n\
             guard.yaml:3:3: tls.acme.domains: no names to certify: give sites their hosts, or list names here",
        ),
        (
            "IP address as a site host under ACME",
            format!("sites:\n  - hosts: [mlflow.example.com, 203.0.113.7]\n    upstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n{NO_AUTH}"),
            r#"guard.yaml:2:33: sites[0].hosts[1]: "203.0.113.7" is an IP address; certificates from ACME need a DNS name"#,
        ),
        (
            "Let's Encrypt and a private name",
            format!("sites:\n  - hosts: [localhost]\n    upstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n{NO_AUTH}"),
            r#"guard.yaml:2:13: sites[0].hosts[0]: "localhost" is not a public name; Let's Encrypt issues certificates only for names like mlflow.example.com (set tls.acme.directory for a private CA)"#,
        ),
        (
            "staging and a directory at once",
            format!("upstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n    staging: true\n    directory: https://ca.internal/dir\n    domains: [mlflow.example.com]\n{NO_AUTH}"),
            "guard.yaml:5:14: tls.acme.staging: cannot be combined with tls.acme.directory; staging is Let's Encrypt's",
        ),
        (
            "listen equal to http_listen",
            format!("listen: 0.0.0.0:8080\nhttp_listen: 0.0.0.0:8080\nupstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n    domains: [mlflow.example.com]\n{NO_AUTH}"),
            "guard.yaml:2:14: http_listen: 0.0.0.0:8080 conflicts with listen 0.0.0.0:8080; the two listeners need different ports",
        ),
        (
            "listen on the default http_listen port",
            format!("listen: 0.0.0.0:80\nupstream: mlflow:5000\ntls:\n  acme:\n    email: ops@example.com\n    domains: [mlflow.example.com]\n{NO_AUTH}"),
            "guard.yaml:1:9: listen: 0.0.0.0:80 conflicts with http_listen 0.0.0.0:80 (its default with tls.acme); the two listeners need different ports",
        ),
        (
            "http_listen without ACME",
            format!("upstream: mlflow:5000\nhttp_listen: 0.0.0.0:80\n{NO_AUTH}"),
            "guard.yaml:2:14: http_listen: only used with tls.acme (certificates from ACME)",
        ),
    ]
}
